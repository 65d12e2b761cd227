"""Sources: every kind (text file, directory, glob, JSONL, list, built-in), both modes, and the
refusals (undecodable bytes, binary files, bad JSONL, unknown names). Files are written for real
into tmp_path; the read buffer is shrunk in places so multi-byte characters straddle reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microgpt.data import sources
from microgpt.data.builtin import stdlib_files
from microgpt.data.sources import (
    Files,
    Texts,
    iter_chunks,
    iter_documents,
    load_documents,
    resolve,
    source_sha256,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_text_file_documents_are_stripped_non_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "names.txt", "emma\n  olivia \r\n\n\nava")
    assert load_documents(path) == ["emma", "olivia", "ava"]


def test_text_file_in_stream_mode_is_one_document_cut_at_line_ends(tmp_path: Path) -> None:
    text = "".join(f"line {i}: to be or not to be\n" for i in range(500))
    path = write(tmp_path / "play.txt", text)
    chunks = list(iter_chunks(path, mode="stream", chunk_chars=1000))
    assert len(chunks) > 5 and {c.doc for c in chunks} == {0}
    assert all(c.text.endswith("\n") for c in chunks)
    assert all(len(c.text) < 1100 for c in chunks)
    assert "".join(c.text for c in chunks) == text
    assert list(iter_documents(path, mode="stream")) == [text]


def test_a_line_longer_than_a_chunk_is_cut_hard_and_nothing_is_lost(tmp_path: Path) -> None:
    text = "x" * 5000 + "\nshort\n"
    chunks = list(iter_chunks(write(tmp_path / "t.txt", text), mode="stream", chunk_chars=1000))
    assert "".join(c.text for c in chunks) == text


def test_multibyte_characters_straddling_reads_decode_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_READ_BYTES", 7)
    text = "héllo wörld ✓ naïve café 🙂\nsecond líne ✓\n" * 20
    path = write(tmp_path / "u.txt", text)
    assert list(iter_documents(path, mode="stream")) == [text]
    assert load_documents(path)[:2] == ["héllo wörld ✓ naïve café 🙂", "second líne ✓"]


def test_undecodable_bytes_are_an_error_with_the_file_and_byte_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_READ_BYTES", 5)
    path = tmp_path / "latin1.txt"
    path.write_bytes("ab✓cdefgh".encode() + b"\xe9t\xe9\n")  # latin-1 é after 11 good bytes
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text \(byte 11"):
        load_documents(path)


def test_a_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x00\x01\x02\x03" * 100)
    with pytest.raises(ValueError, match="looks like a binary file"):
        list(iter_chunks(path, mode="stream"))


def test_an_empty_source_has_no_documents(tmp_path: Path) -> None:
    for path in (write(tmp_path / "empty.txt", ""), write(tmp_path / "blank.txt", "\n  \n\n")):
        with pytest.raises(ValueError, match="has no documents"):
            load_documents(path)
    with pytest.raises(ValueError, match="has no documents"):
        load_documents([])


def test_directory_is_read_recursively_in_sorted_order_skipping_hidden_files(tmp_path: Path) -> None:
    write(tmp_path / "corpus" / "b.txt", "bob\n")
    write(tmp_path / "corpus" / "a.txt", "alice\nanna\n")
    write(tmp_path / "corpus" / "sub" / "c.txt", "carol\n")
    write(tmp_path / "corpus" / ".git" / "HEAD", "ref: main\n")
    assert load_documents(tmp_path / "corpus") == ["alice", "anna", "bob", "carol"]
    docs = load_documents(tmp_path / "corpus", mode="stream")
    assert docs == ["alice\nanna\n", "bob\n", "carol\n"]  # a file is one stream document


def test_glob_matches_files_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "2.txt", "two\n")
    write(tmp_path / "1.txt", "one\n")
    write(tmp_path / "skip.md", "no\n")
    assert load_documents(str(tmp_path / "*.txt")) == ["one", "two"]
    with pytest.raises(ValueError, match="no files match"):
        load_documents(str(tmp_path / "*.csv"))


def test_jsonl_records_give_their_text_field(tmp_path: Path) -> None:
    records = [
        {"text": "first doc", "id": 1},
        {"text": ""},
        {"text": "second\ndoc"},
        {"body": "x", "text": "3"},
    ]
    path = write(tmp_path / "docs.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    assert load_documents(path) == ["first doc", "second\ndoc", "3"]  # empty texts are skipped
    assert load_documents(path, mode="stream") == ["first doc", "second\ndoc", "3"]
    other = write(tmp_path / "other.jsonl", json.dumps({"body": "in body"}) + "\n")
    assert load_documents(other, text_field="body") == ["in body"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"record 2 is not JSON"),
        ('{"content": "x"}', r"record 2 has no 'text' field \(it has 'content'\)"),
        ('{"text": 5}', r"record 2: 'text' is int, not str"),
        ("[1, 2]", r"record 2 has no 'text' field \(it has list\)"),
    ],
)
def test_bad_jsonl_records_are_errors_naming_file_and_record(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "bad.jsonl", '{"text": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl: {message}"):
        load_documents(path)


def test_in_memory_documents(tmp_path: Path) -> None:
    assert load_documents(["emma", "", "  ", "ava"]) == ["emma", "ava"]
    assert isinstance(resolve(["a"]), Texts)
    with pytest.raises(ValueError, match="document 1 of the list is int"):
        load_documents(["a", 3])  # type: ignore[list-item]


def test_unknown_name_lists_the_built_in_data_sets() -> None:
    with pytest.raises(
        ValueError, match=r"no such data set.*'nonsense'.*names, names-32k, shakespeare, pystdlib"
    ):
        resolve("nonsense")


def test_names_is_built_in_and_needs_no_network_or_cache() -> None:
    docs = load_documents("names")  # no cache_dir: nothing is fetched or written
    assert 5000 < len(docs) < 6000
    assert docs[0] == "mary" and "james" in docs
    assert all(d.isalpha() and d.islower() for d in docs)


def test_pystdlib_is_this_pythons_standard_library_one_document_per_file() -> None:
    src = stdlib_files()
    assert isinstance(src, Files) and src.per_file and not src.strict
    names = {p.relative_to(src.root).as_posix() for p in src.paths}
    assert {"os.py", "json/__init__.py", "collections/__init__.py"} <= names
    assert not any("site-packages" in n for n in names)
    assert sum(p.stat().st_size for p in src.paths) > 5_000_000  # a real multi-megabyte corpus
    first = next(iter_documents("pystdlib"))
    assert first == src.paths[0].read_text(encoding="utf-8")


def test_source_hash_is_the_file_hash_and_changes_with_content(tmp_path: Path) -> None:
    import hashlib

    path = write(tmp_path / "a.txt", "hello\n")
    assert source_sha256(path) == hashlib.sha256(b"hello\n").hexdigest()
    write(tmp_path / "b.txt", "world\n")
    tree = source_sha256(tmp_path)
    write(tmp_path / "b.txt", "world!\n")
    assert source_sha256(tmp_path) != tree
    assert source_sha256(["a", "b"]) != source_sha256(["ab"])  # documents are length-prefixed


def test_a_lenient_file_set_skips_files_that_are_not_text(tmp_path: Path) -> None:
    good = write(tmp_path / "good.py", "x = 1\ny = 2\n")
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"# coding: latin-1\nname = '\xe9'\n")
    lenient = Files((bad, good), label="lenient", strict=False)
    assert load_documents(lenient) == ["x = 1", "y = 2"]
    assert load_documents(Files((bad, good), label="per file", strict=False, per_file=True)) == [
        "x = 1\ny = 2\n"
    ]
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_documents(Files((bad, good), label="strict"))
