"""The `microgpt registry` commands, and `microgpt bench registry`.

    microgpt registry push runs/names/checkpoint --name names --alias staging --metric val_loss=1.93
    microgpt registry pull names@staging --out ./names-staging
    microgpt registry ls                       # models;  `ls names` lists its versions
    microgpt registry show names@staging       # one version as JSON
    microgpt registry alias set names 3 production
    microgpt registry gc --grace-seconds 3600  # fail abandoned uploads, delete unreferenced blobs
    microgpt registry migrate                  # create/upgrade the registry tables in MICROGPT_DATABASE_URL

The registry is `MICROGPT_REGISTRY_URL`, with the first key of `MICROGPT_API_KEY`.
Refused requests raise RegistryError (a ValueError carrying the server's detail), which
`microgpt.cli` prints as one line with exit code 2. `migrate` and `bench registry` run
code of the registry service (`services.launch`, `services.registry.bench`), imported
only when they run.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from microgpt.service_entry import service_entry


def _client() -> Any:
    from microgpt.registry.client import RegistryClient
    from microgpt.settings import get_settings

    return RegistryClient.from_settings(get_settings())


def _metric(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if not sep or not key:
            raise ValueError
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--metric takes key=number, got {text!r}") from None


def cmd_push(args: argparse.Namespace) -> None:
    lineage = {"parent": args.parent} if args.parent else {}
    with _client() as client:
        info = client.push(
            args.checkpoint,
            args.name,
            metrics=dict(args.metric or []),
            lineage=lineage,
            description=args.description,
            tags=args.tag or [],
            alias=args.alias,
        )
    size = sum(f.size for f in info.files.values())
    aliases = f" as {', '.join(info.name + '@' + a for a in info.aliases)}" if info.aliases else ""
    print(f"pushed {info.ref}{aliases}: {len(info.files)} files, {size / 1e6:.1f} MB, {info.status}")


def cmd_pull(args: argparse.Namespace) -> None:
    with _client() as client:
        print(client.pull(args.ref, out=args.out))


def cmd_ls(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    with _client() as client:
        if args.name is None:
            table = Table("model", "latest", "versions", "aliases", "tags", "description")
            for m in client.list_models(prefix=args.prefix, limit=args.limit):
                aliases = " ".join(f"{a}->{v}" for a, v in m["aliases"].items())
                latest = "-" if m["latest_version"] is None else str(m["latest_version"])
                row = (
                    m["name"],
                    latest,
                    str(m["version_count"]),
                    aliases,
                    " ".join(m["tags"]),
                    m["description"],
                )
                table.add_row(*row)
        else:
            table = Table("version", "status", "aliases", "metrics", "size", "created", "by")
            for v in client.list_versions(args.name, status=args.status, limit=args.limit):
                metrics = " ".join(f"{k}={val:g}" for k, val in v.metrics.items())
                size = f"{sum(f.size for f in v.files.values()) / 1e6:.1f} MB"
                created = v.created_at.strftime("%Y-%m-%d %H:%M")
                table.add_row(
                    v.ref, v.status, " ".join(v.aliases), metrics, size, created, v.created_by or ""
                )
    Console(width=max(Console().width, 120)).print(table)


def cmd_show(args: argparse.Namespace) -> None:
    with _client() as client:
        print(json.dumps(client.resolve(args.ref).model_dump(mode="json"), indent=2))


def cmd_alias_set(args: argparse.Namespace) -> None:
    with _client() as client:
        alias = client.set_alias(args.name, args.alias, args.version)
    print(f"{alias['name']}@{alias['alias']} -> {alias['name']}/{alias['version']}")


def cmd_gc(args: argparse.Namespace) -> None:
    with _client() as client:
        report = client.gc(grace_seconds=args.grace_seconds)
    failed = ", ".join(report["failed_versions"]) or "none"
    print(
        f"deleted {report['deleted_blobs']} blobs ({report['deleted_bytes'] / 1e6:.1f} MB) and "
        f"{report['deleted_temp']} temporaries; kept {report['kept_blobs']}; "
        f"abandoned uploads failed: {failed}"
    )


def cmd_migrate(args: argparse.Namespace) -> None:
    service_entry("services.launch", "cmd_registry_migrate")(args)


def register(commands: argparse._SubParsersAction) -> None:
    registry = commands.add_parser("registry", help="push, pull and manage model versions in the registry")
    sub = registry.add_subparsers(dest="registry_command", required=True)

    push = sub.add_parser("push", help="upload a checkpoint directory as a new version")
    push.add_argument("checkpoint", help="checkpoint directory")
    push.add_argument("--name", required=True, help="model name (created if missing)")
    push.add_argument("--alias", help="also point NAME@ALIAS at the new version")
    push.add_argument("--metric", action="append", type=_metric, help="key=value (repeatable)")
    push.add_argument("--tag", action="append", help="version tag (repeatable)")
    push.add_argument("--parent", help="lineage: the version this one derives from (name/3 or name@alias)")
    push.add_argument("--description", default=None)
    push.set_defaults(run=cmd_push)

    pull = sub.add_parser("pull", help="download a version (verified, cached) and print its directory")
    pull.add_argument("ref", help="name, name/3 or name@alias")
    pull.add_argument("--out", help="copy it to this (new or empty) directory")
    pull.set_defaults(run=cmd_pull)

    ls = sub.add_parser("ls", help="list models, or the versions of one model")
    ls.add_argument("name", nargs="?")
    ls.add_argument("--prefix", help="models whose name starts with this")
    ls.add_argument("--status", choices=["pending", "ready", "failed"])
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(run=cmd_ls)

    show = sub.add_parser("show", help="one version as JSON")
    show.add_argument("ref", help="name, name/3 or name@alias")
    show.set_defaults(run=cmd_show)

    alias = sub.add_parser("alias", help="manage aliases").add_subparsers(dest="alias_command", required=True)
    alias_set = alias.add_parser("set", help="point NAME@ALIAS at VERSION (atomic, audited)")
    alias_set.add_argument("name")
    alias_set.add_argument("version", help="a version number, another alias, or latest")
    alias_set.add_argument("alias")
    alias_set.set_defaults(run=cmd_alias_set)

    gc = sub.add_parser("gc", help="fail abandoned uploads and delete blobs no version uses")
    gc.add_argument("--grace-seconds", type=float, default=3600, help="spare anything younger (default 1 h)")
    gc.set_defaults(run=cmd_gc)

    migrate = sub.add_parser("migrate", help="create or upgrade the registry's tables, then exit")
    migrate.add_argument("--timeout", type=float, default=30, help="seconds to wait for the database")
    migrate.set_defaults(run=cmd_migrate)


def cmd_bench(args: argparse.Namespace) -> None:
    service_entry("services.registry.bench", "cmd_bench")(args)


def register_bench(bench: argparse._SubParsersAction) -> None:
    parser = bench.add_parser("registry", help="registry upload/download MB/s and server peak RSS growth")
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--store", choices=["disk", "s3"], default="disk", help="disk, or moto's S3 server")
    parser.set_defaults(run=cmd_bench)
