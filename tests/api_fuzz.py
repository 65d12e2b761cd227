"""Schemathesis against a live service: every check, a few examples per operation, a fixed seed.

`fuzz(base_url, tmp_path)` runs `schemathesis run <base_url>/openapi.json --checks all`, the
tool's own front end, in a child process, and fails with its report (each failure with a
curl line that reproduces it) unless it found nothing: no 5xx, no response outside the
documented schema, no schema-valid request refused, no invalid one accepted, a 405 with the
right `Allow` for every undocumented method.

Some operations take what a schema cannot describe: a tar stream or file bytes, a job spec
that must name a real preset and data set. Data that is valid by the schema can still be
refused there (400 or 422, with a message); `content_checked` names those operations, and
for them alone a 400/422 to schema-valid data is not a failure. Every other check still runs
on them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

MAX_EXAMPLES = 8  # per operation and phase: enough to find each defect class, small enough for CI
SEED = 20261203
CONTENT_CHECKED_STATUSES = '["2xx", "400", "401", "403", "404", "409", "422"]'


def fuzz(
    base_url: str, tmp_path: Path, content_checked: Mapping[str, str] = {}, timeout_s: int = 240
) -> None:
    config = tmp_path / "schemathesis.toml"
    sections = [
        "[[operations]]\n"
        f"# {reason}\n"
        f"include-path-regex = {path_regex!r}\n"
        f"checks.positive_data_acceptance.expected-statuses = {CONTENT_CHECKED_STATUSES}\n"
        for path_regex, reason in content_checked.items()
    ]
    config.write_text("\n".join(sections))
    args = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{base_url}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED), "--workers", "1", "--no-shrink", "--max-failures", "20",
        "--request-timeout", "30", "--report-dir", str(tmp_path / "report"),
    ]  # fmt: skip
    result = subprocess.run(
        args,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "NO_COLOR": "1"},
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis found failures:\n{report[-20000:]}"
