"""File attributes recorded in s3backup's own state, so that an unchanged object is never rewritten.

An uploaded object carries the file's mtime and mode in its metadata (`s3backup-mtime`,
`s3backup-mode`). When the content is already right but the attributes are not (a `touch`, a
`chmod`, a rewrite with the same bytes, a prefix filled by another tool), the object stays as it
is: rewriting it, even with a server-side copy, would add a full-size version on a versioned or
Object-Lock bucket. The file's attributes are recorded here instead, keyed by the object's key
and ETag, and a restore applies them over the metadata. A row whose ETag is no longer the
object's is ignored by readers, so an object replaced by anyone else never inherits attributes.

A row also holds the content's ETag where the object's own is no checksum (SSE-KMS, DSSE-KMS,
SSE-C) and its metadata cannot carry one: a multipart upload, whose ETag is known only after
its last part. Restore, verify and the sync then check such an object by content, not size.
The column came later (schema 1 still): readers of a state without it find no content ETags.

The state is a SQLite file (on disk, whatever the number of files), kept between runs as the
gzipped object `PREFIX/.s3backup/attributes.sqlite.gz`, or a shard's under
`PREFIX/.s3backup/shards/N/I/` (shards.py). Rows are removed when this run uploads or recycles
their key (an upload that needs a content ETag replaces its row). A shard records only its own
keys; readers take the union of all states.

Readers: `open_recorded_attributes(client, bucket, prefix)`, which reads every shard's state too.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from .remote import STATE_DIR
from .state_objects import fetch_state, store_state

log = logging.getLogger(__name__)

ATTRIBUTES_NAME = "attributes.sqlite.gz"  # in a shard's own state folder (shards.Shard.state_dir)
ATTRIBUTES_OBJECT = STATE_DIR + ATTRIBUTES_NAME
SCHEMA_VERSION = "1"
META_MTIME = "s3backup-mtime"  # object metadata: the file's mtime in nanoseconds, at upload
META_MODE = "s3backup-mode"  # object metadata: the file's permission bits (octal), at upload


class RecordedAttributes(NamedTuple):
    mtime_ns: int
    mode: int | None  # permission bits; None when not known
    content_etag: str | None = None  # the content's ETag (`md5-N`) where the object's is no checksum


def content_etag_of(recorded: RecordedAttributes | None) -> str | None:
    """The content's ETag in a lookup's answer (None: no row, or a row without one)."""
    return recorded.content_etag if recorded is not None else None


class _Table:
    """The SQLite table; one connection, used from one thread at a time (callers hold the lock)."""

    def __init__(self, path: Path, *, read_only: bool = False):
        uri = f"file:{path}?mode=ro" if read_only else str(path)
        self.db = sqlite3.connect(uri, uri=read_only, check_same_thread=False, isolation_level=None)
        if read_only:
            version = self.db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if version is None or version[0] != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"attribute state schema {version}, expected {SCHEMA_VERSION}")
            self._select = self._select_for_columns()
            return
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE IF NOT EXISTS attributes (key TEXT PRIMARY KEY, etag TEXT NOT NULL,"
                        " mtime_ns INT NOT NULL, mode INT, content_etag TEXT)")
        if "content_etag" not in self._columns():  # a state written before the column
            self.db.execute("ALTER TABLE attributes ADD COLUMN content_etag TEXT")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        version = self.db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        if version is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif version[0] != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"attribute state schema {version[0]}, expected {SCHEMA_VERSION}")
        self._select = self._select_for_columns()

    def _columns(self) -> set[str]:
        return {row[1] for row in self.db.execute("PRAGMA table_info(attributes)")}

    def _select_for_columns(self) -> str:
        content_etag = "content_etag" if "content_etag" in self._columns() else "NULL"
        return f"SELECT etag, mtime_ns, mode, {content_etag} FROM attributes WHERE key = ?"

    def lookup(self, key: str, etag: str) -> RecordedAttributes | None:
        row = self.db.execute(self._select, (key,)).fetchone()
        if row is None or row[0] != etag.strip('"'):
            return None
        return RecordedAttributes(row[1], row[2], row[3])


class AttributeState:
    """The writer's side, for one run. Worker threads queue; the walking thread writes (`write_queued`)."""

    def __init__(self, path: Path):
        self.path = path
        self._table = _Table(path)
        self._db = self._table.db
        self._db.execute("BEGIN")
        self._lock = threading.Lock()
        self._queued: collections.deque[tuple[str, str | None, RecordedAttributes | None]] = collections.deque()
        self.changed = False

    def record(self, key: str, etag: str, mtime_ns: int, mode: int | None, content_etag: str | None = None) -> None:
        """The object `key` (with `etag`) holds this content; the file's attributes are these, and where `etag` is
        no checksum of the content and the metadata holds none, `content_etag` is the content's ETag."""
        self._queued.append((key, etag.strip('"'), RecordedAttributes(mtime_ns, mode, content_etag)))

    def forget(self, key: str) -> None:
        """`key` was uploaded (its metadata is right) or recycled: its row no longer applies."""
        self._queued.append((key, None, None))

    def write_queued(self, at_least: int = 1) -> None:
        if len(self._queued) < at_least:
            return
        with self._lock:
            while self._queued:
                key, etag, attributes = self._queued.popleft()
                if etag is None or attributes is None:
                    if self._db.execute("DELETE FROM attributes WHERE key = ?", (key,)).rowcount:
                        self.changed = True
                    continue
                if self._table.lookup(key, etag) != attributes:
                    self._db.execute("INSERT OR REPLACE INTO attributes (key, etag, mtime_ns, mode, content_etag)"
                                     " VALUES (?, ?, ?, ?, ?)", (key, etag, *attributes))
                    self.changed = True

    def lookup(self, key: str, etag: str) -> RecordedAttributes | None:
        self.write_queued()
        with self._lock:
            return self._table.lookup(key, etag)

    def finish(self) -> bool:
        """Write what is queued and close; returns whether the state changed this run."""
        self.write_queued()
        with self._lock:
            self._db.execute("COMMIT")
            if self.changed:
                self._db.execute("VACUUM")
            self._db.close()
        return self.changed


def load_attribute_state(client, bucket: str, prefix: str, workdir: Path,
                         object_key: str = ATTRIBUTES_OBJECT) -> tuple[AttributeState, str | None]:
    """The recorded attributes (empty if none); returns the state and a warning, if any.

    An unreadable state starts afresh: the objects' metadata then holds the attributes of the
    file versions they were uploaded from, and this run records again what it finds different.
    """
    path = workdir / "attributes.sqlite"
    try:
        fetch_state(client, bucket, prefix + object_key, path)  # none yet: an empty state
        return AttributeState(path), None
    except Exception as exc:  # corrupt or unreadable: never trust a damaged one
        path.unlink(missing_ok=True)
        return AttributeState(path), f"recorded file attributes unreadable, starting afresh: {exc}"


def save_attribute_state(state: AttributeState, client, bucket: str, prefix: str,
                         object_key: str = ATTRIBUTES_OBJECT) -> bool:
    """Compress and upload the state, unless this run changed nothing in it."""
    if not state.finish():
        return False
    store_state(client, bucket, prefix + object_key, state.path)
    return True


class AttributeReader:
    """Lookups in downloaded copies of the states (read-only), newest first."""

    def __init__(self, tables: list[_Table], folder: str = ""):
        self._tables = tables
        self._folder = folder  # where the reader's prefix lies within the backup whose states these are
        self._lock = threading.Lock()

    def lookup(self, key: str, etag: str) -> RecordedAttributes | None:
        """The attributes recorded for the object `key` with ETag `etag`; None: use the object's metadata.

        `key` is relative to the prefix (as the source's relative path, `/`-separated). Of several
        states (shards), the newest with a row for this key and ETag answers.
        """
        with self._lock:
            for table in self._tables:
                found = table.lookup(self._folder + key, etag)
                if found is not None:
                    return found
        return None


_SHARD_STATE = re.compile(r"shards/[0-9]+/[0-9]+/" + re.escape(ATTRIBUTES_NAME))


def is_attribute_state(key: str) -> bool:
    """Whether `key` (relative to the prefix) is an attributes state: the unsharded one, or a shard's."""
    return key == ATTRIBUTES_OBJECT or (key.startswith(STATE_DIR)
                                        and bool(_SHARD_STATE.fullmatch(key[len(STATE_DIR):])))


def attribute_state_objects(client, bucket: str, prefix: str,
                            as_of: datetime | None = None) -> list[tuple[str, str | None]]:
    """Every attributes state under `PREFIX/.s3backup/`, newest first, as (key, version id or None).

    A sharded backup has one per shard (`.s3backup/shards/N/I/attributes.sqlite.gz`), and may
    still hold those of an earlier N or of unsharded runs. With `as_of` (a versioned bucket), each
    state's newest version written no later than that time.
    """
    found: list[tuple[datetime, str, str | None]] = []
    if as_of is None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + STATE_DIR):
            for item in page.get("Contents", []):
                if is_attribute_state(item["Key"][len(prefix):]):
                    found.append((item["LastModified"], item["Key"], None))
    else:
        newest: dict[str, tuple[datetime, str | None]] = {}
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix + STATE_DIR):
            entries = [(v, True) for v in page.get("Versions", [])]
            entries += [(m, False) for m in page.get("DeleteMarkers", [])]
            for entry, is_version in entries:
                key, modified = entry["Key"], entry["LastModified"]
                if not is_attribute_state(key[len(prefix):]) or modified > as_of:
                    continue
                if key not in newest or modified > newest[key][0]:
                    newest[key] = (modified, entry["VersionId"] if is_version else None)
        found = [(modified, key, version) for key, (modified, version) in newest.items() if version is not None]
    found.sort(key=lambda item: item[0], reverse=True)
    return [(key[len(prefix):], version) for _, key, version in found]


def backup_roots(prefix: str) -> list[str]:
    """`prefix` ("" or ending in "/") and each folder above it, nearest first: where a backup that holds `prefix`
    keeps its state, when `prefix` is one of the backup's folders."""
    folders = prefix.split("/")[:-1]
    return ["".join(folder + "/" for folder in folders[:depth]) for depth in range(len(folders), -1, -1)]


def _nearest_states(client, bucket: str, prefix: str,
                    as_of: datetime | None) -> tuple[str, list[tuple[str, str | None]]]:
    """(backup root, `attribute_state_objects` of it): `prefix`'s own states, else those of the nearest folder
    above it that has some (a restore or verify of a backup's subfolder). The folders are listed at the same
    time. Only `prefix`'s own listing may raise: a policy that allows listing only within the backup is common.
    """
    roots = backup_roots(prefix)
    with ThreadPoolExecutor(min(len(roots), 8), thread_name_prefix="s3backup-state") as pool:
        listings = [pool.submit(attribute_state_objects, client, bucket, root, as_of) for root in roots]
    for root, listing in zip(roots, listings, strict=True):
        if root != prefix and listing.exception() is not None:
            log.debug("no attribute state read under %r: %s", root, listing.exception())
            continue
        if states := listing.result():
            return root, states
    return prefix, []


@contextlib.contextmanager
def open_recorded_attributes(client, bucket: str, prefix: str, *,
                             as_of: datetime | None = None) -> Iterator[AttributeReader]:
    """`with open_recorded_attributes(client, bucket, prefix) as recorded: recorded.lookup(key, etag)`.

    Downloads every attributes state under `PREFIX/.s3backup/` (the unsharded one and each
    shard's; see `attribute_state_objects`) to temporary files, removed on exit. Where `prefix`
    has none, those of the nearest folder above it that has some: `prefix` is then a folder of
    that backup (`_nearest_states`). `as_of` (a restore `--as-of`, on a versioned bucket) takes
    each state as it was at that time. Without a state object every lookup answers None. A
    damaged state raises. `prefix` is "" or ends with "/" (one is added if missing).
    """
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    root, states = _nearest_states(client, bucket, prefix, as_of)
    tables: list[_Table] = []
    with tempfile.TemporaryDirectory(prefix="s3backup-attributes-") as workdir:
        try:
            for number, (key, version) in enumerate(states):
                path = Path(workdir) / f"attributes-{number}.sqlite"
                if fetch_state(client, bucket, root + key, path, version):
                    tables.append(_Table(path, read_only=True))
            yield AttributeReader(tables, folder=prefix[len(root):])
        finally:
            for table in tables:
                table.db.close()
