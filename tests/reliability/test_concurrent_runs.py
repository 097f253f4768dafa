"""Two runs against the same prefix at once (a manual run overlapping the CronJob's): the bucket stays
consistent. Each object is a complete version of its file, and the next run ends in sync with nothing
unfinished left behind."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.reliability.helpers import FIGURES, MiB, assert_bucket_matches, run_syncer, sync_args, write_tree
from tests.reliability.test_concurrent_change import check_nothing_recorded_wrongly

TREE = {
    "a/one.bin": 10 * MiB + 1,
    "a/two.bin": 6 * MiB + 7,
    **{f"c/{i}.txt": 500 + i for i in range(20)},
}
TRANSFER = ("--part-size", "5MiB", "--concurrency", "2", "--bwlimit", "16MiB")


@pytest.mark.parametrize("stagger", [0.0, 0.6], ids=["together", "staggered"])
def test_two_overlapping_runs(stagger, s3, src, s3_url, prefix, direct):
    contents = write_tree(src, TREE, seed=int(stagger * 10) + 1)
    (src / "old.txt").write_bytes(b"recycled by whichever run gets there")
    assert run_syncer(src, s3_url, s3.endpoint_url, "--include", "old.txt").returncode == 0
    (src / "old.txt").unlink()
    time.sleep(1.1)  # Date has whole seconds: an object of the run's first second counts as written by it
    runs = []
    for _ in range(2):
        runs.append(subprocess.Popen(
            sync_args(src, s3_url, s3.endpoint_url, *TRANSFER, "--recycle-after", "0s", "--max-recycle", "100%"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        FIGURES["syncer runs"] += 1
        time.sleep(stagger)
    for process in runs:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode in (0, 1) and "Traceback" not in stderr, stderr
    versions = {key: [data] for key, data in contents.items()}
    versions["old.txt"] = [b"recycled by whichever run gets there"]
    check_nothing_recorded_wrongly(direct, prefix, src, versions)
    final = run_syncer(src, s3_url, s3.endpoint_url, *TRANSFER, "--recycle-after", "0s", "--max-recycle", "100%")
    assert final.returncode == 0, final.stderr
    assert_bucket_matches(direct, prefix, src)
