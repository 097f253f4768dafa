#!/usr/bin/env python3
"""CPU per call of the pieces that the latest start-up and per-request changes replaced, old beside new.

    .venv/bin/python bench/micro.py          # a few seconds; a quiet machine

Each figure is the median of 5 rounds of CPU time (`time.process_time`, one thread), per call:
- signing one direct GetObject: botocore's S3SigV4Auth against sigv4.py (key cached per day);
- what botocore's 200-error check costs on a page of 1,000 listed keys (a full XML parse; remote.py now
  hands it an empty stand-in instead);
- finding the known services for the three model types a client loads: botocore's full scan of its data
  folders against remote.py's on-demand check of one service;
- checking 8 MiB of a restored large object: MD5 (its ETag) against CRC32 (where the server stored one;
  download.py, crc.py);
- that CRC32 (and every upload's, transfer.py): zlib's against ISA-L's, which crc.py takes.
These are parts of a request or of start-up, not whole runs: bench/run.py measures those. Needs the project's
.venv (scripts/bootstrap.sh test).
"""

from __future__ import annotations

import hashlib
import random
import statistics
import sys
import time
import zlib

import botocore.handlers
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.loaders import Loader
from s3backup_syncer.crc import crc32
from s3backup_syncer.remote import _model_loader
from s3backup_syncer.sigv4 import SigV4Signer

ROUNDS = 5
CREDENTIALS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
CONFIG = Config(s3={"payload_signing_enabled": False})
HEADERS = {"Range": "bytes=0-1048575", "If-Match": '"9b2cf535f27731c974343645a3985328"', "User-Agent": "bench"}
MODEL_TYPES = ("service-2", "endpoint-rule-set-1", "paginators-1")


def per_call(work, calls: int) -> float:
    """Median over ROUNDS of the CPU seconds of one call of `work(i)`."""
    rounds = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for index in range(calls):
            work(index)
        rounds.append((time.process_time() - started) / calls)
    return statistics.median(rounds)


def botocore_sign(index: int) -> None:
    request = AWSRequest(method="GET", url=f"http://127.0.0.1:8333/bucket/p/d{index % 100:05d}/f{index:07d}.dat",
                         headers=HEADERS)
    request.context["client_config"] = CONFIG
    S3SigV4Auth(CREDENTIALS, "s3", "us-east-1").add_auth(request)


SIGNER = SigV4Signer(CREDENTIALS, "us-east-1", "s3")


def our_sign(index: int) -> None:
    SIGNER.sign("GET", f"http://127.0.0.1:8333/bucket/p/d{index % 100:05d}/f{index:07d}.dat", HEADERS)


def listing_page(keys: int = 1000) -> bytes:
    contents = "".join(
        f"<Contents><Key>p/d{index // 1000:05d}/f{index:07d}.dat</Key><LastModified>2026-11-30T08:00:01.000Z"
        f'</LastModified><ETag>"9b2cf535f27731c974343645a3985328"</ETag><Size>{64 + index % 513}</Size>'
        "<StorageClass>STANDARD</StorageClass></Contents>" for index in range(keys))
    return ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>bucket</Name><Prefix>p/</Prefix><KeyCount>{keys}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>false</IsTruncated>{contents}</ListBucketResult>").encode()


def main() -> int:
    page = listing_page()
    pieces = [random.Random(piece).randbytes(1024 * 1024) for piece in range(8)]  # 8 MiB, as a range reads it
    stand_in = b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult></ListBucketResult>'
    check = botocore.handlers._looks_like_special_case_error
    rows = [
        ("sign one direct GetObject", per_call(botocore_sign, 3000), per_call(our_sign, 3000)),
        ("botocore's 200-error check of one listing page (1,000 keys)",
         per_call(lambda _: check(200, page), 50), per_call(lambda _: check(200, stand_in), 50)),
        ("find the known services, 3 model types (once per run)",
         per_call(lambda _: [Loader().list_available_services(kind) for kind in MODEL_TYPES], 3),
         per_call(lambda _: [("s3" in _model_loader(None).list_available_services(kind)) for kind in MODEL_TYPES],
                  3)),
        ("check 8 MiB of a restored object: MD5, against the CRC32 the server stored",
         per_call(lambda _: [hashlib.md5(piece) for piece in pieces], 20),
         per_call(lambda _: [crc32(piece) for piece in pieces], 20)),
        ("CRC32 of 8 MiB: zlib's, against ISA-L's (crc.py)",
         per_call(lambda _: [zlib.crc32(piece) for piece in pieces], 20),
         per_call(lambda _: [crc32(piece) for piece in pieces], 20)),
    ]
    print(f"CPU per call, median of {ROUNDS} rounds (bench/micro.py)\n")
    print("| piece | before, µs | now, µs | saved, µs |\n|---|---|---|---|")
    for name, before, now in rows:
        print(f"| {name} | {before * 1e6:,.0f} | {now * 1e6:,.0f} | {(before - now) * 1e6:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
