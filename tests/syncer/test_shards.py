"""Scale-out: `--shard I/N` and the final `s3backup recycle` step.

The pure part (which key is whose, when a sharded run may recycle) is tested without a server;
the rest runs the CLI as the pods of an Indexed Job would, against a real SeaweedFS, with every
request counted by the fault proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from s3backup_syncer.attributes_state import open_recorded_attributes
from s3backup_syncer.errors import ConfigError
from s3backup_syncer.shards import Shard, ShardResult, parse_shard, shard_of, shard_run_refusal
from s3backup_syncer.state_layout import donor_layout, state_object

from tests.conftest import BUCKET
from tests.support.bucket import assert_mirrors, objects, run_cli
from tests.support.fault_proxy import FaultProxy
from tests.syncer.test_sync import past_the_racy_window

# --- which key is whose (pure) -------------------------------------------------------------------

keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)


@given(key=keys, n=st.integers(1, 64))
def test_every_key_is_in_exactly_one_shard(key, n):
    owners = [i for i in range(n) if Shard(i, n).owns(key)]
    assert owners == [shard_of(key, n)]


def test_the_shard_of_a_key_does_not_depend_on_the_process():
    """Stable across runs and machines: a fixed hash of the key's bytes (not Python's salted hash())."""
    assert [shard_of(k, 7) for k in ("a", "db/dump.sql", "vm/disk.img", "ü/ß")] == [
        int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") % 7
        for k in ("a", "db/dump.sql", "vm/disk.img", "ü/ß")
    ]


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 16), seed=st.integers(0, 2**32))
def test_one_big_folder_is_spread_over_every_shard(n, seed):
    """A typical skewed tree: almost everything under one top-level folder, in deep subfolders."""
    rng = random.Random(seed)
    tree = [f"photos/{rng.randrange(2000, 2025)}/{rng.randrange(1, 13):02}/IMG_{i:06}.jpg" for i in range(20_000)]
    tree += [f"etc/conf-{i}" for i in range(20)]
    counts = Counter(shard_of(key, n) for key in tree)
    expected = len(tree) / n
    assert set(counts) == set(range(n))
    assert max(counts.values()) < expected * 1.15 and min(counts.values()) > expected * 0.85, counts
    in_big_folder = Counter(shard_of(key, n) for key in tree if key.startswith("photos/"))
    assert max(in_big_folder.values()) < len(tree) / n * 1.15


@pytest.mark.parametrize("text", ["0/0", "3/3", "-1/2", "a/b", "1", "1/2/3", "", "2/ 1", "0/10001"])
def test_a_bad_shard_is_refused(text):
    with pytest.raises(ConfigError, match="invalid --shard"):
        parse_shard(text)


def test_shards_keep_their_state_apart():
    assert parse_shard("0/1") == Shard() and Shard().state_dir == ".s3backup/"
    assert {Shard(i, 3).state_dir for i in range(3)} == {f".s3backup/shards/3/{i}/" for i in range(3)}
    assert Shard(1, 2).state_dir != Shard(1, 4).state_dir


def _result(index: int, count: int = 3, **changes) -> ShardResult:
    fields = dict(index=index, count=count, result="success", files_scanned=10, files_failed=0, tree_entries=30,
                  remote_objects=10, candidates=1, server_clock_known=True, own_writes_from=None)
    return ShardResult(**{**fields, **changes})


def test_a_sharded_run_recycles_only_when_every_shard_succeeded():
    assert shard_run_refusal({i: _result(i) for i in range(3)}, 3) is None
    assert "no result from shard(s) 2 of 3" in shard_run_refusal({i: _result(i) for i in range(2)}, 3)
    failed = {i: _result(i, files_failed=int(i == 1), result="partial" if i == 1 else "success") for i in range(3)}
    assert "shard(s) 1 of 3 failed" in shard_run_refusal(failed, 3)
    empty = {i: _result(i, tree_entries=0 if i == 0 else 30) for i in range(3)}
    assert "saw an empty source" in shard_run_refusal(empty, 3)


def test_state_objects_are_told_apart_by_layout():
    now = datetime.now(UTC)
    assert state_object(".s3backup/hash-cache.sqlite.gz", now).layout == 1
    assert state_object(".s3backup/uploads/abc", now).name == "uploads/abc"
    sharded = state_object(".s3backup/shards/4/3/attributes.sqlite.gz", now)
    assert (sharded.layout, sharded.name) == (4, "attributes.sqlite.gz")
    assert state_object(".s3backup/shards/4/3/uploads/x", now).layout == 4
    for other in (".s3backup/runs/r/shard-0-of-2.json", "data/hash-cache.sqlite.gz", ".s3backup/shards/4/x/y"):
        assert state_object(other, now) is None, other


def test_a_new_layout_is_seeded_from_the_newest_other_one():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    objects = [state_object(".s3backup/hash-cache.sqlite.gz", t),
               state_object(".s3backup/shards/2/0/hash-cache.sqlite.gz", t + timedelta(days=2)),
               state_object(".s3backup/shards/2/1/uploads/u", t + timedelta(days=9)),  # markers never seed
               state_object(".s3backup/shards/3/0/attributes.sqlite.gz", t + timedelta(days=1))]
    assert donor_layout(objects, 4) == 2
    assert donor_layout(objects, 2) == 3
    assert donor_layout(objects[:1], 1) is None


# --- on SeaweedFS ------------------------------------------------------------------------------------

@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    rng = random.Random(15)
    for i in range(40):  # one big folder, as a typical tree has
        write(root / "big" / f"sub{i % 4}" / f"file-{i:03}.dat", rng.randbytes(rng.randrange(0, 3000)))
    write(root / "top.txt", b"top")
    write(root / "other" / "multipart.bin", rng.randbytes(6 * 1024 * 1024))  # two parts of 5 MiB
    return root


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class Shards:
    """Runs the shards of one run in parallel, as the pods of an Indexed Job, then the final step."""

    def __init__(self, s3, s3_url: str, src: Path, tmp_path: Path, endpoint_url: str):
        self.s3, self.s3_url, self.src, self.tmp_path, self.endpoint_url = s3, s3_url, src, tmp_path, endpoint_url
        self.runs = 0

    def sync(self, n: int, *options: str, only: range | None = None, sources: dict[int, Path] | None = None,
             **cli) -> list:
        self.runs += 1
        run_id = f"run-{self.runs}"
        results: list = [None] * n

        def shard(i: int) -> None:
            source = (sources or {}).get(i, self.src)
            args = ["sync", str(source), self.s3_url, "--path-style", "--endpoint-url", self.endpoint_url,
                    "--part-size", "5MiB", "--shard", f"{i}/{n}", "--run-id", run_id, *options]
            results[i] = run_cli(args, self.s3.env(), self.tmp_path, **cli)

        threads = [threading.Thread(target=shard, args=(i,)) for i in (only or range(n))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.last_run_id = run_id
        return results

    def recycle(self, n: int, *options: str, run_id: str | None = None):
        args = ["recycle", self.s3_url, "--path-style", "--endpoint-url", self.endpoint_url,
                "--run-id", run_id or self.last_run_id, "--shards", str(n), "--summary-json", "-", *options]
        result = run_cli(args, self.s3.env(), self.tmp_path)
        result.summary = json.loads(result.stdout) if result.stdout.strip() else {}
        return result


@pytest.fixture
def proxy(s3):
    requests = []
    with FaultProxy(s3.endpoint_url, on_request=requests.append) as running:
        running.seen = requests
        yield running


@pytest.fixture
def shards(s3, s3_url, src, tmp_path, proxy):
    return Shards(s3, s3_url, src, tmp_path, proxy.endpoint_url)


def data_writes(proxy, prefix: str) -> Counter:
    """Uploads of data (not of s3backup's state) seen by the proxy, by key: PutObject and UploadPart."""
    written: Counter = Counter()
    for request in proxy.seen:
        key = request.path.removeprefix(f"/{BUCKET}/{prefix}/")
        if request.operation in ("PutObject", "UploadPart") and not key.startswith(".s3backup/"):
            written[(key, request.query.get("partNumber"))] += 1
    return written


def total(results: list, field: str) -> int:
    return sum(r.summary[field] for r in results)


def test_n_shards_give_exactly_the_source_each_file_uploaded_once(shards, src, s3_client, prefix, proxy):
    """Fails if a file is uploaded by two shards (or twice), missed by all, if a shard's hash cache
    is not its own (a rerun would re-read files), or if restore cannot see a shard's recorded mtimes."""
    past_the_racy_window()  # hashes of files changed just before are rightly not trusted later
    first = shards.sync(3)
    assert [r.code for r in first] == [0, 0, 0], [r.stderr for r in first]
    assert_mirrors(s3_client, BUCKET, prefix, src)
    files = len(list(p for p in src.rglob("*") if p.is_file()))
    assert total(first, "files_uploaded") == files
    assert total(first, "files_scanned") == files and all(r.summary["files_scanned"] for r in first)
    writes = data_writes(proxy, prefix)
    assert set(writes.values()) == {1}, writes  # each file (each part of it) sent once, by one shard
    assert {key for key, _ in writes} == {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert writes[("other/multipart.bin", "1")] == writes[("other/multipart.bin", "2")] == 1
    state = {key for key in _all_keys(s3_client, prefix) if key.startswith(".s3backup/shards/")}
    assert {f".s3backup/shards/3/{i}/hash-cache.sqlite.gz" for i in range(3)} <= state

    # A touched file (same content, new mtime) is recorded in its shard's state; restore's reader sees it.
    touched = src / "big" / "sub1" / "file-001.dat"
    os.utime(touched, (1_600_000_000, 1_600_000_000))
    proxy.seen.clear()
    second = shards.sync(3)
    assert [r.code for r in second] == [0, 0, 0], [r.stderr for r in second]
    assert total(second, "files_uploaded") == 0 and not data_writes(proxy, prefix)
    assert total(second, "bytes_hashed") == touched.stat().st_size, "a shard re-read a file its cache knew"
    assert total(second, "remote_objects") == files
    assert_mirrors(s3_client, BUCKET, prefix, src)


def _all_keys(client, prefix: str) -> set[str]:
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        keys |= {item["Key"][len(prefix) + 1:] for item in page.get("Contents", [])}
    return keys


def test_a_deletion_is_recycled_exactly_once_by_the_final_step(shards, src, s3_client, prefix, proxy):
    """Fails if a shard deletes anything itself, if the final step misses a shard's candidates or
    deletes another's keys, or if the same run can be recycled twice."""
    assert [r.code for r in shards.sync(3)] == [0, 0, 0]
    gone = ["big/sub0/file-000.dat", "big/sub1/file-005.dat", "big/sub2/file-010.dat", "top.txt"]
    assert len({shard_of(key, 3) for key in gone}) > 1, "the deletions should span shards"
    for key in gone:
        (src / key).unlink()

    run = shards.sync(3, "--recycle-after", "0s", "--max-recycle", "100%")
    assert [r.code for r in run] == [0, 0, 0], [r.stderr for r in run]
    assert total(run, "files_recycled") == 0
    assert set(gone) <= set(objects(s3_client, BUCKET, prefix, download=False)), "a shard deleted by itself"

    final = shards.recycle(3, "--max-recycle", "100%")
    assert final.code == 0, final.stderr
    assert final.summary["files_recycled"] == len(gone)
    assert_mirrors(s3_client, BUCKET, prefix, src)
    results_left = {k for k in _all_keys(s3_client, prefix) if k.startswith(f".s3backup/runs/{shards.last_run_id}/")}
    assert not results_left, "the final step left its run's results behind"

    again = shards.recycle(3, "--max-recycle", "100%")
    assert again.code == 1 and again.summary["files_recycled"] == 0
    assert "no result from shard(s) 0, 1, 2 of 3" in again.summary["recycle_blocked"]
    later = shards.sync(3, "--recycle-after", "0s", "--max-recycle", "100%")
    assert [r.code for r in later] == [0, 0, 0]
    assert shards.recycle(3, "--max-recycle", "100%").summary["files_recycled"] == 0


def test_a_failing_shard_blocks_recycling_everywhere(shards, src, s3_client, prefix):
    """Fails if the final step recycles the keys of healthy shards while one shard failed or never ran."""
    assert [r.code for r in shards.sync(3)] == [0, 0, 0]
    victims = {}
    for path in sorted(src.rglob("*.dat")):
        victims.setdefault(shard_of(path.relative_to(src).as_posix(), 3), path)
    assert set(victims) == {0, 1, 2}
    for path in victims.values():
        path.unlink()
    unreadable = next(f"new-{i}" for i in range(1000) if shard_of(f"new-{i}", 3) == 1)
    write(src / unreadable, b"cannot be read").chmod(0)

    run = shards.sync(3, "--recycle-after", "0s", "--max-recycle", "100%", without_capabilities=True)
    assert [r.code for r in run] == [0, 1, 0], [r.stderr for r in run]
    final = shards.recycle(3, "--max-recycle", "100%")
    assert final.code == 1 and final.summary["files_recycled"] == 0
    assert "shard(s) 1 of 3 failed" in final.summary["recycle_blocked"]
    remaining = objects(s3_client, BUCKET, prefix, download=False)
    assert all(path.relative_to(src).as_posix() in remaining for path in victims.values())

    (src / unreadable).unlink()
    partial = shards.sync(3, "--recycle-after", "0s", "--max-recycle", "100%", only=range(2))  # shard 2 never ran
    assert [r.code for r in partial[:2]] == [0, 0]
    final = shards.recycle(3, "--max-recycle", "100%")
    assert final.code == 1 and "no result from shard(s) 2 of 3" in final.summary["recycle_blocked"]
    assert len(objects(s3_client, BUCKET, prefix, download=False)) == len(remaining)

    # The same run id again, and shard 1 ends before writing its result (its source is not a directory):
    # the success its earlier attempt left must not vouch for this attempt.
    shards.runs -= 1
    again = shards.sync(3, "--recycle-after", "0s", "--max-recycle", "100%")
    assert [r.code for r in again] == [0, 0, 0], [r.stderr for r in again]
    shards.runs -= 1
    crashed = shards.sync(3, "--recycle-after", "0s", "--max-recycle", "100%", only=range(1, 2),
                          sources={1: src / "top.txt"})
    assert crashed[1].code == 2
    final = shards.recycle(3, "--max-recycle", "100%")
    assert final.code == 1 and "no result from shard(s) 1 of 3" in final.summary["recycle_blocked"]
    assert len(objects(s3_client, BUCKET, prefix, download=False)) == len(remaining)


def test_the_whole_prefix_guards_apply_to_the_sum_of_the_shards(shards, src, s3_client, prefix):
    """`--max-recycle` caps the total over all shards; each shard alone would be under it."""
    assert [r.code for r in shards.sync(3)] == [0, 0, 0]
    doomed = sorted(src.rglob("*.dat"))[:6]
    for path in doomed:
        path.unlink()
    assert [r.code for r in shards.sync(3, "--recycle-after", "0s")] == [0, 0, 0]
    final = shards.recycle(3, "--max-recycle", "5")
    assert final.code == 1 and final.summary["files_recycled"] == 0
    assert "6 object(s) are due for recycling, over the cap of 5" in final.summary["recycle_blocked"]


def test_changing_n_uploads_nothing_and_reads_nothing_again(shards, src, s3_client, prefix, proxy, s3, s3_url,
                                                            tmp_path):
    """Fails if a new N re-sends content that is already there (the listing's ETags decide), if its
    shards re-read files the old N's hash caches knew, or if a file's recorded mtime is lost when the
    final step drops the old N's state (the new shards' state must have been built from it)."""
    past_the_racy_window()  # hashes of files changed just before are rightly not trusted later
    assert [r.code for r in shards.sync(2)] == [0, 0]
    touched = src / "big" / "sub2" / "file-002.dat"
    os.utime(touched, (1_500_000_000, 1_500_000_000))  # recorded in the state, not in the object
    past_the_racy_window()  # (the utime moved the ctime)
    assert total(shards.sync(2), "bytes_hashed") == touched.stat().st_size
    proxy.seen.clear()
    for n in (3, 5):
        run = shards.sync(n)
        assert [r.code for r in run] == [0] * n, [r.stderr for r in run]
        assert total(run, "files_uploaded") == 0 and total(run, "files_unchanged") == total(run, "files_scanned")
        assert total(run, "bytes_hashed") == 0, "a new shard re-read files the old N's caches knew"
        assert shards.recycle(n).code == 0
        layouts = {key.split("/")[2] for key in _all_keys(s3_client, prefix) if key.startswith(".s3backup/shards/")}
        assert layouts == {str(n)}, "the final step left the state of an earlier N"
        assert_mirrors(s3_client, BUCKET, prefix, src)  # the touched file's mtime came along
    whole = run_cli(["sync", str(src), s3_url, "--path-style", "--endpoint-url", proxy.endpoint_url,
                     "--part-size", "5MiB"], s3.env(), tmp_path)
    assert whole.code == 0 and whole.summary["files_uploaded"] == 0 and whole.summary["bytes_hashed"] == 0
    assert not data_writes(proxy, prefix)
    assert not any(key.startswith(".s3backup/shards/") for key in _all_keys(s3_client, prefix))
    assert_mirrors(s3_client, BUCKET, prefix, src)


def test_one_pod_with_an_empty_source_blocks_recycling(shards, src, s3_client, prefix, tmp_path):
    """Fails if a shard whose volume was not mounted gets its keys recycled because the others saw files."""
    assert [r.code for r in shards.sync(3)] == [0, 0, 0]
    (src / "top.txt").unlink()
    unmounted = tmp_path / "unmounted"
    unmounted.mkdir()
    run = shards.sync(3, "--recycle-after", "0s", "--max-recycle", "100%", sources={1: unmounted})
    assert [r.code for r in run] == [0, 0, 0], [r.stderr for r in run]
    assert run[1].summary["files_scanned"] == 0
    final = shards.recycle(3, "--max-recycle", "100%")
    assert final.code == 1 and final.summary["files_recycled"] == 0
    assert "shard(s) 1 saw an empty source" in final.summary["recycle_blocked"]
    assert "top.txt" in objects(s3_client, BUCKET, prefix, download=False)


@pytest.mark.parametrize(("options", "message"), [
    (["--shard", "3/3", "--run-id", "r"], "invalid --shard '3/3': I must be less than N"),
    (["--shard", "1/0", "--run-id", "r"], "invalid --shard '1/0': N must be"),
    (["--shard", "x", "--run-id", "r"], "invalid --shard 'x'"),
    (["--shard", "1/2"], "--shard 1/2 needs --run-id ID"),
    (["--shard", "1/2", "--run-id", "no/slash"], "invalid --run-id"),
])
def test_bad_shard_options_are_one_line_errors(s3, s3_url, src, tmp_path, options, message):
    result = run_cli(["sync", str(src), s3_url, "--path-style", *options], s3.env(), tmp_path)
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize(("options", "message"), [
    (["--shards", "0", "--run-id", "r"], "invalid shard count '0'"),
    (["--shards", "1", "--run-id", "r"], "invalid shard count '1': 2 to"),
    (["--shards", "2"], "the following arguments are required: --run-id"),
    (["--shards", "2", "--run-id", "../x"], "invalid --run-id"),
])
def test_bad_recycle_options_are_one_line_errors(s3, s3_url, tmp_path, options, message):
    result = run_cli(["recycle", s3_url, "--path-style", *options], s3.env(), tmp_path)
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


VERSIONED = "s3backup-shards-versioned"


@pytest.fixture(scope="module")
def versioned(s3):
    s3.create_bucket(VERSIONED)
    client = s3.client()
    client.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    return client


def test_restore_reads_every_shards_attributes_as_of_a_time(s3, versioned, src, tmp_path, proxy, prefix):
    """Fails if the reader restore uses misses a shard's recorded attributes, or, with `as_of`, does not
    take each state as it was then (across a change of N whose final step deleted the old N's state)."""
    shards = Shards(s3, f"s3://{VERSIONED}/{prefix}", src, tmp_path, proxy.endpoint_url)
    key, path = "big/sub3/file-003.dat", src / "big" / "sub3" / "file-003.dat"
    etag = None

    def recorded(**when):
        with open_recorded_attributes(versioned, VERSIONED, prefix + "/", **when) as reader:
            found = reader.lookup(key, etag)
        return found.mtime_ns if found else None

    assert [r.code for r in shards.sync(2)] == [0, 0]
    etag = versioned.head_object(Bucket=VERSIONED, Key=f"{prefix}/{key}")["ETag"]
    os.utime(path, (1_500_000_000, 1_500_000_000))
    assert [r.code for r in shards.sync(2)] == [0, 0]
    assert recorded() == 1_500_000_000 * 10**9
    time.sleep(1.5)  # LastModified has whole seconds
    between = datetime.now(UTC)
    time.sleep(1.5)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    assert [r.code for r in shards.sync(3)] == [0, 0, 0]
    assert shards.recycle(3).code == 0  # drops the 2-shard state
    assert recorded() == 1_600_000_000 * 10**9
    assert recorded(as_of=between) == 1_500_000_000 * 10**9
