"""The guard before each deletion: a recycle candidate goes only if its HEAD shows it still is the
object the listing showed. A HEAD that fails (other than 404) keeps the object and blocks recycling;
an object rewritten since the listing is kept; the second-grained clocks decide nothing on their own."""

from __future__ import annotations

import email.utils

import pytest
from s3backup_syncer.config import RecycleCap, SyncOptions
from s3backup_syncer.engine import run_sync

from tests.conftest import BUCKET
from tests.reliability.helpers import client_for, remote_objects, run_syncer, write_tree

TREE = {"keep.txt": 100, "gone.txt": 200, "docs/other.txt": 300}
RECYCLE = ("--recycle-after", "0s", "--max-recycle", "100%")


@pytest.fixture
def synced(s3, src, s3_url, prefix, direct):
    """The tree uploaded, then `gone.txt` deleted from the source: one recycle candidate."""
    write_tree(src, TREE, seed=5)
    first = run_syncer(src, s3_url, s3.endpoint_url)
    assert first.returncode == 0, first.stderr
    (src / "gone.txt").unlink()
    return remote_objects(direct, prefix)


def test_an_object_from_the_very_second_the_run_started_is_recycled(s3, synced, src, s3_url, prefix, direct,
                                                                    proxy_factory):
    """The server's clock is pinned to the second in which the candidate was written (a previous run
    that finished within the same second as this one started). Fails if "written during this run" is
    judged by comparing LastModified with the run's start: the object is then kept, and the run's
    result depends on when in the second it started (the flaky case of issue 11)."""
    written = synced["gone.txt"]["LastModified"]
    pinned = email.utils.format_datetime(written.replace(microsecond=0), usegmt=True)

    def pin_date(request, status, headers, body):
        return [(name, pinned if name.lower() == "date" else value) for name, value in headers], body

    proxy = proxy_factory(rewrite=pin_date)
    run = run_syncer(src, s3_url, proxy.endpoint_url, *RECYCLE)
    assert run.returncode == 0, run.stderr
    assert run.summary["files_recycled"] == 1 and run.summary["recycle_pending"] == 0
    assert sorted(remote_objects(direct, prefix)) == ["docs/other.txt", "keep.txt"]


@pytest.mark.parametrize("fault", ["403", "500"])
def test_a_failed_head_keeps_the_object_and_blocks_recycling(s3, synced, src, prefix, direct, proxy_factory, fault):
    """Only a 404 means "already gone". Fails if a 403, or a 5xx left after the client's retries, is
    taken for gone and the object deleted unchecked, or if the run then looks green."""
    proxy = proxy_factory()
    proxy.inject(fault, operation="HeadObject", times=10, match=lambda request: request.path.endswith("/gone.txt"))
    options = SyncOptions(source=src, bucket=BUCKET, prefix=prefix + "/", path_style=True,
                          recycle_after_seconds=0, recycle_cap=RecycleCap(percent=100))
    summary = run_sync(options, client=client_for(s3, proxy.endpoint_url, max_attempts=2))
    assert proxy.faults[fault] >= 1
    assert "gone.txt" in remote_objects(direct, prefix), "deleted without a successful check"
    assert summary.files_recycled == 0 and summary.recycle_pending == 1
    assert "gone.txt" in summary.recycle_blocked
    assert summary.exit_code == 1 and summary.result == "partial"


def test_a_head_404_counts_as_gone(s3, synced, src, s3_url, prefix, direct, proxy_factory):
    """Deleted by someone else between the listing and the check: nothing is kept, nothing blocked."""
    def delete_first(request):
        if request.operation == "HeadObject" and request.path.endswith("/gone.txt"):
            direct.delete_object(Bucket=BUCKET, Key=f"{prefix}/gone.txt")

    proxy = proxy_factory(on_request=delete_first)
    run = run_syncer(src, s3_url, proxy.endpoint_url, *RECYCLE)
    assert run.returncode == 0, run.stderr
    assert run.summary["recycle_blocked"] == ""
    assert sorted(remote_objects(direct, prefix)) == ["docs/other.txt", "keep.txt"]


def test_an_object_rewritten_after_the_listing_is_kept(s3, synced, src, s3_url, prefix, direct, proxy_factory):
    """Another writer puts the candidate back between the listing and the deletion: its new content
    stays. Fails if the deletion does not look at what is there now."""
    def rewrite_first(request):
        if request.operation == "HeadObject" and request.path.endswith("/gone.txt"):
            direct.put_object(Bucket=BUCKET, Key=f"{prefix}/gone.txt", Body=b"written by someone else")

    proxy = proxy_factory(on_request=rewrite_first)
    run = run_syncer(src, s3_url, proxy.endpoint_url, *RECYCLE)
    assert run.returncode == 0, run.stderr
    assert run.summary["files_recycled"] == 0 and run.summary["recycle_pending"] == 1
    body = direct.get_object(Bucket=BUCKET, Key=f"{prefix}/gone.txt")["Body"].read()
    assert body == b"written by someone else"
