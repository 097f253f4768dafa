"""Shared helpers of the reliability suite: trees, syncer runs, and the bucket check that decides a test."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import logging
import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from s3backup_syncer import cli
from s3backup_syncer.attributes_state import open_recorded_attributes
from s3backup_syncer.remote import make_s3_client

from tests.conftest import BUCKET

MiB = 1024 * 1024
SYNCER = [str(Path(sys.executable).parent / "s3backup")]
STATE_DIR = ".s3backup/"
META_MTIME = "s3backup-mtime"

#: Tests run as root, and root reads through `chmod 000` (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH). Without
#: any capability, root is held to the permission bits like any user, wherever the checkout lives.
NO_CAPABILITIES = ("setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all")

#: The operator's default user: a real non-root uid, for what root's own permission bits would let through
#: (a root-owned mode-0700 directory is readable by root even without capabilities).
NON_ROOT_UID = 65532
AS_NON_ROOT = ("setpriv", f"--reuid={NON_ROOT_UID}", f"--regid={NON_ROOT_UID}", "--clear-groups",
               "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all")

#: Figures for the README's reliability section, summed over the session (see conftest.py).
FIGURES: Counter[str] = Counter()


def write_tree(root: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, bytes]:
    """Files of pseudo-random content (different per file and seed); returns key -> content."""
    rng = random.Random(seed)
    contents = {}
    for key, size in sizes.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        path.write_bytes(data)
        contents[key] = data
    return contents


def local_keys(root: Path) -> dict[str, Path]:
    keys = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            keys[path.relative_to(root).as_posix()] = path
    return keys


@dataclass
class Run:
    returncode: int
    summary: dict
    stderr: str
    stdout: str = ""

    @property
    def killed(self) -> bool:
        return self.returncode < 0


def sync_args(src: Path, url: str, endpoint: str, *extra: str) -> list[str]:
    return [*SYNCER, "sync", str(src), url, "--endpoint-url", endpoint, "--path-style", "--summary-json", "-", "-q",
            *extra]


def let_others_reach(path: Path) -> None:
    """A checkout inside a 0700 folder (`mktemp -d`) hides the venv from uid 65532: open the way (x only)."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


let_others_reach(Path(sys.executable).parent)  # before any test runs the syncer as uid 65532


def run_syncer(src: Path, url: str, endpoint: str, *extra: str, env: dict | None = None, timeout: float = 120,
               unprivileged: bool = False, non_root: bool = False, wrapper: tuple[str, ...] = (),
               process: bool = False) -> Run:
    """Run `s3backup sync SRC URL --endpoint-url ENDPOINT --path-style --summary-json - -q EXTRA...`.

    In this process through `cli.main` (the CLI's own code path, ~1 s faster than a new interpreter on
    a loaded machine), or as a subprocess when asked (`process=True`), or when the run needs one:
    `unprivileged` runs it without any capability (see NO_CAPABILITIES), `non_root` as uid 65532 (see
    AS_NON_ROOT), `wrapper` under e.g. `faketime`.
    """
    FIGURES["syncer runs"] += 1
    if not (process or unprivileged or non_root or wrapper):
        return _run_in_process(sync_args(src, url, endpoint, *extra)[1:], env or {})
    command = [*wrapper, *sync_args(src, url, endpoint, *extra)]
    env = {**os.environ, **(env or {})}
    if unprivileged:
        command = [*NO_CAPABILITIES, *command]
    elif non_root:
        command = [*AS_NON_ROOT, *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    return _finish(result.returncode, result.stdout, result.stderr)


def run_command(command: str, *args: str, endpoint: str) -> Run:
    """`s3backup COMMAND ARGS... --endpoint-url ENDPOINT --path-style --summary-json - -q` (restore, verify), in
    this process."""
    FIGURES["syncer runs"] += 1
    return _run_in_process([command, *args, "--endpoint-url", endpoint, "--path-style", "--summary-json", "-", "-q"],
                           {})


def _finish(code: int, stdout: str, stderr: str) -> Run:
    summary = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            summary = json.loads(line)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return Run(code, summary, stderr, stdout)


def _run_in_process(argv: list[str], env: dict[str, str]) -> Run:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    # `cli.setup_logging` sets levels on named loggers too: put every level back afterwards, so that
    # the tests that run after these (other folders included) see the logging they expect.
    saved_levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
                    if isinstance(logger, logging.Logger)}
    saved_env = {name: os.environ.get(name) for name in env}
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        gc.unfreeze()  # the CLI freezes what lives for a process's life (cli.long_lived_client); here, a run's
        root.handlers[:], root.level = saved_handlers, saved_level
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                logger.setLevel(saved_levels.get(name, logging.NOTSET))
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return _finish(code, out.getvalue(), err.getvalue())


def client_for(s3, endpoint: str | None = None, **config):
    """A client of the syncer's own kind, for `s3`'s credentials, optionally through a proxy."""
    return make_s3_client(endpoint_url=endpoint or s3.endpoint_url, region=s3.region, path_style=True,
                          access_key=s3.access_key, secret_key=s3.secret_key, **config)


def remote_objects(client, prefix: str) -> dict[str, dict]:
    """Objects under `prefix/` (state folder excluded), key relative to the prefix -> listing entry."""
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            key = item["Key"][len(prefix) + 1:]
            if not key.startswith(STATE_DIR):
                objects[key] = item
    return objects


def pending_uploads(client, prefix: str) -> list[dict]:
    return client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/").get("Uploads", [])


def upload_markers(client, prefix: str) -> list[str]:
    page = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/{STATE_DIR}uploads/")
    return [item["Key"] for item in page.get("Contents", [])]


def _md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def assert_bucket_matches(client, prefix: str, src: Path, *, markers_allowed: bool = False,
                          uploads_allowed: bool = False) -> int:
    """The decisive check: every local file is an object with the same bytes (downloaded here) and the
    right mtime for a restore (the one s3backup recorded for that object, else its `s3backup-mtime`),
    nothing else is there, and no multipart upload is left unfinished."""
    local = local_keys(src)
    remote = remote_objects(client, prefix)
    missing, extra = sorted(set(local) - set(remote)), sorted(set(remote) - set(local))
    assert not missing and not extra, f"missing {missing}, extra {extra}"
    with open_recorded_attributes(client, BUCKET, prefix) as recorded:
        for key, path in local.items():
            response = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")
            digest = hashlib.md5()
            for chunk in response["Body"].iter_chunks(MiB):
                digest.update(chunk)
            assert digest.hexdigest() == _md5_file(path), f"{key}: content differs from the source"
            assert response["ContentLength"] == path.stat().st_size
            attributes = recorded.lookup(key, response["ETag"])
            mtime = str(attributes.mtime_ns) if attributes else response["Metadata"].get(META_MTIME)
            assert mtime == str(path.stat().st_mtime_ns), f"{key}: wrong recorded mtime"
            FIGURES["objects verified"] += 1
            FIGURES["bytes verified"] += path.stat().st_size
    if not uploads_allowed:
        assert pending_uploads(client, prefix) == [], "unfinished multipart uploads left"
    if not markers_allowed:
        assert upload_markers(client, prefix) == [], "upload markers left behind"
    return len(local)
