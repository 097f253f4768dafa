"""The prefix as it was at a point in time, from ListObjectVersions (I/O; the choice is `version_as_of`).

Every version and delete marker under the prefix is spooled to an on-disk SQLite index, then read
back key by key in UTF-8 byte order; only one key's versions are in memory at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path

from .remote import STATE_DIR, RemoteObject
from .restore_plan import ObjectVersion, version_as_of


@dataclass(frozen=True, slots=True)
class RemoteVersion(RemoteObject):
    """A listed object that is one version of its key."""

    version_id: str = ""


def bucket_is_versioned(client, bucket: str) -> bool:
    """Whether the bucket keeps old versions (versioning enabled now, or suspended after it was)."""
    return client.get_bucket_versioning(Bucket=bucket).get("Status") in ("Enabled", "Suspended")


def versions_as_of(client, bucket: str, prefix: str, as_of: datetime, index_path: Path) -> Iterator[RemoteVersion]:
    """The objects under `prefix` that were current at `as_of`, in key order."""
    db = sqlite3.connect(index_path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE versions (key TEXT, seq INT, id TEXT, modified REAL, latest INT, deleted INT,"
                   " size INT, etag TEXT)")
        db.execute("BEGIN")
        seq = 0
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            rows = []
            for item, deleted in [*((v, 0) for v in page.get("Versions", [])),
                                  *((d, 1) for d in page.get("DeleteMarkers", []))]:
                key = item["Key"][len(prefix):]
                if not key or key.startswith(STATE_DIR):
                    continue
                seq += 1
                rows.append((key, seq, item.get("VersionId") or "null", item["LastModified"].timestamp(),
                             int(bool(item.get("IsLatest"))), deleted, item.get("Size", 0),
                             item.get("ETag", "").strip('"')))
            db.executemany("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        db.execute("CREATE INDEX by_key ON versions (key, seq)")
        cursor = db.execute("SELECT key, id, modified, latest, deleted, size, etag FROM versions ORDER BY key, seq")
        for key, rows in groupby(cursor, key=lambda row: row[0]):
            versions = [
                ObjectVersion(key, vid, datetime.fromtimestamp(modified, UTC), bool(latest), bool(deleted), size, etag)
                for _, vid, modified, latest, deleted, size, etag in rows
            ]
            chosen = version_as_of(versions, as_of)
            if chosen is not None:
                yield RemoteVersion(key, chosen.size, chosen.etag, chosen.last_modified, chosen.version_id)
    finally:
        db.close()
