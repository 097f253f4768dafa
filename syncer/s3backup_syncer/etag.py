"""S3 ETags computed locally, and the part-size rules they depend on (pure, plus one hasher).

A single-part object's ETag is the MD5 of its content. A multipart object's ETag is
`md5(md5(part 1) + ... + md5(part N))-N`: it depends on the part size, so it can only be
recomputed locally when the part size is known or guessed. Our own uploads use a deterministic
rule (`auto_part_size`, the same as aws-cli/boto3's defaults), so the listing's ETag is itself
the checksum to compare, with no HEAD request and no metadata.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import BinaryIO

from .errors import ConfigError
from .units import READ_CHUNK, GiB, MiB

MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
DEFAULT_PART_SIZE = 8 * MiB
#: Part sizes of other tools' defaults: rclone 5 MiB, aws-cli/boto3 8 MiB (doubled for big files),
#: s3cmd 15 MiB, s5cmd 50 MiB, and round numbers people configure.
COMMON_PART_SIZES = tuple(n * MiB for n in (5, 8, 15, 16, 32, 50, 64, 100, 128, 256, 512, 1024))
MAX_CANDIDATES = 8


def validate_part_size(part_size: int) -> None:
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ConfigError("invalid --part-size: S3 accepts 5MiB to 5GiB")


def auto_part_size(size: int) -> int:
    """8 MiB, doubled until the file fits in 10,000 parts (5 TiB -> 1 GiB parts)."""
    part_size = DEFAULT_PART_SIZE
    while -(-size // part_size) > MAX_PARTS:
        part_size *= 2
    return part_size


def part_size_for(size: int, configured: int | None) -> int:
    """The part size we upload `size` bytes with: the user's, raised if it needs > 10,000 parts."""
    if configured is None:
        return auto_part_size(size)
    minimum = -(-size // MAX_PARTS)
    return max(configured, -(-minimum // MiB) * MiB)


def uses_multipart(size: int, part_size: int) -> bool:
    """Like aws-cli: a file of at least one part size goes up in parts."""
    return size >= part_size


def part_count(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


def parse_etag(etag: str) -> tuple[str, int]:
    """`"abc-3"` -> ("abc", 3); a plain MD5 ETag -> (md5, 0)."""
    etag = etag.strip('"')
    digest, dash, count = etag.partition("-")
    if dash and count.isdigit():
        return digest, int(count)
    return etag, 0


def candidate_part_sizes(size: int, parts: int, configured: int | None) -> list[int]:
    """Part sizes that could have produced an N-part object of `size` bytes, most likely first.

    Every multipart object had parts of one size P (but the last) with ceil(size / P) == N.
    We try our own rule, the user's setting, other tools' defaults, and the smallest and
    largest whole-MiB sizes that fit (rclone picks the smallest that fits for big files).
    """
    if parts <= 1:
        return [max(size, MIN_PART_SIZE)]  # one part holding the whole file
    low = -(-size // parts)  # smallest P with ceil(size/P) <= parts
    high = -(-size // (parts - 1)) - 1  # largest P with ceil(size/P) >= parts
    if low > high:
        return []
    aws_doubled = [DEFAULT_PART_SIZE << k for k in range(8)]
    smallest_mib = -(-low // MiB) * MiB
    largest_mib = high // MiB * MiB
    ordered = [auto_part_size(size), configured, *COMMON_PART_SIZES, *aws_doubled, smallest_mib, largest_mib]
    result: list[int] = []
    for candidate in ordered:
        if candidate and low <= candidate <= high and candidate not in result:
            result.append(candidate)
    return result[:MAX_CANDIDATES]


class EtagHasher:
    """Computes, in one pass over the data, the ETags an object would have for several part sizes.

    Part size 0 means "uploaded in one piece" (plain MD5). `update()` takes the file in order.
    """

    def __init__(self, part_sizes: Iterable[int]):
        self.part_sizes = sorted(set(part_sizes))
        self._whole = hashlib.md5() if 0 in self.part_sizes else None
        self._multipart = {p: PartDigests(p) for p in self.part_sizes if p}
        self.bytes = 0

    def update(self, data: bytes | memoryview) -> None:
        self.bytes += len(data)
        if self._whole is not None:
            self._whole.update(data)
        for digest in self._multipart.values():
            digest.update(data)

    def update_from(self, handle: BinaryIO) -> EtagHasher:
        """Take all that `handle` reads from where it stands, READ_CHUNK at a time; returns the hasher."""
        while chunk := handle.read(READ_CHUNK):
            self.update(chunk)
        return self

    def etags(self) -> dict[int, str]:
        result = {p: d.etag() for p, d in self._multipart.items()}
        if self._whole is not None:
            result[0] = self._whole.hexdigest()
        return result


class PartDigests:
    """The MD5s of consecutive parts of `part_size` bytes, fed in order from a part's start."""

    def __init__(self, part_size: int):
        self.part_size = part_size
        self.current = hashlib.md5()
        self.in_current = 0
        self.part_digests = bytearray()

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            room = self.part_size - self.in_current
            chunk = view[:room]
            self.current.update(chunk)
            self.in_current += len(chunk)
            view = view[len(chunk):]
            if self.in_current == self.part_size:
                self.part_digests += self.current.digest()
                self.current = hashlib.md5()
                self.in_current = 0

    def digests(self) -> bytes:
        """The parts' 16-byte MD5s, concatenated; a last part cut short (or an empty whole) included."""
        if self.in_current or not self.part_digests:
            return bytes(self.part_digests + self.current.digest())
        return bytes(self.part_digests)

    def etag(self) -> str:
        return multipart_etag_from_digests(self.digests())


def multipart_etag_from_digests(part_digests: bytes) -> str:
    """ETag of a completed multipart upload, from the concatenated 16-byte MD5s of its parts."""
    return f"{hashlib.md5(part_digests).hexdigest()}-{len(part_digests) // 16}"


def etag_key(size: int, remote_etag: str, configured: int | None) -> list[int]:
    """The part-size keys (0 = plain MD5) under which a local ETag could match `remote_etag`."""
    _, parts = parse_etag(remote_etag)
    if parts == 0:
        return [0]
    return candidate_part_sizes(size, parts, configured)


# Object metadata: the content's MD5 (hex), written with every single-part upload. Where the ETag is no checksum
# (SSE-KMS, DSSE-KMS, SSE-C), restore and verify check the content against it instead of by its size alone.
META_MD5 = "s3backup-md5"


def server_etag_is_md5(headers: Mapping[str, str], requested_sse: str | None) -> bool:
    """Whether the ETag in an answer to an upload is the MD5 of what was sent.

    Not with SSE-KMS, DSSE-KMS or SSE-C. The answer's own headers decide (a bucket's default
    encryption applies without `--sse`), as well as what was asked for. `headers` are lower-case.
    """
    sse = (headers.get("x-amz-server-side-encryption") or "").lower()
    if sse.startswith("aws:kms") or headers.get("x-amz-server-side-encryption-customer-algorithm"):
        return False
    return requested_sse != "aws:kms"
