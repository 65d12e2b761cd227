"""Command lines of the serving half: `microgpt quantize` and `microgpt bench quantize|engine`.

Handlers import torch and the engine only when they run, so the CLI starts fast.
"""

from __future__ import annotations

import argparse


def cmd_quantize(args: argparse.Namespace) -> None:
    from microgpt.quantize import quantize_checkpoint

    out = quantize_checkpoint(args.checkpoint, args.out, args.mode, args.group_size)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote the {args.mode} checkpoint {out} ({size / 1e6:.1f} MB)")


def cmd_bench_quantize(args: argparse.Namespace) -> None:
    from microgpt.bench.quantize import run

    run(
        preset=args.preset,
        steps=args.steps,
        tokens=args.tokens,
        runs=args.runs,
        threads=args.threads,
        data=args.data,
    )


def cmd_bench_engine(args: argparse.Namespace) -> None:
    from microgpt.bench.engine import run

    run(
        preset=args.preset,
        precision=args.precision,
        streams=args.streams,
        tokens=args.tokens,
        threads=args.threads,
    )


def register(commands: argparse._SubParsersAction) -> None:
    quantize = commands.add_parser("quantize", help="write an int8 or int4 weight-only copy of a checkpoint")
    quantize.add_argument("checkpoint", help="float checkpoint directory")
    quantize.add_argument("--mode", choices=["int8", "int4"], required=True)
    quantize.add_argument("--out", required=True, help="directory for the quantized checkpoint")
    quantize.add_argument(
        "--group-size", type=int, default=32, help="int4 columns per scale: 32, 64, 128, 256"
    )
    quantize.set_defaults(run=cmd_quantize)


def register_bench(bench: argparse._SubParsersAction) -> None:
    q = bench.add_parser("quantize", help="int8/int4 vs fp32: decode speed, weight bytes, loss delta")
    q.add_argument("--preset", default="gpt2-small", help="model for speed and bytes (random init)")
    q.add_argument("--steps", type=int, default=300, help="training steps of the shakespeare-cpu loss model")
    q.add_argument("--tokens", type=int, default=128, help="tokens per timed generation")
    q.add_argument("--runs", type=int, default=3)
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--data", default=None, help="text for the loss model (default: the shakespeare data set)")
    q.set_defaults(run=cmd_bench_quantize)
    e = bench.add_parser("engine", help="BatchEngine: one stream vs N concurrent, tokens/s and TTFT")
    e.add_argument("--preset", default="shakespeare")
    e.add_argument("--precision", nargs="+", default=["int8", "bf16", "fp32"])
    e.add_argument("--streams", type=int, default=32)
    e.add_argument("--tokens", type=int, default=128, help="tokens per request")
    e.add_argument("--threads", type=int, default=None)
    e.set_defaults(run=cmd_bench_engine)
