"""The worker's entry point: `celery -A services.trainer.worker_entry worker` or `microgpt worker`.

    microgpt worker                       # one job at a time (solo pool), the default
    microgpt worker --concurrency 4       # four jobs at a time (prefork pool)
    celery -A services.trainer.worker_entry worker --pool solo -c 1 -Q microgpt-jobs

Workers scale out by starting more of them, on any host that reaches the broker, the
database, the object store and the registry. `app` is built on first access (PEP 562
`__getattr__`), so importing this module reads no settings and connects to nothing.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from microgpt.settings import Settings, get_settings
from services.trainer.celery_app import make_celery
from services.trainer.logs import configure_logging
from services.trainer.tasks import register_tasks

_apps: dict[str, Celery] = {}


def create_worker_app(settings: Settings) -> Celery:
    """The Celery app with the trainer's task registered and JSON logging set up."""
    from celery import signals

    app = make_celery(settings)
    register_tasks(app, settings)

    @signals.setup_logging.connect(weak=False)
    def _logging(**kwargs: Any) -> None:  # connected: Celery leaves logging to us
        configure_logging()

    return app


def worker_argv(settings: Settings, concurrency: int | None = None, loglevel: str = "INFO") -> list[str]:
    """Arguments of `app.worker_main`: solo pool for one job per process, prefork above that."""
    n = concurrency or settings.worker_concurrency
    pool = ["--pool", "solo"] if n == 1 else ["--pool", "prefork", "--concurrency", str(n)]
    return [
        "worker",
        *pool,
        "--queues",
        settings.trainer_queue,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"trainer-{os.getpid()}@%h",  # several workers on one host need distinct names
    ]


def run_worker(settings: Settings, concurrency: int | None = None, loglevel: str = "INFO") -> None:
    """Consume jobs until SIGTERM (checkpoint and requeue the running job) or Ctrl-C."""
    app = create_worker_app(settings)
    app.worker_main(worker_argv(settings, concurrency, loglevel))


def __getattr__(name: str) -> Any:
    if name == "app":
        if "app" not in _apps:
            _apps["app"] = create_worker_app(get_settings())
        return _apps["app"]
    raise AttributeError(name)
