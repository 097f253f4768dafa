"""Run one command and record what it cost: `python measure.py OUT.json -- COMMAND...`.

This process is the command's parent and does nothing but wait for it, so that:
- peak RSS is the kernel's own figure (`ru_maxrss` of the reaped children, as `/usr/bin/time -v`);
- bytes read are exact: Linux adds a reaped child's I/O counters (and those of the children it
  reaped) to its parent's, so the growth of this process's `/proc/self/io` across the wait is
  the command's whole process tree. `rchar` counts every byte returned by read() (files and
  sockets); `read_bytes` only what came from the block device (not the page cache).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def io_counters() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {name: int(value) for name, value in (line.split(":") for line in f if ":" in line)}


def main() -> int:
    out, separator, *command = sys.argv[1:]
    assert separator == "--", "usage: measure.py OUT.json -- COMMAND..."
    before = io_counters()
    started = time.monotonic()
    exit_code = subprocess.call(command, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - started
    after = io_counters()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "exit_code": exit_code,
        "wall_seconds": wall,
        "cpu_user_seconds": usage.ru_utime,
        "cpu_system_seconds": usage.ru_stime,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        **{f"io_{name}": after[name] - before.get(name, 0) for name in after},
    }
    with open(out, "w") as f:
        json.dump(result, f)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
