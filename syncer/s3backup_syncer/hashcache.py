"""The hash cache: local ETags of files that have not changed, so unchanged files are never re-read.

An entry is keyed by the file's relative key and valid only while (size, mtime, ctime, inode)
are all unchanged; any difference is a miss. It lives in a SQLite file (on disk, not in memory,
whatever the number of files), kept between runs as a gzipped object under `PREFIX/.s3backup/`,
so it survives CronJob pods. A cache that cannot be read is discarded with a warning: the cost is
one re-hash, never a wrong answer.

Racy entries (git's "racy clean" rule). Timestamps have a granularity: a few milliseconds on local
Linux filesystems (the kernel's coarse clock), a second or two on NFS and SMB servers and FAT. A
same-size write that lands in the same tick as the one the stat showed, just after the file was
hashed, leaves (size, mtime, ctime, inode) as they were: the entry would vouch for the old content
for ever. So each entry records when its hashing could have begun (the cache's opening, before the
walk), and is trusted only if the file's mtime and ctime are both older than that by more than
`RACY_WINDOW_NS`. An untrusted entry is a miss: the file is hashed again, and the next run trusts
the new entry. What this assumes of the filesystem: every content change moves mtime or ctime to
the time of the write (ctime cannot be set by a user; `touch -r` and `rsync -t` move it), timestamps
are at most `RACY_WINDOW_NS` coarse, and the clock that stamps them (a file server's, on NFS or
SMB) is not behind this host's by more than the window less that granularity.
"""

from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

from .remote import STATE_DIR
from .scan import LocalFile
from .state_objects import fetch_state, store_state

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: `hashed_ns`, for the racy-entry rule
CACHE_NAME = "hash-cache.sqlite.gz"  # in a shard's own state folder (shards.Shard.state_dir)
CACHE_OBJECT = STATE_DIR + CACHE_NAME

#: An entry is trusted only if the file's mtime and ctime are older than its hashing by more than this.
#: 2 s: FAT's mtime granularity, and more than the 1 s of NFS and SMB servers with second timestamps.
RACY_WINDOW_NS = 2_000_000_000


def is_racy(mtime_ns: int, ctime_ns: int, hashed_ns: int) -> bool:
    """Whether a write after the hash could have left this (mtime, ctime) as it was: then never trust it."""
    return max(mtime_ns, ctime_ns) >= hashed_ns - RACY_WINDOW_NS


class HashCache:
    def __init__(self, path: Path, *, hashing_since_ns: int | None = None):
        """Open (or create) the cache at `path`.

        `hashing_since_ns` (default: now) must not be later than the first read of any file this run
        hashes: it is what the entries stored by this run are judged racy against.
        """
        self.path = path
        self.hashing_since_ns = time.time_ns() if hashing_since_ns is None else hashing_since_ns
        self._lock = threading.Lock()
        self.changed = False  # nothing to upload after a run that stored, dropped and migrated nothing
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (key TEXT PRIMARY KEY, size INT, mtime_ns INT, ctime_ns INT,"
            " inode INT, etags TEXT, seen INT, hashed_ns INT NOT NULL DEFAULT 0)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        version = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        if version is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif version[0] == "1":  # from before the racy rule: kept, but with hashed_ns 0 none is trusted
            self._db.execute("ALTER TABLE files ADD COLUMN hashed_ns INT NOT NULL DEFAULT 0")
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (str(SCHEMA_VERSION),))
            self.changed = True
        elif version[0] != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema {version[0]}, expected {SCHEMA_VERSION}")
        self._db.execute("UPDATE files SET seen = 0")
        self._db.execute("BEGIN")
        self._pending = 0
        self._seen: list[tuple[str]] = []  # keys found valid, marked in batches (see finish)
        self._queued: collections.deque[tuple[LocalFile, dict[int, str]]] = collections.deque()

    def lookup(self, f: LocalFile) -> dict[int, str] | None:
        """The cached ETags of `f` if its stat is unchanged and the entry is not racy; marks it as in use."""
        with self._lock:
            return self._entry(f)

    def store(self, f: LocalFile, etags: dict[int, str]) -> None:
        """Remember `etags` for this version of `f`, merged with what is known of the same version.

        Any thread may call this; the entry is queued and written by `write_queued` on the walking
        thread. Worker threads never touch SQLite: a lock held across SQLite calls, which release
        and retake the GIL, stalled all eight of them on small-file runs.
        """
        self._queued.append((f, etags))

    def write_queued(self, at_least: int = 1) -> None:
        """Write the queued entries, if there are at least `at_least` of them."""
        if len(self._queued) < at_least:
            return
        with self._lock:
            while self._queued:
                f, etags = self._queued.popleft()
                known = self._entry(f) or {}
                known.update(etags)
                self._db.execute(
                    "INSERT OR REPLACE INTO files (key, size, mtime_ns, ctime_ns, inode, etags, seen, hashed_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
                    (f.key, f.size, f.mtime_ns, f.ctime_ns, f.inode, json.dumps(known), self.hashing_since_ns),
                )
                self.changed = True
                self._tick()

    def _entry(self, f: LocalFile) -> dict[int, str] | None:
        row = self._db.execute(
            "SELECT size, mtime_ns, ctime_ns, inode, etags, hashed_ns FROM files WHERE key = ?", (f.key,)
        ).fetchone()
        if row is None or tuple(row[:4]) != (f.size, f.mtime_ns, f.ctime_ns, f.inode):
            return None
        if is_racy(f.mtime_ns, f.ctime_ns, row[5]):
            return None  # not marked seen: dropped at the end unless this run stores it again
        self._seen.append((f.key,))
        if len(self._seen) >= 1000:
            self._mark_seen()
        try:
            return {int(k): v for k, v in json.loads(row[4]).items()}
        except (ValueError, AttributeError):
            return None

    def _mark_seen(self) -> None:
        self._db.executemany("UPDATE files SET seen = 1 WHERE key = ?", self._seen)
        self._tick(len(self._seen))
        self._seen.clear()

    def _tick(self, count: int = 1) -> None:
        self._pending += count
        if self._pending >= 5000:
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")
            self._pending = 0

    def finish(self) -> bool:
        """Drop entries of files not seen in this run; returns whether the cache changed."""
        self.write_queued()
        with self._lock:
            self._mark_seen()
            if self._db.execute("DELETE FROM files WHERE seen = 0").rowcount:
                self.changed = True
            self._db.execute("COMMIT")
            if self.changed:
                self._db.execute("VACUUM")
            self._db.close()
        return self.changed


def load_remote_cache(client, bucket: str, prefix: str, workdir: Path,
                      object_key: str = CACHE_OBJECT) -> tuple[HashCache, str | None]:
    """Fetch the cache object (if any) into `workdir`; returns the cache and a warning, if any.

    `object_key` (relative to the prefix) differs for each shard (shards.Shard.state_dir)."""
    db_path = workdir / "hash-cache.sqlite"
    warning = None
    try:
        if fetch_state(client, bucket, prefix + object_key, db_path):
            return HashCache(db_path), None
    except Exception as exc:  # unreadable or corrupt: start empty, never trust a damaged one
        warning = f"hash cache unreadable, starting afresh (files will be re-hashed): {exc}"
    db_path.unlink(missing_ok=True)
    return HashCache(db_path), warning


def save_remote_cache(cache: HashCache, client, bucket: str, prefix: str, object_key: str = CACHE_OBJECT) -> bool:
    """Prune, compress and upload the cache, unless this run changed nothing in it."""
    if not cache.finish():
        return False
    store_state(client, bucket, prefix + object_key, cache.path)
    return True
