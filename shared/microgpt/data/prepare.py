"""Preparation: a source tokenized once into binary shards and a manifest, reused until its inputs change.

    manifest = prepare("input.txt", tok, "prepared/shakespeare", mode="stream")
    prepare("input.txt", tok, "prepared/shakespeare", mode="stream").reused  # True: nothing rewritten

Design choices a reader must know:

- One streaming pass with bounded memory. Text is read in ~1 MiB pieces, tokenized and
  appended to shard files through small buffers, so a corpus far larger than memory
  prepares in well under 100 MB (`microgpt.bench.prepare` measures it). The char
  tokenizer takes a vectorised path (a lookup table over code points), the byte
  tokenizer another (its ids are the UTF-8 bytes), other kinds their own `encode`.
- The split is a pure function of the seed. In `documents` mode each source document goes
  to val with probability `val_fraction` (a long document split into pieces keeps all its
  pieces in one split, so validation text is never trained on). In `stream` mode the
  token stream is cut into segments of `segment_tokens` and each segment is assigned the
  same way (nanoGPT takes the last 10%; segments spread val across the corpus yet stay
  deterministic and streamable).
- `loss_on="assistant"` (supervised finetuning) reads conversations (messages JSONL) in
  documents mode and writes a loss mask beside the shards: each conversation is rendered
  with the chat template in pieces (`microgpt.data.sources.iter_conversations`), each piece
  encoded on its own, and only the assistant's pieces and the final EOS are marked as
  targets. A char tokenizer encodes the pieces exactly as the joined text.
- Documents are stored as BOS + tokens + EOS (whichever the tokenizer has); a document
  longer than `block_size + 1` tokens is truncated (`long_documents="truncate"`, the rest
  dropped) or split into windows of `block_size + 1` that overlap by one token
  (`"split"`, so every token is still a target once). Stream mode puts EOS between documents.
- Reuse is decided by the manifest: same source sha256, tokenizer hash and options, and
  every shard intact. Anything else re-prepares into a temporary directory that replaces
  the old one atomically.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from microgpt import __version__
from microgpt.atomic import atomic_directory, atomic_write_bytes
from microgpt.chat import TEMPLATE_VERSION
from microgpt.data.manifest import (
    MANIFEST_FILE,
    TOKENIZER_FILE,
    LongDocuments,
    LossOn,
    Manifest,
    Options,
    SplitInfo,
    dtype_for,
    read_manifest,
    shards_intact,
)
from microgpt.data.shards import ShardWriter
from microgpt.data.sources import (
    CHUNK_CHARS,
    Mode,
    Resolved,
    Source,
    Texts,
    iter_chunks,
    iter_conversations,
    iter_documents,
    resolve,
    source_sha256,
)
from microgpt.tokenizers import TOKENIZER_KINDS, CharTokenizer, Tokenizer, load_tokenizer, train_tokenizer

DEFAULT_SEED = 1337
DEFAULT_VAL_FRACTION = 0.1
SHARD_TOKENS = 1 << 27  # 128M ids: 256 MB of uint16 per shard
MAX_SEGMENT_TOKENS = 1 << 14
_SPLIT_STREAM = 0x5B117  # keeps the split's random stream apart from any other use of the seed
_DRAWS = 4096


def prepare(
    source: Source,
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike[str],
    *,
    mode: Mode = "documents",
    seed: int = DEFAULT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    block_size: int | None = None,
    long_documents: LongDocuments = "truncate",
    text_field: str = "text",
    cache_dir: str | os.PathLike[str] | None = None,
    local_path: str | os.PathLike[str] | None = None,
    segment_tokens: int | None = None,
    shard_tokens: int = SHARD_TOKENS,
    chunk_chars: int = CHUNK_CHARS,
    loss_on: LossOn = "all",
) -> Manifest:
    """Tokenize `source` into `out_dir` (or reuse what is there) and return its manifest.

    `segment_tokens=None` picks about 200 segments for small corpora, at most 16,384 tokens
    each. Errors (empty source, undecodable text, an empty split, a directory that is not
    prepared data) are ValueErrors that name the problem.
    """
    if mode not in ("documents", "stream"):
        raise ValueError(f"mode must be 'documents' or 'stream', got {mode!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if long_documents not in ("truncate", "split"):
        raise ValueError(f"long_documents must be 'truncate' or 'split', got {long_documents!r}")
    if (segment_tokens is not None and segment_tokens < 1) or shard_tokens < 1 or chunk_chars < 1:
        raise ValueError(
            f"segment_tokens, shard_tokens and chunk_chars must be >= 1, got "
            f"{segment_tokens}, {shard_tokens} and {chunk_chars}"
        )
    if loss_on not in ("all", "assistant"):
        raise ValueError(f"loss_on must be 'all' or 'assistant', got {loss_on!r}")
    if loss_on == "assistant" and mode != "documents":
        raise ValueError("training on assistant turns reads whole conversations: use documents mode")
    if mode == "documents" and tokenizer.bos_id is None and tokenizer.eos_id is None:
        raise ValueError(
            f"documents mode wraps each document in BOS ... EOS, but the {tokenizer.kind} tokenizer "
            f"has neither; use stream mode or a tokenizer with special tokens"
        )
    src = resolve(source, text_field=text_field, cache_dir=cache_dir, local_path=local_path)
    sha = source_sha256(src)
    if segment_tokens is None:
        segment_tokens = min(MAX_SEGMENT_TOKENS, max(256, _source_chars(src) // 200))
    options = Options(
        mode=mode,
        seed=seed,
        val_fraction=val_fraction,
        block_size=block_size if mode == "documents" else None,
        long_documents=long_documents if mode == "documents" else "truncate",
        text_field=text_field,
        segment_tokens=segment_tokens if mode == "stream" else 0,
        shard_tokens=shard_tokens,
        loss_on=loss_on,
        chat_template=TEMPLATE_VERSION if loss_on == "assistant" else None,
    )
    out = Path(out_dir)
    existing = _reusable(out, sha, tokenizer, options)
    if existing is not None:
        return existing

    dtype = dtype_for(tokenizer.vocab_size)
    with atomic_directory(out) as tmp:
        tokenizer.save(tmp / TOKENIZER_FILE)
        writers = {
            split: ShardWriter(
                tmp,
                split,
                dtype,
                shard_tokens=shard_tokens,
                documents=mode == "documents",
                masked=loss_on == "assistant",
            )
            for split in ("train", "val")
        }
        draws = _Draws(seed)
        encode = encoder_for(tokenizer)
        if loss_on == "assistant":
            counts = _write_documents(_conversations(src, encode), tokenizer, writers, draws, options)
        elif mode == "documents":
            documents = ((encode(text), None) for text in iter_documents(src, mode="documents"))
            counts = _write_documents(documents, tokenizer, writers, draws, options)
        else:
            counts = _write_stream(src, encode, tokenizer, writers, draws, options, chunk_chars)
        train, val = writers["train"].close(), writers["val"].close()
        _check_splits(src.label, counts["source_documents"], train, val, options)
        manifest = Manifest(
            microgpt_version=__version__,
            source=src.label,
            source_sha256=sha,
            tokenizer_kind=tokenizer.kind,
            tokenizer_hash=tokenizer.content_hash,
            vocab_size=tokenizer.vocab_size,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
            dtype=dtype,
            options=options,
            train=train,
            val=val,
            source_documents=counts["source_documents"],
            truncated_documents=counts["truncated_documents"],
            split_documents=counts["split_documents"],
        )
        atomic_write_bytes(tmp / MANIFEST_FILE, (manifest.model_dump_json(indent=2) + "\n").encode())
    return manifest


def _reusable(out: Path, sha: str, tokenizer: Tokenizer, options: Options) -> Manifest | None:
    """The manifest at `out` if it was made from these exact inputs and its shards are intact."""
    if not out.exists():
        return None
    if not (out / MANIFEST_FILE).is_file():
        if out.is_dir() and not any(out.iterdir()):
            return None
        raise ValueError(
            f"{out} exists and is not a prepared data directory (no {MANIFEST_FILE}); "
            f"refusing to replace it: choose another output directory"
        )
    try:
        manifest = read_manifest(out)
    except ValueError:
        return None  # an old or damaged manifest: prepare again
    same = (
        manifest.source_sha256 == sha
        and manifest.tokenizer_hash == tokenizer.content_hash
        and manifest.options == options
    )
    if same and shards_intact(out, manifest):
        return manifest.model_copy(update={"reused": True})
    return None


def _source_chars(src: Resolved) -> int:
    """About how many characters the source holds (file sizes in bytes), to size split segments."""
    if isinstance(src, Texts):
        return sum(len(d) for d in src.docs)
    return sum(p.stat().st_size for p in src.paths)


class _Draws:
    """Uniform [0, 1) draws for the split, one per document or segment, from (seed, a fixed stream id)."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng([_SPLIT_STREAM, seed])
        self._buf = np.empty(0)
        self._i = 0

    def is_val(self, fraction: float) -> bool:
        if self._i == len(self._buf):
            self._buf, self._i = self._rng.random(_DRAWS), 0
        self._i += 1
        return bool(self._buf[self._i - 1] < fraction)


def _conversations(
    src: Resolved, encode: Callable[[str], np.ndarray]
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Each conversation's ids and loss mask (True on what the assistant writes), piece by piece."""
    for pieces in iter_conversations(src):
        ids = [encode(text) for text, _ in pieces]
        mask = [np.full(len(part), trained) for part, (_, trained) in zip(ids, pieces)]
        yield np.concatenate(ids), np.concatenate(mask)


def _write_documents(
    documents: Iterator[tuple[np.ndarray, np.ndarray | None]],
    tokenizer: Tokenizer,
    writers: dict[str, ShardWriter],
    draws: _Draws,
    options: Options,
) -> dict[str, int]:
    """Each (ids, loss mask or None) as BOS + ids + EOS in a split; BOS is never a target, EOS is."""
    head = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    tail = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    block = options.block_size
    counts = {"source_documents": 0, "truncated_documents": 0, "split_documents": 0}
    for ids, mask in documents:
        seq = np.concatenate([np.asarray(head, dtype=ids.dtype), ids, np.asarray(tail, dtype=ids.dtype)])
        marks = None
        if mask is not None:
            marks = np.concatenate([np.zeros(len(head), dtype=bool), mask, np.ones(len(tail), dtype=bool)])
        writer = writers["val" if draws.is_val(options.val_fraction) else "train"]
        counts["source_documents"] += 1
        if block is None or len(seq) <= block + 1:
            writer.write_document(seq, marks)
        elif options.long_documents == "truncate":
            writer.write_document(seq[: block + 1], None if marks is None else marks[: block + 1])
            counts["truncated_documents"] += 1
        else:  # windows of block+1 overlapping by one token: every token is a target exactly once
            for start in range(0, len(seq) - 1, block):
                window = slice(start, start + block + 1)
                writer.write_document(seq[window], None if marks is None else marks[window])
            counts["split_documents"] += 1
    return counts


def _write_stream(
    src: Resolved,
    encode: Callable[[str], np.ndarray],
    tokenizer: Tokenizer,
    writers: dict[str, ShardWriter],
    draws: _Draws,
    options: Options,
    chunk_chars: int,
) -> dict[str, int]:
    separator = np.asarray([tokenizer.eos_id] if tokenizer.eos_id is not None else [], dtype=np.int64)
    left, writer = 0, writers["train"]
    documents, current, blank = 0, -1, True

    def route(ids: np.ndarray) -> None:
        nonlocal left, writer
        while len(ids):
            if left == 0:
                writer = writers["val" if draws.is_val(options.val_fraction) else "train"]
                left = options.segment_tokens
            take = min(left, len(ids))
            writer.write(ids[:take])
            ids, left = ids[take:], left - take

    for chunk in iter_chunks(src, mode="stream", chunk_chars=chunk_chars):
        if chunk.doc != current:
            if documents:
                route(separator)
            documents, current = documents + 1, chunk.doc
        blank = blank and chunk.text.isspace()  # stops scanning at the first visible character
        route(encode(chunk.text))
    # a stream is cut into segments, never truncated or split per document
    return {"source_documents": 0 if blank else documents, "truncated_documents": 0, "split_documents": 0}


def _check_splits(label: str, documents: int, train: SplitInfo, val: SplitInfo, options: Options) -> None:
    if documents == 0 or train.tokens + val.tokens == 0:
        raise ValueError(f"data source {label!r} is empty: it has no text to prepare")
    unit = "documents" if options.mode == "documents" else f"segments of {options.segment_tokens} tokens"
    if train.tokens == 0:
        raise ValueError(
            f"the train split of {label!r} is empty ({documents} documents, val_fraction "
            f"{options.val_fraction}); add data or lower the validation fraction"
        )
    if options.val_fraction > 0 and val.tokens == 0:
        raise ValueError(
            f"the validation split of {label!r} is empty: too little data for val_fraction "
            f"{options.val_fraction} of {unit}; add data, raise the fraction, or use val_fraction 0"
        )


# --- encoding ---------------------------------------------------------------------------


def encoder_for(tokenizer: Tokenizer) -> Callable[[str], np.ndarray]:
    """A text -> ids function equal to `tokenizer.encode`, vectorised for the char and byte kinds."""
    if type(tokenizer) is CharTokenizer:
        return _CharLookup(tokenizer)
    if type(tokenizer) is TOKENIZER_KINDS.get("byte"):  # ids 0..255 are the UTF-8 bytes themselves
        return _utf8_bytes(tokenizer)
    vocab = tokenizer.vocab_size

    def encode(text: str) -> np.ndarray:
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise ValueError(
                f"the {tokenizer.kind} tokenizer produced id {bad}, outside its vocabulary of {vocab}"
            )
        return ids

    return encode


def _utf8_bytes(tokenizer: Tokenizer) -> Callable[[str], np.ndarray]:
    def encode(text: str) -> np.ndarray:
        try:
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        except UnicodeEncodeError:
            return np.asarray(tokenizer.encode(text), dtype=np.int64)  # raises its own error

    return encode


class _CharLookup:
    """Char tokenizer ids by table lookup over code points: numpy speed, `encode`'s exact result.

    Text with a character outside the vocabulary falls back to `tokenizer.encode`, which
    raises its own error naming the character and position (or maps it to UNK).
    """

    def __init__(self, tokenizer: CharTokenizer):
        self.tokenizer = tokenizer
        points = np.fromiter((ord(c) for c in tokenizer.chars), dtype=np.int64)
        # -1 for unknown code points; the last entry is -1 too, and `take(mode="clip")` sends every
        # code point past the table there, so one call handles ASCII and all of Unicode
        self.table = np.full(max(int(points.max()) + 2, 257), -1, dtype=np.int32)
        self.table[points] = np.arange(len(points), dtype=np.int32)

    def __call__(self, text: str) -> np.ndarray:
        if len(text) < 64:  # short documents: the dict lookup beats numpy's call overhead
            return np.asarray(self.tokenizer.encode(text), dtype=np.int32)
        try:
            if text.isascii():
                points = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
            else:
                points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"text holds a lone surrogate (position {e.start}); it is not valid Unicode"
            ) from None
        ids = np.take(self.table, points, mode="clip")
        if int(ids.min()) < 0:
            return np.asarray(self.tokenizer.encode(text), dtype=np.int32)  # raises, or maps to UNK
        return ids


# --- from a name to a prepared directory ------------------------------------------------


def build_tokenizer(
    spec: str | Tokenizer,
    source: Source,
    *,
    mode: Mode,
    vocab_size: int | None = None,
    text_field: str = "text",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Tokenizer:
    """A tokenizer from a spec: a Tokenizer, a tokenizer.json path, `char`, or a kind to train.

    `char` is trained on the source (one streaming pass); other kinds go to
    `microgpt.tokenizers.train_tokenizer(kind, texts, vocab_size)`.
    """
    if isinstance(spec, Tokenizer):
        return spec
    path = Path(spec).expanduser()
    if spec.endswith(".json") or path.is_file():
        if not path.is_file():
            raise ValueError(f"no such tokenizer file: {spec}")
        return load_tokenizer(path)
    src = resolve(source, text_field=text_field, cache_dir=cache_dir)
    chunks = iter_chunks(src, mode=mode)
    head = []
    for chunk in chunks:  # up to the first visible text, so an empty source is named as such
        head.append(chunk.text)
        if not chunk.text.isspace():
            break
    else:
        raise ValueError(f"data source {src.label!r} is empty: it has no text to train a tokenizer on")
    texts = itertools.chain(head, (c.text for c in chunks))
    if spec == "char":
        return CharTokenizer.train(texts)
    return train_tokenizer(spec, texts, vocab_size)


def default_out_dir(cache_dir: str | os.PathLike[str], source: str, mode: Mode, tokenizer_label: str) -> Path:
    """`{cache}/prepared/{source}-{mode}-{tokenizer}`: one directory per choice, reused across runs.

    A path source is named by its stem and a hash of its absolute path, so two files
    called input.txt do not share a directory.
    """
    from microgpt.data.builtin import DATASETS

    if source in DATASETS:
        base = source
    else:
        resolved = os.path.abspath(os.path.expanduser(source))
        base = f"{Path(resolved).stem or 'data'}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"
    return Path(cache_dir) / "prepared" / f"{base}-{mode}-{tokenizer_label}"


def _tokenizer_label(spec: str | Tokenizer, tokenizer: Tokenizer, vocab_size: int | None) -> str:
    """`char`, `bpe4096` for a trained kind; `kind-hash8` for a given tokenizer or tokenizer.json."""
    given = isinstance(spec, Tokenizer) or spec.endswith(".json") or Path(spec).expanduser().is_file()
    if given:
        return f"{tokenizer.kind}-{tokenizer.content_hash[:8]}"
    return f"{spec}{vocab_size or ''}"


def prepare_dataset(
    source: str,
    *,
    cache_dir: str | os.PathLike[str],
    tokenizer: str | Tokenizer | None = None,
    vocab_size: int | None = None,
    mode: Mode | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = DEFAULT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    block_size: int | None = None,
    long_documents: LongDocuments = "truncate",
    text_field: str = "text",
    local_path: str | os.PathLike[str] | None = None,
    loss_on: LossOn = "all",
) -> tuple[Path, Manifest]:
    """What `microgpt data prepare` and the training loop share: name in, prepared directory out.

    A built-in's own mode and tokenizer are the defaults; other sources default to
    `stream` mode and the char tokenizer. The output defaults to `default_out_dir`.
    """
    from microgpt.data.builtin import DATASETS

    builtin = DATASETS.get(source)
    mode = mode or (builtin.mode if builtin else "stream")
    spec = tokenizer if tokenizer is not None else (builtin.tokenizer if builtin else "char")
    src = resolve(source, text_field=text_field, cache_dir=cache_dir, local_path=local_path)
    tok = build_tokenizer(spec, src, mode=mode, vocab_size=vocab_size)
    if out_dir is None:
        label = _tokenizer_label(spec, tok, vocab_size) + ("-assistant" if loss_on == "assistant" else "")
        out_dir = default_out_dir(cache_dir, source, mode, label)
    manifest = prepare(
        src,
        tok,
        out_dir,
        mode=mode,
        seed=seed,
        val_fraction=val_fraction,
        block_size=block_size,
        long_documents=long_documents,
        text_field=text_field,
        loss_on=loss_on,
    )
    return Path(out_dir), manifest
