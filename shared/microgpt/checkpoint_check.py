"""Checking a checkpoint before anything is allocated: config bounds and the safetensors headers.

A checkpoint's config.json decides how much memory loading takes (`GPT(config)` allocates
every weight before the file's tensors are copied in), so a hostile or broken one
(`vocab_size=-1`, `n_embd=1e9`, `n_layer=100000`, a pickle renamed `model.safetensors`)
must be refused from a few kilobytes of JSON and header, not after minutes of CPU and
gigabytes of RSS. Each check raises a `CheckpointError` naming the file and the field:

- `check_model_bounds`: every size in the model config is within what any model this
  project runs could need (far above GPT-2 XL and Llama-3-70B shapes); `read_config` runs it.
- `read_safetensors_header`: the header (8-byte length, JSON) is parsed from the first bytes
  only; every tensor's dtype and shape must account for exactly its byte range, the ranges
  must tile the data section and the data must end where the file does. The tensors a
  loader allocates then add up to the file's size, never to more.
- `check_weights_header`: the names, shapes and dtypes must be those of the config's model,
  float (`float_weight_specs`) or quantized (`quantized_weight_specs`), so the model built
  from the config is no bigger than its weights file says (the quantized layout lives here,
  beside the float one, because `microgpt.checkpoint` and `microgpt.quantize` both need it).

`load_checkpoint` and the quantized loader run these on a directory before reading a tensor;
the registry runs `check_checkpoint` at finalize over the object store (a reader of each
blob's first bytes), so a bad version is refused at upload time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from pydantic import ValidationError

from microgpt.config import GPTConfig
from microgpt.model import GPT

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"

# Upper bounds on a model's sizes: each far above any shape microgpt's presets or the models it
# imports use (GPT-2 XL: n_embd 1600, 48 layers; Llama-3-70B: 8192, 80 layers, vocab 128256).
MODEL_BOUNDS: dict[str, int] = {
    "vocab_size": 1 << 20,
    "block_size": 1 << 18,
    "n_layer": 1024,
    "n_head": 1024,
    "n_kv_head": 1024,
    "n_embd": 1 << 16,
    "mlp_hidden": 1 << 18,
}
# Rotary tables, (block_size, head_size) cos and sin built at construction, are the one allocation
# no weight accounts for: bound them (1 << 26 entries is 512 MiB in the float64 they start as).
MAX_ROPE_ENTRIES = 1 << 26
MAX_HEADER_BYTES = 100 << 20  # safetensors' own parser refuses headers over 100 MB
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4 CPU kernel takes
_LAYER = re.compile(r"blocks\.0\.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or used; the message names the offending file."""


class ByteSource(Protocol):
    """What a header is read from: an open file, or a stored blob's stream in the registry."""

    def read(self, n: int, /) -> bytes: ...


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as a safetensors header describes it."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Expected:
    """What a weights file must hold under one name: a shape, and the dtypes it may have."""

    shape: tuple[int, ...]
    dtypes: frozenset[str]


def check_model_bounds(raw: Any, where: str) -> None:
    """Refuse config.json's "model" (`raw`, parsed JSON) if a size is outside `MODEL_BOUNDS`.

    Checked on the raw JSON, before pydantic, so `1e9` or `2**40` is refused by name before any
    derived size is computed or anything is built from it."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: 'model' must be a JSON object, got {type(raw).__name__}")
    for name, bound in MODEL_BOUNDS.items():
        value = raw.get(name)
        if value is None and name in ("n_kv_head", "mlp_hidden"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= bound:
            raise CheckpointError(
                f"{where}: model.{name} is {value!r}; it must be an integer in [1, {bound}]"
            )
    head_size = raw["n_embd"] // raw["n_head"]
    if raw.get("position") == "rope" and raw["block_size"] * head_size > MAX_ROPE_ENTRIES:
        raise CheckpointError(
            f"{where}: model.block_size {raw['block_size']} x head size {head_size} makes rotary tables "
            f"over {MAX_ROPE_ENTRIES} entries"
        )


def read_safetensors_header(f: ByteSource, file_size: int, where: str) -> dict[str, TensorSpec]:
    """The tensors the header at the start of `f` describes, checked against `file_size`.

    Reads only the header's bytes. Refuses pickles and zips (torch.save), a header longer than
    the file, byte ranges that do not match dtype x shape, overlaps or gaps, and a data section
    that does not end exactly at the end of the file."""
    head = f.read(8)
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise CheckpointError(
            f"{where} is a pickle-based file (torch.save), not safetensors; microgpt loads weights "
            f"only from safetensors (unpickling can run arbitrary code)"
        )
    if len(head) < 8:
        raise CheckpointError(
            f"{where} is truncated: {len(head)} bytes, not even a safetensors header length"
        )
    length = int.from_bytes(head, "little")
    if length > min(MAX_HEADER_BYTES, file_size - 8):
        raise CheckpointError(
            f"{where} is not valid safetensors: its header claims {length} bytes but the file has {file_size}"
        )
    raw = f.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where} is not valid safetensors: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} is not valid safetensors: its header is not a JSON object")
    tensors = {
        name: _tensor_spec(entry, f"{where}: tensor {name!r}")
        for name, entry in header.items()
        if name != "__metadata__"
    }
    _check_tiling(tensors, file_size - 8 - length, where)
    return tensors


def _tensor_spec(entry: Any, where: str) -> TensorSpec:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} is not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise CheckpointError(f"{where} has dtype {dtype!r}, which safetensors does not define")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(f"{where} has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise CheckpointError(f"{where} has data_offsets {offsets!r}, not [begin, end]")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
    if not 0 <= begin <= end or end - begin != nbytes:
        raise CheckpointError(
            f"{where} is {dtype} {tuple(shape)} ({nbytes} bytes) but data_offsets {offsets} "
            f"span {end - begin}"
        )
    return TensorSpec(dtype, tuple(shape), begin, end)


def _check_tiling(tensors: Mapping[str, TensorSpec], data_bytes: int, where: str) -> None:
    """The byte ranges must cover the data section exactly, without overlap: the file's size is
    then the sum of its tensors' sizes, so nothing is hidden in it and nothing is missing."""
    at = 0
    for name, spec in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if spec.begin != at:
            what = "overlaps the previous one" if spec.begin < at else f"leaves a gap at byte {at}"
            raise CheckpointError(f"{where} is not valid safetensors: tensor {name!r} {what}")
        at = spec.end
    if at != data_bytes:
        raise CheckpointError(
            f"{where} is truncated or padded: its tensors take {at} bytes of data but the file "
            f"holds {data_bytes}"
        )


def float_weight_specs(config: GPTConfig) -> dict[str, Expected]:
    """The names and shapes `save_checkpoint` stores for `config`'s model (tied tensors once).

    Built on the meta device (no memory) with one block whose names are repeated for every
    layer: all blocks have the same shapes, and building 1024 of them takes seconds."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = GPT(config.updated(n_layer=1))
    # On the meta device every tensor has data pointer 0, so ties are found by identity instead.
    seen: set[int] = set()
    specs: dict[str, Expected] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        layers = range(config.n_layer) if _LAYER.match(name) else [None]
        for i in layers:
            specs[name if i is None else _LAYER.sub(f"blocks.{i}.", name, count=1)] = Expected(
                tuple(t.shape), FLOAT_DTYPES
            )
    return specs


def quantized_names(config: GPTConfig) -> list[str]:
    """The weights that quantization replaces (a tied LM head is `wte.weight`)."""
    names = ["wte.weight"]
    for i in range(config.n_layer):
        names += [f"blocks.{i}.{m}.weight" for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]
    if not config.tie_embeddings:
        names.append("lm_head.weight")
    return names


def quantized_weight_specs(config: GPTConfig, mode: str, group_size: int) -> dict[str, Expected]:
    """The tensors `microgpt.quantize` writes for `config`'s model (see its docstring): each
    quantized (N, K) matrix as int8 codes and fp32 row scales, or as int4 codes two a byte and
    bf16 scales and zeros per group; every other tensor fp32."""
    specs: dict[str, Expected] = {}
    quantized = set(quantized_names(config))
    for name, spec in float_weight_specs(config).items():
        if name not in quantized:
            specs[name] = Expected(spec.shape, frozenset({"F32"}))
            continue
        n, k = spec.shape
        if mode == "int8":
            specs[f"{name}.qdata"] = Expected((n, k), frozenset({"I8"}))
            specs[f"{name}.scales"] = Expected((n,), frozenset({"F32"}))
        else:
            kp = -(-k // group_size) * group_size
            specs[f"{name}.qdata"] = Expected((n, kp // 2), frozenset({"U8"}))
            specs[f"{name}.scales"] = Expected((n, kp // group_size), frozenset({"BF16"}))
            specs[f"{name}.zeros"] = Expected((n, kp // group_size), frozenset({"BF16"}))
    return specs


def check_weights_header(
    tensors: Mapping[str, TensorSpec], expected: Mapping[str, Expected], config: GPTConfig, where: str
) -> None:
    """The header's tensors must be exactly `expected`: names, shapes and dtypes."""
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    wrong = [
        f"{name} {tensors[name].shape} (the config's model needs {e.shape})"
        for name, e in expected.items()
        if name in tensors and tensors[name].shape != e.shape
    ]
    if wrong:
        problems.append(f"wrong shapes: {_some(wrong)}")
    dtypes = [
        f"{name} ({tensors[name].dtype}, not {'/'.join(sorted(e.dtypes))})"
        for name, e in expected.items()
        if name in tensors and tensors[name].dtype not in e.dtypes
    ]
    if dtypes:
        problems.append(f"wrong dtypes: {_some(dtypes)}")
    if problems:
        raise CheckpointError(
            f"{where} does not match the model in {CONFIG_FILE} (n_layer={config.n_layer}, "
            f"n_embd={config.n_embd}, vocab_size={config.vocab_size}): " + "; ".join(problems)
        )


def expected_weights(
    name: str, config: GPTConfig, metadata: Mapping[str, Any], where: str
) -> dict[str, Expected] | None:
    """What the weights file `name` of a checkpoint must hold, None if it is no weights file:
    `model.safetensors` the float weights, `model.{int8,int4}.safetensors` the quantized ones
    (int4 at the group size config.json's metadata records)."""
    if name == MODEL_FILE:
        return float_weight_specs(config)
    for mode in ("int8", "int4"):
        if name == f"model.{mode}.safetensors":
            quantization = metadata.get("quantization")
            group_size = quantization.get("group_size") if isinstance(quantization, Mapping) else None
            if mode == "int4" and group_size not in INT4_GROUP_SIZES:
                raise CheckpointError(
                    f"{where}/{CONFIG_FILE}: metadata.quantization.group_size is {group_size!r}; "
                    f"int4 weights need one of {INT4_GROUP_SIZES}"
                )
            return quantized_weight_specs(config, mode, group_size or 0)
    return None


def check_weights_file(
    f: ByteSource, file_size: int, name: str, config: GPTConfig, metadata: Mapping[str, Any], where: str
) -> None:
    """Refuse the safetensors file `name` (open as `f`) unless its header is valid and, for a
    weights file, describes exactly the tensors of `config`'s model. Reads only the header."""
    tensors = read_safetensors_header(f, file_size, f"{where}/{name}")
    expected = expected_weights(name, config, metadata, where)
    if expected is not None:
        check_weights_header(tensors, expected, config, f"{where}/{name}")


def check_checkpoint(
    config: Mapping[str, Any] | None,
    sizes: Mapping[str, int],
    open_file: Callable[[str], AbstractContextManager[ByteSource]],
    where: str,
) -> None:
    """Check a checkpoint's parsed config.json against its files before any tensor is read: what
    the registry runs at finalize. `sizes` maps each file name to its byte size; `open_file(name)`
    returns a reader of its bytes (only the header's are read). Every `*.safetensors` file's
    header is checked; weights files must also match the config's model. Without a config.json
    with a "model" (not a microgpt checkpoint), only the headers are checked."""
    model: GPTConfig | None = None
    if config is not None and "model" in config:
        model = model_config(config["model"], f"{where}/{CONFIG_FILE}")
    metadata = config.get("metadata") if config is not None else None
    metadata = metadata if isinstance(metadata, Mapping) else {}
    for name, size in sorted(sizes.items()):
        if not name.endswith(".safetensors"):
            continue
        with open_file(name) as f:
            if model is None:
                read_safetensors_header(f, size, f"{where}/{name}")
            else:
                check_weights_file(f, size, name, model, metadata, where)


def model_config(raw: Any, where: str) -> GPTConfig:
    """config.json's "model" (parsed JSON) as a GPTConfig: bounds first, then validation."""
    check_model_bounds(raw, where)
    try:
        return GPTConfig.model_validate(dict(raw))
    except ValidationError as e:
        problems = "; ".join(f"model.{'.'.join(map(str, x['loc'])) or '?'}: {x['msg']}" for x in e.errors())
        raise CheckpointError(f"{where}: {problems}") from None


def _some(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
