"""Our tokenizers as GGUF tokenizer metadata that llama.cpp tokenizes and detokenizes with.

Every kind we can express uses llama.cpp's `gpt2` tokenizer model (byte-level BPE, the
`gpt2` pre-tokenizer regex), whose tokens are spelled in GPT-2's 256 printable byte symbols:

- bytelevel-bpe: its vocabulary and merges as they are;
- byte: the 256 byte symbols as ids 0..255, no merges;
- char: each character spelled in byte symbols, with merges that join the bytes of a
  multi-byte character (llama.cpp looks up only the merged result, so the partial byte
  pairs need no ids of their own). The regex never splits inside a character, so every
  character becomes its one token, as in ours.

BOS, EOS, PAD and UNK are control (unknown) tokens with their ids; `add_bos_token` is set
when the tokenizer has a BOS, since microgpt starts every prompt with it, and there is no
space prefix. Ids past the tokenizer's vocabulary (a model may be wider) are unused tokens.
The bpe, wordpiece and unigram kinds (Metaspace or BERT pre-tokenizers) have no llama.cpp
counterpart that gives the same ids, and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from microgpt.export.hf_tokenizer import byte_symbols
from microgpt.tokenizers import ByteLevelBPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer
from microgpt.tokenizers.byte import SPECIAL_TOKENS

# llama.cpp's token types (gguf.TokenType): normal, unknown, control, unused.
NORMAL, UNKNOWN, CONTROL, UNUSED = 1, 2, 3, 5


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)  # role (bos, eos, pad, unk) -> id


def gguf_vocab(tok: Tokenizer, vocab_size: int) -> Vocab:
    """The llama.cpp vocabulary for `tok`, padded with unused tokens to the model's `vocab_size`."""
    symbols = byte_symbols()

    def spell(text: str) -> str:
        return "".join(symbols[b] for b in text.encode("utf-8"))

    if isinstance(tok, ByteLevelBPETokenizer):
        data = tok.to_json()
        by_id = {i: t for t, i in data["model"]["vocab"].items()}
        special = {a["id"]: a["content"] for a in data["added_tokens"]}
        tokens = [special.get(i, by_id.get(i, "")) for i in range(tok.vocab_size)]
        types = [CONTROL if i in special else NORMAL for i in range(tok.vocab_size)]
        merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    elif isinstance(tok, ByteTokenizer):
        tokens = [*symbols, *SPECIAL_TOKENS.values()]
        types = [NORMAL] * len(symbols) + [CONTROL] * len(SPECIAL_TOKENS)
        merges = []
    elif isinstance(tok, CharTokenizer):
        tokens = [spell(ch) for ch in tok.chars] + [tok.bos_token]
        types = [NORMAL] * len(tok.chars) + [CONTROL]
        if tok.unk_token is not None:
            tokens.append(tok.unk_token)
            types.append(UNKNOWN)
        merges = []
        for ch in tok.chars:
            pieces = [symbols[b] for b in ch.encode("utf-8")]
            for end in range(2, len(pieces) + 1):
                merges.append(f"{''.join(pieces[: end - 1])} {pieces[end - 1]}")
    else:
        raise ValueError(
            f"the {tok.kind} tokenizer has no llama.cpp counterpart that gives the same ids; "
            f"GGUF exports take char, byte and bytelevel-bpe tokenizers"
        )
    for i in range(len(tokens), vocab_size):
        tokens.append(f"<|unused_{i}|>")
        types.append(UNUSED)
    if not merges:
        # llama.cpp refuses a gpt2 vocabulary without a merges key, and the gguf writer leaves an
        # empty list out: a merge of two control tokens, which no text forms, stands in for none.
        control = tokens[types.index(CONTROL)]
        merges = [f"{control} {control}"]
    roles = {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id, "unk": tok.unk_id}
    return Vocab(tokens, types, merges, {role: i for role, i in roles.items() if i is not None})
