"""The syncer end to end against a real SeaweedFS: what lands in the bucket, and what does not."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from s3backup_syncer.crc import crc32_header
from s3backup_syncer.hashcache import RACY_WINDOW_NS

from tests.conftest import BUCKET
from tests.support.bucket import assert_mirrors, objects, pending_uploads, run_cli
from tests.support.fault_proxy import FaultProxy, Request

MiB = 1024 * 1024


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    return root


@pytest.fixture
def sync(s3, s3_url, src, tmp_path):
    """`sync(*options)` runs `s3backup sync SRC s3://bucket/prefix` as a user would."""

    def run(*options: str, source: Path | None = None, env: dict | None = None):
        args = ["sync", str(source or src), s3_url, "--path-style", *options]
        return run_cli(args, {**s3.env(), **(env or {})}, tmp_path)

    return run


def write(path: Path, data: bytes, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def assert_stored_crc32(s3_client, key: str, data: bytes, part_size: int | None = None) -> None:
    """The object carries the CRC32 s3backup sent: of the content, or COMPOSITE, of its parts' CRC32s."""
    stored = s3_client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED").get("ChecksumCRC32")
    if part_size is None:
        expected = crc32_header(zlib.crc32(data))
    else:
        parts = [data[start:start + part_size] for start in range(0, len(data), part_size)]
        expected = f"{crc32_header(zlib.crc32(b''.join(zlib.crc32(p).to_bytes(4, 'big') for p in parts)))}-{len(parts)}"
    assert stored == expected, key


def past_the_racy_window() -> None:
    """The hash cache never trusts an entry of a file changed within RACY_WINDOW_NS of its hashing
    (hashcache.py): tests that expect a re-run to read nothing let the files age that long first."""
    time.sleep(RACY_WINDOW_NS / 1e9 + 0.1)


# --- the daily job -------------------------------------------------------------------------------

def test_first_run_uploads_everything_with_metadata_and_a_rerun_reads_nothing(sync, src, s3_client, prefix):
    write(src / "db" / "dump.sql", random_bytes(300_000, 1))
    write(src / "vm" / "disk.img", random_bytes(20 * MiB, 2))  # 3 parts of 8 MiB
    write(src / "a-b", b"dash")
    write(src / "a.b", b"dot")
    write(src / "a" / "b", b"slash: S3 order puts this after a-b and a.b")
    write(src / "empty", b"")

    past_the_racy_window()
    first = sync()
    assert first.code == 0, first.stderr
    assert first.summary["files_uploaded"] == 6
    assert first.summary["bytes_uploaded"] == 300_000 + 20 * MiB + 4 + 3 + 43
    stored = assert_mirrors(s3_client, BUCKET, prefix, src)
    assert stored["vm/disk.img"].etag.endswith("-3")
    assert "-" not in stored["db/dump.sql"].etag
    assert_stored_crc32(s3_client, f"{prefix}/db/dump.sql", (src / "db" / "dump.sql").read_bytes())
    assert_stored_crc32(s3_client, f"{prefix}/vm/disk.img", (src / "vm" / "disk.img").read_bytes(), 8 * MiB)

    second = sync()
    assert second.code == 0, second.stderr
    assert second.summary["files_uploaded"] == 0
    assert second.summary["files_unchanged"] == 6
    assert second.summary["bytes_hashed"] == 0, "an unchanged file was read again"
    assert second.summary["remote_objects"] == 6


def test_changed_files_are_uploaded_again(sync, src, s3_client, prefix):
    same_size = write(src / "same-size.bin", random_bytes(1000, 1))
    grows = write(src / "grows.log", b"line 1\n")
    big = write(src / "big.img", random_bytes(12 * MiB, 3))
    assert sync().code == 0

    write(same_size, random_bytes(1000, 2), mtime=time.time() + 5)
    write(grows, b"line 1\nline 2\n")
    data = bytearray(big.read_bytes())
    data[9 * MiB] ^= 0xFF  # one byte in the second part
    write(big, bytes(data), mtime=time.time() + 5)

    result = sync()
    assert result.code == 0, result.stderr
    assert result.summary["files_uploaded"] == 3
    assert_mirrors(s3_client, BUCKET, prefix, src)


def test_same_size_same_mtime_but_new_content_is_still_caught(sync, src, s3_client, prefix):
    """A stale cache must never cause a wrong skip: content rewritten, mtime put back (ctime moves)."""
    path = write(src / "sneaky.bin", random_bytes(5000, 1), mtime=1_700_000_000)
    assert sync().code == 0
    write(path, random_bytes(5000, 2), mtime=1_700_000_000)
    result = sync()
    assert result.summary["files_uploaded"] == 1
    assert_mirrors(s3_client, BUCKET, prefix, src)


def test_a_corrupt_hash_cache_costs_a_rehash_never_a_wrong_skip(sync, src, s3_client, prefix):
    write(src / "a.bin", random_bytes(4000, 1))
    past_the_racy_window()
    assert sync().code == 0
    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/.s3backup/hash-cache.sqlite.gz", Body=b"garbage")
    result = sync()
    assert result.code == 0
    assert "hash cache unreadable" in result.stderr
    assert result.summary["files_unchanged"] == 1
    assert result.summary["bytes_hashed"] == 4000
    assert sync().summary["bytes_hashed"] == 0  # rebuilt


def test_multipart_with_an_explicit_part_size(sync, src, s3_client, prefix):
    write(src / "big.bin", random_bytes(11 * MiB + 7, 4))
    past_the_racy_window()
    result = sync("--part-size", "5MiB", "--concurrency", "2")
    assert result.code == 0, result.stderr
    stored = assert_mirrors(s3_client, BUCKET, prefix, src)
    assert stored["big.bin"].etag.endswith("-3")
    again = sync("--part-size", "5MiB")
    assert again.summary["files_unchanged"] == 1 and again.summary["bytes_hashed"] == 0
    # Another part size setting later still recognises the object without uploading it.
    other = sync("--part-size", "16MiB", "--no-hash-cache")
    assert other.summary["files_uploaded"] == 0 and other.summary["files_unchanged"] == 1


def test_size_compare_never_reads_files(sync, src):
    write(src / "a.bin", random_bytes(3000, 1))
    assert sync("--compare", "size").code == 0
    write(src / "a.bin", random_bytes(3000, 2))
    result = sync("--compare", "size")
    assert result.summary["files_unchanged"] == 1
    assert result.summary["bytes_hashed"] == 0


# --- objects other tools uploaded ------------------------------------------------------------------

def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in the test environment (pip install the [test] extra)")
    return str(path)


def test_objects_uploaded_by_aws_cli_are_recognised(s3, sync, src, s3_url, s3_client, prefix, tmp_path):
    write(src / "small.txt", b"hello from aws\n")
    write(src / "big.bin", random_bytes(17 * MiB, 5))  # aws-cli: 8 MiB parts -> 3 parts
    env = {**os.environ, **s3.env(), "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    subprocess.run([_tool("aws"), "s3", "sync", str(src), s3_url, "--endpoint-url", s3.endpoint_url,
                    "--only-show-errors"], env=env, check=True, capture_output=True)
    assert objects(s3_client, BUCKET, prefix, download=False)["big.bin"].etag.endswith("-3")

    past_the_racy_window()
    result = sync()
    assert result.code == 0, result.stderr
    assert result.summary["files_uploaded"] == 0
    assert result.summary["files_unchanged"] == 2
    assert sync().summary["bytes_hashed"] == 0


def test_objects_uploaded_by_rclone_are_recognised(s3, sync, src, s3_url, s3_client, prefix):
    write(src / "one.bin", random_bytes(13 * MiB, 6))  # forced multipart, 5 MiB chunks -> 3 parts
    write(src / "two.txt", b"rclone")
    env = {**os.environ, "RCLONE_CONFIG": "/dev/null"}
    remote = (f":s3,provider=Other,access_key_id={s3.access_key},secret_access_key={s3.secret_key},"
              f"endpoint='{s3.endpoint_url}',force_path_style=true:{s3_url.removeprefix('s3://')}")
    subprocess.run([_tool("rclone"), "copy", str(src), remote, "--s3-upload-cutoff", "5Mi",
                    "--s3-chunk-size", "5Mi"], env=env, check=True, capture_output=True)
    assert objects(s3_client, BUCKET, prefix, download=False)["one.bin"].etag.endswith("-3")

    result = sync()
    assert result.code == 0, result.stderr
    assert result.summary["files_uploaded"] == 0
    assert result.summary["files_unchanged"] == 2


# --- recycling ---------------------------------------------------------------------------------------

def test_recycling_waits_for_the_age_and_never_happens_without_the_option(sync, src, s3_client, prefix):
    write(src / "keep.txt", b"keep")
    gone = write(src / "gone.txt", b"gone")
    assert sync().code == 0
    gone.unlink()

    no_option = sync("--max-recycle", "100%")
    assert no_option.summary["files_recycled"] == 0
    young = sync("--recycle-after", "1h", "--max-recycle", "100%")
    assert young.summary["files_recycled"] == 0 and young.summary["recycle_pending"] == 1
    assert "gone.txt" in objects(s3_client, BUCKET, prefix, download=False)

    due = sync("--recycle-after", "0s", "--max-recycle", "100%")
    assert due.code == 0, due.stderr
    assert due.summary["files_recycled"] == 1
    assert sorted(objects(s3_client, BUCKET, prefix, download=False)) == ["keep.txt"]


def test_an_empty_source_recycles_nothing(sync, src, s3_client, prefix):
    for i in range(3):
        write(src / f"f{i}", b"x")
    assert sync().code == 0
    for path in src.iterdir():
        path.unlink()
    result = sync("--recycle-after", "0s", "--max-recycle", "100%")
    assert result.code == 1
    assert "source is empty" in result.summary["recycle_blocked"]
    assert len(objects(s3_client, BUCKET, prefix, download=False)) == 3


def test_the_recycle_cap_deletes_nothing_when_exceeded(sync, src, s3_client, prefix):
    for i in range(10):
        write(src / f"f{i}", b"x")
    assert sync().code == 0
    for i in range(6):
        (src / f"f{i}").unlink()
    result = sync("--recycle-after", "0s")  # default cap: 50% of 10
    assert result.code == 1
    assert "over the cap of 5" in result.summary["recycle_blocked"]
    assert "over the cap" in result.stderr
    assert len(objects(s3_client, BUCKET, prefix, download=False)) == 10
    assert sync("--recycle-after", "0s", "--max-recycle", "6").summary["files_recycled"] == 6


def test_excluded_remote_objects_are_never_recycled(sync, src, s3_client, prefix):
    write(src / "a.sql", b"a")
    write(src / "b.tmp", b"b")
    assert sync().code == 0
    (src / "b.tmp").unlink()
    result = sync("--exclude", "*.tmp", "--recycle-after", "0s", "--max-recycle", "100%")
    assert result.summary["files_recycled"] == 0
    assert sorted(objects(s3_client, BUCKET, prefix, download=False)) == ["a.sql", "b.tmp"]


# --- changes during a run, kills -------------------------------------------------------------------

def test_a_file_modified_during_upload_is_failed_not_recorded(sync, src, s3_client, prefix):
    path = write(src / "live.db", random_bytes(24 * MiB, 7))
    stop = threading.Event()

    def scribble() -> None:
        time.sleep(0.8)
        while not stop.is_set():
            with open(path, "r+b") as f:
                f.seek(1000)
                f.write(os.urandom(16))
            time.sleep(0.2)

    thread = threading.Thread(target=scribble)
    thread.start()
    try:
        result = sync("--bwlimit", "8MiB", "--concurrency", "1")
    finally:
        stop.set()
        thread.join()
    assert result.code == 1
    assert result.summary["files_failed"] == 1
    assert "changed while it was" in result.summary["errors"][0]
    assert "live.db" not in objects(s3_client, BUCKET, prefix, download=False)
    assert pending_uploads(s3_client, BUCKET, prefix) == []
    assert sync().code == 0
    assert_mirrors(s3_client, BUCKET, prefix, src)


def test_a_run_killed_mid_upload_is_resumed_without_resending_parts(s3, s3_url, src, s3_client, prefix, tmp_path, sync):
    write(src / "huge.img", random_bytes(40 * MiB, 8))  # 5 parts of 8 MiB
    command = [sys.executable, "-m", "s3backup_syncer.cli", "sync", str(src), s3_url, "--path-style",
               "--bwlimit", "16MiB", "--concurrency", "1"]
    process = subprocess.Popen(command, env={**os.environ, **s3.env()}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until at least two parts are on the server
        uploads = pending_uploads(s3_client, BUCKET, prefix)
        if uploads:
            parts = s3_client.list_parts(Bucket=BUCKET, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"])
            if len(parts.get("Parts", [])) >= 2:
                break
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(pending_uploads(s3_client, BUCKET, prefix)) == 1

    result = sync()
    assert result.code == 0, result.stderr
    assert result.summary["bytes_reused"] >= 16 * MiB
    assert result.summary["bytes_uploaded"] + result.summary["bytes_reused"] == 40 * MiB
    assert pending_uploads(s3_client, BUCKET, prefix) == []
    assert_mirrors(s3_client, BUCKET, prefix, src)
    assert_stored_crc32(s3_client, f"{prefix}/huge.img", (src / "huge.img").read_bytes(), 8 * MiB)  # parts of 2 runs


def test_a_server_that_refuses_checksums_gets_none_and_every_file_still_goes_up(s3, sync, src, s3_client, prefix):
    """The CRC32 is for restores to come; a server that refuses it (as some S3-compatible ones refuse botocore's
    checksums) costs one refused request per upload already on its way (here one at a time), then none is sent."""
    for number in range(3):
        write(src / f"small-{number}.bin", random_bytes(100_000, number))
    write(src / "big.img", random_bytes(17 * MiB, 12))  # 3 parts

    def carries_a_checksum(request: Request) -> bool:
        return any(name.lower().startswith("x-amz-checksum") for name, _ in request.headers)

    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.inject("400", match=carries_a_checksum, times=1000)
        result = sync("--endpoint-url", proxy.endpoint_url, "--concurrency", "1")
        refused = 1000 - proxy.rules[0].times

    assert result.code == 0, result.stderr
    assert refused == 1
    assert_mirrors(s3_client, BUCKET, prefix, src)
    for key in ("small-0.bin", "small-1.bin", "small-2.bin", "big.img"):
        head = s3_client.head_object(Bucket=BUCKET, Key=f"{prefix}/{key}", ChecksumMode="ENABLED")
        assert "ChecksumCRC32" not in head, key


def test_an_unfinished_upload_of_a_changed_file_is_aborted_not_reused(s3, s3_url, src, s3_client, prefix, sync):
    path = write(src / "f.img", random_bytes(20 * MiB, 9))
    upload = s3_client.create_multipart_upload(Bucket=BUCKET, Key=f"{prefix}/f.img")
    s3_client.upload_part(Bucket=BUCKET, Key=f"{prefix}/f.img", UploadId=upload["UploadId"], PartNumber=1,
                          Body=b"z" * (8 * MiB))
    write(path, random_bytes(20 * MiB, 10))
    result = sync()
    assert result.code == 0, result.stderr
    assert result.summary["bytes_reused"] == 0
    assert_mirrors(s3_client, BUCKET, prefix, src)


# --- names and file types --------------------------------------------------------------------------

def test_awkward_names_round_trip(sync, src, s3_client, prefix):
    names = ["with space.txt", "ünïcødé/日本語.txt", "100%.txt", "a+b.txt", "hash#tag.txt", "what?.txt",
             "semi;colon&amp.txt", "x" * 200 + "/" + "y" * 200 + "/z.txt"]
    for i, name in enumerate(names):
        write(src / name, f"content {i}".encode())
    result = sync()
    assert result.code == 0, result.stderr
    assert_mirrors(s3_client, BUCKET, prefix, src)
    assert sync().summary["files_unchanged"] == len(names)


def test_sparse_files_and_symlinks(sync, src, s3_client, prefix):
    sparse = src / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(9 * MiB)
        f.seek(4 * MiB)
        f.write(b"data in the middle")
    write(src / "target.txt", b"target")
    (src / "link.txt").symlink_to(src / "target.txt")
    (src / "dirlink").symlink_to(src)  # a loop, if it were followed
    result = sync()
    assert result.code == 0, result.stderr
    stored = assert_mirrors(s3_client, BUCKET, prefix, src)
    assert sorted(stored) == ["sparse.img", "target.txt"]  # symlinks are not followed by default


def test_follow_symlinks_follows_files_and_reports_loops(sync, src, s3_client, prefix):
    write(src / "target.txt", b"target")
    (src / "link.txt").symlink_to(src / "target.txt")
    (src / "loop").symlink_to(src)
    result = sync("--follow-symlinks")
    stored = objects(s3_client, BUCKET, prefix)
    assert stored["link.txt"].size == 6
    assert result.code == 1 and "symlink loop" in result.summary["errors"][0]


def test_include_exclude_and_dry_run(sync, src, s3_client, prefix):
    write(src / "db" / "a.sql", b"a")
    write(src / "db" / "a.sql.tmp", b"tmp")
    write(src / "cache" / "x.sql", b"cached")
    dry = sync("--include", "*.sql", "--exclude", "cache", "--dry-run")
    assert dry.code == 0
    assert "would upload (new): db/a.sql" in dry.stdout
    assert objects(s3_client, BUCKET, prefix, download=False) == {}
    real = sync("--include", "*.sql", "--exclude", "cache")
    assert sorted(objects(s3_client, BUCKET, prefix, download=False)) == ["db/a.sql"]
    assert real.summary["files_excluded"] == 1


# --- bad input: one line, the right exit code, nothing lost ----------------------------------------

def _one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(("options", "expected"), [
    (["--recycle-after", "30x"], "invalid duration '30x'"),
    (["--part-size", "1MiB"], "invalid --part-size"),
    (["--concurrency", "0"], "invalid --concurrency"),
    (["--max-recycle", "lots"], "invalid --max-recycle"),
    (["--compare", "sha1"], "invalid choice: 'sha1'"),
])
def test_bad_options(sync, src, options, expected):
    result = sync(*options)
    assert result.code == 2
    assert expected in _one_line_error(result)


def test_bad_destinations(s3, src, tmp_path):
    for url, expected in [("bucket/x", "expected s3://BUCKET"), ("s3://Bad_Bucket/x", "invalid bucket name"),
                          ("s3://no-such-bucket-here/x", "bucket 'no-such-bucket-here' does not exist")]:
        result = run_cli(["sync", str(src), url, "--path-style"], s3.env(), tmp_path)
        assert result.code == 2, (url, result.stderr)
        assert expected in _one_line_error(result)


def test_missing_source_and_wrong_credentials(sync, s3, src, tmp_path):
    missing = sync(source=tmp_path / "nope")
    assert missing.code == 2
    assert "does not exist" in _one_line_error(missing)

    write(src / "f", b"x")
    wrong = sync(env={"AWS_SECRET_ACCESS_KEY": "wrong-secret-value"})
    assert wrong.code == 2
    line = _one_line_error(wrong)
    assert "denied" in line
    assert "wrong-secret-value" not in wrong.stderr + str(wrong.summary)
    assert wrong.summary["result"] == "error"

    unreachable = sync(env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, )
    assert unreachable.code == 2
    assert "cannot reach the S3 endpoint" in _one_line_error(unreachable)


def test_an_unreadable_file_fails_that_file_not_the_run(s3, s3_url, s3_client, prefix, src, tmp_path):
    write(src / "ok.txt", b"fine")
    write(src / "secret.txt", b"no entry").chmod(0o000)
    result = run_cli(["sync", str(src), s3_url, "--path-style"], s3.env(), tmp_path, without_capabilities=True)
    assert result.code == 1, result.stderr
    assert result.summary["files_failed"] == 1 and result.summary["files_uploaded"] == 1
    assert "secret.txt: cannot read: Permission denied" in result.summary["errors"][0]
    assert sorted(objects(s3_client, BUCKET, prefix, download=False)) == ["ok.txt"]


def test_summary_json_to_stdout(s3, s3_url, src, tmp_path):
    write(src / "f", b"x")
    result = run_cli(["sync", str(src), s3_url, "--path-style", "--summary-json", "-", "-q"], s3.env(), tmp_path)
    import json

    summary = json.loads(result.stdout)
    assert summary["result"] == "success" and summary["files_uploaded"] == 1 and summary["exit_code"] == 0
    assert set(summary) >= {"files_scanned", "bytes_scanned", "files_unchanged", "files_recycled", "files_failed",
                            "duration_seconds", "bytes_hashed", "remote_objects", "remote_bytes"}


def test_an_unchanged_rerun_opens_no_file(s3, s3_url, src, tmp_path):
    """Proof by permissions: the re-run has no right to read any file (mode 000, no capabilities) and still succeeds."""
    for i in range(5):
        write(src / f"dir{i % 2}" / f"file{i}.bin", random_bytes(10_000 + i, i))
    write(src / "big.img", random_bytes(17 * MiB, 11))
    for path in src.rglob("*"):  # before the first run: a chmod moves ctime, which voids the cache
        if path.is_file():
            path.chmod(0o000)
    past_the_racy_window()
    first = run_cli(["sync", str(src), s3_url, "--path-style"], s3.env(), tmp_path)  # root reads anything
    assert first.code == 0, first.stderr
    second = run_cli(["sync", str(src), s3_url, "--path-style"], s3.env(), tmp_path, without_capabilities=True)
    assert second.code == 0, second.stderr
    assert second.summary["files_unchanged"] == 6 and second.summary["bytes_hashed"] == 0


def test_a_prefix_of_many_pages_is_listed_whole_folder_by_folder(sync, src, s3_client, prefix):
    """More than one page (1,000 keys) switches to listing each top-level folder in parallel.
    Fails if any key is missed (it would be uploaded again), counted twice, or if the state folder
    or a folder's neighbours in byte order (`a-b`, `a.b`, `a/b`) get mixed up."""
    names = [f"top-{i:04d}.txt" for i in range(400)]  # keys with no folder: listed at the top level
    names += [f"d{i % 7}/sub{i % 3}/f{i:04d}" for i in range(900)]
    names += ["a-b", "a.b", "a/b", "a/c", "a0", "x/y/double", "ü/é", "sp ace/f"]
    for i, name in enumerate(names):
        write(src / name, str(i).encode())
    first = sync()
    assert first.code == 0 and first.summary["files_uploaded"] == len(names), first.stderr

    again = sync()
    assert again.code == 0, again.stderr
    assert again.summary["files_unchanged"] == len(names) and again.summary["files_uploaded"] == 0
    assert again.summary["remote_objects"] == len(names)
    assert again.summary["remote_bytes"] == sum(len(str(i)) for i in range(len(names)))

    for name in ("top-0007.txt", "d3/sub0/f0003", "a/b", "x/y/double"):
        (src / name).unlink()
    recycled = sync("--recycle-after", "0s")
    assert recycled.code == 0 and recycled.summary["files_recycled"] == 4, recycled.stderr
    left = set(objects(s3_client, BUCKET, prefix, download=False))
    assert len(left) == len(names) - 4 and "a/c" in left and "a/b" not in left and "a-b" in left
