"""Bucket-default encryption: with SSE-KMS, DSSE-KMS or SSE-C the server's ETags are not MD5s of the
content, whether or not `--sse` asked for it. The fault proxy plays such a server: it adds the
`x-amz-server-side-encryption*` headers to every answer and replaces every ETag (headers and listings)
by an opaque one, as S3 does. Integrity then rests on Content-MD5, which the server still checks."""

from __future__ import annotations

import hashlib
import os
import re

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import BUCKET
from tests.reliability.helpers import MiB, assert_bucket_matches, run_command, run_syncer, write_tree
from tests.syncer.test_sync import past_the_racy_window

TREE = {**{f"docs/note-{i}.txt": 500 + i for i in range(4)}, "empty.bin": 0, "db/dump.sql": 6 * MiB + 1}
HEADERS = {
    "aws:kms": [("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-server-side-encryption-aws-kms-key-id", "arn:aws:kms:eu-west-1:111122223333:key/test")],
    "aws:kms:dsse": [("x-amz-server-side-encryption", "aws:kms:dsse")],
    "SSE-C": [("x-amz-server-side-encryption-customer-algorithm", "AES256"),
              ("x-amz-server-side-encryption-customer-key-MD5", "ZjQ2ZjM0NTE2OWRhNzMxNQ==")],
}
_ETAG_IN_XML = re.compile(rb"(<ETag>(?:&quot;|&#34;|\")?)([0-9a-fA-F]{32})((?:-\d+)?(?:&quot;|&#34;|\")?</ETag>)")


def opaque(etag: str) -> str:
    """What an encrypting server answers instead of the MD5 (a multipart ETag keeps its `-N`)."""
    digest, dash, parts = etag.strip('"').partition("-")
    return hashlib.md5(b"kms:" + digest.encode()).hexdigest() + dash + parts


class EncryptingServer:
    """Rewrites answers as an encrypting server would send them, and the ETags that requests send back: the
    part ETags of a CompleteMultipartUpload, and an If-Match (the server knows its own opaque ETags; SeaweedFS
    does not). A request whose signed If-Match is rewritten is signed again, with `credentials`."""

    def __init__(self, mode: str, credentials: Credentials | None = None, region: str = "us-east-1"):
        self.mode = mode
        self.credentials = credentials
        self.region = region
        self.real: dict[str, str] = {}  # opaque -> real digest

    def _hide(self, digest: str) -> str:
        hidden = opaque(digest)
        self.real[hidden.partition("-")[0]] = digest.partition("-")[0]
        return hidden

    def answer(self, request, status, headers, body):
        out = [(name, f'"{self._hide(value.strip(chr(34)))}"' if name.lower() == "etag" else value)
               for name, value in headers]
        if status < 300 and request.operation not in ("ListObjectsV2", "ListMultipartUploads", "CreateBucket"):
            out.extend(HEADERS[self.mode])
        body = _ETAG_IN_XML.sub(lambda m: m[1] + self._hide(m[2].decode()).encode() + m[3], body)
        return out, body

    def request(self, request) -> None:
        if request.operation == "CompleteMultipartUpload":
            request.body = _ETAG_IN_XML.sub(lambda m: m[1] + self.real.get(m[2].decode(), m[2].decode()).encode()
                                            + m[3], request.body)
        if_match = next((value for name, value in request.headers if name.lower() == "if-match"), None)
        if if_match is not None and self.credentials is not None:
            digest, dash, parts = if_match.strip('"').partition("-")
            real = f'"{self.real.get(digest, digest)}{dash}{parts}"'
            headers = {name: real if name.lower() == "if-match" else value for name, value in request.headers
                       if name.lower() not in ("authorization", "x-amz-date", "x-amz-content-sha256")}
            host = next(value for name, value in headers.items() if name.lower() == "host")
            signed = AWSRequest(method=request.method, url=f"http://{host}{request.target}", headers=headers,
                                data=request.body)
            S3SigV4Auth(self.credentials, "s3", self.region).add_auth(signed)
            request.headers = list(signed.headers.items())


@pytest.mark.parametrize("mode", list(HEADERS))
def test_bucket_default_encryption_is_told_from_the_answers(mode, s3, src, s3_url, prefix, direct, proxy_factory):
    """Fails if an ETag check compares an opaque ETag with an MD5 because `--sse` was not given (each file
    is then sent 3 times and fails), or if the next run cannot tell the files are unchanged (the hash
    cache keeps the ETag the server gave each upload)."""
    write_tree(src, TREE, seed=11)
    past_the_racy_window()  # an opaque ETag can only be matched through a trusted hash-cache entry
    sent: list[str] = []
    server = EncryptingServer(mode)
    proxy = proxy_factory(rewrite=server.answer, rewrite_request=server.request, on_request=lambda request: sent.append(
        request.path) if request.operation in ("PutObject", "CompleteMultipartUpload")
        and "/.s3backup/" not in request.path else None)
    first = run_syncer(src, s3_url, proxy.endpoint_url, "--part-size", "5MiB")
    assert first.returncode == 0, first.stderr
    assert first.summary["files_uploaded"] == len(TREE) and first.summary["files_failed"] == 0
    assert sorted(sent) == sorted(f"/{s3_url.removeprefix('s3://')}/{key}" for key in TREE), "a file was sent twice"
    assert proxy.requests["UploadPart"] == 2

    again = run_syncer(src, s3_url, proxy.endpoint_url, "--part-size", "5MiB")
    assert again.returncode == 0, again.stderr
    assert again.summary["files_unchanged"] == len(TREE) and again.summary["files_uploaded"] == 0
    assert again.summary["bytes_hashed"] == 0
    assert_bucket_matches(direct, prefix, src)


@pytest.mark.parametrize("mode", list(HEADERS))
def test_an_encrypted_backup_restores_checked_by_content(mode, s3, src, s3_url, tmp_path, proxy_factory):
    """Under SSE-KMS, DSSE-KMS or SSE-C no ETag is an MD5 of the content: the restore must still bring every file
    back (fails if an opaque ETag is taken for a content mismatch), and check each by content: a single-part
    upload carries its MD5 in the metadata, the multipart dump's ETag is in s3backup's state. So nothing is
    unverified, to a restore or a scrub; a verify without the hash cache and a second restore find the files
    there, and files whose bytes changed since, with size and mtime kept, are told apart: a small one and the
    multipart dump (by size and mtime alone, as before the state held its ETag, the dump passed).
    300 small files take the event loop too."""
    files = write_tree(src, {**TREE, **{f"small/{i}.bin": 3000 + i for i in range(300)}}, seed=12)
    past_the_racy_window()  # verify compares with the ETags the hash cache kept, which it trusts only past it
    server = EncryptingServer(mode, Credentials(s3.access_key, s3.secret_key), s3.region)
    proxy = proxy_factory(rewrite=server.answer, rewrite_request=server.request)
    assert run_syncer(src, s3_url, proxy.endpoint_url, "--part-size", "5MiB").returncode == 0
    target = tmp_path / "restored"

    restored = run_command("restore", s3_url, str(target), endpoint=proxy.endpoint_url)
    scrub = run_command("verify", str(src), s3_url, "--sample", "100", endpoint=proxy.endpoint_url)
    without_cache = run_command("verify", str(target), s3_url, "--no-hash-cache", endpoint=proxy.endpoint_url)

    assert restored.returncode == 0, restored.stderr
    assert (restored.summary["files_restored"], restored.summary["files_unverified"]) == (len(files), 0)
    assert {key: (target / key).read_bytes() for key in files} == files
    assert "only the size was checked" not in restored.stderr

    # Run again (a resumed restore): the files count as there; those whose bytes changed, size and mtime kept, not.
    for key in ("docs/note-1.txt", "db/dump.sql"):
        changed = target / key
        stat = changed.stat()
        changed.write_bytes(files[key][:-1] + bytes([files[key][-1] ^ 1]))
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = run_command("restore", s3_url, str(target), endpoint=proxy.endpoint_url)
    assert again.returncode == 1, again.stderr
    assert (again.summary["files_unchanged"], again.summary["files_conflicting"], again.summary["files_restored"]) \
        == (len(files) - 2, 2, 0)
    left_alone = "a different file is already there: left alone (use --overwrite to replace it)"
    assert sorted(again.summary["errors"]) == [f"{key}: {left_alone}" for key in ("db/dump.sql", "docs/note-1.txt")]
    assert scrub.returncode == 0, scrub.stderr
    assert (scrub.summary["sampled"], scrub.summary["sampled_unverifiable"], scrub.summary["corrupt"]) == (
        len(files), 0, 0)
    assert without_cache.returncode == 0, without_cache.stdout
    assert (without_cache.summary["files_same"], without_cache.summary["bytes_hashed"]) == (len(files), sum(
        len(content) for content in files.values()))


@pytest.mark.parametrize("mode", ["aws:kms"])
def test_under_encryption_bytes_other_than_the_content_are_caught_by_the_checksum_s3backup_kept(
        mode, s3, src, s3_url, tmp_path, proxy_factory):
    """A server that answers other bytes of the right size for one small object and for the multipart dump, under
    SSE-KMS: the restore must fail both files and leave nothing under their names (the small one on the event
    loop, then in a worker), and a scrub must call both corrupt. Checked by size alone, as before the MD5 went
    into the metadata and the dump's ETag into s3backup's state, both would pass them."""
    files = write_tree(src, {**{f"small/{i}.bin": 3000 + i for i in range(300)}, "db/dump.sql": 6 * MiB + 1},
                       seed=13)
    server = EncryptingServer(mode, Credentials(s3.access_key, s3.secret_key), s3.region)
    victims = ("db/dump.sql", "small/280.bin")  # small/280.bin comes after the first 256 small files: the loop's

    def answer(request, status, headers, body):
        headers, body = server.answer(request, status, headers, body)
        if request.operation == "GetObject" and request.path.endswith(victims) and status in (200, 206):
            body = bytes(len(body))
        return headers, body

    proxy = proxy_factory(rewrite=answer, rewrite_request=server.request)
    assert run_syncer(src, s3_url, proxy.endpoint_url, "--part-size", "5MiB").returncode == 0
    target = tmp_path / "restored"

    restored = run_command("restore", s3_url, str(target), endpoint=proxy.endpoint_url)
    scrub = run_command("verify", str(src), s3_url, "--sample", "100", endpoint=proxy.endpoint_url)

    assert restored.returncode == 1, restored.stderr
    assert (restored.summary["files_restored"], restored.summary["files_failed"],
            restored.summary["files_unverified"]) == (len(files) - 2, 2, 0)
    assert sorted(restored.summary["errors"]) == [
        "db/dump.sql: the content received does not match the ETag s3backup recorded for the object",
        "small/280.bin: the content received does not match the MD5 in the object's metadata"]
    assert not any((target / victim).exists() for victim in victims)
    assert {key: (target / key).read_bytes() for key in files if key not in victims} == {
        key: content for key, content in files.items() if key not in victims}
    assert scrub.returncode == 1
    assert (scrub.summary["corrupt"], scrub.summary["sampled_unverifiable"]) == (2, 0)


def test_under_encryption_a_sync_that_lost_its_hash_cache_rewrites_nothing(s3, src, s3_url, prefix, direct,
                                                                            proxy_factory):
    """After a lost hash cache (or new inodes: a volume moved or restored) every file is read again, and under
    SSE-KMS no ETag is its MD5. The sync must still keep every object: a single-part one by the MD5 in its metadata
    (one HEAD), the multipart dump by the ETag in s3backup's state. Without that state, only the dump is sent
    again, and its upload records its ETag for the next time. Each rewrite would be a full-size new version on a
    versioned bucket."""
    write_tree(src, TREE, seed=14)
    past_the_racy_window()
    server = EncryptingServer("aws:kms", Credentials(s3.access_key, s3.secret_key), s3.region)
    sent: list[str] = []
    proxy = proxy_factory(rewrite=server.answer, rewrite_request=server.request, on_request=lambda request: sent.append(
        request.path.rpartition(f"/{prefix}/")[2]) if request.operation in ("PutObject", "CompleteMultipartUpload")
        and "/.s3backup/" not in request.path else None)

    def sync_without_the_cache() -> list[str]:
        sent.clear()
        result = run_syncer(src, s3_url, proxy.endpoint_url, "--part-size", "5MiB", "--no-hash-cache")
        assert result.returncode == 0, result.stderr
        assert result.summary["files_unchanged"] + result.summary["files_uploaded"] == len(TREE)
        return sorted(sent)

    assert run_syncer(src, s3_url, proxy.endpoint_url, "--part-size", "5MiB").returncode == 0
    assert sync_without_the_cache() == []
    direct.delete_object(Bucket=BUCKET, Key=f"{prefix}/.s3backup/attributes.sqlite.gz")
    assert sync_without_the_cache() == ["db/dump.sql"]
    assert sync_without_the_cache() == []
    assert_bucket_matches(direct, prefix, src)
