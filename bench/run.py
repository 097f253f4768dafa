#!/usr/bin/env python3
"""Side-by-side benchmark of `s3backup sync` and `s3backup restore` and the tools users would pick instead.

    python3 bench/run.py --scale quick     # a few minutes
    python3 bench/run.py --scale full      # the published pass (BENCHMARKS.md), about two hours on 2 cores

One command sets everything up: the project's .venv (scripts/bootstrap.sh demo) and bench/.venv
with the peers (bench/requirements.txt: rclone, aws-cli, s5cmd, s3cmd, py-spy), then re-runs
itself from bench/.venv. It starts SeaweedFS (s3backup_syncer.local_s3.LocalS3) on loopback
behind a counting proxy (bench/s3proxy.py), runs every tool on its own fresh prefix, measures each
run with bench/measure.py (wall time, CPU, peak RSS, bytes read), and writes BENCHMARKS.md.
Test data lives in a temporary folder (under $TMPDIR, /tmp by default), removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
BENCH_VENV = BENCH / ".venv"
PROJECT_VENV = REPO / ".venv"
KiB, MiB, GiB = 1024, 1024**2, 1024**3
BUCKET = "bench"
RUN_TIMEOUT = 1200  # seconds for one tool run; a stuck tool is killed and reported
SLOW_LINK_SECONDS = 0.05  # scenario RL: each request waits this long at the proxy, as for a bucket in another region
SCALES = {"quick": 0.05, "full": 1.0}
SCALE_OUT_START, SCALE_OUT_END = "<!-- scale-out:start -->", "<!-- scale-out:end -->"  # see bench/shards.py


# --- setting up ------------------------------------------------------------------------------------
def ensure_environment(argv: list[str]) -> None:
    """Install what the bench needs (once), then continue inside bench/.venv."""
    if not (PROJECT_VENV / "bin" / "s3backup").exists() or not (PROJECT_VENV / "bin" / "weed").exists():
        print("bench: setting up the project (scripts/bootstrap.sh demo)", flush=True)
        subprocess.run(["bash", str(REPO / "scripts" / "bootstrap.sh"), "demo"], check=True)
    requirements = (BENCH / "requirements.txt").read_text()
    stamp = BENCH_VENV / "installed-requirements.txt"
    if not stamp.exists() or stamp.read_text() != requirements:
        print("bench: installing the peers into bench/.venv", flush=True)
        if not (BENCH_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        pip = [str(BENCH_VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "-r", str(BENCH / "requirements.txt")], check=True)
        stamp.write_text(requirements)
    if Path(sys.prefix).resolve() != BENCH_VENV.resolve():
        # s3backup as installed: pip compiles an installed package's modules; those of this editable checkout are
        # compiled here, else a PYTHONDONTWRITEBYTECODE=1 environment would compile them in every measured run
        subprocess.run([str(PROJECT_VENV / "bin" / "python"), "-m", "compileall", "-q", str(REPO / "syncer"),
                        str(REPO / "operator")], check=True)
        python = str(BENCH_VENV / "bin" / "python")
        os.execv(python, [python, str(Path(__file__).resolve()), *argv])


# --- sizes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    scale: float
    small_files: int  # scenario 1 and 3
    large_files: int
    large_size: int  # scenario 2 and 4
    sparse_size: int
    memory_file: int  # scenario 5
    scale_files: int  # scenario 6

    @classmethod
    def for_scale(cls, scale: float) -> Sizes:
        return cls(
            scale=scale,
            small_files=max(200, round(20_000 * scale)),
            large_files=3,
            large_size=max(16 * MiB, round(GiB * scale / MiB) * MiB),
            sparse_size=max(64 * MiB, round(20 * GiB * scale / MiB) * MiB),
            memory_file=max(64 * MiB, round(5 * GiB * scale / MiB) * MiB),
            scale_files=max(2000, round(200_000 * scale)),
        )


def human(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{int(n)} B"


# --- test data ---------------------------------------------------------------------------------------
def past_the_racy_window() -> None:
    """s3backup's hash cache trusts no entry of a file changed within 2 s of its hashing (hashcache.py's
    RACY_WINDOW_NS): freshly made trees age that long, so that a later no-change run reads nothing, as
    it would on a day when the files were not written seconds before the backup."""
    time.sleep(2.1)


def tree_stats(root: Path) -> tuple[int, int]:
    count = total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            count += 1
            total += os.stat(os.path.join(dirpath, name)).st_size
    return count, total


def tree_digest(root: Path) -> str:
    """One MD5 over every file's relative path and content, in a fixed order: two trees agree byte for byte."""
    digest = hashlib.md5()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(dirpath) / name
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            with open(path, "rb") as handle:
                while chunk := handle.read(8 * MiB):
                    digest.update(chunk)
    return digest.hexdigest()


def restore_runs(runner: Runner, tools: Tools, server: Server, scenario: str, prefix: str, source: Path,
                 data: Path, repeats: int = 1) -> None:
    """Each tool downloads the same prefix (uploaded by s3backup) into an empty folder; the folder must
    then hold exactly the source's files, byte for byte. The folder is removed after each run."""
    want = tree_digest(source)

    def restore_once(variant: Variant, index: int) -> Result:
        target = data / f"restore-{variant.slug}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        os.sync()  # the previous run's writes are on disk: no run pays for another's writeback
        result = runner.run(scenario, server, variant, target, prefix, record=False)
        result.verified = "yes" if tree_digest(target) == want else "NO: the restored files differ from the source"
        print(f"    restored tree matches the source: {result.verified}", flush=True)
        shutil.rmtree(target, ignore_errors=True)
        return result

    if repeats > 1:
        runner.rounds(tools.restore_variants, restore_once)
    else:
        runner.results += [restore_once(variant, 0) for variant in tools.restore_variants]


def nested_path(root: Path, index: int, per_dir: int) -> Path:
    leaf = index // per_dir
    return root / f"d{leaf % 20:02d}" / f"e{leaf // 20:03d}" / f"file-{index:07d}.bin"


def make_small_tree(root: Path, count: int, rng: random.Random) -> None:
    """`count` files of 1-64 KiB of random bytes, 100 per folder, in two levels of folders."""
    for index in range(count):
        path = nested_path(root, index, 100)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(rng.randint(KiB, 64 * KiB)))


def make_tiny_tree(root: Path, count: int, rng: random.Random) -> None:
    """`count` files of 1-100 bytes, 1,000 per folder: planning cost, not transfer cost."""
    for index in range(count):
        path = nested_path(root, index, 1000)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(rng.randint(1, 100)))


def write_random_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            block = min(remaining, 4 * MiB)
            f.write(os.urandom(block))
            remaining -= block


def make_sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def mutate_daily(root: Path, fraction: float, rng: random.Random) -> tuple[int, int]:
    """Change `fraction` of the files (half keep their size, half do not) and delete as many others."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    count = max(2, round(len(files) * fraction))
    picked = rng.sample(files, 2 * count)
    changed, deleted = picked[:count], picked[count:]
    for position, path in enumerate(changed):
        size = path.stat().st_size
        if position % 2:
            size = max(1, size + rng.choice((-1, 1)) * rng.randint(1, 512))
        path.write_bytes(os.urandom(size))
    for path in deleted:
        path.unlink()
    return len(changed), len(deleted)


# --- the server: SeaweedFS behind the counting proxy ----------------------------------------------------
class Server:
    """A fresh SeaweedFS with one bucket, and the counting proxy every tool talks to."""

    def __init__(self, workdir: Path, name: str):
        sys.path.insert(0, str(REPO / "syncer"))
        from s3backup_syncer.local_s3 import LocalS3, free_port  # stdlib only, safe outside the project venv

        self.data_dir = workdir / f"weed-{name}"
        self.proxy: subprocess.Popen | None = None
        self.s3 = LocalS3(data_dir=self.data_dir).start()
        try:
            port = free_port()
            with open(workdir / f"proxy-{name}.log", "ab") as log:
                self.proxy = subprocess.Popen(
                    [sys.executable, str(BENCH / "s3proxy.py"), self.s3.endpoint_url, str(port)],
                    stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                )
            self.proxy_port = int(self.proxy.stdout.readline())
            self.url = f"http://127.0.0.1:{self.proxy_port}"
            self.direct_url = self.s3.endpoint_url
            self.client = self._client()
            self.client.create_bucket(Bucket=BUCKET)
            # SeaweedFS allocates a bucket's volumes on its first write, which takes seconds: do that
            # here, so that no tool pays for it.
            for index in range(4):
                self.client.put_object(Bucket=BUCKET, Key=f"warm-up/{index}", Body=os.urandom(1024))
        except BaseException:
            self.stop()
            raise

    def _client(self):
        import awscli  # noqa: F401 - aws-cli vendors botocore; importing it first makes `botocore` importable
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.direct_url, region_name=self.s3.region,
            aws_access_key_id=self.s3.access_key, aws_secret_access_key=self.s3.secret_key,
            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                          response_checksum_validation="when_required", retries={"mode": "standard"}),
        )

    def _stats_request(self, method: str, path: str) -> dict:
        import urllib.request

        request = urllib.request.Request(self.url + "/__bench__/" + path, method=method, data=b"" if method == "POST"
                                         else None)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def cpu_seconds(self) -> float:
        """CPU time so far of the server and the counting proxy: on these few cores, the tools' runs cost it too."""
        ticks = 0
        for pid in (self.s3.pid, self.proxy.pid if self.proxy else None):
            with contextlib.suppress(OSError, TypeError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def reset_stats(self) -> None:
        self._stats_request("POST", "reset")

    def set_delay(self, seconds: float) -> None:
        """Hold every request this long at the proxy before forwarding it (0: no delay)."""
        self._stats_request("POST", f"delay?seconds={seconds}")

    def stats(self) -> dict:
        return self._stats_request("GET", "stats")

    def remote_tree(self, prefix: str) -> tuple[int, int]:
        """Objects and bytes under `prefix`, leaving out s3backup's own state folder."""
        count = total = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"][len(prefix):].startswith(".s3backup/"):
                    count += 1
                    total += item["Size"]
        return count, total

    def stop(self) -> None:
        if self.proxy is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proxy.pid, 15)
            self.proxy.wait()
            self.proxy = None
        self.s3.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


# --- the tools ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One way of running one tool: `tool` groups variants that share an upload."""

    tool: str
    mode: str  # what it compares by
    build: Callable[..., list[str]]
    concurrency_flag: bool = True  # has an equivalent of --concurrency 8

    @property
    def label(self) -> str:
        return self.tool if self.mode == "default" else f"{self.tool} {self.mode}"

    @property
    def slug(self) -> str:
        return self.label.replace(" ", "-").replace("--", "")


class Tools:
    """Command lines of every tool against one server; all use path-style addressing on the proxy."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        site = BENCH_VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        self.paths = {
            "s3backup": str(PROJECT_VENV / "bin" / "s3backup"),
            "rclone": str(BENCH_VENV / "bin" / "rclone"),
            "aws": str(BENCH_VENV / "bin" / "aws"),
            "s5cmd": str(site / "s5cmd" / "bin" / "s5cmd"),  # the Go binary, not its Python launcher
            "s3cmd": str(BENCH_VENV / "bin" / "s3cmd"),
        }
        (workdir / "rclone.conf").write_text("")
        for name, extra in (("aws-default.cfg", ""), ("aws-c8.cfg", "  max_concurrent_requests = 8\n")):
            (workdir / name).write_text(f"[default]\ns3 =\n  addressing_style = path\n{extra}")
        self.variants = [
            Variant("s3backup", "default", self.s3backup),
            Variant("rclone", "default", self.rclone),
            Variant("rclone", "--checksum", self.rclone),
            Variant("aws s3 sync", "default", self.aws),
            Variant("s5cmd", "default", self.s5cmd),
            Variant("s3cmd", "default", self.s3cmd, concurrency_flag=False),
        ]

        self.restore_variants = [
            Variant("s3backup", "restore", self.s3backup_restore),
            Variant("rclone", "copy", self.rclone_restore),
            Variant("aws s3 sync", "to a folder", self.aws_restore),
            Variant("s5cmd", "cp", self.s5cmd_restore),
        ]

    def env(self, server: Server) -> dict[str, str]:
        s3 = server.s3
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "S3_"))}
        env.update({
            "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_DEFAULT_REGION": s3.region, "AWS_REGION": s3.region,
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "no-credentials"),
            "AWS_CONFIG_FILE": str(self.workdir / "aws-default.cfg"),
            "RCLONE_CONFIG": str(self.workdir / "rclone.conf"),
            "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": s3.access_key, "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": s3.secret_key,
            "RCLONE_CONFIG_BENCH_REGION": s3.region, "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        })
        return env

    def s3cmd_config(self, server: Server, endpoint: str) -> str:
        path = self.workdir / f"s3cmd-{endpoint.rsplit(':', 1)[1]}.cfg"
        host = endpoint.removeprefix("http://")
        path.write_text(
            f"[default]\naccess_key = {server.s3.access_key}\nsecret_key = {server.s3.secret_key}\n"
            f"host_base = {host}\nhost_bucket = {host}\nuse_https = False\nbucket_location = {server.s3.region}\n"
            "signature_v2 = False\n"
        )
        path.chmod(0o600)
        return str(path)

    # Each builder: (variant, server endpoint, env, source dir, prefix, delete, concurrency8) -> argv
    def s3backup(self, v, endpoint, env, src, prefix, delete, c8):
        argv = [self.paths["s3backup"], "sync", src, f"s3://{BUCKET}/{prefix}", "--endpoint-url", endpoint,
                "--path-style", "-q"]
        if delete:
            argv += ["--recycle-after", "0s"]
        if c8:
            argv += ["--concurrency", "8"]
        return argv

    def rclone(self, v, endpoint, env, src, prefix, delete, c8):
        env["RCLONE_CONFIG_BENCH_ENDPOINT"] = endpoint
        argv = [self.paths["rclone"], "sync" if delete else "copy", src, f"bench:{BUCKET}/{prefix}"]
        if v.mode != "default":
            argv.append(v.mode)
        if c8:
            argv += ["--s3-upload-concurrency", "8"]
        return argv

    def aws(self, v, endpoint, env, src, prefix, delete, c8):
        if c8:
            env["AWS_CONFIG_FILE"] = str(self.workdir / "aws-c8.cfg")
        argv = [self.paths["aws"], "s3", "sync", src, f"s3://{BUCKET}/{prefix}", "--endpoint-url", endpoint,
                "--no-progress", "--only-show-errors"]
        return [*argv, "--delete"] if delete else argv

    def s5cmd(self, v, endpoint, env, src, prefix, delete, c8):
        argv = [self.paths["s5cmd"], "--endpoint-url", endpoint, "--log", "error", "sync"]
        if delete:
            argv.append("--delete")
        if c8:
            argv += ["--concurrency", "8"]
        return [*argv, src.rstrip("/") + "/", f"s3://{BUCKET}/{prefix}"]

    def s3cmd(self, v, endpoint, env, src, prefix, delete, c8):
        argv = [self.paths["s3cmd"], "-c", self.s3cmd_config_for(endpoint), "sync", "--no-progress", "--quiet"]
        if delete:
            argv.append("--delete-removed")
        return [*argv, src.rstrip("/") + "/", f"s3://{BUCKET}/{prefix}"]

    # Restore builders: the same signature, with `src` the folder to restore into (s3backup's own state excluded).
    def s3backup_restore(self, v, endpoint, env, target, prefix, delete, c8):
        return [self.paths["s3backup"], "restore", f"s3://{BUCKET}/{prefix}", target, "--endpoint-url", endpoint,
                "--path-style", "-q"]

    def rclone_restore(self, v, endpoint, env, target, prefix, delete, c8):
        env["RCLONE_CONFIG_BENCH_ENDPOINT"] = endpoint
        return [self.paths["rclone"], "copy", f"bench:{BUCKET}/{prefix}", target, "--exclude", ".s3backup/**"]

    def aws_restore(self, v, endpoint, env, target, prefix, delete, c8):
        return [self.paths["aws"], "s3", "sync", f"s3://{BUCKET}/{prefix}", target, "--endpoint-url", endpoint,
                "--no-progress", "--only-show-errors", "--exclude", ".s3backup/*"]

    def s5cmd_restore(self, v, endpoint, env, target, prefix, delete, c8):
        return [self.paths["s5cmd"], "--endpoint-url", endpoint, "--log", "error", "cp", "--exclude", ".s3backup/*",
                f"s3://{BUCKET}/{prefix}*", target.rstrip("/") + "/"]

    def s3cmd_config_for(self, endpoint: str) -> str:
        return self._s3cmd_configs[endpoint]

    def prepare(self, server: Server) -> None:
        self._s3cmd_configs = {url: self.s3cmd_config(server, url) for url in (server.url, server.direct_url)}

    def versions(self) -> dict[str, str]:
        def first_line(argv: list[str]) -> str:
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                return (out.stdout or out.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "unknown"

        ours = first_line([str(PROJECT_VENV / "bin" / "python"), "-c",
                           "import importlib.metadata as m; print(m.version('s3backup'))"])
        commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "syncer"],
                               capture_output=True, text=True).stdout.strip()
        source = hashlib.sha1()
        for path in sorted((REPO / "syncer").rglob("*.py")):
            source.update(path.read_bytes())
        state = f", syncer/ modified: source {source.hexdigest()[:8]}" if dirty else ""
        return {
            "s3backup": f"{ours} (commit {commit}{state})",
            "rclone": first_line([self.paths["rclone"], "version"]),
            "aws s3 sync": first_line([self.paths["aws"], "--version"]),
            "s5cmd": first_line([self.paths["s5cmd"], "version"]),
            "s3cmd": first_line([self.paths["s3cmd"], "--version"]),
            "SeaweedFS": first_line([str(PROJECT_VENV / "bin" / "weed"), "version"]),
            "Python": platform.python_version(),
        }


# --- one measured run ------------------------------------------------------------------------------------
@dataclass
class Result:
    scenario: str
    label: str
    tool: str
    mode: str
    wall: float = 0.0
    cpu: float = 0.0
    server_cpu: float = 0.0  # the server's and the counting proxy's, during the run
    peak_rss: int = 0
    rchar: int = 0
    read_bytes: int = 0
    exit_code: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    body_bytes_sent: int = 0
    verified: str = ""  # "yes", a mismatch, or "" when not checked
    note: str = ""
    walls: list[float] = field(default_factory=list)  # every repetition's wall time, when repeated


def median_run(runs: list[Result]) -> Result:
    """The repetition with the median wall time, standing for all of them (its CPU, RSS and requests belong
    to that one run); `walls` keeps every repetition's time for the spread."""
    ordered = sorted(runs, key=lambda r: r.wall)
    middle = ordered[(len(ordered) - 1) // 2]
    failed = next((r for r in runs if r.exit_code != 0 or (r.verified and r.verified != "yes")), None)
    chosen = failed or middle  # a failed repetition is reported, never hidden behind a median
    return dataclasses.replace(chosen, wall=statistics.median(r.wall for r in runs) if not failed else chosen.wall,
                               walls=[r.wall for r in runs])


class Runner:
    def __init__(self, workdir: Path, tools: Tools, profile_dir: Path | None, repeats: int):
        self.workdir = workdir
        self.tools = tools
        self.repeats = repeats  # rounds of the short scenarios (0, 1, 3, 4, R1, RL, R5); median and spread reported
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.results: list[Result] = []
        self.profile_dir = profile_dir
        self.startup: dict[str, Result] = {}  # tool -> its run over an empty source
        self._count = 0

    def measure_startup(self, server: Server, variants: list[Variant]) -> None:
        """What each tool costs doing nothing (empty source, empty prefix): mostly loading itself.

        Python tools read their own modules at start; that shows in `rchar` and is subtracted
        from the reads of the other runs to tell what they read of the data.
        """
        empty = self.workdir / "empty"
        empty.mkdir(exist_ok=True)
        wanted = [v for v in variants if v.tool not in self.startup and v.mode == "default"]
        rounds: dict[str, list[Result]] = {v.tool: [] for v in wanted}
        for _ in range(self.repeats):  # round-robin, so that a slow moment of the machine hits every tool
            for variant in wanted:
                rounds[variant.tool].append(self.run("0", server, variant, empty, f"s0/{variant.slug}/",
                                                     record=False))
        for tool, runs in rounds.items():
            self.startup[tool] = median_run(runs)

    def rounds(self, variants: list[Variant], one_run: Callable[[Variant, int], Result],
               between: Callable[[int], None] | None = None) -> None:
        """`repeats` rounds of every variant, round-robin; each variant's median run is recorded."""
        runs: dict[str, list[Result]] = {v.label: [] for v in variants}
        for index in range(self.repeats):
            if between is not None:
                between(index)
            for variant in variants:
                runs[variant.label].append(one_run(variant, index))
        self.results += [median_run(runs[v.label]) for v in variants]

    def run(self, scenario: str, server: Server, variant: Variant, src: Path, prefix: str, *,
            delete: bool = False, c8: bool = False, direct: bool = False, label: str | None = None,
            expect: tuple[int, int] | None = None, record: bool = True) -> Result:
        endpoint = server.direct_url if direct else server.url
        env = self.tools.env(server)
        argv = variant.build(variant, endpoint, env, str(src), prefix, delete, c8)
        self._count += 1
        name = f"{self._count:03d}-{scenario}-{variant.slug}".replace("/", "_")
        if self.profile_dir is not None and variant.tool == "s3backup":
            argv = [str(BENCH_VENV / "bin" / "py-spy"), "record", "--format", "raw", "--rate", "100", "--gil",
                    "--subprocesses", "-o", str(self.profile_dir / f"{name}.txt"), "--", *argv]
        out = self.logs / f"{name}.json"
        server.reset_stats()
        server_cpu_before = server.cpu_seconds()
        print(f"  {scenario}: {label or variant.label}{' (concurrency 8)' if c8 else ''} ...", end=" ", flush=True)
        with open(self.logs / f"{name}.log", "wb") as log:
            log.write((" ".join(argv) + "\n").encode())
            log.flush()
            process = subprocess.Popen([sys.executable, str(BENCH / "measure.py"), str(out), "--", *argv],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                process.wait(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        measured = json.loads(out.read_text()) if out.exists() else {"exit_code": -9}
        server_cpu = server.cpu_seconds() - server_cpu_before
        stats = server.stats()
        result = Result(
            scenario=scenario, label=label or variant.label, tool=variant.tool, mode=variant.mode,
            wall=measured.get("wall_seconds", RUN_TIMEOUT),
            cpu=measured.get("cpu_user_seconds", 0) + measured.get("cpu_system_seconds", 0), server_cpu=server_cpu,
            peak_rss=measured.get("peak_rss_bytes", 0), rchar=measured.get("io_rchar", 0),
            read_bytes=measured.get("io_read_bytes", 0), exit_code=measured["exit_code"],
            requests=stats["requests"], bytes_sent=stats["bytes_sent"], body_bytes_sent=stats["body_bytes_sent"],
        )
        if result.exit_code != 0:
            result.note = f"exit code {result.exit_code}; see log"
        if expect is not None:
            got = server.remote_tree(prefix)
            result.verified = "yes" if got == expect else (
                f"NO: {got[0]} objects/{got[1]} B, want {expect[0]}/{expect[1]}")
        print(f"{result.wall:.1f}s cpu {result.cpu:.1f}s server {result.server_cpu:.1f}s rss {human(result.peak_rss)} "
              f"read {human(result.rchar)} {_requests_text(result.requests)} {result.verified}", flush=True)
        if record:
            self.results.append(result)
        (self.logs / f"{name}.result.json").write_text(json.dumps(result.__dict__))
        return result


# --- scenarios -----------------------------------------------------------------------------------------------
def scenario_small(runner: Runner, tools: Tools, data: Path, sizes: Sizes, rng: random.Random) -> dict:
    """1: initial upload of many small files; 3: the daily re-run after 1% changed and 1% deleted."""
    src = data / "small"
    make_small_tree(src, sizes.small_files, rng)
    expect = tree_stats(src)
    past_the_racy_window()
    server = Server(runner.workdir, "small")
    try:
        tools.prepare(server)
        runner.measure_startup(server, tools.variants)
        # Round 0 uploads to the prefix the daily runs and the restore use; later rounds to prefixes of their own.
        runner.rounds(tools.variants, lambda variant, index: runner.run(
            "1", server, variant, src, f"s1{f'-{index}' if index else ''}/{variant.slug}/", delete=True,
            expect=expect, record=False))
        daily: dict[str, object] = {}

        def change_a_day(index: int) -> None:
            time.sleep(2)  # a changed file's mtime must be newer than its object's LastModified (seconds)
            daily["changed"], daily["deleted"] = mutate_daily(src, 0.01, rng)
            daily["expect"] = tree_stats(src)
            past_the_racy_window()  # as on a day when nothing was written seconds before the backup

        runner.rounds(tools.variants, lambda variant, index: runner.run(
            "3", server, variant, src, f"s1/{variant.slug}/", delete=True, expect=daily["expect"], record=False),
            between=change_a_day)
        changed, deleted, expect = daily["changed"], daily["deleted"], daily["expect"]
        slow_link = restore_small(runner, tools, server, src, data)
        ingest = ingest_small(runner, tools, server, src)
    finally:
        server.stop()
    return {"small_files": expect, "changed": changed, "deleted": deleted, **slow_link, **ingest}


def scenario_restore(runner: Runner, tools: Tools, data: Path, sizes: Sizes, rng: random.Random) -> dict:
    """R1 and RL alone, for work on the restore: the small-file set uploaded once by s3backup (not measured)."""
    src = data / "small"
    make_small_tree(src, sizes.small_files, rng)
    server = Server(runner.workdir, "restore")
    try:
        tools.prepare(server)
        ours = next(v for v in tools.variants if v.tool == "s3backup" and v.mode == "default")
        runner.run("setup", server, ours, src, "s1/s3backup/", direct=True, record=False,
                   expect=tree_stats(src), label="s3backup (setup)")
        return restore_small(runner, tools, server, src, data)
    finally:
        server.stop()


def scenario_restore_large(runner: Runner, tools: Tools, data: Path, sizes: Sizes) -> dict:
    """R2 and R5 alone, for work on the restore: the large files (the sparse one left out) and the big object,
    uploaded once by s3backup (not measured); R2 too runs `--repeats` rounds here."""
    large, memory = data / "large", data / "memory"
    for index in range(sizes.large_files):
        write_random_file(large / f"large-{index}.bin", sizes.large_size)
    write_random_file(memory / "one-big-file.bin", sizes.memory_file)
    server = Server(runner.workdir, "restore-large")
    try:
        tools.prepare(server)
        ours = next(v for v in tools.variants if v.tool == "s3backup" and v.mode == "default")
        for source, prefix in ((large, "s2/s3backup/"), (memory, "s5/s3backup/")):
            runner.run("setup", server, ours, source, prefix, direct=True, record=False,
                       expect=tree_stats(source), label="s3backup (setup)")
        restore_runs(runner, tools, server, "R2", "s2/s3backup/", large, data, repeats=runner.repeats)
        restore_runs(runner, tools, server, "R5", "s5/s3backup/", memory, data, repeats=runner.repeats)
    finally:
        server.stop()
    return {"large": tree_stats(large), "sparse": False, "memory_file": sizes.memory_file}


def restore_small(runner: Runner, tools: Tools, server: Server, src: Path, data: Path) -> dict:
    """R1: every tool restores s3backup's upload of `src`; RL: one folder of it, behind a round trip per request."""
    restore_runs(runner, tools, server, "R1", "s1/s3backup/", src, data, repeats=runner.repeats)
    server.set_delay(SLOW_LINK_SECONDS)
    try:
        restore_runs(runner, tools, server, "RL", "s1/s3backup/d00/", src / "d00", data, repeats=runner.repeats)
    finally:
        server.set_delay(0)
    return {"slow_link_files": tree_stats(src / "d00")[0]}


def ingest_small(runner: Runner, tools: Tools, server: Server, src: Path) -> dict:
    """The server's rate for small objects, driven by its fastest client (s5cmd, many workers, no proxy)."""
    s5 = next(v for v in tools.variants if v.tool == "s5cmd")
    subset = src / "d00"  # a twentieth of the files is enough for a rate
    result = runner.run("limits", server, s5, subset, "limits/small/", direct=True, record=False,
                        label="s5cmd direct (256 workers)")
    count, total = tree_stats(subset)
    return {"ingest_small_objects_per_s": count / result.wall, "ingest_small_mib_per_s": total / MiB / result.wall}


def scenario_large(runner: Runner, tools: Tools, data: Path, sizes: Sizes, notes: list[str],
                   ours_default_is_8: bool) -> dict:
    """2: initial upload of large files; 4: no-change re-run over them; 5: peak RSS on one big file."""
    large, memory = data / "large", data / "memory"
    for index in range(sizes.large_files):
        write_random_file(large / f"large-{index}.bin", sizes.large_size)
    memory_path = memory / "one-big-file.bin"
    write_random_file(memory_path, sizes.memory_file)
    server_need = sizes.large_files * sizes.large_size + 2 * sizes.memory_file
    free = shutil.disk_usage(runner.workdir).free
    sparse = free > server_need + 2 * sizes.sparse_size + 5 * GiB  # restores write it whole, one at a time
    if sparse:
        make_sparse_file(large / "sparse.bin", sizes.sparse_size)
    else:
        notes.append(f"the sparse {human(sizes.sparse_size)} file was left out: {human(free)} free on the data disk")
    expect_large, expect_memory = tree_stats(large), tree_stats(memory)
    past_the_racy_window()
    by_tool: dict[str, list[Variant]] = {}
    for variant in tools.variants:
        by_tool.setdefault(variant.tool, []).append(variant)
    limits: dict = {}
    for tool, variants in by_tool.items():
        server = Server(runner.workdir, "large")  # a fresh server per tool, so its disk is reclaimed
        try:
            tools.prepare(server)
            runner.measure_startup(server, variants)
            first = variants[0]
            runner.run("2", server, first, large, f"s2/{first.slug}/", expect=expect_large)
            runner.rounds(variants, lambda variant, index, server=server, prefix=f"s2/{first.slug}/": runner.run(
                "4", server, variant, large, prefix, expect=expect_large, record=False))
            default = runner.run("5", server, first, memory, f"s5/{first.slug}/", expect=expect_memory)
            if tool == "s3backup" and ours_default_is_8:
                runner.results.append(dataclasses.replace(default, scenario="5c8", note="its default: same run"))
            elif first.concurrency_flag:
                runner.run("5c8", server, first, memory, f"s5/{first.slug}-c8/", c8=True, expect=expect_memory)
            if tool == "s3backup":
                restore_runs(runner, tools, server, "R2", f"s2/{first.slug}/", large, data)
                restore_runs(runner, tools, server, "R5", f"s5/{first.slug}/", memory, data, repeats=runner.repeats)
            if tool == "s5cmd":
                limits.update(ingest_large(runner, tools, server, first, memory, sizes))
        finally:
            server.stop()
    return {"large": expect_large, "sparse": sparse, "memory_file": sizes.memory_file, **limits}


def ingest_large(runner: Runner, tools: Tools, server: Server, s5: Variant, memory: Path, sizes: Sizes) -> dict:
    """The server's ingest rate for one big file with its fastest client (s5cmd, 16 parts in flight)."""
    fast = Variant("s5cmd", "default", lambda v, endpoint, env, src, prefix, delete, c8: [
        tools.paths["s5cmd"], "--endpoint-url", endpoint, "--log", "error", "cp", "--concurrency", "16",
        "--part-size", "16", src.rstrip("/") + "/*", f"s3://{BUCKET}/{prefix}"])
    rates = {}
    for direct in (True, False):
        prefix = f"limits/big-{'direct' if direct else 'proxy'}/"
        result = runner.run("limits", server, fast, memory, prefix, direct=direct, record=False,
                            label=f"s5cmd cp -c 16 {'direct' if direct else 'via proxy'}")
        rates["ingest_mib_per_s_" + ("direct" if direct else "proxy")] = sizes.memory_file / MiB / result.wall
        server.client.delete_object(Bucket=BUCKET, Key=prefix + "one-big-file.bin")
    return rates


def scenario_scale(runner: Runner, tools: Tools, data: Path, sizes: Sizes, rng: random.Random) -> dict:
    """6: memory and time of a no-change run over many files: the cost of planning.

    Uploading the set once per tool would dominate the pass, so the peers that judge by size and
    mtime or MD5 alone (aws, s5cmd, s3cmd) share one prefix, seeded by s5cmd. rclone runs with
    --checksum there (size + ETag, so whoever uploaded does not matter). Its default mode keeps
    mtimes in its own metadata and HEADs every object (scenario 3 shows it): it would need its own
    200,000-object upload and 200,000 HEADs, which does not fit the pass's hour. s3backup plans over
    its own prefix, uploaded by itself, as on every day after its first (on a prefix another tool
    filled, its first run also reads each file once, to compare MD5s).
    """
    src = data / "scale"
    make_tiny_tree(src, sizes.scale_files, rng)
    expect = tree_stats(src)
    past_the_racy_window()
    server = Server(runner.workdir, "scale")
    variants = {v.label: v for v in tools.variants}
    try:
        tools.prepare(server)
        runner.measure_startup(server, tools.variants)
        shared = "s6/shared/"
        runner.run("6 seed", server, variants["s5cmd"], src, shared, expect=expect, direct=True,
                   label="s5cmd (seeds the prefix, direct)")
        for label in ("s5cmd", "aws s3 sync", "s3cmd", "rclone --checksum"):
            runner.run("6", server, variants[label], src, shared, expect=expect)
        own = "s6/s3backup/"
        runner.run("6 own", server, variants["s3backup"], src, own, expect=expect, direct=True,
                   label="s3backup (uploads its own prefix, direct)")
        runner.run("6", server, variants["s3backup"], src, own, expect=expect)
    finally:
        server.stop()
    return {"scale_files": expect}


def md5_throughput(total: int) -> float:
    """MiB/s of hashlib.md5 on one core, over an in-memory buffer (no I/O)."""
    digest = hashlib.md5()
    return _throughput(total, digest.update)


def crc32_throughput(total: int, crc32: Callable[[bytes, int], int] = zlib.crc32) -> float:
    """MiB/s of a CRC32 function on one core, over an in-memory buffer (no I/O)."""
    crc = [0]
    return _throughput(total, lambda block: crc.__setitem__(0, crc32(block, crc[0])))


def isal_crc32() -> Callable[[bytes, int], int] | None:
    """ISA-L's CRC32, s3backup's (crc.py), where its wheel is installed (bench/requirements.txt)."""
    try:
        from isal.isal_zlib import crc32
    except ImportError:
        return None
    return crc32


def _throughput(total: int, update) -> float:
    block = os.urandom(64 * MiB)
    started = time.perf_counter()
    for _ in range(max(1, total // len(block))):
        update(block)
    return max(1, total // len(block)) * len(block) / MiB / (time.perf_counter() - started)


# --- the report ----------------------------------------------------------------------------------------------
SHORT = {
    "PutObject": "PUT", "UploadPart": "PART", "CreateMultipartUpload": "MPU-create",
    "CompleteMultipartUpload": "MPU-complete", "AbortMultipartUpload": "MPU-abort", "LIST": "LIST",
    "LIST uploads": "LIST-uploads", "LIST parts": "LIST-parts", "HEAD": "HEAD", "HEAD bucket": "HEAD-bucket",
    "GET": "GET", "DELETE": "DELETE", "DeleteObjects": "DELETE-batch", "CopyObject": "COPY",
    "CreateBucket": "PUT-bucket",
}


def _requests_text(requests: dict[str, int]) -> str:
    order = list(SHORT)
    items = sorted(requests.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else 99, kv[0]))
    return ", ".join(f"{SHORT.get(name, name)} {count:,}" for name, count in items) or "none"


def _ratio(value: float, best: float | None) -> str:
    if not best:
        return "–"
    return f"{value / best:.2f}×"


def _time(r: Result) -> str:
    """The wall time; for a repeated run its median and, in brackets, the fastest and slowest repetition."""
    if len(r.walls) < 2:
        return f"{r.wall:.1f}"
    digits = 2 if r.wall < 10 else 1
    return f"{r.wall:.{digits}f} ({min(r.walls):.{digits}f}–{max(r.walls):.{digits}f})"


def _mib(n: int) -> str:
    return f"{n / MiB:,.1f}"


def table(results: list[Result], *, columns: tuple[str, ...], per_million: int | None = None,
          startup: dict[str, Result] | None = None) -> list[str]:
    peers = [r.wall for r in results if r.tool != "s3backup" and r.exit_code == 0]
    best = min(peers) if peers else None
    head = ["tool", "time s", "vs best peer", "CPU s", "server CPU s", "peak RSS MiB"]
    if "sent" in columns:
        head.append("sent MiB")
    if "read" in columns:
        head += ["read MiB (rchar)", "read beyond startup MiB"]
    if per_million:
        head += ["s per 1M files", "RSS growth per 1M files"]
    head += ["S3 requests", "check"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        name = f"**{r.label}**" if r.tool == "s3backup" else r.label
        row = [name, _time(r), _ratio(r.wall, best), f"{r.cpu:.1f}", f"{r.server_cpu:.1f}", _mib(r.peak_rss)]
        if "sent" in columns:
            row.append(_mib(r.bytes_sent))
        if "read" in columns:
            base = (startup or {}).get(r.tool)
            row += [_mib(r.rchar), _mib(max(0, r.rchar - base.rchar)) if base else "–"]
        if per_million:
            factor = 1_000_000 / per_million
            base = (startup or {}).get(r.tool)
            growth = f"{max(0, r.peak_rss - base.peak_rss) * factor / GiB:.2f} GiB" if base else "–"
            row += [f"{r.wall * factor:,.0f}", growth]
        check = r.verified or "–"
        if r.note:
            check += f" ({r.note})"
        row += [_requests_text(r.requests), check]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024**2:.1f} GiB"
    return {"nproc": str(os.cpu_count()), "memory": memory, "cpu": cpu, "kernel": platform.release(),
            "os": platform.platform()}


def targets(results: list[Result], startup: dict[str, Result], scale_count: int, data_bytes: int) -> list[str]:
    """Issue 6's targets, each with what this pass measured."""
    def ours(scenario: str) -> Result | None:
        return next((r for r in results if r.scenario == scenario and r.tool == "s3backup"), None)

    def best_peer(scenario: str) -> Result | None:
        peers = [r for r in results if r.scenario == scenario and r.tool != "s3backup" and r.exit_code == 0]
        return min(peers, key=lambda r: r.wall) if peers else None

    lines = ["| target | measured | met |", "|---|---|---|"]
    for scenario, name in (("1", "1. many small files"), ("2", "2. large files"), ("3", "3. the daily case")):
        mine, peer = ours(scenario), best_peer(scenario)
        if mine and peer:
            ratio = mine.wall / peer.wall
            lines.append(f"| {name}: at least as fast as the best peer | {mine.wall:.1f} s vs {peer.label} "
                         f"{peer.wall:.1f} s ({ratio:.2f}×) | {'yes' if ratio <= 1 else '**no**'} |")
    for scenario, name in (("R1", "R1. restore many small files"), ("RL", "RL. restore small files over a slow link"),
                           ("R2", "R2. restore large files")):
        mine, peer = ours(scenario), best_peer(scenario)
        if mine and peer:
            ratio = mine.wall / peer.wall
            lines.append(f"| {name}: at or under the best peer's time, verifying every byte | {mine.wall:.1f} s vs "
                         f"{peer.label} {peer.wall:.1f} s ({ratio:.2f}×) | {'yes' if ratio <= 1 else '**no**'} |")
    mine = ours("R5")
    if mine:
        lines.append(f"| R5. restore: peak RSS under 200 MB for one big object | {mine.peak_rss / 1e6:,.0f} MB "
                     f"| {'yes' if mine.peak_rss < 200e6 else '**no**'} |")
    mine, peer = ours("4"), best_peer("4")
    if mine and peer:
        gap = mine.wall - peer.wall
        lines.append(f"| 4. no change: within 0.2 s of the best peer | {mine.wall:.2f} s vs {peer.label} "
                     f"{peer.wall:.2f} s ({gap:+.2f} s) | {'yes' if gap <= 0.2 else '**no**'} |")
    if "s3backup" in startup:
        mine = startup["s3backup"]
        lines.append(f"| 0. start-up under 0.35 s | {mine.wall:.2f} s | {'yes' if mine.wall < 0.35 else '**no**'} |")
    mine = ours("4")
    if mine and "s3backup" in startup and data_bytes:
        extra = max(0, mine.rchar - startup["s3backup"].rchar)
        lines.append(f"| 4. no change: reads no file contents | {_mib(extra)} MiB read beyond start-up (LIST "
                     f"answers included) of {_mib(data_bytes)} MiB of files | "
                     f"{'yes' if extra < data_bytes / 1000 else '**no**'} |")
    mine = ours("5")
    if mine:
        lines.append(f"| 5. peak RSS under 200 MB at default settings | {mine.peak_rss / 1e6:,.0f} MB "
                     f"| {'yes' if mine.peak_rss < 200e6 else '**no**'} |")
    mine = next((r for r in results if r.scenario == "6" and r.tool == "s3backup"), None)
    if mine and scale_count and "s3backup" in startup:
        base = startup["s3backup"].peak_rss
        per_million = base + max(0, mine.peak_rss - base) * 1_000_000 / scale_count
        lines.append(f"| 6. planning under 1 GB of memory per million files | peak {mine.peak_rss / 1e6:,.0f} MB "
                     f"over {scale_count:,} files, {base / 1e6:,.0f} MB of it start-up: at most "
                     f"{per_million / 1e9:.2f} GB for a million, if all the rest grew with the files "
                     f"| {'yes' if per_million < 1e9 else '**no**'} |")
    return lines


def check_floors(results: list[Result], rates: dict[str, float], large_bytes: int) -> list[str]:
    """R2's time on this machine for the fastest peer, had it checked every byte, by each check (MiB/s on one core):
    its work (its CPU, and the server's and the proxy's during its run) plus that check, spread perfectly over every
    core. A floor for a tool that works as that peer does; one that spends less CPU on its writes can go under it."""
    peers = [r for r in results if r.scenario == "R2" and r.tool != "s3backup" and r.exit_code == 0]
    if not peers or not large_bytes:
        return []
    best = min(peers, key=lambda r: r.wall)
    lines = []
    for check, rate in rates.items():
        seconds = large_bytes / MiB / rate
        floor = (best.cpu + best.server_cpu + seconds) / (os.cpu_count() or 1)
        lines.append(f"- R2 for {best.label}, had it checked every byte by {check}: its CPU "
                     f"({best.cpu:.1f} s) and the server's and proxy's during its run ({best.server_cpu:.1f} s), plus "
                     f"{seconds:.1f} CPU-s of {check}, over {os.cpu_count()} cores: **{floor:.1f} s**, against "
                     f"{best.label}'s {best.wall:.1f} s.")
    return lines


def write_report(path: Path, *, command: str, sizes: Sizes, info: dict, results: list[Result],
                 versions: dict[str, str], started: datetime, finished: datetime, notes: list[str],
                 load: tuple[str, str], startup: dict[str, Result], repeats: int) -> None:
    def pick(*scenarios: str) -> list[Result]:
        return [r for r in results if r.scenario in scenarios]

    m = machine()
    lines = [
        "# Benchmarks: s3backup and its peers",
        "",
        f"Produced by `{command}` from {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC "
        f"(scale {sizes.scale:g}; `--scale full` is the published pass). Every number below comes from that "
        "one command; rerun it to reproduce.",
        "",
        f"**Machine:** {m['nproc']} cores ({m['cpu']}), {m['memory']} memory, Linux {m['kernel']}. "
        f"Load average at start {load[0]}, at end {load[1]}.",
        "",
        "**Versions:** " + "; ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "## How it is measured",
        "",
        "- One SeaweedFS (`weed server -s3`, started by `s3backup_syncer.local_s3.LocalS3`) on loopback; every tool "
        "talks to it through `bench/s3proxy.py`, a counting reverse proxy that classifies each request "
        "(PUT object, multipart parts, LIST, HEAD, GET, DELETE, COPY) and counts the bytes sent. All tools use "
        "path-style addressing, their default settings unless a row says otherwise, and a fresh prefix "
        "per scenario and tool. The large-file scenarios start a fresh server for each tool, so disk is reclaimed.",
        "- `bench/measure.py` is the parent of each tool and does nothing but wait: wall time, CPU time (user + "
        "system), peak RSS (`ru_maxrss`, as `/usr/bin/time -v` reports it; every tool runs as one process) and "
        "bytes read (`rchar` from `/proc/<pid>/io`, which the kernel folds into the parent when a child is reaped; "
        "it counts files and sockets, so a no-change run's LIST answers are in it too).",
        "- *vs best peer*: wall time divided by the fastest peer's in the same table (below 1.00× means faster than "
        "every peer). *check*: the prefix was listed afterwards, and its number of objects and their total size "
        "equalled the source's number of files and total bytes (s3backup's state folder left out). Keys and "
        "contents are not compared here; that the bucket holds the source's keys byte for byte is what the test "
        "suite checks (see README.md, \"Reliability\").",
        "- Tools run one after another in the same process and against the same server. The machine has "
        f"{m['nproc']} cores shared by the tool, the proxy, SeaweedFS, and (on the development machine) other "
        "work, so absolute times are noisy; ratios within one table are the fairer reading. The proxy costs CPU "
        "too: see the ingest rate direct and via the proxy below.",
        "- **Repeats, to steady the comparison.** The short scenarios (0, 1, 3, 4, R1, RL and R5) run "
        f"{repeats} rounds, every tool once per round, round-robin, so that a slow moment of the machine falls on "
        "every tool alike. *time s* is the median, and in brackets the fastest and slowest round; *vs best peer* "
        "divides medians; the other columns belong to the median round. Each round of 1 uploads to a fresh prefix, and "
        "each round of 3 changes and deletes another 1% of the files first. The long scenarios (2, 5, R2, "
        "6) run once, as their runs last minutes (R2 runs its rounds too in `--scenarios restore-large`). "
        "Every restore starts after an `os.sync()`, so that no run pays for the writeback of the one before. "
        "(Pinning the tool and the server to separate cores with "
        "`taskset` was the other choice: on 2 cores it would leave each tool one core, which changes what is "
        "measured, not only its noise.)",
        "- Deletions are mirrored in every run (`s3backup --recycle-after 0s`, `rclone sync`, `aws s3 sync --delete`, "
        "`s5cmd sync --delete`, `s3cmd sync --delete-removed`). Compare modes: s3backup size + MD5 (ETag, with a hash "
        "cache), rclone size + mtime (its own metadata; `--checksum`: size + MD5), aws and s5cmd size + mtime "
        "against LastModified, s3cmd size + MD5.",
        "- What each restore checks: s3backup checks every byte it restores: an object of 16 MiB or more by the "
        "CRC32 the server stored with it (s3backup's uploads carry one, as botocore's do), else by MD5 against "
        "its ETag, multipart objects included; rclone checks an MD5 only where the ETag is one (objects "
        "uploaded in one part); aws and s5cmd check nothing. On these 2 cores, shared with the server, that "
        "check is CPU the peers do not spend: \"Physical limits\" gives what the fastest peer would take with "
        "each check. The check is never turned off to win.",
        f"- RL stands for a bucket in another region: the proxy holds every request {SLOW_LINK_SECONDS * 1000:.0f} ms "
        "before forwarding it, so a tool's speed there is mostly how many requests it keeps in flight (s3backup: "
        "8 workers, and from the first small file (its listing shows the route) up to 256 GETs on its event "
        "loop, 32 × `--concurrency`; "
        "rclone 4 transfers; aws 10; s5cmd 256). The delay is per request on a kept-alive connection; opening a "
        "connection costs no more than on loopback.",
        "",
        "## Targets",
        "",
        *targets(results, startup, info.get("scale_count", 0), info.get("large", (0, 0))[1]),
        "",
        "## Physical limits of this machine",
        "",
        f"- MD5 on one core: **{info['md5_mib_per_s']:,.0f} MiB/s** (hashlib over memory); CRC32: "
        f"**{info['crc32_mib_per_s']:,.0f} MiB/s** ({info['crc32_by']}; zlib's: {info['zlib_crc32_mib_per_s']:,.0f}).",
        *check_floors(results, {"CRC32": info["crc32_mib_per_s"], "MD5": info["md5_mib_per_s"]},
                      info.get("large", (0, 0))[1]),
    ]
    if "ingest_mib_per_s_direct" in info:
        lines.append(f"- SeaweedFS ingest, one {human(sizes.memory_file)} file by its fastest client (`s5cmd cp "
                     f"--concurrency 16 --part-size 16`): **{info['ingest_mib_per_s_direct']:,.0f} MiB/s** direct, "
                     f"{info['ingest_mib_per_s_proxy']:,.0f} MiB/s through the counting proxy.")
    if "ingest_small_objects_per_s" in info:
        lines.append(f"- SeaweedFS ingest of small objects (`s5cmd sync`, 256 workers, direct): "
                     f"**{info['ingest_small_objects_per_s']:,.0f} objects/s** "
                     f"({info['ingest_small_mib_per_s']:,.1f} MiB/s).")
    if startup:
        lines += ["", "## 0. Startup: each tool over an empty source and an empty prefix", "",
                  "The fixed cost of a run (loading the program, one LIST). *read beyond startup* in the tables "
                  "below subtracts this run's `rchar`, which for Python tools is mostly their own modules.", ""]
        lines += table(list(startup.values()), columns=("read",))
    sections = [
        (("1",), f"## 1. Many small files: initial upload of {info.get('small_count', 0):,} files of 1–64 KiB",
         ("sent",), None),
        (("3",), f"## 3. The daily case: re-run after {info.get('changed', 0)} files changed (half of them keeping "
         f"their size) and {info.get('deleted', 0)} deleted", ("sent", "read"), None),
        (("2",), f"## 2. Large files: initial upload of {info.get('large_desc', '')}", ("sent",), None),
        (("4",), "## 4. No change over the large files: what each tool reads", ("sent", "read"), None),
        (("5",), f"## 5. Memory: one {human(sizes.memory_file)} file, default settings", ("sent",), None),
        (("5c8",), f"## 5. Memory: one {human(sizes.memory_file)} file, concurrency 8 "
         f"(s3backup `--concurrency 8`{info.get('ours_c8_note', '')}, rclone `--s3-upload-concurrency 8`, "
         "aws `max_concurrent_requests = 8`, "
         "s5cmd `--concurrency 8`; s3cmd has no such setting)", ("sent",), None),
        (("R1",), f"## R1. Restore many small files: {info.get('small_count', 0):,} files into an empty folder",
         ("read",), None),
        (("RL",), f"## RL. Restore small files over a slow link: the {info.get('slow_link_files', 0):,} files of one "
         f"folder of R1's prefix, each request held {SLOW_LINK_SECONDS * 1000:.0f} ms at the proxy", ("read",), None),
        (("R2",), f"## R2. Restore large files: {info.get('large_desc', '')} into an empty folder", ("read",), None),
        (("R5",), f"## R5. Restore memory: one {human(sizes.memory_file)} object, default settings", ("read",), None),
        (("6 seed", "6 own", "6"), f"## 6. Scale: a no-change run over {info.get('scale_count', 0):,} files",
         ("read",), info.get("scale_count")),
    ]
    blurbs = {
        "6 seed": "Files of 1–100 bytes, 1,000 per folder; every tool finds nothing to do. aws, s5cmd, s3cmd and "
                  "`rclone --checksum` plan against one prefix seeded by s5cmd (they judge by size and mtime, or "
                  "size and MD5, so whoever uploaded does not matter). s3backup plans against its own prefix, "
                  "uploaded by itself (listed under setup runs), as on every day after its first: on a prefix "
                  "another tool filled, its first run reads each file once to compare MD5s, and records the "
                  "mtimes in its own state, with no request per object and no rewrite. (An earlier pass "
                  "measured 846 s for these 200,000 objects with a server-side copy per object; that copy is "
                  "gone.) rclone's default mode is left out here: "
                  "it keeps mtimes in its own metadata and HEADs every object (see its HEAD count in scenario 3), "
                  "which would need its own 200,000-object upload and does not fit the pass's hour. "
                  "*s per 1M files* scales the wall time linearly; *RSS growth per 1M files* scales "
                  "the peak RSS above the tool's start-up RSS (section 0). Setup runs went to the server directly.",
    }
    for scenarios, title, columns, per_million in sections:
        rows = pick(*scenarios)
        if not rows:
            continue
        lines += ["", title, ""]
        if per_million:
            lines += [blurbs["6 seed"], ""]
            measured = [r for r in rows if r.scenario == "6"]
            lines += table(measured, columns=columns, per_million=per_million, startup=startup)
            lines += ["", "Setup runs (not planning):", ""]
            lines += table([r for r in rows if r.scenario != "6"], columns=columns, startup=startup)
        else:
            lines += table(rows, columns=columns, startup=startup)
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines.append("")
    previous = path.read_text() if path.exists() else ""
    if SCALE_OUT_START in previous and SCALE_OUT_END in previous:  # bench/shards.py's figures, from its own command
        kept = previous[previous.index(SCALE_OUT_START):previous.index(SCALE_OUT_END) + len(SCALE_OUT_END)]
        lines += [kept, ""]
    path.write_text("\n".join(lines))


# --- main ------------------------------------------------------------------------------------------------------
def parse_scale(text: str) -> float:
    if text in SCALES:
        return SCALES[text]
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("--scale is quick, full or a number in (0, 1]")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="quick", help="quick (a few minutes), full (the published pass), or 0-1")
    parser.add_argument("--scenarios", default="small,large,scale", help="comma-separated: small (1, 3, "
                        "R1, RL), large (2, 4, 5, R2, R5), scale (6), restore (R1 and RL alone), restore-large (R2 "
                        "and R5 alone)")
    parser.add_argument("--out", type=Path, help="markdown report (default: BENCHMARKS.md for --scale full, "
                        "bench/results/SCALE.md otherwise)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run s3backup under py-spy and keep its raw profiles in DIR (timings then skewed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the short scenarios (0, 1, 3, 4, R1, RL, "
                        "R5), reported as median and spread (default 3)")
    args = parser.parse_args(argv)
    ensure_environment(argv)
    os.environ["PATH"] = f"{PROJECT_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"  # LocalS3 finds weed
    scale = parse_scale(args.scale)
    sizes = Sizes.for_scale(scale)
    out = args.out or (REPO / "BENCHMARKS.md" if scale == 1.0 and not args.profile
                       else BENCH / "results" / f"scale-{args.scale}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    command = "python3 bench/run.py " + " ".join(argv) if argv else "python3 bench/run.py"
    wanted = set(args.scenarios.split(","))
    started = datetime.now(UTC)
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rng = random.Random(6)
    workdir = Path(tempfile.mkdtemp(prefix="s3backup-bench-"))
    print(f"bench: scale {scale:g}, data in {workdir}, report to {out}", flush=True)
    tools = Tools(workdir)
    versions_at_start = tools.versions()
    runner = Runner(workdir, tools, args.profile, max(1, args.repeats))
    notes: list[str] = []
    rate_over = GiB if scale >= 0.5 else 256 * MiB
    fast_crc32 = isal_crc32()
    info: dict = {"md5_mib_per_s": md5_throughput(rate_over), "zlib_crc32_mib_per_s": crc32_throughput(rate_over),
                  "crc32_by": "ISA-L, as s3backup takes it" if fast_crc32 else "zlib: ISA-L is not installed"}
    info["crc32_mib_per_s"] = crc32_throughput(rate_over, fast_crc32) if fast_crc32 else info["zlib_crc32_mib_per_s"]
    ours_help = subprocess.run([tools.paths["s3backup"], "sync", "--help"], capture_output=True, text=True).stdout
    if re.search(r"--concurrency N[^-]*default 8\)", ours_help):
        info["ours_c8_note"] = ", which is its default"
    data = workdir / "data"
    try:
        if "small" in wanted:
            small = scenario_small(runner, tools, data, sizes, rng)
            info.update(small, small_count=sizes.small_files)
            shutil.rmtree(data / "small", ignore_errors=True)
        if "restore" in wanted and "small" not in wanted:
            info.update(scenario_restore(runner, tools, data, sizes, rng), small_count=sizes.small_files)
            shutil.rmtree(data / "small", ignore_errors=True)
        if "restore-large" in wanted and "large" not in wanted:
            large = scenario_restore_large(runner, tools, data, sizes)
            info.update(large, large_desc=f"{sizes.large_files} files of {human(sizes.large_size)} "
                                          f"({human(large['large'][1])})")
            shutil.rmtree(data, ignore_errors=True)
        if "large" in wanted:
            large = scenario_large(runner, tools, data, sizes, notes, "ours_c8_note" in info)
            desc = f"{sizes.large_files} files of {human(sizes.large_size)}"
            if large["sparse"]:
                desc += f" and one sparse file of {human(sizes.sparse_size)}"
            info.update(large, large_desc=desc + f" ({human(large['large'][1])})")
            shutil.rmtree(data / "large", ignore_errors=True)
            shutil.rmtree(data / "memory", ignore_errors=True)
        if "scale" in wanted:
            info.update(scale_count=scenario_scale(runner, tools, data, sizes, rng)["scale_files"][0])
        finished = datetime.now(UTC)
        if tools.versions()["s3backup"] != versions_at_start["s3backup"]:
            notes.append(f"s3backup changed during the pass: {tools.versions()['s3backup']} at the end")
        failed = [r for r in runner.results if r.exit_code != 0 or (r.verified and r.verified != "yes")]
        for r in failed:
            notes.append(f"scenario {r.scenario}, {r.label}: {r.note or r.verified}")
        write_report(out, command=command, sizes=sizes, info=info, results=runner.results,
                     versions=versions_at_start, started=started, finished=finished, notes=notes,
                     load=(load_start, " ".join(Path("/proc/loadavg").read_text().split()[:3])),
                     startup=runner.startup, repeats=runner.repeats)
        results_json = BENCH / "results" / f"scale-{args.scale}.json"
        results_json.parent.mkdir(parents=True, exist_ok=True)
        results_json.write_text(json.dumps({"info": info, "results": [r.__dict__ for r in runner.results]},
                                           indent=1, default=str))
        print(f"bench: wrote {out} ({(finished - started).total_seconds() / 60:.1f} min)", flush=True)
    except BaseException:
        print(f"bench: failed; logs kept in {workdir / 'logs'}", flush=True)
        shutil.rmtree(data, ignore_errors=True)
        raise
    else:
        if args.keep:
            print(f"bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
