"""Supervised finetuning in the one training loop: a chat recipe (pretraining, then the loss on the
replies) resumes bit for bit, `finetune --sft` trains LoRA adapters on conversations, and
`eval --tasks` scores greedy replies as independent single-row generations would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from microgpt.chat import STOP
from microgpt.checkpoint import load_checkpoint
from microgpt.data.tasks import generate_splits, reference
from microgpt.sampling import SamplingParams
from microgpt.task_eval import REPLY_MARGIN, evaluate_tasks, prompt_of, report
from microgpt.textgen import complete
from microgpt.train import TrainCallback, train

TINY_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64}
TINY_TRAIN = {
    "pretrain_fraction": 0.25,  # every token for the first quarter of the steps, then the replies
    "batch_size": 8,
    "warmup_steps": 2,
    "eval_interval": 6,
    "eval_steps": 2,
}


@pytest.fixture(scope="module")
def chats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 training conversations (sums and reversed words) and 40 held out, as messages JSONL."""
    root = tmp_path_factory.mktemp("chats")
    splits = generate_splits(tasks=("add", "reverse"))
    for split, records in (("train", splits["train"][:200]), ("test", splits["test"][:40])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _run(
    out: Path, chats: Path, cache: Path, *, max_steps: int = 12, data: str | None = None, **extra: Any
) -> Any:
    return train(
        "chat-tiny",
        out_dir=out,
        cache_dir=cache,
        data=data or str(chats / "train.jsonl"),
        model_overrides=TINY_MODEL,
        train_overrides={**TINY_TRAIN, "max_steps": max_steps},
        checkpoint_interval=100,
        device="cpu",
        threads=1,
        **extra,
    )


def test_a_chat_recipe_stopped_in_its_finetuning_phase_resumes_exactly(chats: Path, tmp_path: Path) -> None:
    whole = _run(tmp_path / "whole", chats, tmp_path / "cache")
    assert whole.step == 12 and len(whole.val_losses) == 2
    stop = threading.Event()

    class StopAt(TrainCallback):
        def on_step(self, record: dict[str, Any]) -> None:
            if record["step"] == 7:  # every token for the first 3 steps, then the replies only
                stop.set()

    part = _run(tmp_path / "part", chats, tmp_path / "cache", callbacks=[StopAt()], stop_flag=stop)
    assert part.stopped and part.step == 7
    rest = _run(tmp_path / "part", chats, tmp_path / "cache", resume=True)
    assert rest.losses == whole.losses and rest.val_losses == whole.val_losses
    ours, theirs = (load_checkpoint(r.checkpoint).model.state_dict() for r in (rest, whole))
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_finetune_sft_trains_lora_adapters_on_conversations(chats: Path, tmp_path: Path) -> None:
    base = _run(tmp_path / "base", chats, tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-m", "microgpt", "finetune", str(base.checkpoint), "--sft", "--data",
         str(chats / "train.jsonl"), "--lora-rank", "2", "--max-steps", "4", "--out", str(tmp_path / "sft"),
         "--threads", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=120, env={**_env(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    state = load_checkpoint(tmp_path / "sft" / "checkpoint").trainer_state or {}
    assert state["train"]["loss_on"] == "assistant" and state["train"]["pretrain_fraction"] == 0.0
    assert state["lora"]["rank"] == 2 and (tmp_path / "sft" / "adapters.safetensors").is_file()


def _conversation(task: str, question: str, answer: str) -> dict[str, Any]:
    return {
        "task": task,
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
    }


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MICROGPT_CACHE": str(tmp_path / "cache")}


def test_task_scores_are_those_of_single_greedy_replies(tmp_path: Path) -> None:
    """A model taught to answer "ok" to anything scores right exactly where the reference is "ok",
    and every score is what one greedy reply per record, with its own length limit, gives."""
    said = [_conversation("yes", f"Is {w} a word?", "ok") for w in ("emma", "olivia", "ava", "mia") * 25]
    (tmp_path / "ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in said))
    result = _run(
        tmp_path / "run", tmp_path, tmp_path / "cache", data=str(tmp_path / "ok.jsonl"), max_steps=40
    )
    assert result.step == 40
    ckpt = load_checkpoint(result.checkpoint)
    model, tok = ckpt.model.eval(), ckpt.tokenizer
    assert tok is not None
    words = ("ma", "mia", "emma", "liv", "oma", "ava")
    records = [_conversation("yes", f"Is {w} a word?", answer) for w, answer in zip(words, ["ok", "no"] * 3)]
    records += [_conversation("echo", f"Is {w} a word?", w) for w in words]
    scores = evaluate_tasks(model, tok, records, batch_size=7)
    assert (scores["yes"].correct, scores["yes"].total) == (3, 6)
    expected: dict[str, list[bool]] = {}
    for record in records:  # one row at a time, each with its own reply limit
        limit = len(tok.encode(" " + reference(record))) + REPLY_MARGIN
        params = SamplingParams(max_new_tokens=limit, temperature=0.0, stop=[STOP])
        (reply,) = complete(model, tok, [prompt_of(record)], params)
        expected.setdefault(record["task"], []).append(reply.text.strip() == reference(record))
    assert {t: (s.correct, s.total) for t, s in scores.items()} == {
        t: (sum(r), len(r)) for t, r in expected.items()
    }
    assert "accuracy" in report(scores)

    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = subprocess.run(
        [sys.executable, "-m", "microgpt", "eval", str(result.checkpoint), "--tasks", "yes",
         "--data", str(held_out), "--limit", "4"],
        capture_output=True, text=True, timeout=120, env=_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"^yes +50\.0% +2 / 4$", done.stdout, re.M), done.stdout
    assert "echo" not in done.stdout
