"""One restore run, as a script: sync in reverse. List, walk the target, march, download, place.

    list (remote.py, or versions.py for --as-of) ─┐
                                                   ├─ merge_join (plan.py) + decide_restore (restore_plan.py, pure)
    walk the target (scan.py) ─────────────────────┘      ├─ workers: hash a present file / download (download.py)
                                                          └─ one event loop: a small file's restore (small_gets.py)

Each file is written under a temporary name in its own directory, checked against the object's
ETag, given its mtime and mode, and only then renamed to its final name: nothing half-written or
unchecked ever carries a final name. A file that is already there and identical is skipped, so
an interrupted restore resumes; one that differs is replaced only with `--overwrite`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import botocore.exceptions

from .attributes_state import AttributeReader, RecordedAttributes, content_etag_of, open_recorded_attributes
from .download import Downloader, DownloadFailed, ObjectRef, head
from .errors import ConfigError
from .etag import EtagHasher, etag_key
from .file_writes import direct_io_suits, write_whole
from .filters import Filters
from .plan import etag_verdict, merge_join
from .remote import RemoteListing, RemoteObject, describe_client_error, make_run_client, run_error
from .report import Progress, RunCounters, human_bytes
from .restore_plan import (
    TEMP_PREFIX,
    RestoreAction,
    RestoreDecision,
    after_check,
    decide_restore,
    file_attributes,
    same_without_checksum,
    temp_name,
)
from .scan import LocalFile, ScanProblem, walk
from .small_gets import MAX_SIZE, LoopSlots, SmallGets
from .versions import RemoteVersion, bucket_is_versioned, versions_as_of

log = logging.getLogger("s3backup")

FILE_ATTEMPTS = 3


@dataclass(frozen=True)
class RestoreOptions:
    bucket: str
    prefix: str  # "" or ends with "/"
    target: Path
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    as_of: datetime | None = None
    overwrite: bool = False
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    concurrency: int = 8
    dry_run: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= 256:
            raise ConfigError(f"invalid --concurrency {self.concurrency}: use 1 to 256")

    @property
    def files_for_workers(self) -> int:
        """Files handed to the workers and not yet done: enough to keep `concurrency` of them busy."""
        return self.concurrency * 4

    @property
    def files_on_the_loop(self) -> int:
        """Small files on the event loop at once. A GET costs the loop little but a round trip, which a distant
        bucket makes long: so many more of them than workers. At most 256 (s5cmd's default), so that a high
        --concurrency does not open thousands of sockets."""
        return min(self.concurrency * 32, 256)

    @property
    def bytes_on_the_loop(self) -> int:
        """What the loop's files may hold in memory at once, by their listed sizes (a body larger than listed is
        refused): 8 × --concurrency of the largest small file."""
        return self.concurrency * 8 * MAX_SIZE


@dataclass
class RestoreSummary(RunCounters):
    """Counters of one restore. Written as JSON by `--summary-json`."""

    command: str = "restore"
    dry_run: bool = False
    as_of: str = ""  # the point in time restored, RFC 3339, when --as-of was given
    files_listed: int = 0  # objects in scope under the prefix
    bytes_listed: int = 0
    files_restored: int = 0  # written (new or replaced) this run
    bytes_restored: int = 0
    bytes_downloaded: int = 0  # received, retries included
    files_unchanged: int = 0  # already there, identical
    bytes_unchanged: int = 0
    files_conflicting: int = 0  # already there, different, and no --overwrite
    files_failed: int = 0
    bytes_failed: int = 0
    files_excluded: int = 0
    files_unverified: int = 0  # no checksum in ETag (e.g. SSE-KMS), metadata nor state: size only
    files_checked_by_crc32: int = 0  # by the CRC32 the server stored, not by MD5 (large objects only)
    bytes_hashed: int = 0  # local bytes read to compare present files

    def fail(self, key: str, message: str, size: int = 0, counter: str = "files_failed") -> None:
        self.add(**{counter: 1}, **({"bytes_failed": size} if counter == "files_failed" else {}))
        self.note(f"{key}: {message}")


class RestoreProgress(Progress):
    def line(self) -> str:
        s = self.summary
        elapsed = max(time.time() - s.started_at, 1e-6)
        return (
            f"listed {s.files_listed} ({human_bytes(s.bytes_listed)}) · restored {s.files_restored} "
            f"({human_bytes(s.bytes_downloaded)}, {human_bytes(s.bytes_downloaded / elapsed)}/s) · "
            f"unchanged {s.files_unchanged} · conflicting {s.files_conflicting} · failed {s.files_failed}"
        )


def describe_restore(s: RestoreSummary) -> str:
    verb = "would restore" if s.dry_run else "restored"
    return (
        f"{s.files_listed} objects ({human_bytes(s.bytes_listed)}) listed: {verb} {s.files_restored} "
        f"({human_bytes(s.bytes_restored)}), {s.files_unchanged} unchanged, {s.files_conflicting} "
        f"conflicting, {s.files_failed} failed; {s.duration_seconds:.1f}s"
    )


def prepare_target(target: Path, dry_run: bool, create: bool) -> None:
    """The target is a directory we can write, created if missing (once S3 answered); else the user's to fix."""
    try:
        if not target.exists() and not target.is_symlink():
            if dry_run or not create:
                return
            target.mkdir(parents=True)
        if not stat.S_ISDIR(os.stat(target).st_mode):
            raise ConfigError(f"target {str(target)!r} is not a directory")
        if not dry_run and not os.access(target, os.W_OK | os.X_OK):
            raise ConfigError(f"target directory {str(target)!r} is not writable")
    except OSError as exc:
        raise ConfigError(f"target directory {str(target)!r} cannot be used: {exc.strerror}") from None


class RestoreRun:
    def __init__(self, options: RestoreOptions, client=None, summary: RestoreSummary | None = None):
        self.options = options
        self.summary = summary or RestoreSummary(dry_run=options.dry_run)
        self.client = client or make_run_client(options)
        self.filters = Filters(tuple(options.includes), tuple(options.excludes))
        self._made_dirs: set[str] = set()
        self._dirs_lock = threading.Lock()

    # --- the script --------------------------------------------------------------------------
    def run(self) -> RestoreSummary:
        options = self.options
        prepare_target(options.target, options.dry_run, create=False)
        if options.as_of is not None:
            self.summary.as_of = options.as_of.isoformat().replace("+00:00", "Z")
        with tempfile.TemporaryDirectory(prefix="s3backup-") as workdir, contextlib.ExitStack() as stack:
            downloader = self._downloader = Downloader(
                self.client, options.concurrency, on_bytes=lambda n: self.summary.add(bytes_downloaded=n),
                direct_io=direct_io_suits(str(options.target)),
            )
            stack.callback(downloader.close)
            self._small_gets = SmallGets(downloader.direct, self.client)
            stack.callback(self._small_gets.close)
            remote = self._remote_and_recorded(Path(workdir) / "remote-index.sqlite", stack)
            prepare_target(options.target, options.dry_run, create=True)
            self._march(remote)
        if self.summary.files_listed == 0:
            where = f"s3://{options.bucket}/{options.prefix}"
            if options.as_of:
                where += f" as of {self.summary.as_of}"
            log.warning("nothing to restore: no object under %s%s", where,
                        " matches the filters" if options.includes or options.excludes else "")
        return self.summary

    def _remote_and_recorded(self, index_path: Path, stack: contextlib.ExitStack) -> Iterator[RemoteObject]:
        """`_remote`, while s3backup's recorded attributes are read beside it, open until `stack` closes: on a slow
        link each request is a round trip, and the first file needs them only when it is written
        (`self.recorded`). The listing also tells DirectGet the route, so that small files go straight to the
        event loop."""
        options = self.options
        state_stack = stack.enter_context(contextlib.ExitStack())  # entered by the thread below only
        beside = ThreadPoolExecutor(1, thread_name_prefix="s3backup-state")
        stack.callback(beside.shutdown)  # before state_stack closes
        state = beside.submit(state_stack.enter_context, open_recorded_attributes(
            self.client, options.bucket, options.prefix, as_of=options.as_of))
        self.recorded = lookup_when_read(state)
        with self._downloader.direct.learning_from_listing():
            return self._remote(index_path)  # bad bucket or access: fails here, whatever the state's fate

    def _remote(self, index_path: Path) -> Iterator[RemoteObject]:
        """The objects to restore, in key order: the current ones, or those current at --as-of."""
        options = self.options
        try:
            if options.as_of is not None:
                if not bucket_is_versioned(self.client, options.bucket):
                    raise ConfigError(f"--as-of needs a versioned bucket; {options.bucket!r} keeps no old versions")
                remote = versions_as_of(self.client, options.bucket, options.prefix, options.as_of, index_path)
                first = next(remote, None)  # errors surface before any work
                return iter(()) if first is None else _chain(first, remote)
            listing = RemoteListing(self.client, options.bucket, options.prefix, parallel=options.concurrency)
            first_page = listing.first_page()
            return listing.in_key_order(first_page, index_path)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise run_error(exc, options.bucket) from None

    def _march(self, remote_objects: Iterator[RemoteObject]) -> None:
        options = self.options
        worker_slots = threading.BoundedSemaphore(options.files_for_workers)
        loop_slots = LoopSlots(options.files_on_the_loop, options.bytes_on_the_loop, self._small_gets)
        with ThreadPoolExecutor(options.concurrency, thread_name_prefix="s3backup-file") as workers:
            self._workers = workers
            try:
                self._decide_and_hand_out(remote_objects, worker_slots, loop_slots)
            finally:  # every file done, on the loop or by a worker (to whom the loop hands its failures)
                loop_slots.wait_for_all()
                for _ in range(options.files_for_workers):
                    worker_slots.acquire()

    def _decide_and_hand_out(self, remote_objects: Iterator[RemoteObject], worker_slots: threading.Semaphore,
                             loop_slots: LoopSlots) -> None:
        options = self.options
        for local, remote in merge_join(self._local_files(), remote_objects):
            if remote is None:
                continue  # a local file with no object: restore never deletes
            if remote.key.endswith("/") and remote.size == 0:
                continue  # a folder marker some tools write: folders come with their files
            if not self.filters.in_scope(remote.key):
                self.summary.add(files_excluded=1)
                continue
            self.summary.add(files_listed=1, bytes_listed=remote.size)
            decision = decide_restore(local, remote, overwrite=options.overwrite)
            if decision.action is RestoreAction.REFUSE:
                self._fail(remote, decision.reason)
                continue
            if self._settled(decision):
                continue
            if self._small_gets_take(decision):
                loop_slots.take(remote.size)
                loop_slots.hand_over(self._restore_small(decision, loop_slots))
            else:
                if not worker_slots.acquire(blocking=False):
                    loop_slots.submit_held()  # no file waits in the loop's batch while this thread does
                    worker_slots.acquire()
                self._to_workers(decision, worker_slots.release)

    def _settled(self, decision: RestoreDecision) -> bool:
        """Count a file already there (SKIP) or left alone (CONFLICT); True when nothing more is to be done."""
        if decision.action is RestoreAction.SKIP:
            self.summary.add(files_unchanged=1, bytes_unchanged=decision.remote.size)
            return True
        if decision.action is RestoreAction.CONFLICT:
            self._conflict(decision.remote)
            return True
        return False

    def _to_workers(self, decision: RestoreDecision, release: Callable[[], None]) -> None:
        self._workers.submit(self._process, decision).add_done_callback(lambda _: release())

    def _small_gets_take(self, decision: RestoreDecision) -> bool:
        """Whether the event loop restores this file (small_gets.py): a small current object, single-part."""
        remote = decision.remote
        return (decision.action in (RestoreAction.DOWNLOAD, RestoreAction.REPLACE) and not self.options.dry_run
                and remote.size <= MAX_SIZE and "-" not in remote.etag and not isinstance(remote, RemoteVersion)
                and self._small_gets.available())

    def _local_files(self) -> Iterator[LocalFile]:
        """The target's files in key order, without restore's own temporary files."""
        if not self.options.target.is_dir():
            return  # --dry-run into a directory that does not exist yet
        for item in walk(str(self.options.target), self.filters):
            if isinstance(item, ScanProblem):
                log.warning("%s: %s", item.key, item.message)
                continue
            if item.key.rpartition("/")[2].startswith(TEMP_PREFIX):
                continue
            yield item

    # --- per-file work (worker threads) ---------------------------------------------------------
    def _process(self, decision: RestoreDecision) -> None:
        remote = decision.remote
        try:
            if decision.action is RestoreAction.CHECK:
                decision = self._check(decision)
                if self._settled(decision):
                    return
            self._restore_with_retries(decision)
        except Exception as exc:  # a bug or an unforeseen failure: this file fails, the run goes on
            log.debug("unexpected failure on %s", remote.key, exc_info=True)
            self._fail(remote, f"{type(exc).__name__}: {exc}")

    def _check(self, decision: RestoreDecision) -> RestoreDecision:
        """Hash the present file for the part sizes that could explain the ETag, then decide."""
        local, remote = decision.local, decision.remote
        assert local is not None
        try:
            with open(local.path, "rb") as handle:
                hasher = EtagHasher(decision.etag_keys).update_from(handle)
        except OSError as exc:
            log.warning("%s: cannot read the present file (%s): it counts as different", remote.key, exc.strerror)
            return after_check(False, local, remote, overwrite=self.options.overwrite)
        self.summary.add(bytes_hashed=hasher.bytes)
        etags = hasher.etags()
        identical = hasher.bytes == local.size and (
            bool(etag_verdict(etags, remote.etag, etag_key(remote.size, remote.etag, None)))
            or self._same_without_checksum(local, remote, etags)
        )
        return after_check(identical, local, remote, overwrite=self.options.overwrite)

    def _same_without_checksum(self, local: LocalFile, remote: RemoteObject, local_etags: dict[int, str]) -> bool:
        """Whether a file whose ETag is not the object's is still the object, because that ETag is no checksum (a
        HEAD's answer says SSE-KMS, DSSE-KMS or SSE-C): then by the MD5 in the metadata or the ETag in s3backup's
        state, or by size and mtime."""
        answer = head(self.client, self._ref(remote))
        if answer is None or answer.etag_is_md5:
            return False
        recorded = self.recorded(remote.key, remote.etag)
        return same_without_checksum(local, remote, answer.metadata, recorded, local_etags=local_etags, content_etag=(
            answer.expected_etag(remote.etag, lambda: content_etag_of(recorded))))

    def _ref(self, remote: RemoteObject) -> ObjectRef:
        """The stored object `remote` is: its version for --as-of, else its key and ETag."""
        version_id = remote.version_id if isinstance(remote, RemoteVersion) else None
        return ObjectRef(self.options.bucket, self.options.prefix + remote.key, remote.size, remote.etag, version_id)

    def _restore_with_retries(self, decision: RestoreDecision) -> None:
        remote = decision.remote
        if self.options.dry_run:
            print(f"would {decision.action.value}: {remote.key} ({remote.size} bytes)", flush=True)
            self.summary.add(files_restored=1, bytes_restored=remote.size)
            return
        for attempt in range(1, FILE_ATTEMPTS + 1):
            try:
                self._restore(decision)
                return
            except FileExistsError:
                self._conflict(remote)
                return
            except OSError as exc:
                log.debug("cannot write %s", remote.key, exc_info=True)
                self._fail(remote, f"cannot write: {exc.strerror or exc}")
                return
            except (DownloadFailed, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                message = self._describe(exc)
                if attempt == FILE_ATTEMPTS or _gone_or_changed(exc):
                    self._fail(remote, message)
                    return
                log.warning("%s: %s; trying again (%d/%d)", remote.key, message, attempt + 1, FILE_ATTEMPTS)
                time.sleep(attempt)

    def _restore(self, decision: RestoreDecision) -> None:
        """Download to a temporary name beside the final one, check, set attributes, rename."""
        remote = decision.remote
        final, temp = self._paths(remote)
        ref = self._ref(remote)
        try:
            fetched = self._downloader.fetch(ref, temp, tuple(etag_key(remote.size, remote.etag, None)),
                                             lambda: content_etag_of(self.recorded(remote.key, remote.etag)))
            if not fetched.verified:
                self._unverified(remote)
            elif fetched.by_crc32:
                self.summary.add(files_checked_by_crc32=1)
            self._finish(decision, temp, final, fetched.metadata)
        except BaseException:
            _remove_quietly(temp)
            raise

    async def _restore_small(self, decision: RestoreDecision, slots: LoopSlots) -> None:
        """On the event loop: GET, check (`_is_content`), write, finish. Anything else (an error, another kind of
        ETag, a mismatch) hands the file to a worker, whose retries and reports decide."""
        remote = decision.remote
        slots.started()
        try:
            got = await self._small_gets.get(self.options.prefix + remote.key, {"If-Match": f'"{remote.etag}"'},
                                             max_body=remote.size)
            if got is None:
                self._hand_to_a_worker(decision, slots)
                return
            answer, body = got
            self.summary.add(bytes_downloaded=len(body))
            expected = answer.expected_etag(remote.etag)
            if not _is_content(body, expected, remote):
                self._hand_to_a_worker(decision, slots)
                return
            final, temp = self._paths(remote)
            try:
                write_whole(temp, body)
                if expected is None:
                    self._unverified(remote)
                self._finish(decision, temp, final, answer.metadata)
            except BaseException:
                _remove_quietly(temp)
                raise
        except FileExistsError:
            self._conflict(remote)
        except OSError as exc:
            log.debug("cannot write %s", remote.key, exc_info=True)
            self._fail(remote, f"cannot write: {exc.strerror or exc}")
        except Exception as exc:  # a bug or an unforeseen failure: this file fails, the run goes on
            log.debug("unexpected failure on %s", remote.key, exc_info=True)
            self._fail(remote, f"{type(exc).__name__}: {exc}")
        slots.finished(remote.size)

    def _hand_to_a_worker(self, decision: RestoreDecision, slots: LoopSlots) -> None:
        """The loop's file goes to a worker, which frees its slot when done (if the handing over fails, the
        caller's `except` frees it)."""
        size = decision.remote.size
        self._to_workers(decision, lambda: slots.free(size))
        slots.finished(size, slot_freed=False)

    def _paths(self, remote: RemoteObject) -> tuple[str, str]:
        """(final path, temporary path beside it), the folders made."""
        final = os.path.join(str(self.options.target), *remote.key.split("/"))
        directory = os.path.dirname(final)
        self._make_dirs(directory)
        return final, os.path.join(directory, temp_name(os.path.basename(final)))

    def _finish(self, decision: RestoreDecision, temp: str, final: str, metadata: dict[str, str]) -> None:
        """Give the checked temporary file its mtime and mode, then its final name."""
        remote = decision.remote
        mtime_ns, mode = file_attributes(metadata, remote.last_modified, self.recorded(remote.key, remote.etag))
        if mode is not None:
            os.chmod(temp, mode)
        os.utime(temp, ns=(mtime_ns, mtime_ns))
        _place(temp, final, replace=decision.action is RestoreAction.REPLACE)
        self.summary.add(files_restored=1, bytes_restored=remote.size)
        log.info("restored %s (%d bytes)", remote.key, remote.size)

    def _make_dirs(self, directory: str) -> None:
        with self._dirs_lock:
            if directory in self._made_dirs:
                return
        try:
            os.makedirs(directory, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(0, "a file stands where its folder should be") from None
        with self._dirs_lock:
            self._made_dirs.add(directory)

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, DownloadFailed):
            return str(exc)
        if _gone_or_changed(exc):
            return "the object changed or was deleted since it was listed: run the restore again"
        return describe_client_error(exc, self.options.bucket)

    def _conflict(self, remote: RemoteObject) -> None:
        message = "a different file is already there: left alone (use --overwrite to replace it)"
        log.error("%s: %s", remote.key, message)
        self.summary.fail(remote.key, message, counter="files_conflicting")

    def _fail(self, remote: RemoteObject, message: str) -> None:
        log.error("%s: %s", remote.key, message)
        self.summary.fail(remote.key, message, remote.size)

    def _unverified(self, remote: RemoteObject) -> None:
        log.warning("%s: its ETag is not a checksum of its content (SSE-KMS, DSSE-KMS or SSE-C), and neither its "
                    "metadata nor s3backup's state holds one (another tool's upload, or an older s3backup's): only "
                    "the size was checked", remote.key)
        self.summary.add(files_unverified=1)


def recorded_attributes(stack: contextlib.ExitStack, client, bucket: str, prefix: str,
                        as_of: datetime | None = None) -> Callable[[str, str], RecordedAttributes | None]:
    """`lookup(key, etag)` of the attributes in s3backup's state (as of `as_of`), open until `stack` closes: they
    win over the objects' metadata."""
    return recorded_lookup(lambda: stack.enter_context(open_recorded_attributes(client, bucket, prefix, as_of=as_of)))


def lookup_when_read(state: Future[AttributeReader]) -> Callable[[str, str], RecordedAttributes | None]:
    """`recorded_lookup` of a state still being read: the first lookup waits for it."""
    lock, read = threading.Lock(), []

    def lookup(key: str, etag: str) -> RecordedAttributes | None:
        if not read:
            with lock:
                if not read:
                    read.append(recorded_lookup(state.result))
        return read[0](key, etag)

    return lookup


def recorded_lookup(opened: Callable[[], AttributeReader]) -> Callable[[str, str], RecordedAttributes | None]:
    """The reader's `lookup`; if `opened()` raises, a warning and a lookup that finds nothing."""
    try:
        return opened().lookup
    except Exception as exc:  # a damaged or unreadable state: the objects' metadata still holds mtimes
        log.warning("s3backup's recorded attributes cannot be read (%s); mtimes and modes come from the "
                    "objects' metadata", type(exc).__name__)
        return lambda key, etag: None


def _is_content(body: bytes, expected: str | None, remote: RemoteObject) -> bool:
    """Whether `body` is the object's content: by the plain MD5 its answer calls for (GetAnswer.expected_etag:
    the ETag, or the MD5 the sync put in the metadata), or by its size alone where there is none (`None`).
    A multipart ETag is not decided here."""
    if len(body) != remote.size:
        return False
    return expected is None or hashlib.md5(body).hexdigest() == expected


def _gone_or_changed(exc: Exception) -> bool:
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "NoSuchKey", "NoSuchVersion", "412", "404")


def _place(temp: str, final: str, *, replace: bool) -> None:
    """Give the checked file its final name: atomically, and never over a file unless asked."""
    if replace:
        os.replace(temp, final)
        return
    try:
        os.link(temp, final)  # fails if `final` exists, however it got there
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: a plain rename, after a look
        if os.path.lexists(final):
            raise FileExistsError(final) from None
        os.replace(temp, final)
        return
    os.unlink(temp)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _chain(first: RemoteObject, rest: Iterator[RemoteObject]) -> Iterator[RemoteObject]:
    yield first
    yield from rest


def run_restore(options: RestoreOptions, client=None, summary: RestoreSummary | None = None) -> RestoreSummary:
    """Run one restore. Raises `UserError` for bad input; per-file failures are in the summary."""
    run = RestoreRun(options, client, summary)
    summary = run.summary
    summary.run_timed(run.run, lambda: bool(summary.files_failed or summary.files_conflicting))
    return summary

