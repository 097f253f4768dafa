"""Uploads with bounded memory and explicit integrity.

Memory bound (the s3transfer model): a fixed pool of `concurrency` buffers. A buffer is taken
before a part (or a whole small file) is read and given back when its request is done, so at
most `concurrency x min(part size, BUFFER_LIMIT)` bytes of file data are in memory: 64 MiB with
the defaults (8 x 8 MiB), plus a small constant. The buffers are reused, not reallocated per part,
so the process's memory does not drift with the allocator. Parts above BUFFER_LIMIT (files over
640 GiB with automatic part sizes) are not held at all: they are hashed from disk, then streamed
from disk, and the server's Content-MD5 check catches any difference between the two reads.

Integrity: every request carries Content-MD5, and a CRC32 (`x-amz-checksum-crc32`, taken by the thread
that sends the body, off the reader's sequential path) that the server stores with the object, so that a
restore can check the object by it at a quarter of MD5's CPU (download.py); a server that refuses the
CRC32 gets none for the rest of the run. Every part's and object's returned ETag is compared with the
locally computed one; a file whose size, mtime, ctime or inode changed during the upload is reported as
failed, and a multipart upload is then aborted before completion, so the previous remote version stays
intact.

Crash safety: each multipart upload gets a marker (upload_markers.py), so that a later run can
resume it when the file and the object settings are unchanged.

Integrity checks compare ETags only where the server's answer says they are MD5s: not under
SSE-KMS, DSSE-KMS or SSE-C, whether asked for with `--sse` or set as the bucket's default.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import mimetypes
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import botocore.exceptions

from .attributes_state import META_MODE, META_MTIME
from .config import SyncOptions
from .crc import crc32, crc32_header
from .direct_put import DirectPut
from .etag import META_MD5, multipart_etag_from_digests, part_count, part_size_for, server_etag_is_md5, uses_multipart
from .report import Summary
from .scan import LocalFile
from .units import READ_CHUNK, MiB
from .upload_markers import UploadMarkers, marker_for

log = logging.getLogger(__name__)

BUFFER_LIMIT = 64 * MiB
SMALL_BODY = 1 * MiB  # smaller bodies get a throwaway buffer; pooled buffers stay part-sized
SERVER_ETAG = -1  # hash-cache key of the ETag the server gave our upload, when it is not an MD5
#: Error codes of a 400 answer that may mean "no checksums here" (a 501 always does).
CHECKSUM_REFUSALS = {"InvalidArgument", "InvalidRequest", "NotImplemented", "XAmzContentChecksumMismatch",
                     "InvalidChecksum"}


def content_etag_to_record(etags: dict[int, str]) -> str | None:
    """Of an upload's ETags (`Uploader.upload`), the one s3backup's state must keep (attributes_state.py): a
    multipart upload's, where the server's ETag is no checksum. A single-part upload's MD5 is in its metadata."""
    if SERVER_ETAG not in etags:
        return None
    return next((etag for key, etag in etags.items() if key > 0), None)


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


class BufferPool:
    """`count` reusable buffers; `take()` blocks while all are lent out. This is the memory bound."""

    def __init__(self, count: int):
        self._free: queue.LifoQueue[bytearray] = queue.LifoQueue()
        for _ in range(count):
            self._free.put(bytearray())

    def take(self, size: int) -> tuple[bytearray, bytearray]:
        """(the slot's buffer to give back, a buffer of at least `size` bytes to read into)."""
        slot = self._free.get()
        if size <= SMALL_BODY:
            return slot, bytearray(size)  # small bodies don't make the pooled buffer part-sized
        if len(slot) < size:
            slot = bytearray(size)  # grows once per slot; reused from then on
        return slot, slot

    def give(self, slot: bytearray) -> None:
        self._free.put(slot)


class _RangeBody(io.RawIOBase):
    """A seekable, read-only request body of `length` bytes, read lazily (botocore may rewind it)."""

    def __init__(self, length: int):
        super().__init__()
        self._length, self._pos = length, 0

    def _read_at(self, position: int, size: int) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._pos
        size = remaining if size is None or size < 0 else min(size, remaining)
        data = self._read_at(self._pos, size)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._length


class MemoryBody(_RangeBody):
    """A window over a pooled buffer, so the part is never copied whole."""

    def __init__(self, view: memoryview):
        super().__init__(len(view))
        self._view = view

    def _read_at(self, position: int, size: int) -> bytes:
        return self._view[position:position + size].tobytes()


class FileRange(_RangeBody):
    """A window over `length` bytes of a file from `offset`, read from disk as it is sent."""

    def __init__(self, path: str, offset: int, length: int, limiter: RateLimiter):
        super().__init__(length)
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._offset = offset
        self._limiter = limiter

    def _read_at(self, position: int, size: int) -> bytes:
        self._file.seek(self._offset + position)
        data = self._file.read(size)
        self._limiter.consume(len(data))
        return data

    def close(self) -> None:
        self._file.close()
        super().close()


#: A compressed file is stored as what it is (`dump.sql.gz`: application/gzip, not application/sql),
#: never with a Content-Encoding, which would make HTTP clients unpack the backup on download.
_COMPRESSED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
                     "br": "application/x-brotli", "compress": "application/x-compress"}


def content_type(key: str) -> str:
    guessed, encoding = mimetypes.guess_type(key)
    if encoding:
        return _COMPRESSED_TYPES.get(encoding, "application/octet-stream")
    return guessed or "application/octet-stream"


def _b64md5(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _digests_of_range(path: str, offset: int, length: int) -> tuple[bytes, int]:
    """The MD5 and CRC32 of a range of a file, in one read."""
    digest, crc = hashlib.md5(), 0
    with open(path, "rb") as f:
        f.seek(offset)
        remaining = length
        while remaining:
            chunk = f.read(min(READ_CHUNK, remaining))
            if not chunk:
                raise FileChanged("file shrank while it was read")
            digest.update(chunk)
            crc = crc32(chunk, crc)
            remaining -= len(chunk)
    return digest.digest(), crc


@dataclass
class _Body:
    """One request's body, its MD5, and the pool buffer to give back once the request is done.

    `payload` is a bytearray whenever the body fills its buffer exactly (small files, every part but
    the last): botocore then sends it with one `sendall` instead of reading a file-like object in
    16 KiB pieces, which halves the client's CPU per part.
    """

    payload: _RangeBody | bytearray
    md5: bytes
    slot: bytearray | None  # None: streamed from disk, no pool buffer held
    data: memoryview | None = None  # the bytes in memory, for `crc32()`
    _crc32: int | None = None  # taken with the MD5 where the body is streamed from disk

    def __len__(self) -> int:
        return len(self.payload)

    def crc32(self) -> int:
        """The body's CRC32, taken once, by the thread that asks (a sender, beside the reader)."""
        if self._crc32 is None:
            assert self.data is not None
            self._crc32 = crc32(self.data)
        return self._crc32


def _headers(response: dict) -> dict[str, str]:
    return response.get("ResponseMetadata", {}).get("HTTPHeaders", {})


class Uploader:
    """Sends files to `bucket/prefix`, single-part or multipart, within the memory bound."""

    def __init__(self, client, options: SyncOptions, summary: Summary, markers: UploadMarkers):
        self.client = client
        self.options = options
        self.summary = summary
        self.markers = markers
        self.limiter = RateLimiter(options.bwlimit)
        self.buffers = BufferPool(options.concurrency)
        self.part_pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="s3backup-part")
        self.direct = DirectPut(client)
        self.objects_written = 0  # objects this run created or replaced (answers with an ETag)
        self._written_lock = threading.Lock()
        self.send_crc32 = True  # until the server refuses a checksum

    def close(self) -> None:
        self.part_pool.shutdown(wait=True)
        self.direct.close()

    # --- object settings -------------------------------------------------------------------
    def _object_args(self, f: LocalFile) -> dict:
        metadata = {META_MTIME: str(f.mtime_ns)}
        if f.mode is not None:
            metadata[META_MODE] = f"{f.mode:o}"
        args: dict = {"Metadata": metadata, "ContentType": content_type(f.key)}
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
    def _read_body(self, f: LocalFile, handle, offset: int, length: int) -> _Body:
        """Take a pool buffer and read one request's body into it (or, above BUFFER_LIMIT, hash it
        from disk and stream it from disk later). The caller gives the buffer back via `_release`."""
        if length > BUFFER_LIMIT:
            self.summary.add(bytes_hashed=length)
            md5, crc32 = _digests_of_range(f.path, offset, length)
            return _Body(FileRange(f.path, offset, length, self.limiter), md5, None, _crc32=crc32)
        slot, buffer = self.buffers.take(length)
        try:
            view = memoryview(buffer)[:length]
            handle.seek(offset)
            if handle.readinto(view) != length:
                raise FileChanged("file shrank while it was read")
        except BaseException:
            self.buffers.give(slot)
            raise
        self.summary.add(bytes_hashed=length)
        self.limiter.consume(length)
        payload = buffer if len(buffer) == length else MemoryBody(view)
        return _Body(payload, hashlib.md5(view).digest(), slot, view)

    def _release(self, body: _Body) -> None:
        if isinstance(body.payload, _RangeBody):
            body.payload.close()
        if body.slot is not None:
            self.buffers.give(body.slot)

    def _check_unchanged(self, f: LocalFile, handle) -> None:
        if not f.same_version(os.fstat(handle.fileno())) or not f.same_version(os.stat(f.path)):
            raise FileChanged("file changed while it was uploaded; it will be retried next run")

    def _check_etag(self, what: str, response: dict, expected: str) -> str:
        """The ETag the server answered, checked against ours when the answer says it is an MD5."""
        returned = response.get("ETag")
        if not returned:
            raise UploadFailed(f"{what}: the server's answer had no ETag (cut short?)")
        returned = returned.strip('"')
        if server_etag_is_md5(_headers(response), self.options.sse) and returned != expected:
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
                    key, (ours, theirs) = part_size, self._upload_multipart(f, handle, part_size)
                else:
                    key, (ours, theirs) = 0, self._upload_single(f, handle)
        except OSError as exc:
            raise UploadFailed(f"cannot read: {exc.strerror or exc}") from None
        # With SSE-KMS the server's ETag is not an MD5: remember it too (key -1), so that the hash
        # cache can still tell next time that the object is the one uploaded from this file version.
        return {key: ours} if ours == theirs else {key: ours, SERVER_ETAG: theirs}

    def _upload_single(self, f: LocalFile, handle) -> tuple[str, str]:
        body = self._read_body(f, handle, 0, f.size)
        try:
            if handle.read(1):
                raise FileChanged("file grew while it was read")
            self._check_unchanged(f, handle)
            args = self._object_args(f)
            args["Metadata"][META_MD5] = body.md5.hex()
            response = self._put_object(self._full_key(f.key), body, args)
            self._wrote()
        finally:
            self._release(body)
        etag = body.md5.hex()
        returned = self._check_etag(f.key, response, etag)
        self.summary.add(bytes_uploaded=f.size)
        return etag, returned

    def _put_object(self, key: str, body: _Body, args: dict) -> dict:
        """PutObject, sent directly when botocore has shown the way (see direct_put.py), with its CRC32 unless the
        server has refused one."""
        args = {**args, "ContentMD5": _b64md5(body.md5)}

        def put(args: dict) -> dict:
            return self.direct.send(key, body.payload, args, lambda: self.client.put_object(
                Bucket=self.options.bucket, Key=key, Body=body.payload, ContentLength=len(body), **args))

        if self.send_crc32:
            try:
                return put({**args, "ChecksumCRC32": crc32_header(body.crc32())})
            except botocore.exceptions.ClientError as exc:
                if not self._refuses_checksums(exc):
                    raise
                if isinstance(body.payload, _RangeBody):
                    body.payload.seek(0)
        return put(args)

    def _refuses_checksums(self, exc: botocore.exceptions.ClientError) -> bool:
        """Whether an upload's error says the server takes no checksums; if so, none are sent from now on."""
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code", "")
        if status != 501 and not (status == 400 and code in CHECKSUM_REFUSALS):
            return False
        if self.send_crc32:
            self.send_crc32 = False
            log.info("the server refused a CRC32 checksum (%s %s): uploads go on without one", status, code)
        return True

    def _upload_multipart(self, f: LocalFile, handle, part_size: int) -> tuple[str, str]:
        key = self._full_key(f.key)
        upload_id, done_parts, with_crc32 = self._resume_or_create(f, part_size)
        completed = False
        try:
            digests, parts = self._send_parts(f, handle, part_size, upload_id, done_parts, with_crc32)
            if handle.read(1):
                raise FileChanged("file grew while it was read")
            self._check_unchanged(f, handle)
            expected = multipart_etag_from_digests(b"".join(digests))
            response = self.client.complete_multipart_upload(
                Bucket=self.options.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            completed = True
            self._wrote()
            return expected, self._check_etag(f.key, response, expected)
        finally:
            if not completed:
                self.markers.abort(f.key, upload_id)
            self.markers.delete(upload_id)

    def _send_parts(self, f: LocalFile, handle, part_size: int, upload_id: str, done_parts: dict, with_crc32: bool):
        """Read parts in order (one sequential pass over the file) and send them in parallel."""
        count = part_count(f.size, part_size)
        digests: list[bytes] = [b""] * count
        crcs: list[int] = [0] * count
        etags: list[str] = [""] * count
        futures: list[Future] = []
        failure: list[BaseException] = []
        sent = 0
        for index in range(count):
            if failure:
                break
            offset = index * part_size
            length = min(part_size, f.size - offset)
            body = self._read_body(f, handle, offset, length)
            digests[index] = body.md5
            if done_parts.get(index + 1) == (length, body.md5.hex()):
                etags[index] = body.md5.hex()  # already on the server from an interrupted run
                crcs[index] = body.crc32() if with_crc32 else 0
                self._release(body)
                continue
            sent += length
            futures.append(self.part_pool.submit(self._send_part, f, upload_id, index, body, etags, failure,
                                                 crcs if with_crc32 else None))
        for future in futures:
            future.result()
        if failure:
            raise failure[0]
        self.summary.add(bytes_uploaded=sent, bytes_reused=f.size - sent)
        parts = [{"PartNumber": i + 1, "ETag": f'"{etags[i]}"',
                  **({"ChecksumCRC32": crc32_header(crcs[i])} if with_crc32 else {})} for i in range(count)]
        return digests, parts

    def _send_part(self, f: LocalFile, upload_id: str, index: int, body: _Body, etags: list, failure: list,
                   crcs: list | None) -> None:
        """Send one part; its ETag goes to `etags`, and, where the upload takes CRC32s, its CRC32 to `crcs`."""
        try:
            if crcs is not None:
                crcs[index] = body.crc32()
            response = self.client.upload_part(
                Bucket=self.options.bucket,
                Key=self._full_key(f.key),
                UploadId=upload_id,
                PartNumber=index + 1,
                Body=body.payload,
                ContentMD5=_b64md5(body.md5),
                ContentLength=len(body),
                **({"ChecksumCRC32": crc32_header(crcs[index])} if crcs is not None else {}),
            )
            etags[index] = self._check_etag(f"{f.key} part {index + 1}", response, body.md5.hex())
        except BaseException as exc:  # reported by the file's worker
            failure.append(exc)
        finally:
            self._release(body)

    def _wrote(self) -> None:
        """An object was written (before its ETag is checked: a mismatched one is written too)."""
        with self._written_lock:
            self.objects_written += 1

    def _resume_or_create(self, f: LocalFile, part_size: int) -> tuple[str, dict[int, tuple[int, str]], bool]:
        """An upload id, the parts already on the server (number -> (size, md5 hex)), and whether the upload
        takes CRC32s (COMPOSITE: each part's, and the CRC32 of those).

        An earlier run's upload is resumed only if its marker says it carries this file version,
        with this part size, and was created with the object settings this run would give it.
        """
        settings = self._object_args(f)
        if self.send_crc32:
            settings["ChecksumAlgorithm"] = "CRC32"
        wanted = marker_for(f, part_size, settings)
        resumable = self.markers.claim(f.key, wanted)
        if resumable is not None:
            try:
                parts = self.markers.parts_of(f.key, resumable.upload_id)
                log.info("resuming upload of %s: %d part(s) already on the server", f.key, len(parts))
                return resumable.upload_id, parts, "ChecksumAlgorithm" in settings
            except Exception as exc:  # gone or unreadable: start a fresh one
                log.debug("cannot resume %s: %s", f.key, exc)
        self.markers.created(f.key)
        try:
            response = self.client.create_multipart_upload(Bucket=self.options.bucket, Key=self._full_key(f.key),
                                                           **settings)
        except botocore.exceptions.ClientError as exc:
            if "ChecksumAlgorithm" not in settings or not self._refuses_checksums(exc):
                raise
            del settings["ChecksumAlgorithm"]
            wanted = marker_for(f, part_size, settings)
            response = self.client.create_multipart_upload(Bucket=self.options.bucket, Key=self._full_key(f.key),
                                                           **settings)
        upload_id = response["UploadId"]
        try:
            self.markers.write(upload_id, wanted)
        except Exception:
            self.markers.abort(f.key, upload_id)
            raise
        return upload_id, {}, "ChecksumAlgorithm" in settings
