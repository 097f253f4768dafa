"""CRC32 checksums as S3 stores them (`x-amz-checksum-crc32`), and how the CRC32s of ranges fetched apart add up.

An object uploaded with a CRC32 checksum (boto3's default since 1.36, for one) keeps it: the CRC32 of its whole
content (a single-part object, or a multipart one of type FULL_OBJECT), or, of type COMPOSITE,
`crc32(crc32(part 1) + ... + crc32(part N))-N`, each part's CRC32 as 4 big-endian bytes. A CRC32 costs a small
share of an MD5's CPU (bench/micro.py), so a restore checks a large object that has one by it instead of by its ETag.
Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass

# Every CRC32 of content in s3backup is taken by `crc32`: ISA-L's, which folds with carry-less multiplies (~6x
# zlib's, bench/micro.py), or zlib's where isal has no wheel.
try:
    from isal.isal_zlib import crc32
except ImportError:
    from zlib import crc32


@dataclass(frozen=True)
class StoredCrc32:
    """The CRC32 an object's HEAD reports."""

    value: int
    parts: int  # 0: of the whole content; N: COMPOSITE, of the CRC32s of N parts


def crc32_header(value: int) -> str:
    """A CRC32 as `x-amz-checksum-crc32` carries it: 4 big-endian bytes, base64."""
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def parse_stored_crc32(header: str | None) -> StoredCrc32 | None:
    """From `x-amz-checksum-crc32` (`base64` or `base64-N`); None when absent or malformed."""
    if not header:
        return None
    encoded, dash, count = header.strip().partition("-")
    if dash and not count.isdigit():
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 4:
        return None
    return StoredCrc32(int.from_bytes(raw, "big"), int(count) if dash else 0)


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC32 of A + B from crc32(A), crc32(B) and len(B), as zlib's crc32_combine, which Python's zlib does not
    expose: crc32(A) goes through len(B) zero bytes, a linear map over GF(2), then takes crc32(B) in."""
    return _times(_zero_bytes(length2), crc1) ^ crc2 if length2 > 0 else crc1


@functools.lru_cache(maxsize=8)  # a restore's ranges share one length, bar the last of each object
def _zero_bytes(length: int) -> tuple[int, ...]:
    """The 32x32 bit matrix (a column per int) that feeds `length` zero bytes to a CRC32, by squaring."""
    one_bit = [0xEDB88320] + [1 << n for n in range(31)]  # the reflected polynomial, then shifts
    power = _square(_square(_square(one_bit)))  # one zero byte
    result = [1 << n for n in range(32)]  # identity
    while length:
        if length & 1:
            result = [_times(power, column) for column in result]
        length >>= 1
        if length:
            power = _square(power)
    return tuple(result)


def _times(matrix: list[int] | tuple[int, ...], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, column) for column in matrix]


def composite_crc32(part_crcs: bytes) -> int:
    """A COMPOSITE checksum's value, from its parts' CRC32s (4 big-endian bytes each, in order)."""
    return crc32(part_crcs)


class PartCrcs:
    """The CRC32s of consecutive parts of `part_size` bytes, fed in order from a part's start (PartDigests' twin)."""

    def __init__(self, part_size: int):
        self.part_size = part_size
        self.current = 0
        self.in_current = 0
        self.part_crcs = bytearray()

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            chunk = view[:self.part_size - self.in_current]
            self.current = crc32(chunk, self.current)
            self.in_current += len(chunk)
            view = view[len(chunk):]
            if self.in_current == self.part_size:
                self.part_crcs += self.current.to_bytes(4, "big")
                self.current, self.in_current = 0, 0

    def crcs(self) -> bytes:
        """The parts' CRC32s, concatenated; a last part cut short included."""
        if self.in_current:
            return bytes(self.part_crcs) + self.current.to_bytes(4, "big")
        return bytes(self.part_crcs)
