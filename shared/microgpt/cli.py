"""The `microgpt` command line.

    microgpt zoo                                  # presets with parameter counts
    microgpt sample CKPT --prompt "ma" -n 5       # text from a checkpoint
    microgpt reference --data names --out ckpt    # train with the pure-Python engine
    microgpt tokenizer train --kind bpe --vocab-size 4096 --data pystdlib --out tok.json
    microgpt data prepare shakespeare             # download once, verify, write token shards
    microgpt eval CKPT --data names-32k           # loss, perplexity, bits per byte
    microgpt chat CKPT                            # interactive, streamed
    microgpt bench generate                       # decode speed vs this machine's ceilings
    microgpt build-kernels                        # compile the C++ kernels now (make install does)
    microgpt inspect lens CKPT --text "ROMEO:" --out lens.png   # look inside: attention, lens, heads...
    microgpt plot runs/a runs/b --out curves.png  # training curves, runs overlaid

Every expected failure (bad path, bad checkpoint, bad parameter) prints one line
on stderr and exits with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from microgpt.bench.serve import register_bench as register_serve_bench
from microgpt.chat import register as register_chat
from microgpt.cpp import register as register_build_kernels
from microgpt.curves import register as register_plot
from microgpt.data.cli import register as register_data
from microgpt.evaluate import register as register_eval
from microgpt.export import register as register_export
from microgpt.interpret.cli import register as register_inspect
from microgpt.jobs_cli import register as register_jobs
from microgpt.model_source import add_model_arguments
from microgpt.registry.cli import register as register_registry
from microgpt.registry.cli import register_bench as register_registry_bench
from microgpt.service_entry import ServicesMissing, service_entry
from microgpt.serving.cli import register as register_quantize
from microgpt.serving.cli import register_bench as register_serving_bench
from microgpt.tokenizers.cli import register as register_tokenizer
from microgpt.tokenizers.cli import register_bench as register_tokenizer_bench
from microgpt.train.cli import register as register_train

if TYPE_CHECKING:
    from microgpt.reference import TrainResult  # the reference engine is imported only when used

EXIT_USAGE = 2


def cmd_zoo(args: argparse.Namespace) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from microgpt.model import GPT
    from microgpt.zoo import PRESETS

    table = Table("preset", "params", "layers", "dims", "heads (kv)", "context", "vocab", "shape")
    for preset in PRESETS.values():
        cfg = preset.model
        with torch.device("meta"):  # counts parameters without allocating them
            n = GPT(cfg).num_params()
        shape = f"{cfg.position}/{cfg.norm}/{cfg.mlp}" + ("" if cfg.tie_embeddings else "/untied")
        table.add_row(
            preset.name,
            f"{n:,}",
            str(cfg.n_layer),
            str(cfg.n_embd),
            f"{cfg.n_head} ({cfg.kv_heads})",
            str(cfg.block_size),
            str(cfg.vocab_size),
            shape,
        )
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for preset in PRESETS.values():
        console.print(f"[bold]{preset.name}[/]: {preset.source}", highlight=False)


def cmd_sample(args: argparse.Namespace) -> None:
    from microgpt.loading import load_model
    from microgpt.sampling import SamplingParams
    from microgpt.textgen import complete, stream_text

    ckpt = load_model(args.checkpoint, precision=args.precision)
    tokenizer = ckpt.text_tokenizer()
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop or [],
        seed=args.seed,
    )
    if args.stream:
        print(args.prompt, end="", flush=True)
        for delta in stream_text(ckpt.model, tokenizer, args.prompt, params, backend=args.backend):
            print(delta, end="", flush=True)
        print()
        return
    # One seed per sample (seed, seed+1, ...): reproducible, yet not n copies of one sample.
    per_sample = [
        params if args.seed is None else params.model_copy(update={"seed": args.seed + i})
        for i in range(args.num_samples)
    ]
    prompts = [args.prompt] * args.num_samples
    for completion in complete(ckpt.model, tokenizer, prompts, per_sample, backend=args.backend):
        print(args.prompt + completion.text)


def cmd_reference(args: argparse.Namespace) -> None:
    from microgpt import reference
    from microgpt.data.sources import load_documents
    from microgpt.settings import get_settings

    docs = load_documents(args.data, cache_dir=get_settings().cache)
    result = reference.train(docs, steps=args.steps, seed=args.seed)
    print(f"--- {args.samples} samples (temperature {args.temperature}) ---")
    for text in result.samples(args.samples, temperature=args.temperature, seed=args.seed):
        print(text)
    if args.out:
        save_reference_checkpoint(result, args.out)
        print(f"saved a checkpoint to {args.out}; try: microgpt sample {args.out}")


def save_reference_checkpoint(result: TrainResult, out: str) -> None:
    """The reference engine's weights as a torch checkpoint: same names, same math."""
    import torch

    from microgpt.checkpoint import save_checkpoint
    from microgpt.config import GPTConfig
    from microgpt.model import GPT
    from microgpt.tokenizers import CharTokenizer

    model = GPT(GPTConfig(**result.model.config))
    state = {name: torch.tensor(value) for name, value in result.model.state_dict().items()}
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    save_checkpoint(out, model, tokenizer=CharTokenizer(result.chars), preset="micro")


def cmd_bench_generate(args: argparse.Namespace) -> None:
    from microgpt.bench.generate import run
    from microgpt.generate import BACKENDS
    from microgpt.quantize import FLOAT_DTYPES

    for name in args.precision:
        if name not in FLOAT_DTYPES:
            raise ValueError(f"unknown precision {name!r}; choose from {', '.join(FLOAT_DTYPES)}")
    for name in args.backend:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    run(args.preset, args.precision, args.backend, tokens=args.tokens, runs=args.runs, threads=args.threads)


def one_line(error: Exception) -> str:
    """The error as one line; pydantic errors become `field: message; ...`."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in error.errors())
    return " ".join(str(error).split())


def cmd_bench_train(args: argparse.Namespace) -> None:
    from microgpt.bench.train import RECIPES, run
    from microgpt.settings import get_settings

    for name in args.only or []:
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    run(get_settings().cache, args.only)


def cmd_bench_prepare(args: argparse.Namespace) -> None:
    from microgpt.bench.prepare import run

    if run(args.size_gb, tokenizer=args.tokenizer)["peak_rss_bytes"] >= 1 << 30:
        raise ValueError("peak RSS reached 1 GiB: preparation is not streaming")


SERVICE_COMMANDS = ("serve", "worker", "ui", "up")  # registered by services/launch.py


def register_service_commands(commands: argparse._SubParsersAction) -> None:
    """`serve`, `worker`, `ui` and `up` start services, so they live with them (`services.launch`);
    where the services are not installed, each of them says so in one line."""
    try:
        register = service_entry("services.launch", "register")
    except ServicesMissing as e:
        missing = e
        for name in SERVICE_COMMANDS:
            parser = commands.add_parser(name, help="(needs microgpt's services)")
            parser.add_argument("args", nargs=argparse.REMAINDER)
            parser.set_defaults(run=lambda args: _raise(missing))
        return
    register(commands)


def _raise(error: Exception) -> None:
    raise error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microgpt", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("zoo", help="list the model presets").set_defaults(run=cmd_zoo)

    sample = commands.add_parser("sample", help="generate text from a checkpoint")
    add_model_arguments(sample)
    sample.add_argument("--prompt", default="", help="text to continue (default: from BOS)")
    sample.add_argument("-n", "--num-samples", type=int, default=5)
    sample.add_argument("--max-new-tokens", type=int, default=200)
    sample.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
    sample.add_argument("--top-k", type=int, default=None)
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--min-p", type=float, default=0.0)
    sample.add_argument("--repetition-penalty", type=float, default=1.0)
    sample.add_argument("--stop", action="append", help="stop string (repeatable)")
    sample.add_argument("--seed", type=int, default=None)
    sample.add_argument("--stream", action="store_true", help="print one sample as it is generated")
    sample.add_argument(
        "--backend", choices=["eager", "compiled", "native"], default="eager", help="decode step"
    )
    sample.set_defaults(run=cmd_sample)

    ref = commands.add_parser("reference", help="train microgpt's model with the pure-Python engine")
    ref.add_argument("--data", default="names", help="built-in data set or text file, one document per line")
    ref.add_argument("--steps", type=int, default=1000)
    ref.add_argument("--seed", type=int, default=42)
    ref.add_argument("--samples", type=int, default=20)
    ref.add_argument("--temperature", type=float, default=0.5)
    ref.add_argument("--out", help="also save the trained weights as a checkpoint directory")
    ref.set_defaults(run=cmd_reference)

    register_tokenizer(commands)
    register_data(commands)
    register_train(commands)
    register_eval(commands)
    register_chat(commands)
    register_quantize(commands)
    register_export(commands)
    register_inspect(commands)
    register_plot(commands)
    register_registry(commands)
    register_service_commands(commands)
    register_jobs(commands)
    register_build_kernels(commands)

    bench = commands.add_parser("bench", help="benchmarks that print figures").add_subparsers(
        dest="bench", required=True
    )
    register_tokenizer_bench(bench)
    register_registry_bench(bench)
    register_serve_bench(bench)
    bench_train = bench.add_parser("train", help="training recipes: loss reached, time, tokens/s and MFU")
    bench_train.add_argument("--only", nargs="+", help="shakespeare-cpu, shakespeare, names and/or chat-tiny")
    bench_train.set_defaults(run=cmd_bench_train)
    prep = bench.add_parser("prepare", help="prepare a synthetic corpus: MB/s and peak RSS")
    prep.add_argument("--size-gb", type=float, default=1.0)
    prep.add_argument("--tokenizer", choices=["char", "byte"], default="char")
    prep.set_defaults(run=cmd_bench_prepare)
    gen = bench.add_parser("generate", help="single-stream decode tokens/s")
    gen.add_argument("--preset", default="shakespeare")
    gen.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    gen.add_argument("--tokens", type=int, default=256, help="tokens per generation (capped at the context)")
    gen.add_argument("--runs", type=int, default=5)
    gen.add_argument("--backend", nargs="+", default=["eager", "compiled", "native"], help="decode backends")
    gen.add_argument("--threads", type=int, default=None)
    gen.set_defaults(run=cmd_bench_generate)
    register_serving_bench(bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except (ValueError, OSError) as e:  # CheckpointError and pydantic's ValidationError are ValueErrors
        print(f"microgpt {args.command}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
