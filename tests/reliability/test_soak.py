"""The soak: rounds of random changes to a tree, each synced through every fault class at once, with a
random SIGKILL now and then, then re-runs until one succeeds; after every round the bucket must equal
the source. `S3BACKUP_SOAK_RUNS` rounds (default 3, what CI runs); e.g. 50 for a long soak."""

from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

from tests.reliability.helpers import FIGURES, MiB, assert_bucket_matches, run_syncer, sync_args, write_tree
from tests.reliability.test_concurrent_change import mutate

FAULT_RATES = {"500": 0.03, "500-after": 0.02, "503": 0.04, "403": 0.0, "reset-request": 0.03,
               "reset-response": 0.03, "truncate": 0.03, "slow": 0.01, "corrupt-request": 0.02}
TRANSFER = ("--part-size", "5MiB", "--concurrency", "3", "--recycle-after", "0s", "--max-recycle", "100%")
ENV = {"S3BACKUP_READ_TIMEOUT": "2"}
ROUNDS = int(os.environ.get("S3BACKUP_SOAK_RUNS", "3"))


def random_change(src, rng: random.Random, round_number: int) -> None:
    """Add, change or delete a few files; now and then a multipart-sized one."""
    existing = sorted(p for p in src.rglob("*") if p.is_file())
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        if choice < 0.5 or not existing:
            size = rng.choice([0, 1, 100, 5000, 70_000, 6 * MiB + rng.randint(0, 4 * MiB)])
            key = f"d{rng.randint(0, 3)}/r{round_number}-{rng.randint(0, 10**6)}.bin"
            write_tree(src, {key: size}, seed=rng.randint(0, 10**9))
        else:
            path = rng.choice(existing)
            if path.exists():
                # An empty file truncated or replaced by another empty one keeps its content and gets a new
                # mtime only: that case has its own test (test_metadata.py), the soak is about faults.
                kinds = ["append", "truncate", "replace", "delete", "rewrite"] if path.stat().st_size else ["append"]
                mutate(path, rng.choice(kinds), rng)


@pytest.mark.soak
@pytest.mark.timeout(max(300, 15 * ROUNDS))  # a round takes 2-5 s; the tree (and its check) grows each round
def test_soak(s3, src, s3_url, prefix, direct, proxy_factory, tmp_path):
    rounds = ROUNDS
    rng = random.Random(int(os.environ.get("S3BACKUP_SOAK_SEED", "1126")))
    proxy = proxy_factory(rates=FAULT_RATES, stall_seconds=3, seed=rng.randint(0, 10**9))
    write_tree(src, {"keep/anchor.txt": 10}, seed=1)
    faults_before = 0
    for round_number in range(rounds):
        random_change(src, rng, round_number)
        if rng.random() < 0.5:  # a run killed somewhere in the middle
            process = subprocess.Popen(sync_args(src, s3_url, proxy.endpoint_url, *TRANSFER),
                                       env={**os.environ, **ENV}, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            FIGURES["syncer runs"] += 1
            time.sleep(rng.uniform(0.2, 1.5))
            if process.poll() is None:
                process.kill()
                FIGURES["kills (SIGKILL)"] += 1
            process.wait()
        for _attempt in range(6):
            run = run_syncer(src, s3_url, proxy.endpoint_url, *TRANSFER, env=ENV)
            assert run.returncode in (0, 1), run.stderr
            if run.returncode == 0 and not run.summary["recycle_pending"]:
                break
            if run.summary.get("recycle_pending"):  # written less than a second ago (the Date header has
                time.sleep(1.1)                     # whole seconds): recycled by a later run, not this one
        assert run.returncode == 0 and not run.summary["recycle_pending"], run.stderr
        try:
            assert_bucket_matches(direct, prefix, src)
        except AssertionError as failure:
            raise AssertionError(f"round {round_number}: {failure}\nlast run: {run.stderr}\n"
                                 f"faults of the round: {proxy.log[faults_before:]}") from None
        faults_before = len(proxy.log)
        FIGURES["soak rounds"] += 1
    assert proxy.injected > 0
