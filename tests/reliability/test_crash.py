"""Crash safety: SIGKILL the syncer at random points of multipart runs; a normal re-run must end in sync,
and parts already on the server are reused rather than sent again."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time

import pytest

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

#: Three multipart files (5 MiB parts) and a few small ones: ~20 MiB, about 30 requests a run.
CRASH_TREE = {
    "vm/disk-1.img": 10 * MiB + 17,
    "vm/disk-2.img": 5 * MiB + 1,
    "db/dump.sql": 5 * MiB + 5,
    **{f"etc/conf-{i}.yaml": 300 + i for i in range(5)},
}
TRANSFER = ("--part-size", "5MiB", "--concurrency", "3")


class Killer:
    """Kills the syncer when its N-th request reaches the proxy (before the server sees it): kill points
    are spread over every stage of a run, whatever the machine's load."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.target = 0
        self.seen = 0
        self.killed = False

    def arm(self, process: subprocess.Popen, target: int) -> None:
        self.process, self.target, self.seen, self.killed = process, target, 0, False

    def __call__(self, request) -> None:
        self.seen += 1
        if self.process is not None and self.seen == self.target and self.process.poll() is None:
            self.process.kill()
            self.killed = True


def kill_loop(src, s3_url, proxy_factory, client, prefix, *, kills_wanted: int, seed: int, out_dir) -> dict:
    """Rounds of: fresh content, then runs SIGKILLed at a random request until one completes normally,
    then the check. Returns the figures of the loop."""
    rng = random.Random(seed)
    killer = Killer()
    proxy = proxy_factory(on_request=killer)
    figures = {"kills": 0, "rounds": 0, "runs": 0, "bytes_reused": 0, "bytes_uploaded": 0, "resumed_uploads": 0,
               "kill_points": [],
               "leftover_uploads": set(), "leftover_markers": set()}
    while figures["kills"] < kills_wanted:
        figures["rounds"] += 1
        write_tree(src, CRASH_TREE, seed=seed * 1000 + figures["rounds"])
        completed = False
        for _attempt in range(30):
            with open(out_dir / "summary.json", "w+") as out, open(out_dir / "stderr.txt", "w+") as err:
                verbose = [arg for arg in sync_args(src, s3_url, proxy.endpoint_url, *TRANSFER) if arg != "-q"]
                process = subprocess.Popen([*verbose, "-v"], stdin=subprocess.DEVNULL, stdout=out, stderr=err)
                killer.arm(process, rng.randint(1, 30))
                figures["runs"] += 1
                FIGURES["syncer runs"] += 1
                process.wait(timeout=120)
                err.seek(0)
                figures["resumed_uploads"] += err.read().count("resuming upload of ")
                if killer.killed:
                    figures["kills"] += 1
                    figures["kill_points"].append(killer.target)
                    FIGURES["kills (SIGKILL)"] += 1
                    if figures["kills"] >= kills_wanted:
                        break
                    continue
                err.seek(0)
                assert process.returncode == 0, f"run ended with {process.returncode}: {err.read()[-3000:]}"
                out.seek(0)
                summary = json.loads(out.read())
                figures["bytes_reused"] += summary["bytes_reused"]
                figures["bytes_uploaded"] += summary["bytes_uploaded"]
                completed = True
                break
        killer.arm(None, 0)
        if not completed:  # a normal run after the kills
            final = run_syncer(src, s3_url, proxy.endpoint_url, *TRANSFER)
            assert final.returncode == 0, final.stderr
            figures["bytes_reused"] += final.summary["bytes_reused"]
            figures["bytes_uploaded"] += final.summary["bytes_uploaded"]
        # Unfinished uploads are checked after the loop, so one leftover does not hide the other rounds.
        assert_bucket_matches(client, prefix, src, uploads_allowed=True, markers_allowed=True)
        for upload in pending_uploads(client, prefix):
            figures["leftover_uploads"].add((upload["Key"], upload["UploadId"], tuple(figures["kill_points"][-3:])))
        for marker in upload_markers(client, prefix):
            figures["leftover_markers"].add((marker, tuple(figures["kill_points"][-3:])))
    FIGURES["bytes reused after kills"] += figures["bytes_reused"]
    FIGURES["bytes sent by the runs that completed after kills"] += figures["bytes_uploaded"]
    return figures


def test_sigkill_at_random_points_then_rerun(src, s3_url, prefix, direct, proxy_factory, tmp_path):
    """>= 20 SIGKILLs (seeded kill points) across rounds of a multi-file multipart run: every round ends
    in sync, and parts sent before a kill are reused by the next run."""
    figures = kill_loop(src, s3_url, proxy_factory, direct, prefix, kills_wanted=20, seed=20261126,
                        out_dir=tmp_path)
    assert figures["kills"] >= 20
    # Uploads left by a kill are resumed, not restarted (in a later killed run or in the completing one;
    # test_parts_on_the_server_are_reused_after_a_kill measures it exactly).
    assert figures["resumed_uploads"] > 0, figures
    assert not figures["leftover_uploads"], f"unfinished uploads left after a normal run: {figures['leftover_uploads']}"
    assert not figures["leftover_markers"], f"upload markers left after a normal run: {figures['leftover_markers']}"


def test_parts_on_the_server_are_reused_after_a_kill(s3, src, s3_url, prefix, direct):
    """Kill once at least two parts of the big file are on the server; the re-run sends only the rest."""
    write_tree(src, {"big.img": 30 * MiB + 3}, seed=31)
    size = (src / "big.img").stat().st_size
    process = subprocess.Popen(sync_args(src, s3_url, s3.endpoint_url, "--part-size", "5MiB", "--concurrency", "2",
                                         "--bwlimit", "10MiB"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    on_server = _wait_for_parts(direct, prefix, at_least=2, process=process)
    process.kill()
    process.wait()
    FIGURES["kills (SIGKILL)"] += 1
    run = run_syncer(src, s3_url, s3.endpoint_url, "--part-size", "5MiB")
    assert run.returncode == 0, run.stderr
    assert run.summary["bytes_reused"] >= on_server, run.summary
    assert run.summary["bytes_reused"] + run.summary["bytes_uploaded"] == size
    FIGURES["bytes reused after kills"] += run.summary["bytes_reused"]
    assert_bucket_matches(direct, prefix, src)


def test_stale_parts_are_not_reused_when_the_file_changed_in_place(s3, src, s3_url, prefix, direct):
    """Resume trusts nothing but each part's MD5: a file rewritten in place between the kill and the
    re-run, with the same size and mtime (rsync --inplace -t), must not end up with stale parts."""
    write_tree(src, {"big.img": 21 * MiB}, seed=41)
    path = src / "big.img"
    stat = path.stat()
    process = subprocess.Popen(sync_args(src, s3_url, s3.endpoint_url, "--part-size", "5MiB", "--concurrency", "2",
                                         "--bwlimit", "8MiB"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_parts(direct, prefix, at_least=2, process=process)
    process.kill()
    process.wait()
    FIGURES["kills (SIGKILL)"] += 1
    with open(path, "r+b") as handle:  # first part rewritten: same size, same inode
        handle.write(random.Random(42).randbytes(5 * MiB))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime back
    run = run_syncer(src, s3_url, s3.endpoint_url, "--part-size", "5MiB")
    assert run.returncode == 0, run.stderr
    assert run.summary["bytes_uploaded"] >= 5 * MiB  # the rewritten part was sent again
    assert_bucket_matches(direct, prefix, src)


def _wait_for_parts(client, prefix, *, at_least: int, process, timeout: float = 30) -> int:
    """Bytes of parts on the server once `at_least` parts of an upload under `prefix` are there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        for upload in pending_uploads(client, prefix):
            parts = client.list_parts(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
            if len(parts) >= at_least:
                return sum(part["Size"] for part in parts)
        time.sleep(0.05)
    pytest.fail("no parts appeared on the server")
