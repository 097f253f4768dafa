"""Writing restored files (file_writes.py): holes for zeros, O_DIRECT where the filesystem suits, and the
fallback where it refuses. Against the real filesystem of the test's temporary folder."""

from __future__ import annotations

import mmap
import os
import random

import pytest
from s3backup_syncer.file_writes import (
    DIRECT_ALIGN,
    HOLE_BLOCK,
    FileWriter,
    direct_io_suits,
    filesystem_type,
)

from tests.support.page_cache import resident_bytes

MiB = 1024 * 1024

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:35 / /srv/backup\\040images rw,relatime shared:5 master:2 - nfs4 server:/export rw,vers=4.2
41 27 0:36 / /srv/backup rw - xfs /dev/vdb rw
42 41 0:37 / /srv/backup/tmp rw - tmpfs tmpfs rw
43 41 0:38 / /srv/backup/tmp rw - btrfs /dev/vdc rw
malformed line
"""


@pytest.mark.parametrize("path, expected", [
    ("/", "ext4"),
    ("/home/ops/dump.sql", "ext4"),
    ("/srv/backup images/vm.img", "nfs4"),  # \040 is a space; optional fields before "-" are skipped
    ("/srv/backup", "xfs"),
    ("/srv/backups", "ext4"),  # a mount point is a whole path component, not a string prefix
    ("/srv/backup/tmp/x", "btrfs"),  # mounted over: the last mount of a point is the one seen
])
def test_filesystem_type_is_that_of_the_deepest_mount_above_the_path(path, expected):
    assert filesystem_type(MOUNTINFO, path) == expected


def aligned_buffer(data: bytes) -> memoryview:
    """`data` in page-aligned memory, as download.py's thread buffers hold it."""
    buffer = memoryview(mmap.mmap(-1, max(len(data), 1)))[:len(data)]
    buffer[:] = data
    return buffer


def content_with_a_hole(rng: random.Random) -> bytes:
    """4 MiB + 1000 bytes: random data, an aligned MiB of zeros (a hole), and a tail no direct write can take."""
    return rng.randbytes(MiB) + bytes(MiB) + rng.randbytes(2 * MiB + 1000)


@pytest.fixture
def direct_folder(tmp_path):
    if not direct_io_suits(str(tmp_path)):
        pytest.skip("the temporary folder is not on a filesystem written with O_DIRECT")
    return tmp_path


def test_direct_writes_bypass_the_page_cache_keep_holes_and_the_content(direct_folder):
    data = content_with_a_hole(random.Random(1))
    path = direct_folder / "direct.img"
    writer = FileWriter.open(str(path), len(data), direct=True)
    try:
        assert writer.direct
        for offset in range(0, len(data), MiB):  # blocks as download.py hands them over
            writer.write(offset, aligned_buffer(data[offset:offset + MiB]))
    finally:
        writer.close()

    assert resident_bytes(path) <= DIRECT_ALIGN, "only the page of the unaligned tail went through the cache"
    assert path.stat().st_blocks * 512 <= len(data) - MiB + DIRECT_ALIGN, "the MiB of zeros is a hole"
    assert path.read_bytes() == data


def test_buffered_writes_without_direct_io_keep_holes_and_the_content(tmp_path):
    data = content_with_a_hole(random.Random(2))
    path = tmp_path / "buffered.img"
    writer = FileWriter.open(str(path), len(data), direct=False)
    try:
        for offset in range(0, len(data), MiB):
            writer.write(offset, aligned_buffer(data[offset:offset + MiB]))
    finally:
        writer.close()

    assert resident_bytes(path) >= len(data) - MiB, "written through the page cache"
    assert path.stat().st_blocks * 512 <= len(data) - MiB + HOLE_BLOCK
    assert path.read_bytes() == data


def test_unaligned_offsets_are_written_through_the_cache(direct_folder):
    """Ranges of a part size that is no multiple of the page size (5 MiB + 1) start at unaligned offsets."""
    part = 5 * MiB + 1
    data = random.Random(3).randbytes(2 * part)
    path = direct_folder / "odd-parts.img"
    writer = FileWriter.open(str(path), len(data), direct=True)
    try:
        writer.write(part, aligned_buffer(data[part:]))  # the second range first, as threads may
        writer.write(0, aligned_buffer(data[:part]))
    finally:
        writer.close()

    assert part - DIRECT_ALIGN <= resident_bytes(path) <= part + 2 * DIRECT_ALIGN, "the second range was buffered"
    assert path.read_bytes() == data


def test_a_direct_write_the_kernel_refuses_is_written_buffered_and_direct_io_stops(direct_folder):
    """Memory that is not page-aligned breaks the contract on purpose: the kernel answers EINVAL, as a filesystem
    that opens with O_DIRECT but will not write with it does."""
    data = random.Random(4).randbytes(2 * MiB)
    unaligned = memoryview(bytearray(len(data) + 1))[1:]
    unaligned[:] = data
    path = direct_folder / "refused.img"
    open_before = len(os.listdir("/proc/self/fd"))
    writer = FileWriter.open(str(path), len(data), direct=True)
    try:
        writer.write(0, unaligned)
        assert not writer.direct, "no more direct writes to this file"
        writer.write(MiB, aligned_buffer(data[MiB:]))  # aligned, yet buffered from now on
    finally:
        writer.close()

    assert len(os.listdir("/proc/self/fd")) == open_before, "both descriptors are closed, the refused one's too"
    assert resident_bytes(path) == len(data)
    assert path.read_bytes() == data
