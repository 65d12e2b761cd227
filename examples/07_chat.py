"""Chat: a model that answers, trained from scratch, scored per task, chatted with in-process and over HTTP.

    python examples/07_chat.py                               # trains chat-tiny (about 10 min on 2 cores)
    python examples/07_chat.py --model chat-tiny@production  # a registry ref (the trainer's chat-tiny job)
    python examples/07_chat.py --model runs/chat-tiny/checkpoint

`chat-tiny` learns the built-in conversation tasks (`microgpt.data.tasks`: sums, reversed words,
names by their first letter, ...): language modelling on the rendered conversations first, then
the loss on the assistant's replies only (supervised finetuning), in one run of the one training
loop. The script then scores the model per task on held-out conversations (greedy replies, exact
match: `microgpt eval --tasks`), holds a conversation in this process as `microgpt chat` does, and
starts the inference service on it to chat through the official `openai` client. The template is
plain text ("User: ...\\nAssistant: ..."), rendered the same way in training and serving.
MICROGPT_EXAMPLE_STEPS sets how long the model trains (the example tests set it small: the
answers are then wrong, the full recipe gets them right).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import openai

from microgpt.chat import ChatSession
from microgpt.loading import load_model
from microgpt.processes import child_server, free_port
from microgpt.sampling import SamplingParams
from microgpt.settings import get_settings
from microgpt.task_eval import evaluate_tasks, load_task_records, report
from microgpt.train.loop import train
from microgpt.zoo import get_preset

QUESTIONS = ["What is 47 + 38?", "Reverse the word olivia.", "Tell me a girl's name starting with K."]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a checkpoint or registry ref (default: train chat-tiny)")
    parser.add_argument("--tasks", default="add,reverse,names", help="tasks to score (or all)")
    parser.add_argument("--limit", type=int, default=50, help="held-out conversations per task")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="microgpt-example-") as tmp:
        model = args.model or str(chat_model(Path(tmp) / "run"))
        score(model, args.tasks, args.limit)
        in_process(model)
        over_http(model)


def chat_model(out: Path) -> Path:
    """chat-tiny from scratch: its recipe trains on every token first, then on the replies only."""
    preset = get_preset("chat-tiny")
    steps = int(os.environ.get("MICROGPT_EXAMPLE_STEPS", str(preset.train.max_steps)))
    print(f"training chat-tiny for {steps} steps on the built-in conversations ...", flush=True)
    result = train(preset, out_dir=out, cache_dir=get_settings().cache,
                   train_overrides={"max_steps": steps, "eval_interval": steps})  # fmt: skip
    print(f"trained in {result.wall_seconds:.0f} s; val loss on the replies {result.val_loss:.3f}")
    return result.checkpoint


def score(ref: str, tasks: str, limit: int) -> None:
    # The built-in test split: sums, words and names no training step saw.
    records = load_task_records(tasks, cache_dir=get_settings().cache, limit=limit)
    ckpt = load_model(ref)
    print(report(evaluate_tasks(ckpt.model, ckpt.text_tokenizer(), records)))


def in_process(ref: str) -> None:
    # A ChatSession keeps the history (oldest turns dropped to fit the context) and renders each
    # prompt with the chat template; chat-tiny trained on conversations of several questions.
    ckpt = load_model(ref)
    session = ChatSession(
        ckpt.model, ckpt.text_tokenizer(), SamplingParams(temperature=0.0, max_new_tokens=32)
    )
    for question in QUESTIONS:
        print(f"you> {question}\nbot> ", end="", flush=True)
        for delta in session.reply(question):
            print(delta, end="", flush=True)
        print()


def over_http(ref: str) -> None:
    # MICROGPT_INFERENCE_MODELS takes registry refs, or ID=DIR for a local checkpoint directory.
    model_id = "chat" if Path(ref).is_dir() else ref
    port = free_port()
    env = {"MICROGPT_INFERENCE_MODELS": f"chat={ref}" if Path(ref).is_dir() else ref}
    command = [
        sys.executable,
        "-m",
        "microgpt",
        "serve",
        "inference",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with child_server(command, f"http://127.0.0.1:{port}/readyz", env):
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=os.environ.get("MICROGPT_API_KEY", "-")
        )
        for question in QUESTIONS:  # one conversation each: three turns would not fit a 128-token context
            reply = client.chat.completions.create(
                model=model_id, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=32
            )
            answer = reply.choices[0].message.content
            print(f"openai> {question} -> {answer!r} ({reply.choices[0].finish_reason})")


if __name__ == "__main__":
    main()
