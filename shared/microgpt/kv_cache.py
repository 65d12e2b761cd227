"""Preallocated key/value cache for incremental decoding, one length per sequence.

Each row of the batch is a slot with its own length, so sequences of different
prompt lengths decode together and a serving scheduler can refill one slot while
the others keep going. Keys and values are written in place at each row's
positions; attention masks out everything past a row's own position, so stale
entries from a padded prefill or a retired sequence are never read.

Attention reads only a window of the first `window` positions, which the caller
widens in power-of-two steps as sequences grow (`fit_window`): decoding early in a
long context does not pay for the empty rest of the cache, and a compiled decode
step sees only a handful of distinct shapes.
"""

from __future__ import annotations

import copy

import torch

from microgpt.config import GPTConfig


class KVCache:
    """Per layer, keys and values of shape (B, n_kv_head, max_len, head_size).

    One tensor per layer (not one 5-D tensor) so that writes are in-place updates
    of a whole buffer, which torch.compile keeps in place instead of copying.
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_len: int | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.max_len = max_len or config.block_size
        if self.max_len > config.block_size:
            raise ValueError(f"max_len {self.max_len} exceeds the context of {config.block_size}")
        shape = (batch_size, config.kv_heads, self.max_len, config.head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._rows = torch.arange(batch_size, device=device)[:, None]  # (B, 1)
        self._key_positions = torch.arange(self.max_len, device=device)  # (L,)
        self.window = self.max_len  # positions attention reads: [0, window)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def positions(self, n_new: int) -> torch.Tensor:
        """Positions (B, T) that the next `n_new` tokens of every row occupy."""
        return self.lengths[:, None] + torch.arange(n_new, device=self.lengths.device)

    def fit_window(self, needed: int, smallest: int = 64) -> None:
        """Make attention read the smallest power of two >= `needed` positions (capped at max_len)."""
        if needed > self.max_len:
            raise ValueError(f"{needed} positions do not fit a cache of {self.max_len}")
        window = smallest
        while window < needed:
            window *= 2
        self.window = min(window, self.max_len)

    def attention_mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, window) boolean mask: a query at position p sees keys at positions <= p."""
        return (self._key_positions[: self.window] <= positions[..., None])[:, None]

    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_head, T, hs) at `positions`; return the layer's keys and values
        (B, n_kv_head, window, hs) in k's dtype (a cache may be narrower than the activations:
        the native step keeps bf16 for int8 weights). Positions must lie inside the window."""
        self.k[layer][self._rows, :, positions] = k.transpose(1, 2).to(self.k[layer].dtype)
        self.v[layer][self._rows, :, positions] = v.transpose(1, 2).to(self.v[layer].dtype)
        window = slice(None, self.window)
        return self.k[layer][:, :, window].to(k.dtype), self.v[layer][:, :, window].to(v.dtype)

    def advance(self, n_new: torch.Tensor | int) -> None:
        """Commit `n_new` tokens (an int, or one count per row) after a forward pass."""
        self.lengths += n_new

    def rows(self, start: int, count: int) -> KVCache:
        """The cache restricted to rows [start, start + count): the same storage, so writes
        through the view land in this cache; the engine decodes and prefills its rows so."""
        view = copy.copy(self)
        view.k = [k[start : start + count] for k in self.k]
        view.v = [v[start : start + count] for v in self.v]
        view.lengths = self.lengths[start : start + count]
        view._rows = torch.arange(count, device=self.lengths.device)[:, None]
        return view

    def free_row(self, row: int, last: int, last_length: int) -> None:
        """Free `row` for a new sequence by moving the last row in use, `last`, into it (its first
        `last_length` positions: its whole content, which the caller tracks without reading
        `lengths` back from the device), so the rows in use stay 0..last-1; `last` is left empty."""
        if row != last:
            for layer in range(len(self.k)):
                for cache in (self.k[layer], self.v[layer]):
                    cache[row, :, :last_length].copy_(cache[last, :, :last_length])
            self.lengths[row] = self.lengths[last]
        self.lengths[last] = 0

    def reset(self, row: int | None = None) -> None:
        """Empty one row (a retired sequence) or the whole cache."""
        if row is None:
            self.lengths.zero_()
        else:
            self.lengths[row] = 0
