"""Object metadata and recorded attributes: an object whose content is already right is never rewritten.

On a versioned bucket every rewrite is a new full-size version, so a change of the mtime or mode alone
(`touch`, `chmod`, a rewrite with the same bytes), or a prefix that another tool filled, must add no
version. The file's attributes are then kept in s3backup's own state, where a restore reads them
(`open_recorded_attributes`); an object s3backup uploads carries them in its metadata.
"""

from __future__ import annotations

import os
import secrets
import stat

import pytest
from s3backup_syncer.attributes_state import open_recorded_attributes

from tests.reliability.helpers import STATE_DIR, MiB, assert_bucket_matches, run_syncer, write_tree
from tests.syncer.test_sync import past_the_racy_window

VERSIONED = "s3backup-versioned"


@pytest.fixture(scope="module")
def versioned(s3):
    """A bucket with versioning on (bucket creation is slow in SeaweedFS: one for the module)."""
    s3.create_bucket(VERSIONED)
    client = s3.client()
    client.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    return client


def _versions(client, prefix: str) -> dict[str, int]:
    """Data object key (relative) -> number of versions; s3backup's own state is left out."""
    counts: dict[str, int] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=VERSIONED, Prefix=prefix + "/"):
        for version in page.get("Versions", []):
            key = version["Key"][len(prefix) + 1:]
            if not key.startswith(STATE_DIR):
                counts[key] = counts.get(key, 0) + 1
    return counts


def _recorded(client, prefix: str, key: str):
    etag = client.head_object(Bucket=VERSIONED, Key=f"{prefix}/{key}")["ETag"]
    with open_recorded_attributes(client, VERSIONED, prefix + "/") as recorded:
        return recorded.lookup(key, etag)


def _shift_mtime(path, seconds: int) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


TREE = {"report.pdf": 4000, "empty.txt": 0, "vm/disk.img": 6 * MiB + 3}


def test_touch_and_chmod_add_no_version_and_are_recorded_for_restore(s3, src, versioned, tmp_path):
    """Fails if an mtime- or mode-only change rewrites an object (a CopyObject onto itself adds a
    version), or if the new mtime and mode cannot be read back through the state's read API."""
    prefix = f"touch-{secrets.token_hex(4)}"
    url = f"s3://{VERSIONED}/{prefix}"
    write_tree(src, TREE, seed=1)
    first = run_syncer(src, url, s3.endpoint_url, "--part-size", "5MiB")
    assert first.returncode == 0 and first.summary["files_uploaded"] == 3, first.stderr
    head = versioned.head_object(Bucket=VERSIONED, Key=f"{prefix}/report.pdf")
    assert head["Metadata"]["s3backup-mtime"] == str((src / "report.pdf").stat().st_mtime_ns)
    uploaded_mode = stat.S_IMODE((src / "report.pdf").stat().st_mode)

    for key in TREE:
        _shift_mtime(src / key, -3600)  # back: a future mtime would keep the hash cache distrustful
    os.chmod(src / "report.pdf", 0o600)
    past_the_racy_window()  # the chmod moved the ctime: a hash taken within the window is not trusted later
    touched = run_syncer(src, url, s3.endpoint_url, "--part-size", "5MiB")
    assert touched.returncode == 0, touched.stderr
    assert touched.summary["files_uploaded"] == 0 and touched.summary["bytes_uploaded"] == 0
    assert touched.summary["files_unchanged"] == 3
    assert _versions(versioned, prefix) == {key: 1 for key in TREE}, "an unchanged object was rewritten"
    for key in TREE:
        st = (src / key).stat()
        assert _recorded(versioned, prefix, key) == (st.st_mtime_ns, stat.S_IMODE(st.st_mode), None), key
    assert _recorded(versioned, prefix, "report.pdf").mode == 0o600
    metadata = versioned.head_object(Bucket=VERSIONED, Key=f"{prefix}/report.pdf")["Metadata"]
    assert metadata["s3backup-mode"] == f"{uploaded_mode:o}"  # as uploaded: the object was left alone

    again = run_syncer(src, url, s3.endpoint_url, "--part-size", "5MiB")
    assert again.returncode == 0 and again.summary["bytes_hashed"] == 0, again.stderr  # the cache vouches
    assert _versions(versioned, prefix) == {key: 1 for key in TREE}

    (src / "report.pdf").write_bytes(b"new content")  # a real change: uploaded, metadata right again
    changed = run_syncer(src, url, s3.endpoint_url, "--part-size", "5MiB")
    assert changed.returncode == 0 and changed.summary["files_uploaded"] == 1, changed.stderr
    assert _versions(versioned, prefix)["report.pdf"] == 2
    assert _recorded(versioned, prefix, "report.pdf") is None  # the new object's metadata is right
    head = versioned.head_object(Bucket=VERSIONED, Key=f"{prefix}/report.pdf")
    assert head["Metadata"]["s3backup-mtime"] == str((src / "report.pdf").stat().st_mtime_ns)
    assert head["Metadata"]["s3backup-mode"] == "600"


def test_adopting_a_prefix_another_tool_filled_adds_no_version(s3, src, versioned):
    """Objects uploaded by another tool (no s3backup metadata, one of them multipart) with the source's
    content: s3backup takes them over as they are. Fails if any is rewritten to add metadata."""
    prefix = f"adopt-{secrets.token_hex(4)}"
    contents = write_tree(src, TREE, seed=2)
    for key, data in contents.items():
        if len(data) > 5 * MiB:  # another tool's multipart upload, 5 MiB parts
            upload = versioned.create_multipart_upload(Bucket=VERSIONED, Key=f"{prefix}/{key}")
            parts = []
            for number, offset in enumerate(range(0, len(data), 5 * MiB), start=1):
                answer = versioned.upload_part(Bucket=VERSIONED, Key=f"{prefix}/{key}", UploadId=upload["UploadId"],
                                               PartNumber=number, Body=data[offset:offset + 5 * MiB])
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            versioned.complete_multipart_upload(Bucket=VERSIONED, Key=f"{prefix}/{key}", UploadId=upload["UploadId"],
                                                MultipartUpload={"Parts": parts})
        else:
            versioned.put_object(Bucket=VERSIONED, Key=f"{prefix}/{key}", Body=data)
    assert _versions(versioned, prefix) == {key: 1 for key in TREE}

    run = run_syncer(src, f"s3://{VERSIONED}/{prefix}", s3.endpoint_url)
    assert run.returncode == 0, run.stderr
    assert run.summary["files_uploaded"] == 0 and run.summary["files_unchanged"] == 3
    assert _versions(versioned, prefix) == {key: 1 for key in TREE}, "an adopted object was rewritten"
    for key in TREE:
        assert "s3backup-mtime" not in versioned.head_object(Bucket=VERSIONED, Key=f"{prefix}/{key}")["Metadata"]
        st = (src / key).stat()
        assert _recorded(versioned, prefix, key) == (st.st_mtime_ns, stat.S_IMODE(st.st_mode), None), key


def test_recorded_attributes_do_not_apply_to_an_object_someone_else_replaced(s3, src, versioned):
    """The state is keyed by ETag: once another writer replaces the object, the recorded mtime is not
    read for it (nor for the next version s3backup uploads)."""
    prefix = f"replaced-{secrets.token_hex(4)}"
    url = f"s3://{VERSIONED}/{prefix}"
    write_tree(src, {"a.txt": 100}, seed=3)
    assert run_syncer(src, url, s3.endpoint_url).returncode == 0
    _shift_mtime(src / "a.txt", 60)
    assert run_syncer(src, url, s3.endpoint_url).returncode == 0
    assert _recorded(versioned, prefix, "a.txt") is not None
    versioned.put_object(Bucket=VERSIONED, Key=f"{prefix}/a.txt", Body=b"someone else's")
    assert _recorded(versioned, prefix, "a.txt") is None


def test_mtime_only_change_keeps_the_restorable_mtime(s3, src, s3_url, prefix, direct):
    """On an ordinary bucket too: after a touch the mtime a restore would apply is the file's new one."""
    write_tree(src, {"report.pdf": 4000, "empty.txt": 0}, seed=1)
    assert run_syncer(src, s3_url, s3.endpoint_url).returncode == 0
    for name in ("report.pdf", "empty.txt"):
        _shift_mtime(src / name, 3600)
    run = run_syncer(src, s3_url, s3.endpoint_url)
    assert run.returncode == 0, run.stderr
    assert run.summary["bytes_uploaded"] == 0  # same bytes: nothing to send, nothing rewritten
    assert_bucket_matches(direct, prefix, src)
