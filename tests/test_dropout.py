"""Hashed CPU dropout: the rate and scale of nn.Dropout, masks a pure function of the seed,
gradients through the same mask, and training runs that stay seeded."""

from __future__ import annotations

import torch

from microgpt.dropout import LANES, dropout, hash_dropout


def test_masks_have_the_rate_and_scale_and_depend_only_on_the_seed() -> None:
    x = torch.ones(1 << 20)
    mask = hash_dropout(x, 0.2, seed=7)
    kept = mask != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.002
    threshold = round(0.2 * LANES)
    assert torch.all(mask[kept] == LANES / (LANES - threshold))
    assert torch.equal(mask, hash_dropout(x, 0.2, seed=7))
    assert not torch.equal(mask, hash_dropout(x, 0.2, seed=8))
    bf16 = hash_dropout(x.bfloat16(), 0.2, seed=7)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16 != 0, kept)
    strided = torch.arange(12.0).view(3, 4).t()  # non-contiguous input: same mask by element order
    torch.testing.assert_close(hash_dropout(strided, 0.5, 3), hash_dropout(strided.contiguous(), 0.5, 3))
    # Independent of the thread count: element i depends on (seed, i) only.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(mask, hash_dropout(x, 0.2, seed=7))
    finally:
        torch.set_num_threads(before)


def test_gradient_flows_through_the_forward_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, y.detach() / x.detach(), rtol=1e-6, atol=0)
    assert dropout(x, 0.3, training=False) is x


def test_seeded_runs_repeat_and_the_expectation_is_kept() -> None:
    x = torch.ones(1 << 18)
    torch.manual_seed(1)
    a = dropout(x, 0.5, training=True)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.5, training=True))
    assert abs(a.mean().item() - 1.0) < 0.01
