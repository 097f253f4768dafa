"""The hash cache's racy-entry rule, over plain data (the stat tuples a coarse filesystem would give).

On NFS or SMB with whole-second timestamps, a same-size rewrite in the second the file was hashed, its
mtime put back, leaves (size, mtime, ctime, inode) exactly as the first run saw them. Local test
filesystems have finer timestamps, so the stat tuples are written out here as such a server gives them.
"""

from __future__ import annotations

import sqlite3

from s3backup_syncer.hashcache import RACY_WINDOW_NS, HashCache, is_racy
from s3backup_syncer.scan import LocalFile

SECOND = 1_000_000_000
RUN_1 = 1_800_000_000 * SECOND  # when the first run opened its cache (before it read any file)
RUN_2 = RUN_1 + 3600 * SECOND


def version(mtime_ns: int, ctime_ns: int) -> LocalFile:
    return LocalFile(key="db/table.dat", path="/unused", size=4096, mtime_ns=mtime_ns, ctime_ns=ctime_ns, inode=7)


def stored_then_looked_up(tmp_path, f: LocalFile) -> dict[int, str] | None:
    """Run 1 hashes `f` and stores its ETag; run 2 sees the very same stat and asks the cache."""
    first = HashCache(tmp_path / "cache.sqlite", hashing_since_ns=RUN_1)
    first.store(f, {0: "etag-of-the-content-run-1-read"})
    first.finish()
    second = HashCache(tmp_path / "cache.sqlite", hashing_since_ns=RUN_2)
    try:
        return second.lookup(f)
    finally:
        second.finish()


def test_a_rewrite_in_the_same_second_as_the_hash_is_not_skipped(tmp_path):
    """Written (and mtime put back) within the timestamp granularity of the hash: never trusted later."""
    mtime = RUN_1 - 100 * SECOND  # put back by the writer (rsync -t, touch -r)
    ctime = RUN_1 + 0 * SECOND  # the server's whole second, the same before and after the rewrite
    assert stored_then_looked_up(tmp_path, version(mtime, ctime)) is None


def test_an_mtime_too_close_to_the_hash_is_not_trusted(tmp_path):
    f = version(RUN_1 - RACY_WINDOW_NS + SECOND // 2, RUN_1 - 100 * SECOND)
    assert stored_then_looked_up(tmp_path, f) is None


def test_a_file_older_than_the_window_is_trusted(tmp_path):
    f = version(RUN_1 - 100 * SECOND, RUN_1 - RACY_WINDOW_NS - 1)
    assert stored_then_looked_up(tmp_path, f) == {0: "etag-of-the-content-run-1-read"}


def test_a_racy_entry_is_trusted_once_a_later_run_has_hashed_it_again(tmp_path):
    f = version(RUN_1 - 100 * SECOND, RUN_1)
    assert stored_then_looked_up(tmp_path, f) is None  # run 2 hashes it again, and stores that
    second = HashCache(tmp_path / "cache.sqlite", hashing_since_ns=RUN_2)
    second.store(f, {0: "etag-of-the-content-run-2-read"})
    second.finish()
    third = HashCache(tmp_path / "cache.sqlite", hashing_since_ns=RUN_2 + 3600 * SECOND)
    assert third.lookup(f) == {0: "etag-of-the-content-run-2-read"}
    third.finish()


def test_the_rule_is_git_racy_clean():
    assert is_racy(RUN_1, 0, RUN_1) and is_racy(0, RUN_1 + SECOND, RUN_1)  # at or after the hash
    assert is_racy(RUN_1 - RACY_WINDOW_NS, 0, RUN_1)  # within the window
    assert not is_racy(RUN_1 - RACY_WINDOW_NS - 1, RUN_1 - RACY_WINDOW_NS - 1, RUN_1)


def test_entries_of_a_cache_from_before_the_rule_are_hashed_again(tmp_path):
    """A schema-1 cache is migrated, not discarded with a warning; none of its entries is trusted."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE files (key TEXT PRIMARY KEY, size INT, mtime_ns INT, ctime_ns INT, inode INT,"
               " etags TEXT, seen INT)")
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('schema', '1')")
    f = version(RUN_1 - 100 * SECOND, RUN_1 - 100 * SECOND)
    db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, 1)", (f.key, f.size, f.mtime_ns, f.ctime_ns, f.inode,
                                                                  '{"0": "old"}'))
    db.commit()
    db.close()
    cache = HashCache(path, hashing_since_ns=RUN_2)
    assert cache.lookup(f) is None
    cache.store(f, {0: "new"})
    assert cache.finish()
    again = HashCache(path, hashing_since_ns=RUN_2 + SECOND)
    assert again.lookup(f) == {0: "new"}
    again.finish()
