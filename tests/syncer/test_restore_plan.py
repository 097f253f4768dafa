"""Restore's and verify's decisions, as pure functions over plain data (no server)."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta

import pytest
from s3backup_syncer.download import LARGEST_RANGE, RANGES_AT_LEAST, hash_file, range_size_for
from s3backup_syncer.errors import ConfigError
from s3backup_syncer.etag import EtagHasher, PartDigests, multipart_etag_from_digests
from s3backup_syncer.file_writes import HOLE_BLOCK, write_sparse
from s3backup_syncer.remote import RemoteObject
from s3backup_syncer.restore_plan import (
    Finding,
    ObjectVersion,
    RestoreAction,
    decide_restore,
    decide_verify,
    file_attributes,
    in_sample,
    parse_as_of,
    temp_name,
    unsafe_key_reason,
    version_as_of,
)
from s3backup_syncer.scan import LocalFile

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
MiB = 1024 * 1024


def local(key: str, size: int) -> LocalFile:
    return LocalFile(key=key, path="/nonexistent/" + key, size=size, mtime_ns=1, ctime_ns=1, inode=1)


def remote(key: str, size: int, etag: str = "0" * 32) -> RemoteObject:
    return RemoteObject(key, size, etag, T0)


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b", "/abs", "a//b", "./a", "a/.", "nul\0byte",
                                 "x" * 256, "dir/.s3backup-restore-abc"])
def test_keys_that_could_leave_the_target_or_are_no_file_names_are_refused(key):
    assert unsafe_key_reason(key)
    assert decide_restore(None, remote(key, 1), overwrite=True).action is RestoreAction.REFUSE


@pytest.mark.parametrize("key", ["a", "a/b/c.txt", "..hidden", "a..b/c", "spaces and ü/x", "x" * 255])
def test_ordinary_keys_are_fine(key):
    assert unsafe_key_reason(key) is None


def test_the_same_compare_as_sync_in_reverse():
    assert decide_restore(None, remote("a", 5), overwrite=False).action is RestoreAction.DOWNLOAD
    assert decide_restore(local("a", 4), remote("a", 5), overwrite=False).action is RestoreAction.CONFLICT
    assert decide_restore(local("a", 4), remote("a", 5), overwrite=True).action is RestoreAction.REPLACE
    same_size = decide_restore(local("a", 5), remote("a", 5), overwrite=False)
    assert same_size.action is RestoreAction.CHECK and same_size.etag_keys == (0,)
    multipart = decide_restore(local("a", 20 * MiB), remote("a", 20 * MiB, "f" * 32 + "-3"), overwrite=False)
    assert multipart.action is RestoreAction.CHECK and 8 * MiB in multipart.etag_keys


def test_temp_names_are_deterministic_short_and_distinct():
    assert temp_name("x" * 255) == temp_name("x" * 255)
    assert len(temp_name("x" * 255)) < 64
    assert temp_name("a") != temp_name("b")


def test_attributes_come_from_state_then_our_metadata_then_other_tools_then_last_modified():
    ours = {"s3backup-mtime": "1600000000123456789", "s3backup-mode": "640"}
    assert file_attributes(ours, T0, None) == (1600000000123456789, 0o640)
    assert file_attributes(ours, T0, (1700000000000000000, None)) == (1700000000000000000, 0o640)
    assert file_attributes(ours, T0, (1700000000000000000, 0o600)) == (1700000000000000000, 0o600)
    assert file_attributes({"mtime": "1500000000.25"}, T0, None) == (1500000000250000000, None)  # rclone
    s3cmd = {"s3cmd-attrs": "atime:1/ctime:2/gid:0/mode:33261/mtime:1400000000/uid:0"}
    assert file_attributes(s3cmd, T0, None) == (1400000000000000000, 0o755)
    assert file_attributes({}, T0, None) == (int(T0.timestamp()) * 10**9, None)  # aws-cli records nothing
    assert file_attributes({"s3backup-mode": "4755"}, T0, None)[1] == 0o755  # no setuid from a bucket
    assert file_attributes({"s3backup-mtime": "garbage", "mtime": "x"}, T0, None)[0] == int(T0.timestamp()) * 10**9


def test_as_of_takes_rfc3339_or_a_duration_ago():
    now = T0
    assert parse_as_of("2026-10-01T00:00:00Z", now) == datetime(2026, 10, 1, tzinfo=UTC)
    assert parse_as_of("2026-10-01T02:00:00+02:00", now) == datetime(2026, 10, 1, tzinfo=UTC)
    assert parse_as_of("3d", now) == now - timedelta(days=3)
    assert parse_as_of("1d12h", now) == now - timedelta(hours=36)
    for bad in ("yesterday", "2026-10-01T00:00:00", "", "3x"):
        with pytest.raises(ConfigError):
            parse_as_of(bad, now)


def version(vid: str, seconds: int, *, latest: bool = False, deleted: bool = False) -> ObjectVersion:
    return ObjectVersion("k", vid, T0 + timedelta(seconds=seconds), latest, deleted, 1, "e")


def test_the_version_current_at_a_time():
    history = [version("v3", 30, latest=True), version("d", 20, deleted=True), version("v1", 10)]
    assert version_as_of(history, T0 + timedelta(seconds=5)) is None  # not there yet
    assert version_as_of(history, T0 + timedelta(seconds=10)).version_id == "v1"
    assert version_as_of(history, T0 + timedelta(seconds=25)) is None  # deleted then
    assert version_as_of(history, T0 + timedelta(days=1)).version_id == "v3"
    # Listed in any order, dated to the same second: the latest first, then data before a delete marker.
    tied = [version("d", 10, deleted=True), version("v1", 10), version("v2", 10, latest=True)]
    assert version_as_of(tied, T0 + timedelta(seconds=10)).version_id == "v2"
    assert version_as_of(tied[:2], T0 + timedelta(seconds=10)).version_id == "v1"


def test_verify_findings():
    assert decide_verify(local("a", 1), None, None) == (Finding.MISSING, ())
    assert decide_verify(None, remote("a", 1), None) == (Finding.EXTRA, ())
    assert decide_verify(local("a", 1), remote("a", 2), None) == (Finding.DIFFERS, ())
    assert decide_verify(local("a", 1), remote("a", 1, "ab" * 16), None) == (Finding.CHECK, (0,))
    assert decide_verify(local("a", 1), remote("a", 1, "ab" * 16), {0: "ab" * 16}) == (Finding.SAME, ())
    assert decide_verify(local("a", 1), remote("a", 1, "ab" * 16), {0: "cd" * 16}) == (Finding.DIFFERS, ())


def test_samples_are_reproducible_and_about_the_share_asked():
    keys = [f"k{i}" for i in range(4000)]
    first = [k for k in keys if in_sample(k, 10, seed=1)]
    assert first == [k for k in keys if in_sample(k, 10, seed=1)]
    assert first != [k for k in keys if in_sample(k, 10, seed=2)]
    assert 300 < len(first) < 500
    assert all(in_sample(k, 100, seed=5) for k in keys)


def test_sparse_writes_leave_holes_and_keep_the_content(tmp_path):
    data = bytearray(os.urandom(3 * HOLE_BLOCK + 100))
    data[HOLE_BLOCK: 2 * HOLE_BLOCK] = bytes(HOLE_BLOCK)  # one aligned zero block, with 100 bytes of offset
    size = 8 * MiB
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, size)
        write_sparse(fd, 0, bytes(data))
        write_sparse(fd, 4 * MiB, bytes(2 * MiB))  # zeros only: nothing written
        write_sparse(fd, 6 * MiB + 7, b"tail")
        expected = bytes(data) + bytes(size - len(data))
        expected = expected[: 6 * MiB + 7] + b"tail" + expected[6 * MiB + 11:]
        assert path.read_bytes() == expected
        assert path.stat().st_blocks * 512 < 1 * MiB
        etags = hash_file(fd, size, (0, 5 * MiB))
    finally:
        os.close(fd)
    hasher = EtagHasher((0, 5 * MiB))
    hasher.update(expected)
    assert etags == hasher.etags() and etags[0] == hashlib.md5(expected).hexdigest()


@pytest.mark.parametrize("size, part_size", [
    (40 * MiB, 8 * MiB), (1024 * MiB, 8 * MiB), (5 * 1024 * MiB, 8 * MiB),
    (300 * MiB + 7, 5 * MiB), (200 * MiB, 15 * MiB), (9 * 1024 * MiB, 512 * MiB),
])
def test_ranges_are_whole_parts_few_and_long_yet_enough_to_share(size, part_size):
    range_size = range_size_for(size, part_size)
    ranges = -(-size // range_size)
    assert range_size % part_size == 0
    assert range_size <= max(LARGEST_RANGE, part_size)
    assert ranges >= min(RANGES_AT_LEAST, -(-size // part_size))  # an object of fewer parts: a range each
    assert range_size == part_size or size // range_size >= RANGES_AT_LEAST  # longer only where enough are left


def test_the_parts_digests_of_ranges_joined_give_the_whole_objects_etag():
    data = bytes(range(251)) * (100 * 1024)  # ~24.5 MiB: 5 parts of 5 MiB, the last one short
    part_size, range_size = 5 * MiB, 10 * MiB
    joined = b""
    for start in range(0, len(data), range_size):
        parts = PartDigests(part_size)
        piece = data[start:start + range_size]
        for offset in range(0, len(piece), 333_333):  # chunks that straddle the parts' ends
            parts.update(piece[offset:offset + 333_333])
        joined += parts.digests()
    hasher = EtagHasher([part_size])
    hasher.update(data)
    assert multipart_etag_from_digests(joined) == hasher.etags()[part_size]
    assert len(joined) == 16 * 5
