"""Process entry points of the platform: `microgpt serve NAME`, `microgpt worker`, `ui`, `up`.

    microgpt serve registry                 # uvicorn on 127.0.0.1:8001
    microgpt serve inference --port 9000
    microgpt up                             # registry, trainer API, worker, inference and the dashboard
    microgpt ui --port 8501                 # the Streamlit dashboard alone

They live with the services (the library never imports `services`); `microgpt.cli`
registers them from here when the services are installed. Each service is a FastAPI
factory `services.<name>.app:create_app`, run by uvicorn with `factory=True`, so
importing this module (or the services) starts nothing. `up` runs every
process as a child of its own and stops them all when one exits or on Ctrl-C: the
embedded default on one machine, with no servers to install. `up` binds each service on
the port of its URL setting (`MICROGPT_REGISTRY_URL`, ..., `MICROGPT_UI_URL`), so the
services find each other wherever they are configured to be.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from microgpt.settings import Settings

SERVICES: dict[str, int] = {"inference": 8000, "registry": 8001, "trainer": 8002}
UP_ORDER = ("registry", "trainer", "inference")  # the registry first: the others call it
UI_PORT = 8501


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging set-up plus the services' and the library's loggers at `level`.

    uvicorn configures only its own loggers, so model loads, swaps and kernel builds logged by
    `services.*` and `microgpt.*` at INFO were dropped, and a long load looked like a hang.
    """
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("services", "microgpt"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from microgpt.settings import get_settings

    uvicorn.run(
        f"services.{args.service}.app:create_app",
        factory=True,
        host=args.host,
        port=args.port or SERVICES[args.service],
        log_level=args.log_level,
        log_config=log_config(args.log_level),
        ws_max_size=get_settings().inference_max_body_bytes,  # a WebSocket frame: REST's body limit
    )


def up_ports(settings: Settings) -> dict[str, int]:
    """The port of each service (and `ui`) from its URL setting; a URL without one: the default."""
    urls = {"registry": settings.registry_url, "trainer": settings.trainer_url}
    urls |= {"inference": settings.inference_url, "ui": settings.ui_url}
    defaults = {**SERVICES, "ui": UI_PORT}
    return {name: urlsplit(url).port or defaults[name] for name, url in urls.items()}


def up_commands(host: str, ports: dict[str, int] | None = None) -> list[list[str]]:
    """The child processes of `microgpt up`: every service, one training worker, the dashboard."""
    ports = ports or {**SERVICES, "ui": UI_PORT}
    me = [sys.executable, "-m", "microgpt"]
    serves = [[*me, "serve", name, "--host", host, "--port", str(ports[name])] for name in UP_ORDER]
    return [*serves, [*me, "worker"], [*me, "ui", "--host", host, "--port", str(ports["ui"])]]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def migrate_databases(settings: Settings) -> None:
    """The registry's and the trainer's tables brought up to date before any child starts: the
    worker's first heartbeat must not meet a database the trainer API has not migrated yet."""
    from services.common.database import create_db_engine
    from services.registry.app import migrate as migrate_registry
    from services.trainer.app import migrate as migrate_trainer

    engine = create_db_engine(settings.resolved_database_url())
    try:
        migrate_registry(engine)
        migrate_trainer(engine)
    finally:
        engine.dispose()


def cmd_up(args: argparse.Namespace) -> None:
    # SIGTERM (a supervisor, `kill`) and SIGINT (Ctrl-C, even when started in the background,
    # where the shell ignores it) both stop the children before `up` exits.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    from microgpt.settings import get_settings

    settings = get_settings()
    migrate_databases(settings)
    ports = up_ports(settings)
    commands = up_commands(args.host, ports)
    children = [subprocess.Popen(cmd, env=os.environ.copy()) for cmd in commands]
    for name in (*UP_ORDER, "ui"):
        print(f"{name}: http://{args.host}:{ports[name]}", flush=True)
    browser_host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    print(f"dashboard: open http://{browser_host}:{ports['ui']}", flush=True)
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
    ok = (0, -signal.SIGTERM, None)
    failed = [" ".join(cmd[3:5]) for cmd, c in zip(commands, children, strict=True) if c.returncode not in ok]
    if failed:
        raise OSError(f"stopped because {failed[0]} exited with an error")


def cmd_ui(args: argparse.Namespace) -> None:
    """Replace this process with `streamlit run services/ui/app.py` (signals reach Streamlit directly)."""
    import services.ui
    from microgpt.settings import get_settings

    port = args.port or up_ports(get_settings())["ui"]
    app = Path(services.ui.__file__).resolve().parent / "app.py"
    os.execv(
        sys.executable,
        [
            sys.executable, "-m", "streamlit", "run", str(app),
            "--server.address", args.host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none",
            "--client.toolbarMode", "minimal",
        ],
    )  # fmt: skip


def cmd_worker(args: argparse.Namespace) -> None:
    from microgpt.settings import get_settings
    from services.trainer.worker_entry import run_worker

    run_worker(get_settings(), concurrency=args.concurrency, loglevel=args.log_level.upper())


def cmd_registry_migrate(args: argparse.Namespace) -> None:
    """`microgpt registry migrate`: create or upgrade the registry's tables, then exit."""
    from microgpt.settings import get_settings
    from services.common.database import create_db_engine
    from services.registry.app import migrate

    engine = create_db_engine(get_settings().resolved_database_url())
    try:
        migrate(engine, timeout_s=args.timeout)
    finally:
        engine.dispose()
    print(f"registry tables are up to date in {engine.url.render_as_string(hide_password=True)}")


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

    ui = commands.add_parser("ui", help="run the dashboard (Streamlit) against the services' URLs")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=None, help="default: the port of MICROGPT_UI_URL (8501)")
    ui.set_defaults(run=cmd_ui)

    up = commands.add_parser("up", help="run the whole platform on this machine (embedded defaults)")
    up.add_argument("--host", default="127.0.0.1")
    up.set_defaults(run=cmd_up)
