"""Process entry points of the platform: `microgpt serve NAME`, `microgpt up`.

    microgpt serve registry                 # uvicorn on 127.0.0.1:8001
    microgpt serve inference --port 9000
    microgpt up                             # registry, trainer API, worker and inference together

Each service is a FastAPI factory `services.<name>.app:create_app`, run by uvicorn with
`factory=True`, so importing this module (or the services) starts nothing. `up` runs every
process as a child of its own and stops them all when one exits or on Ctrl-C: the
embedded default on one machine, with no servers to install.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

SERVICES: dict[str, int] = {"inference": 8000, "registry": 8001, "trainer": 8002}
UP_ORDER = ("registry", "trainer", "inference")  # the registry first: the others call it


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run(
        f"services.{args.service}.app:create_app",
        factory=True,
        host=args.host,
        port=args.port or SERVICES[args.service],
        log_level=args.log_level,
    )


def up_commands(host: str) -> list[list[str]]:
    """The child processes of `microgpt up`: every service, then one training worker."""
    me = [sys.executable, "-m", "microgpt"]
    serves = [[*me, "serve", name, "--host", host] for name in UP_ORDER]
    return [*serves, [*me, "worker"]]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_up(args: argparse.Namespace) -> None:
    # SIGTERM (a supervisor, `kill`) and SIGINT (Ctrl-C, even when started in the background,
    # where the shell ignores it) both stop the children before `up` exits.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    children = [subprocess.Popen(cmd, env=os.environ.copy()) for cmd in up_commands(args.host)]
    for name in UP_ORDER:
        print(f"{name}: http://{args.host}:{SERVICES[name]}", flush=True)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    failed = [" ".join(c.args[2:4]) for c in children if c.returncode not in (0, -signal.SIGTERM, None)]
    if failed:
        raise OSError(f"stopped because {failed[0]} exited with an error")


def cmd_worker(args: argparse.Namespace) -> None:
    from microgpt.settings import get_settings
    from services.trainer.worker_entry import run_worker

    run_worker(get_settings(), concurrency=args.concurrency, loglevel=args.log_level.upper())


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run one service (uvicorn)")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--port", type=int, default=None, help="default: inference 8000, registry 8001, trainer 8002"
    )
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(run=cmd_serve)

    worker = commands.add_parser("worker", help="run a training worker (Celery) for the trainer's jobs")
    worker.add_argument(
        "--concurrency", type=int, default=None, help="jobs at once (default MICROGPT_WORKER_CONCURRENCY, 1)"
    )
    worker.add_argument("--log-level", default="info")
    worker.set_defaults(run=cmd_worker)

    up = commands.add_parser("up", help="run the whole platform on this machine (embedded defaults)")
    up.add_argument("--host", default="127.0.0.1")
    up.set_defaults(run=cmd_up)
