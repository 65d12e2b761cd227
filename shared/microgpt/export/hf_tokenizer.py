"""Our tokenizers as the tokenizer.json and tokenizer_config.json that transformers loads.

`AutoTokenizer.from_pretrained(dir)` then gives the same ids as ours for the same text:

- char: a WordLevel model over the characters, a pre-tokenizer that splits every
  character off, and a Fuse decoder (pieces joined without spaces);
- byte: a BPE model without merges over GPT-2's 256 byte symbols (ByteLevel
  pre-tokenizer without its split regex, ByteLevel decoder), so every byte is its id;
- bpe, bytelevel-bpe, wordpiece, unigram: their own tokenizer.json already is one.

BOS, EOS, PAD and UNK keep their ids as special tokens. Where the tokenizer has a BOS, a
post-processor puts it in front of every encoding, as microgpt does for prompts
(`microgpt.textgen`), so a prompt given to transformers' `generate` starts the same way.
"""

from __future__ import annotations

import json
from typing import Any

from microgpt.tokenizers import ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer
from microgpt.tokenizers.byte import SPECIAL_TOKENS


def hf_tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """The tokenizer.json a `tokenizers.Tokenizer` (and so transformers) loads for `tok`."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as Backend

    if isinstance(tok, HFTokenizer):
        data = tok.to_json()
    else:
        if isinstance(tok, CharTokenizer):
            vocab = {ch: i for i, ch in enumerate(tok.chars)}
            specials = {tok.bos_token: tok.bos_id}
            if tok.unk_token is not None and tok.unk_id is not None:
                specials[tok.unk_token] = tok.unk_id
            backend = Backend(
                models.WordLevel({**vocab, **specials}, unk_token=tok.unk_token or tok.bos_token)
            )
            backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
            backend.decoder = decoders.Fuse()
        elif isinstance(tok, ByteTokenizer):
            vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
            specials = {token: tok.special_ids[role] for role, token in SPECIAL_TOKENS.items()}
            backend = Backend(models.BPE(vocab, merges=[]))
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
            backend.decoder = decoders.ByteLevel()
        else:
            raise ValueError(f"the {tok.kind} tokenizer has no Hugging Face form")
        data = json.loads(backend.to_str())
        data["added_tokens"] = [
            _added(token, i) for token, i in sorted(specials.items(), key=lambda kv: kv[1])
        ]
    if tok.bos_id is not None:
        bos = _token_of(data, tok.bos_id)
        processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_id)]
        )
        data["post_processor"] = json.loads(processor.__getstate__())
    return data


def hf_tokenizer_config(tok: Tokenizer, data: dict[str, Any], max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: the fast tokenizer class and which special token plays which role."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": tok.bos_id is not None,
    }
    for role in ("bos", "eos", "pad", "unk"):
        i = getattr(tok, f"{role}_id")
        if i is not None:
            config[f"{role}_token"] = _token_of(data, i)
    return config


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the bytes 0..255, in byte order (its bytes_to_unicode)."""
    from gguf import bytes_to_unicode

    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def _added(token: str, i: int) -> dict[str, Any]:
    return {
        "id": i,
        "content": token,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _token_of(data: dict[str, Any], i: int) -> str:
    for added in data["added_tokens"]:
        if added["id"] == i:
            return str(added["content"])
    raise ValueError(f"tokenizer.json has no special token with id {i}")
