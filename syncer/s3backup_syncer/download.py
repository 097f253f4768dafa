"""Downloads with bounded memory and checked content: one object into one temporary file.

Memory bound: every request streams its body in STREAM_BLOCK (1 MiB) pieces through its thread's own
buffer into the file, so at most (file workers + range workers) x 1 MiB of object data is in memory:
16 MiB with the default concurrency of 8, whatever the objects' sizes. The bytes are received straight
into that buffer (`_BodyReader`), and a large object's blocks leave it by O_DIRECT where the
filesystem suits (file_writes.py), so the CPU copies each of their bytes once, from the socket.

Objects of RANGE_THRESHOLD or more are fetched in ranges, in parallel, each of whole parts of the part
size that most likely made the object, so the parts' MD5s, taken on the way, give the multipart ETag
without a second read. Where the object has a CRC32 the server stored (`x-amz-checksum-crc32`,
crc.py), the ranges take CRC32s instead of MD5s, for a fortieth of the CPU. A mismatch falls back on
the ETag, from the file. Every request names the exact object (its version, or `If-Match` on its
ETag), so ranges of two different writes of a key are never mixed.

Sparse files: the file is sized first (a hole), and blocks of zeros are not written, so runs of
zeros stay holes (file_writes.py).
"""

from __future__ import annotations

import contextlib
import http.client
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import botocore.exceptions
import urllib3.exceptions

from .crc import PartCrcs, StoredCrc32, composite_crc32, crc32, crc32_combine, parse_stored_crc32
from .direct_get import DirectGet, GetAnswer
from .etag import EtagHasher, PartDigests, multipart_etag_from_digests, parse_etag, part_count
from .file_writes import FileWriter
from .units import READ_CHUNK, MiB

STREAM_BLOCK = 1 * MiB  # hashed while in the core's cache; one direct write per MiB (256 KiB ones: 1.3x the time)
RANGE_THRESHOLD = 16 * MiB
SMALLEST_RANGE = 8 * MiB  # ranges for objects whose ETag says nothing of their parts
LARGEST_RANGE = 64 * MiB  # each GET costs the server a lookup of the object's chunks: fewer, longer ones
RANGES_AT_LEAST = 16
RANGE_ATTEMPTS = 4  # a body cut short is taken up where it stopped, this many times
_STREAM_ERRORS = (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


class DownloadFailed(Exception):
    """This object could not be restored; the run goes on with the others."""


class ContentMismatch(DownloadFailed):
    """The bytes received are not those the object's ETag promises."""


@dataclass(frozen=True)
class ObjectRef:
    """Exactly one stored object: a key and its version (or, without one, its ETag)."""

    bucket: str
    key: str  # full key, prefix included
    size: int
    etag: str  # without quotes
    version_id: str | None = None

    def request(self) -> dict:
        args = {"Bucket": self.bucket, "Key": self.key}
        if self.version_id:
            args["VersionId"] = self.version_id
        else:
            args["IfMatch"] = f'"{self.etag}"'
        return args


@dataclass
class Downloaded:
    metadata: dict[str, str]
    verified: bool  # False when neither the ETag (e.g. under SSE-KMS) nor the metadata has a checksum: size only
    by_crc32: bool = False  # checked by the CRC32 the server stored, not by MD5


def _close_quietly(body) -> None:
    """Drop a body read halfway, so its connection is not reused mid-answer."""
    with contextlib.suppress(Exception):  # already broken: nothing to give back
        body.close()


def hash_file(fd: int, size: int, part_sizes: tuple[int, ...]) -> dict[int, str]:
    """The ETags of the first `size` bytes of an open file, for several part sizes, in one read."""
    hasher = EtagHasher(part_sizes)
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(READ_CHUNK, size - offset), offset)
        if not chunk:
            raise DownloadFailed("the temporary file is shorter than the object")
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.etags()


def range_size_for(size: int, part_size: int) -> int:
    """Whole parts per ranged GET: up to LARGEST_RANGE, but fewer where the object would then give fewer than
    RANGES_AT_LEAST ranges, so the workers share its end too."""
    parts_per_range = max(1, min(LARGEST_RANGE // part_size, size // (part_size * RANGES_AT_LEAST)))
    return part_size * parts_per_range


class Downloader:
    """Fetches objects into temporary files and checks them against their ETags."""

    def __init__(self, client, concurrency: int, on_bytes: Callable[[int], None] = lambda n: None,
                 direct_io: bool = False):
        """`direct_io`: write large objects with O_DIRECT (file_writes.direct_io_suits of the target)."""
        self.client = client
        self.on_bytes = on_bytes
        self.direct_io = direct_io
        self.range_pool = ThreadPoolExecutor(concurrency, thread_name_prefix="s3backup-range")
        self.direct = DirectGet(client)

    def close(self) -> None:
        self.range_pool.shutdown(wait=True)
        self.direct.close()

    def fetch(self, ref: ObjectRef, path: str, etag_keys: tuple[int, ...],
              recorded_etag: Callable[[], str | None] = lambda: None) -> Downloaded:
        """Write the object to `path` (created or truncated) and check it. Raises DownloadFailed.

        `recorded_etag()`: the content's ETag in s3backup's state, asked where the object's is no checksum.
        """
        ranged = ref.size >= RANGE_THRESHOLD
        writer = FileWriter.open(path, ref.size, direct=ranged and self.direct_io)  # one hole, filled by the blocks
        try:
            crc_matches = None  # whether the CRC32 the server stored matches (None: none was used)
            if ranged:
                answer, etags, crc_matches = self._fetch_ranges(ref, writer, etag_keys)
            else:
                answer, etags = self._fetch_whole(ref, writer, etag_keys)
            if crc_matches:
                return Downloaded(answer.metadata, True, by_crc32=True)
            # An ETag that is no checksum (the answer says SSE-KMS, DSSE-KMS or SSE-C): the MD5 in the metadata,
            # or the ETag in s3backup's state, where the sync put one, else the size alone was checked
            expected = answer.expected_etag(ref.etag, recorded_etag)
            if expected is None and crc_matches is False:
                raise ContentMismatch("the content received does not match the CRC32 the server stored")
            verified = expected is not None and self._check(ref, writer.fd, etag_keys, etags, expected)
        finally:
            writer.close()
        return Downloaded(answer.metadata, verified)

    # --- one stream ----------------------------------------------------------------------------
    def _fetch_whole(self, ref: ObjectRef, writer: FileWriter,
                     etag_keys: tuple[int, ...]) -> tuple[GetAnswer, dict[int, str]]:
        hasher = EtagHasher(etag_keys[:1])  # the likeliest part size; `_check` reads the file for the others

        def consume(offset: int, block: memoryview) -> None:
            writer.write(offset, block)
            hasher.update(block)

        if ref.size == 0:  # no range of an empty object exists
            response = self.client.get_object(**ref.request())
            answer = _answer_of(response)
            if response["Body"].read(1):
                raise ContentMismatch("the object is no longer empty")
        else:
            answer = self._stream_range(ref, 0, ref.size, consume)
        return answer, hasher.etags()

    # --- ranges in parallel --------------------------------------------------------------------
    def _fetch_ranges(self, ref: ObjectRef, writer: FileWriter,
                      etag_keys: tuple[int, ...]) -> tuple[GetAnswer, dict[int, str], bool | None]:
        """(answer, ETags taken on the way, whether the stored CRC32 matches: None where none was used)."""
        multipart = [key for key in etag_keys if key]
        part_size = multipart[0] if multipart else SMALLEST_RANGE
        range_size = range_size_for(ref.size, part_size)
        stored = self._stored_crc32(ref)
        if stored and stored.parts and stored.parts != part_count(ref.size, part_size):
            stored = None  # a composite of other parts than those guessed: the ranges could not give it

        def fetch_range(start: int) -> tuple[GetAnswer, PartDigests | PartCrcs | _RangeCrc]:
            # a range starts at a part's start: its parts' MD5s or CRC32s, in order, or its own CRC32
            hasher = (PartDigests(part_size) if stored is None else PartCrcs(part_size) if stored.parts
                      else _RangeCrc())

            def consume(offset: int, block: memoryview) -> None:
                writer.write(offset, block)
                hasher.update(block)

            answer = self._stream_range(ref, start, min(start + range_size, ref.size), consume)
            return answer, hasher

        futures = [self.range_pool.submit(fetch_range, start) for start in range(0, ref.size, range_size)]
        wait(futures)  # every range is done with the file before anything closes it
        results = [future.result() for future in futures]
        answer, hashers = results[0][0], [hasher for _, hasher in results]
        if stored is not None:
            return answer, {}, _content_crc32(hashers, stored) == stored.value
        etags: dict[int, str] = {}
        if multipart:
            etags[part_size] = multipart_etag_from_digests(b"".join(h.digests() for h in hashers))  # type: ignore[union-attr]
        return answer, etags, None

    def _stored_crc32(self, ref: ObjectRef) -> StoredCrc32 | None:
        """The CRC32 the object was stored with, if any: a HEAD in checksum mode (a ranged GET carries none)."""
        try:
            head = self.client.head_object(**ref.request(), ChecksumMode="ENABLED")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return None  # the ranges take MD5s, as without one
        return parse_stored_crc32(head.get("ChecksumCRC32"))

    def _stream_range(self, ref: ObjectRef, start: int, end: int,
                      consume: Callable[[int, memoryview], None]) -> GetAnswer:
        """Bytes [start, end) through `consume(offset, block)`, in order; a cut body resumes where it stopped.

        `block` is this thread's page-aligned buffer (`_thread_buffer`), valid until `consume` returns.
        """
        position, answer, buffer = start, None, _thread_buffer()
        for attempt in range(1, RANGE_ATTEMPTS + 1):
            body = None
            try:
                this_answer, content_range, body = self._get(ref, f"bytes={position}-{end - 1}")
                total = content_range.rpartition("/")[2]
                if total and total != "*" and int(total) != ref.size:
                    raise ContentMismatch(f"the object is {total} bytes, not the {ref.size} listed")
                answer = answer or this_answer
                reader = _BodyReader(body)
                while position < end:
                    block = buffer[:min(STREAM_BLOCK, end - position)]
                    received = reader.fill(block)
                    if received:
                        consume(position, block[:received])
                        position += received
                        self.on_bytes(received)
                    if received < len(block):
                        raise DownloadFailed("the answer ended early")
                reader.done()
                return answer
            except (ContentMismatch, botocore.exceptions.ClientError):
                raise
            except (DownloadFailed, *_STREAM_ERRORS) as exc:
                if body is not None:
                    _close_quietly(body)
                if attempt == RANGE_ATTEMPTS:
                    raise DownloadFailed(f"download cut short {attempt} times: {exc}") from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _get(self, ref: ObjectRef, byte_range: str) -> tuple[GetAnswer, str, object]:
        """(GetAnswer, Content-Range, body): directly once the route is known, else through botocore."""
        if not ref.version_id:
            answer = self.direct.get(ref.key, {"Range": byte_range, "If-Match": f'"{ref.etag}"'})
            if answer is not None:
                return answer
        learning = not self.direct.ready and not ref.version_id
        if learning:
            self.direct.expect(ref.key)
        succeeded = False
        try:
            response = self.client.get_object(**ref.request(), Range=byte_range)
            succeeded = True
        finally:
            if learning:
                self.direct.learnt(ref.key, succeeded)
        return _answer_of(response), response.get("ContentRange", ""), response["Body"]

    # --- the check -----------------------------------------------------------------------------
    def _check(self, ref: ObjectRef, fd: int, etag_keys: tuple[int, ...], etags: dict[int, str],
               wanted: str) -> bool:
        """Whether the file's ETag is `wanted` (the object's, the MD5 in its metadata, or the ETag in s3backup's
        state), for the part sizes that could have made it.

        Raises ContentMismatch when none does. Part sizes not hashed on the way are hashed from
        the file; a multipart object that matches none of the likely part sizes is asked for the
        size of its first part (HEAD with partNumber=1), as a last resort.
        """
        _, parts = parse_etag(wanted)
        if parts == 0 and wanted != ref.etag:
            etag_keys = (0,)  # the metadata's MD5 is a plain one
        if not etag_keys:
            return False
        if wanted in etags.values():
            return True
        missing = tuple(key for key in etag_keys if key not in etags)
        if missing:
            etags.update(hash_file(fd, ref.size, missing))
            if wanted in etags.values():
                return True
        if parts > 1:
            part_size = self._first_part_size(ref)
            if part_size and part_size not in etags and wanted in hash_file(fd, ref.size, (part_size,)).values():
                return True
        source = ("the object's ETag" if wanted == ref.etag else "the MD5 in the object's metadata" if parts == 0
                  else "the ETag s3backup recorded for the object")
        raise ContentMismatch(f"the content received does not match {source}")

    def _first_part_size(self, ref: ObjectRef) -> int | None:
        try:
            head = self.client.head_object(**ref.request(), PartNumber=1)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return None
        size = head.get("ContentLength")
        return size if isinstance(size, int) and 0 < size < ref.size else None

    # --- scrub: a content check that keeps nothing -----------------------------------------------
    def content_matches(self, ref: ObjectRef, etag_keys: tuple[int, ...],
                        recorded_etag: Callable[[], str | None] = lambda: None) -> bool | None:
        """Download the object and tell whether its bytes give its content's ETag (None: none is known).

        A server that returns bytes other than those it stored fails this while its listing looks fine.
        """
        if not etag_keys:
            return None
        answer, etags = self._hash_stream(ref, etag_keys)
        expected = answer.expected_etag(ref.etag, recorded_etag)
        if expected is None:
            return None
        _, parts = parse_etag(expected)
        if parts == 0 and expected != ref.etag and 0 not in etags:  # an MD5 in a multipart object's metadata: rare
            etags = self._hash_stream(ref, (0,))[1]
        if expected in etags.values():
            return True
        if parts > 1:
            part_size = self._first_part_size(ref)
            if part_size and part_size not in etags:
                return expected in self._hash_stream(ref, (part_size,))[1].values()
        return False

    def _hash_stream(self, ref: ObjectRef, etag_keys: tuple[int, ...]) -> tuple[GetAnswer, dict[int, str]]:
        """What the answer says, and the ETags of the object's bytes for these part sizes (none if cut short)."""
        hasher = EtagHasher(etag_keys)
        if ref.size == 0:
            response = self.client.get_object(**ref.request())
            answer = _answer_of(response)
            hasher.update(response["Body"].read())
        else:
            answer = self._stream_range(ref, 0, ref.size, lambda offset, chunk: hasher.update(chunk))
        return answer, hasher.etags() if hasher.bytes == ref.size else {}


_THREAD_STATE = threading.local()


def _thread_buffer() -> memoryview:
    """This thread's STREAM_BLOCK buffer: page-aligned (an anonymous mapping), as O_DIRECT wants it, and reused,
    so no block costs an allocation; it goes with the thread."""
    buffer = getattr(_THREAD_STATE, "buffer", None)
    if buffer is None:
        buffer = _THREAD_STATE.buffer = memoryview(mmap.mmap(-1, STREAM_BLOCK))
    return buffer


class _BodyReader:
    """Reads an answer's body into the caller's buffer.

    urllib3's own `readinto` reads into a new bytes object and copies it over; under it, http.client's
    response reads from the socket straight into the buffer, one copy fewer per byte. That response is
    urllib3's private `_fp`, so it is taken only where it is there, and `read` + copy otherwise. Read past
    urllib3, the body's end is ours to check (the caller counts the bytes), and the connection goes back
    to urllib3's pool with `done()`.
    """

    def __init__(self, body):
        self._body = getattr(body, "_raw_stream", body)  # under botocore's StreamingBody: urllib3's response
        response = getattr(self._body, "_fp", None)
        self._response = response if isinstance(response, http.client.HTTPResponse) else None
        self._readinto = self._response.readinto if self._response is not None else self._read_and_copy

    def fill(self, block: memoryview) -> int:
        """Bytes read into `block`: all of it, or fewer where the body ended."""
        filled = 0
        while filled < len(block):
            received = self._readinto(block[filled:])
            if not received:
                break
            filled += received
        return filled

    def _read_and_copy(self, block: memoryview) -> int:
        data = self._body.read(len(block))
        block[:len(data)] = data
        return len(data)

    def done(self) -> None:
        """Every byte asked for was read: the connection may serve another request, if the answer is over."""
        if self._response is not None and not self._response.isclosed():  # a chunked answer's last chunk, unread
            _close_quietly(self._body)
            return
        release = getattr(self._body, "release_conn", None)
        if release is not None:
            release()


class _RangeCrc:
    """One range's CRC32 and length, to be combined with its neighbours' (crc32_combine)."""

    def __init__(self):
        self.value, self.length = 0, 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = crc32(data, self.value)
        self.length += len(data)


def _content_crc32(hashers: list, stored: StoredCrc32) -> int:
    """The whole content's CRC32, as `stored` has it, from its ranges' hashers in order."""
    if stored.parts:
        return composite_crc32(b"".join(hasher.crcs() for hasher in hashers))
    value = 0
    for hasher in hashers:
        value = crc32_combine(value, hasher.value, hasher.length)
    return value


def head(client, ref: ObjectRef) -> GetAnswer | None:
    """What a HEAD of the object says (its metadata, whether its ETag is a checksum); None if it fails."""
    try:
        return _answer_of(client.head_object(**ref.request()))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return None


def _answer_of(response: dict) -> GetAnswer:
    """A GetAnswer from botocore's parsed GetObject or HeadObject response, read from its headers as the direct
    paths read theirs."""
    return GetAnswer.of(response.get("ResponseMetadata", {}).get("HTTPHeaders", {}))
