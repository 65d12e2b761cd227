"""Built-in data sets by name, and the download cache behind the ones that come from the web.

    names        US census first names from the `names` package: offline, nothing to fetch
    names-32k    makemore's names.txt (32,033 names), downloaded once
    shakespeare  char-rnn's tinyshakespeare (1.1 MB), downloaded once
    pystdlib     the running Python's standard library sources: a multi-megabyte corpus
                 that exists offline on every machine (for BPE and pretraining demos)
    chat         conversations (OpenAI `messages` JSONL) from the built-in tasks: sums, words,
                 names, stdlib docstrings (`microgpt.data.tasks`), generated into the cache

A downloaded file lives at `{cache_dir}/datasets/{filename}` and is checked against a
pinned sha256 (and size) every time it is used, not only after the download: a file that
was truncated or edited in the cache is refused with an error naming it, both hashes and
the remedy, never silently trained on. Downloads stream into a temporary file beside the
target, are verified, then renamed into place, so the cache never holds a partial file.
With no network, `local_path` takes a copy obtained elsewhere (verified the same way).

    path = fetch("shakespeare", cache_dir)            # downloads on first use
    path = fetch("shakespeare", cache_dir, local_path="input.txt")
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from microgpt.atomic import fresh_path
from microgpt.data.sources import Files, Mode, Resolved, Texts

DATASETS_DIR = "datasets"


@dataclass(frozen=True)
class Dataset:
    """One named data set: where it comes from, and the mode and tokenizer it is used with."""

    name: str
    description: str
    mode: Mode
    tokenizer: str = "char"
    url: str | None = None  # None: nothing to download
    filename: str | None = None
    sha256: str | None = None
    size: int | None = None
    load: Callable[[], Resolved] | None = field(default=None, repr=False)  # for the offline ones
    # offline but generated into the cache once (returns the file there): chat
    generate: Callable[[Path], Path] | None = field(default=None, repr=False)

    @property
    def downloadable(self) -> bool:
        return self.url is not None

    def resolve(
        self,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        local_path: str | os.PathLike[str] | None = None,
    ) -> Resolved:
        if not self.downloadable:
            if local_path is not None:
                raise ValueError(f"{self.name} is built in and has nothing to download; drop --local-path")
            if self.generate is not None:
                if cache_dir is None:
                    raise ValueError(f"{self.name} is generated into a cache directory; pass cache_dir")
                return Files((self.generate(Path(cache_dir)),), label=self.name)
            assert self.load is not None
            return self.load()
        if cache_dir is None:
            raise ValueError(f"{self.name} is downloaded into a cache directory; pass cache_dir")
        return Files((fetch(self.name, cache_dir, local_path=local_path),), label=self.name)


def builtin_names_by_gender() -> dict[str, list[str]]:
    """The census files' lowercase first names, {"female": [...], "male": [...]}, in their order."""
    package = resources.files("names")
    lists: dict[str, list[str]] = {}
    for gender in ("female", "male"):
        text = (package / f"dist.{gender}.first").read_text(encoding="ascii")
        lists[gender] = [line.split()[0].lower() for line in text.splitlines() if line.strip()]
    return lists


def builtin_names() -> list[str]:
    """About 5,500 lowercase first names, female and male, in the census files' order."""
    lists = builtin_names_by_gender()
    return list(dict.fromkeys(lists["female"] + lists["male"]))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> Files:
    """Every `*.py` under the standard library directory, installed packages excluded, sorted.

    Each file is one document. A few test files are deliberately not UTF-8; they are
    skipped (`strict=False`) rather than failing the whole corpus.
    """
    root = stdlib_root()
    skip = {"site-packages", "dist-packages", "__pycache__"}
    paths = [
        p
        for p in sorted(root.rglob("*.py"))
        if p.is_file() and not skip.intersection(p.relative_to(root).parts)
    ]
    if not paths:
        raise ValueError(f"found no Python sources under {root}; is the standard library installed?")
    return Files(tuple(paths), label="pystdlib", per_file=True, strict=False, root=root)


def _chat_train_split(cache_dir: Path) -> Path:
    from microgpt.data.tasks import builtin_split  # the task generators are loaded only for `chat`

    return builtin_split(cache_dir, "train")


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "names",
            "US census first names from the `names` package (offline)",
            mode="documents",
            load=lambda: Texts(builtin_names(), label="names"),
        ),
        Dataset(
            "names-32k",
            "makemore's names.txt, 32,033 names",
            mode="documents",
            url="https://raw.githubusercontent.com/karpathy/makemore/master/names.txt",
            filename="names.txt",
            sha256="0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d",
            size=228_145,
        ),
        Dataset(
            "shakespeare",
            "char-rnn's tinyshakespeare, 40,000 lines",
            mode="stream",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            filename="tinyshakespeare.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            size=1_115_394,
        ),
        Dataset(
            "pystdlib",
            "this Python's standard library sources (offline, several MB)",
            mode="stream",
            load=stdlib_files,
        ),
        Dataset(
            "chat",
            "conversations from the built-in tasks (sums, words, names, docstrings), the train split",
            mode="documents",
            generate=_chat_train_split,
        ),
    )
}


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; built-in data sets: {', '.join(DATASETS)}")
    return DATASETS[name]


def cached_path(name: str, cache_dir: str | os.PathLike[str]) -> Path:
    """Where the download of `name` lives in the cache (it may not be there yet)."""
    dataset = get_dataset(name)
    if not dataset.downloadable:
        raise ValueError(f"{name} is built in; it has no file in the cache")
    assert dataset.filename is not None
    return Path(cache_dir) / DATASETS_DIR / dataset.filename


def verify(path: Path, dataset: Dataset, *, remedy: str) -> None:
    """Refuse `path` unless its size and sha256 are the pinned ones; the error names both hashes."""
    assert dataset.sha256 is not None
    size = path.stat().st_size
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, "sha256").hexdigest()
    if actual == dataset.sha256:
        return
    what = "truncated" if dataset.size and size < dataset.size else "corrupted or another file"
    raise ValueError(
        f"{path} is not {dataset.name}'s pinned file ({what}: {size:,} bytes, expected {dataset.size:,}): "
        f"sha256 {actual}, expected {dataset.sha256}; {remedy}"
    )


def fetch(
    name: str,
    cache_dir: str | os.PathLike[str],
    *,
    local_path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """The verified cached file of a downloadable data set, downloading (or copying) it if absent.

    `local_path` copies that file into the cache instead of downloading; `url` replaces
    the canonical address (a mirror). Either way the pinned sha256 is checked before the
    file is renamed into the cache, and a file already in the cache is checked on every call.
    """
    dataset = get_dataset(name)
    target = cached_path(name, cache_dir)
    if local_path is not None:
        source = Path(local_path).expanduser()
        if not source.is_file():
            raise ValueError(f"--local-path {source} is not a file")
        verify(source, dataset, remedy=f"pass a copy of {dataset.url}")
        _copy_into(source, target)
        return target
    if target.is_file():
        verify(
            target,
            dataset,
            remedy="delete it to download it again, or replace it with --local-path FILE",
        )
        return target
    _download(dataset, url or dataset.url, target, timeout=timeout)
    return target


def _copy_into(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and target.samefile(source):
        return
    tmp = fresh_path(target.parent, f".{target.name}.tmp-")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _download(dataset: Dataset, url: str | None, target: Path, *, timeout: float) -> None:
    """Stream `url` into a temp file beside `target`, check size and sha256, rename it into place."""
    import httpx  # only downloads need it

    assert url is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_path(target.parent, f".{target.name}.download-")
    hint = "with no network, download it elsewhere and pass --local-path FILE"
    try:
        h = hashlib.sha256()
        with (
            httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response,
            open(tmp, "wb") as f,
        ):
            if response.status_code != 200:
                raise ValueError(
                    f"downloading {dataset.name} from {url}: HTTP {response.status_code}; {hint}"
                )
            for block in response.iter_bytes(1 << 16):
                h.update(block)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != dataset.sha256:
            size = tmp.stat().st_size
            raise ValueError(
                f"the download of {dataset.name} from {url} does not match its pinned checksum "
                f"({size:,} bytes, sha256 {h.hexdigest()}, expected {dataset.sha256}); "
                f"nothing was cached; {hint}"
            )
        os.replace(tmp, target)
    except httpx.HTTPError as e:
        raise ValueError(f"could not download {dataset.name} from {url}: {e}; {hint}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
