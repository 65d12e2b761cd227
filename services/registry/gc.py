"""Garbage collection: fail abandoned uploads, then delete blobs no live version references.

A blob is live while a `ready` or `pending` version lists it. Anything else under
`registry/` older than the grace period goes: blobs of deleted or failed versions,
upload temporaries and half-written files a crash left behind. The grace period
protects uploads in flight: their temporaries and freshly moved blobs are newer, and a
pending version counts as abandoned only when it has not been touched for that long.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from microgpt.storage import ObjectStore
from services.registry.blobs import PREFIX, TMP_PREFIX, sha_of_blob_key
from services.registry.repository import Repository
from services.registry.schemas import GcReport


def collect_garbage(repo: Repository, store: ObjectStore, *, grace_s: float) -> GcReport:
    cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
    failed = repo.fail_stale_pending(cutoff)
    live = repo.live_blobs()  # read after failing the stale ones, before listing the store
    deleted = deleted_bytes = deleted_temp = kept = 0
    for obj in store.list(PREFIX):
        sha = sha_of_blob_key(obj.key)
        if sha is not None and sha in live:
            kept += 1
            continue
        if obj.modified >= cutoff:
            kept += 1
            continue
        store.delete(obj.key)
        if obj.key.startswith(TMP_PREFIX) or sha is None:
            deleted_temp += 1
        else:
            deleted += 1
            deleted_bytes += obj.size
    deleted_temp += store.remove_stale_partials(grace_s)
    return GcReport(
        failed_versions=failed,
        deleted_blobs=deleted,
        deleted_bytes=deleted_bytes,
        deleted_temp=deleted_temp,
        kept_blobs=kept,
    )
