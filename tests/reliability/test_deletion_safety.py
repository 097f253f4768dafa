"""No deletion a user could not have wanted: empty, missing or unreadable sources recycle nothing, a
--max-recycle breach deletes nothing and says why, and clock skew cannot make a young object look old.

Tests run as root, for whom permissions do not block reading. The unreadable-source tests run the
syncer as root without any capability (`setpriv --bounding-set=-all`, util-linux): permission bits then
apply to it as to any user.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.reliability.helpers import assert_bucket_matches, remote_objects, run_syncer, write_tree

RECYCLE_NOW = ("--recycle-after", "0s", "--max-recycle", "100%")
TREE = {**{f"docs/{i}.txt": 100 + i for i in range(6)}, "db/dump.sql": 5000, "top.txt": 7}


@pytest.fixture
def synced(s3, src, s3_url, prefix, direct):
    """A source synced once: its objects are in the bucket."""
    write_tree(src, TREE, seed=3)
    assert run_syncer(src, s3_url, s3.endpoint_url).returncode == 0
    assert len(remote_objects(direct, prefix)) == len(TREE)
    return src


def let_a_second_pass() -> None:
    """The server's Date has whole seconds: an object of a run's first second counts as written by that
    run and is never recycled by it. Tests that expect recycling need objects at least a second old."""
    time.sleep(1.1)


@pytest.fixture
def shared_src(synced):
    """`synced`, for the tests that make parts of it unreadable (permissions restored afterwards)."""
    yield synced
    for directory, _dirs, files in os.walk(synced):
        Path(directory).chmod(0o755)
        for name in files:
            (Path(directory) / name).chmod(0o644)


def test_empty_source_recycles_nothing(s3, synced, s3_url, prefix, direct):
    for child in synced.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    run = run_syncer(synced, s3_url, s3.endpoint_url, *RECYCLE_NOW)
    assert run.returncode == 1 and run.summary["files_recycled"] == 0
    assert run.summary["result"] == "partial"  # exit 1 and a red run in metrics and status, not "success"
    assert "empty" in run.summary["recycle_blocked"] and "is the volume mounted?" in run.stderr
    assert len(remote_objects(direct, prefix)) == len(TREE)
    # Without --recycle-after nothing is due, and nothing is refused: the run still says the source is empty.
    quiet = run_syncer(synced, s3_url, s3.endpoint_url)
    assert quiet.returncode == 0 and quiet.summary["files_scanned"] == 0 and not quiet.summary["recycle_blocked"]
    assert f"holds {len(TREE)} object(s): is the volume mounted?" in quiet.stderr


def test_empty_selection_recycles_nothing(s3, synced, s3_url, prefix, direct):
    """With --include docs/*, an emptied docs/ (an unmounted sub-volume) is an empty source: same guard."""
    shutil.rmtree(synced / "docs")
    (synced / "docs").mkdir()
    run = run_syncer(synced, s3_url, s3.endpoint_url, *RECYCLE_NOW, "--include", "docs/*")
    assert run.returncode == 1 and run.summary["files_recycled"] == 0 and "empty" in run.summary["recycle_blocked"]
    assert len(remote_objects(direct, prefix)) == len(TREE)


def test_missing_source_is_a_config_error(s3, synced, s3_url, prefix, direct):
    shutil.rmtree(synced)
    run = run_syncer(synced, s3_url, s3.endpoint_url, *RECYCLE_NOW)
    assert run.returncode == 2 and "does not exist" in run.stderr and run.stderr.count("\n") == 1
    assert len(remote_objects(direct, prefix)) == len(TREE)


def test_unreadable_source_is_a_config_error(s3, shared_src, s3_url, prefix, direct):
    shared_src.chmod(0)
    run = run_syncer(shared_src, s3_url, s3.endpoint_url, *RECYCLE_NOW, unprivileged=True)
    assert run.returncode == 2 and "cannot be read" in run.stderr, run.stderr
    assert len(remote_objects(direct, prefix)) == len(TREE)


def test_source_behind_an_unreadable_parent_is_a_config_error(s3, shared_src, s3_url, prefix, direct, tmp_path):
    """SOURCE_DIR inside a directory the syncer may not enter (a volume mounted with the wrong owner):
    a clear one-line error and exit 2, like an unreadable source, not an internal error."""
    parent = tmp_path / "locked"
    parent.mkdir()
    inner = parent / "src"
    shared_src.rename(inner)
    parent.chmod(0)
    try:
        run = run_syncer(inner, s3_url, s3.endpoint_url, *RECYCLE_NOW, unprivileged=True)
    finally:
        parent.chmod(0o755)
        inner.rename(shared_src)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "cannot be read" in run.stderr or "ermission denied" in run.stderr, run.stderr
    assert len(remote_objects(direct, prefix)) == len(TREE)


def test_unreadable_subdirectory_recycles_nothing(s3, shared_src, s3_url, prefix, direct):
    """A subtree that cannot be listed must not look deleted: its objects stay, the run says why."""
    (shared_src / "docs").chmod(0)
    (shared_src / "top.txt").unlink()  # a real deletion, due now: still not done in a run with errors
    run = run_syncer(shared_src, s3_url, s3.endpoint_url, *RECYCLE_NOW, unprivileged=True)
    assert run.returncode == 1 and run.summary["files_failed"] >= 1 and run.summary["files_recycled"] == 0
    assert "docs" in " ".join(run.summary["errors"]) and run.summary["recycle_blocked"]
    assert len(remote_objects(direct, prefix)) == len(TREE)
    (shared_src / "docs").chmod(0o755)
    let_a_second_pass()
    run = run_syncer(shared_src, s3_url, s3.endpoint_url, *RECYCLE_NOW, unprivileged=True)
    assert run.returncode == 0 and run.summary["files_recycled"] == 1
    assert_bucket_matches(direct, prefix, shared_src)


def test_unreadable_file_recycles_nothing(s3, shared_src, s3_url, prefix, direct):
    (shared_src / "db" / "dump.sql").write_bytes(b"changed and unreadable")
    (shared_src / "db" / "dump.sql").chmod(0)
    (shared_src / "top.txt").unlink()
    run = run_syncer(shared_src, s3_url, s3.endpoint_url, *RECYCLE_NOW, unprivileged=True)
    assert run.returncode == 1 and run.summary["files_failed"] == 1 and run.summary["files_recycled"] == 0
    assert "dump.sql" in run.summary["errors"][0]
    assert len(remote_objects(direct, prefix)) == len(TREE)


@pytest.mark.parametrize("cap", ["50%", "3"])
def test_max_recycle_breach_deletes_nothing_and_says_why(cap, s3, synced, s3_url, prefix, direct):
    doomed = sorted((synced / "docs").iterdir())[:5]  # 5 of 8 objects: over 50%, over 3
    for path in doomed:
        path.unlink()
    run = run_syncer(synced, s3_url, s3.endpoint_url, "--recycle-after", "0s", "--max-recycle", cap)
    assert run.returncode == 1 and run.summary["files_recycled"] == 0 and run.summary["result"] == "partial"
    assert "5 object(s)" in run.summary["recycle_blocked"] and cap in run.summary["recycle_blocked"]
    assert "nothing was deleted" in run.stderr
    assert len(remote_objects(direct, prefix)) == len(TREE)
    # Raised to fit, the same run deletes exactly those five.
    let_a_second_pass()
    run = run_syncer(synced, s3_url, s3.endpoint_url, "--recycle-after", "0s", "--max-recycle", "5")
    assert run.returncode == 0 and run.summary["files_recycled"] == 5
    assert_bucket_matches(direct, prefix, synced)


def test_dry_run_deletes_nothing(s3, synced, s3_url, prefix, direct):
    (synced / "top.txt").unlink()
    run = run_syncer(synced, s3_url, s3.endpoint_url, *RECYCLE_NOW, "--dry-run")
    assert run.returncode == 0 and "would recycle: top.txt" in run.stdout
    assert len(remote_objects(direct, prefix)) == len(TREE)


# --- clock skew ---------------------------------------------------------------------------------
# SigV4 tolerates 15 minutes of skew, so the syncer runs under libfaketime 14 minutes off, with
# --recycle-after 10m: an object uploaded just now is 14 minutes old by the client's clock.
AHEAD = ("faketime", "-f", "+14m")
BEHIND = ("faketime", "-f", "-14m")


@pytest.fixture
def faketime():
    if not shutil.which("faketime"):
        pytest.fail("faketime is missing: scripts/bootstrap.sh installs it (Debian package faketime)")


def test_client_clock_ahead_cannot_make_a_young_object_old(faketime, s3, synced, s3_url, prefix, direct):
    (synced / "top.txt").unlink()  # uploaded seconds ago
    run = run_syncer(synced, s3_url, s3.endpoint_url, "--recycle-after", "10m", wrapper=AHEAD)
    assert run.returncode == 0, run.stderr
    assert run.summary["started_at"] > time.time() + 600  # the clock really was skewed
    assert run.summary["files_recycled"] == 0 and run.summary["recycle_pending"] == 1
    assert "top.txt" in remote_objects(direct, prefix)


def test_client_clock_behind_still_recycles_what_is_due(faketime, s3, synced, s3_url, prefix, direct):
    (synced / "top.txt").unlink()
    time.sleep(2)
    run = run_syncer(synced, s3_url, s3.endpoint_url, "--recycle-after", "1s", wrapper=BEHIND)
    assert run.returncode == 0 and run.summary["files_recycled"] == 1, run.stderr
    assert_bucket_matches(direct, prefix, synced)


def test_age_comes_from_the_servers_date_header(s3, synced, s3_url, prefix, direct, proxy_factory):
    """Control for the two tests above: shift only the server's Date header 15 minutes ahead, and the
    same object is now due, so the syncer's notion of 'now' is the server's."""
    (synced / "top.txt").unlink()
    proxy = proxy_factory(date_offset_seconds=15 * 60)
    run = run_syncer(synced, s3_url, proxy.endpoint_url, "--recycle-after", "10m")
    assert run.returncode == 0 and run.summary["files_recycled"] == 1, run.stderr
    assert_bucket_matches(direct, prefix, synced)


def test_no_date_header_does_not_fall_back_to_a_skewed_client_clock(faketime, s3, synced, s3_url, prefix, direct,
                                                                     proxy_factory):
    """A server (or a proxy in front of it) that sends no Date header: the client clock, 14 minutes
    ahead, must not decide that an object uploaded seconds ago is 10 minutes old."""
    (synced / "top.txt").unlink()
    proxy = proxy_factory(strip_date=True)
    run = run_syncer(synced, s3_url, proxy.endpoint_url, "--recycle-after", "10m", wrapper=AHEAD)
    # The run itself works (exit 1, not 2: a refused deletion, not an error), and says why it deleted nothing.
    assert run.returncode == 1 and run.summary["result"] == "partial", run.stderr
    assert run.summary["files_failed"] == 0 and run.summary["errors"] == [], run.summary
    assert run.summary["files_recycled"] == 0 and "no Date header" in run.summary["recycle_blocked"], run.summary
    assert run.summary["files_scanned"] == len(TREE) - 1 and run.summary["files_unchanged"] == len(TREE) - 1
    assert sorted(remote_objects(direct, prefix)) == sorted(TREE)
