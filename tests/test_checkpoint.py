"""Checkpoints: exact round trips, refusal of anything untrusted, and atomic replacement.

Round trips are bit-exact (torch.equal): safetensors stores the bytes as they were.
Refusal tests build each bad file for real (torch.save for the pickles) and check that
the error is a CheckpointError naming the offending file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import safetensors.torch
import torch
from tiny_models import LLAMA, MICROGPT

from microgpt.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    read_config,
    save_checkpoint,
)
from microgpt.model import GPT
from microgpt.tokenizers import CharTokenizer
from microgpt.zoo import get_preset

NAMES = [
    "emma",
    "olivia",
    "quinn",
    "xavier",
    "zoe",
    "jack",
    "kylie",
    "brody",
    "wyatt",
    "felix",
    "hugo",
    "penelope",
    "grace",
    "dmitri",
    "sophia",
]

CONFIGS = {
    "micro": MICROGPT,
    # Llama-ish with a tied head and biases, its vocabulary the names' characters.
    "llama-tied": LLAMA.updated(vocab_size=27, block_size=16, bias=True, tie_embeddings=True),
}


def make_model(name: str = "micro", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIGS[name]).eval()


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 27, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ckpt", make_model(), tokenizer=CharTokenizer.train(NAMES))


def rewrite_config(path: Path, **changes: object) -> None:
    cfg = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("model."):
            cfg["model"][key.removeprefix("model.")] = value
        else:
            cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg))


# --- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_is_bit_exact(tmp_path: Path, name: str) -> None:
    model, tok = make_model(name), CharTokenizer.train(NAMES)
    path = save_checkpoint(
        tmp_path / name, model, tokenizer=tok, preset=name, metadata={"run": "t", "loss": 1.5}
    )
    files = sorted(p.name for p in path.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json"]
    ckpt = load_checkpoint(path)
    assert not ckpt.model.training
    assert ckpt.config == model.config and ckpt.preset == name
    assert ckpt.metadata == {"run": "t", "loss": 1.5} and ckpt.trainer_state is None
    x = tokens()
    assert torch.equal(ckpt.model(x).logits, model(x).logits)
    loaded_state = ckpt.model.state_dict()
    assert list(loaded_state) == list(model.state_dict())
    assert all(torch.equal(t, loaded_state[n]) for n, t in model.state_dict().items())
    assert ckpt.tokenizer is not None and ckpt.tokenizer.content_hash == tok.content_hash
    if model.config.tie_embeddings:
        assert ckpt.model.lm_head.weight is ckpt.model.wte.weight  # still tied after loading
        with safetensors.torch.safe_open(path / "model.safetensors", "pt") as f:
            assert "lm_head.weight" not in set(f.keys())  # stored once


def test_config_json_layout_and_read_config(ckpt: Path) -> None:
    raw = json.loads((ckpt / "config.json").read_text())
    assert list(raw)[:2] == ["format_version", "model"] and raw["format_version"] == 1
    assert set(raw["files"]) == {"model.safetensors", "tokenizer.json"}
    cfg = read_config(ckpt)
    assert cfg.model == get_preset("micro").model and cfg.preset is None
    assert cfg.microgpt_version


def test_dtype_and_saved_dtype(tmp_path: Path) -> None:
    model = make_model().to(torch.bfloat16)
    path = save_checkpoint(tmp_path / "bf16", model)
    assert load_checkpoint(path).model.wte.weight.dtype == torch.bfloat16  # as saved
    as_f32 = load_checkpoint(path, dtype=torch.float32).model
    assert torch.equal(as_f32.wte.weight, model.wte.weight.float())


def test_loading_does_not_move_the_global_rng(ckpt: Path) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_checkpoint(ckpt)
    assert torch.equal(torch.rand(3), expected)


def test_trainer_and_optimizer_state_resume_exactly(tmp_path: Path) -> None:
    model = make_model("llama-tied").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    x, y = tokens(1), tokens(2)
    for _ in range(2):
        opt.zero_grad()
        model(x, y).loss.backward()
        opt.step()
    opt.param_groups[0]["lr"] = 5e-3  # a schedule moved it; the checkpoint must keep that
    rng = torch.get_rng_state()
    state = {"step": 2, "data_position": [3, 17], "rng": {"torch": rng.tolist(), "python": 42}}
    path = save_checkpoint(tmp_path / "resume", model, optimizer=opt, trainer_state=state)

    ckpt = load_checkpoint(path)
    assert ckpt.trainer_state == state and ckpt.has_optimizer_state
    assert torch.equal(torch.tensor(ckpt.trainer_state["rng"]["torch"], dtype=torch.uint8), rng)
    resumed = ckpt.model.train()
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1.0)  # hyperparameters come from the file
    load_optimizer_state(path, opt2)
    assert opt2.param_groups[0]["lr"] == 5e-3 and opt2.param_groups[0]["betas"] == (0.9, 0.95)

    for m, o in ((model, opt), (resumed, opt2)):
        o.zero_grad()
        m(x, y).loss.backward()
        o.step()
    for p1, p2 in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p1, p2)


def test_missing_optimizer_state_is_an_error(ckpt: Path) -> None:
    opt = torch.optim.AdamW(make_model().parameters())
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        load_optimizer_state(ckpt, opt)


def test_unserialisable_trainer_state_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="trainer_state"):
        save_checkpoint(tmp_path / "x", make_model(), trainer_state={"rng": torch.get_rng_state()})
    assert list(tmp_path.iterdir()) == []


# --- refusals -------------------------------------------------------------------------


def test_pickle_file_is_refused(tmp_path: Path) -> None:
    torch.save(make_model().state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt is a pickle-based file; microgpt loads"):
        load_checkpoint(tmp_path / "model.pt")
    # A directory holding only the pickle is refused the same way, naming the file.
    with pytest.raises(CheckpointError, match=r"model\.pt is a pickle-based file"):
        load_checkpoint(tmp_path)


def test_pickle_renamed_to_safetensors_is_refused(ckpt: Path) -> None:
    torch.save(make_model().state_dict(), ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is a pickle-based file"):
        load_checkpoint(ckpt)


def test_hf_style_pickle_directory_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is a pickle-based file"):
        load_checkpoint(tmp_path)


def test_truncated_safetensors_is_refused(ckpt: Path) -> None:
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or corrupt"):
        load_checkpoint(ckpt)


def test_flipped_byte_is_caught_by_sha256(ckpt: Path) -> None:
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the tensor data: the file still parses, the numbers changed
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors failed its integrity check"):
        load_checkpoint(ckpt)


def test_tampered_tokenizer_is_caught(ckpt: Path) -> None:
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    tok["chars"] = tok["chars"][::-1]
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match=r"tokenizer\.json failed its integrity check"):
        load_checkpoint(ckpt)


def test_unlisted_file_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c", make_model())
    CharTokenizer.train(NAMES).save(path / "tokenizer.json")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is not listed"):
        load_checkpoint(path)


def test_unknown_format_version_is_refused(ckpt: Path) -> None:
    rewrite_config(ckpt, format_version=99)
    with pytest.raises(CheckpointError, match=r"config\.json has format_version 99"):
        load_checkpoint(ckpt)


def test_missing_config_is_refused(ckpt: Path) -> None:
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        load_checkpoint(ckpt)


def test_missing_weights_are_refused(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        load_checkpoint(ckpt)


def test_invalid_model_config_is_refused(ckpt: Path) -> None:
    rewrite_config(ckpt, **{"model.n_head": 5})  # 16 dims do not split into 5 heads
    with pytest.raises(CheckpointError, match=r"(?s)config\.json is invalid.*divisible"):
        load_checkpoint(ckpt)
    rewrite_config(ckpt, **{"model.n_head": 4, "model.n_layers": 2})  # a typo is not ignored
    with pytest.raises(CheckpointError, match=r"(?s)config\.json is invalid.*n_layers"):
        read_config(ckpt)


def test_wrong_shapes_are_refused(ckpt: Path) -> None:
    rewrite_config(ckpt, **{"model.n_embd": 32})
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match.*wrong shapes"):
        load_checkpoint(ckpt)


def test_wrong_tensor_names_are_refused(ckpt: Path) -> None:
    rewrite_config(ckpt, **{"model.n_layer": 2})
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match.*missing blocks"):
        load_checkpoint(ckpt)


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at .*nowhere"):
        load_checkpoint(tmp_path / "nowhere")


# --- atomic writes --------------------------------------------------------------------


def test_overwrite_replaces_cleanly(ckpt: Path) -> None:
    new = make_model(seed=5)
    save_checkpoint(ckpt, new, metadata={"v": 2})
    loaded = load_checkpoint(ckpt)
    assert loaded.metadata == {"v": 2} and loaded.tokenizer is None
    assert torch.equal(loaded.model.wte.weight, new.wte.weight)
    assert [p.name for p in ckpt.parent.iterdir()] == ["ckpt"]  # no .tmp- or .old- left


def test_crash_mid_write_leaves_old_checkpoint(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_logits = load_checkpoint(ckpt).model(tokens()).logits
    import microgpt.checkpoint as checkpoint_module

    real_save = checkpoint_module.save_safetensors
    calls = []

    def save_then_crash(path, tensors, metadata):  # type: ignore[no-untyped-def]
        calls.append(Path(path).name)
        if len(calls) > 1:  # model.safetensors is written; die on optimizer.safetensors
            raise OSError("disk full")
        real_save(path, tensors, metadata)

    monkeypatch.setattr(checkpoint_module, "save_safetensors", save_then_crash)
    model = make_model(seed=9)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ckpt, model, optimizer=torch.optim.AdamW(model.parameters()))
    assert calls == ["model.safetensors", "optimizer.safetensors"]
    assert [p.name for p in ckpt.parent.iterdir()] == ["ckpt"]  # temp directory removed
    assert torch.equal(load_checkpoint(ckpt).model(tokens()).logits, old_logits)


def test_crash_between_renames_keeps_old_aside(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import microgpt.checkpoint as checkpoint_module

    real_rename = checkpoint_module.os.rename

    def rename(src, dst):  # type: ignore[no-untyped-def]
        if ".tmp-" in str(src):
            raise KeyboardInterrupt  # as if killed after the old one moved aside
        real_rename(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ckpt, make_model(seed=3))
    monkeypatch.undo()
    # The failed rename put the old checkpoint back, and the temp directory is gone.
    assert [p.name for p in ckpt.parent.iterdir()] == ["ckpt"]
    load_checkpoint(ckpt)


def test_leftover_aside_copy_is_named_in_the_error(ckpt: Path) -> None:
    aside = ckpt.parent / ".ckpt.old-1234abcd"
    ckpt.rename(aside)  # what a kill between the two renames leaves
    with pytest.raises(CheckpointError, match=r"\.ckpt\.old-1234abcd"):
        load_checkpoint(ckpt)
    assert load_checkpoint(aside).config == get_preset("micro").model


def test_refuses_to_replace_a_non_checkpoint(tmp_path: Path) -> None:
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        save_checkpoint(precious, make_model())
    assert (precious / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_saved_files_are_readable_by_others(ckpt: Path) -> None:
    # Temp directories are created 0o700 by mkdtemp; the checkpoint must not inherit that.
    assert ckpt.stat().st_mode & 0o055 == (0o777 & ~_umask()) & 0o055


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("seed", range(3))
def test_round_trip_random_metadata(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    meta = {f"k{i}": rnd.choice([1, 2.5, "s", None, [1, "x"], {"n": True}]) for i in range(5)}
    path = save_checkpoint(tmp_path / "m", make_model(), metadata=meta)
    assert load_checkpoint(path).metadata == meta
