"""A restore's small files go through the event loop (small_gets.py, http_get.py) once DirectGet knows the
route, which the restore's listing tells it: so every small file is the loop's, unless a GET fails there. The
loop's GETs are told apart on the wire: they carry no Range header (a worker's always does, download.py). Each
test checks the files."""

from __future__ import annotations

import asyncio
import os
import random
import re
import ssl
import stat
import subprocess
import sys
import threading
from collections import Counter

import boto3
import botocore.session
import pytest
from botocore.config import Config
from s3backup_syncer.config import SyncOptions
from s3backup_syncer.engine import run_sync
from s3backup_syncer.http_get import HttpGetError, HttpGetPool
from s3backup_syncer.local_s3 import LocalS3
from s3backup_syncer.restore import RestoreOptions, run_restore
from s3backup_syncer.small_gets import LoopSlots, http_settings_like_botocore

from tests.conftest import BUCKET
from tests.reliability.helpers import client_for
from tests.support.fault_proxy import FaultProxy, Request

KiB = 1024
SYNCER = [sys.executable, "-m", "s3backup_syncer.cli"]
PLAIN = [f"a/{i:02d}.bin" for i in range(12)]  # first in key order
AWKWARD = ["z/a b.txt", "z/ü~+x.bin", "z/q?x=1&y", "z/pct%20", "z/semi;colon", "z/#hash", "z/unicodé/ﬁle",
           "z/empty", "z/holes.img"]
TAIL = [f"zz/{i:02d}" for i in range(40)]  # after the awkward names: enough to outnumber the loop's slots


def _write_source(src) -> dict[str, tuple[bytes, int, int]]:
    """key -> (content, mtime_ns, mode) of a tree whose awkward names come after the plain ones."""
    rng = random.Random(3)
    files = {}
    for number, key in enumerate(PLAIN + AWKWARD + TAIL):
        content = rng.randbytes(rng.randrange(1, 40 * KiB))
        if key == "z/empty":
            content = b""
        if key == "z/holes.img":  # 768 KiB, of which 640 KiB in aligned zeros: holes once restored
            content = rng.randbytes(64 * KiB) + bytes(640 * KiB) + rng.randbytes(64 * KiB)
        path = src / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        mode = 0o640 if number % 2 else 0o751
        path.chmod(mode)
        mtime_ns = 1_600_000_000_123_456_789 + number * 1_000_000_007
        os.utime(path, ns=(mtime_ns, mtime_ns))
        files[key] = (content, mtime_ns, mode)
    return files


def _restored(target, key: str) -> tuple[bytes, int, int]:
    path = target / key
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode)


def _file_gets(requests: list[Request], prefix: str) -> list[Request]:
    """The GetObjects of the restored files (s3backup's state aside)."""
    return [request for request in requests if request.operation == "GetObject" and f"/{prefix}/" in request.path
            and f"/{prefix}/.s3backup/" not in request.path]


def _loop_gets(requests: list[Request], prefix: str) -> list[str]:
    """Keys of the files' GetObjects sent without a Range header: the event loop's."""
    return [request.path.split(f"/{prefix}/", 1)[1] for request in _file_gets(requests, prefix)
            if not any(name.lower() == "range" for name, _ in request.headers)]


@pytest.fixture
def uploaded(s3, tmp_path, prefix):
    src = tmp_path / "src"
    files = _write_source(src)
    options = SyncOptions(source=src, bucket=BUCKET, prefix=prefix + "/", path_style=True)
    assert run_sync(options, client=client_for(s3)).files_uploaded == len(files)
    return files


def _restore(s3, endpoint: str, prefix: str, target, concurrency: int = 1, **extra):
    options = RestoreOptions(bucket=BUCKET, prefix=prefix + "/", target=target, path_style=True,
                             concurrency=concurrency, **extra)
    return run_restore(options, client=client_for(s3, endpoint))


def test_the_loop_restores_awkward_names_with_content_mtimes_modes_and_holes(
        s3, tmp_path, prefix, uploaded):
    """Fails if the loop does not take every file from the first (its route comes from the listing), if it
    sends a key encoded otherwise than signed (the server refuses it), or if a file it restores differs in
    content, mtime or mode, or is written without its holes."""
    requests: list[Request] = []
    target = tmp_path / "restored"
    with FaultProxy(s3.endpoint_url, on_request=requests.append) as proxy:
        summary = _restore(s3, proxy.endpoint_url, prefix, target)
    assert (summary.files_restored, summary.files_failed) == (len(uploaded), 0), summary.errors
    assert sorted(_loop_gets(requests, prefix)) == sorted(uploaded), "every file, and each once, came through the loop"
    for key, expected in uploaded.items():
        assert _restored(target, key) == expected, key
    holes = target / "z/holes.img"
    assert holes.stat().st_blocks * 512 <= 256 * KiB, "the 640 KiB of zeros came back as a hole"


@pytest.mark.parametrize("fault", ["503", "reset-response", "truncate", "corrupt-response"])
def test_a_failed_loop_get_is_handed_to_a_worker(s3, tmp_path, prefix, uploaded, fault):
    """Fails if a fault on the loop loses the file, or if a body with the wrong bytes gets the file's name:
    the worker's retry (a ranged GET) must restore it, right."""
    requests: list[Request] = []
    target = tmp_path / "restored"
    key = "z/semi;colon"
    with FaultProxy(s3.endpoint_url, on_request=requests.append) as proxy:
        proxy.inject(fault, operation="GetObject", match=lambda request: request.path.endswith(f"/{key}"))
        summary = _restore(s3, proxy.endpoint_url, prefix, target)
        assert proxy.faults[fault] == 1
    assert (summary.files_restored, summary.files_failed) == (len(uploaded), 0), summary.errors
    assert _loop_gets(requests, prefix).count(key) == 1, "the loop tried it once, then a worker"
    for restored_key, expected in uploaded.items():
        assert _restored(target, restored_key) == expected, restored_key


def test_bytes_that_never_match_leave_no_file_under_the_name(s3, tmp_path, prefix, uploaded):
    """Fails if a file whose every download is corrupted gets its final name, or is not reported."""
    target = tmp_path / "restored"
    key = "z/pct%20"
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.inject("corrupt-response", operation="GetObject", times=100,
                     match=lambda request: request.path.endswith(f"/{key}"))
        summary = _restore(s3, proxy.endpoint_url, prefix, target)
    assert summary.files_failed == 1 and summary.files_restored == len(uploaded) - 1
    assert any(error.startswith(f"{key}: ") for error in summary.errors)
    assert not (target / key).exists()
    assert not [path for path in (target / "z").iterdir() if path.name.startswith(".s3backup-restore")]


def test_a_refusal_switches_the_shortcuts_off_and_botocore_restores_the_rest(
        s3, tmp_path, prefix, uploaded):
    """A 403 to the loop's request says the shortcut is wrong: fails if the loop goes on being used for the
    files after it (beyond those already on their way: the loop's other slots), or if any file is lost. The 48
    files after the key outnumber those slots, so a loop that ignored the refusal would send them all."""
    requests: list[Request] = []
    target = tmp_path / "restored"
    key = "z/#hash"  # the first awkward name in key order: 48 files come after it
    with FaultProxy(s3.endpoint_url, on_request=requests.append) as proxy:
        proxy.inject("403", operation="GetObject", match=lambda request: request.path.endswith(f"/{key}"))
        summary = _restore(s3, proxy.endpoint_url, prefix, target)
        assert proxy.faults["403"] == 1
    assert (summary.files_restored, summary.files_failed) == (len(uploaded), 0), summary.errors
    loop_gets = _loop_gets(requests, prefix)
    already_on_their_way = RestoreOptions(BUCKET, "", target, concurrency=1).files_on_the_loop - 1
    assert len(loop_gets) - 1 - loop_gets.index(key) <= already_on_their_way < len(AWKWARD + TAIL) - 1, loop_gets
    for restored_key, expected in uploaded.items():
        assert _restored(target, restored_key) == expected, restored_key


def test_overwrite_replaces_a_different_file_through_the_loop(s3, tmp_path, prefix, uploaded):
    target = tmp_path / "restored"
    (target / "z").mkdir(parents=True)
    (target / "z/empty").write_bytes(b"not empty")
    (target / "z/a b.txt").write_bytes(b"x")
    requests: list[Request] = []
    with FaultProxy(s3.endpoint_url, on_request=requests.append) as proxy:
        summary = _restore(s3, proxy.endpoint_url, prefix, target, overwrite=True)
    assert (summary.files_restored, summary.files_failed) == (len(uploaded), 0), summary.errors
    assert {"z/empty", "z/a b.txt"} <= set(_loop_gets(requests, prefix))
    for key, expected in uploaded.items():
        assert _restored(target, key) == expected, key


# --- the connection settings taken from botocore's session -----------------------------------------------------

def _client(endpoint: str, **options):
    """A botocore S3 client for `endpoint` (nothing is sent: only its session's settings are read)."""
    config = options.pop("config", Config())
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s",
        config=config, **options)


def test_plain_http_needs_no_tls_and_keeps_the_clients_timeouts():
    client = _client("http://127.0.0.1:1", config=Config(connect_timeout=3, read_timeout=7))
    settings = http_settings_like_botocore(client, "http://127.0.0.1:1/bucket/")
    assert settings is not None and (settings.ssl, settings.connect_timeout, settings.read_timeout) == (False, 3, 7)


def test_https_verifies_with_botocores_certificates_unless_verification_is_off():
    verified = http_settings_like_botocore(_client("https://s3.example.com"), "https://s3.example.com/bucket/")
    assert isinstance(verified.ssl, ssl.SSLContext) and verified.ssl.verify_mode == ssl.CERT_REQUIRED
    assert verified.ssl.cert_store_stats()["x509_ca"] > 0, "the CA bundle botocore uses is loaded"
    unverified = http_settings_like_botocore(_client("https://s3.example.com", verify=False),
                                             "https://s3.example.com/bucket/")
    assert unverified is not None and unverified.ssl is False


def test_a_proxy_or_a_client_certificate_keeps_the_loop_off(monkeypatch, tmp_path):
    url = "https://s3.example.com/bucket/"
    proxied = _client("https://s3.example.com", config=Config(proxies={"https": "http://proxy.example:3128"}))
    assert http_settings_like_botocore(proxied, url) is None
    certificate = tmp_path / "client.pem"
    certificate.write_text("")
    assert http_settings_like_botocore(_client("https://s3.example.com", config=Config(
        client_cert=str(certificate))), url) is None
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert http_settings_like_botocore(_client("https://s3.example.com"), url) is None


def test_the_cli_takes_the_loop_and_exits_cleanly(s3, tmp_path, prefix):
    """A real `s3backup restore`, in Python's development mode (which shows ResourceWarnings): fails if the loop
    never starts, if a file comes back wrong, or if the loop or a connection is left running or unclosed at
    exit (asyncio warns on stderr then). Each GET waits 50 ms at the proxy, as on a distant bucket."""
    src = tmp_path / "src"
    rng = random.Random(9)
    count = 256
    for number in range(count):
        path = src / f"d{number % 7}" / f"{number:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(1, 3 * KiB)))
    env = {**os.environ, **s3.env()}
    url = f"s3://{BUCKET}/{prefix}"
    assert subprocess.run([*SYNCER, "sync", str(src), url, "--path-style", "-q"], env=env).returncode == 0
    target = tmp_path / "restored"

    with FaultProxy(s3.endpoint_url, delay_seconds=0.05) as proxy:
        restore = subprocess.run([sys.executable, "-X", "dev", *SYNCER[1:], "restore", url, str(target),
                                  "--path-style", "-vv", "--endpoint-url", proxy.endpoint_url],
                                 env=env, capture_output=True, text=True, timeout=120)

    assert restore.returncode == 0, restore.stderr[-2000:]
    assert "small GetObjects on the event loop from now on" in restore.stderr
    for warning in ("unclosed", "task was destroyed", "traceback", "was never awaited", "resourcewarning"):
        assert warning not in restore.stderr.lower()
    for path in src.rglob("*.bin"):
        assert (target / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert len(list(target.rglob("*.bin"))) == count


def test_behind_a_slow_link_the_loop_starts_early_and_keeps_32_files_per_worker_in_flight(s3, tmp_path, prefix):
    """Behind a slow link a GET is mostly waiting, which costs the loop little. The loop must start at the first
    file, its route known from the listing (fails if it waited for a worker's first GET, or for 256 files, as it
    once did).
    With --concurrency 2 the loop may then have 64 GETs in flight (RestoreOptions.files_on_the_loop; these small
    files are far within its byte budget), the workers 2 more, and never more (fails if the loop's GETs were
    still capped at 8 × --concurrency: then at most 16, or if nothing bounds them)."""
    src = tmp_path / "src"
    rng = random.Random(5)
    count = 128
    for number in range(count):
        path = src / f"{number:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(1, 8 * KiB)))
    options = SyncOptions(source=src, bucket=BUCKET, prefix=prefix + "/", path_style=True)
    assert run_sync(options, client=client_for(s3)).files_uploaded == count
    target = tmp_path / "restored"
    requests: list[Request] = []

    with FaultProxy(s3.endpoint_url, delay_seconds=0.05, on_request=requests.append) as proxy:
        summary = _restore(s3, proxy.endpoint_url, prefix, target, concurrency=2)

    assert summary.files_restored == count and summary.files_failed == 0
    assert len(_loop_gets(requests, prefix)) == len(_file_gets(requests, prefix)) == count, "all on the loop"
    assert 16 < proxy.most_in_flight["GetObject"] <= 64 + 2
    for path in src.iterdir():
        assert (target / path.name).read_bytes() == path.read_bytes()


def test_the_loop_keeps_32_files_per_worker_never_more_than_256_and_8_mib_per_worker(tmp_path):
    """The loop's own bounds and the workers' queue (restore.py); 256 files at most, whatever --concurrency."""
    options = RestoreOptions(bucket=BUCKET, prefix="", target=tmp_path, concurrency=2)
    assert (options.files_on_the_loop, options.files_for_workers, options.bytes_on_the_loop) == (64, 8, 16 << 20)
    assert RestoreOptions(bucket=BUCKET, prefix="", target=tmp_path, concurrency=8).files_on_the_loop == 256
    assert RestoreOptions(bucket=BUCKET, prefix="", target=tmp_path, concurrency=256).files_on_the_loop == 256


# --- the loop's slots, handed over in batches -------------------------------------------------------------------

class _Submitted:
    """Stands for SmallGets on the run's side: records each batch handed to the loop."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def submit(self, coroutines: list) -> None:
        self.batches.append(list(coroutines))


def _take_on_a_thread(slots: LoopSlots, size: int = 1) -> threading.Thread:
    thread = threading.Thread(target=slots.take, args=(size,), daemon=True)
    thread.start()
    thread.join(0.2)
    return thread


def test_loop_slots_go_over_in_batches_and_never_hold_a_file_back():
    """Fails if the loop is woken for each file, if slots come back one at a time while the loop is busy, if a
    file waits in a batch while the run's thread blocks, or if a loop that runs dry keeps a slot (the run would
    then wait for ever)."""
    submitted = _Submitted()
    slots = LoopSlots(8, 64 * LoopSlots.UNIT, submitted)  # batches of 2 files; the bytes do not bind here
    for number in range(8):
        slots.take(1)
        slots.hand_over(number)
    assert submitted.batches == [[0, 1], [2, 3], [4, 5], [6, 7]]
    for _ in range(8):
        slots.started()  # the loop runs all eight

    slots.finished(1)
    blocked = _take_on_a_thread(slots)
    assert blocked.is_alive(), "one slot came back alone while seven files run"
    slots.finished(1)  # a second: a batch of slots comes back
    blocked.join(5)
    assert not blocked.is_alive()
    slots.hand_over(8)  # one slot is still free: taken without a wait, held for its batch
    assert submitted.batches[-1] == [6, 7]

    slots.take(1)
    blocked = _take_on_a_thread(slots)
    assert blocked.is_alive() and submitted.batches[-1] == [8], "the held file was submitted before the wait"
    for _ in range(5):
        slots.finished(1, slot_freed=False)  # files handed to workers, which free their slots when done
    blocked.join(0.2)
    assert blocked.is_alive(), "a file handed to a worker gave its slot back before the worker was done"
    slots.finished(1)  # the loop's last file: it runs dry, and its slot comes back, though fewer than a batch
    blocked.join(5)
    assert not blocked.is_alive()


def test_loop_slots_bound_the_bytes_in_flight_by_the_listed_sizes():
    """Fails if files whose listed sizes fill the byte budget leave room for another, though file slots are
    free, or if a file larger than the whole budget can never be taken."""
    unit = LoopSlots.UNIT
    slots = LoopSlots(8, 4 * unit, _Submitted())
    slots.take(2 * unit)
    slots.take(unit + 1)  # two units, by the listed size rounded up
    slots.hand_over(0)
    slots.hand_over(1)
    blocked = _take_on_a_thread(slots, 1)
    assert blocked.is_alive(), "the budget is spent: even a one-byte file waits"
    slots.started()
    slots.started()
    slots.finished(2 * unit)  # half the budget back: a batch of bytes
    blocked.join(5)
    assert not blocked.is_alive()
    slots.started()
    slots.finished(unit + 1)
    slots.finished(1)
    giant = _take_on_a_thread(slots, 100 * unit)  # as much as the budget holds, not more
    giant.join(5)
    assert not giant.is_alive()


# --- over TLS: SeaweedFS on HTTPS, its certificate trusted as a user trusts a private CA ---------------------

@pytest.fixture(scope="module")
def s3_on_https(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    certificate, key = folder / "certificate.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True)
    with LocalS3(tls=(certificate, key)) as server:
        boto3.client("s3", endpoint_url=server.endpoint_url, region_name=server.region, verify=str(certificate),
                     aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
                     ).create_bucket(Bucket=BUCKET)
        yield server, certificate


def test_over_tls_the_loop_verifies_the_server_as_botocore_does(s3_on_https, tmp_path):
    """With AWS_CA_BUNDLE naming the server's certificate: fails if the loop does not take the files over TLS
    (a connection of its own that failed to verify would hand each file over), or if a file comes back wrong.
    Without it, the certificate is refused at the first attempt of each request (fails if botocore retries
    it: ~10 s of backoff for nothing), with a one-line message that says what to set, exit 2 (the set-up's
    fault), no traceback, and nothing restored."""
    server, certificate = s3_on_https
    src = tmp_path / "src"
    rng = random.Random(11)
    for number in range(64):
        path = src / f"{number:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(1, 16 * KiB)))
    env = {**os.environ, **server.env(), "AWS_CA_BUNDLE": str(certificate)}
    url = f"s3://{BUCKET}/tls"
    assert subprocess.run([*SYNCER, "sync", str(src), url, "--path-style", "-q"], env=env).returncode == 0

    restore = subprocess.run([*SYNCER, "restore", url, str(tmp_path / "restored"), "--path-style", "-vv"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert restore.returncode == 0, restore.stderr[-2000:]
    assert "small GetObjects on the event loop from now on" in restore.stderr
    assert "handing it over" not in restore.stderr
    for path in src.iterdir():
        assert (tmp_path / "restored" / path.name).read_bytes() == path.read_bytes()

    env.pop("AWS_CA_BUNDLE")
    refused = subprocess.run([*SYNCER, "restore", url, str(tmp_path / "untrusted"), "--path-style"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.startswith("s3backup: error: the S3 endpoint's TLS certificate is not trusted")
    assert "set AWS_CA_BUNDLE" in refused.stderr and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert not list((tmp_path / "untrusted").rglob("*.bin"))
    logged = subprocess.run([*SYNCER, "restore", url, str(tmp_path / "untrusted"), "--path-style", "-vvv"],
                            env=env, capture_output=True, text=True, timeout=120)
    sent = Counter(re.findall(r"Sending http request: <AWSPreparedRequest [^>]*?url=(\S+?),", logged.stderr))
    assert sent and max(sent.values()) == 1, f"a certificate that did not verify is tried again: {sent}"


def test_the_loops_connections_refuse_a_certificate_they_were_not_told_to_trust(s3_on_https):
    """Fails if http_get.py's connections skip the verification botocore's settings ask for: with the server's
    certificate trusted, an unsigned GET gets the server's refusal over TLS; with the system's CAs only, the
    handshake itself fails."""
    server, certificate = s3_on_https

    async def status(context: ssl.SSLContext) -> int:
        pool = HttpGetPool(server.endpoint_url, tls=context, connect_timeout=5, read_timeout=10)
        try:
            return (await pool.get(f"{server.endpoint_url}/{BUCKET}/any", {}, 1024)).status
        finally:
            pool.close()

    assert asyncio.run(status(ssl.create_default_context(cafile=str(certificate)))) == 403
    with pytest.raises(HttpGetError, match="certificate"):
        asyncio.run(status(ssl.create_default_context()))
