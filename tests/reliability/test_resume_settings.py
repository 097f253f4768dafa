"""A multipart upload left by a killed run is resumed only with the object settings it was created with:
S3 fixes the storage class and the encryption at CreateMultipartUpload, so resuming it under other
settings would complete an object with the earlier run's (test_crash.py shows the resume itself)."""

from __future__ import annotations

import subprocess

from tests.conftest import BUCKET
from tests.reliability.helpers import (
    FIGURES,
    MiB,
    assert_bucket_matches,
    pending_uploads,
    run_syncer,
    sync_args,
    upload_markers,
    write_tree,
)
from tests.reliability.test_crash import _wait_for_parts


def test_an_upload_is_not_resumed_under_another_storage_class(s3, src, s3_url, prefix, direct):
    """Killed with parts on the server, re-run with `--storage-class STANDARD_IA`. Fails if the earlier
    upload (created as STANDARD) is resumed: the object would not get the storage class asked for."""
    write_tree(src, {"big.img": 30 * MiB + 3}, seed=51)
    size = (src / "big.img").stat().st_size
    process = subprocess.Popen(sync_args(src, s3_url, s3.endpoint_url, "--part-size", "5MiB", "--concurrency", "2",
                                         "--bwlimit", "10MiB"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_parts(direct, prefix, at_least=2, process=process)
    process.kill()
    process.wait()
    FIGURES["kills (SIGKILL)"] += 1
    assert len(upload_markers(direct, prefix)) == 1

    run = run_syncer(src, s3_url, s3.endpoint_url, "--part-size", "5MiB", "--storage-class", "STANDARD_IA")
    assert run.returncode == 0, run.stderr
    assert run.summary["bytes_reused"] == 0 and run.summary["bytes_uploaded"] == size, run.summary
    assert direct.head_object(Bucket=BUCKET, Key=f"{prefix}/big.img").get("StorageClass") == "STANDARD_IA"
    assert pending_uploads(direct, prefix) == []  # the earlier upload was aborted, not left behind
    assert_bucket_matches(direct, prefix, src)
