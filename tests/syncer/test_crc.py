"""crc.py: CRC32s of ranges fetched apart add up to the object's, as S3 stores it."""

from __future__ import annotations

import base64
import random
import zlib

import pytest
from s3backup_syncer.crc import PartCrcs, StoredCrc32, composite_crc32, crc32, crc32_combine, parse_stored_crc32


@pytest.mark.parametrize(("first", "second"), [(0, 0), (0, 7), (7, 0), (1, 1), (1000, 3), (3, 255), (3, 256),
                                               (5_000_001, 2_500_123), (10, 9 * 1024 * 1024 + 1)])
def test_combining_two_crc32s_gives_the_crc32_of_the_joined_bytes(first, second):
    rng = random.Random(first * 31 + second)
    a, b = rng.randbytes(first), rng.randbytes(second)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_part_crcs_fed_in_uneven_pieces_give_each_part_and_a_short_last_one():
    data = random.Random(1).randbytes(10_000)
    crcs = PartCrcs(4096)
    for start in range(0, len(data), 1000):  # pieces that straddle the parts' boundaries
        crcs.update(data[start:start + 1000])
    parts = [data[start:start + 4096] for start in range(0, len(data), 4096)]
    assert crcs.crcs() == b"".join(zlib.crc32(part).to_bytes(4, "big") for part in parts)
    assert composite_crc32(crcs.crcs()) == zlib.crc32(crcs.crcs())


@pytest.mark.parametrize(("header", "parsed"), [
    ("aq1KSA==-2", StoredCrc32(int.from_bytes(base64.b64decode("aq1KSA=="), "big"), 2)),
    ("fSVlNQ==", StoredCrc32(int.from_bytes(base64.b64decode("fSVlNQ=="), "big"), 0)),
    (None, None), ("", None),
    ("aq1KSA==-x", None),  # a part count that is no number
    ("AAAAAAAA", None),  # six bytes: no CRC32
    ("not base64!", None),
])
def test_a_stored_crc32_is_read_from_its_header_or_not_at_all(header, parsed):
    assert parse_stored_crc32(header) == parsed


@pytest.mark.parametrize("length", [0, 1, 15, 16, 63, 64, 4096, 1_000_003])
def test_the_crc32_taken_is_zlibs_whole_and_carried_on_from_a_previous_value(length):
    """crc.crc32 is ISA-L's where installed; it must agree with zlib's (S3's CRC32) at every length, across the
    folding's block sizes, and when it continues from a running value, as the ranges and senders use it."""
    data = random.Random(length).randbytes(length)
    assert crc32(data) == zlib.crc32(data)
    cut = length // 3
    assert crc32(memoryview(data)[cut:], crc32(data[:cut])) == zlib.crc32(data)
