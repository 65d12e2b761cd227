"""Embedding geometry: the token embeddings projected on their first two principal components."""

from __future__ import annotations

import torch

from microgpt.generate import activation_device_and_dtype
from microgpt.interpret.cache import token_strings
from microgpt.interpret.schemas import EmbeddingPoint, EmbeddingsReport
from microgpt.model import GPT
from microgpt.tokenizers import Tokenizer


@torch.no_grad()
def embeddings(model: GPT, tokenizer: Tokenizer, *, limit: int = 1000) -> EmbeddingsReport:
    """2-D PCA of the first `limit` token embeddings (read through `wte`, so int8/int4 work too)."""
    if limit < 3:
        raise ValueError(f"limit must be >= 3, got {limit}")
    n = min(limit, model.config.vocab_size)
    ids = torch.arange(n, device=activation_device_and_dtype(model)[0])
    x = model.wte(ids).float()
    x = x - x.mean(0)
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    xy = (x @ v[:2].T).tolist()
    var = s.square()
    return EmbeddingsReport(
        points=[
            EmbeddingPoint(token=t, id=i, x=p[0], y=p[1])
            for i, (t, p) in enumerate(zip(token_strings(tokenizer, ids), xy, strict=True))
        ],
        explained_variance=(var[:2] / var.sum()).tolist(),
    )
