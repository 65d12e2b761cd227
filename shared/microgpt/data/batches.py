"""Training batches from prepared shards: a pure function of (seed, split, step, rank), read lazily.

    batches = Batches("prepared/shakespeare", batch_size=64, block_size=256, seed=1337)
    x, y = batches.get(step)  # int64 (rows, block_size); y is x shifted by one, -1 where masked

Why a pure function: `get(step)` draws the *global* batch from a generator seeded with
(seed, split, step) and returns this rank's rows of it. Nothing depends on what was drawn
before, so a resumed run sees exactly the batches it would have seen uninterrupted, and
`world_size` processes with `rank` 0..n-1 together see exactly the batch one process sees:
`batch_size` is the global batch size, and each rank gets `batch_size // world_size` rows.
Sampling is with replacement, as nanoGPT (random windows) and makemore (random names) do.

What a row is depends on the prepared mode:

- `stream`: a random window of block_size + 1 tokens; x is its first block_size, y the last.
- `documents`: one random document from its BOS; positions past its end are padding,
  x there is 0 and y is -1 (`IGNORE_INDEX`, which the model's loss ignores). A document
  longer than block_size + 1 is cut there (prepare with `long_documents="split"` to keep it all).
- `documents` with `pack=True`: from a random document's BOS, block_size + 1 tokens of it
  and the documents after it, with no padding except at the very end of the split.

Data prepared with a loss mask (`loss_on="assistant"`, conversations) gives y = -1 wherever
the mask says the token is not the assistant's, unless the Batches are made with
`loss_on="all"`: the same rows then train on every token (the pretraining phase of a chat
preset reads the same shards as its finetuning phase).

Shards are numpy memmaps, so only the rows read are paged in.

`trim_padding(x, y)` drops the columns that are padding in every row: a batch of names
(about 8 tokens in a 32-token block) then costs a third of the compute, with the same loss,
since attention is causal and padded targets are ignored anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from microgpt.data.manifest import LossOn, Manifest, check_tokenizer, read_manifest
from microgpt.data.shards import SplitReader
from microgpt.tokenizers import Tokenizer

IGNORE_INDEX = -1
PAD_INPUT = 0  # x at masked positions: any valid id works, attention is causal and y ignores it
_BATCH_STREAM = 0xBA7C4  # keeps batch draws apart from the split's (see prepare)
_SPLIT_CODE = {"train": 0, "val": 1}


class Batches:
    """Batches of one split of a prepared directory; see the module docstring for the contract."""

    def __init__(
        self,
        prepared_dir: str | os.PathLike[str],
        *,
        batch_size: int,
        block_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        pack: bool = False,
        tokenizer: Tokenizer | None = None,
        loss_on: LossOn | None = None,
    ):
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size} and {block_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        if batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} is the global batch; it must divide evenly over {world_size} ranks"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.directory = Path(prepared_dir)
        self.manifest: Manifest = read_manifest(self.directory)
        if tokenizer is not None:
            check_tokenizer(self.manifest, tokenizer, where=str(self.directory))
        self.batch_size, self.block_size, self.seed = batch_size, block_size, seed
        self.rank, self.world_size, self.split, self.pack = rank, world_size, split, pack
        self.rows = batch_size // world_size
        self._reader = SplitReader(self.directory, self.manifest, split)
        self.mode = self.manifest.mode
        if loss_on == "assistant" and not self._reader.masked:
            raise ValueError(
                f"{self.directory} has no loss mask: training on assistant turns needs conversations "
                f"prepared with loss_on='assistant'"
            )
        self.masked = self._reader.masked and loss_on != "all"  # None: the data's own choice
        if pack and self.mode != "documents":
            raise ValueError("pack=True packs documents; this data was prepared in stream mode")
        if self.mode == "stream" and self._reader.tokens < block_size + 1:
            raise ValueError(
                f"the {split} split of {self.directory} has {self._reader.tokens:,} tokens, fewer than "
                f"block_size + 1 = {block_size + 1}; use a smaller block_size or more data"
            )
        if self.mode == "documents" and self._reader.documents == 0:
            raise ValueError(f"the {split} split of {self.directory} has no documents")

    @property
    def tokens(self) -> int:
        """Tokens in this split (all ranks together)."""
        return self._reader.tokens

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (x, y) of global batch `step`: int64 tensors of shape (rows, block_size)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rng = np.random.default_rng([_BATCH_STREAM, self.seed, _SPLIT_CODE[self.split], step])
        T = self.block_size
        if self.mode == "stream":
            starts = rng.integers(0, self._reader.tokens - T, size=self.batch_size)
        else:
            starts = rng.integers(0, self._reader.documents, size=self.batch_size)
        mine = starts[self.rank * self.rows : (self.rank + 1) * self.rows]
        x = np.full((self.rows, T), PAD_INPUT, dtype=np.int64)
        y = np.full((self.rows, T), IGNORE_INDEX, dtype=np.int64)
        for row, start in enumerate(mine.tolist()):
            if self.mode == "stream":
                begin = start
                window = self._reader.read(start, T + 1)
            else:
                begin, end = self._reader.document(start)
                window = self._reader.read(begin, T + 1 if self.pack else min(end - begin, T + 1))
            n = len(window) - 1  # positions with a target
            x[row, :n] = window[:-1]
            y[row, :n] = window[1:]
            if self.masked:  # the targets are tokens begin+1 .. begin+n
                y[row, :n][~self._reader.read_mask(begin + 1, n)] = IGNORE_INDEX
        return torch.from_numpy(x), torch.from_numpy(y)


def trim_padding(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) without the trailing columns whose targets are all IGNORE_INDEX (keeps >= 1)."""
    valid = (y != IGNORE_INDEX).any(dim=0).nonzero()
    keep = int(valid.max()) + 1 if len(valid) else 1
    return x[:, :keep], y[:, :keep]
