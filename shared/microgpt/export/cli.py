"""The `microgpt export` and `microgpt import` commands.

    microgpt export runs/names/checkpoint --format gguf --quant q8_0 --out runs/names-gguf
    microgpt export names@production --format hf --out names-hf     # a registry ref is pulled first
    microgpt import hf ./some-gpt2-dir --out runs/imported

Expected failures (no such checkpoint, a shape with no counterpart in the format) are
ValueErrors, which `microgpt.cli` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse

from microgpt.export.formats import FORMATS, QUANTS
from microgpt.model_source import checkpoint_path


def cmd_export(args: argparse.Namespace) -> None:
    from microgpt.export import export_checkpoint

    done = export_checkpoint(
        checkpoint_path(args.checkpoint),
        args.out,
        args.format,
        quant=args.quant,
        opset=args.opset,
        cache=not args.no_cache,
        parity=not args.no_parity,
    )
    size = sum(f.stat().st_size for f in done.path.iterdir() if f.is_file())
    print(f"wrote the {args.format} export {done.path} ({size / 1e6:.1f} MB)")
    for note in done.notes:
        print(f"  {note}")
    print(
        f"  parity: {done.parity.summary()}"
        if done.parity
        else "  parity: runtime not installed, not measured"
    )


def cmd_import(args: argparse.Namespace) -> None:
    from microgpt.export.hf_import import import_hf

    out = import_hf(args.source, args.out)
    print(f"imported {args.source} as the microgpt checkpoint {out}")


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="write a checkpoint for transformers (hf), llama.cpp (gguf) or onnxruntime (onnx)"
    )
    export.add_argument("checkpoint", help="float checkpoint directory or registry ref (name@alias, name/3)")
    export.add_argument("--format", choices=FORMATS, default="onnx")
    export.add_argument("--quant", choices=QUANTS, default=None, help="gguf tensor type (default f32)")
    export.add_argument("--out", required=True, help="directory for the export")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    export.add_argument("--no-cache", action="store_true", help="onnx: the graph without a KV cache")
    export.add_argument("--no-parity", action="store_true", help="skip running the export in its runtime")
    export.set_defaults(run=cmd_export)

    importer = commands.add_parser("import", help="bring another framework's checkpoint into microgpt")
    kinds = importer.add_subparsers(dest="kind", required=True)
    hf = kinds.add_parser("hf", help="a GPT-2- or Llama-shaped transformers checkpoint directory")
    hf.add_argument("source", help="directory with config.json and model.safetensors")
    hf.add_argument("--out", required=True, help="directory for the microgpt checkpoint")
    hf.set_defaults(run=cmd_import)
