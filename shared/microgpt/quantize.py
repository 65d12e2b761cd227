"""Weight-only int8 and int4 quantization of a model or a checkpoint (`microgpt.loading` loads them).

    microgpt quantize runs/shakespeare/checkpoint --mode int8 --out runs/shakespeare-int8

Formats, for every matrix a token multiplies through (the q/k/v and output projections
and both MLP matrices of each block, the LM head, and the token embedding, which a
tied LM head shares: one quantized tensor serves both):
- int8: symmetric, one fp32 scale per output row: W ~= q * scale, q in [-127, 127].
- int4: asymmetric, one bf16 scale and zero per group of `group_size` columns of a row:
  W ~= (q - 8) * scale + zero, q in [0, 15], two codes per byte (low nibble = even
  column). Rows are zero-padded to whole groups. That is 0.625 bytes a weight at
  group 32, against 4 for fp32.
Learned position embeddings, norm gains and biases stay fp32 (under 1% of the weights
of every preset), and so does everything between the matrices: the residual stream,
norms, attention and the KV cache.

Kernels, chosen by speed measured on this CPU (2-core EPYC, torch 2.13, one token
through a 384x1536 matrix): fp32 `F.linear` 76 us, bf16 66 us;
`torch._weight_int8pack_mm` 25 us with bf16 inputs (271 us with fp32 inputs);
`torch._weight_int4pack_mm_for_cpu` 19 us with bf16 inputs; torchao 0.18's
`Int8WeightOnlyConfig` 1,800 us, and its `Int4WeightOnlyConfig` needs the `mslk`
package. So on CPU a quantized Linear rounds its input to bf16 and runs torch's packed
kernel; on other devices it dequantizes the weight on the fly. The native decode step
(`microgpt.native`) runs int8 weights with its own kernel. int4 kernels need their
own packed copy of each matrix, built at load; a tied embedding keeps the stored
int4 codes beside it, which `weight_bytes` counts.

A quantized checkpoint is a checkpoint directory whose weights file is
`model.int8.safetensors` or `model.int4.safetensors` (tensors `<name>.qdata`,
`<name>.scales`, `<name>.zeros` for each quantized matrix `<name>`, plain tensors
for the rest); `config.json`'s metadata records `{"quantization": {"mode",
"group_size", "weights"}}` and its sha256 covers every file, as for any checkpoint.
Loading checks the file's header against that layout for the config's model before a tensor
is read (`checkpoint_check.quantized_weight_specs`, which the registry also runs at finalize).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from microgpt.atomic import atomic_directory
from microgpt.checkpoint import (
    TOKENIZER_FILE,
    CheckpointConfig,
    CheckpointError,
    check_replaceable,
    load_checkpoint,
    seal_derived,
    stored_tensors,
    verified_file,
)
from microgpt.checkpoint_check import INT4_GROUP_SIZES, check_weights_file, quantized_names
from microgpt.config import GPTConfig
from microgpt.model import GPT
from microgpt.precision import MODES, Mode
from microgpt.stable_safetensors import save_safetensors

FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the float precisions


def weights_file(mode: Mode) -> str:
    return f"model.{mode}.safetensors"


# --- tensors --------------------------------------------------------------------------


@dataclass
class Int8Weight:
    """W (N, K) ~= qdata * scales[:, None]."""

    qdata: torch.Tensor  # (N, K) int8
    scales: torch.Tensor  # (N,) fp32

    @classmethod
    def quantize(cls, w: torch.Tensor) -> Int8Weight:
        w = w.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        qdata = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        return cls(qdata.contiguous(), scales.contiguous())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.qdata.float() * self.scales[:, None]).to(dtype)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` (any shape) dequantized to fp32: (*idx.shape, K)."""
        return self.qdata[idx].float() * self.scales[idx][..., None]

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.qdata": self.qdata, f"{name}.scales": self.scales}


@dataclass
class Int4Weight:
    """W (N, K) ~= (q - 8) * scale + zero per group of `group_size` columns; codes packed two a byte."""

    qdata: torch.Tensor  # (N, Kp / 2) uint8, Kp = K rounded up to whole groups
    scales: torch.Tensor  # (N, Kp / group_size) bf16
    zeros: torch.Tensor  # (N, Kp / group_size) bf16
    in_features: int  # K

    @property
    def group_size(self) -> int:
        return 2 * self.qdata.shape[1] // self.scales.shape[1]

    @classmethod
    def quantize(cls, w: torch.Tensor, group_size: int) -> Int4Weight:
        if group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
        w = w.detach().float()
        n, k = w.shape
        kp = -(-k // group_size) * group_size
        groups = F.pad(w, (0, kp - k)).view(n, kp // group_size, group_size)
        lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
        # Scale and zero are rounded to bf16 first, and the codes chosen against the rounded values.
        scales = ((hi - lo) / 15).clamp(min=1e-8).to(torch.bfloat16)
        zeros = (lo + 8 * scales.float()).to(torch.bfloat16)
        codes = ((groups - zeros.float()[..., None]) / scales.float()[..., None] + 8).round().clamp(0, 15)
        codes = codes.to(torch.uint8).view(n, kp)
        qdata = codes[:, 0::2] | (codes[:, 1::2] << 4)
        return cls(qdata.contiguous(), scales.contiguous(), zeros.contiguous(), k)

    def codes(self, idx: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """The 4-bit codes (..., Kp) as uint8, of rows `idx`."""
        packed = self.qdata[idx]
        return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)

    def rows(self, idx: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """Rows `idx` dequantized to fp32: (..., K)."""
        codes = self.codes(idx).float()
        g = self.group_size
        groups = codes.unflatten(-1, (-1, g))
        w = (groups - 8) * self.scales[idx].float()[..., None] + self.zeros[idx].float()[..., None]
        return w.flatten(-2)[..., : self.in_features]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.rows().to(dtype)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.qdata": self.qdata, f"{name}.scales": self.scales, f"{name}.zeros": self.zeros}


QuantizedWeight = Int8Weight | Int4Weight


# --- modules --------------------------------------------------------------------------


class Int8Linear(nn.Module):
    """A Linear with int8 weights; on CPU, torch's int8 kernel on bf16-rounded inputs."""

    qweight: torch.Tensor  # buffers
    scales: torch.Tensor
    kernel_scales: torch.Tensor

    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.qdata.shape
        self.register_buffer("qweight", weight.qdata)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("kernel_scales", weight.scales.to(torch.bfloat16), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    @property
    def weight(self) -> Int8Weight:
        return Int8Weight(self.qweight, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            y = torch._weight_int8pack_mm(flat, self.qweight, self.kernel_scales)
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.qweight.to(x.dtype) * self.scales[:, None].to(x.dtype))
        return y if self.bias is None else y + self.bias


class Int4Linear(nn.Module):
    """A Linear with group-wise int4 weights.

    With `packed_kernel` (CPU), the codes are repacked once for torch's int4 kernel, rows
    padded to a multiple of 16 as it needs; otherwise each call dequantizes the weight.
    """

    kernel_weight: torch.Tensor  # buffers, with packed_kernel
    kernel_scales_zeros: torch.Tensor
    qweight: torch.Tensor  # buffers, without it
    scales: torch.Tensor
    zeros: torch.Tensor

    def __init__(self, weight: Int4Weight, bias: torch.Tensor | None, *, packed_kernel: bool) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.qdata.shape[0], weight.in_features
        self.group_size = weight.group_size
        self.padded_in = 2 * weight.qdata.shape[1]
        self.packed_kernel = packed_kernel
        if packed_kernel:
            n_pad = -(-self.out_features // 16) * 16 - self.out_features
            codes = F.pad(weight.codes().to(torch.int32), (0, 0, 0, n_pad))
            scales_zeros = torch.stack([weight.scales, weight.zeros], dim=-1)  # (N, G, 2)
            scales_zeros = F.pad(scales_zeros, (0, 0, 0, 0, 0, n_pad)).transpose(0, 1).contiguous()
            self.register_buffer("kernel_weight", torch._convert_weight_to_int4pack_for_cpu(codes, 1))
            self.register_buffer("kernel_scales_zeros", scales_zeros)  # (G, Np, 2) bf16
        else:
            self.register_buffer("qweight", weight.qdata)
            self.register_buffer("scales", weight.scales)
            self.register_buffer("zeros", weight.zeros)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_kernel:
            flat = F.pad(x.reshape(-1, self.in_features), (0, self.padded_in - self.in_features))
            y = torch._weight_int4pack_mm_for_cpu(
                flat.to(torch.bfloat16), self.kernel_weight, self.group_size, self.kernel_scales_zeros
            )
            y = y[:, : self.out_features].to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            w = Int4Weight(self.qweight, self.scales, self.zeros, self.in_features).dequantize(x.dtype)
            y = F.linear(x, w)
        return y if self.bias is None else y + self.bias


class QuantizedEmbedding(nn.Module):
    """Token embedding rows read from int8 or int4 weights (shared with a tied LM head)."""

    qweight: torch.Tensor  # buffers; zeros for int4 only
    scales: torch.Tensor
    zeros: torch.Tensor

    def __init__(self, weight: QuantizedWeight) -> None:
        super().__init__()
        self.kind = "int8" if isinstance(weight, Int8Weight) else "int4"
        self.register_buffer("qweight", weight.qdata)
        self.register_buffer("scales", weight.scales)
        if isinstance(weight, Int4Weight):
            self.register_buffer("zeros", weight.zeros)
            self.in_features = weight.in_features

    @property
    def weight(self) -> QuantizedWeight:
        if self.kind == "int8":
            return Int8Weight(self.qweight, self.scales)
        return Int4Weight(self.qweight, self.scales, self.zeros, self.in_features)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight.rows(idx)


# --- quantizing a model ----------------------------------------------------------------


def quantize_tensors(
    tensors: dict[str, torch.Tensor], config: GPTConfig, mode: Mode, group_size: int = 32
) -> dict[str, torch.Tensor]:
    """A float state dict (tied tensors once) -> the tensors of the quantized format."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")
    if mode == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    quantized = set(quantized_names(config))
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        if name in quantized:
            q = Int8Weight.quantize(t) if mode == "int8" else Int4Weight.quantize(t, group_size)
            out.update(q.tensors(name))
        else:
            out[name] = t.detach().float().contiguous()
    return out


def _read_weight(
    tensors: dict[str, torch.Tensor], name: str, mode: Mode, in_features: int
) -> QuantizedWeight:
    try:
        if mode == "int8":
            return Int8Weight(tensors.pop(f"{name}.qdata"), tensors.pop(f"{name}.scales"))
        return Int4Weight(
            tensors.pop(f"{name}.qdata"),
            tensors.pop(f"{name}.scales"),
            tensors.pop(f"{name}.zeros"),
            in_features,
        )
    except KeyError as e:
        raise CheckpointError(f"the {mode} weights have no {e.args[0]}") from e


def build_quantized_model(
    config: GPTConfig, tensors: dict[str, torch.Tensor], mode: Mode, *, device: str | torch.device = "cpu"
) -> GPT:
    """A GPT in eval mode whose matrices are the quantized `tensors` (as `quantize_tensors` makes them)."""
    device = torch.device(device)
    tensors = dict(tensors)
    with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the caller's RNG
        model = GPT(config).eval()
    shapes = {name: p.shape for name, p in model.named_parameters()}
    weights = {name: _read_weight(tensors, name, mode, shapes[name][1]) for name in quantized_names(config)}
    for name, w in weights.items():
        got = (w.qdata.shape[0], w.in_features if isinstance(w, Int4Weight) else w.qdata.shape[1])
        if got != tuple(shapes[name]):
            raise CheckpointError(
                f"{name} is {got} in the {mode} weights but the model needs {tuple(shapes[name])}"
            )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    expected_missing = set(quantized_names(config)) | {"lm_head.weight"}
    if unexpected or set(missing) - expected_missing:
        raise CheckpointError(
            f"the {mode} weights do not match the model: missing {sorted(set(missing) - expected_missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    kernel = device.type == "cpu"

    def linear(w: QuantizedWeight, bias: torch.Tensor | None) -> nn.Module:
        if isinstance(w, Int8Weight):
            return Int8Linear(w, bias)
        return Int4Linear(w, bias, packed_kernel=kernel)

    for i, block in enumerate(model.blocks):
        for parent, attr, name in (
            (block.attn, "qkv", "attn.qkv"),
            (block.attn, "proj", "attn.proj"),
            (block.mlp, "fc", "mlp.fc"),
            (block.mlp, "proj", "mlp.proj"),
        ):
            setattr(parent, attr, linear(weights[f"blocks.{i}.{name}.weight"], getattr(parent, attr).bias))
    head = weights["wte.weight"] if config.tie_embeddings else weights["lm_head.weight"]
    model.lm_head = linear(head, None)  # the head never has a bias
    model.wte = QuantizedEmbedding(weights["wte.weight"])
    return model.to(device)  # the init and the loaded plain tensors are fp32 already


def quantize_model(model: GPT, mode: Mode, group_size: int = 32) -> GPT:
    """A quantized copy of a float model, on the model's device."""
    tensors, _ = stored_tensors(model)
    device = next(model.parameters()).device
    quantized = quantize_tensors(tensors, model.config, mode, group_size)
    return build_quantized_model(model.config, quantized, mode, device=device)


# --- checkpoints ----------------------------------------------------------------------


def quantize_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], mode: Mode, group_size: int = 32
) -> Path:
    """Write a servable checkpoint at `dst` holding `src`'s weights quantized to `mode` (atomically)."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise ValueError(f"--out must differ from the source checkpoint {src}")
    ckpt = load_checkpoint(src, dtype=torch.float32)
    float_tensors, _ = stored_tensors(ckpt.model)
    tensors = quantize_tensors(float_tensors, ckpt.config, mode, group_size)
    check_replaceable(dst)
    name = weights_file(mode)
    quantization = {"mode": mode, "group_size": group_size if mode == "int4" else None, "weights": name}
    with atomic_directory(dst) as tmp:
        save_safetensors(tmp / name, tensors, {"format": "pt"})
        if ckpt.tokenizer is not None:
            (tmp / TOKENIZER_FILE).write_bytes((src / TOKENIZER_FILE).read_bytes())
        seal_derived(tmp, ckpt, {"quantization": quantization})
    return dst


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, shared tensors once (rotary tables excluded)."""
    seen: set[int] = set()
    total = 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name in ("rope_cos", "rope_sin") or t.untyped_storage().data_ptr() in seen:
            continue
        seen.add(t.untyped_storage().data_ptr())
        total += t.numel() * t.element_size()
    return total


def read_quantized_tensors(root: Path, cfg: CheckpointConfig, mode: Mode) -> dict[str, torch.Tensor]:
    """The verified tensors of `root`'s stored `mode` weights file, for `build_quantized_model`;
    its header must describe exactly the config's model before a tensor is read (the model
    `build_quantized_model` allocates is then no bigger than the file says)."""
    path = verified_file(root, weights_file(mode), cfg)
    with open(path, "rb") as header:
        check_weights_file(header, path.stat().st_size, path.name, cfg.model, cfg.metadata, str(root))
    try:
        # Copies: torch's packed kernels need aligned data, which tensors in the file's buffer may lack.
        return {k: t.clone() for k, t in safetensors.torch.load_file(path).items()}
    except Exception as e:  # the Rust parser's errors
        raise CheckpointError(f"{path} is truncated or corrupt: {e}") from e
