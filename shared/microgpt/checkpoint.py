"""Checkpoints: a directory of safetensors weights and JSON, written atomically, read strictly.

    run-42/
      config.json            format_version, model (a GPTConfig), preset, files {name: sha256}
      model.safetensors      the weights (a tied LM head is stored once, as wte.weight)
      tokenizer.json         optional, the tokenizer's own JSON
      optimizer.safetensors  optional, optimizer tensors; its structure is JSON in the header
      trainer_state.json     optional, whatever JSON the training loop needs to resume

Why this shape: safetensors and JSON hold only data, so loading a checkpoint can
never run code (pickle, and so `torch.load`, can); every byte of weight and state is
covered by a sha256 in config.json, so a truncated, corrupted or edited file is an
error naming that file, not a model that quietly computes something else. The config's
sizes are bounded and the weights file's header must describe exactly its model before
anything is allocated (`microgpt.checkpoint_check`), so a hostile config.json cannot make a
loader build a model bigger than the file. Files are byte-reproducible
(`microgpt.stable_safetensors`): the same weights give the same sha256 in any process.

Writing is atomic. Everything is written and fsynced in a temporary directory beside
the target, which is then renamed into place; an existing checkpoint is renamed aside
first and deleted last. A crash leaves the previous checkpoint intact: at the target,
or (only if the crash falls between the two renames) at `.{name}.old-*` beside it.

    save_checkpoint("runs/names", model, tokenizer=tok, preset="names")
    ckpt = load_checkpoint("runs/names")  # ckpt.model is a GPT in eval mode

`load_checkpoint` reads the float weights (and the optimizer state training resumes from);
callers that run a model at a precision, or by registry ref, use `microgpt.loading.load_model`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from safetensors import safe_open
from torch import nn

from microgpt import __version__
from microgpt.atomic import atomic_directory
from microgpt.checkpoint_check import (
    CONFIG_FILE,
    MODEL_FILE,
    CheckpointError,
    check_model_bounds,
    check_weights_file,
)
from microgpt.config import GPTConfig
from microgpt.digest import file_sha256
from microgpt.model import GPT
from microgpt.stable_safetensors import save_safetensors
from microgpt.tokenizers import Tokenizer, tokenizer_from_json

FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
_OPTIMIZER_META_KEY = "microgpt.optimizer_state"
_TIED_META_KEY = "microgpt.tied"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CheckpointConfig(BaseModel):
    """The contents of config.json: the model's shape and a sha256 for every other file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    model: GPTConfig
    preset: str | None = None
    microgpt_version: str
    files: dict[str, str]
    metadata: dict[str, Any] = {}

    @field_validator("files")
    @classmethod
    def _plain_names_and_digests(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if name != Path(name).name or name in ("", ".", "..", CONFIG_FILE):
                raise ValueError(f"files: {name!r} is not a plain file name of the checkpoint")
            if not _SHA256.fullmatch(digest):
                raise ValueError(f"files: {name!r} has {digest!r}, not a sha256 hex digest")
        return files


@dataclass
class Checkpoint:
    """A loaded checkpoint. `model` is on the requested device, in eval mode."""

    path: Path
    model: GPT
    config: GPTConfig
    tokenizer: Tokenizer | None
    preset: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    trainer_state: dict[str, Any] | None = None
    microgpt_version: str = ""

    @property
    def has_optimizer_state(self) -> bool:
        return OPTIMIZER_FILE in read_config(self.path).files

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        load_optimizer_state(self.path, optimizer)


# --- saving ---------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    tokenizer: Tokenizer | None = None,
    preset: str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at `path` atomically, replacing one already there.

    `model` may be a GPT or a wrapper around one (torch.compile, DDP). `trainer_state`
    and `metadata` must be JSON-serialisable; that is checked before anything is written.
    """
    target = Path(path)
    gpt = _unwrap(model)
    config = gpt.config
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
            f"{config.vocab_size}; its ids would not fit the embedding"
        )
    state_json = None
    if trainer_state is not None:
        state_json = _dump_json(dict(trainer_state), what="trainer_state", allow_nan=True)
    metadata = dict(metadata or {})
    _dump_json(metadata, what="metadata", allow_nan=False)
    check_replaceable(target)

    with atomic_directory(target) as tmp:
        files: dict[str, str] = {}
        tensors, tied = stored_tensors(gpt)
        _save_safetensors(tensors, tmp / MODEL_FILE, {_TIED_META_KEY: json.dumps(tied)})
        files[MODEL_FILE] = _seal(tmp / MODEL_FILE)
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
            files[TOKENIZER_FILE] = _seal(tmp / TOKENIZER_FILE)
        if optimizer is not None:
            opt_tensors, structure = _flatten_optimizer_state(optimizer.state_dict())
            _save_safetensors(opt_tensors, tmp / OPTIMIZER_FILE, {_OPTIMIZER_META_KEY: structure})
            files[OPTIMIZER_FILE] = _seal(tmp / OPTIMIZER_FILE)
        if state_json is not None:
            _write_bytes(tmp / TRAINER_STATE_FILE, state_json)
            files[TRAINER_STATE_FILE] = _seal(tmp / TRAINER_STATE_FILE)
        manifest = CheckpointConfig(
            format_version=FORMAT_VERSION,
            model=config,
            preset=preset,
            microgpt_version=__version__,
            files=files,
            metadata=metadata,
        )
        config_json = _dump_json(manifest.model_dump(mode="json"), what="config", sort_keys=False)
        _write_bytes(tmp / CONFIG_FILE, config_json)
        _seal(tmp / CONFIG_FILE)
    return target


def _unwrap(model: nn.Module) -> GPT:
    """The GPT inside torch.compile's `_orig_mod` or DDP/FSDP's `module`."""
    seen = model
    while not isinstance(seen, GPT):
        inner = getattr(seen, "_orig_mod", None) or getattr(seen, "module", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"save_checkpoint needs a microgpt GPT, got {type(model).__name__}")
        seen = inner
    return seen


def stored_tensors(model: GPT) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each shared tensor once (on the CPU), and {alias: stored name} for
    the rest: the tensors a checkpoint stores, which quantization and benchmarks start from."""
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    owner: dict[tuple[Any, ...], str] = {}
    for name, t in model.state_dict().items():
        key = _storage_key(t)
        if key in owner:
            tied[name] = owner[key]
            continue
        owner[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, tied


def _storage_key(t: torch.Tensor) -> tuple[Any, ...]:
    storage = t.untyped_storage().data_ptr()
    return (t.device, storage, t.storage_offset(), tuple(t.shape), t.stride())


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    save_safetensors(path, tensors, {"format": "pt", **meta})


def _flatten_optimizer_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors by path ("state/0/exp_avg"), and the rest of the state dict as tagged JSON.

    Tags keep what JSON would lose: {"__tensor__": key}, {"__tuple__": [...]}, and
    {"__dict__": [[key, value], ...]} for dicts with non-string keys (the per-param state).
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[Any, ...]] = set()

    def encode(obj: Any, at: str) -> Any:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().to("cpu").contiguous()
            key = _storage_key(t)
            tensors[at] = t.clone() if key in seen else t  # safetensors refuses shared storage
            seen.add(key)
            return {"__tensor__": at}
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        if isinstance(obj, tuple):
            return {"__tuple__": [encode(v, f"{at}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [encode(v, f"{at}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: encode(v, f"{at}/{k}") for k, v in obj.items()}
            if all(isinstance(k, int | str) for k in obj):
                return {"__dict__": [[k, encode(v, f"{at}/{k}")] for k, v in obj.items()]}
        raise TypeError(
            f"optimizer state holds a {type(obj).__name__} at {at or '/'}, which a checkpoint "
            f"cannot store without pickle"
        )

    structure = encode(dict(state), "")
    return tensors, json.dumps(structure, sort_keys=True)


def _unflatten_optimizer_state(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(structure, list):
        return [_unflatten_optimizer_state(v, tensors) for v in structure]
    if isinstance(structure, dict):
        if set(structure) == {"__tensor__"}:
            return tensors[structure["__tensor__"]]
        if set(structure) == {"__tuple__"}:
            return tuple(_unflatten_optimizer_state(v, tensors) for v in structure["__tuple__"])
        if set(structure) == {"__dict__"}:
            return {k: _unflatten_optimizer_state(v, tensors) for k, v in structure["__dict__"]}
        return {k: _unflatten_optimizer_state(v, tensors) for k, v in structure.items()}
    return structure


def _dump_json(obj: Any, *, what: str, allow_nan: bool = False, sort_keys: bool = True) -> bytes:
    try:
        text = json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False, allow_nan=allow_nan)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serialisable: {e}") from e
    return (text + "\n").encode("utf-8")


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)


def _seal(path: Path) -> str:
    """fsync `path` and return its sha256 hex, in one read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        os.fsync(f.fileno())
    return h.hexdigest()


def seal_derived(directory: Path, source: Checkpoint, metadata: Mapping[str, Any]) -> None:
    """Write `directory/config.json` for files derived from `source` (a quantized or exported
    copy): the source's model config and preset, the sha256 of every file now in `directory`,
    and the source's metadata updated with `metadata`. Files are fsynced as they are hashed."""
    files = {p.name: _seal(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != CONFIG_FILE}
    manifest = CheckpointConfig(
        format_version=FORMAT_VERSION,
        model=source.config,
        preset=source.preset,
        microgpt_version=__version__,
        files=files,
        metadata={**source.metadata, **metadata},
    )
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    (directory / CONFIG_FILE).write_text(text, encoding="utf-8")
    _seal(directory / CONFIG_FILE)


def check_replaceable(target: str | os.PathLike[str]) -> None:
    """Refuse (CheckpointError) unless `target` is absent, empty or a checkpoint: only a checkpoint
    may be replaced, never other data. Writers of derived directories (quantized copies, exports)
    call it before replacing their output atomically, as save_checkpoint does."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise CheckpointError(f"refusing to replace {target}: it exists and is not a directory")
    if not (target / CONFIG_FILE).is_file() and any(target.iterdir()):
        raise CheckpointError(
            f"refusing to replace {target}: it is a non-empty directory without {CONFIG_FILE}, "
            f"so not a microgpt checkpoint"
        )


# --- loading --------------------------------------------------------------------------


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; anything else is a CheckpointError naming the file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    return raw


def read_config(path: str | os.PathLike[str]) -> CheckpointConfig:
    """Read and validate `path/config.json` alone (no weights are touched)."""
    root = _checkpoint_dir(Path(path))
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} is missing; {root} is not a microgpt checkpoint")
    raw = _json_object(cfg_path)
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path} has format_version {version!r}; this microgpt ({__version__}) reads "
            f"format_version {FORMAT_VERSION}"
        )
    check_model_bounds(raw.get("model"), str(cfg_path))  # before pydantic builds anything from them
    try:
        return CheckpointConfig.model_validate(raw)
    except ValidationError as e:
        raise CheckpointError(f"{cfg_path} is invalid: {e}") from e


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Checkpoint:
    """Load and verify a checkpoint; the model comes back in eval mode on `device`.

    `dtype` casts the floating-point weights; None keeps the dtype they were saved in.
    Nothing is unpickled: weights come only from safetensors, state only from JSON. The config's
    sizes are bounded and the weights file's header must describe exactly the config's model
    before anything is allocated, so the model built is no bigger than the file.
    """
    root = _checkpoint_dir(Path(path))
    cfg = read_config(root)
    tensors = _read_weights(root, cfg)
    with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the caller's RNG
        model = GPT(cfg.model)
    _, tied = stored_tensors(model)  # the model's own ties, e.g. lm_head.weight -> wte.weight
    for alias, stored in tied.items():
        tensors[alias] = tensors[stored]
    model.load_state_dict(tensors, strict=True)
    saved_dtype = tensors["wte.weight"].dtype
    model.to(device=device, dtype=dtype or saved_dtype)
    model.eval()

    tokenizer = read_tokenizer(root, cfg)
    trainer_state = read_trainer_state(root, cfg)

    return Checkpoint(
        path=root,
        model=model,
        config=cfg.model,
        tokenizer=tokenizer,
        preset=cfg.preset,
        metadata=dict(cfg.metadata),
        trainer_state=trainer_state,
        microgpt_version=cfg.microgpt_version,
    )


def read_tokenizer(root: Path, cfg: CheckpointConfig) -> Tokenizer | None:
    """The verified tokenizer.json of the checkpoint at `root` (None without one), checked to fit
    the model's vocab_size: the one tokenizer check for float and quantized weights alike."""
    if TOKENIZER_FILE not in cfg.files:
        _refuse_unlisted(root, TOKENIZER_FILE)
        return None
    tok_path = verified_file(root, TOKENIZER_FILE, cfg)
    try:
        tokenizer = tokenizer_from_json(json.loads(tok_path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{tok_path} is not a valid tokenizer: {e}") from e
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise CheckpointError(
            f"{tok_path} has {tokenizer.vocab_size} ids but {CONFIG_FILE} gives the model "
            f"vocab_size {cfg.model.vocab_size}"
        )
    return tokenizer


def read_trainer_state(root: Path, cfg: CheckpointConfig) -> dict[str, Any] | None:
    """The verified trainer_state.json of the checkpoint at `root`, None without one."""
    if TRAINER_STATE_FILE not in cfg.files:
        _refuse_unlisted(root, TRAINER_STATE_FILE)
        return None
    return _json_object(verified_file(root, TRAINER_STATE_FILE, cfg))


def load_optimizer_state(path: str | os.PathLike[str], optimizer: torch.optim.Optimizer) -> None:
    """Restore the optimizer state saved with a checkpoint into `optimizer` (built the same way).

    torch moves the state tensors to each parameter's device and dtype.
    """
    root = _checkpoint_dir(Path(path))
    cfg = read_config(root)
    if OPTIMIZER_FILE not in cfg.files:
        _refuse_unlisted(root, OPTIMIZER_FILE)
        raise CheckpointError(f"{root / OPTIMIZER_FILE} does not exist: saved without optimizer")
    opt_path = verified_file(root, OPTIMIZER_FILE, cfg)
    with _open_safetensors(opt_path) as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    try:
        structure = json.loads(meta[_OPTIMIZER_META_KEY])
        state = _unflatten_optimizer_state(structure, tensors)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{opt_path} has no readable optimizer structure: {e!r}") from e
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{opt_path} does not fit this optimizer: {e}") from e


def _checkpoint_dir(path: Path) -> Path:
    """`path` as a checkpoint directory, refusing pickle files and pickle-only directories."""
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES or _looks_like_pickle(path):
            raise CheckpointError(_pickle_message(path))
        raise CheckpointError(
            f"{path} is a file; a microgpt checkpoint is a directory holding {CONFIG_FILE} and {MODEL_FILE}"
        )
    if not path.is_dir():
        leftovers = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        hint = f" (an interrupted save left the old one at {leftovers[0]})" if leftovers else ""
        raise CheckpointError(f"no checkpoint at {path}: it does not exist{hint}")
    if not (path / MODEL_FILE).exists():
        for candidate in sorted(path.iterdir()):
            if candidate.is_file() and candidate.suffix.lower() in PICKLE_SUFFIXES:
                raise CheckpointError(_pickle_message(candidate))
    return path


def _pickle_message(path: Path) -> str:
    return (
        f"{path} is a pickle-based file; microgpt loads weights only from safetensors "
        f"(unpickling can run arbitrary code). Convert it in a trusted environment."
    )


def _looks_like_pickle(path: Path) -> bool:
    """torch.save writes a zip holding data.pkl (PK..) or, in the legacy format, raw pickle.

    A safetensors file starts with its header length (8 bytes) and then "{", which tells
    it apart even when that length happens to begin with the same bytes.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        return False
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # PROTO opcode
    return head.startswith(b"PK\x03\x04") or is_pickle


def verified_file(root: Path, name: str, cfg: CheckpointConfig) -> Path:
    """`root/name` after checking it exists, is no pickle, and matches its sha256 in `cfg`:
    for readers of files a checkpoint holds beside the float weights (quantized weights)."""
    path = root / name
    if not path.is_file():
        raise CheckpointError(f"{path} is missing, though {CONFIG_FILE} lists it")
    if _looks_like_pickle(path):
        raise CheckpointError(_pickle_message(path))
    actual, expected = file_sha256(path), cfg.files[name]
    if actual != expected:
        if name.endswith(".safetensors"):
            with _open_safetensors(path):
                pass  # raises "truncated or corrupt" when that is the cause
        raise CheckpointError(
            f"{path} failed its integrity check: sha256 is {actual} but {CONFIG_FILE} records "
            f"{expected}; the file changed after it was saved (tampered or corrupted)"
        )
    return path


def _refuse_unlisted(root: Path, name: str) -> None:
    if (root / name).exists():
        raise CheckpointError(
            f"{root / name} is not listed in {CONFIG_FILE}'s files, so it cannot be verified; "
            f"it was added after the checkpoint was saved"
        )


@contextlib.contextmanager
def _open_safetensors(path: Path) -> Iterator[Any]:
    """safe_open, with any parse error re-raised as a CheckpointError naming the file."""
    try:
        handle = safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # SafetensorError, OSError, ... from the Rust parser
        raise CheckpointError(f"{path} is truncated or corrupt (not valid safetensors): {e}") from e
    with handle as f:
        yield f


def _read_weights(root: Path, cfg: CheckpointConfig) -> dict[str, torch.Tensor]:
    if MODEL_FILE not in cfg.files:
        raise CheckpointError(f"{root / CONFIG_FILE} lists no sha256 for {MODEL_FILE}")
    path = verified_file(root, MODEL_FILE, cfg)
    with open(path, "rb") as header:
        check_weights_file(header, path.stat().st_size, MODEL_FILE, cfg.model, cfg.metadata, str(root))
    with _open_safetensors(path) as f:
        try:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        except Exception as e:
            raise CheckpointError(f"{path} is truncated or corrupt: {e}") from e
