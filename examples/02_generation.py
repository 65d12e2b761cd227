"""Generation: sampling settings, streaming, and the OpenAI client against the inference service.

    python examples/02_generation.py                          # trains `micro` on names for a moment
    python examples/02_generation.py --model runs/names/checkpoint --prompt "em"
    python examples/02_generation.py --model names@production --precision int8

The first half runs the model in this process (`microgpt sample` does the same); the second starts
the inference service on the checkpoint (`microgpt serve inference`) and talks to it with the
official `openai` client, as any OpenAI application would. MICROGPT_EXAMPLE_STEPS sets how long the
quick model trains (the example tests set it small).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from microgpt.loading import load_model
from microgpt.precision import PRECISIONS, Precision
from microgpt.sampling import SamplingParams
from microgpt.settings import get_settings
from microgpt.textgen import complete, stream_text
from microgpt.train.loop import train

# A few recipes; every field is checked (an unknown one or a temperature below 0 is an error).
RECIPES = {
    "greedy": SamplingParams(temperature=0.0),  # always the likeliest token: one answer
    "temperature 0.8": SamplingParams(temperature=0.8, seed=1),  # sharper than the model's own odds
    "top-k 5": SamplingParams(top_k=5, seed=1),  # only the 5 likeliest tokens
    "top-p 0.9": SamplingParams(top_p=0.9, seed=1),  # the fewest tokens holding 90% of the mass
    "min-p 0.1": SamplingParams(min_p=0.1, seed=1),  # tokens at least 10% as likely as the best
    "repetition 1.5": SamplingParams(repetition_penalty=1.5, seed=1),  # seen tokens less likely
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a checkpoint or registry ref (default: train `micro` for a moment)")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: as stored")
    parser.add_argument("--prompt", default="ma", help="the text to continue")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="microgpt-example-") as tmp:
        model = args.model or str(quick_model(Path(tmp) / "run"))
        in_process(model, args.precision, args.prompt)
        over_http(model, args.precision, args.prompt)


def quick_model(out: Path) -> Path:
    """A tiny model on names: a few hundred steps are enough for name-like samples."""
    steps = int(os.environ.get("MICROGPT_EXAMPLE_STEPS", "500"))
    result = train("micro", out_dir=out, cache_dir=get_settings().cache, data="names",
                   train_overrides={"max_steps": steps, "eval_interval": steps})  # fmt: skip
    return result.checkpoint


def in_process(ref: str, precision: Precision | None, prompt: str) -> None:
    ckpt = load_model(ref, precision=precision)
    model, tokenizer = ckpt.model, ckpt.text_tokenizer()
    print(f"{ckpt.path} at {ckpt.precision}")

    # Each recipe continues the same prompt 3 times in one batch; rows with one seed would be the
    # same sample three times, so each row gets its own (seed, seed + 1, ...).
    for name, params in RECIPES.items():
        seeds = [(params.seed or 0) + i for i in range(3)]
        rows = [params.model_copy(update={"max_new_tokens": 16, "seed": seed}) for seed in seeds]
        texts = [prompt + c.text for c in complete(model, tokenizer, [prompt] * 3, rows)]
        print(f"{name:>16}: {' | '.join(t.replace(chr(10), ' ') for t in texts)}")

    # A seed makes a sample reproducible; a stop string ends it (and is not part of the text).
    params = SamplingParams(temperature=0.9, seed=7, max_new_tokens=32, stop=["a"])
    first, again = (complete(model, tokenizer, [prompt], params)[0] for _ in range(2))
    assert first.text == again.text, "the same seed gives the same sample"
    print(f"stopped at 'a': {prompt + first.text!r} ({first.finish_reason})")

    # Streaming: text arrives as tokens are chosen; a delta never splits a character or shows
    # part of a stop string.
    print(f"streamed: {prompt}", end="")
    for delta in stream_text(model, tokenizer, prompt, SamplingParams(max_new_tokens=24, seed=3)):
        print(delta, end="", flush=True)
    print()


def over_http(ref: str, precision: Precision | None, prompt: str) -> None:
    # MICROGPT_INFERENCE_MODELS takes registry refs, or ID=DIR for a local checkpoint directory.
    served = f"example={ref}" if Path(ref).is_dir() else ref
    model_id = "example" if Path(ref).is_dir() else ref
    port = free_port()
    env = {**os.environ, "MICROGPT_INFERENCE_MODELS": served + (f":{precision}" if precision else "")}
    command = ["microgpt", "serve", "inference", "--port", str(port), "--log-level", "warning"]
    service = subprocess.Popen([sys.executable, "-m", *command], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, service)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=os.environ.get("MICROGPT_API_KEY", "-"))
        print("served:", [m.id for m in client.models.list()])

        # The same sampling settings, as OpenAI names them (`seed`, `stop`, `top_p`, ...).
        completion = client.completions.create(
            model=model_id, prompt=prompt, max_tokens=16, temperature=0.8, top_p=0.9, seed=1, n=2
        )
        for choice in completion.choices:
            print(f"completion {choice.index}: {prompt + choice.text!r} ({choice.finish_reason})")

        # stream=True: server-sent events, one chunk per delta, as from OpenAI.
        print(f"streamed over HTTP: {prompt}", end="")
        stream = client.completions.create(model=model_id, prompt=prompt, max_tokens=24, seed=3, stream=True)
        for chunk in stream:
            print(chunk.choices[0].text, end="", flush=True)
        print()
    finally:
        service.terminate()
        service.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, service: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    """/readyz answers 200 once the model is loaded (and the native kernel built, the first time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"the inference service exited with status {service.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise SystemExit(f"the inference service was not ready within {timeout:.0f} s")


if __name__ == "__main__":
    main()
