"""The registry's HTTP API on a live server: CRUD, search, uploads, checksums, tar, aliases, auth, limits."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest
from registry_harness import ALL_BACKENDS, Registry, error_of, new_version, ready_version, serve, sha, unique

from microgpt.checkpoint import load_checkpoint, read_config
from microgpt.registry.client import RegistryError
from services.registry.blobs import blob_key


def test_model_crud_search_and_pagination(registry: Registry) -> None:
    p = unique("crud")
    with registry.http() as http:
        for suffix, tags in [("a", ["gpt", "small"]), ("b", ["gpt"]), ("c", []), ("d", ["small"])]:
            r = http.post("/models", json={"name": f"{p}-{suffix}", "description": suffix, "tags": tags})
            assert r.status_code == 201, r.text
        assert error_of(http.post("/models", json={"name": f"{p}-a"})) == "model_exists"
        assert http.post("/models", json={"name": "bad/name"}).status_code == 422
        assert http.post("/models", json={"name": "x", "tags": ["no spaces"]}).status_code == 422

        listing = http.get("/models", params={"prefix": p}).json()
        assert listing["count"] == 4 and [m["name"] for m in listing["data"]] == [f"{p}-{s}" for s in "abcd"]
        page = http.get("/models", params={"prefix": p, "limit": 2, "offset": 2}).json()
        assert page["count"] == 4 and [m["name"] for m in page["data"]] == [f"{p}-c", f"{p}-d"]
        tagged = http.get("/models", params={"prefix": p, "tag": ["gpt", "small"]}).json()
        assert [m["name"] for m in tagged["data"]] == [f"{p}-a"]

        r = http.patch(f"/models/{p}-c", json={"description": "new", "tags": ["x1"]})
        assert r.json()["description"] == "new" and r.json()["tags"] == ["x1"]
        assert http.put(f"/models/{p}-c/tags/x2").json()["tags"] == ["x1", "x2"]
        assert http.delete(f"/models/{p}-c/tags/x1").json()["tags"] == ["x2"]
        assert error_of(http.delete(f"/models/{p}-c/tags/x1")) == "tag_not_found"

        assert http.delete(f"/models/{p}-c").status_code == 204
        r = http.get(f"/models/{p}-c")
        assert r.status_code == 404 and error_of(r) == "model_not_found"
        assert http.get("/models", params={"prefix": p}).json()["count"] == 3
        assert "/models/{name}/versions/{version}/files/{path}" in http.get("/openapi.json").json()["paths"]


def test_version_search_filters(registry: Registry) -> None:
    name, other = unique("search"), unique("search")
    with registry.http() as http:
        http.post("/models", json={"name": name})
        http.post("/models", json={"name": other})
        for i, loss in enumerate([3.0, 2.0, 1.0], start=1):
            ready_version(
                http,
                name,
                {"w.bin": bytes([i])},
                metrics={"val_loss": loss, "params": 1000 * i},
                tags=[f"t{i}"],
            )
        new_version(http, name, metrics={"val_loss": 0.5})  # stays pending
        ready_version(http, other, {"w.bin": b"o"}, metrics={"val_loss": 1.5})
        http.put(f"/models/{name}/aliases/production", json={"version": 2})

        def numbers(params: dict[str, object], model: str = name) -> list[int]:
            r = http.get(f"/models/{model}/versions", params=params)
            assert r.status_code == 200, r.text
            return [v["version"] for v in r.json()["data"]]

        assert numbers({}) == [4, 3, 2, 1]
        assert numbers({"status": "ready"}) == [3, 2, 1]
        assert numbers({"status": "pending"}) == [4]
        assert numbers({"tag": "t2"}) == [2]
        assert numbers({"alias": "production"}) == [2]
        assert numbers({"metric": "val_loss<2.5"}) == [4, 3, 2]
        assert numbers({"metric": ["val_loss<=2", "params>=2000"]}) == [3, 2]
        assert numbers({"metric": "val_loss=3"}) == [1]
        assert numbers({"limit": 2, "offset": 1}) == [3, 2]
        assert http.get(f"/models/{name}/versions", params={"limit": 2}).json()["count"] == 4
        assert (
            error_of(http.get(f"/models/{name}/versions", params={"metric": "val_loss~1"}))
            == "validation_error"
        )
        assert http.get(f"/models/{name}/versions", params={"status": "nope"}).status_code == 422
        assert http.get("/models/nope-nope/versions").status_code == 404

        everywhere = http.get("/versions", params={"name_prefix": "search-", "metric": "val_loss<1.6"}).json()
        assert {(v["name"], v["version"]) for v in everywhere["data"]} >= {(name, 3), (name, 4), (other, 1)}
        latest = http.get(f"/models/{name}/versions/latest").json()
        assert latest["version"] == 3 and latest["metrics"] == {"params": 3000.0, "val_loss": 1.0}
        updated = http.patch(
            f"/models/{name}/versions/3", json={"metrics": {"bleu": 0.3}, "tags": ["best"]}
        ).json()
        assert updated["metrics"]["bleu"] == 0.3 and updated["metrics"]["val_loss"] == 1.0
        assert updated["tags"] == ["best"]
        assert http.get(f"/models/{name}").json()["latest_version"] == 3


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_push_download_and_load(backend: str, registry_settings, checkpoint: Path, tmp_path: Path) -> None:
    name = unique("push")
    big = os.urandom(3 * (1 << 20) + 17)  # several chunks, not a multiple of the chunk size
    source = tmp_path / "src"
    source.mkdir()
    for f in checkpoint.iterdir():
        (source / f.name).write_bytes(f.read_bytes())
    (source / "extra").mkdir()
    (source / "extra" / "blob.bin").write_bytes(big)
    with serve(registry_settings(backend)) as registry, registry.client() as client:
        info = client.push(source, name, metrics={"val_loss": 2.5}, tags=["demo"], created_by="tests")
        assert info.status == "ready" and info.version == 1 and info.preset == "micro"
        assert (
            info.gpt_config is not None and info.gpt_config["n_embd"] == 16 and info.tokenizer_kind == "char"
        )
        assert info.files["extra/blob.bin"].sha256 == sha(big)
        assert set(info.files) == {"config.json", "model.safetensors", "tokenizer.json", "extra/blob.bin"}
        with registry.http() as http:
            r = http.get(f"/models/{name}/versions/1/files/extra/blob.bin")
            assert r.status_code == 200 and r.content == big
            assert r.headers["x-checksum-sha256"] == sha(big) and int(r.headers["content-length"]) == len(big)
            assert error_of(http.get(f"/models/{name}/versions/1/files/nope.bin")) == "file_not_found"
        assert registry.store.exists(blob_key(sha(big)))  # content-addressed
        pulled = client.pull(f"{name}/1")
        ckpt = load_checkpoint(pulled)
        assert ckpt.preset == "micro" and read_config(pulled).files == read_config(checkpoint).files
        assert (pulled / "extra" / "blob.bin").read_bytes() == big
        # identical files are stored once: a second push adds no blobs
        before = sorted(o.key for o in registry.store.list("registry/blobs/"))
        assert client.push(source, name).version == 2
        assert sorted(o.key for o in registry.store.list("registry/blobs/")) == before


def test_checksums_finalize_and_second_finalize(registry: Registry) -> None:
    name = unique("sum")
    data = b"weights" * 1000
    with registry.http() as http:
        http.post("/models", json={"name": name})
        n = new_version(http, name)
        url = f"/models/{name}/versions/{n}"
        r = http.put(f"{url}/files/w.bin", content=data, headers={"X-Checksum-Sha256": sha(b"other")})
        assert r.status_code == 400 and error_of(r) == "checksum_mismatch"
        assert http.get(url).json()["files"] == {}  # nothing recorded for a refused upload
        assert http.put(f"{url}/files/w.bin", content=data).json() == {"size": len(data), "sha256": sha(data)}

        r = http.post(f"{url}/finalize", json={"files": {"w.bin": sha(b"tampered")}})
        assert r.status_code == 400 and error_of(r) == "checksum_mismatch"
        assert http.get(url).json()["status"] == "pending"  # never ready with a bad artifact
        r = http.post(f"{url}/finalize", json={"files": {"w.bin": sha(data), "missing.bin": sha(b"")}})
        assert r.status_code == 400 and error_of(r) == "files_mismatch"
        assert http.post(f"{url}/finalize", json={"files": {}}).status_code == 422
        assert error_of(http.get(f"{url}/files/w.bin")) == "version_not_ready"

        assert http.post(f"{url}/finalize", json={"files": {"w.bin": sha(data)}}).json()["status"] == "ready"
        r = http.post(f"{url}/finalize", json={"files": {"w.bin": sha(data)}})
        assert r.status_code == 409 and error_of(r) == "version_not_pending"
        r = http.put(f"{url}/files/late.bin", content=b"late")
        assert r.status_code == 409 and error_of(r) == "version_not_pending"
        assert http.put(f"{url}/files/..%2Fx", content=b"x").status_code in (404, 422)
        assert http.put(f"{url}/files/.hidden", content=b"x").status_code == 422


def test_config_json_must_agree_with_files(sqlite_registry: Registry, checkpoint: Path) -> None:
    name = unique("cfg")
    files = {f.name: f.read_bytes() for f in checkpoint.iterdir()}
    files["model.safetensors"] = (
        files["model.safetensors"][:-1] + b"\x00"
    )  # config.json's sha no longer matches
    with sqlite_registry.http() as http:
        http.post("/models", json={"name": name})
        n = new_version(http, name)
        for path, data in files.items():
            http.put(f"/models/{name}/versions/{n}/files/{path}", content=data)
        r = http.post(
            f"/models/{name}/versions/{n}/finalize", json={"files": {p: sha(d) for p, d in files.items()}}
        )
        assert r.status_code == 400 and error_of(r) == "checkpoint_inconsistent"
        assert http.get(f"/models/{name}/versions/{n}").json()["status"] == "pending"


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special_member(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def test_tar_upload_and_unsafe_members(registry: Registry, checkpoint: Path) -> None:
    name = unique("tar")
    good = [file_member(f"./{f.name}", f.read_bytes()) for f in sorted(checkpoint.iterdir())]
    meta = json.dumps({"metrics": {"val_loss": 2.0}, "tags": ["tarred"]})
    with registry.http() as http:
        http.post("/models", json={"name": name})
        r = http.post(f"/models/{name}/tar", params={"metadata": meta}, content=tar_of(good))
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["status"] == "ready" and body["tags"] == ["tarred"] and body["preset"] == "micro"
        assert (
            body["files"]["model.safetensors"]["sha256"] == read_config(checkpoint).files["model.safetensors"]
        )

        evil = {
            "absolute": [file_member("/etc/cron.d/x", b"x")],
            "dotdot": [file_member("../../escape.txt", b"x")],
            "symlink": [special_member("link", tarfile.SYMTYPE, "/etc/passwd")],
            "hardlink": [special_member("hard", tarfile.LNKTYPE, "config.json")],
            "device": [special_member("dev", tarfile.CHRTYPE)],
            "fifo": [special_member("pipe", tarfile.FIFOTYPE)],
        }
        for label, members in evil.items():
            r = http.post(f"/models/{name}/tar", content=tar_of(good[:1] + members, mode="w"))
            assert r.status_code == 400 and error_of(r) == "unsafe_tar_member", (label, r.text)
        r = http.post(f"/models/{name}/tar", content=tar_of(good + [file_member("notes.txt", b"unlisted")]))
        assert r.status_code == 400 and error_of(r) == "unverifiable_files"
        assert error_of(http.post(f"/models/{name}/tar", content=b"not a tar at all" * 100)) == "bad_tar"
        statuses = [v["status"] for v in http.get(f"/models/{name}/versions").json()["data"]]
        assert statuses.count("ready") == 1 and statuses.count("failed") == len(evil) + 2


def test_alias_move_audit_resolve_and_delete(registry: Registry) -> None:
    name = unique("alias")
    with registry.http(headers={"X-Actor": "alice"}) as http:
        http.post("/models", json={"name": name})
        v1 = ready_version(http, name, {"w.bin": b"one"})
        v2 = ready_version(http, name, {"w.bin": b"two"})
        pending = new_version(http, name)
        assert http.put(f"/models/{name}/aliases/production", json={"version": v1}).json()["version"] == v1
        assert http.put(f"/models/{name}/aliases/staging", json={"version": "latest"}).json()["version"] == v2
        assert (
            http.put(f"/models/{name}/aliases/production", json={"version": "staging"}).json()["version"]
            == v2
        )
        r = http.put(f"/models/{name}/aliases/production", json={"version": pending})
        assert r.status_code == 409 and error_of(r) == "version_not_ready"
        assert (
            error_of(http.put(f"/models/{name}/aliases/Bad Alias", json={"version": 1})) == "validation_error"
        )
        assert error_of(http.put(f"/models/{name}/aliases/latest", json={"version": 1})) == "validation_error"
        assert error_of(http.put(f"/models/{name}/aliases/x", json={"version": 99})) == "version_not_found"

        history = http.get(f"/models/{name}/aliases/production/history").json()
        assert [(e["from_version"], e["to_version"], e["actor"]) for e in history["data"]] == [
            (v1, v2, "alice"),
            (None, v1, "alice"),
        ]
        assert http.get("/resolve", params={"ref": f"{name}@production"}).json()["version"] == v2
        assert http.get("/resolve", params={"ref": f"{name}/{v1}"}).json()["version"] == v1
        assert http.get("/resolve", params={"ref": name}).json()["version"] == v2
        assert error_of(http.get("/resolve", params={"ref": f"{name}@nope"})) == "alias_not_found"
        assert http.get(f"/models/{name}/versions/production/files/w.bin").content == b"two"
        assert http.get(f"/models/{name}").json()["aliases"] == {"production": v2, "staging": v2}

        r = http.delete(f"/models/{name}/versions/{v2}")
        assert r.status_code == 409 and error_of(r) == "version_aliased"
        assert http.delete(f"/models/{name}").status_code == 409
        assert http.delete(f"/models/{name}/versions/{v2}", params={"force": "true"}).status_code == 204
        assert http.get(f"/models/{name}/aliases").json() == []
        assert http.get(f"/models/{name}/aliases/production/history").json()["data"][0]["to_version"] is None
        assert http.get("/resolve", params={"ref": name}).json()["version"] == v1
        assert http.delete(f"/models/{name}/versions/{v1}").status_code == 204
        assert http.delete(f"/models/{name}").status_code == 204


def test_lineage_parent_resolves(sqlite_registry: Registry) -> None:
    name = unique("lin")
    with sqlite_registry.http() as http:
        http.post("/models", json={"name": name})
        base = ready_version(http, name, {"w.bin": b"base"})
        http.put(f"/models/{name}/aliases/base", json={"version": base})
        child = new_version(
            http, name, lineage={"parent": f"{name}@base", "job_id": "job-7", "dataset_sha256": sha(b"d")}
        )
        lineage = http.get(f"/models/{name}/versions/{child}").json()["lineage"]
        assert lineage == {"parent": f"{name}/{base}", "job_id": "job-7", "dataset_sha256": sha(b"d")}
        r = http.post(f"/models/{name}/versions", json={"lineage": {"parent": f"{name}/99"}})
        assert r.status_code == 404 and error_of(r) == "version_not_found"


def test_auth_on(registry_settings) -> None:
    with serve(registry_settings("sqlite-disk", api_key="k1,k2")) as registry:
        name = unique("auth")
        with registry.http() as anonymous:
            r = anonymous.post("/models", json={"name": name})
            assert r.status_code == 401 and error_of(r) == "unauthorized"
            r = anonymous.post("/models", json={"name": name}, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 403 and error_of(r) == "forbidden"
            assert anonymous.post("/gc").status_code == 401
            assert anonymous.get("/models").status_code == 200  # reads stay open
        with registry.client(api_key="wrong") as client, pytest.raises(RegistryError) as e:
            client.create_model(name)
        assert e.value.status == 403
        with registry.client(api_key="k2") as client:
            client.create_model(name)
            assert client.get_model(name)["name"] == name


def test_size_limit(registry_settings) -> None:
    with (
        serve(registry_settings("sqlite-disk", registry_max_upload_bytes=1000)) as registry,
        registry.http() as http,
    ):
        name = unique("big")
        http.post("/models", json={"name": name})
        n = new_version(http, name)
        r = http.put(f"/models/{name}/versions/{n}/files/w.bin", content=b"x" * 2000)
        assert r.status_code == 413 and error_of(r) == "too_large"
        chunks = (b"y" * 400 for _ in range(5))  # no Content-Length: counted while streaming
        r = http.put(f"/models/{name}/versions/{n}/files/w.bin", content=chunks)
        assert r.status_code == 413 and error_of(r) == "too_large"
        assert http.put(f"/models/{name}/versions/{n}/files/w.bin", content=b"z" * 1000).status_code == 201
        assert list(registry.store.list("registry/tmp/")) == []


def test_health_readiness_and_metrics(sqlite_registry: Registry) -> None:
    name = unique("metrics")
    with sqlite_registry.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json()["status"] == "ready"
        http.post("/models", json={"name": name})
        ready_version(http, name, {"w.bin": b"m" * 5000})
        new_version(http, name)
        http.get(f"/models/{name}/versions/1/files/w.bin")
        text = http.get("/metrics").text
        assert (
            'route="/models/{name}/versions/{version}/files/{path}",service="registry",status="201"' in text
        )
        assert name not in text  # templates, never raw paths
        assert "microgpt_registry_artifact_bytes_in_total 5000.0" in text
        assert "microgpt_registry_artifact_bytes_out_total 5000.0" in text
        assert 'microgpt_registry_versions{status="ready"} 1.0' in text
        assert 'microgpt_registry_versions{status="pending"} 1.0' in text

        artifacts = sqlite_registry.settings.artifacts_dir()
        artifacts.rename(artifacts.with_name("gone"))
        artifacts.write_text("not a directory")  # the store can no longer be written
        r = http.get("/readyz")
        assert r.status_code == 503 and error_of(r) == "not_ready" and "object_store" in r.json()["detail"]
        assert new_version(http, name) == 3
        r = http.put(f"/models/{name}/versions/3/files/w.bin", content=b"q" * 10)
        assert r.status_code == 503 and error_of(r) == "storage_unavailable"
        text = http.get("/metrics").text  # what the RegistryNotReady and storage-error alerts watch
        assert 'microgpt_ready{check="object_store",service="registry"} 0.0' in text
        assert 'microgpt_ready{check="database",service="registry"} 1.0' in text
        assert 'microgpt_registry_storage_errors_total{operation="check"}' in text
        put_errors = re.search(r'microgpt_registry_storage_errors_total\{operation="put"\} (\S+)', text)
        assert put_errors is not None and float(put_errors.group(1)) >= 1
