"""One verify run: does the bucket hold every local file unchanged? Downloads nothing unless asked.

    walk (scan.py) ─┐
                    ├─ merge_join (plan.py) + decide_verify (restore_plan.py, pure) ─ workers: hash / scrub
    list (remote.py)┘

Each difference is one line on stdout: `missing KEY` (a local file with no object), `differs KEY`
(another size, or another ETag than the local file's, taken from the hash cache where that is
still valid), `extra KEY` (an object with no local file), and with `--sample` `corrupt KEY` (the
bytes downloaded do not give the object's ETag).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions

from .attributes_state import RecordedAttributes, content_etag_of
from .download import Downloader, DownloadFailed, ObjectRef, head
from .engine import check_source
from .errors import ConfigError
from .etag import etag_key
from .filework import hash_file
from .filters import Filters
from .hashcache import HashCache, load_remote_cache
from .plan import etag_verdict, merge_join
from .remote import STATE_DIR, RemoteListing, RemoteObject, describe_client_error, make_run_client, run_error
from .report import Progress, RunCounters, human_bytes
from .restore import recorded_attributes
from .restore_plan import Finding, decide_verify, in_sample, same_without_checksum
from .scan import LocalFile, ScanProblem, walk
from .transfer import FileChanged

log = logging.getLogger("s3backup")



@dataclass(frozen=True)
class VerifyOptions:
    source: Path
    bucket: str
    prefix: str  # "" or ends with "/"
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    sample_percent: float | None = None  # download and check this share of the objects
    seed: int | None = None  # None: a random sample
    hash_cache: bool = True
    concurrency: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= 256:
            raise ConfigError(f"invalid --concurrency {self.concurrency}: use 1 to 256")
        if self.sample_percent is not None and not 0 < self.sample_percent <= 100:
            raise ConfigError(f"invalid --sample {self.sample_percent:g}: a percentage above 0, at most 100")


@dataclass
class VerifySummary(RunCounters):
    """Counters of one verify run. Written as JSON by `--summary-json`."""

    command: str = "verify"
    files_scanned: int = 0
    bytes_scanned: int = 0
    remote_objects: int = 0  # in scope
    files_same: int = 0
    missing: int = 0
    differs: int = 0
    extra: int = 0
    corrupt: int = 0
    files_failed: int = 0  # local files that could not be read, objects that could not be fetched
    files_excluded: int = 0
    sample_percent: float = 0.0
    seed: int | None = None
    sampled: int = 0  # objects downloaded and checked
    sampled_unverifiable: int = 0  # sampled objects whose ETag (SSE-KMS) and metadata hold no checksum
    bytes_downloaded: int = 0
    bytes_hashed: int = 0  # local bytes read because the hash cache did not know them

    @property
    def differences(self) -> int:
        return self.missing + self.differs + self.extra + self.corrupt


class VerifyProgress(Progress):
    def line(self) -> str:
        s = self.summary
        return (
            f"scanned {s.files_scanned} ({human_bytes(s.bytes_scanned)}) · same {s.files_same} · "
            f"differences {s.differences} · sampled {s.sampled} ({human_bytes(s.bytes_downloaded)})"
        )


def describe_verify(s: VerifySummary) -> str:
    text = (
        f"{s.files_scanned} files ({human_bytes(s.bytes_scanned)}), {s.remote_objects} objects: {s.files_same} same, "
        f"{s.missing} missing, {s.differs} differ, {s.extra} extra"
    )
    if s.sample_percent:
        text += f"; {s.sampled} sampled ({s.sample_percent:g}%, --seed {s.seed}), {s.corrupt} corrupt"
    if s.files_failed:
        text += f"; {s.files_failed} could not be checked"
    return text + f"; {s.duration_seconds:.1f}s"


def _printable(key: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)


class VerifyRun:
    def __init__(self, options: VerifyOptions, client=None, summary: VerifySummary | None = None, out=None):
        self.options = options
        self.summary = summary or VerifySummary()
        self.client = client or make_run_client(options)
        self.filters = Filters(tuple(options.includes), tuple(options.excludes))
        self.out = out or sys.stdout
        self._out_lock = threading.Lock()
        self.cache: HashCache | None = None
        self._lookup_recorded: Callable[[str, str], RecordedAttributes | None] | None = None
        self._recorded_lock = threading.Lock()
        self.seed = options.seed if options.seed is not None else secrets.randbelow(10**9)
        if options.sample_percent:
            self.summary.sample_percent, self.summary.seed = options.sample_percent, self.seed

    def run(self) -> VerifySummary:
        options = self.options
        check_source(options.source)
        listing = RemoteListing(self.client, options.bucket, options.prefix, parallel=options.concurrency)
        try:
            first_page = listing.first_page()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise run_error(exc, options.bucket) from None
        with tempfile.TemporaryDirectory(prefix="s3backup-") as workdir, contextlib.ExitStack() as self._stack:
            if options.hash_cache:
                self.cache, warning = load_remote_cache(self.client, options.bucket, options.prefix, Path(workdir))
                if warning:
                    log.warning(warning)
            self._downloader = Downloader(self.client, 1, on_bytes=lambda n: self.summary.add(bytes_downloaded=n))
            try:
                self._march(listing.in_key_order(first_page, Path(workdir) / "remote-index.sqlite"))
            finally:
                self._downloader.close()
        return self.summary

    def _march(self, remote_objects) -> None:
        options = self.options
        in_flight = threading.BoundedSemaphore(options.concurrency * 4)
        with ThreadPoolExecutor(options.concurrency, thread_name_prefix="s3backup-verify") as workers:
            for local, remote in merge_join(self._local_files(), remote_objects):
                if remote is not None:
                    if not self.filters.in_scope(remote.key) or (remote.key.endswith("/") and remote.size == 0):
                        if local is None:
                            self.summary.add(files_excluded=1)
                            continue
                        remote = None  # out of scope remotely: the local file counts as missing
                    else:
                        self.summary.add(remote_objects=1)
                cached = None
                if self.cache is not None and local is not None and remote is not None and remote.size == local.size:
                    cached = self.cache.lookup(local)
                finding, etag_keys = decide_verify(local, remote, cached)
                sample = remote is not None and bool(options.sample_percent) and in_sample(
                    remote.key, options.sample_percent or 0, self.seed)
                if finding is Finding.SAME:
                    self.summary.add(files_same=1)
                elif finding is not Finding.CHECK:
                    self._report(finding, (local or remote).key)  # type: ignore[union-attr]
                if finding is Finding.CHECK or sample:
                    in_flight.acquire()
                    future = workers.submit(self._process, local, remote, finding, etag_keys, sample)
                    future.add_done_callback(lambda _: in_flight.release())

    def _local_files(self):
        for item in walk(str(self.options.source), self.filters,
                         on_excluded=lambda size: self.summary.add(files_excluded=1)):
            if isinstance(item, ScanProblem):
                log.error("%s: %s", item.key, item.message)
                self.summary.add(files_failed=1)
                self.summary.note(f"{item.key}: {item.message}")
                continue
            if item.key.startswith(STATE_DIR):
                continue
            self.summary.add(files_scanned=1, bytes_scanned=item.size)
            yield item

    def _report(self, finding: Finding, key: str) -> None:
        self.summary.add(**{finding.value: 1})
        with self._out_lock:
            print(f"{finding.value} {_printable(key)}", file=self.out, flush=True)

    # --- worker threads ------------------------------------------------------------------------
    def _process(self, local: LocalFile | None, remote: RemoteObject | None, finding: Finding,
                 etag_keys: tuple[int, ...], sample: bool) -> None:
        try:
            if finding is Finding.CHECK:
                assert local is not None and remote is not None
                etags = self._local_etags(local, etag_keys)
                if (etag_verdict(etags, remote.etag, etag_key(remote.size, remote.etag, None))
                        or self._same_without_checksum(local, remote, etags)):
                    self.summary.add(files_same=1)
                else:
                    self._report(Finding.DIFFERS, local.key)
            if sample:
                assert remote is not None
                self._scrub(remote)
        except OSError as exc:
            key = (local or remote).key  # type: ignore[union-attr]
            self._failed(key, f"cannot read: {exc.strerror or exc}")
        except Exception as exc:  # a bug or an unforeseen failure: this file is unchecked, the run goes on
            key = (local or remote).key  # type: ignore[union-attr]
            log.debug("unexpected failure on %s", key, exc_info=True)
            self._failed(key, f"{type(exc).__name__}: {exc}")

    def _same_without_checksum(self, local: LocalFile, remote: RemoteObject, local_etags: dict[int, str]) -> bool:
        """After ETags that are not the object's: whether that ETag is no checksum (a HEAD's answer says SSE-KMS,
        DSSE-KMS or SSE-C) and the file is the object by the MD5 in its metadata or the ETag in s3backup's state,
        or else by size and mtime, as a sync and a restore judge."""
        options = self.options
        answer = head(self.client, ObjectRef(options.bucket, options.prefix + remote.key, remote.size, remote.etag))
        if answer is None or answer.etag_is_md5:
            return False
        recorded = self._recorded(remote.key, remote.etag)
        return same_without_checksum(local, remote, answer.metadata, recorded, local_etags=local_etags, content_etag=(
            answer.expected_etag(remote.etag, lambda: content_etag_of(recorded))))

    def _recorded(self, key: str, etag: str) -> RecordedAttributes | None:
        """What s3backup's state records for the object; the state is read once, by the first file that needs it."""
        with self._recorded_lock:
            if self._lookup_recorded is None:
                options = self.options
                self._lookup_recorded = recorded_attributes(self._stack, self.client, options.bucket, options.prefix)
        return self._lookup_recorded(key, etag)

    def _local_etags(self, local: LocalFile, etag_keys: tuple[int, ...]) -> dict[int, str]:
        """The file's ETags for these part sizes (0: its MD5), read once."""
        try:
            etags = hash_file(local, etag_keys)
        except FileChanged as exc:
            raise OSError(0, str(exc)) from None
        self.summary.add(bytes_hashed=local.size)
        return etags

    def _scrub(self, remote: RemoteObject) -> None:
        options = self.options
        ref = ObjectRef(options.bucket, options.prefix + remote.key, remote.size, remote.etag)
        try:
            verdict = self._downloader.content_matches(ref, tuple(etag_key(remote.size, remote.etag, None)),
                                                       lambda: content_etag_of(self._recorded(remote.key, remote.etag)))
        except (DownloadFailed, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            message = str(exc) if isinstance(exc, DownloadFailed) else describe_client_error(exc, options.bucket)
            self._failed(remote.key, f"cannot download for the content check: {message}")
            return
        self.summary.add(sampled=1)
        if verdict is None:
            self.summary.add(sampled_unverifiable=1)
        elif not verdict:
            self._report(Finding.CORRUPT, remote.key)

    def _failed(self, key: str, message: str) -> None:
        log.error("%s: %s", key, message)
        self.summary.add(files_failed=1)
        self.summary.note(f"{key}: {message}")


def run_verify(options: VerifyOptions, client=None, summary: VerifySummary | None = None, out=None) -> VerifySummary:
    """Run one verify. Raises `UserError` for bad input; differences are in the summary and on `out`."""
    run = VerifyRun(options, client, summary, out)
    summary = run.summary
    summary.run_timed(run.run, lambda: bool(summary.differences or summary.files_failed))  # partial: they differ
    return summary
