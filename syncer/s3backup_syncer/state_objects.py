"""s3backup's own state files under `PREFIX/.s3backup/`, stored gzipped and fetched whole.

One place for what every state file needs: a Content-MD5 on every PUT (and on every part above
`SINGLE_PUT_LIMIT`), gzip's CRC to catch a damaged copy, and a missing object told apart from a
failed read. Our own rather than s3transfer's `upload_file`/`download_file`: those exist only on
boto3's wrapped client (importing boto3 is a sixth of a run's start-up) and send no Content-MD5.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import shutil
from pathlib import Path

from botocore.exceptions import ClientError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError

SINGLE_PUT_LIMIT = 1024 * 1024 * 1024
PART_SIZE = 64 * 1024 * 1024  # above SINGLE_PUT_LIMIT: 16 parts per GiB, far below S3's 10,000
MISSING_CODES = ("404", "NoSuchKey", "NoSuchVersion")
_READ_ATTEMPTS = 3  # a GET's body that breaks off mid-stream is not retried by botocore itself
_COPY_CHUNK = 1024 * 1024


def is_missing(exc: BaseException) -> bool:
    """Whether an S3 error says the object (or version) is not there."""
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in MISSING_CODES


def fetch_state(client, bucket: str, key: str, target: Path, version_id: str | None = None) -> bool:
    """Download the gzipped object `key` and unpack it to `target`; False if there is no such object.

    Any other failure raises, and leaves no `target` behind; a damaged copy fails gzip's CRC check."""
    extra = {"VersionId": version_id} if version_id else {}
    partial = target.with_name(target.name + ".partial")
    for attempt in range(1, _READ_ATTEMPTS + 1):
        try:
            body = client.get_object(Bucket=bucket, Key=key, **extra)["Body"]
        except ClientError as exc:
            if is_missing(exc):
                return False
            raise
        try:
            with gzip.GzipFile(fileobj=body, mode="rb") as source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out, _COPY_CHUNK)
            partial.replace(target)
            return True
        except (IncompleteReadError, ReadTimeoutError, ResponseStreamingError):
            if attempt == _READ_ATTEMPTS:
                raise
        finally:
            body.close()
            partial.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def store_state(client, bucket: str, key: str, source: Path, *, single_put_limit: int = SINGLE_PUT_LIMIT,
                part_size: int = PART_SIZE) -> None:
    """Compress `source` and upload it as `key`, every byte under a Content-MD5."""
    packed = source.with_name(source.name + ".gz")
    try:
        with open(source, "rb") as plain, gzip.open(packed, "wb", compresslevel=6) as target:
            shutil.copyfileobj(plain, target, _COPY_CHUNK)
        if packed.stat().st_size <= single_put_limit:
            with open(packed, "rb") as body:
                digest = hashlib.file_digest(body, "md5").digest()
                body.seek(0)
                client.put_object(Bucket=bucket, Key=key, Body=body, ContentMD5=_b64(digest))
        else:  # tens of millions of files
            _store_in_parts(client, bucket, key, packed, part_size)
    finally:
        packed.unlink(missing_ok=True)


def _store_in_parts(client, bucket: str, key: str, packed: Path, part_size: int) -> None:
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        parts = []
        with open(packed, "rb") as stream:
            while chunk := stream.read(part_size):
                number = len(parts) + 1
                answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                            Body=chunk, ContentMD5=_b64(hashlib.md5(chunk).digest()))
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": parts})
    except BaseException:
        with contextlib.suppress(Exception):  # the upload's own error is the one to report
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()
