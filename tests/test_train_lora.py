"""Finetuning through the one training loop: full and LoRA, from a small `names` model.

A base model is trained briefly on the offline built-in `names`, then finetuned on 200
made-up names of one pattern (written to a temporary file). Both kinds of finetune must
lower the validation loss on that list; LoRA must leave the base weights untouched, and
the merged checkpoint must compute what base plus adapters compute (atol 1e-5).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from microgpt.checkpoint import load_checkpoint
from microgpt.data.batches import Batches
from microgpt.data.prepare import prepare_dataset
from microgpt.train import TrainCallback, TrainResult, train
from microgpt.train.loop import ADAPTERS_FILE, evaluate
from microgpt.train.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapters,
    merge_lora,
    read_adapters,
    save_adapters,
)

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 16}
BASE_TRAIN = {
    "max_steps": 200,
    "batch_size": 32,
    "lr": 2e-3,
    "warmup_steps": 20,
    "eval_interval": 200,
    "eval_steps": 4,
}
TUNE_TRAIN = {"max_steps": 40, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 0, "eval_interval": 40}
SHORT_TUNE = {**BASE_TRAIN, **TUNE_TRAIN, "max_steps": 20, "eval_interval": 10}
LORA = LoRAConfig(rank=4, alpha=8.0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def base(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("base")
    return train(
        "names",
        out_dir=out,
        cache_dir=cache,
        data="names",
        model_overrides=TINY,
        train_overrides=BASE_TRAIN,
        device="cpu",
    )


@pytest.fixture(scope="module")
def new_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 names of a pattern the census list lacks: zy + consonant-vowel pairs + 'ex'."""
    rng = random.Random(0)
    names = set()
    while len(names) < 200:
        middle = "".join(rng.choice("bdklmnrt") + rng.choice("aeiou") for _ in range(rng.randint(1, 2)))
        names.add("zy" + middle + "ex")
    path = tmp_path_factory.mktemp("new") / "zynames.txt"
    path.write_text("\n".join(sorted(names)) + "\n")
    return path


def val_loss_of(model: torch.nn.Module, checkpoint: Path, data: Path, cache: Path) -> float:
    """The loop's own val loss (same batches, same eval_steps) for `model` on `data`."""
    ckpt = load_checkpoint(checkpoint)
    tc = ckpt.trainer_state["train"]
    prepared, _ = prepare_dataset(str(data), cache_dir=cache, tokenizer=ckpt.tokenizer, mode="documents")
    batches = Batches(
        prepared, batch_size=tc["batch_size"], block_size=ckpt.config.block_size, seed=tc["seed"], split="val"
    )
    return evaluate(model, batches, tc["eval_steps"], torch.device("cpu"))


def finetune(base: TrainResult, data: Path, cache: Path, out: Path, **kwargs: Any) -> TrainResult:
    kwargs.setdefault("train_overrides", {**BASE_TRAIN, **TUNE_TRAIN})
    return train(
        "names",
        out_dir=out,
        cache_dir=cache,
        data=str(data),
        init_from=base.checkpoint,
        device="cpu",
        **kwargs,
    )


def test_lora_finetune_lowers_the_loss_and_merges_exactly(
    base: TrainResult, new_names: Path, cache: Path, tmp_path: Path
) -> None:
    base_model = load_checkpoint(base.checkpoint).model
    before = val_loss_of(base_model, base.checkpoint, new_names, cache)
    result = finetune(base, new_names, cache, tmp_path / "lora", lora=LORA)
    print(f"LoRA: val loss on the new names {before:.4f} -> {result.val_loss:.4f}")
    assert result.val_loss is not None and result.val_loss < before - 0.3

    # The adapters file is safetensors with only A and B, and the config in its metadata.
    adapters = tmp_path / "lora" / ADAPTERS_FILE
    assert result.adapters == adapters
    with safe_open(adapters, framework="pt") as f:
        keys = set(f.keys())
        assert json.loads(f.metadata()["microgpt.lora"])["rank"] == 4
    assert keys and all(k.endswith((".lora_A", ".lora_B")) for k in keys)
    assert len(keys) == 2 * 4 * TINY["n_layer"]  # qkv, attn.proj, mlp.fc, mlp.proj per block

    # Base plus adapters, unmerged: its frozen weights are exactly the base checkpoint's.
    adapted = load_checkpoint(base.checkpoint).model
    assert load_adapters(adapters, adapted) == LORA
    frozen = {n.replace(".base.", "."): t for n, t in adapted.state_dict().items() if "lora_" not in n}
    base_weights = base_model.state_dict()
    assert frozen.keys() == base_weights.keys()
    assert all(torch.equal(frozen[n], base_weights[n]) for n in frozen)
    assert val_loss_of(adapted, base.checkpoint, new_names, cache) == pytest.approx(result.val_loss, abs=1e-5)

    # The checkpoint is the merged model: a plain GPT, the base's names, the same logits.
    merged = load_checkpoint(result.checkpoint).model
    assert merged.state_dict().keys() == base_weights.keys()
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    x = torch.randint(0, merged.config.vocab_size, (4, TINY["block_size"]))
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, adapted(x).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(merged(x).logits, base_model(x).logits, atol=1e-3)
    # Weights outside the targets (embeddings, norms) were never touched.
    for name in ("wte.weight", "wpe.weight", "blocks.0.ln_1.weight"):
        if name in base_weights:
            assert torch.equal(merged.state_dict()[name], base_weights[name]), name


def test_full_finetune_lowers_the_loss(
    base: TrainResult, new_names: Path, cache: Path, tmp_path: Path
) -> None:
    before = val_loss_of(load_checkpoint(base.checkpoint).model, base.checkpoint, new_names, cache)
    result = finetune(base, new_names, cache, tmp_path / "full")
    print(f"full finetune: val loss on the new names {before:.4f} -> {result.val_loss:.4f}")
    assert result.val_loss is not None and result.val_loss < before - 0.3
    assert result.adapters is None and not (tmp_path / "full" / ADAPTERS_FILE).exists()
    tuned = load_checkpoint(result.checkpoint)
    assert tuned.tokenizer is not None
    assert tuned.tokenizer.content_hash == load_checkpoint(base.checkpoint).tokenizer.content_hash


def test_lora_resume_is_the_uninterrupted_run(
    base: TrainResult, new_names: Path, cache: Path, tmp_path: Path
) -> None:
    lora = LoRAConfig(rank=2, alpha=4.0, dropout=0.1)  # dropout: its RNG state must come back too
    kwargs: dict[str, Any] = {"lora": lora, "checkpoint_interval": 1000, "train_overrides": SHORT_TUNE}
    whole = finetune(base, new_names, cache, tmp_path / "whole", **kwargs)
    stop = threading.Event()

    class StopAt(TrainCallback):
        def on_step(self, record: dict[str, Any]) -> None:
            if record["step"] == 9:
                stop.set()

    part = finetune(base, new_names, cache, tmp_path / "part", callbacks=[StopAt()], stop_flag=stop, **kwargs)
    assert part.stopped and part.step == 9
    rest = finetune(base, new_names, cache, tmp_path / "part", resume=True, **kwargs)
    assert rest.losses == whole.losses and rest.val_losses == whole.val_losses
    (cfg, ours), (_, theirs) = (read_adapters(tmp_path / run / ADAPTERS_FILE) for run in ("part", "whole"))
    assert cfg == lora and ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(ValueError, match="its lora was"):
        finetune(base, new_names, cache, tmp_path / "part", resume=True, **{**kwargs, "lora": LORA})


def test_finetune_refuses_data_prepared_with_another_tokenizer(
    base: TrainResult, new_names: Path, cache: Path, tmp_path: Path
) -> None:
    # A char tokenizer trained on the new names alone has another vocabulary (and hash).
    other, _ = prepare_dataset(str(new_names), cache_dir=tmp_path, tokenizer="char", mode="documents")
    with pytest.raises(ValueError, match="prepared with another tokenizer"):
        finetune(base, other, cache, tmp_path / "run")
    with pytest.raises(ValueError, match="cannot override model.n_layer"):
        finetune(base, new_names, cache, tmp_path / "run", model_overrides={"n_layer": 3})
    with pytest.raises(ValueError, match="pass init_from"):
        train("names", out_dir=tmp_path / "run", cache_dir=cache, data="names", lora=LORA)


def test_lora_module_starts_as_the_identity_and_merges_in_place() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("attn", torch.nn.Module())
    model.attn.qkv = torch.nn.Linear(8, 24, bias=True)
    x = torch.randn(3, 8)
    expected = model.attn.qkv(x)
    assert apply_lora(model, LoRAConfig(rank=2, targets=["attn.qkv"])) == ["attn.qkv"]
    assert torch.equal(model.attn.qkv(x), expected)  # B starts at zero
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "attn.qkv.lora_A",
        "attn.qkv.lora_B",
    ]
    with torch.no_grad():
        model.attn.qkv.lora_B.normal_()
    adapted = model.attn.qkv(x)
    merge_lora(model)
    assert isinstance(model.attn.qkv, torch.nn.Linear)
    torch.testing.assert_close(model.attn.qkv(x), adapted, atol=1e-5, rtol=0)


def test_save_and_load_adapters_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("mlp", torch.nn.Module())
    model.mlp.fc = torch.nn.Linear(4, 16)
    cfg = LoRAConfig(rank=3, alpha=6.0, targets=["mlp.fc"])
    apply_lora(model, cfg)
    save_adapters(tmp_path / "a.safetensors", model, cfg)
    fresh = torch.nn.Sequential()
    fresh.add_module("mlp", torch.nn.Module())
    fresh.mlp.fc = torch.nn.Linear(4, 16)
    assert load_adapters(tmp_path / "a.safetensors", fresh) == cfg
    assert torch.equal(fresh.mlp.fc.lora_A, model.mlp.fc.lora_A)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_adapters(tmp_path / "bad.safetensors", fresh)


def test_cli_finetune_with_lora(base: TrainResult, new_names: Path, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    env = {**os.environ, "MICROGPT_CACHE": str(cache)}
    args = ["finetune", str(base.checkpoint), "--data", str(new_names), "--lora-rank", "4"]
    proc = subprocess.run(
        [sys.executable, "-m", "microgpt", *args, "--max-steps", "5", "--out", str(out), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "adapters:" in proc.stdout and (out / ADAPTERS_FILE).is_file()
    ckpt = load_checkpoint(out / "checkpoint")
    assert ckpt.trainer_state["lora"]["rank"] == 4 and ckpt.trainer_state["lora"]["alpha"] == 8.0
