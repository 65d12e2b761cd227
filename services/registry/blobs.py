"""Where the registry keeps artifact bytes: content-addressed blobs and upload temporaries.

A blob's key is `registry/blobs/sha256/<2 hex>/<64 hex>`, derived from its digest
alone, so identical files (a tokenizer shared by a hundred versions) are stored once
and no user string ever becomes part of a key. An upload streams into
`registry/tmp/<random>` while its sha256 is computed, and is moved under its digest only
once complete; a crash leaves at worst a temporary that `gc` removes.
"""

from __future__ import annotations

import secrets

from services.registry.schemas import check_sha256

PREFIX = "registry/"
BLOB_PREFIX = "registry/blobs/sha256/"
TMP_PREFIX = "registry/tmp/"


def blob_key(sha256: str) -> str:
    check_sha256(sha256)
    return f"{BLOB_PREFIX}{sha256[:2]}/{sha256}"


def sha_of_blob_key(key: str) -> str | None:
    """The digest a blob key names, or None if `key` is not a well-formed blob key."""
    if not key.startswith(BLOB_PREFIX):
        return None
    sha = key.rsplit("/", 1)[-1]
    try:
        return sha if blob_key(sha) == key else None
    except ValueError:
        return None


def tmp_key() -> str:
    return f"{TMP_PREFIX}{secrets.token_hex(16)}"
