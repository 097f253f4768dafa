"""Uploads with bounded memory and explicit integrity.

Memory bound: at most `concurrency` buffers exist at once (a semaphore is taken before a
buffer is read and released when its request is done), each at most `min(part size,
BUFFER_LIMIT)`. With the defaults (concurrency 8, 8 MiB parts) that is 64 MiB, plus a small
constant. Parts above BUFFER_LIMIT (files over 640 GiB with automatic part sizes) are not held
in memory: they are hashed from disk, then streamed from disk, and the server's Content-MD5
check catches any difference between the two reads.

Integrity: every request carries Content-MD5; every part's and object's returned ETag is
compared with the locally computed one; a file whose size, mtime or inode changed during the
upload is reported as failed, and a multipart upload is then aborted before completion, so
the previous remote version stays intact.

Crash safety: each multipart upload gets a small marker object under `PREFIX/.s3backup/uploads/`
describing the file version it carries. A later run resumes it (parts whose MD5 still matches
are not sent again) when the file is unchanged, and aborts it otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import mimetypes
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .config import MiB, SyncOptions
from .etag import multipart_etag_from_digests, part_count, part_size_for, uses_multipart
from .remote import STATE_DIR, list_pending_uploads
from .report import Summary
from .scan import LocalFile

log = logging.getLogger(__name__)

BUFFER_LIMIT = 64 * MiB
READ_CHUNK = 1 * MiB
UPLOAD_MARKERS = STATE_DIR + "uploads/"
META_MTIME = "s3backup-mtime"


class UploadFailed(Exception):
    """This file could not be uploaded; the run goes on with the others."""


class FileChanged(UploadFailed):
    pass


class RateLimiter:
    """A token bucket shared by all uploads (`--bwlimit`, bytes per second)."""

    def __init__(self, rate: int | None):
        self.rate = rate
        self._lock = threading.Lock()
        self._next_free = time.monotonic()

    def consume(self, count: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + count / self.rate
        if start > now:
            time.sleep(start - now)


class FileRange(io.RawIOBase):
    """A seekable window over `length` bytes of a file from `offset`, read lazily."""

    def __init__(self, path: str, offset: int, length: int, limiter: RateLimiter):
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._offset, self._length, self._pos = offset, length, 0
        self._limiter = limiter

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        remaining = self._length - self._pos
        size = remaining if size is None or size < 0 else min(size, remaining)
        self._file.seek(self._offset + self._pos)
        data = self._file.read(size)
        self._pos += len(data)
        self._limiter.consume(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        self._file.close()
        super().close()


def _b64md5(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _md5_of_range(path: str, offset: int, length: int) -> bytes:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        f.seek(offset)
        remaining = length
        while remaining:
            chunk = f.read(min(READ_CHUNK, remaining))
            if not chunk:
                raise FileChanged("file shrank while it was read")
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.digest()


@dataclass
class PendingUpload:
    """An unfinished multipart upload found under the prefix at the start of the run."""

    key: str  # relative to the prefix
    upload_id: str
    initiated: object  # datetime
    marker: dict | None = None  # what our marker says it carries; None: not ours (or unknown)


class Uploader:
    """Uploads files to `bucket/prefix`, single-part or multipart, within the memory bound."""

    def __init__(self, client, options: SyncOptions, summary: Summary, pending: dict[str, list[PendingUpload]]):
        self.client = client
        self.options = options
        self.summary = summary
        self.pending = pending  # key -> unfinished uploads; resumed ones are removed
        self._pending_lock = threading.Lock()
        self.limiter = RateLimiter(options.bwlimit)
        self.buffers = threading.BoundedSemaphore(options.concurrency)
        self.part_pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="s3backup-part")
        self.etag_is_md5 = options.etag_is_md5
        self.multipart_keys: set[str] = set()  # keys this run created multipart uploads for

    def close(self) -> None:
        self.part_pool.shutdown(wait=True)

    # --- object settings -------------------------------------------------------------------
    def _object_args(self, f: LocalFile) -> dict:
        args: dict = {
            "Metadata": {META_MTIME: str(f.mtime_ns)},
            "ContentType": mimetypes.guess_type(f.key)[0] or "application/octet-stream",
        }
        if self.options.storage_class:
            args["StorageClass"] = self.options.storage_class
        if self.options.sse:
            args["ServerSideEncryption"] = self.options.sse
        if self.options.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.options.sse_kms_key_id
        return args

    def _full_key(self, key: str) -> str:
        return self.options.prefix + key

    # --- reading ----------------------------------------------------------------------------
    def _read_range(self, f: LocalFile, handle, offset: int, length: int) -> tuple[object, bytes]:
        """The body for one request (bytes, or a FileRange above BUFFER_LIMIT) and its MD5."""
        if length > BUFFER_LIMIT:
            digest = _md5_of_range(f.path, offset, length)
            self.summary.add(bytes_hashed=length)
            return FileRange(f.path, offset, length, self.limiter), digest
        handle.seek(offset)
        data = handle.read(length)
        if len(data) != length:
            raise FileChanged("file shrank while it was read")
        self.summary.add(bytes_hashed=length)
        self.limiter.consume(length)
        return data, hashlib.md5(data).digest()

    def _check_unchanged(self, f: LocalFile, handle) -> None:
        if not f.same_version(os.fstat(handle.fileno())) or not f.same_version(os.stat(f.path)):
            raise FileChanged("file changed while it was uploaded; it will be retried next run")

    def _check_etag(self, what: str, response: dict, expected: str) -> str:
        """The ETag the server answered, checked against ours (when ETags are MD5s)."""
        returned = response.get("ETag")
        if not returned:
            raise UploadFailed(f"{what}: the server's answer had no ETag (cut short?)")
        returned = returned.strip('"')
        if self.etag_is_md5 and returned != expected:
            raise UploadFailed(f"{what}: server ETag {returned} differs from local {expected}")
        return returned

    # --- upload -------------------------------------------------------------------------------
    def upload(self, f: LocalFile) -> dict[int, str]:
        """Upload `f`; returns its ETag by part-size key (0 = plain MD5) for the hash cache."""
        part_size = part_size_for(f.size, self.options.part_size)
        try:
            with open(f.path, "rb") as handle:
                self._check_unchanged(f, handle)
                if uses_multipart(f.size, part_size):
                    return {part_size: self._upload_multipart(f, handle, part_size)}
                return {0: self._upload_single(f, handle)}
        except OSError as exc:
            raise UploadFailed(f"cannot read: {exc.strerror or exc}") from None

    def _upload_single(self, f: LocalFile, handle) -> str:
        with self.buffers:
            body, digest = self._read_range(f, handle, 0, f.size)
            try:
                if handle.read(1):
                    raise FileChanged("file grew while it was read")
                self._check_unchanged(f, handle)
                response = self.client.put_object(
                    Bucket=self.options.bucket,
                    Key=self._full_key(f.key),
                    Body=body,
                    ContentMD5=_b64md5(digest),
                    ContentLength=f.size,
                    **self._object_args(f),
                )
            finally:
                if isinstance(body, FileRange):
                    body.close()
        etag = digest.hex()
        self._check_etag(f.key, response, etag)
        self.summary.add(bytes_uploaded=f.size)
        return etag

    def _upload_multipart(self, f: LocalFile, handle, part_size: int) -> str:
        key = self._full_key(f.key)
        upload_id, done_parts = self._resume_or_create(f, part_size)
        completed = False
        try:
            digests, parts = self._send_parts(f, handle, part_size, upload_id, done_parts)
            if handle.read(1):
                raise FileChanged("file grew while it was read")
            self._check_unchanged(f, handle)
            expected = multipart_etag_from_digests(b"".join(digests))
            response = self.client.complete_multipart_upload(
                Bucket=self.options.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            completed = True
            self._check_etag(f.key, response, expected)
            return expected
        finally:
            if not completed:
                self._abort(key, upload_id)
            self._delete_marker(upload_id)

    def _send_parts(self, f: LocalFile, handle, part_size: int, upload_id: str, done_parts: dict):
        count = part_count(f.size, part_size)
        digests: list[bytes] = [b""] * count
        etags: list[str] = [""] * count
        futures: list[Future] = []
        failure: list[BaseException] = []
        sent = 0
        for index in range(count):
            if failure:
                break
            offset = index * part_size
            length = min(part_size, f.size - offset)
            self.buffers.acquire()
            try:
                body, digest = self._read_range(f, handle, offset, length)
            except BaseException:
                self.buffers.release()
                raise
            digests[index] = digest
            if done_parts.get(index + 1) == (length, digest.hex()):
                etags[index] = digest.hex()  # already on the server from an interrupted run
                self.buffers.release()
                continue
            sent += length
            futures.append(self.part_pool.submit(
                self._send_part, f, upload_id, index, body, digest, etags, failure
            ))
        for future in futures:
            future.result()
        if failure:
            raise failure[0]
        self.summary.add(bytes_uploaded=sent, bytes_reused=f.size - sent)
        parts = [{"PartNumber": i + 1, "ETag": f'"{etags[i]}"'} for i in range(count)]
        return digests, parts

    def _send_part(self, f, upload_id, index, body, digest, etags, failure) -> None:
        try:
            response = self.client.upload_part(
                Bucket=self.options.bucket,
                Key=self._full_key(f.key),
                UploadId=upload_id,
                PartNumber=index + 1,
                Body=body,
                ContentMD5=_b64md5(digest),
                ContentLength=len(body),
            )
            etags[index] = self._check_etag(f"{f.key} part {index + 1}", response, digest.hex())
        except BaseException as exc:  # reported by the file's worker
            failure.append(exc)
        finally:
            if isinstance(body, FileRange):
                body.close()
            self.buffers.release()

    # --- resuming and cleaning up ------------------------------------------------------------
    def _marker_for(self, f: LocalFile, part_size: int) -> dict:
        return {"key": f.key, "size": f.size, "mtime_ns": f.mtime_ns, "inode": f.inode, "part_size": part_size}

    def _resume_or_create(self, f: LocalFile, part_size: int) -> tuple[str, dict[int, tuple[int, str]]]:
        """An upload id, and the parts already on the server (number -> (size, md5 hex))."""
        wanted = self._marker_for(f, part_size)
        with self._pending_lock:
            candidates = self.pending.get(f.key, [])
            resumable = next((p for p in candidates if p.marker == wanted), None)
            if resumable is not None:
                candidates.remove(resumable)
        if resumable is not None:
            try:
                parts = self._list_parts(self._full_key(f.key), resumable.upload_id)
                log.info("resuming upload of %s: %d part(s) already on the server", f.key, len(parts))
                return resumable.upload_id, parts
            except Exception as exc:  # gone or unreadable: start a fresh one
                log.debug("cannot resume %s: %s", f.key, exc)
        with self._pending_lock:
            self.multipart_keys.add(f.key)
        response = self.client.create_multipart_upload(
            Bucket=self.options.bucket, Key=self._full_key(f.key), **self._object_args(f)
        )
        upload_id = response["UploadId"]
        try:
            self.client.put_object(
                Bucket=self.options.bucket,
                Key=self.options.prefix + UPLOAD_MARKERS + upload_id,
                Body=json.dumps(wanted).encode(),
            )
        except Exception:
            self._abort(self._full_key(f.key), upload_id)
            raise
        return upload_id, {}

    def _list_parts(self, key: str, upload_id: str) -> dict[int, tuple[int, str]]:
        parts: dict[int, tuple[int, str]] = {}
        kwargs = {"Bucket": self.options.bucket, "Key": key, "UploadId": upload_id}
        while True:
            page = self.client.list_parts(**kwargs)
            for part in page.get("Parts", []):
                parts[part["PartNumber"]] = (part["Size"], part["ETag"].strip('"'))
            if not page.get("IsTruncated"):
                return parts
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.options.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            log.warning("could not abort an unfinished upload of %s: %s", key, exc)

    def _delete_marker(self, upload_id: str) -> None:
        try:
            self.client.delete_object(Bucket=self.options.bucket, Key=self.options.prefix + UPLOAD_MARKERS + upload_id)
        except Exception as exc:
            log.debug("could not delete upload marker %s: %s", upload_id, exc)

    def abort_leftovers(self, run_started, stale_after_seconds: float = 86400) -> int:
        """Abort unfinished uploads that no run will finish; returns how many.

        - Uploads found at the start and not resumed: ours (they have a marker), or anyone's
          older than a day. An overlapping run may lose an in-flight upload this way: it reports
          that file as failed, and the next run uploads it again.
        - Uploads made during this run for keys it uploaded: all of ours are finished by now, so
          these are orphans of a lost CreateMultipartUpload answer that botocore retried.
        `run_started` is the server's time at the start of the run.
        """
        with self._pending_lock:
            leftovers = [p for uploads in self.pending.values() for p in uploads]
            self.pending.clear()
        doomed = [
            (upload.key, upload.upload_id) for upload in leftovers
            if upload.marker is not None or (run_started - upload.initiated).total_seconds() >= stale_after_seconds
        ]
        try:
            after_run = list_pending_uploads(self.client, self.options.bucket, self.options.prefix) \
                if self.multipart_keys else []
        except Exception as exc:  # cleanup is best effort; the next run tries again
            log.warning("could not list unfinished uploads: %s", exc)
            after_run = []
        if after_run:
            for upload in after_run:
                key = upload["Key"][len(self.options.prefix):]
                if key in self.multipart_keys and upload["Initiated"] >= run_started:
                    doomed.append((key, upload["UploadId"]))
        for key, upload_id in doomed:
            self._abort(self._full_key(key), upload_id)
            self._delete_marker(upload_id)
        return len(doomed)
