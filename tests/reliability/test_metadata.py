"""Object metadata: `s3backup-mtime` is the source file's mtime (README.md, "Object metadata"), also after a change that
touches the mtime only (`touch`, a rewrite with the same bytes), which a restore would otherwise undo."""

from __future__ import annotations

import os

from tests.reliability.helpers import assert_bucket_matches, run_syncer, write_tree


def test_mtime_only_change_updates_the_recorded_mtime(s3, src, s3_url, prefix, direct):
    write_tree(src, {"report.pdf": 4000, "empty.txt": 0}, seed=1)
    assert run_syncer(src, s3_url, s3.endpoint_url).returncode == 0
    for name in ("report.pdf", "empty.txt"):
        stat = (src / name).stat()
        os.utime(src / name, ns=(stat.st_atime_ns, stat.st_mtime_ns + 3_600_000_000_000))
    run = run_syncer(src, s3_url, s3.endpoint_url)
    assert run.returncode == 0, run.stderr
    assert run.summary["bytes_uploaded"] == 0  # same bytes: nothing to send, only metadata to fix
    assert_bucket_matches(direct, prefix, src)
