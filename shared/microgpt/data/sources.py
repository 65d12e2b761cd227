"""Document sources: where text comes from, read as a stream so a corpus never has to fit in memory.

A source is a built-in data set name (`names`, `names-32k`, `shakespeare`, `pystdlib`;
see `microgpt.data.builtin`), a UTF-8 text file, a JSONL file (one JSON object per line,
its text under `text_field`), a directory or glob of such files, or an in-memory list of
documents. `resolve()` turns any of these into a `Files` or `Texts` value; everything
else here takes either.

What a *document* is depends on the mode:

- `documents` (microgpt, makemore): one document per non-blank line of a text file
  (stripped), per JSONL record, per list item; each is later wrapped in BOS ... EOS.
- `stream` (nanoGPT): a text file is one long document (read in pieces of about
  `chunk_chars` characters, cut at line ends), a JSONL record or list item is one
  document; the prepared stream is their concatenation, with EOS between documents.

A JSONL record with `messages` instead of a text field is a conversation, rendered with the
chat template (`microgpt.data.conversations`); `iter_conversations` keeps which pieces the
assistant wrote, for training on those alone.

`iter_chunks` yields `Chunk(doc, text)` pieces, several per document when a document is
large, with bounded memory; `iter_documents` joins them into whole documents.
Text must be UTF-8 without NUL bytes: an undecodable or binary file is a ValueError
naming the file and the byte offset (only `pystdlib` skips such files, see there).

    for doc in iter_documents("names.txt"):             # one name per line
        ...
    for chunk in iter_chunks("input.txt", mode="stream"):  # pieces of one long document
        ...
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from microgpt.digest import file_sha256

Mode = Literal["documents", "stream"]
MODES: tuple[Mode, ...] = ("documents", "stream")
CHUNK_CHARS = 1 << 20  # about 1 MiB of text per piece: bounded memory, cheap numpy calls
_READ_BYTES = 1 << 20
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


class Chunk(NamedTuple):
    """A piece of text and the index (from 0, in source order) of the document it belongs to."""

    doc: int
    text: str


@dataclass(frozen=True)
class Files:
    """Files read in order; `.jsonl`/`.ndjson` as JSON lines, anything else as UTF-8 text.

    `per_file=True` makes each text file one document in `documents` mode too (pystdlib);
    `strict=False` skips files that are not UTF-8 text instead of failing (pystdlib only).
    `root` names files relative to it in the source hash, so a moved tree hashes the same.
    """

    paths: tuple[Path, ...]
    label: str
    text_field: str = "text"
    per_file: bool = False
    strict: bool = True
    root: Path | None = None


@dataclass(frozen=True)
class Texts:
    """Documents held in memory (a built-in list, or a list a caller passed); empty ones are skipped."""

    docs: Sequence[str]
    label: str


Resolved = Files | Texts
Source = str | os.PathLike[str] | Sequence[str] | Files | Texts


def resolve(
    source: Source,
    *,
    text_field: str = "text",
    cache_dir: str | os.PathLike[str] | None = None,
    local_path: str | os.PathLike[str] | None = None,
) -> Resolved:
    """The files or texts behind `source`; a missing file or unknown name is a ValueError.

    Built-in names win over paths. `cache_dir` is where downloadable built-ins live and
    `local_path` replaces their download (both only matter for those).
    """
    if isinstance(source, Files | Texts):
        return source
    if isinstance(source, Sequence) and not isinstance(source, str):
        for i, doc in enumerate(source):
            if not isinstance(doc, str):
                raise ValueError(f"document {i} of the list is {type(doc).__name__}, not str")
        return Texts(source, label=f"<{len(source)} documents in memory>")

    from microgpt.data.builtin import DATASETS  # builtin builds Files/Texts, so it imports us

    name = os.fspath(source)
    if name in DATASETS:
        return DATASETS[name].resolve(cache_dir=cache_dir, local_path=local_path)
    if local_path is not None:
        raise ValueError(f"--local-path replaces the download of a built-in data set, not of {name!r}")
    path = Path(name).expanduser()
    if path.is_file():
        return Files((path,), label=name, text_field=text_field)
    if path.is_dir():
        found = [p for p in sorted(path.rglob("*")) if p.is_file() and not _hidden(p.relative_to(path))]
        if not found:
            raise ValueError(f"directory {name} has no files")
        return Files(tuple(found), label=name, text_field=text_field, root=path)
    if glob.has_magic(name):
        found = [Path(p) for p in sorted(glob.glob(os.path.expanduser(name), recursive=True))]
        found = [p for p in found if p.is_file()]
        if not found:
            raise ValueError(f"no files match {name!r}")
        return Files(tuple(found), label=name, text_field=text_field)
    known = ", ".join(DATASETS)
    raise ValueError(f"no such data set, file or directory: {name!r} (built-in data sets: {known})")


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


# --- reading ----------------------------------------------------------------------------


def iter_chunks(
    source: Source,
    *,
    mode: Mode = "documents",
    text_field: str = "text",
    cache_dir: str | os.PathLike[str] | None = None,
    chunk_chars: int = CHUNK_CHARS,
) -> Iterator[Chunk]:
    """Pieces of text in source order, each tagged with its document's index.

    A document's pieces are consecutive; only `stream` mode splits a document (a text
    file), at line ends when it can; a piece holds at most `chunk_chars` characters.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    src = resolve(source, text_field=text_field, cache_dir=cache_dir)
    doc = 0
    if isinstance(src, Texts):
        for i, text in enumerate(src.docs):
            if not isinstance(text, str):
                raise ValueError(f"document {i} of {src.label} is {type(text).__name__}, not str")
            if "\x00" in text:
                raise ValueError(f"document {i} of {src.label} holds a NUL character; is it binary data?")
            if text.strip():
                yield Chunk(doc, text)
                doc += 1
        return
    for path in src.paths:
        if path.suffix.lower() in _JSONL_SUFFIXES:
            for text in _jsonl_texts(path, src.text_field):
                yield Chunk(doc, text)
                doc += 1
            continue
        if src.strict:
            pieces = _decoded(path)
        else:  # only for sources of many small files: read whole, skip what is not text
            whole = _whole_text_or_none(path)
            pieces = iter([whole] if whole else [])
        if mode == "stream" or src.per_file:
            wrote = False
            for piece in _cut_at_lines(pieces, chunk_chars):
                yield Chunk(doc, piece)
                wrote = True
            doc += wrote
        else:
            for line in _lines(pieces):
                yield Chunk(doc, line)
                doc += 1


def iter_documents(
    source: Source,
    *,
    mode: Mode = "documents",
    text_field: str = "text",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """Whole documents in source order (in `stream` mode a text file is one, however large)."""
    current, parts = -1, list[str]()
    for chunk in iter_chunks(source, mode=mode, text_field=text_field, cache_dir=cache_dir):
        if chunk.doc != current and parts:
            yield "".join(parts)
            parts = []
        current = chunk.doc
        parts.append(chunk.text)
    if parts:
        yield "".join(parts)


def load_documents(
    source: Source,
    *,
    mode: Mode = "documents",
    text_field: str = "text",
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """All documents as a list; an empty source is a ValueError."""
    docs = list(iter_documents(source, mode=mode, text_field=text_field, cache_dir=cache_dir))
    if not docs:
        raise ValueError(f"data source {_label(source)!r} has no documents")
    return docs


def _label(source: Source) -> str:
    if isinstance(source, Files | Texts):
        return source.label
    if isinstance(source, Sequence) and not isinstance(source, str):
        return f"<{len(source)} documents in memory>"
    return os.fspath(source)


def _decoded(path: Path) -> Iterator[str]:
    """UTF-8 text of `path` in pieces of about 1 MiB; bad bytes or a NUL are errors with an offset."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0  # bytes read before `raw`
    with open(path, "rb") as f:
        while True:
            raw = f.read(_READ_BYTES)
            pending = len(decoder.getstate()[0])  # an unfinished character from the last read
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                raise ValueError(
                    f"{path} is not UTF-8 text (byte {at}: {e.reason}); "
                    f"microgpt reads UTF-8 text, so convert it first (e.g. iconv -t utf-8)"
                ) from None
            nul = text.find("\x00")
            if nul >= 0:
                raise ValueError(f"{path} looks like a binary file (a NUL byte near byte {offset + nul})")
            if text:
                yield text
            if not raw:
                return
            offset += len(raw)


def _whole_text_or_none(path: Path) -> str | None:
    """The file's UTF-8 text, or None if it is not UTF-8 text (for sources that skip such files)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return None if "\x00" in text else text


def _cut_at_lines(pieces: Iterator[str], chunk_chars: int) -> Iterator[str]:
    """Re-cut text pieces into at most `chunk_chars` characters, ending at a newline where one exists."""
    carry = ""
    for piece in pieces:
        buf, start = carry + piece, 0
        while len(buf) - start >= chunk_chars:
            end = start + chunk_chars
            cut = buf.rfind("\n", start, end) + 1
            if cut <= start:  # no newline in the window: a hard cut
                cut = end
            yield buf[start:cut]
            start = cut
        carry = buf[start:]
    if carry:
        yield carry


def _lines(pieces: Iterator[str]) -> Iterator[str]:
    """Non-blank stripped lines across text pieces (a line may span two pieces)."""
    carry = ""
    for piece in pieces:
        lines = (carry + piece).split("\n")
        carry = lines.pop()
        for line in lines:
            line = line.strip()
            if line:
                yield line
    if carry.strip():
        yield carry.strip()


def _jsonl_texts(path: Path, text_field: str) -> Iterator[str]:
    """The `text_field` string of each JSON line, or its conversation rendered with the chat template
    when the record has `messages` instead (`microgpt.data.conversations`); a bad line names file and line."""
    from microgpt.data.conversations import MESSAGES_FIELD, conversation_text, iter_records

    for number, record in iter_records(path, _lines(_decoded(path))):
        if isinstance(record, dict) and text_field not in record and MESSAGES_FIELD in record:
            try:
                text = conversation_text(record)
            except ValueError as e:
                raise ValueError(f"{path}: record {number}: {e}") from None
        elif not isinstance(record, dict) or text_field not in record:
            fields = ", ".join(map(repr, record)) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{path}: record {number} has no {text_field!r} field (it has {fields})")
        else:
            text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(f"{path}: record {number}: {text_field!r} is {type(text).__name__}, not str")
        if "\x00" in text:
            raise ValueError(f"{path}: record {number}: {text_field!r} holds a NUL character")
        if text.strip():
            yield text


def iter_conversations(
    source: Source, *, cache_dir: str | os.PathLike[str] | None = None
) -> Iterator[list[tuple[str, bool]]]:
    """Each conversation of a messages JSONL source, rendered in (text, trained) pieces, in order.

    Supervised finetuning reads this instead of documents: only `.jsonl`/`.ndjson` files of
    `messages` records are conversations; anything else is a ValueError naming it.
    """
    from microgpt.data.conversations import iter_segments

    src = resolve(source, cache_dir=cache_dir)
    if isinstance(src, Texts):
        raise ValueError(f"{src.label} is plain text; training on assistant turns needs messages JSONL")
    for path in src.paths:
        if path.suffix.lower() not in _JSONL_SUFFIXES:
            raise ValueError(f"{path} is not JSONL; training on assistant turns needs messages JSONL")
        yield from iter_segments(path, _lines(_decoded(path)))


# --- identity ---------------------------------------------------------------------------


def source_sha256(
    source: Source, *, text_field: str = "text", cache_dir: str | os.PathLike[str] | None = None
) -> str:
    """sha256 hex naming the source's content, computed in one streaming pass.

    A single file hashes as its bytes (so `shakespeare` matches its pinned checksum);
    several files hash as their names (relative to a directory root) and contents;
    in-memory documents hash as their UTF-8 text, each length-prefixed.
    """
    src = resolve(source, text_field=text_field, cache_dir=cache_dir)
    if isinstance(src, Texts):
        h = hashlib.sha256(b"texts\n")
        for doc in src.docs:
            data = doc.encode("utf-8", errors="surrogatepass")
            h.update(len(data).to_bytes(8, "little") + data)
        return h.hexdigest()
    if len(src.paths) == 1 and src.root is None:
        return file_sha256(src.paths[0])
    h = hashlib.sha256(b"files\n")
    for path in src.paths:
        name = path.relative_to(src.root).as_posix() if src.root else os.fspath(path)
        h.update(f"{name}\0{file_sha256(path)}\n".encode("utf-8", errors="surrogateescape"))
    return h.hexdigest()
