"""A faulty network and a faulty server: every fault class, injected through the proxy, and counted.

Each test ends with the decisive check (`assert_bucket_matches`): the bucket holds the source's bytes
(downloaded here), every object has the right `s3backup-mtime`, and no multipart upload is left.
"""

from __future__ import annotations

import time

import pytest
from s3backup_syncer.config import MiB

from tests.conftest import BUCKET
from tests.reliability.helpers import (
    STATE_DIR,
    assert_bucket_matches,
    run_syncer,
    write_tree,
)

#: 14 files: small ones (PutObject) and three multipart ones (5 MiB parts: 3 + 2 + 2 parts).
TREE = {
    **{f"docs/note-{i:02d}.txt": 1000 + 37 * i for i in range(10)},
    "empty.bin": 0,
    "db/dump-a.sql": 10 * MiB + 123,
    "db/dump-b.sql": 5 * MiB + 7,
    "images/big.raw": 6 * MiB + 1,
}
PART = ("--part-size", "5MiB")
#: Operations whose successful response has a body (XML or data): a cut lands in the body.
WITH_BODY = {"ListObjectsV2", "GetObject", "ListMultipartUploads", "ListParts", "CreateMultipartUpload",
             "CompleteMultipartUpload"}


def _converge(src, s3_url, proxy, *extra, runs: int = 4) -> list:
    """Sync through the proxy until a run reports success; returns the runs."""
    done = []
    for _ in range(runs):
        run = run_syncer(src, s3_url, proxy.endpoint_url, *PART, *extra)
        done.append(run)
        assert run.returncode in (0, 1), run.stderr
        if run.returncode == 0:
            break
    return done


@pytest.mark.parametrize("faults", [
    {"500": 0.08, "503": 0.08},
    {"reset-request": 0.1, "reset-response": 0.1},
    {"truncate": 0.3},
], ids=["5xx", "resets", "truncated-bodies"])
def test_retryable_faults_are_retried_within_one_run(faults, src, s3_url, prefix, proxy_factory, direct):
    """Faults that a retry fixes must not fail a file: one run, exit 0, bucket identical to the source.
    Fails if the client stopped retrying 5xx/SlowDown, resets or truncated responses."""
    write_tree(src, TREE, seed=1)
    # A lost CreateMultipartUpload answer is its own case (test_lost_multipart_responses_...).
    wanted = WITH_BODY if "truncate" in faults else None
    proxy = proxy_factory(rates=faults, seed=7, scope=lambda request: request.operation != "CreateMultipartUpload"
                          and (wanted is None or request.operation in wanted))
    run = run_syncer(src, s3_url, proxy.endpoint_url, *PART)
    assert run.returncode == 0, (run.stderr, proxy.log)
    assert run.summary["files_uploaded"] == len(TREE) and run.summary["files_failed"] == 0
    for kind in faults:
        assert proxy.faults[kind] >= 1, f"{kind} was never injected: {proxy.requests}"
    assert_bucket_matches(direct, prefix, src)
    # A second run through the same faults finds everything in place and sends nothing.
    again = run_syncer(src, s3_url, proxy.endpoint_url, *PART)
    assert again.returncode == 0 and again.summary["files_unchanged"] == len(TREE), again.stderr
    assert again.summary["bytes_uploaded"] == 0


def test_lost_responses_converge(src, s3_url, prefix, proxy_factory, direct):
    """The server did the request but the answer was lost (500 after the fact, reset, truncation):
    retries replay non-idempotent calls. Runs may report failed files, but never a wrong object,
    and a re-run through the same faults ends in sync."""
    write_tree(src, TREE, seed=2)
    proxy = proxy_factory(rates={"500-after": 0.1, "reset-response": 0.05, "truncate": 0.05}, seed=3)
    runs = _converge(src, s3_url, proxy)
    assert runs[-1].returncode == 0, [r.stderr for r in runs]
    assert proxy.faults["500-after"] >= 1
    assert_bucket_matches(direct, prefix, src)


@pytest.mark.parametrize(("fault", "operation"), [
    ("500-after", "CreateMultipartUpload"),
    ("reset-response", "CreateMultipartUpload"),
    ("500-after", "CompleteMultipartUpload"),
    ("reset-response", "CompleteMultipartUpload"),
    ("500-after", "UploadPart"),
])
def test_lost_multipart_responses_leave_no_unfinished_upload(fault, operation, src, s3_url, prefix, proxy_factory,
                                                             direct):
    """One lost answer on a multipart call: the run may fail that file, but a re-run leaves the bucket
    in sync and ListMultipartUploads empty (no orphaned upload costing storage forever)."""
    write_tree(src, {"big.bin": 11 * MiB}, seed=4)
    proxy = proxy_factory()
    proxy.inject(fault, operation=operation)
    runs = _converge(src, s3_url, proxy, runs=3)
    assert proxy.faults[fault] == 1
    assert runs[-1].returncode == 0, [r.stderr for r in runs]
    assert_bucket_matches(direct, prefix, src)


def test_truncated_response_headers_fail_safe(src, s3_url, prefix, proxy_factory, direct):
    """A 200 whose headers are cut short (no ETag, or half of one) on PutObject/UploadPart: the upload
    cannot be verified, so the file must not count as synced; a re-run fixes it. No traceback either."""
    write_tree(src, TREE, seed=12)
    proxy = proxy_factory(rates={"truncate": 0.3}, seed=5,
                          scope=lambda request: request.operation in ("PutObject", "UploadPart"))
    runs = _converge(src, s3_url, proxy)
    assert proxy.faults["truncate"] >= 1
    assert runs[-1].returncode == 0, [r.stderr for r in runs]
    assert_bucket_matches(direct, prefix, src)


def test_corrupted_request_bodies_are_never_stored(src, s3_url, prefix, proxy_factory, direct):
    """A byte flipped in transit in PutObject/UploadPart bodies: Content-MD5 makes the server refuse it
    (BadDigest), so no corrupt object can exist; the file is sent again (this run or the next)."""
    write_tree(src, TREE, seed=13)
    proxy = proxy_factory(seed=9)
    for operation in ("PutObject", "UploadPart"):
        proxy.inject("corrupt-request", operation=operation, times=2,
                     match=lambda request: STATE_DIR not in request.path)
    runs = _converge(src, s3_url, proxy)
    assert proxy.faults["corrupt-request"] == 4
    assert "BadDigest" in runs[0].stderr and runs[-1].returncode == 0, [r.stderr for r in runs]
    assert_bucket_matches(direct, prefix, src)


def test_slow_responses_past_the_read_timeout(src, s3_url, prefix, proxy_factory, direct):
    """Answers stalled past the client's read timeout (a real `s3backup` process with
    S3BACKUP_READ_TIMEOUT=1) are timed out and retried: one run, exit 0."""
    write_tree(src, TREE, seed=14)
    proxy = proxy_factory(rates={"slow": 0.08}, stall_seconds=2.5, seed=12,
                          scope=lambda request: request.operation != "CreateMultipartUpload")
    run = run_syncer(src, s3_url, proxy.endpoint_url, *PART, env={"S3BACKUP_READ_TIMEOUT": "1"}, process=True)
    assert proxy.faults["slow"] >= 1
    assert run.returncode == 0, run.stderr
    assert_bucket_matches(direct, prefix, src)


def test_throttling_burst(src, s3_url, prefix, proxy_factory, direct):
    """A burst of SlowDown on every request at the start of the run: backoff, then success."""
    write_tree(src, TREE, seed=5)
    proxy = proxy_factory()
    proxy.inject("503", times=3, match=lambda request: True)
    run = run_syncer(src, s3_url, proxy.endpoint_url, *PART)
    assert run.returncode == 0, run.stderr
    assert proxy.faults["503"] == 3
    assert_bucket_matches(direct, prefix, src)


def test_wrong_credentials_are_a_one_line_error(s3, src, s3_url, prefix, direct):
    """A real 403 from SeaweedFS: exit 2, one line that says why, no secret, nothing written."""
    write_tree(src, {"a.txt": 10}, seed=7)
    secret = "wrong-secret-" + "x" * 20
    run = run_syncer(src, s3_url, s3.endpoint_url, process=True,
                     env={"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": secret})
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "denied" in run.stderr, run.stderr
    assert secret not in run.stderr + str(run.summary)
    assert run.summary["result"] == "error" and "denied" in run.summary["error"]
    assert direct.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("KeyCount", 0) == 0


def test_access_revoked_mid_run_deletes_nothing(s3, src, s3_url, prefix, proxy_factory, direct, s3_env):
    """403 on some uploads mid-run (credentials revoked, a bucket policy change): those files fail, the
    run says so (exit 1), and no remote object is recycled, even ones that are due."""
    write_tree(src, {"gone.txt": 5, "keep.txt": 5}, seed=8)
    assert run_syncer(src, s3_url, s3.endpoint_url).returncode == 0
    (src / "gone.txt").unlink()
    write_tree(src, {f"new-{i}.txt": 100 for i in range(4)}, seed=9)
    proxy = proxy_factory()
    proxy.inject("403", operation="PutObject", times=100,  # every attempt at new-0 and new-1
                 match=lambda request: "/new-0." in request.path or "/new-1." in request.path)
    run = run_syncer(src, s3_url, proxy.endpoint_url, "--recycle-after", "0s")
    assert run.returncode == 1, run.stderr
    assert run.summary["files_failed"] == 2 and run.summary["files_recycled"] == 0
    assert "denied" in " ".join(run.summary["errors"])
    assert "gone.txt" in {k.rsplit("/", 1)[-1] for k in _keys(direct, prefix)}
    assert run.summary["recycle_blocked"], run.summary
    # Access back: the next run uploads the rest and only then recycles.
    time.sleep(1.1)  # (objects of the run's own first second are never recycled by it)
    final = run_syncer(src, s3_url, s3.endpoint_url, "--recycle-after", "0s")
    assert final.returncode == 0 and final.summary["files_recycled"] == 1, final.stderr
    assert_bucket_matches(direct, prefix, src)


def _keys(client, prefix):
    return [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])]
