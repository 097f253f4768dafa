"""Small files go out as PutObjects built by s3backup itself once botocore has shown the way
(direct_put.py), and come back as GetObjects built the same way (direct_get.py), signed by sigv4.py.
Each test counts the requests that botocore sent, and checks the objects or the files."""

from __future__ import annotations

import base64
import hashlib
import threading
import urllib.parse

import botocore.exceptions
import botocore.session
import pytest
from botocore.config import Config
from botocore.utils import percent_encode
from s3backup_syncer.config import SyncOptions
from s3backup_syncer.direct_get import DirectGet, bucket_url
from s3backup_syncer.engine import run_sync
from s3backup_syncer.restore import RestoreOptions, run_restore

from tests.conftest import BUCKET
from tests.reliability.helpers import assert_bucket_matches, client_for
from tests.support.fault_proxy import FaultProxy

#: Names that need percent-encoding in a URL, and one that botocore would not escape (~).
NAMES = [f"f{i:02d}" for i in range(30)] + ["a b.txt", "ü~+x.bin", "q?x=1&y", "pct%20", "semi;colon", "#hash",
                                            "dir/sub/dump.sql.gz", "unicodé/ﬁle"]

ORDER = sorted(NAMES, key=str.encode)  # the order of the walk, and so of the uploads with concurrency 1


def _write_source(src):
    for i, name in enumerate(NAMES):
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(name.encode()).digest() * (10 + i))


def _count_botocore_puts(client, operation: str = "PutObject") -> list[str]:
    """Keys of the data requests (PutObject, or GetObject) that botocore sends on `client` (the shortcut emits
    no events)."""
    keys: list[str] = []

    def record(request, **_):
        key = urllib.parse.unquote(urllib.parse.urlsplit(request.url).path).split("/", 3)[-1]  # /bucket/prefix/
        if "/.s3backup/" not in request.url:
            keys.append(key)

    client.meta.events.register(f"before-send.s3.{operation}", record)
    return keys


def _options(src, prefix, **extra) -> SyncOptions:
    return SyncOptions(source=src, bucket=BUCKET, prefix=prefix + "/", path_style=True, concurrency=1, **extra)


def test_after_one_botocore_put_the_rest_go_out_directly_with_the_same_objects(s3, tmp_path, prefix):
    """Fails if the shortcut is never taken, or if its objects differ from botocore's in bytes,
    key encoding, mtime metadata, content type or storage class."""
    src = tmp_path / "src"
    _write_source(src)
    client = client_for(s3)
    botocore_puts = _count_botocore_puts(client)
    summary = run_sync(_options(src, prefix, storage_class="STANDARD"), client=client)
    assert summary.files_uploaded == len(NAMES) and summary.files_failed == 0
    assert len(botocore_puts) == 1, botocore_puts  # the first file shows the way; the others go direct
    direct = client_for(s3)
    assert_bucket_matches(direct, prefix, src)
    for name in NAMES:
        head = direct.head_object(Bucket=BUCKET, Key=f"{prefix}/{name}")
        assert head["ETag"].strip('"') == hashlib.md5((src / name).read_bytes()).hexdigest()
        assert head["ContentType"] == ("application/gzip" if name.endswith(".gz") else
                                       "text/plain" if name.endswith(".txt") else "application/octet-stream")
        assert head.get("StorageClass", "STANDARD") == "STANDARD"


def test_a_restore_fetches_every_file_directly_its_route_learnt_from_the_listing(s3, tmp_path, prefix):
    """Fails if restore's shortcut is not taken from the first file (a signature the server refuses turns it
    off), or if a file it fetched differs from its source."""
    src = tmp_path / "src"
    _write_source(src)
    assert run_sync(_options(src, prefix), client=client_for(s3)).files_uploaded == len(NAMES)
    client = client_for(s3)
    botocore_gets = _count_botocore_puts(client, "GetObject")
    target = tmp_path / "restored"
    summary = run_restore(RestoreOptions(bucket=BUCKET, prefix=prefix + "/", target=target, path_style=True,
                                         concurrency=1), client=client)
    assert summary.files_restored == len(NAMES) and summary.files_failed == 0
    assert botocore_gets == []
    for name in NAMES:
        assert (target / name).read_bytes() == (src / name).read_bytes()


def test_the_route_is_learnt_from_a_listing_only_once_it_succeeded_in_the_same_thread(s3, prefix):
    """Fails if a listing that failed, or one made by another thread, teaches the route, or if the route learnt
    does not fetch the object."""
    client = client_for(s3)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/a b", Body=b"content")
    direct = DirectGet(client)
    with pytest.raises(botocore.exceptions.ClientError), direct.learning_from_listing():
        client.list_objects_v2(Bucket="no-such-bucket-here")
    with direct.learning_from_listing():
        elsewhere = threading.Thread(target=client.list_objects_v2, kwargs={"Bucket": BUCKET, "Prefix": prefix})
        elsewhere.start()
        elsewhere.join()
    assert not direct.ready
    with direct.learning_from_listing():
        client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    assert direct.ready and direct.url_prefix == f"{s3.endpoint_url}/{BUCKET}/"
    _answer, _range, body = direct.get(f"{prefix}/a b", {})
    assert body.read() == b"content"
    body.close()


@pytest.mark.parametrize(("endpoint", "style", "bucket"), [
    (None, "virtual", "my-bucket"),
    (None, "path", "my-bucket"),
    (None, "auto", "my.bucket"),  # dots: botocore falls back to path-style
    (None, "auto", "arn:aws:s3:us-west-2:123456789012:accesspoint/backups"),
    ("https://s3.example.net/storage/", "path", "my-bucket"),
])
def test_a_listings_bucket_url_is_the_getobject_url_minus_the_key(endpoint, style, bucket, monkeypatch):
    """The URLs botocore builds for both requests (none is sent): fails if `bucket_url` differs from what a
    GetObject's URL holds before its key, in any addressing style."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    client = botocore.session.get_session().create_client(
        "s3", region_name="us-west-2", endpoint_url=endpoint, config=Config(s3={"addressing_style": style}),
        aws_access_key_id="k", aws_secret_access_key="s")
    urls = []

    def capture_and_stop(request, **_):
        urls.append(request.url)
        raise _Stop

    client.meta.events.register("before-sign.s3", capture_and_stop)
    for request in (lambda: client.list_objects_v2(Bucket=bucket, Prefix="p q/"),
                    lambda: client.get_object(Bucket=bucket, Key="p q/r+s.bin")):
        with pytest.raises(_Stop):
            request()
    listing_url, get_url = urls
    assert bucket_url(listing_url) + percent_encode("p q/r+s.bin", safe="/~") == get_url


class _Stop(Exception):
    """Raised before a request is signed: nothing goes out."""


@pytest.mark.parametrize(("fault", "botocore_sends"), [
    ("503", 2),  # throttled: botocore sends that file, the shortcut stays on
    ("reset-request", 2),  # connection trouble: likewise
    ("403", 1 + len(ORDER) - ORDER.index("f05")),  # refused: botocore sends that file and every later one
])
def test_a_failed_direct_put_is_handed_to_botocore(s3, tmp_path, prefix, fault, botocore_sends):
    """Fails if a failed direct PutObject loses the file, is not retried by botocore, or if the
    shortcut stays on after the server refused it (or goes off after a transient fault)."""
    src = tmp_path / "src"
    _write_source(src)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.inject(fault, operation="PutObject", match=lambda request: request.path.endswith("/f05"))
        client = client_for(s3, proxy.endpoint_url)
        botocore_puts = _count_botocore_puts(client)
        summary = run_sync(_options(src, prefix), client=client)
        assert proxy.faults[fault] == 1
    assert summary.files_uploaded == len(NAMES) and summary.files_failed == 0
    assert botocore_puts[:2] == [ORDER[0], "f05"]
    assert len(botocore_puts) == botocore_sends, botocore_puts
    assert_bucket_matches(client_for(s3), prefix, src)


def test_every_body_sent_carries_a_content_md5_that_matches_it(s3, tmp_path, prefix):
    """The payload is not SHA-256-signed (remote.make_s3_client), so Content-MD5, which SigV4 signs,
    is what protects every body. Fails if any PutObject or UploadPart, direct or via botocore, goes
    out without one, or with one that does not match the bytes on the wire."""
    src = tmp_path / "src"
    _write_source(src)
    (src / "big.bin").write_bytes(bytes(range(256)) * (24 * 1024))  # 6 MiB: two parts of 5 MiB
    requests = []  # the proxy's records; their bodies are filled in as they are read

    with FaultProxy(s3.endpoint_url, on_request=requests.append) as proxy:
        summary = run_sync(_options(src, prefix, part_size=5 * 1024 * 1024), client=client_for(s3, proxy.endpoint_url))
    assert summary.files_uploaded == len(NAMES) + 1 and summary.files_failed == 0
    with_bodies = [request for request in requests if request.operation in ("PutObject", "UploadPart")]
    assert {request.operation for request in with_bodies} == {"PutObject", "UploadPart"}
    for request in with_bodies:
        headers = {name.lower(): value for name, value in request.headers}
        assert headers.get("content-md5") == base64.b64encode(hashlib.md5(request.body).digest()).decode()
        assert headers.get("x-amz-content-sha256") == "UNSIGNED-PAYLOAD"
