"""Restore and verify end to end against a real SeaweedFS: what lands on disk, and what is reported."""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from s3backup_syncer import download
from s3backup_syncer.crc import crc32_header
from s3backup_syncer.file_writes import direct_io_suits
from s3backup_syncer.local_s3 import LocalS3
from s3backup_syncer.remote import make_s3_client
from s3backup_syncer.restore_plan import TEMP_PREFIX

from tests.conftest import BUCKET
from tests.support.bucket import CliResult
from tests.support.fault_proxy import FaultProxy, Request
from tests.support.page_cache import resident_bytes
from tests.syncer.test_sync import past_the_racy_window

MiB = 1024 * 1024
SYNCER = [sys.executable, "-m", "s3backup_syncer.cli"]


def cli(args: list[str], env: dict[str, str], tmp_path: Path, timeout: float = 180) -> CliResult:
    """`s3backup ARGS` in a subprocess, with its JSON summary read back."""
    summary_path = tmp_path / f"summary-{os.urandom(4).hex()}.json"
    process = subprocess.run([*SYNCER, *args, "--summary-json", str(summary_path)], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=timeout)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() and summary_path.stat().st_size else {}
    return CliResult(process.returncode, summary, process.stdout, process.stderr)


def write(path: Path, data: bytes, mtime_ns: int | None = None, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def tree(root: Path) -> dict[str, tuple[int, str, int, int]]:
    """key -> (size, md5, mtime_ns, permission bits) of every regular file under `root`."""
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            st = path.stat()
            found[path.relative_to(root).as_posix()] = (
                st.st_size, hashlib.md5(path.read_bytes()).hexdigest(), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return found


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    return root


@pytest.fixture
def run(s3, tmp_path):
    def go(*args: str, endpoint: str | None = None) -> CliResult:
        env = {**s3.env(), **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {})}
        return cli([*args, "--path-style"], env, tmp_path)

    return go


def sample_tree(src: Path) -> dict[str, bytes]:
    rng = random.Random(7)
    files = {
        "plain.txt": b"hello\n",
        "empty": b"",
        "a-b": b"dash", "a.b": b"dot", "a/b": b"slash",
        "spaces and ü ñ 日本/é +%#?&=.bin": rng.randbytes(3000),
        "multi/part.bin": rng.randbytes(12 * MiB + 5),  # 3 parts of 5 MiB with --part-size 5MiB
    }
    for number, (key, data) in enumerate(files.items()):
        write(src / key, data, mtime_ns=1_600_000_000_123_456_789 + number * 1_000_000_007,
              mode=0o640 if number % 2 else 0o755)
    sparse = src / "disk" / "sparse.img"  # 24 MiB: 1 MiB of data, 20 MiB hole, 3 MiB of data
    sparse.parent.mkdir()
    with open(sparse, "wb") as handle:
        handle.write(rng.randbytes(MiB))
        handle.seek(21 * MiB)
        handle.write(rng.randbytes(3 * MiB))
    os.utime(sparse, ns=(1_650_000_000_000_000_001, 1_650_000_000_000_000_001))
    return files


# --- round trips ----------------------------------------------------------------------------------

def test_round_trip_restores_content_mtimes_modes_and_holes(run, src, tmp_path, s3_url):
    sample_tree(src)
    assert run("sync", str(src), s3_url, "--part-size", "5MiB").code == 0
    target = tmp_path / "restored" / "deep"  # created, parents too

    result = run("restore", s3_url, str(target))

    assert result.code == 0, result.stderr
    sparse = target / "disk" / "sparse.img"
    cached = resident_bytes(sparse)  # before the tree is compared, which reads it
    if direct_io_suits(str(target)):
        assert cached == 0, "a large object's blocks went to the disk directly (O_DIRECT)"
    else:
        assert cached > 0, "no O_DIRECT on this filesystem: the blocks went through the page cache"
    assert tree(target) == tree(src)
    assert sparse.stat().st_blocks * 512 <= 6 * MiB, "the 20 MiB run of zeros came back as a hole"
    assert result.summary["files_restored"] == len(tree(src))
    assert result.summary["files_unverified"] == 0
    assert not temp_files(target)

    again = run("restore", s3_url, str(target))
    assert (again.code, again.summary["files_restored"], again.summary["files_unchanged"]) == (0, 0, len(tree(src)))


def test_a_touch_recorded_in_the_state_comes_back_without_a_rewrite(s3, run, src, tmp_path, s3_url, s3_client,
                                                                    prefix):
    """A touch/chmod is recorded in s3backup's state, not by rewriting the object; restore applies it, also when
    it restores only a folder of the backup: the state is then the backup's, higher up (fails if only the
    folder's own `.s3backup/` is looked for). A folder in between that may not be listed is passed over (fails if
    that refusal loses the state: mtimes and modes would then come from the metadata)."""
    path = write(src / "db" / "sub" / "dump.sql", b"same content", mtime_ns=1_600_000_000_000_000_000, mode=0o600)
    write(src / "other.txt", b"other")
    assert run("sync", str(src), s3_url).code == 0
    before = s3_client.head_object(Bucket=BUCKET, Key=f"{prefix}/db/sub/dump.sql")
    os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    path.chmod(0o640)
    assert run("sync", str(src), s3_url).code == 0
    after = s3_client.head_object(Bucket=BUCKET, Key=f"{prefix}/db/sub/dump.sql")
    assert after["LastModified"] == before["LastModified"] and after["Metadata"] == before["Metadata"]

    whole = run("restore", s3_url, str(tmp_path / "back"))
    folder = run("restore", s3_url + "/db/", str(tmp_path / "back-db"))
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.inject("403", operation="ListObjectsV2", match=lambda request: request.query.get("prefix") == (
            f"{prefix}/db/.s3backup/"))
        deeper = run("restore", s3_url + "/db/sub/", str(tmp_path / "back-sub"), endpoint=proxy.endpoint_url)
        assert proxy.faults["403"] == 1

    for result in (whole, folder, deeper):
        assert result.code == 0 and "cannot be read" not in result.stderr, result.stderr
    for restored in ("back/db/sub/dump.sql", "back-db/sub/dump.sql", "back-sub/dump.sql"):
        st = (tmp_path / restored).stat()
        assert (st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (1_700_000_000_123_456_789, 0o640), restored
    assert [p.name for p in (tmp_path / "back-sub").iterdir()] == ["dump.sql"]


def test_state_folder_is_never_restored_and_filters_apply(run, src, tmp_path, s3_url):
    write(src / "keep" / "a.sql", b"a")
    write(src / "keep" / "b.tmp", b"b")
    write(src / "other" / "c.sql", b"c")
    assert run("sync", str(src), s3_url).code == 0  # writes the hash cache under .s3backup/
    target = tmp_path / "t"

    result = run("restore", s3_url, str(target), "--include", "*.sql", "--exclude", "other")

    assert result.code == 0, result.stderr
    assert sorted(tree(target)) == ["keep/a.sql"]
    assert not (target / ".s3backup").exists()


def test_objects_written_by_aws_cli_and_rclone_restore(s3, s3_client, tmp_path, prefix, run, s3_url):
    rng = random.Random(3)
    by_aws = write(tmp_path / "up" / "aws.bin", rng.randbytes(9 * MiB + 1))  # multipart, 8 MiB parts
    by_rclone = write(tmp_path / "up" / "rclone.bin", rng.randbytes(11 * MiB + 3),  # multipart, 5 MiB chunks
                      mtime_ns=1_500_000_000_250_000_000)
    env = {**os.environ, **s3.env()}
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "aws"), "s3", "cp", str(by_aws), f"{s3_url}/aws.bin",
                    "--endpoint-url", s3.endpoint_url], env=env, check=True, capture_output=True)
    rclone_env = {**env, "RCLONE_CONFIG_T_TYPE": "s3", "RCLONE_CONFIG_T_PROVIDER": "SeaweedFS",
                  "RCLONE_CONFIG_T_ENDPOINT": s3.endpoint_url, "RCLONE_CONFIG_T_ENV_AUTH": "true"}
    subprocess.run([str(bin_dir / "rclone"), "copyto", str(by_rclone), f"t:{BUCKET}/{prefix}/rclone.bin",
                    "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"], env=rclone_env, check=True,
                   capture_output=True)
    for key, parts in (("aws.bin", 2), ("rclone.bin", 3)):
        assert s3_client.head_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["ETag"].endswith(f'-{parts}"'), key
    target = tmp_path / "t"

    result = run("restore", s3_url, str(target))

    assert result.code == 0, result.stderr
    assert (target / "aws.bin").read_bytes() == by_aws.read_bytes()
    assert (target / "rclone.bin").read_bytes() == by_rclone.read_bytes()
    assert (target / "rclone.bin").stat().st_mtime_ns == 1_500_000_000_250_000_000  # rclone's mtime metadata
    assert result.summary["files_unverified"] == 0


# --- present files ---------------------------------------------------------------------------------

def test_a_different_file_is_left_alone_unless_overwrite(run, src, tmp_path, s3_url):
    write(src / "same-size", b"remote!")
    write(src / "other-size", b"remote")
    write(src / "identical", b"same")
    assert run("sync", str(src), s3_url).code == 0
    target = tmp_path / "t"
    write(target / "same-size", b"local!!")
    write(target / "other-size", b"local, longer")
    write(target / "identical", b"same")
    write(target / "only-local", b"kept")

    dry = run("restore", s3_url, str(target), "--overwrite", "--dry-run")
    refused = run("restore", s3_url, str(target))

    assert dry.code == 0 and "would replace: same-size" in dry.stdout
    assert refused.code == 1
    assert refused.summary["files_conflicting"] == 2 and refused.summary["files_unchanged"] == 1
    assert "--overwrite" in refused.stderr
    assert (target / "same-size").read_bytes() == b"local!!"
    assert (target / "other-size").read_bytes() == b"local, longer"

    replaced = run("restore", s3_url, str(target), "--overwrite")

    assert replaced.code == 0, replaced.stderr
    assert (target / "same-size").read_bytes() == b"remote!"
    assert (target / "other-size").read_bytes() == b"remote"
    assert (target / "only-local").read_bytes() == b"kept"  # restore never deletes


# --- interruption and faults -----------------------------------------------------------------------

class KillAt:
    """SIGKILLs the restore when the N-th of the GetObjects that `match` reaches the proxy."""

    def __init__(self, nth: int, match: Callable[[Request], bool]):
        self.nth, self.match, self.seen, self.process, self.killed = nth, match, 0, None, False
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> None:
        if request.operation != "GetObject" or self.process is None or not self.match(request):
            return
        with self.lock:
            self.seen += 1
            if self.seen == self.nth:
                self.process.kill()
                self.killed = True


def test_a_killed_restore_leaves_only_checked_files_and_resumes(s3, run, src, tmp_path, s3_url):
    """Killed while the large file's last range is asked for: each request waits 0.1 s at the proxy, and with
    `--concurrency 2` its 5 ranges go out in three rounds, so the small files (sent at the start) are in place
    a round before and the large one is not. Fails if a file carries its final name with other content or
    attributes than the source's, or if the resumed restore does not finish the tree from what is there."""
    rng = random.Random(11)
    for number in range(12):
        write(src / f"f{number:02}.bin", rng.randbytes(rng.randrange(1, 300_000)))
    write(src / "big.bin", rng.randbytes(40 * MiB))  # 5 parts of 8 MiB: 5 ranged GETs
    assert run("sync", str(src), s3_url).code == 0
    target = tmp_path / "t"
    killer = KillAt(nth=5, match=lambda request: request.path.endswith("/big.bin"))
    with FaultProxy(s3.endpoint_url, on_request=killer, delay_seconds=0.1) as proxy:
        env = {**os.environ, **s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
        killer.process = subprocess.Popen([*SYNCER, "restore", s3_url, str(target), "--path-style",
                                           "--concurrency", "2"], env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        assert killer.process.wait(timeout=120) == -9 and killer.killed

    expected = tree(src)
    finished = {key: found for key, found in tree(target).items()
                if not key.rpartition("/")[2].startswith(TEMP_PREFIX)}
    assert 0 < len(finished) < len(expected) and "big.bin" not in finished
    for key, found in finished.items():
        assert found == expected[key], f"{key} carries its final name unchecked"

    resumed = run("restore", s3_url, str(target))

    assert resumed.code == 0, resumed.stderr
    assert tree(target) == expected
    assert resumed.summary["files_unchanged"] == len(finished)
    assert not temp_files(target)


def test_ranges_of_several_parts_are_checked_by_the_parts_md5s_taken_on_the_way(s3, tmp_path, prefix, monkeypatch):
    """A large object is fetched in ranges of several parts each (here RANGES_AT_LEAST is lowered, so that a
    40 MiB object of 8 MiB parts comes in ranges of 16, 16 and 8 MiB). The parts' MD5s taken on the way must give
    the multipart ETag; were they joined wrongly, the check would raise ContentMismatch."""
    monkeypatch.setattr(download, "RANGES_AT_LEAST", 2)
    data = random.Random(3).randbytes(40 * MiB)
    client = s3.client()
    key = f"{prefix}/big.bin"
    parts = [data[start:start + 8 * MiB] for start in range(0, len(data), 8 * MiB)]
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etags = [client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=part)["ETag"]
             for number, part in enumerate(parts, 1)]
    client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, 1)]})
    etag = client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    assert etag.endswith("-5")
    ranges: list[str] = []

    def note_range(request: Request) -> None:
        if request.operation == "GetObject":
            ranges.append(next(value for name, value in request.headers if name.lower() == "range"))

    with FaultProxy(s3.endpoint_url, on_request=note_range) as proxy:
        proxied = make_s3_client(endpoint_url=proxy.endpoint_url, region=s3.region, path_style=True,
                                 access_key=s3.access_key, secret_key=s3.secret_key)
        downloader = download.Downloader(proxied, 2)
        try:
            fetched = downloader.fetch(download.ObjectRef(BUCKET, key, len(data), etag), str(tmp_path / "big.bin"),
                                       etag_keys=(8 * MiB,))
        finally:
            downloader.close()

    assert fetched.verified and (tmp_path / "big.bin").read_bytes() == data
    assert sorted(ranges) == sorted(f"bytes={start}-{min(start + 16 * MiB, len(data)) - 1}"
                                    for start in range(0, len(data), 16 * MiB))


def _upload_with_a_crc32(client, key: str, data: bytes, kind: str) -> None:
    """Upload `data` with a CRC32 checksum, as boto3 does by default since 1.36: whole (`single`), or in 5 MiB parts,
    COMPOSITE (`composite`) or FULL_OBJECT (`full-object`)."""
    def crc32_of(body: bytes) -> str:
        return crc32_header(zlib.crc32(body))

    if kind == "single":
        client.put_object(Bucket=BUCKET, Key=key, Body=data, ChecksumCRC32=crc32_of(data))
        return
    full = {"ChecksumType": "FULL_OBJECT"} if kind == "full-object" else {}
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key, ChecksumAlgorithm="CRC32", **full)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MiB), 1):
        body = data[start:start + 5 * MiB]
        answer = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body,
                                    ChecksumCRC32=crc32_of(body))
        parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumCRC32": crc32_of(body)})
    client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts},
                                     **({"ChecksumCRC32": crc32_of(data), **full} if full else {}))


@pytest.mark.parametrize("kind", ["single", "composite", "full-object"])
def test_a_large_object_stored_with_a_crc32_is_checked_by_it_and_a_flipped_byte_is_caught(s3, run, tmp_path, s3_url,
                                                                                          prefix, kind):
    """Its ranges take CRC32s instead of MD5s. Were they combined wrongly, the file would be checked by its ETag
    instead (`files_checked_by_crc32` 0); were a mismatch let through, the flipped byte would be restored."""
    data = random.Random(kind).randbytes(20 * MiB + 12345)  # 5 parts of 5 MiB, the last one short; in ranges
    client = s3.client()
    _upload_with_a_crc32(client, f"{prefix}/big.bin", data, kind)
    stored = client.head_object(Bucket=BUCKET, Key=f"{prefix}/big.bin", ChecksumMode="ENABLED")["ChecksumCRC32"]
    assert stored.endswith("-5") == (kind == "composite")

    clean = run("restore", s3_url, str(tmp_path / "clean"))

    assert clean.code == 0, clean.stderr
    assert (tmp_path / "clean" / "big.bin").read_bytes() == data
    assert clean.summary["files_checked_by_crc32"] == 1 and clean.summary["files_unverified"] == 0

    with FaultProxy(s3.endpoint_url) as proxy:  # every range of every attempt
        proxy.inject("corrupt-response", match=lambda request: request.operation == "GetObject", times=1000)
        faulty = run("restore", s3_url, str(tmp_path / "faulty"), endpoint=proxy.endpoint_url)

    assert faulty.code == 1 and faulty.summary["files_failed"] == 1 and faulty.summary["files_checked_by_crc32"] == 0
    assert not (tmp_path / "faulty" / "big.bin").exists() and not temp_files(tmp_path / "faulty")


def test_faults_during_restore_never_leave_a_wrong_file_under_its_name(s3, run, src, tmp_path, s3_url, prefix):
    rng = random.Random(5)
    for number in range(20):
        write(src / "d" / f"{number:02}.bin", rng.randbytes(rng.randrange(1, 200_000)))
    write(src / "big.bin", rng.randbytes(33 * MiB))
    assert run("sync", str(src), s3_url).code == 0
    target = tmp_path / "t"

    def getting(key: str):
        return lambda r: r.operation == "GetObject" and r.path.endswith(f"/{prefix}/{key}")

    rates = {"truncate": 0.05, "reset-response": 0.05, "500": 0.05, "503": 0.05}  # retried, each request
    with FaultProxy(s3.endpoint_url, rates=rates, seed=2,
                    scope=lambda request: request.operation == "GetObject") as proxy:
        # every attempt, the event loop's (small_gets.py) and a worker's: never placed
        proxy.inject("corrupt-response", match=getting("d/03.bin"), times=100)
        proxy.inject("corrupt-response", match=getting("big.bin"), times=2)  # a range: the file is tried again
        proxy.inject("truncate", match=getting("d/05.bin"), times=1)  # taken up where it stopped
        faulty = run("restore", s3_url, str(target), endpoint=proxy.endpoint_url)
        rules_left = [rule.times for rule in proxy.rules]

    assert rules_left[1:] == [0, 0] and 100 - rules_left[0] >= 3, rules_left  # a worker tries a file 3 times
    expected = tree(src)
    restored = tree(target)
    assert "d/03.bin" not in restored
    assert "big.bin" in restored and "d/05.bin" in restored, faulty.summary["errors"]
    for key, entry in restored.items():
        assert entry == expected[key], f"{key} carries its final name with the wrong content"
    assert faulty.code == 1 and faulty.summary["files_failed"] >= 1
    assert any(error.startswith("d/03.bin: ") for error in faulty.summary["errors"])

    clean = run("restore", s3_url, str(target))

    assert clean.code == 0, clean.stderr
    assert tree(target) == expected
    assert not temp_files(target)


# --- point in time ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def versioned(s3: LocalS3) -> str:
    name = "s3backup-versioned"
    s3.create_bucket(name)
    s3.client().put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def test_as_of_restores_the_prefix_as_it_was(run, src, tmp_path, versioned, prefix):
    url = f"s3://{versioned}/{prefix}"
    write(src / "changed", b"first version")
    write(src / "deleted", b"gone later")
    write(src / "steady", b"never changes")
    assert run("sync", str(src), url).code == 0
    time.sleep(1.5)  # versions are dated to the second
    moment = time.time()
    time.sleep(1.5)
    write(src / "changed", b"second version, longer")
    (src / "deleted").unlink()
    write(src / "new", b"born later")
    assert run("sync", str(src), url, "--recycle-after", "0s").code == 0
    then = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))

    past = run("restore", url, str(tmp_path / "past"), "--as-of", then)
    now = run("restore", url, str(tmp_path / "now"))

    assert past.code == 0, past.stderr
    assert {k: (tmp_path / "past" / k).read_bytes() for k in tree(tmp_path / "past")} == {
        "changed": b"first version", "deleted": b"gone later", "steady": b"never changes"}
    assert past.summary["as_of"] == then
    assert now.code == 0
    assert sorted(tree(tmp_path / "now")) == ["changed", "new", "steady"]


def test_as_of_on_an_unversioned_bucket_is_a_one_line_error(run, tmp_path, s3_url):
    result = run("restore", s3_url, str(tmp_path / "t"), "--as-of", "1d")
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and "versioned bucket" in result.stderr


# --- verify ----------------------------------------------------------------------------------------

def test_verify_reports_each_difference(run, src, s3_client, s3_url, prefix):
    write(src / "fine", b"unchanged")
    write(src / "overwritten", b"original")
    write(src / "deleted", b"will be deleted remotely")
    write(src / "big", random.Random(1).randbytes(9 * MiB))  # multipart, ETag from the hash cache
    past_the_racy_window()  # else the cache rightly distrusts what it hashed
    assert run("sync", str(src), s3_url).code == 0
    clean = run("verify", str(src), s3_url)
    assert (clean.code, clean.stdout, clean.summary["files_same"]) == (0, "", 4), clean.stderr
    assert clean.summary["bytes_hashed"] == 0  # every local ETag came from the hash cache

    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/overwritten", Body=b"ORIGINAL")  # same size
    s3_client.delete_object(Bucket=BUCKET, Key=f"{prefix}/deleted")
    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/extra", Body=b"nobody's")
    result = run("verify", str(src), s3_url)

    assert result.code == 1
    assert sorted(result.stdout.splitlines()) == ["differs overwritten", "extra extra", "missing deleted"]
    assert (result.summary["differs"], result.summary["missing"], result.summary["extra"]) == (1, 1, 1)


def test_verify_without_hash_cache_hashes_and_agrees(run, src, s3_url):
    write(src / "a", b"a" * 1000)
    write(src / "b", random.Random(2).randbytes(9 * MiB))
    assert run("sync", str(src), s3_url, "--no-hash-cache").code == 0
    result = run("verify", str(src), s3_url)
    assert (result.code, result.stdout) == (0, "")
    assert result.summary["bytes_hashed"] == 1000 + 9 * MiB


def test_scrub_catches_a_server_returning_other_bytes_under_the_same_etag(s3, run, src, s3_url, prefix):
    for number in range(6):
        write(src / f"f{number}", random.Random(number).randbytes(50_000))
    assert run("sync", str(src), s3_url).code == 0
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.inject("corrupt-response", match=lambda r: r.operation == "GetObject" and r.path.endswith(
            f"/{prefix}/f3"), times=10)
        listing_only = run("verify", str(src), s3_url, endpoint=proxy.endpoint_url)
        scrub = run("verify", str(src), s3_url, "--sample", "100", endpoint=proxy.endpoint_url)

    assert (listing_only.code, listing_only.stdout) == (0, "")  # the listing cannot tell
    assert scrub.code == 1
    assert scrub.stdout.splitlines() == ["corrupt f3"]
    assert scrub.summary["sampled"] == 6 and scrub.summary["corrupt"] == 1


def test_a_sample_is_reproducible_with_a_seed(run, src, s3_url):
    for number in range(40):
        write(src / f"f{number:02}", b"x" * number)
    assert run("sync", str(src), s3_url).code == 0
    first = run("verify", str(src), s3_url, "--sample", "25%", "--seed", "42", "-v")
    second = run("verify", str(src), s3_url, "--sample", "25%", "--seed", "42", "-v")
    assert first.code == second.code == 0
    assert 0 < first.summary["sampled"] < 40
    assert first.summary["sampled"] == second.summary["sampled"] and first.summary["seed"] == 42


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["restore", "s3://Bad_Bucket/x", "{tmp}/t"],
    ["restore", "s3://{bucket}/p", "{tmp}/a-file"],
    ["restore", "s3://{bucket}/p", "{tmp}/t", "--as-of", "yesterday"],
    ["restore", "s3://{bucket}/p", "{tmp}/t", "--concurrency", "0"],
    ["restore", "s3://no-such-bucket-here/p", "{tmp}/t"],
    ["verify", "{tmp}/missing", "s3://{bucket}/p"],
    ["verify", "{tmp}", "s3://{bucket}/p", "--sample", "0"],
    ["verify", "{tmp}", "s3://{bucket}/p", "--seed", "3"],
    ["verify", "{tmp}", "s3://{bucket}/p", "--include", "/"],
])
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, args):
    (tmp_path / "a-file").write_text("x")
    result = run(*[a.format(tmp=tmp_path, bucket=BUCKET) for a in args])
    assert result.code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "t").exists()  # nothing is created before S3 answered
