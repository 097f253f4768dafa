"""s3backup's own state files on the real server: stored gzipped under a Content-MD5, fetched back whole."""

from __future__ import annotations

import gzip
import hashlib
import os

import pytest
from s3backup_syncer.state_objects import fetch_state, store_state

from tests.conftest import BUCKET


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "state.sqlite"
    path.write_bytes(os.urandom(300_000) + b"\0" * 300_000)  # some of it compresses, some does not
    return path


def test_a_state_file_comes_back_byte_for_byte(s3_client, prefix, state_file, tmp_path):
    key = f"{prefix}/.s3backup/state.sqlite.gz"
    store_state(s3_client, BUCKET, key, state_file)
    stored = s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert gzip.decompress(stored) == state_file.read_bytes()
    head = s3_client.head_object(Bucket=BUCKET, Key=key)
    assert head["ETag"].strip('"') == hashlib.md5(stored).hexdigest()  # one PUT
    assert not state_file.with_name("state.sqlite.gz").exists()  # the packed copy is cleaned up

    target = tmp_path / "fetched.sqlite"
    assert fetch_state(s3_client, BUCKET, key, target) is True
    assert target.read_bytes() == state_file.read_bytes()


def test_a_large_state_goes_up_in_parts_each_under_its_own_md5(s3_client, prefix, tmp_path):
    state_file = tmp_path / "state.sqlite"
    state_file.write_bytes(os.urandom(11 * 1024 * 1024))  # does not compress: 5 + 5 + 1 MiB
    key = f"{prefix}/.s3backup/state.sqlite.gz"
    store_state(s3_client, BUCKET, key, state_file, single_put_limit=100_000, part_size=5 * 1024 * 1024)
    head = s3_client.head_object(Bucket=BUCKET, Key=key)
    assert head["ETag"].strip('"').endswith("-3")
    assert not s3_client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads")
    target = tmp_path / "fetched.sqlite"
    assert fetch_state(s3_client, BUCKET, key, target)
    assert target.read_bytes() == state_file.read_bytes()


def test_a_missing_state_is_told_apart_from_a_damaged_one(s3_client, prefix, tmp_path):
    target = tmp_path / "fetched.sqlite"
    assert fetch_state(s3_client, BUCKET, f"{prefix}/.s3backup/none.gz", target) is False
    assert not target.exists()

    damaged = gzip.compress(b"x" * 100_000)[:-8] + b"\0" * 8  # the CRC and length no longer match
    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/.s3backup/damaged.gz", Body=damaged)
    with pytest.raises(gzip.BadGzipFile):
        fetch_state(s3_client, BUCKET, f"{prefix}/.s3backup/damaged.gz", target)
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing half-written is left
