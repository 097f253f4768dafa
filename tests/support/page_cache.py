"""How much of a file is in the page cache: mincore(2) over a mapping of it, which touches none of its pages.

Through ctypes, since Python has no mincore; util-linux's `fincore` does the same but is not on every machine.
"""

from __future__ import annotations

import ctypes
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))


def resident_bytes(path: os.PathLike | str) -> int:
    """Bytes of `path` held in the page cache, in whole pages."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY) as mapping:
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
        vector = (ctypes.c_ubyte * pages)()
        if _libc.mincore(ctypes.c_void_p(address), size, vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        del address
    return sum(byte & 1 for byte in vector) * mmap.PAGESIZE
