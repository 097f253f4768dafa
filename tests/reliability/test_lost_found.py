"""An ext4 volume's root holds `lost+found`, root's, mode 0700. The syncer, run as a real non-root user
(uid 65532, the operator's default), must still end in sync: that folder is skipped, unless
`--include-lost-found` asks for it, and then it is reported as unreadable. Only the root's is fsck's.

Root reads a root-owned 0700 directory even without capabilities (it is the owner), so these runs
change the uid too (`setpriv --reuid`, see helpers.AS_NON_ROOT). The source lives in a folder of its
own that uid 65532 can reach (pytest's tmp_path is under a 0700 directory).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BUCKET
from tests.reliability.helpers import (
    AS_NON_ROOT,
    FIGURES,
    remote_objects,
    run_syncer,
    sync_args,
    write_tree,
)

TREE = {"top.txt": 10, "data/x.txt": 20, "data/lost+found/kept.txt": 30}


@pytest.fixture
def volume() -> Iterator[tuple[Path, dict[str, str]]]:
    """(source, environment): a source like an ext4 volume's root, and a TMPDIR and HOME of uid 65532's."""
    base = Path(tempfile.mkdtemp(prefix="s3backup-volume-"))
    try:
        base.chmod(0o755)
        work = base / "tmp"
        work.mkdir(mode=0o1777)
        work.chmod(0o1777)
        source = base / "src"
        source.mkdir(mode=0o755)
        write_tree(source, TREE, seed=5)
        for directory in ("data", "data/lost+found"):
            (source / directory).chmod(0o755)
        fsck = source / "lost+found"
        fsck.mkdir(mode=0o700)
        (fsck / "#1234").write_bytes(b"an orphaned inode fsck put back")
        yield source, {"TMPDIR": str(work), "HOME": str(work)}
    finally:
        shutil.rmtree(base)


def test_lost_found_at_the_root_is_skipped_for_a_non_root_user(s3, s3_url, prefix, direct, volume):
    source, env = volume
    command = [*AS_NON_ROOT, *sync_args(source, s3_url, s3.endpoint_url)]
    command.remove("-q")  # the skip is logged at info
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    FIGURES["syncer runs"] += 1
    summary = json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == 0 and summary["result"] == "success", done.stderr
    assert summary["files_failed"] == 0 and summary["errors"] == [] and summary["files_excluded"] == 0, summary
    assert summary["files_uploaded"] == len(TREE), summary
    assert done.stderr.count("skipped lost+found/ at the source root") == 1, done.stderr
    assert "Permission denied" not in done.stderr, done.stderr
    # Byte-exact, the nested lost+found included; nothing of the root's.
    stored = {key: direct.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read()
              for key in remote_objects(direct, prefix)}
    assert stored == {key: (source / key).read_bytes() for key in TREE}


def test_include_lost_found_reports_it_as_unreadable(s3, s3_url, prefix, direct, volume):
    source, env = volume
    run = run_syncer(source, s3_url, s3.endpoint_url, "--include-lost-found", non_root=True, env=env)
    assert run.returncode == 1 and run.summary["result"] == "partial", run.stderr
    assert run.summary["errors"] == ["lost+found: cannot list directory: Permission denied"], run.summary
    assert run.summary["files_failed"] == 1 and run.summary["files_uploaded"] == len(TREE), run.summary
    assert sorted(remote_objects(direct, prefix)) == sorted(TREE)


def test_a_nested_lost_found_is_data_and_fails_when_unreadable(s3, s3_url, prefix, direct, volume):
    source, env = volume
    (source / "data" / "lost+found").chmod(0o700)
    run = run_syncer(source, s3_url, s3.endpoint_url, non_root=True, env=env)
    assert run.returncode == 1 and run.summary["result"] == "partial", run.stderr
    assert run.summary["errors"] == ["data/lost+found: cannot list directory: Permission denied"], run.summary
    assert sorted(remote_objects(direct, prefix)) == ["data/x.txt", "top.txt"]


def test_what_an_earlier_run_stored_of_lost_found_is_never_recycled(s3, s3_url, prefix, direct, volume):
    """Backed up once with the flag (as root, who can read it), then skipped: out of scope, kept."""
    source, env = volume
    first = run_syncer(source, s3_url, s3.endpoint_url, "--include-lost-found")
    assert first.returncode == 0 and first.summary["files_uploaded"] == len(TREE) + 1, first.stderr
    time.sleep(1.1)  # the server's Date has whole seconds: older than this run, so due if in scope
    run = run_syncer(source, s3_url, s3.endpoint_url, "--recycle-after", "0s", "--max-recycle", "100%",
                     non_root=True, env=env)
    assert run.returncode == 0 and run.summary["files_recycled"] == 0, run.stderr
    assert run.summary["files_unchanged"] == len(TREE) and run.summary["recycle_pending"] == 0, run.summary
    assert sorted(remote_objects(direct, prefix)) == sorted([*TREE, "lost+found/#1234"])
