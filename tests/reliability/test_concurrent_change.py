"""Files changed while a run reads them are never recorded as synced in a state that does not match them.

"Recorded as synced" means an object whose `s3backup-mtime` equals the local file's mtime (what the next
run trusts with `--compare size`, and what a restore would restore), or a hash-cache entry that lets the
next run skip the file. After a run with changes under its feet:
- an object is always some complete version the file really had (never a torn mix);
- an object whose recorded mtime is the file's current mtime has the file's current content;
- a plain re-run makes the bucket identical to the source.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time

import pytest
from s3backup_syncer.hashcache import RACY_WINDOW_NS

from tests.conftest import BUCKET
from tests.reliability.helpers import (
    FIGURES,
    META_MTIME,
    MiB,
    assert_bucket_matches,
    pending_uploads,
    remote_objects,
    run_syncer,
    sync_args,
    write_tree,
)

MUTATIONS = ("append", "truncate", "replace", "delete", "rewrite")


def mutate(path, kind: str, rng: random.Random) -> bytes | None:
    """Change `path` the way users do; returns its new content (None when deleted)."""
    if kind == "append":
        with open(path, "ab") as handle:
            handle.write(rng.randbytes(4096))
    elif kind == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    elif kind == "replace":  # a new file renamed over the old one (editors, rsync without --inplace)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(rng.randbytes(path.stat().st_size))
        os.replace(temporary, path)
    elif kind == "delete":
        path.unlink()
        return None
    elif kind == "rewrite":  # same size, in place (databases, rsync --inplace)
        with open(path, "r+b") as handle:
            handle.write(rng.randbytes(path.stat().st_size))
    return path.read_bytes()


def check_nothing_recorded_wrongly(client, prefix, src, versions: dict[str, list[bytes]]) -> None:
    for key, _item in remote_objects(client, prefix).items():
        response = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")
        content = response["Body"].read()
        assert content in versions[key], f"{key}: the object is no version the file ever had (torn)"
        path = src / key
        if path.exists() and response["Metadata"].get(META_MTIME) == str(path.stat().st_mtime_ns):
            assert content == path.read_bytes(), f"{key}: recorded as synced, but the content differs"
        FIGURES["objects verified"] += 1


def test_files_changed_during_the_run(s3, src, s3_url, prefix, direct):
    """Multipart files mutated while their upload is in flight (found in ListMultipartUploads), small
    files mutated at random moments: nothing wrong recorded, and a re-run fixes everything."""
    rng = random.Random(7)
    sizes = {f"big/{kind}.bin": 6 * MiB + 1000 for kind in MUTATIONS}
    sizes.update({f"small/{kind}-{i}.txt": 2000 + i for kind in MUTATIONS for i in range(3)})
    contents = write_tree(src, sizes, seed=8)
    versions = {key: [data] for key, data in contents.items()}
    process = subprocess.Popen(
        sync_args(src, s3_url, s3.endpoint_url, "--part-size", "5MiB", "--concurrency", "2", "--bwlimit", "12MiB"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    FIGURES["syncer runs"] += 1

    def mutate_small() -> None:
        for key in sorted(k for k in sizes if k.startswith("small/")):
            time.sleep(rng.uniform(0, 0.15))
            new = mutate(src / key, key.split("/")[1].split("-")[0], rng)
            if new is not None:
                versions[key].append(new)

    small = threading.Thread(target=mutate_small)
    small.start()
    waiting = {key for key in sizes if key.startswith("big/")}
    deadline = time.monotonic() + 30
    while waiting and time.monotonic() < deadline and process.poll() is None:
        in_flight = {upload["Key"][len(prefix) + 1:] for upload in pending_uploads(direct, prefix)}
        for key in sorted(waiting & in_flight):
            new = mutate(src / key, key.split("/")[1].split(".")[0], rng)
            if new is not None:
                versions[key].append(new)
            waiting.discard(key)
        time.sleep(0.02)
    small.join()
    _stdout, stderr = process.communicate(timeout=120)
    assert not waiting, f"uploads never seen in flight: {waiting}"
    assert process.returncode == 1 and "Traceback" not in stderr, stderr
    check_nothing_recorded_wrongly(direct, prefix, src, versions)

    final = run_syncer(src, s3_url, s3.endpoint_url, "--part-size", "5MiB", "--recycle-after", "0s",
                       "--max-recycle", "100%")
    assert final.returncode == 0, final.stderr
    assert_bucket_matches(direct, prefix, src)


def test_in_place_rewrite_with_mtime_restored_during_upload(s3, src, s3_url, prefix, direct):
    """rsync --inplace -t, or a tool that restores mtimes: the content changes mid-upload, size and mtime
    stay the same (only ctime tells). The torn object must not be recorded with the file's mtime."""
    contents = write_tree(src, {"vm.img": 15 * MiB}, seed=9)
    path = src / "vm.img"
    before = path.stat()
    process = subprocess.Popen(
        sync_args(src, s3_url, s3.endpoint_url, "--part-size", "5MiB", "--concurrency", "1", "--bwlimit", "6MiB"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    FIGURES["syncer runs"] += 1
    deadline = time.monotonic() + 30
    while not _parts_on_server(direct, prefix):  # part 1 was read before the change, part 3 will be after
        assert time.monotonic() < deadline and process.poll() is None, "the upload never started"
        time.sleep(0.02)
    new = random.Random(10).randbytes(15 * MiB)
    with open(path, "r+b") as handle:
        handle.write(new)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    stdout, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    # The change is seen (ctime moved): that file fails, the run is partial, and it says why.
    summary = json.loads(stdout.splitlines()[-1])
    assert process.returncode == 1 and summary["result"] == "partial", (process.returncode, stderr)
    assert summary["files_failed"] == 1 and summary["files_uploaded"] == 0, summary
    assert summary["errors"] == ["vm.img: file changed while it was uploaded; it will be retried next run"], summary
    check_nothing_recorded_wrongly(direct, prefix, src, {"vm.img": [contents["vm.img"], new]})
    final = run_syncer(src, s3_url, s3.endpoint_url, "--part-size", "5MiB")
    assert final.returncode == 0, final.stderr
    assert_bucket_matches(direct, prefix, src)


@pytest.mark.parametrize("kind", MUTATIONS)
def test_change_between_hashing_and_the_cache(kind, s3, src, s3_url, prefix, direct):
    """A file changed right after a run: the hash cache must not vouch for the new content."""
    write_tree(src, {"data.bin": 3 * MiB, "other.txt": 10}, seed=11)
    assert run_syncer(src, s3_url, s3.endpoint_url).returncode == 0
    new = mutate(src / "data.bin", kind, random.Random(12))
    if new is None:
        time.sleep(1.1)  # the server's clock has whole seconds: an object of this second is "written this run"
    run = run_syncer(src, s3_url, s3.endpoint_url, "--recycle-after", "0s", "--max-recycle", "100%")
    assert run.returncode == 0, run.stderr
    assert run.summary["files_recycled"] == (1 if new is None else 0)
    assert_bucket_matches(direct, prefix, src)


def test_a_cache_entry_is_not_trusted_when_the_file_is_newer_than_its_hash(s3, src, s3_url, prefix, direct):
    """The racy-entry rule end to end (its cases are in tests/syncer/test_hashcache.py). Under faketime
    14 minutes behind, every file's ctime is after the moment the syncer hashed it, as a write just after
    the hash would be on a filesystem with coarse timestamps: the next run must read the file again."""
    if not shutil.which("faketime"):
        pytest.fail("faketime is missing: scripts/bootstrap.sh installs it (Debian package faketime)")
    write_tree(src, {"data.bin": 3000}, seed=13)
    time.sleep(RACY_WINDOW_NS / 1e9 + 0.1)  # by the real clock, the file is old enough to be trusted
    behind = ("faketime", "-f", "-14m")
    for _ in range(2):
        run = run_syncer(src, s3_url, s3.endpoint_url, wrapper=behind)
        assert run.returncode == 0, run.stderr
    assert run.summary["files_unchanged"] == 1 and run.summary["bytes_hashed"] == 3000, run.summary
    trusted = run_syncer(src, s3_url, s3.endpoint_url)  # the real clock again: this run's entry is trusted
    assert trusted.returncode == 0 and trusted.summary["bytes_hashed"] == 3000, trusted.summary
    again = run_syncer(src, s3_url, s3.endpoint_url)
    assert again.returncode == 0 and again.summary["bytes_hashed"] == 0, again.summary
    assert_bucket_matches(direct, prefix, src)


def _parts_on_server(client, prefix) -> int:
    return sum(
        len(client.list_parts(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", []))
        for upload in pending_uploads(client, prefix)
    )
