"""How well a tokenizer fits text: bytes per token and unknown-token rate on held-out documents.

`holdout_split` decides by a hash of each document's text, not by position, so the
split is the same in every process and for any order of the documents, and a
duplicated document never lands on both sides. `microgpt tokenizer train` and
`microgpt tokenizer stats` use it with the same fraction, so stats measure text the
tokenizer did not see.

    train, held = holdout_split(docs, 0.1)
    print(measure(train_tokenizer("bpe", train, 4096), held).bytes_per_token)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from microgpt.tokenizers.base import Tokenizer
from microgpt.tokenizers.char import CharTokenizer


def holdout_split(docs: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """(kept, held out): each document is held out with probability `fraction`, decided by its hash."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1], got {fraction}")
    threshold = int(fraction * 2**64)
    kept: list[str] = []
    held: list[str] = []
    for doc in docs:
        digest = hashlib.blake2b(doc.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        (held if int.from_bytes(digest, "big") < threshold else kept).append(doc)
    return kept, held


@dataclass(frozen=True)
class TokenizerStats:
    kind: str
    vocab_size: int
    documents: int
    bytes: int  # UTF-8 bytes of the documents
    tokens: int  # without BOS/EOS
    unknown: int  # tokens that are UNK (for a char tokenizer without one: characters it lacks)

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else 0.0

    @property
    def unknown_rate(self) -> float:
        return self.unknown / self.tokens if self.tokens else 0.0


def measure(tokenizer: Tokenizer, texts: Sequence[str]) -> TokenizerStats:
    """Encode `texts` (in one parallel batch where the kind has one) and count."""
    encoder = tokenizer
    if isinstance(tokenizer, CharTokenizer) and tokenizer.unk_id is None:
        # count unseen characters, where encode would stop at the first one
        encoder = CharTokenizer(tokenizer.chars, bos=tokenizer.bos_token, unk="<unk>")
    ids = encoder.encode_batch(texts)
    unk = encoder.unk_id
    return TokenizerStats(
        kind=tokenizer.kind,
        vocab_size=tokenizer.vocab_size,
        documents=len(texts),
        bytes=sum(len(t.encode("utf-8")) for t in texts),
        tokens=sum(map(len, ids)),
        unknown=0 if unk is None else sum(row.count(unk) for row in ids),
    )
