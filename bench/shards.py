#!/usr/bin/env python3
"""Scale-out benchmark: one `s3backup sync` process against `--shard I/N` over 2 and 4 processes.

    .venv/bin/python bench/shards.py --files 20000                 # a quick check (a minute or two)
    .venv/bin/python bench/shards.py --files 1000000 --out /tmp/shards.txt   # the full scenario (a quiet machine)

For each shard count (1, 2, 4 by default) on its own fresh prefix of one SeaweedFS (behind bench/s3proxy.py,
which counts the requests): a first run that uploads everything, a no-change run, and a run after 1% of the
files changed (new content, same size), each a new run id; N > 1 runs its N processes at once and then the
final `s3backup recycle` step. Every process is measured by bench/measure.py (wall time, CPU, peak RSS).
The report gives, per shard count and run: wall time (all N processes, and the final step), the time and
the CPU per million files, the peak RSS of the largest process and of all N together, and the S3 requests.
The generated tree: `--files` small files (64 to 576 bytes) in folders of 1,000. It lives in a temporary
folder (under $TMPDIR), removed at the end. Needs the project's .venv (scripts/bootstrap.sh test).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
S3BACKUP = Path(sys.executable).with_name("s3backup")
BUCKET = "bench-shards"
PER_FOLDER = 1000
RUN_TIMEOUT = 4 * 3600


@dataclass
class Run:
    shards: int
    scenario: str
    files: int
    wall: float  # the N sync processes, start to last end
    recycle_wall: float  # the final step (0 for one process)
    cpu: float  # all processes, final step included
    peak_rss_max: int  # the largest process
    peak_rss_sum: int  # all N sync processes together
    requests: int
    exit_codes: list[int]

    def row(self) -> str:
        per_million = 1e6 / self.files
        return (f"| {self.shards} | {self.scenario} | {self.files:,} | {self.wall:.1f} | {self.recycle_wall:.1f} | "
                f"{(self.wall + self.recycle_wall) * per_million:.0f} | {self.cpu * per_million:.0f} | "
                f"{self.peak_rss_max / 2**20:.0f} | {self.peak_rss_sum / 2**20:.0f} | "
                f"{self.requests * per_million:,.0f} | {','.join(map(str, self.exit_codes))} |")


HEADER = ("| shards | run | files | wall s (sync) | wall s (recycle step) | s per 1M files | CPU s per 1M files | "
          "peak RSS MiB (largest process) | peak RSS MiB (all shards) | S3 requests per 1M files | exit codes |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def generate(root: Path, count: int, seed: int = 15) -> list[Path]:
    """`count` small files in folders of PER_FOLDER; returns their paths."""
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        folder = root / f"d{index // PER_FOLDER:05d}"
        if index % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        path = folder / f"f{index:07d}.dat"
        path.write_bytes(rng.randbytes(64 + index % 513))
        paths.append(path)
    return paths


def change(paths: list[Path], percent: float, seed: int) -> int:
    """New content (same size) for `percent` of the files; returns how many."""
    rng = random.Random(seed)
    chosen = rng.sample(paths, max(1, int(len(paths) * percent / 100)))
    for path in chosen:
        path.write_bytes(rng.randbytes(path.stat().st_size))
    return len(chosen)


class Proxy:
    """bench/s3proxy.py in front of the server: counts every S3 request."""

    def __init__(self, upstream: str, log: Path) -> None:
        with open(log, "ab") as out:
            self.process = subprocess.Popen([sys.executable, str(BENCH / "s3proxy.py"), upstream],
                                            stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}"

    def _stats(self, method: str, path: str) -> dict:
        request = urllib.request.Request(f"{self.url}/__bench__/{path}", method=method,
                                         data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def reset(self) -> None:
        self._stats("POST", "reset")

    def requests(self) -> int:
        return sum(self._stats("GET", "stats")["requests"].values())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def measured(argvs: list[list[str]], logs: Path, name: str, env: dict[str, str]) -> list[dict]:
    """Run the commands at once, each under bench/measure.py; their measurements, in order."""
    processes = []
    for index, argv in enumerate(argvs):
        out = logs / f"{name}-{index}.json"
        with open(logs / f"{name}-{index}.log", "wb") as log:
            processes.append((out, subprocess.Popen([sys.executable, str(BENCH / "measure.py"), str(out), "--", *argv],
                                                    env=env, stdout=log, stderr=subprocess.STDOUT)))
    results = []
    for out, process in processes:
        process.wait(timeout=RUN_TIMEOUT)
        results.append(json.loads(out.read_text()))
    return results


def one_run(shards: int, scenario: str, source: Path, url: str, endpoint: str, proxy: Proxy, logs: Path,
            env: dict[str, str], files: int, run_id: str) -> Run:
    common = ["--endpoint-url", endpoint, "--path-style", "--recycle-after", "0s", "-q", "--summary-json",
              "/dev/null"]
    if shards == 1:
        argvs = [[str(S3BACKUP), "sync", str(source), url, *common]]
    else:
        argvs = [[str(S3BACKUP), "sync", str(source), url, *common, f"--shard={index}/{shards}",
                  f"--run-id={run_id}"] for index in range(shards)]
    proxy.reset()
    started = time.monotonic()
    syncs = measured(argvs, logs, f"{shards}-{scenario}", env)
    wall = time.monotonic() - started
    finals: list[dict] = []
    recycle_wall = 0.0
    if shards > 1:
        started = time.monotonic()
        finals = measured([[str(S3BACKUP), "recycle", url, f"--shards={shards}", f"--run-id={run_id}",
                            "--endpoint-url", endpoint, "--path-style", "-q"]], logs, f"{shards}-{scenario}-recycle",
                          env)
        recycle_wall = time.monotonic() - started
    everything = syncs + finals
    return Run(shards=shards, scenario=scenario, files=files, wall=wall, recycle_wall=recycle_wall,
               cpu=sum(m["cpu_user_seconds"] + m["cpu_system_seconds"] for m in everything),
               peak_rss_max=max(m["peak_rss_bytes"] for m in everything),
               peak_rss_sum=sum(m["peak_rss_bytes"] for m in syncs), requests=proxy.requests(),
               exit_codes=[m["exit_code"] for m in everything])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--shards", default="1,2,4", help="shard counts to compare (default 1,2,4)")
    parser.add_argument("--changed-percent", type=float, default=1.0)
    parser.add_argument("--out", type=Path, help="write the report (Markdown) here too")
    args = parser.parse_args()
    counts = [int(item) for item in args.shards.split(",")]
    sys.path.insert(0, str(REPO / "syncer"))
    from s3backup_syncer.local_s3 import LocalS3

    workdir = Path(tempfile.mkdtemp(prefix="s3backup-bench-shards-"))
    runs: list[Run] = []
    try:
        logs = workdir / "logs"
        logs.mkdir()
        print(f"bench: generating {args.files:,} files in {workdir}", flush=True)
        started = time.monotonic()
        paths = generate(workdir / "tree", args.files)
        print(f"bench: generated in {time.monotonic() - started:.0f} s", flush=True)
        with LocalS3(data_dir=workdir / "weed") as s3:
            s3.create_bucket(BUCKET)
            proxy = Proxy(s3.endpoint_url, workdir / "proxy.log")
            env = {**os.environ, **s3.env()}
            env.pop("AWS_ENDPOINT_URL", None)
            try:
                for seed, shards in enumerate(counts):
                    url = f"s3://{BUCKET}/shards-{shards}"
                    for scenario in ("first", "no-change", f"{args.changed_percent:g}%-changed"):
                        if scenario.endswith("-changed"):
                            change(paths, args.changed_percent, seed)
                        run = one_run(shards, scenario, workdir / "tree", url, proxy.url, proxy, logs, env,
                                      args.files, f"bench-{shards}-{scenario.replace('%', 'pct')}")
                        runs.append(run)
                        print(run.row(), flush=True)
            finally:
                proxy.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = "\n".join([f"Scale-out benchmark: {args.files:,} small files, shards {args.shards}, "
                        f"{os.cpu_count()} CPUs", "", HEADER, *(run.row() for run in runs), ""])
    print("\n" + report)
    if args.out:
        args.out.write_text(report)
    return 0 if all(code == 0 for run in runs for code in run.exit_codes) else 1


if __name__ == "__main__":
    sys.exit(main())
