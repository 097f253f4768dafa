"""Reading back what is really in the bucket, and running the CLI the way a user does."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from s3backup_syncer.attributes_state import open_recorded_attributes

STATE_PREFIX = ".s3backup/"


@dataclass(frozen=True)
class StoredObject:
    size: int
    md5: str  # of the downloaded content
    etag: str
    metadata: dict


def objects(client, bucket: str, prefix: str, *, download: bool = True) -> dict[str, StoredObject]:
    """Every object under `prefix/` except s3backup's own state, keyed relative to the prefix."""
    prefix = prefix.rstrip("/") + "/"
    found: dict[str, StoredObject] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"][len(prefix):]
            if key.startswith(STATE_PREFIX):
                continue
            md5, metadata = "", {}
            if download:
                response = client.get_object(Bucket=bucket, Key=item["Key"])
                body, digest = response["Body"], hashlib.md5()
                while chunk := body.read(1 << 20):
                    digest.update(chunk)
                md5, metadata = digest.hexdigest(), response["Metadata"]
            found[key] = StoredObject(item["Size"], md5, item["ETag"].strip('"'), metadata)
    return found


def local_tree(root: Path) -> dict[str, tuple[int, str, int]]:
    """Every regular file under `root`: key -> (size, md5, mtime_ns)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest = hashlib.md5()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            tree[path.relative_to(root).as_posix()] = (path.stat().st_size, digest.hexdigest(), path.stat().st_mtime_ns)
    return tree


def assert_mirrors(client, bucket: str, prefix: str, root: Path) -> dict[str, StoredObject]:
    """The bucket holds exactly the source: same keys, sizes, contents and source mtimes (as recorded
    by s3backup for that object, else in its `s3backup-mtime`)."""
    stored = objects(client, bucket, prefix)
    local = local_tree(root)
    assert sorted(stored) == sorted(local)
    with open_recorded_attributes(client, bucket, prefix) as recorded:
        for key, (size, md5, mtime_ns) in local.items():
            assert (stored[key].size, stored[key].md5) == (size, md5), key
            attributes = recorded.lookup(key, stored[key].etag)
            mtime = str(attributes.mtime_ns) if attributes else stored[key].metadata.get("s3backup-mtime")
            assert mtime == str(mtime_ns), key
    return stored


def pending_uploads(client, bucket: str, prefix: str) -> list[dict]:
    return client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])


@dataclass
class CliResult:
    code: int
    summary: dict
    stdout: str
    stderr: str


#: Root without any capability: permission bits bite again (as root, chmod 000 would not), and unlike running as
#: another user, nothing about where the repository is cloned needs to be readable by someone else.
NO_CAPABILITIES = ("setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all")


def run_cli(args: list[str], env: dict[str, str], tmp_path: Path, *, without_capabilities: bool = False,
            timeout: float = 180) -> CliResult:
    """`s3backup ARGS` in a subprocess, with `--summary-json` read back when the command is `sync`."""
    summary_path = tmp_path / f"summary-{os.urandom(4).hex()}.json"
    command = [sys.executable, "-m", "s3backup_syncer.cli", *args]
    if args and args[0] == "sync" and "--summary-json" not in args:
        command += ["--summary-json", str(summary_path)]
        summary_path.parent.mkdir(parents=True, exist_ok=True)
    if without_capabilities:
        command = [*NO_CAPABILITIES, *command]
    process = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() and summary_path.stat().st_size else {}
    return CliResult(process.returncode, summary, process.stdout, process.stderr)
