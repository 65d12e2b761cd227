"""The client library and the `microgpt registry` CLI against a live registry."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from registry_harness import Registry, unique

from microgpt.cli import main
from microgpt.registry.client import RegistryError
from microgpt.settings import get_settings
from services.registry.blobs import blob_key


def test_pull_verifies_and_caches(sqlite_registry: Registry, checkpoint: Path, tmp_path: Path) -> None:
    name = unique("pull")
    with sqlite_registry.client(cache_dir=tmp_path / "cache") as client:
        info = client.push(checkpoint, name)
        first = client.pull(name)
        assert first.parent == tmp_path / "cache" / "registry" and first.name == info.content_hash()
        bytes_out = sqlite_registry.app.state.metrics.bytes_out._value.get()
        assert client.pull(f"{name}/1") == first  # a cache hit downloads nothing
        assert sqlite_registry.app.state.metrics.bytes_out._value.get() == bytes_out

        out = client.pull(f"{name}@{client.set_alias(name, 'prod', 1)['alias']}", out=tmp_path / "copy")
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in checkpoint.iterdir())
        with pytest.raises(FileExistsError):
            client.pull(name, out=tmp_path / "copy")

        # the server's blob rots (same size, other bytes): the download is refused, nothing is cached
        blob = sqlite_registry.settings.artifacts_dir().joinpath(
            *blob_key(info.files["model.safetensors"].sha256).split("/")
        )
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0xFF
        blob.write_bytes(bytes(data))
        shutil.rmtree(first)
        with pytest.raises(ValueError, match="sha256"):
            client.pull(name)
        assert not first.exists() and not any(p.name.startswith(".") for p in first.parent.iterdir())

        with pytest.raises(RegistryError) as e:
            client.resolve(f"{name}@nope")
        assert e.value.status == 404 and e.value.error == "alias_not_found"


@pytest.fixture
def cli_env(sqlite_registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Registry:
    monkeypatch.setenv("MICROGPT_REGISTRY_URL", sqlite_registry.url)
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "cli-cache"))
    monkeypatch.delenv("MICROGPT_API_KEY", raising=False)
    get_settings.cache_clear()
    yield sqlite_registry
    get_settings.cache_clear()


def test_cli_push_pull_ls_show_alias_gc(cli_env: Registry, checkpoint: Path, tmp_path: Path, capsys) -> None:
    name = unique("cli")
    assert (
        main(
            [
                "registry",
                "push",
                str(checkpoint),
                "--name",
                name,
                "--metric",
                "val_loss=2.25",
                "--alias",
                "staging",
            ]
        )
        == 0
    )
    assert f"pushed {name}/1 as {name}@staging" in capsys.readouterr().out
    assert main(["registry", "push", str(checkpoint), "--name", name, "--tag", "second"]) == 0
    assert main(["registry", "alias", "set", name, "2", "production"]) == 0
    assert f"{name}@production -> {name}/2" in capsys.readouterr().out

    assert main(["registry", "show", f"{name}@staging"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1 and shown["metrics"] == {"val_loss": 2.25}

    assert main(["registry", "pull", f"{name}@production", "--out", str(tmp_path / "out")]) == 0
    assert (
        Path(capsys.readouterr().out.strip()) == tmp_path / "out"
        and (tmp_path / "out" / "config.json").is_file()
    )

    assert main(["registry", "ls"]) == 0
    assert name in capsys.readouterr().out
    assert main(["registry", "ls", name]) == 0
    listing = capsys.readouterr().out
    assert f"{name}/1" in listing and f"{name}/2" in listing and "production" in listing

    assert main(["registry", "gc"]) == 0
    assert "deleted 0 blobs" in capsys.readouterr().out

    assert main(["registry", "pull", f"{name}@nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alias_not_found" in err and "Traceback" not in err
    assert main(["registry", "push", str(checkpoint), "--name", "bad name"]) == 2
    assert main(["registry", "push", str(tmp_path / "missing"), "--name", name]) == 2


def test_cli_exports_a_registry_ref_that_transformers_loads(
    cli_env: Registry, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`microgpt export REF` pulls the version (by number and by alias) and exports it; transformers
    loads the directory offline and computes our logits (float32, atol 1e-4) from its tokenizer's ids."""
    import numpy as np
    import torch

    from microgpt.loading import load_model

    transformers = pytest.importorskip("transformers")
    name = unique("export")
    with cli_env.client() as client:
        client.push(checkpoint, name, alias="production")
    ours = load_model(checkpoint, precision="fp32")
    assert ours.tokenizer is not None
    for ref in (f"{name}/1", f"{name}@production"):
        out = tmp_path / ref.replace("/", "-")
        assert main(["export", ref, "--format", "hf", "--out", str(out)]) == 0
        assert f"wrote the hf export {out}" in capsys.readouterr().out
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            out, dtype=torch.float32, local_files_only=True
        )
        ids = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)("abcabcxyz")["input_ids"]
        assert ids == ours.tokenizer.encode("abcabcxyz", add_bos=True)
        with torch.inference_mode():
            theirs, expected = hf.eval()(torch.tensor([ids])).logits, ours.model(torch.tensor([ids])).logits
        np.testing.assert_allclose(theirs.numpy(), expected.numpy(), rtol=0, atol=1e-4)


def test_cli_unreachable_registry(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from microgpt.processes import free_port

    monkeypatch.setenv("MICROGPT_REGISTRY_URL", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    try:
        assert main(["registry", "ls"]) == 2
    finally:
        get_settings.cache_clear()
    assert "not reachable" in capsys.readouterr().err


def test_cli_migrate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'microgpt.db'}"
    monkeypatch.setenv("MICROGPT_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        assert main(["registry", "migrate"]) == 0
        assert main(["registry", "migrate"]) == 0  # idempotent
    finally:
        get_settings.cache_clear()
    assert "up to date" in capsys.readouterr().out
    names = set(sa.inspect(sa.create_engine(url)).get_table_names())
    assert {"alembic_version_registry", "registry_models", "registry_versions", "registry_aliases"} <= names
    assert os.path.exists(tmp_path / "db" / "microgpt.db")
