#!/usr/bin/env python3
"""Scale-out benchmark: one `s3backup sync` process against `--shard I/N` over 2 and 4 processes.

    .venv/bin/python bench/shards.py --files 20000                 # a quick check (a minute or two)
    .venv/bin/python bench/shards.py --files 1000000 --out /tmp/shards.txt   # the full scenario (a quiet machine)

One prefix of one SeaweedFS (behind bench/s3proxy.py, which counts the requests) is uploaded once, by one
process. Then, for each shard count (1, 2, 4 by default), over that same prefix: the first run of that layout
(N > 1: its shards seed their state from the previous layout's; it must upload nothing), a no-change run, and
a run after 1% of the files changed (new content, same size), each a new run id; N > 1 runs its N processes
at once and then the final `s3backup recycle` step. Last, one process uploads a tree of half the files to a
prefix of its own and runs once more with nothing changed: two tree sizes, for how memory grows. Every
process is measured by bench/measure.py (wall time, CPU, peak RSS).
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
BLOCK_START, BLOCK_END = "<!-- scale-out:start -->", "<!-- scale-out:end -->"  # bench/run.py keeps this block

# The projection's assumptions, each stated in the report beside the figures it produces.
PROJECTED_FILES = 100_000_000
PROJECTED_BYTES = 100 * 10**12  # 100 TB: 1 MB per file on average
S3_PUTS_PER_S = 3_500  # per partitioned prefix (AWS, "Best practices design patterns: optimizing performance")
S3_GETS_PER_S = 5_500
PRICE_PER_1000 = {"PUT/LIST": 0.005, "GET/HEAD": 0.0004}  # S3 Standard, us-east-1; DELETE is free
POD_UPLOAD_MIB_S = 150  # one pod's upload rate: about s3backup's large-file rate here (BENCHMARKS.md, scenario 2)
WINDOW_S = 3600  # the daily backup should finish within an hour


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
    requests: dict[str, int]  # by type, as bench/s3proxy.py classifies them
    exit_codes: list[int]

    def row(self) -> str:
        per_million = 1e6 / self.files
        return (f"| {self.shards} | {self.scenario} | {self.files:,} | {self.wall:.1f} | {self.recycle_wall:.1f} | "
                f"{(self.wall + self.recycle_wall) * per_million:.0f} | {self.cpu * per_million:.0f} | "
                f"{self.peak_rss_max / 2**20:.0f} | {self.peak_rss_sum / 2**20:.0f} | "
                f"{sum(self.requests.values()) * per_million:,.0f} | "
                f"{', '.join(f'{name} {count:,}' for name, count in sorted(self.requests.items())) or 'none'} | "
                f"{','.join(map(str, self.exit_codes))} |")


HEADER = ("| shards | run | files | wall s (sync) | wall s (recycle step) | s per 1M files | CPU s per 1M files | "
          "peak RSS MiB (largest process) | peak RSS MiB (all shards) | S3 requests per 1M files | S3 requests | "
          "exit codes |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def request_class(name: str) -> str | None:
    """S3's price class of a request type (bench/s3proxy.py's names); None for free ones (DELETE)."""
    if name.startswith("DELETE") or name == "DeleteObjects":
        return None
    if name in ("GET", "HEAD", "HEAD bucket"):
        return "GET/HEAD"
    return "PUT/LIST"


HALF = "no-change, half the files"  # the second tree size, for how memory grows with the tree


def memory_growth(runs: list[Run]) -> tuple[Run, float] | None:
    """The one-process no-change run over the whole tree, and its peak RSS's growth in bytes per file, from the
    same run over a tree half the size (0 when it did not grow); None without both runs. Half, not less: SQLite's
    page caches (2 MiB per database) fill over the first tens of thousands of files, and a smaller tree would
    charge that to every file."""
    one = {run.scenario: run for run in runs if run.shards == 1}
    whole, half = one.get("no-change"), one.get(HALF)
    if not whole or not half or whole.files <= half.files:
        return None
    return whole, max(0.0, (whole.peak_rss_max - half.peak_rss_max) / (whole.files - half.files))


def projection(runs: list[Run]) -> list[str]:
    """A daily backup of PROJECTED_FILES files and PROJECTED_BYTES on AWS, from the measured per-million figures.

    Each shard is assumed to get a node like this machine's (the one-process figures, measured with the
    server beside the tool, are the per-shard rate); the changed 1% is assumed to be 1% of the bytes too.
    """
    one = {run.scenario: run for run in runs if run.shards == 1}
    no_change = one.get("no-change")
    changed = next((run for scenario, run in one.items() if scenario.endswith("-changed")), None)
    if not no_change or not changed:
        return []
    millions = PROJECTED_FILES / 1e6
    plan_s = (no_change.wall / no_change.files * 1e6) * millions  # one process, listing and comparing
    changed_s = (changed.wall / changed.files * 1e6) * millions  # the same, with 1% of files new
    # Per shard, CPU seconds per million files = fixed + shared / N: every shard lists the whole prefix and walks
    # the whole tree to find its keys (fixed), and compares, hashes and uploads only its own (shared). Fitted on
    # the CPU of the 1%-changed runs of one process and of the most shards measured (each shard on a node of its
    # own is taken to run as fast as its CPU allows, as the one process did here).
    widest = max((run for run in runs if run.scenario == changed.scenario), key=lambda run: run.shards)
    per_million = {run.shards: run.cpu / run.files * 1e6 for run in (changed, widest)}
    fixed = (per_million[widest.shards] - per_million[1]) / (widest.shards - 1) if widest.shards > 1 else 0.0
    fixed = max(0.0, fixed)
    shared = max(0.0, per_million[1] - fixed)
    # Peak RSS per process, projected linearly from two tree sizes; every shard walks the whole tree, so every
    # pod is taken to need what one process needs.
    growth = memory_growth(runs)
    rss = growth[0].peak_rss_max + growth[1] * (PROJECTED_FILES - growth[0].files) if growth else None
    sharded = [run for run in runs if run.shards > 1 and run.scenario.endswith("-changed")]
    # The final recycle step runs once per run, whatever N is: its time per million files does not shrink.
    recycle_s = max((run.recycle_wall / run.files * 1e6 for run in sharded), default=0.0) * millions
    changed_bytes = PROJECTED_BYTES / 100
    upload_s = changed_bytes / (POD_UPLOAD_MIB_S * 2**20)
    requests = {cls: 0.0 for cls in PRICE_PER_1000}
    for name, count in changed.requests.items():
        if (cls := request_class(name)) is not None:
            requests[cls] += count / changed.files * PROJECTED_FILES
    puts = changed.requests.get("PutObject", 0) / changed.files * PROJECTED_FILES
    lists = changed.requests.get("LIST", 0) / changed.files * PROJECTED_FILES
    list_cost = lists / 1000 * PRICE_PER_1000["PUT/LIST"]
    cost = sum(requests[cls] / 1000 * PRICE_PER_1000[cls] for cls in requests)
    first_day_puts = PROJECTED_FILES
    first_day_cost = first_day_puts / 1000 * PRICE_PER_1000["PUT/LIST"]
    lines = [
        PROJECTION_TITLE,
        "",
        "**A projection, not a measurement.** Arithmetic over the figures above (the 1%-changed runs' time, CPU "
        "and requests per million files), with these assumptions: each shard gets a node like this "
        f"machine's; the files average {PROJECTED_BYTES / PROJECTED_FILES / 1e6:.0f} MB; each day 1% of the files "
        f"and of the bytes change ({changed_bytes / 1e12:.0f} TB); one pod uploads at {POD_UPLOAD_MIB_S} MiB/s "
        "(about what one s3backup process reached for large files on this machine; BENCHMARKS.md scenario 2); "
        f"S3 takes {S3_PUTS_PER_S:,} PUT and {S3_GETS_PER_S:,} GET requests per second per partitioned prefix; "
        f"requests cost ${PRICE_PER_1000['PUT/LIST']} per 1,000 PUT/LIST and ${PRICE_PER_1000['GET/HEAD']} per "
        "1,000 GET/HEAD (S3 Standard, us-east-1; DELETE is free). Storage is not counted.",
        "",
        "| shards (one pod each) | planning and comparing, h | uploading the changed bytes, h | final recycle "
        "step, h | a day's run, h | peak RSS per pod, MiB | fits a 1-hour window |",
        "|---|---|---|---|---|---|---|",
    ]
    best = None
    for shards in (1, 4, 16, 32, 64, 128):
        step = recycle_s if shards > 1 else 0.0
        planning = changed_s if shards == 1 else (fixed + shared / shards) * millions
        total = planning + upload_s / shards + step
        fits = total <= WINDOW_S
        if fits and best is None:
            best = shards
        shown_rss = f"{rss / 2**20:,.0f}" if rss is not None else "not measured"
        lines.append(f"| {shards} | {planning / 3600:.2f} | {upload_s / shards / 3600:.2f} | "
                     f"{step / 3600:.2f} | {total / 3600:.2f} | {shown_rss} | {'yes' if fits else 'no'} |")
    lines += [
        "",
        f"- **Time.** One process would need {changed_s / 3600:.1f} h to plan and compare 100 million files "
        f"({plan_s / 3600:.1f} h when nothing changed) and {upload_s / 3600:.1f} h to upload 1 TB: "
        + (f"**{best} shards** fit the hour." if best else "**no shard count fits the hour.**")
        + f" The CPU per shard is {fixed:.0f} s per million files whatever N is, plus {shared:.0f} s divided by N "
        "(fitted on the one-process and the widest sharded 1%-changed runs above): every shard lists the whole "
        "prefix and walks the whole tree to find its own keys, and only the comparing, hashing and uploading "
        "are split. Sharding by folder, so that each shard lists only the folders it owns, is what would let "
        "the first part shrink too."
        + f" The final recycle step, one pod after all shards, adds {recycle_s / 3600:.2f} h at the rate measured "
        "above (the slowest of the sharded 1%-changed runs).",
        memory_line(growth, rss),
        f"- **Requests per day:** about {requests['PUT/LIST']:,.0f} PUT and LIST and {requests['GET/HEAD']:,.0f} "
        f"GET and HEAD, **${cost:,.2f} a day** (${cost * 30:,.0f} a month). {puts:,.0f} PUTs at {S3_PUTS_PER_S:,} "
        f"per second take at least {puts / S3_PUTS_PER_S / 60:.0f} min on one partition; S3 partitions a busy "
        "prefix further by itself, and the shards' keys spread over the whole key space. That is one process; "
        f"each further shard lists the prefix again: {lists:,.0f} LIST requests, ${list_cost:,.2f} more a day per "
        "shard.",
        f"- **The first day** uploads everything: {first_day_puts:,} PUTs (${first_day_cost:,.0f}), at least "
        f"{first_day_puts / S3_PUTS_PER_S / 3600:.1f} h at "
        f"{S3_PUTS_PER_S:,} PUT/s on one partition, and 100 TB at {POD_UPLOAD_MIB_S} MiB/s per pod: "
        f"{PROJECTED_BYTES / (POD_UPLOAD_MIB_S * 2**20) / 3600 / 64:.1f} h over 64 pods.",
    ]
    return lines


def memory_line(growth: tuple[Run, float] | None, rss: float | None) -> str:
    if growth is None or rss is None:
        return ("- **Memory.** Not projected: the table has no one-process no-change run over half the files to "
                "compare with.")
    whole, per_file = growth
    return (f"- **Memory.** One process's peak RSS was {whole.peak_rss_max / 2**20:,.0f} MiB over {whole.files:,} "
            f"files and grew by {per_file * 1e6 / 2**20:,.1f} MiB per million files more (the no-change runs over "
            f"the whole tree and over half of it). Taken as linear, that is {rss / 2**20:,.0f} MiB per pod for "
            "100 million files, each shard walking the whole tree. The listing, the hash cache and the recorded "
            "attributes are SQLite files on disk, so only their page caches are in memory.")


def write_block(path: Path, block: str) -> None:
    """Put `block` between the scale-out markers of `path` (appended when the markers are missing)."""
    text = path.read_text() if path.exists() else ""
    wrapped = f"{BLOCK_START}\n{block.rstrip()}\n{BLOCK_END}"
    if BLOCK_START in text and BLOCK_END in text:
        head, rest = text.split(BLOCK_START, 1)
        text = head + wrapped + rest.split(BLOCK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + wrapped + "\n"
    path.write_text(text)


PROJECTION_TITLE = "### Projection: a daily backup of 100 TB in 100 million files on AWS"


def measured_runs(block: str) -> list[Run]:
    """The runs of a scale-out report's table (for `--reproject`)."""
    runs = []
    for line in block.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 12 or not cells[0].isdigit():
            continue
        files = int(cells[2].replace(",", ""))
        requests = {}
        for item in cells[10].split(", "):
            name, _, count = item.rpartition(" ")
            if name:
                requests[name] = int(count.replace(",", ""))
        runs.append(Run(shards=int(cells[0]), scenario=cells[1], files=files, wall=float(cells[3]),
                        recycle_wall=float(cells[4]), cpu=float(cells[6]) * files / 1e6,
                        peak_rss_max=int(cells[7]) * 2**20, peak_rss_sum=int(cells[8]) * 2**20, requests=requests,
                        exit_codes=[int(code) for code in cells[11].split(",")]))
    return runs


def reproject(path: Path) -> int:
    """Recompute the projection of the scale-out section of `path` from its measured table (the model changed,
    the measurements did not)."""
    text = path.read_text()
    if BLOCK_START not in text:
        print(f"shards: no scale-out section in {path}", file=sys.stderr)
        return 2
    block = text.split(BLOCK_START, 1)[1].split(BLOCK_END, 1)[0]
    runs = measured_runs(block)
    measured = block.split(PROJECTION_TITLE, 1)[0].split("(The projection below", 1)[0].rstrip()
    note = (f"(The projection below was recomputed from this table by `python bench/shards.py --reproject "
            f"{path.name}` at commit {commit()}.)")
    write_block(path, "\n".join([measured, "", note, "", *projection(runs), ""]))
    return 0


def commit() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


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

    def requests(self) -> dict[str, int]:
        return self._stats("GET", "stats")["requests"]

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
    parser.add_argument("--out", type=Path, help="also write the report into this Markdown file, between "
                        "its scale-out markers (BENCHMARKS.md for the published figures)")
    parser.add_argument("--reproject", type=Path, metavar="FILE",
                        help="measure nothing: recompute the projection of FILE's scale-out section from its table")
    args = parser.parse_args()
    if args.reproject:
        return reproject(args.reproject)
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
                url = f"s3://{BUCKET}/tree"
                plan = [(1, "upload (one process)")]
                for shards in counts:
                    if shards != 1:
                        plan.append((shards, "first run of this layout"))
                    plan += [(shards, "no-change"), (shards, f"{args.changed_percent:g}%-changed")]
                for seed, (shards, scenario) in enumerate(plan):
                    if scenario.endswith("-changed"):
                        change(paths, args.changed_percent, seed)
                    time.sleep(2.1)  # past the hash cache's racy window, as on a day with no writes just before
                    run = one_run(shards, scenario, workdir / "tree", url, proxy.url, proxy, logs, env,
                                  args.files, f"bench-{seed}-{shards}")
                    runs.append(run)
                    print(run.row(), flush=True)
                half = max(1000, args.files // 2)
                generate(workdir / "half", half, seed=16)
                for scenario in ("upload, half the files", HALF):
                    time.sleep(2.1)
                    run = one_run(1, scenario, workdir / "half", f"s3://{BUCKET}/half", proxy.url, proxy, logs, env,
                                  half, "bench-half")
                    runs.append(run)
                    print(run.row(), flush=True)
            finally:
                proxy.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = "python bench/shards.py " + " ".join(sys.argv[1:])
    report = "\n".join([
        "## Scale-out: one process against `--shard I/N`", "",
        f"Produced by `{command}` at commit {commit()}, finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f", on {os.cpu_count()} cores shared with the server: {args.files:,} small files (64 to 576 bytes, 1,000 "
        "per folder), uploaded once by one process; then, per shard count over the same prefix, the layout's "
        f"first run, a no-change run and a run after {args.changed_percent:g}% of the files changed (same size, "
        "new content). N shards run as N processes at once, then the final `s3backup recycle` step. Last, one "
        "process uploads a tree half the size to a prefix of its own and runs once more with nothing changed, "
        "for how memory grows with the tree. *s per 1M files* and *CPU s per 1M files* scale the measured run "
        "linearly.", "",
        HEADER, *(run.row() for run in runs), "", *projection(runs), ""])
    print("\n" + report)
    if args.out:
        write_block(args.out, report)
    return 0 if all(code == 0 for run in runs for code in run.exit_codes) else 1


if __name__ == "__main__":
    sys.exit(main())
