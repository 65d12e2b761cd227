"""The service clients against the live services: 422 fields, chat cancel, the jobs CLI."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from microgpt.cli import main
from microgpt.clients import InferenceClient, ServiceError, ServiceUnavailable, TrainerClient
from microgpt.processes import free_port

pytestmark = pytest.mark.usefixtures("one_thread_session")


def test_a_refused_spec_names_its_fields(stack: Any) -> None:
    trainer = TrainerClient(stack.trainer_url)
    with pytest.raises(ServiceError) as refused:
        trainer.submit({"kind": "train", "preset": "micro", "train": {"lr": "fast"}})
    assert refused.value.status == 422 and "train.lr" in refused.value.field_errors()
    with pytest.raises(ServiceUnavailable, match="cannot reach the trainer"):
        TrainerClient(f"http://127.0.0.1:{free_port()}").job("x")


def test_leaving_a_chat_stream_cancels_the_answer_on_the_server(
    stack: Any, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from ui_inference_fixtures import slow_variant

    stack.registry.push(slow_variant(tiny_checkpoint, tmp_path / "slow", seed=1), "ui-slow")
    inference = InferenceClient(stack.inference_url)
    with inference.chat() as chat:
        events = chat.stream("ui-slow/1", prompt="ROMEO:", params={"max_tokens": 1000, "temperature": 0})
        assert next(events)["type"] == "start" and next(events)["type"] == "token"
        started = time.monotonic()
        events.close()  # what the Stop button does to the page's stream
        # the socket takes the next turn at once: the cancelled answer ended on the server
        follow = list(chat.stream("ui-slow/1", prompt="ROMEO:", params={"max_tokens": 3, "temperature": 0}))
    assert follow[-1]["type"] == "done" and follow[-1]["usage"]["completion_tokens"] == 3
    assert time.monotonic() - started < 30


def test_jobs_cli_uses_the_trainer_client(stack: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from microgpt.settings import get_settings

    monkeypatch.setenv("MICROGPT_TRAINER_URL", stack.trainer_url)
    monkeypatch.delenv("MICROGPT_API_KEY", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["jobs", "submit", "--preset", "micro", "--dataset", "names", "--max-steps", "3"]) == 0
        submitted = capsys.readouterr().out
        job_id = submitted.split()[3]
        assert "writes model micro-names" in submitted  # micro's own data set is not names: no collision
        assert main(["jobs", "ls", "--limit", "5"]) == 0 and job_id in capsys.readouterr().out
        assert main(["jobs", "show", job_id]) == 0 and f'"id": "{job_id}"' in capsys.readouterr().out
        assert main(["jobs", "submit", "--preset", "micro", "--set", "train.lr=fast"]) == 2
        assert "HTTP 422" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
