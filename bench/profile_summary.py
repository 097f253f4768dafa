#!/usr/bin/env python3
"""Where s3backup's CPU goes, from the py-spy profiles `bench/run.py --profile DIR` keeps.

    python3 bench/run.py --scale 0.25 --scenarios small --repeats 1 --profile /tmp/prof --out /tmp/prof-report
    python3 bench/profile_summary.py /tmp/prof            # one table per profiled run

Each sample (a stack, leaf last, as py-spy's raw format writes it) is charged to the first group, from the
leaf up, whose pattern its frame's file matches: so time in botocore's signer or in sigv4.py is "SigV4
signing", and time in our own code that calls into C (hashlib, os.stat, sqlite3) is ours; a stack
under importlib is start-up, whatever module it runs. bench/run.py samples only the thread that holds the GIL
(py-spy --gil): where the interpreter's time goes, which is what bounds a Python process on many small
requests. Work done with the GIL released (MD5 of large buffers, socket waits) is not in it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# (group, pattern on a frame's file path), tried in this order on each frame from the leaf up.
GROUPS = [
    ("SigV4 signing (botocore/auth.py, s3backup's sigv4.py)", r"(botocore/auth|s3backup_syncer/sigv4)\.py"),
    ("HTTP: http.client, urllib3, aiohttp and its event loop, sockets",
     r"(http/client\.py|urllib3/|aiohttp/|yarl/|multidict/|asyncio/|socket\.py|ssl\.py|selectors\.py)"),
    ("botocore: request building, endpoints, parsing, hooks", r"botocore/"),
    ("s3backup: scan, plan, hash, transfer, state", r"s3backup_syncer/"),
    ("threads, queues, logging, other standard library", r"python3\.\d+/"),
]
FRAME_FILE = re.compile(r"\(([^()]*?):\d+\)\s*$")


IMPORTING = "start-up: importing modules (any stack under importlib)"


def charge(stack: str) -> str:
    frames = stack.split(";")
    if "<frozen importlib" in stack:
        return IMPORTING
    for frame in reversed(frames):
        match = FRAME_FILE.search(frame)
        path = match.group(1) if match else frame
        for group, pattern in GROUPS:
            if re.search(pattern, path):
                return group
    return "other"


def summarize(path: Path) -> Counter[str]:
    samples: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[charge(stack)] += int(count)
    return samples


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    profiles = sorted(args.directory.glob("*.txt"))
    if not profiles:
        print(f"profile_summary: no py-spy profiles (*.txt) in {args.directory}", file=sys.stderr)
        return 2
    for profile in profiles:
        samples = summarize(profile)
        total = sum(samples.values()) or 1
        print(f"\n{profile.name} ({total:,} samples of the GIL's holder at 100 Hz: {total / 100:.1f} s)\n")
        print("| where | share of the GIL's time |\n|---|---|")
        for group, count in samples.most_common():
            print(f"| {group} | {count / total:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
