"""The hash cache: local ETags of files that have not changed, so unchanged files are never re-read.

An entry is keyed by the file's relative key and valid only while (size, mtime, ctime, inode)
are all unchanged; any difference is a miss, never a wrong skip. It lives in a SQLite file
(on disk, not in memory, whatever the number of files), kept between runs as a gzipped
object under `PREFIX/.s3backup/`, so it survives CronJob pods. A cache that cannot be read
is discarded with a warning: the cost is one re-hash, never a wrong answer.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import sqlite3
import threading
from pathlib import Path

from .remote import STATE_DIR
from .scan import LocalFile

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CACHE_OBJECT = STATE_DIR + "hash-cache.sqlite.gz"


class HashCache:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (key TEXT PRIMARY KEY, size INT, mtime_ns INT, ctime_ns INT,"
            " inode INT, etags TEXT, seen INT)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        version = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        if version is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif version[0] != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema {version[0]}, expected {SCHEMA_VERSION}")
        self._db.execute("UPDATE files SET seen = 0")
        self._db.execute("BEGIN")
        self._pending = 0
        self.changed = False  # nothing to upload after a run that stored nothing and dropped nothing

    def lookup(self, f: LocalFile) -> dict[int, str] | None:
        """The cached ETags of `f` if its stat is unchanged; marks the entry as still in use."""
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, inode, etags FROM files WHERE key = ?", (f.key,)
            ).fetchone()
            if row is None or tuple(row[:4]) != (f.size, f.mtime_ns, f.ctime_ns, f.inode):
                return None
            self._db.execute("UPDATE files SET seen = 1 WHERE key = ?", (f.key,))
            self._tick()
        try:
            return {int(k): v for k, v in json.loads(row[4]).items()}
        except (ValueError, AttributeError):
            return None

    def store(self, f: LocalFile, etags: dict[int, str]) -> None:
        """Remember `etags` for this version of `f`, merged with what is known of the same version."""
        known = self.lookup(f) or {}
        known.update(etags)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, 1)",
                (f.key, f.size, f.mtime_ns, f.ctime_ns, f.inode, json.dumps(known)),
            )
            self.changed = True
            self._tick()

    def _tick(self) -> None:
        self._pending += 1
        if self._pending >= 5000:
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")
            self._pending = 0

    def finish(self) -> bool:
        """Drop entries of files not seen in this run; returns whether the cache changed."""
        with self._lock:
            if self._db.execute("DELETE FROM files WHERE seen = 0").rowcount:
                self.changed = True
            self._db.execute("COMMIT")
            if self.changed:
                self._db.execute("VACUUM")
            self._db.close()
        return self.changed


def load_remote_cache(client, bucket: str, prefix: str, workdir: Path) -> tuple[HashCache, str | None]:
    """Fetch the cache object (if any) into `workdir`; returns the cache and a warning, if any."""
    db_path = workdir / "hash-cache.sqlite"
    packed = workdir / "hash-cache.sqlite.gz"
    warning = None
    try:
        client.download_file(bucket, prefix + CACHE_OBJECT, str(packed))
        with gzip.open(packed, "rb") as source, open(db_path, "wb") as target:
            shutil.copyfileobj(source, target, 1024 * 1024)
        packed.unlink()
        return HashCache(db_path), None
    except Exception as exc:  # missing, unreadable or corrupt: start empty, never trust a damaged one
        missing = getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey")
        if not missing:
            warning = f"hash cache unreadable, starting afresh (files will be re-hashed): {exc}"
    for stale in (db_path, packed):
        stale.unlink(missing_ok=True)
    return HashCache(db_path), warning


def save_remote_cache(cache: HashCache, client, bucket: str, prefix: str) -> bool:
    """Prune, compress and upload the cache, unless this run changed nothing in it."""
    if not cache.finish():
        return False
    packed = cache.path.with_suffix(".sqlite.gz")
    with open(cache.path, "rb") as source, gzip.open(packed, "wb", compresslevel=6) as target:
        shutil.copyfileobj(source, target, 1024 * 1024)
    client.upload_file(str(packed), bucket, prefix + CACHE_OBJECT)
    return True
