"""Bad checkpoints are refused before anything is allocated, and saved files are byte-reproducible.

Refusal runs in a child process under a 4 GiB address-space limit, so a regression fails by an
allocation error rather than by exhausting the machine, and the child's peak RSS, which must
not grow past what loading a good model took, shows that nothing was allocated; each case
must be refused in milliseconds, well within `MAX_SECONDS` (n_layer=100000 once took 88 s
and 4.6 GB). Reproducibility saves the same model in several processes, each with its own
hash seed (safetensors' Rust writer once wrote metadata in per-process HashMap order), and
compares the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hostile_checkpoints import CASES, hostile_checkpoint
from tiny_models import MICROGPT

from microgpt.checkpoint import save_checkpoint
from microgpt.checkpoint_check import CheckpointError, float_weight_specs
from microgpt.model import GPT
from microgpt.quantize import quantize_checkpoint
from microgpt.tokenizers import CharTokenizer

ADDRESS_SPACE_LIMIT = 4 << 30
MAX_SECONDS = 10.0  # each takes milliseconds; the margin is for a loaded CI machine
MAX_RSS_GROWTH_BYTES = 256 << 20  # beyond loading a good model (torch and the kernels)

LOAD_ALL = """
import json, resource, sys, time
from microgpt.checkpoint import load_checkpoint
from microgpt.checkpoint_check import CheckpointError
from microgpt.loading import load_model

for loader in (load_checkpoint, load_model):  # a good one first: imports are not the check's time
    loader(sys.argv[1])
warm_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
results = {}
for path in sys.argv[2:]:
    for loader in (load_checkpoint, load_model):
        started = time.perf_counter()
        try:
            loader(path)
            outcome = "loaded"
        except CheckpointError as e:
            outcome = str(e)
        except Exception as e:  # a regression: report it as the outcome, not as a crash
            outcome = f"{type(e).__name__}: {e}"
        results[f"{path} {loader.__name__}"] = [outcome, time.perf_counter() - started]
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - warm_rss
print(json.dumps({"results": results, "rss_growth": growth}))
"""


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["emma", "olivia", "zoe"])
    model = GPT(MICROGPT.updated(vocab_size=tokenizer.vocab_size))
    return save_checkpoint(tmp_path_factory.mktemp("good") / "ckpt", model, tokenizer=tokenizer)


def _load_in_child(good: Path, paths: list[Path]) -> tuple[dict[str, tuple[str, float]], int]:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_ALL, str(good), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_address_space,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: (v[0], v[1]) for k, v in out["results"].items()}, out["rss_growth"]


def test_bad_checkpoints_are_refused_fast_without_allocating(good: Path, tmp_path: Path) -> None:
    paths = {case: hostile_checkpoint(good, case, tmp_path / case) for case in CASES}
    # The quantized loader too: an int8 copy whose config asks for 1024 layers it has no weights for.
    int8 = quantize_checkpoint(good, tmp_path / "int8", "int8")
    config = json.loads((int8 / "config.json").read_text())
    config["model"]["n_layer"] = 1024
    (int8 / "config.json").write_text(json.dumps(config))
    results, rss_growth = _load_in_child(good, [*paths.values(), int8])
    for case, path in paths.items():
        for loader in ("load_checkpoint", "load_model"):
            message, seconds = results[f"{path} {loader}"]
            assert CASES[case] in message, (case, loader, message)
            assert seconds < MAX_SECONDS, (case, loader, seconds)
    message, seconds = results[f"{int8} load_model"]
    assert "model.int8.safetensors does not match the model in config.json" in message
    assert "missing blocks.1" in message and seconds < MAX_SECONDS
    grown_mb = rss_growth / 1e6
    assert rss_growth < MAX_RSS_GROWTH_BYTES, f"peak RSS grew {grown_mb:.0f} MB: something was allocated"


def test_the_messages_name_the_file_and_field(good: Path, tmp_path: Path) -> None:
    from microgpt.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match=r"bad/config\.json: model\.n_embd is 1000000000\.0; it must"):
        load_checkpoint(hostile_checkpoint(good, "n_embd", tmp_path / "bad"))


def test_float_specs_match_what_save_checkpoint_stores(good: Path) -> None:
    from safetensors import safe_open

    for config in (MICROGPT, MICROGPT.updated(n_layer=3, tie_embeddings=False, position="rope")):
        path = save_checkpoint(good.parent / f"specs-{config.n_layer}", GPT(config))
        with safe_open(path / "model.safetensors", "pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        assert {k: s.shape for k, s in float_weight_specs(config).items()} == stored


SAVE = """
import sys, torch
from tiny_models import MICROGPT
from microgpt.checkpoint import save_checkpoint
from microgpt.model import GPT
from microgpt.quantize import quantize_checkpoint
from microgpt.tokenizers import CharTokenizer
from microgpt.train.lora import LoRAConfig, apply_lora, save_adapters

torch.manual_seed(0)
model = GPT(MICROGPT)
optimizer = torch.optim.AdamW(model.parameters())
model(torch.zeros(1, 4, dtype=torch.long)).logits.sum().backward()
optimizer.step()
out = sys.argv[1]
path = save_checkpoint(f"{out}/ckpt", model, tokenizer=CharTokenizer.train(["ab"]), optimizer=optimizer,
                       trainer_state={"step": 1}, metadata={"z": 1, "a": 2, "m": 3})
quantize_checkpoint(path, f"{out}/int4", "int4")
lora = LoRAConfig(rank=2)
apply_lora(model, lora)
save_adapters(f"{out}/adapters.safetensors", model, lora)
"""


def test_saved_files_are_identical_in_every_process(tmp_path: Path) -> None:
    tests_dir = str(Path(__file__).parent)
    children = []
    for seed in range(4):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": tests_dir}
        out = tmp_path / str(seed)
        children.append((out, subprocess.Popen([sys.executable, "-c", SAVE, str(out)], env=env)))
    digests = []
    for out, child in children:
        assert child.wait(timeout=300) == 0
        files = sorted(p for p in out.rglob("*") if p.is_file())
        digests.append({str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    assert "ckpt/optimizer.safetensors" in digests[0] and "int4/model.int4.safetensors" in digests[0]
    assert all(d == digests[0] for d in digests), digests
