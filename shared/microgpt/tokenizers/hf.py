"""Tokenizers trained with the Hugging Face `tokenizers` library: bpe, bytelevel-bpe, wordpiece, unigram.

Each kind is a recipe (normalizer, pre-tokenizer, model, trainer, decoder) trained
from an iterator of text by the library's Rust trainers, and saved as the standard
tokenizer.json, which `tokenizers.Tokenizer.from_file` and
`transformers.PreTrainedTokenizerFast(tokenizer_file=...)` load and use with the same
ids. That file has no `"kind"` field: the library refuses top-level keys it does not
know (0.23 does), so the kind is read from the structure instead, `(model type,
pre-tokenizer type)`, which differs for every kind (see `hf_kind`).

What each kind is, and what `decode(encode(s))` gives back:

- bytelevel-bpe: GPT-2's tokenizer (its split regex, bytes shown as 256 printable
  characters, BPE merges); no UNK. Gives s, for every str UTF-8 can encode.
- bpe: BPE over characters; a space becomes "▁" and starts the next piece
  (Metaspace, no dummy prefix); UNK. Gives s when every character of s was in the
  training text, except that a literal "▁" (U+2581) comes back as a space; an
  unseen character comes back as "<unk>".
- wordpiece: BERT's tokenizer, cased (BertNormalizer without lowercasing or accent
  stripping, split on whitespace and punctuation, "##" continuations); UNK. Gives
  s up to spacing: whitespace runs become one space (none at the ends), control
  characters go, punctuation other than . , ! ? gets spaces around it ("a-b" reads
  "a - b"), CJK characters are spaced, and a word with an unseen character is one
  "<unk>".
- unigram: SentencePiece's unigram language model, Viterbi-segmented, with "▁"
  prefixed to the text and standing for spaces; UNK. Gives s as bpe does, except
  that a leading space is dropped. Unlike spm's default there is no NFKC or
  whitespace folding, so nothing else is lost.

Ids: the model's vocabulary first (with <unk> at 0 where the kind has one), then
BOS, EOS and PAD (`<|bos|>`, `<|eos|>`, `<|pad|>`) as the last three ids, like the
byte kind's layout. BOS, EOS, PAD and <unk> are registered special tokens, and this
wrapper sets the library's `encode_special_tokens`, so text that spells `<|bos|>` is
encoded as text. That flag is not part of tokenizer.json: plain `tokenizers` and
`transformers` loaders turn such text into the special id unless given
`encode_special_tokens = True` / `split_special_tokens=True`. On other text every
loader gives the same ids. No post-processor is set, so HF's `encode(s)` adds no
BOS/EOS, matching ours.

Training is deterministic for bpe and bytelevel-bpe; the wordpiece and unigram
trainers iterate Rust hash maps, so two runs on the same text can differ in ids
(and so in content hash). `encode_batch` runs in Rust on all cores; see
`_quiet_fork` for what happens to that thread pool when the process forks.

    tok = ByteLevelBPETokenizer.train(open("corpus.txt"), vocab_size=4096)
    tok.save("tokenizer.json")
    tokenizers.Tokenizer.from_file("tokenizer.json").encode("hi").ids == tok.encode("hi")
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend

from microgpt.tokenizers.base import Tokenizer, atomic_write_bytes, canonical_json
from microgpt.tokenizers.byte import BYTE_VALUES, utf8

CONTROL_TOKENS = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"}  # the last three ids, in this order
UNK_TOKEN = "<unk>"
# Every field `Tokenizer.to_str()` writes; a JSON object without one is not a full tokenizer.json.
HF_FIELDS = (
    "version",
    "truncation",
    "padding",
    "added_tokens",
    "normalizer",
    "pre_tokenizer",
    "post_processor",
    "decoder",
    "model",
)


def hf_kind(data: Mapping[str, Any]) -> str | None:
    """The microgpt kind a Hugging Face tokenizer.json is laid out as, or None.

    Read from `(model.type, pre_tokenizer.type)`, which `train` sets differently per kind.
    """
    if not isinstance(data, Mapping) or any(field not in data for field in HF_FIELDS):
        return None
    model, pre = data["model"], data["pre_tokenizer"]
    signature = (
        model.get("type") if isinstance(model, Mapping) else None,
        pre.get("type") if isinstance(pre, Mapping) else None,
    )
    for cls in HF_TOKENIZERS:
        if cls.signature == signature:
            return cls.kind
    return None


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` behind microgpt's interface. Subclasses are the kinds' recipes."""

    signature: ClassVar[tuple[str, str]]  # (model type, pre-tokenizer type) in tokenizer.json
    has_unk: ClassVar[bool] = True

    def __init__(self, backend: Backend) -> None:
        """Wrap a trained backend (treat it as read-only afterwards: the JSON is cached)."""
        self._text = backend.to_str()
        data = json.loads(self._text)
        found = hf_kind(data)
        if found != self.kind:
            raise ValueError(
                f"this tokenizer.json is laid out as {found or 'no microgpt kind'}, not {self.kind}"
            )
        specials = {t["content"]: t["id"] for t in data["added_tokens"] if t.get("special")}
        roles = dict(CONTROL_TOKENS, **({"unk": UNK_TOKEN} if self.has_unk else {}))
        missing = [token for token in roles.values() if token not in specials]
        if missing:
            raise ValueError(
                f"{self.kind} tokenizer.json lacks the special tokens {missing}; microgpt's "
                f"kinds always register {list(roles.values())}"
            )
        self._ids = {role: specials[token] for role, token in roles.items()}
        if self.has_unk and self._model_unk(data["model"]) != UNK_TOKEN:
            raise ValueError(f"{self.kind} tokenizer.json: the model's unknown token is not {UNK_TOKEN!r}")
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)
        if sorted(backend.get_vocab(with_added_tokens=True).values()) != list(range(self._vocab_size)):
            raise ValueError(f"{self.kind} tokenizer.json: ids are not 0..{self._vocab_size - 1}")
        self._control = frozenset(self._ids[role] for role in CONTROL_TOKENS)
        self._hash: str | None = None
        backend.encode_special_tokens = True  # "<|bos|>" in text is text
        self.backend = backend

    @staticmethod
    def _model_unk(model: Mapping[str, Any]) -> str | None:
        return model.get("unk_token")

    # --- training -------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def pipeline(cls) -> Backend:
        """An untrained tokenizer with this kind's normalizer, pre-tokenizer, model and decoder."""

    @classmethod
    @abstractmethod
    def trainer(cls, vocab_size: int, special_tokens: list[str]) -> trainers.Trainer:
        """This kind's trainer for a model of `vocab_size` ids, `special_tokens` among them."""

    @classmethod
    def settle(cls, data: dict[str, Any]) -> dict[str, Any]:
        """`data` made to survive save and load unchanged (a no-op unless the kind stores floats)."""
        return data

    @classmethod
    def min_vocab_size(cls) -> int:
        """The fewest ids this kind can have: BOS, EOS, PAD, UNK and one character."""
        return len(CONTROL_TOKENS) + cls.has_unk + 1

    @classmethod
    def train(cls, texts: Iterable[str], *, vocab_size: int) -> HFTokenizer:
        """Train on `texts` (documents or lines, read once) to at most `vocab_size` ids, specials included.

        A small corpus can give fewer ids than asked (nothing left to merge); a
        `vocab_size` below what the kind must hold (its alphabet and specials) is
        a ValueError saying how many it needs.
        """
        floor = cls.min_vocab_size()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < floor:
            raise ValueError(
                f"vocab_size for the {cls.kind} kind must be an int >= {floor}, got {vocab_size!r}"
            )
        backend = cls.pipeline()
        model_specials = [UNK_TOKEN] if cls.has_unk else []
        trainer = cls.trainer(vocab_size - len(CONTROL_TOKENS), model_specials)
        stream = _TextStream(texts)
        _quiet_fork()
        try:
            backend.train_from_iterator(stream, trainer=trainer)
        except ValueError:  # ours, from _TextStream, passed through by the library
            raise
        except Exception as e:  # the library raises plain Exception
            if "not large enough to contain all chars" in str(e):  # the unigram trainer's refusal
                raise ValueError(
                    f"vocab_size {vocab_size} is too small for the {cls.kind} kind on this text: "
                    f"each of its distinct characters needs an id; ask for more"
                ) from None
            raise ValueError(f"training the {cls.kind} tokenizer failed: {e}") from e
        if stream.chars == 0:
            raise ValueError(f"cannot train a {cls.kind} tokenizer on empty text")
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS.values()]
        )
        got = backend.get_vocab_size(with_added_tokens=True)
        if got > vocab_size:
            raise ValueError(
                f"vocab_size {vocab_size} is too small for the {cls.kind} kind on this text: its "
                f"alphabet (each distinct character) and {len(CONTROL_TOKENS) + cls.has_unk} special "
                f"tokens already take {got} ids; ask for more"
            )
        return cls.from_json(json.loads(backend.to_str()))  # exactly what a loader of the file gets

    # --- vocabulary -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def unk_id(self) -> int | None:
        return self._ids.get("unk")

    # --- text <-> ids -----------------------------------------------------------------

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        try:
            ids = self.backend.encode(text, add_special_tokens=False).ids
        except TypeError:
            raise ValueError(_why_not_text(text, "text")) from None
        return self._wrap(ids, add_bos=add_bos, add_eos=add_eos)

    def encode_batch(
        self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """`encode` of each text, in parallel in Rust (no offsets are computed)."""
        texts = texts if isinstance(texts, list) else list(texts)
        _quiet_fork()
        try:
            encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False)
        except TypeError:
            bad = next((i for i, t in enumerate(texts) if not _is_encodable(t)), None)
            if bad is None:
                raise
            raise ValueError(_why_not_text(texts[bad], f"texts[{bad}]")) from None
        if not (add_bos or add_eos):
            return [e.ids for e in encodings]
        return [self._wrap(e.ids, add_bos=add_bos, add_eos=add_eos) for e in encodings]

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of `ids`; BOS/EOS/PAD are dropped unless skip_special=False, UNK reads as `<unk>`."""
        ids = [int(i) for i in ids]
        n = self._vocab_size
        for pos, i in enumerate(ids):
            if not 0 <= i < n:
                raise ValueError(f"id {i} at position {pos} is outside the vocabulary (size {n})")
        if skip_special:
            ids = [i for i in ids if i not in self._control]
        return self.backend.decode(ids, skip_special_tokens=False)

    # --- serialisation ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The standard tokenizer.json object (no "kind" field; `hf_kind` reads it from the layout)."""
        return json.loads(self._text)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HFTokenizer:
        # A "kind" key is tolerated (and dropped) for callers that add one; the library refuses it.
        if data.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"expected kind {cls.kind!r}, got {data.get('kind')!r}")
        body = cls.settle({k: v for k, v in data.items() if k != "kind"})
        try:
            backend = Backend.from_str(json.dumps(body))
        except Exception as e:
            raise ValueError(f"not a valid Hugging Face tokenizer.json: {e}") from None
        return cls(backend)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the library's own pretty tokenizer.json, atomically."""
        return atomic_write_bytes(path, self.backend.to_str(pretty=True).encode("utf-8") + b"\n")

    def __getstate__(self) -> dict[str, str]:
        # The library pickles through tokenizer.json, which drops `encode_special_tokens`;
        # rebuilding through __init__ sets it again (multiprocessing and DataLoader workers pickle).
        return {"tokenizer.json": self._text}

    def __setstate__(self, state: dict[str, str]) -> None:
        HFTokenizer.__init__(self, Backend.from_str(state["tokenizer.json"]))

    @property
    def content_hash(self) -> str:
        if self._hash is None:  # the vocabulary is fixed once built, and hashing 50k entries is not free
            self._hash = hashlib.sha256(canonical_json(self.to_json())).hexdigest()
        return self._hash


class ByteLevelBPETokenizer(HFTokenizer):
    """GPT-2's tokenizer: the GPT-2 split regex, bytes shown as 256 printable characters, BPE merges."""

    kind = "bytelevel-bpe"
    signature = ("BPE", "ByteLevel")
    has_unk = False

    @classmethod
    def pipeline(cls) -> Backend:
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        return backend

    @classmethod
    def trainer(cls, vocab_size: int, special_tokens: list[str]) -> trainers.Trainer:
        return trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
            show_progress=False,
        )

    @classmethod
    def min_vocab_size(cls) -> int:
        return BYTE_VALUES + len(CONTROL_TOKENS)


class BPETokenizer(HFTokenizer):
    """BPE over characters; a space becomes "▁" and starts the next piece, so spacing survives."""

    kind = "bpe"
    signature = ("BPE", "Metaspace")

    @classmethod
    def pipeline(cls) -> Backend:
        backend = Backend(models.BPE(unk_token=UNK_TOKEN))
        # prepend_scheme="never": no dummy "▁" before the text, so a leading space is kept too
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
        backend.decoder = decoders.Metaspace(prepend_scheme="never")
        return backend

    @classmethod
    def trainer(cls, vocab_size: int, special_tokens: list[str]) -> trainers.Trainer:
        return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False)


class WordPieceTokenizer(HFTokenizer):
    """BERT's tokenizer, cased: split on whitespace and punctuation, greedy longest-match pieces."""

    kind = "wordpiece"
    signature = ("WordPiece", "BertPreTokenizer")

    @classmethod
    def pipeline(cls) -> Backend:
        backend = Backend(models.WordPiece(unk_token=UNK_TOKEN))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        return backend

    @classmethod
    def trainer(cls, vocab_size: int, special_tokens: list[str]) -> trainers.Trainer:
        return trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False
        )


class UnigramTokenizer(HFTokenizer):
    """SentencePiece's unigram language model over "▁"-marked text, Viterbi-segmented."""

    kind = "unigram"
    signature = ("Unigram", "Metaspace")

    @classmethod
    def pipeline(cls) -> Backend:
        backend = Backend(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
        backend.decoder = decoders.Metaspace(prepend_scheme="always")
        return backend

    @classmethod
    def trainer(cls, vocab_size: int, special_tokens: list[str]) -> trainers.Trainer:
        # BOS/EOS/PAD are added after training, outside the model: a Unigram piece is a
        # candidate in every segmentation, so a piece "<|bos|>" would match that text.
        return trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=special_tokens, unk_token=UNK_TOKEN, show_progress=False
        )

    @classmethod
    def settle(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Scores rounded to 15 significant digits, so every reader parses them to the same float.

        The library's JSON reader parses a float of 16-17 digits to within an ulp, not
        exactly, so a trained model and the same model loaded from its file would differ
        in the last bit of some scores (and in content hash). 15 digits parse exactly.
        """
        model = data.get("model")
        if isinstance(model, dict) and isinstance(model.get("vocab"), list):
            vocab = [
                [e[0], float(f"{e[1]:.15g}")]
                if isinstance(e, list) and len(e) == 2 and isinstance(e[1], float)
                else e
                for e in model["vocab"]
            ]
            data = {**data, "model": {**model, "vocab": vocab}}
        return data

    @staticmethod
    def _model_unk(model: Mapping[str, Any]) -> str | None:
        unk, vocab = model.get("unk_id"), model.get("vocab") or []
        return vocab[unk][0] if isinstance(unk, int) and 0 <= unk < len(vocab) else None


HF_TOKENIZERS: tuple[type[HFTokenizer], ...] = (
    ByteLevelBPETokenizer,
    BPETokenizer,
    WordPieceTokenizer,
    UnigramTokenizer,
)


class _TextStream:
    """Yields the training texts, counting characters and refusing what is not UTF-8 text."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts, self.chars = texts, 0

    def __iter__(self) -> Iterator[str]:
        for i, text in enumerate(self.texts):
            if not _is_encodable(text):
                raise ValueError(_why_not_text(text, f"training text {i}"))
            self.chars += len(text)
            yield text


def _is_encodable(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _why_not_text(text: object, name: str) -> str:
    if not isinstance(text, str):
        return f"{name} is a {type(text).__name__}, not a str"
    try:
        utf8(text)
    except ValueError as e:
        return f"{name}: {e}"
    return f"{name} could not be encoded"


# --- the Rust thread pool and fork ------------------------------------------------------

_PARALLELISM = "TOKENIZERS_PARALLELISM"
_fork_hook_installed = False
_set_for_fork = False


def _quiet_fork() -> None:
    """Make forks after parallel encoding run single-threaded in the child, without a warning.

    The library's thread pool does not survive fork(), so when a process that has
    used it forks (a DataLoader worker, multiprocessing's "fork" start method), the
    library disables it in the child and prints a warning per child unless
    TOKENIZERS_PARALLELISM is set. These hooks set it to "false" around each fork and
    unset it again in the parent, so the child inherits "false": the same safe
    behaviour, quietly. A value the user set is left alone. Installed on first
    parallel use, not at import.
    """
    global _fork_hook_installed
    if _fork_hook_installed or not hasattr(os, "register_at_fork"):
        return
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
    _fork_hook_installed = True


def _before_fork() -> None:
    global _set_for_fork
    if _PARALLELISM not in os.environ:
        os.environ[_PARALLELISM] = "false"
        _set_for_fork = True


def _after_fork_in_parent() -> None:
    global _set_for_fork
    if _set_for_fork:
        os.environ.pop(_PARALLELISM, None)
        _set_for_fork = False


def _after_fork_in_child() -> None:
    global _set_for_fork
    _set_for_fork = False  # the child keeps "false": its copy of the pool is unusable
