"""What a run did: counters, the JSON summary, and progress output."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

#: Errors kept in the summary. Kubernetes caps a termination message at 4 KiB.
MAX_ERRORS_IN_SUMMARY = 5


@dataclass
class RunCounters:
    """What every command's summary shares: counters that worker threads add to, a capped list of errors
    (a Kubernetes termination message holds 4 KiB), the exit code, and the JSON of `--summary-json`."""

    errors: list[str] = field(default_factory=list)
    exit_code: int = 0  # 0 all done, 1 some files failed or differ, 2 usage or configuration error
    result: str = "running"  # "success" | "partial" (exit 1: see `run_timed`) | "error" (exit 2, or no answer)
    error: str = ""  # why the run failed, when result == "error"
    started_at: float = field(default_factory=time.time)  # Unix seconds
    duration_seconds: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def run_timed(self, run: Callable[[], object], trouble: Callable[[], bool]) -> None:
        """Run `run`, timed; then the result: "partial" (exit 1) if `trouble()`, else "success" (exit 0)."""
        started = time.monotonic()
        try:
            run()
        finally:
            self.duration_seconds = round(time.monotonic() - started, 3)
        partial = trouble()
        self.result = "partial" if partial else "success"
        self.exit_code = 1 if partial else 0

    def add(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self, name, getattr(self, name) + value)

    def note(self, text: str) -> None:
        with self._lock:
            if len(self.errors) < MAX_ERRORS_IN_SUMMARY:
                self.errors.append(text[:300])

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


@dataclass
class Summary(RunCounters):
    """Counters of one sync run. Written as JSON by `--summary-json` and pushed as metrics."""

    dry_run: bool = False
    files_scanned: int = 0
    bytes_scanned: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0  # bytes sent this run
    bytes_reused: int = 0  # bytes of parts already sent by an interrupted earlier run, not sent again
    files_unchanged: int = 0
    bytes_unchanged: int = 0
    files_recycled: int = 0
    bytes_recycled: int = 0
    files_failed: int = 0
    bytes_failed: int = 0
    files_excluded: int = 0
    bytes_hashed: int = 0  # file bytes read to compute checksums (uploads included)
    remote_objects: int = 0  # objects under the prefix after the run
    remote_bytes: int = 0
    recycle_pending: int = 0  # remote-only objects kept because they are not old enough yet
    recycle_blocked: str = ""  # why recycling was skipped this run, if it was

    def fail(self, path: str, message: str, size: int = 0) -> None:
        self.add(files_failed=1, bytes_failed=size)
        self.note(f"{path}: {message}")


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


class Progress:
    """Progress while a run goes on: one updating line on a TTY, else a plain line every 30 s."""

    def __init__(self, summary: Summary, stream=sys.stderr, enabled: bool = True, plain_interval: float = 30.0):
        self.summary = summary
        self.stream = stream
        self.enabled = enabled
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = 0.5 if self.tty else plain_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def line(self) -> str:
        s = self.summary
        elapsed = max(time.time() - s.started_at, 1e-6)
        return (
            f"scanned {s.files_scanned} ({human_bytes(s.bytes_scanned)}) · "
            f"uploaded {s.files_uploaded} ({human_bytes(s.bytes_uploaded)}, "
            f"{human_bytes(s.bytes_uploaded / elapsed)}/s) · unchanged {s.files_unchanged} · "
            f"failed {s.files_failed}"
        )

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.tty:
                self.stream.write("\r\x1b[K" + self.line())
            else:
                self.stream.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + "progress: " + self.line() + "\n")
            self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            if self.tty:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
