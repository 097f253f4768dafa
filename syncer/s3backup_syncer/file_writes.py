"""Writing a restored file: holes where the content has runs of zeros, and O_DIRECT where it pays.

Holes: the file is sized first (one hole), and aligned blocks of HOLE_BLOCK zeros are never written.

O_DIRECT: a buffered write copies every byte into the page cache, and writers of one file queue on its
inode's lock, spinning while they wait. For a 3 GiB object that was most of a restore's CPU, on a
machine whose S3 server wants the same cores. A direct write hands the block to the disk instead.
It is used for the large objects' ranges (download.py), only on the local disk filesystems named in
DIRECT_FILESYSTEMS, and only for whole aligned blocks from page-aligned memory. Network filesystems
(NFS, SMB) turn each direct write into a synchronous round trip, so they keep the page cache. A
filesystem that refuses a direct write (EINVAL) gets buffered writes for the rest of that file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator

from .units import KiB

log = logging.getLogger(__name__)

HOLE_BLOCK = 64 * KiB  # zero runs of at least this (aligned) stay holes
DIRECT_ALIGN = 4 * KiB  # offset, length and memory of a direct write: the page size, which every disk accepts
DIRECT_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs"})  # local disks, by their mountinfo names
_ZEROS = bytes(HOLE_BLOCK)


def nonzero_runs(offset: int, data: bytes | memoryview) -> Iterator[tuple[int, int]]:
    """The [start, end) spans of `data` (to be written at file `offset`) left once aligned zero blocks are cut out.

    A block is tested with `bytes.startswith`, a memcmp without a copy: comparing memoryviews goes byte by
    byte, about 6 ms per MiB of zeros, more than the MD5 of it.
    """
    view = memoryview(data)
    position, end = 0, len(view)
    run_start = 0  # start of the pending non-zero run
    while position < end:
        block_end = min(end, position + HOLE_BLOCK - (offset + position) % HOLE_BLOCK)
        if block_end - position == HOLE_BLOCK and _ZEROS.startswith(view[position:block_end]):
            if run_start < position:
                yield run_start, position
            run_start = block_end
        position = block_end
    if run_start < end:
        yield run_start, end


def write_sparse(fd: int, offset: int, data: bytes | memoryview) -> None:
    """pwrite `data` at `offset`, leaving aligned blocks of zeros unwritten (holes in a sized file)."""
    view = memoryview(data)
    for start, end in nonzero_runs(offset, view):
        pwrite_all(fd, view[start:end], offset + start)


def write_whole(path: str, data: bytes) -> None:
    """Create (or truncate) `path` holding `data`, its aligned runs of zeros left as holes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, len(data))
        write_sparse(fd, 0, data)
    finally:
        os.close(fd)


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class FileWriter:
    """One sized file's writes, from several threads at once: holes for zeros, direct where it can be."""

    def __init__(self, fd: int, direct_fd: int | None):
        self.fd = fd
        self._direct_fd = direct_fd  # closed with the file
        self.direct = direct_fd is not None  # False once a direct write was refused: buffered from then on

    @classmethod
    def open(cls, path: str, size: int, direct: bool) -> FileWriter:
        """Create (or truncate) `path` at `size` bytes, open for reading back too; `direct`: try O_DIRECT."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            direct_fd = None
            if direct:
                try:
                    direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
                except OSError as exc:  # the filesystem has no direct I/O after all
                    log.debug("no O_DIRECT for %s: %s", path, exc)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, direct_fd)

    def close(self) -> None:
        if self._direct_fd is not None:
            with contextlib.suppress(OSError):  # nothing is pending: a direct write returns once done
                os.close(self._direct_fd)
            self._direct_fd = None
        os.close(self.fd)

    def write(self, offset: int, data: memoryview) -> None:
        """Write `data` at `offset`, zeros as holes. `data` must start on a page boundary (download.py's buffers
        do): a run that starts at an aligned offset then goes direct in whole aligned blocks, the rest buffered."""
        for start, end in nonzero_runs(offset, data):
            run, run_offset = data[start:end], offset + start
            if self.direct and run_offset % DIRECT_ALIGN == 0 and start % DIRECT_ALIGN == 0:
                whole = len(run) - len(run) % DIRECT_ALIGN
                if whole and self._write_direct(run[:whole], run_offset):
                    run, run_offset = run[whole:], run_offset + whole
            if run:
                pwrite_all(self.fd, run, run_offset)

    def _write_direct(self, run: memoryview, offset: int) -> bool:
        """Whether `run` went to the file directly; False (and buffered from now on) if the filesystem refused."""
        try:
            written = os.pwrite(self._direct_fd, run, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.debug("O_DIRECT refused (%s): buffered writes for the rest of the file", exc)
            self.direct = False
            return False
        if written < len(run):  # short: the rest, buffered, since its offset need not be aligned any more
            pwrite_all(self.fd, run[written:], offset + written)
        return True


def direct_io_suits(path: str) -> bool:
    """Whether `path` is on a filesystem where large files are written with O_DIRECT (DIRECT_FILESYSTEMS)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
            fstype = filesystem_type(mountinfo.read(), os.path.realpath(path))
    except OSError:  # not Linux, or no /proc: the page cache, as everywhere else
        return False
    return fstype in DIRECT_FILESYSTEMS


def filesystem_type(mountinfo: str, path: str) -> str | None:
    """The type of the filesystem `path` (absolute, symlinks resolved) is on, from /proc/self/mountinfo's text:
    the mount with the longest mount point above it; the last one mounted wins a tie."""
    best, best_length = None, -1
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:  # ID, parent, device, root, mount point, options, optional fields..., "-", type, source, options
            fstype, mount_point = fields[fields.index("-", 6) + 1], _unescape(fields[4])
        except (ValueError, IndexError):
            continue
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= best_length:
            best, best_length = fstype, len(mount_point)
    return best


def _unescape(field: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash in paths as octal escapes (\040)."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field
