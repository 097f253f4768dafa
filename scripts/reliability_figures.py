#!/usr/bin/env python3
"""Run the reliability suite and a soak, and write their figures to RELIABILITY.md (and the README's copy).

    .venv/bin/python scripts/reliability_figures.py                 # default suite + a 20-round soak
    .venv/bin/python scripts/reliability_figures.py --soak-rounds 100 --note "idle machine"

Every figure comes from this run at the current commit: the tests and their outcomes (pytest's JUnit
XML), what the suite counted (`S3BACKUP_RELIABILITY_FIGURES`: syncer runs, faults injected by kind,
SIGKILLs, objects downloaded and compared), wall time, and the machine's load. The README's
"Figures" section is the same table, between its `reliability-figures` markers. Exits 1 if a test failed
(the file is written all the same, saying so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
START, END = "<!-- reliability-figures:start -->", "<!-- reliability-figures:end -->"


@dataclass
class Pass:
    """One pytest run over tests/reliability and what it counted."""

    title: str
    command: str
    seconds: float = 0.0
    tests: int = 0
    failed: int = 0
    skipped: int = 0
    figures: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # "test id: first line of the failure"
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and end


def run_pass(title: str, args: list[str], env: dict[str, str], shown: str) -> Pass:
    with tempfile.TemporaryDirectory(prefix="s3backup-figures-") as tmp:
        figures, junit = Path(tmp) / "figures.json", Path(tmp) / "junit.xml"
        command = [str(PYTHON), "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider",
                   f"--junitxml={junit}", *args]
        result = Pass(title, shown)
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        subprocess.run(command, cwd=REPO, env={**os.environ, **env, "S3BACKUP_RELIABILITY_FIGURES": str(figures)},
                       check=False)
        result.seconds = time.monotonic() - started
        result.load = (load_before, os.getloadavg()[0])
        if junit.exists():
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            result.tests = int(suite.get("tests", 0))
            result.failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            result.skipped = int(suite.get("skipped", 0))
            for case in suite.iter("testcase"):
                for problem in [*case.findall("failure"), *case.findall("error")]:
                    lines = (problem.get("message") or problem.text or "").strip().splitlines()
                    result.failures.append(f"`{case.get('classname')}.{case.get('name')}`: {(lines or ['?'])[0][:300]}")
        else:
            result.failed = 1  # pytest never got as far as writing its report
        if figures.exists():
            result.figures = json.loads(figures.read_text())
    return result


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def faults(figures: dict) -> str:
    kinds = figures.get("faults by kind") or {}
    listed = ", ".join(f"{kind} ×{count}" for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1]))
    return f"{figures.get('faults injected', 0)}" + (f": {listed}" if listed else "")


def table(passes: list[Pass]) -> str:
    def row(name: str, cell) -> str:
        return f"| {name} | " + " | ".join(cell(p) for p in passes) + " |"

    lines = [
        "| | " + " | ".join(f"{p.title} (`{p.command}`)" for p in passes) + " |",
        "|---|" + "---|" * len(passes),
        row("tests", lambda p: f"{p.tests - p.failed - p.skipped} passed, {p.failed} failed, {p.skipped} skipped"),
        row("syncer runs", lambda p: str(p.figures.get("syncer runs", 0))),
        row("faults injected", lambda p: faults(p.figures)),
        row("SIGKILLs", lambda p: str(p.figures.get("kills (SIGKILL)", 0))),
        row("soak rounds", lambda p: str(p.figures.get("soak rounds", 0))),
        row("objects verified (downloaded and compared, with metadata)",
            lambda p: f"{p.figures.get('objects verified', 0):,} ({megabytes(p.figures.get('bytes verified', 0))})"),
        row("multipart bytes reused after kills instead of re-sent",
            lambda p: megabytes(p.figures.get("bytes reused after kills", 0))),
        row("fuzzed inputs (Hypothesis)", lambda p: f"{p.figures.get('S3Backup specs fuzzed', 0)} S3Backup specs, "
            f"{p.figures.get('cli invocations fuzzed', 0)} CLI invocations"),
        row("files lost or corrupted", lambda p: "**0**" if not p.failed else "see the failed tests"),
        row("wall time", lambda p: minutes(p.seconds)),
        row("load average (1 min) at start / end", lambda p: f"{p.load[0]:.1f} / {p.load[1]:.1f}"),
    ]
    for p in passes:
        lines += ["", f"Failed in the {p.title}:", *(f"- {failure}" for failure in p.failures)] if p.failures else []
    return "\n".join(lines)


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak-rounds", type=int, default=20, help="rounds of the soak pass (default 20)")
    parser.add_argument("--note", default="", help="a sentence on the conditions, printed with the figures")
    parser.add_argument("--out", type=Path, default=REPO / "RELIABILITY.md")
    parser.add_argument("-k", dest="select", help="only the tests pytest -k selects (to try the script out)")
    args = parser.parse_args(argv)
    if not PYTHON.exists():
        sys.exit("no .venv: run scripts/bootstrap.sh test first")
    at, when = commit(), datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    select = ["-k", args.select] if args.select else []
    passes = [
        run_pass("default suite, as in CI", select, {}, "pytest tests/reliability"),
        run_pass(f"soak, {args.soak_rounds} rounds", ["-m", "soak", *select],
                 {"S3BACKUP_SOAK_RUNS": str(args.soak_rounds)},
                 f"S3BACKUP_SOAK_RUNS={args.soak_rounds} pytest tests/reliability -m soak"),
    ]
    machine = f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    body = (f"Measured on {when} at commit {at} by `.venv/bin/python scripts/reliability_figures.py "
            f"--soak-rounds {args.soak_rounds}`, on {machine}. Every figure comes from real runs against "
            f"SeaweedFS; the scenarios end by downloading the bucket and comparing it with the source."
            + (f" {args.note}" if args.note else "") + "\n\n" + table(passes) + "\n")
    args.out.write_text("# Reliability figures\n\nWritten by `scripts/reliability_figures.py`; do not edit by hand. "
                        "See README.md, \"Reliability\", for what the suite injects and checks.\n\n" + body)
    readme = REPO / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
        readme.write_text(pattern.sub(lambda _: f"{START}\n{body}{END}", text))
    print(body)
    return 1 if any(p.failed for p in passes) else 0


if __name__ == "__main__":
    sys.exit(main())
