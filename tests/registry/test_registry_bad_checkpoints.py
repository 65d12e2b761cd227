"""The registry refuses, at finalize, a version that could only fail or exhaust memory when loaded.

Each bad checkpoint of issue 16 (`hostile_checkpoints`) is uploaded file by file, as a client
would; finalize must answer 400 `bad_checkpoint` naming the file and field, at once (it reads
only config.json and each safetensors header from the object store), and leave the version
pending. A good checkpoint still finalizes beside them.
"""

from __future__ import annotations

import time
from pathlib import Path

from hostile_checkpoints import CASES, hostile_checkpoint
from registry_harness import Registry, error_of, new_version, ready_version, sha

MAX_SECONDS = 10.0  # each takes milliseconds; the margin is for a loaded CI machine


def test_bad_checkpoints_are_refused_at_finalize(
    registry: Registry, checkpoint: Path, tmp_path: Path
) -> None:
    with registry.http() as http:
        assert http.post("/models", json={"name": "bad"}).status_code == 201
        for case, text in CASES.items():
            bad = hostile_checkpoint(checkpoint, case, tmp_path / case)
            files = {p.name: p.read_bytes() for p in bad.iterdir()}
            number = new_version(http, "bad")
            for path, data in files.items():
                r = http.put(f"/models/bad/versions/{number}/files/{path}", content=data)
                assert r.status_code == 201, r.text
            started = time.perf_counter()
            r = http.post(
                f"/models/bad/versions/{number}/finalize",
                json={"files": {p: sha(d) for p, d in files.items()}},
            )
            seconds = time.perf_counter() - started
            assert r.status_code == 400 and error_of(r) == "bad_checkpoint", (case, r.text)
            assert f"bad/{number}/" in r.json()["detail"] and text in r.json()["detail"], (case, r.text)
            assert seconds < MAX_SECONDS, (case, seconds)
            assert http.get(f"/models/bad/versions/{number}").json()["status"] == "pending"
        good = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
        ready_version(http, "bad", good)
