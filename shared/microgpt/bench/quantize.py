"""Weight-only int8 / int4 against fp32: decode speed, weight bytes and held-out loss.

    microgpt bench quantize                          # gpt2-small speed and bytes; loss on shakespeare-cpu
    microgpt bench quantize --preset shakespeare --steps 100 --tokens 32 --data tinyshakespeare.txt

What is measured, and on what (stated because a random GPT-2 has no loss worth keeping):
- speed: single-stream greedy decoding of `--preset` with random weights (speed does not
  depend on their values), fp32 and int8 through the native decode step, int4 through
  eager PyTorch with torch's int4 kernel (the native step has no int4 path);
- bytes: the quantized checkpoint's tensors (`model.<mode>.safetensors`'s contents) and
  the served model's resident weight bytes, both against fp32;
- loss: a shakespeare-cpu model trained for `--steps` steps here (the trained-model
  figure a random GPT-2 cannot give), validation loss at fp32, int8 and int4 (group 32).
Targets (issue 7, gpt2-small): int8 >= 1.3x fp32 tokens/s with loss within +1%; int4
weights <= 0.2x fp32 bytes with loss within +3%.
"""

from __future__ import annotations

import tempfile
import time

import torch

from microgpt.bench.generate import decode_tokens_per_s
from microgpt.checkpoint import stored_tensors
from microgpt.evaluate import evaluate_prepared, prepare_for
from microgpt.generate import Backend
from microgpt.loading import load_model
from microgpt.model import GPT
from microgpt.precision import Mode
from microgpt.quantize import quantize_model, quantize_tensors, weight_bytes
from microgpt.settings import get_settings
from microgpt.zoo import get_preset


def _speed_and_bytes(preset: str, *, tokens: int, runs: int) -> None:
    torch.manual_seed(0)
    config = get_preset(preset, model={"dropout": 0.0}).model
    model = GPT(config).eval()
    fp32_bytes = weight_bytes(model)
    state, _ = stored_tensors(model)
    tokens = min(tokens, config.block_size)
    fp32_tps = decode_tokens_per_s(model, tokens=tokens, runs=runs, backend="native")
    print(f"speed and bytes: {preset}, {model.num_params() / 1e6:.1f}M parameters, random weights, "
          f"{torch.get_num_threads()} threads, {tokens} tokens, best of {runs}")  # fmt: skip
    print(f"  fp32  native {fp32_tps:7.1f} tokens/s           weights {fp32_bytes / 1e6:6.1f} MB")
    paths: tuple[tuple[Mode, Backend], ...] = (("int8", "native"), ("int4", "eager"))
    for mode, backend in paths:
        stored = sum(t.numel() * t.element_size() for t in quantize_tensors(state, config, mode).values())
        quantized = quantize_model(model, mode)
        tps = decode_tokens_per_s(quantized, tokens=tokens, runs=runs, backend=backend)
        print(
            f"  {mode}  {backend:6s} {tps:7.1f} tokens/s ({tps / fp32_tps:4.2f}x)   stored "
            f"{stored / 1e6:6.1f} MB ({stored / fp32_bytes:.3f}x), resident "
            f"{weight_bytes(quantized) / 1e6:6.1f} MB ({weight_bytes(quantized) / fp32_bytes:.3f}x)"
        )
        del quantized


def _loss(steps: int, data: str | None) -> None:
    from microgpt.train import train

    cache = get_settings().cache
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(
            "shakespeare-cpu",
            out_dir=tmp,
            cache_dir=cache,
            data=data,
            train_overrides={
                "max_steps": steps,
                "eval_interval": steps,
                "warmup_steps": min(100, steps // 10),
            },
            device="cpu",
        )
        print(f"loss: shakespeare-cpu trained {steps} steps ({time.perf_counter() - start:.0f} s), "
              f"validation loss over 50 batches")  # fmt: skip
        losses = {}
        for precision in ("fp32", "int8", "int4"):
            served = load_model(result.checkpoint, precision=precision)
            tokenizer = served.text_tokenizer()
            prepared = prepare_for(tokenizer, data or "shakespeare", cache_dir=cache)
            losses[precision] = evaluate_prepared(served.model, tokenizer, prepared, max_batches=50).loss
            delta = losses[precision] / losses["fp32"] - 1
            print(f"  {precision}  val loss {losses[precision]:.4f} ({delta:+.2%})")


def run(*, preset: str, steps: int, tokens: int, runs: int, threads: int | None, data: str | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    _speed_and_bytes(preset, tokens=tokens, runs=runs)
    _loss(steps, data)
