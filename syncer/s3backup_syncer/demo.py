"""`s3backup demo`: the main job against a throwaway local S3, twice, to show it end to end."""

from __future__ import annotations

import filecmp
import os
import random
import tempfile
import time
from pathlib import Path

from .config import MiB, SyncOptions
from .engine import run_sync
from .hashcache import RACY_WINDOW_NS
from .local_s3 import LocalS3
from .report import human_bytes
from .restore import RestoreOptions, describe_restore, run_restore
from .verify import VerifyOptions, describe_verify, run_verify

BUCKET = "s3backup-demo"


def make_sample(root: Path) -> None:
    """A small tree like a backup volume: dumps, a multipart-sized image, awkward names."""
    rng = random.Random(42)
    (root / "db").mkdir(parents=True)
    (root / "vm").mkdir()
    (root / "misc dir" / "ünïcødé").mkdir(parents=True)
    for day in range(1, 6):
        (root / "db" / f"dump-2026-11-0{day}.sql").write_bytes(rng.randbytes(200_000 + day * 1000))
    (root / "vm" / "disk.img").write_bytes(rng.randbytes(20 * MiB))  # three 8 MiB parts
    (root / "misc dir" / "ünïcødé" / "100% #1 + more?.txt").write_text("odd names round-trip\n")
    (root / "misc dir" / "empty").write_bytes(b"")


def run_demo(directory: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="s3backup-demo-") as scratch:
        source = Path(directory) if directory else Path(scratch) / "sample"
        settled_at = 0.0
        if directory is None:
            make_sample(source)
            settled_at = time.time() + RACY_WINDOW_NS / 1e9  # the hash cache trusts no fresher hash
            print(f"generated a sample tree in {source}")
        elif not source.is_dir():
            print(f"s3backup: error: {directory!r} is not a directory")
            return 2
        print("starting a local S3 (SeaweedFS) on 127.0.0.1 ...", flush=True)
        with LocalS3() as s3:
            s3.create_bucket(BUCKET)
            os.environ.update(s3.env())
            options = SyncOptions(source=source, bucket=BUCKET, prefix="demo/", endpoint_url=s3.endpoint_url,
                                  path_style=True)
            time.sleep(max(0.0, settled_at - time.time()))
            for attempt, title in enumerate(("first run", "second run (nothing changed)"), start=1):
                summary = run_sync(options)
                print(f"{title}: scanned {summary.files_scanned} files ({human_bytes(summary.bytes_scanned)}), "
                      f"uploaded {summary.files_uploaded} ({human_bytes(summary.bytes_uploaded)}), "
                      f"unchanged {summary.files_unchanged}, failed {summary.files_failed}, "
                      f"read {human_bytes(summary.bytes_hashed)} for checksums, {summary.duration_seconds:.2f}s")
                if summary.exit_code:
                    return summary.exit_code
                if attempt == 2 and (summary.files_uploaded or summary.bytes_hashed):
                    print("unexpected: the second run uploaded or re-read data")
                    return 1
            listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="demo/")
            print(f"s3://{BUCKET}/demo/ now holds {listing['KeyCount']} objects (including s3backup's state)")
            return _check_the_way_back(source, Path(scratch) / "restored", s3.endpoint_url)
    return 0


def _check_the_way_back(source: Path, target: Path, endpoint_url: str) -> int:
    """verify (every object downloaded and checked) and restore into `target`, compared with the source."""
    where = {"bucket": BUCKET, "prefix": "demo/", "endpoint_url": endpoint_url, "path_style": True}
    verified = run_verify(VerifyOptions(source=source, sample_percent=100, seed=0, **where))
    print(f"verify --sample 100: {describe_verify(verified)}")
    restored = run_restore(RestoreOptions(target=target, **where))
    print(f"restore: {describe_restore(restored)}")
    if verified.exit_code or restored.exit_code:
        return verified.exit_code or restored.exit_code
    comparison = filecmp.dircmp(source, target)
    if _differences(comparison):
        print(f"unexpected: the restored tree differs from the source: {_differences(comparison)}")
        return 1
    print(f"the restored tree in {target} equals the source, byte for byte")
    return 0


def _differences(comparison: filecmp.dircmp) -> list[str]:
    found = [*comparison.left_only, *comparison.right_only, *comparison.funny_files]
    _, mismatch, errors = filecmp.cmpfiles(comparison.left, comparison.right, comparison.common_files, shallow=False)
    found += mismatch + errors
    for sub in comparison.subdirs.values():
        found += _differences(sub)
    return found
