"""The local walk: files under the source, in S3's key order (UTF-8 bytes), one directory at a time.

S3 lists keys in UTF-8 byte order. Sorting each directory by name does not give that order
(`a/b` comes after `a-b` and `a.b`, because `/` is 0x2F), so each directory's entries are
sorted by their name as bytes, with `/` appended to subdirectories. Memory is bounded by the
entries of the directories on the current path.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .filters import LOST_FOUND, Filters

log = logging.getLogger(__name__)

#: S3's limit on a key's length, in UTF-8 bytes.
MAX_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class LocalFile:
    key: str  # relative to the source, `/`-separated
    path: str  # absolute path to open
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    mode: int | None = None  # permission bits (stat.S_IMODE); None when not known

    def same_version(self, st: os.stat_result) -> bool:
        """Whether `st` still describes the file we scanned (content assumed unchanged if so)."""
        # ctime too: an in-place rewrite that puts the mtime back (rsync --inplace -t, touch -r) still moves it.
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == (
            self.size, self.mtime_ns, self.ctime_ns, self.inode)


@dataclass(frozen=True, slots=True)
class ScanProblem:
    """A path the walk could not take; the run reports it as failed."""

    key: str
    message: str
    is_directory: bool = False


def key_order(key: str) -> bytes:
    """The sort key S3 uses: the key's UTF-8 bytes."""
    return key.encode("utf-8", "surrogateescape")


def walk(
    root: str,
    filters: Filters,
    *,
    key_prefix_bytes: int = 0,
    follow_symlinks: bool = False,
    on_excluded: Callable[[int], None] = lambda size: None,
    owns: Callable[[str], bool] | None = None,
    on_foreign: Callable[[], None] = lambda: None,
) -> Iterator[LocalFile | ScanProblem]:
    """Yield every regular file under `root` in key order, and a `ScanProblem` for what fails.

    Symlinks are not followed unless asked; other special files (sockets, FIFOs, devices) are
    skipped. A name that is not valid UTF-8 cannot be an S3 key: it is reported, not renamed.
    `owns` (a shard's): a file whose key it refuses is counted by `on_foreign` and never stat-ed.
    """
    root = os.path.abspath(root)
    visited = {_dir_identity(root)} if follow_symlinks else set()
    yield from _walk_dir(root, "", filters, key_prefix_bytes, follow_symlinks, visited, on_excluded,
                         owns, on_foreign)


def _dir_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk_dir(
    path: str,
    rel: str,
    filters: Filters,
    key_prefix_bytes: int,
    follow: bool,
    visited: set[tuple[int, int]],
    on_excluded: Callable[[int], None],
    owns: Callable[[str], bool] | None = None,
    on_foreign: Callable[[], None] = lambda: None,
) -> Iterator[LocalFile | ScanProblem]:
    try:
        with os.scandir(path) as entries:
            listed = []
            for entry in entries:
                try:
                    is_dir = entry.is_dir(follow_symlinks=follow)
                except OSError:
                    is_dir = False
                listed.append((key_order(entry.name + ("/" if is_dir else "")), entry, is_dir))
    except OSError as exc:
        yield ScanProblem(rel.rstrip("/") or ".", f"cannot list directory: {exc.strerror}", is_directory=True)
        return
    listed.sort(key=lambda item: item[0])
    for _, entry, is_dir in listed:
        key = rel + entry.name
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(key).decode("utf-8", "backslashreplace")
            yield ScanProblem(shown, "name is not valid UTF-8, so it cannot be an S3 key; rename it",
                              is_directory=is_dir)
            continue
        if is_dir:
            if not filters.wants_directory(key):
                if key == LOST_FOUND and not filters.include_lost_found:
                    log.info("skipped %s/ at the source root (fsck's folder; --include-lost-found backs it up)", key)
                continue
            if entry.is_symlink():
                if not follow:
                    continue
                identity = _dir_identity(entry.path)
                if identity in visited:
                    yield ScanProblem(key, "symlink loop: directory already visited", is_directory=True)
                    continue
                visited.add(identity)
            yield from _walk_dir(entry.path, key + "/", filters, key_prefix_bytes, follow, visited, on_excluded,
                                 owns, on_foreign)
            continue
        if owns is not None and not owns(key):
            on_foreign()
            continue
        if entry.is_symlink() and not follow:
            continue
        try:
            st = entry.stat(follow_symlinks=follow)
        except OSError as exc:
            yield ScanProblem(key, f"cannot stat: {exc.strerror}")
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if not filters.wants_file(key):
            on_excluded(st.st_size)
            continue
        if len(key.encode("utf-8")) + key_prefix_bytes > MAX_KEY_BYTES:
            yield ScanProblem(key, f"key longer than S3's limit of {MAX_KEY_BYTES} bytes")
            continue
        yield LocalFile(
            key=key,
            path=entry.path,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            inode=st.st_ino,
            mode=stat.S_IMODE(st.st_mode),
        )
