"""The training benchmark's products account for the model's FLOPs, so their time is a true ceiling."""

from __future__ import annotations

import pytest
import torch

from microgpt.bench.train import products_seconds
from microgpt.config import GPTConfig
from microgpt.model import GPT


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_products_count_the_flops_the_model_is_credited_with(mlp: str) -> None:
    config = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, mlp=mlp, bias=False)
    rows = 3
    seconds, flops = products_seconds(config, rows)
    tokens = rows * config.block_size
    with torch.device("meta"):
        model = GPT(config)
    # PaLM's 6N counts every parameter; norm gains and biases are no product's.
    vectors = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert seconds > 0
    assert flops == model.flops_per_token() * tokens - 6 * vectors * tokens
