"""One sync run, as a script: check the inputs, march, check and upload, recycle, clean up.

    walk (scan.py) ─┐
                    ├─ merge_join + decide (plan.py, pure) ─ workers: hash / upload (transfer.py)
    list (remote.py)┘                                     └─ recycle candidates (spilled to disk)

Recycling runs last, and only if the run had no error, the source was not empty, and the
number of deletions stays under the cap.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import botocore.exceptions

from .config import SyncOptions
from .errors import ConfigError, RemoteAccessError, RemoteUnavailable
from .etag import EtagHasher, etag_key
from .filters import Filters
from .hashcache import HashCache, load_remote_cache, save_remote_cache
from .plan import Action, Decision, decide_present, decide_remote_only, etag_verdict, merge_join
from .remote import (
    STATE_DIR,
    RemoteListing,
    RemoteObject,
    describe_client_error,
    is_configuration_problem,
    list_pending_uploads,
    make_s3_client,
)
from .report import Summary
from .scan import LocalFile, ScanProblem, walk
from .transfer import READ_CHUNK, SERVER_ETAG, UPLOAD_MARKERS, FileChanged, PendingUpload, Uploader, UploadFailed

log = logging.getLogger("s3backup")

FILE_ATTEMPTS = 3


def check_source(source: Path) -> None:
    """The source must be a directory we can list: anything else is the user's to fix (exit 2)."""
    try:
        if not stat.S_ISDIR(os.stat(source).st_mode):
            raise ConfigError(f"source {str(source)!r} is not a directory")
        with os.scandir(source):
            pass
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"source directory {str(source)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"source directory {str(source)!r} cannot be read: {exc.strerror}") from None


class SyncRun:
    def __init__(self, options: SyncOptions, client=None, summary: Summary | None = None):
        self.options = options
        self.summary = summary or Summary(dry_run=options.dry_run)
        self.client = client or make_s3_client(
            endpoint_url=options.endpoint_url,
            region=options.region,
            path_style=options.path_style,
            max_pool_connections=max(10, options.concurrency * 2 + 2),
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
        )
        self.filters = Filters(tuple(options.includes), tuple(options.excludes), options.include_lost_found)
        self.cache: HashCache | None = None
        self._batch_delete = True  # DeleteObjects, until the server refuses it
        self.recycle_due = 0  # remote-only objects old enough to recycle (listed in a file, not in memory)
        self.recycle_refused = False  # a guard stopped due deletions: the run must not look green
        self.run_started = datetime.now(UTC)  # replaced by the server's clock once it answers
        self.server_clock_known = False
        self._keys_with_leftovers: set[str] = set()  # source files with an unfinished upload from before
        self._remote_delta = [0, 0]  # objects, bytes added under the prefix by this run
        self._delta_lock = threading.Lock()

    # --- the script --------------------------------------------------------------------------
    def run(self) -> Summary:
        options, summary = self.options, self.summary
        check_source(options.source)
        listing = RemoteListing(self.client, options.bucket, options.prefix, parallel=options.concurrency)
        try:
            first_page = listing.first_page()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            message = describe_client_error(exc, options.bucket)
            if is_configuration_problem(exc):
                raise RemoteAccessError(message) from None
            raise RemoteUnavailable(f"S3 is not available: {message}") from None
        # Ages and "written during this run" are judged by the server's clock, never ours.
        self.server_clock_known = listing.server_now is not None
        self.run_started = listing.server_now or datetime.now(UTC)
        with tempfile.TemporaryDirectory(prefix="s3backup-") as workdir:
            if options.hash_cache and options.compare == "md5":
                self.cache, warning = load_remote_cache(self.client, options.bucket, options.prefix, Path(workdir))
                if warning:
                    log.warning(warning)
            uploader = self._uploader = Uploader(self.client, options, summary, self._pending_uploads())
            recycle_list = Path(workdir) / "recycle.jsonl"
            try:
                with open(recycle_list, "w") as recycle_out:
                    remote = listing.in_key_order(first_page, Path(workdir) / "remote-index.sqlite")
                    self._march(remote, recycle_out)
            finally:
                uploader.close()
            if summary.files_scanned == 0 and listing.count:
                log.warning("the source %s is empty, but the prefix holds %d object(s): is the volume mounted? "
                            "Nothing is deleted from an empty source.", options.source, listing.count)
            self._recycle(recycle_list, listing.count)
            if not options.dry_run:
                aborted = uploader.abort_leftovers(self.run_started, self._keys_with_leftovers)
                if aborted:
                    log.info("aborted %d unfinished upload(s) left by earlier runs", aborted)
                uploader.drop_stale_markers()
                if self.cache is not None:
                    self._save_cache()
        summary.remote_objects = listing.count + self._remote_delta[0]
        summary.remote_bytes = listing.bytes + self._remote_delta[1]
        return summary

    def _march(self, remote_objects: Iterator[RemoteObject], recycle_out) -> None:
        options = self.options
        in_flight = threading.BoundedSemaphore(options.concurrency * 4)
        with ThreadPoolExecutor(options.concurrency, thread_name_prefix="s3backup-file") as workers:
            for local, remote in merge_join(self._local_files(), remote_objects):
                if local is None:
                    decision = decide_remote_only(
                        remote,
                        recycle_after_seconds=options.recycle_after_seconds,
                        in_scope=self.filters.in_scope(remote.key),
                        server_now=self.run_started,
                    )
                    if decision.action is Action.RECYCLE:
                        recycle_out.write(json.dumps([remote.key, remote.size]) + "\n")
                        self.recycle_due += 1
                    elif decision.action is Action.KEEP_YOUNG:
                        self.summary.add(recycle_pending=1)
                    continue
                if local.key in self._uploader.pending:
                    self._keys_with_leftovers.add(local.key)
                cached = None
                if self.cache is not None:
                    self.cache.write_queued(at_least=1000)  # what the workers stored, bounded in memory
                    if remote is not None and remote.size == local.size:
                        cached = self.cache.lookup(local)
                decision = decide_present(
                    local, remote, compare=options.compare, configured_part_size=options.part_size,
                    cached_etags=cached,
                )
                if decision.action is Action.UNCHANGED:
                    self.summary.add(files_unchanged=1, bytes_unchanged=local.size)
                    continue
                in_flight.acquire()
                future = workers.submit(self._process, decision, cached or {})
                future.add_done_callback(lambda _: in_flight.release())

    def _local_files(self) -> Iterator[LocalFile]:
        """The walk, with problems reported as failures and the state folder kept out."""
        key_prefix_bytes = len(self.options.prefix.encode())
        for item in walk(
            str(self.options.source),
            self.filters,
            key_prefix_bytes=key_prefix_bytes,
            follow_symlinks=self.options.follow_symlinks,
            on_excluded=lambda size: self.summary.add(files_excluded=1),
        ):
            if isinstance(item, ScanProblem):
                log.error("%s: %s", item.key, item.message)
                self.summary.fail(item.key, item.message)
                continue
            if item.key.startswith(STATE_DIR):
                self.summary.fail(item.key, f"{STATE_DIR} at the top of the source is reserved for s3backup")
                continue
            self.summary.add(files_scanned=1, bytes_scanned=item.size)
            yield item

    # --- per-file work (worker threads) ---------------------------------------------------------
    def _process(self, decision: Decision, cached: dict[int, str]) -> None:
        """Check and/or upload one file. Its failures are recorded; the run goes on."""
        local = decision.local
        assert local is not None
        try:
            action = decision.action
            if action is Action.CHECK:
                action = self._check(decision, cached)
                if action is Action.UNCHANGED:
                    self.summary.add(files_unchanged=1, bytes_unchanged=local.size)
                    return
            self._upload_with_retries(local, decision.remote, action)
        except FileChanged as exc:
            self._fail(local, str(exc))
        except OSError as exc:
            self._fail(local, f"cannot read: {exc.strerror or exc}")
        except Exception as exc:  # a bug or an unforeseen failure: this file fails, the run goes on
            log.debug("unexpected failure on %s", local.key, exc_info=True)
            self._fail(local, f"{type(exc).__name__}: {exc}")

    def _upload_with_retries(self, local: LocalFile, remote: RemoteObject | None, action: Action) -> None:
        """botocore retries each request; this retries the whole file when a request's answer was bad."""
        for attempt in range(1, FILE_ATTEMPTS + 1):
            try:
                self._upload(local, remote, action)
                return
            except FileChanged:
                raise
            except (UploadFailed, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                message = str(exc) if isinstance(exc, UploadFailed) else describe_client_error(exc, self.options.bucket)
                if attempt == FILE_ATTEMPTS:
                    self._fail(local, message)
                    return
                log.warning("%s: %s; trying again (%d/%d)", local.key, message, attempt + 1, FILE_ATTEMPTS)
                time.sleep(attempt)

    def _fail(self, local: LocalFile, message: str) -> None:
        log.error("%s: %s", local.key, message)
        self.summary.fail(local.key, message, local.size)

    def _check(self, decision: Decision, cached: dict[int, str]) -> Action:
        """Hash the file for the part sizes that could explain the remote ETag, then decide."""
        local, remote = decision.local, decision.remote
        assert local is not None and remote is not None
        hasher = EtagHasher(decision.etag_keys)
        with open(local.path, "rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                hasher.update(chunk)
            if hasher.bytes != local.size or not local.same_version(os.fstat(handle.fileno())):
                raise FileChanged("file changed while it was read")
        self.summary.add(bytes_hashed=hasher.bytes)
        etags = hasher.etags()
        if self.cache is not None:
            self.cache.store(local, etags)
        known = {**cached, **etags}
        candidates = etag_key(local.size, remote.etag, self.options.part_size)
        if not etag_verdict(known, remote.etag, candidates):
            return Action.UPLOAD_CHANGED
        if not self.options.dry_run:
            self._refresh_mtime(local)
        return Action.UNCHANGED

    def _refresh_mtime(self, local: LocalFile) -> None:
        """Same content, new mtime (touch, a rewrite with the same bytes, another tool's upload)."""
        try:
            new_etag = self._uploader.refresh_mtime(local)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            log.warning("%s: content unchanged; its recorded mtime could not be updated: %s",
                        local.key, describe_client_error(exc, self.options.bucket))
            return
        if new_etag and self.cache is not None:
            self.cache.store(local, {SERVER_ETAG: new_etag})  # the copy may have changed the ETag's form

    def _upload(self, local: LocalFile, remote, action: Action) -> None:
        if self.options.dry_run:
            print(f"would {action.value}: {local.key} ({local.size} bytes)", flush=True)
            self.summary.add(files_uploaded=1)
            return
        etags = self._uploader.upload(local)
        if self.cache is not None:
            self.cache.store(local, etags)
        with self._delta_lock:
            self._remote_delta[0] += 0 if remote else 1
            self._remote_delta[1] += local.size - (remote.size if remote else 0)
        self.summary.add(files_uploaded=1)
        log.info("uploaded %s (%d bytes, %s)", local.key, local.size, action.value)

    # --- before and after the march ---------------------------------------------------------
    def _pending_uploads(self) -> dict[str, list[PendingUpload]]:
        """Unfinished multipart uploads under the prefix, with what our markers say of them."""
        options = self.options
        try:
            uploads = list_pending_uploads(self.client, options.bucket, options.prefix)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            log.debug("cannot list unfinished uploads: %s", exc)
            return {}
        pending: dict[str, list[PendingUpload]] = {}
        for upload in uploads:
            key = upload["Key"][len(options.prefix):]
            if key.startswith(STATE_DIR):
                continue
            marker = None
            try:
                body = self.client.get_object(
                    Bucket=options.bucket, Key=options.prefix + UPLOAD_MARKERS + upload["UploadId"]
                )["Body"].read(4096)
                marker = json.loads(body)
            except Exception:  # no marker: not ours, or crashed before it was written
                pass
            pending.setdefault(key, []).append(PendingUpload(key, upload["UploadId"], upload["Initiated"], marker))
        return pending

    def _recycle(self, recycle_list: Path, remote_count: int) -> None:
        options, summary = self.options, self.summary
        candidates = self.recycle_due
        if not candidates:
            return
        reason = ""
        if summary.files_scanned == 0:
            reason = (f"the source is empty: refusing to recycle {candidates} object(s) "
                      "(is the volume mounted?)")
        elif summary.files_failed:
            reason = "some files failed this run: nothing is recycled until a run succeeds"
        elif not self.server_clock_known:
            reason = "the S3 server sent no Date header, so object ages cannot be told safely"
        elif candidates > options.recycle_cap.limit(remote_count):
            reason = (f"{candidates} object(s) are due for recycling, over the cap of "
                      f"{options.recycle_cap.limit(remote_count)} (--max-recycle {options.recycle_cap}): "
                      "nothing was deleted")
        if reason:
            log.error("recycling skipped: %s", reason)
            summary.recycle_blocked = reason
            self.recycle_refused = True
            return
        batch: list[tuple[str, int]] = []
        with open(recycle_list) as lines:
            for line in lines:
                key, size = json.loads(line)
                batch.append((key, size))
                if len(batch) == 1000:
                    self._delete(batch)
                    batch = []
        if batch:
            self._delete(batch)

    def _delete(self, batch: list[tuple[str, int]]) -> None:
        """Delete up to 1,000 objects in one request (one by one where the server lacks DeleteObjects)."""
        if self.options.dry_run:
            for key, size in batch:
                print(f"would recycle: {key} ({size} bytes)", flush=True)
            self.summary.add(files_recycled=len(batch), bytes_recycled=sum(size for _, size in batch))
            return
        batch = self._not_written_this_run(batch)
        failed: dict[str, str] = {}
        try:
            if batch and self._batch_delete:
                response = self.client.delete_objects(
                    Bucket=self.options.bucket,
                    Delete={"Objects": [{"Key": self.options.prefix + key} for key, _ in batch], "Quiet": True},
                )
                failed = {e["Key"][len(self.options.prefix):]: e.get("Message", e.get("Code", "")) for e in
                          response.get("Errors", [])}
        except botocore.exceptions.ClientError as exc:
            log.info("batch delete refused (%s): deleting one by one", describe_client_error(exc, self.options.bucket))
            self._batch_delete = False
        if not self._batch_delete:
            for key, _ in batch:
                try:
                    self.client.delete_object(Bucket=self.options.bucket, Key=self.options.prefix + key)
                except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                    failed[key] = describe_client_error(exc, self.options.bucket)
        for key, size in batch:
            if key in failed:
                log.error("%s: cannot recycle: %s", key, failed[key])
                self.summary.fail(key, f"cannot recycle: {failed[key]}")
                continue
            log.info("recycled %s (%d bytes)", key, size)
            self.summary.add(files_recycled=1, bytes_recycled=size)
            with self._delta_lock:
                self._remote_delta[0] -= 1
                self._remote_delta[1] -= size

    def _not_written_this_run(self, batch: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Drop candidates that were written after the run started (one HEAD each; deletions are rare).

        Some servers alias keys (SeaweedFS stores `a\\b` as `a/b`), and a concurrent run may write
        too: an object written during this run is never recycled by it.
        """
        def fresh(item: tuple[str, int]) -> bool:
            try:
                head = self.client.head_object(Bucket=self.options.bucket, Key=self.options.prefix + item[0])
            except botocore.exceptions.ClientError:
                return False  # already gone: deleting it again is harmless
            return head["LastModified"] >= self.run_started

        with ThreadPoolExecutor(self.options.concurrency) as pool:
            written = list(pool.map(fresh, batch))
        kept = [item for item, is_fresh in zip(batch, written, strict=True) if not is_fresh]
        for key, _ in (item for item, is_fresh in zip(batch, written, strict=True) if is_fresh):
            log.warning("%s: not recycled: it was written during this run (does the server alias names?)", key)
            self.summary.add(recycle_pending=1)
        return kept

    def _save_cache(self) -> None:
        assert self.cache is not None
        try:
            save_remote_cache(self.cache, self.client, self.options.bucket, self.options.prefix)
        except Exception as exc:  # the backup itself is done; the next run re-hashes
            log.warning("could not save the hash cache: %s", exc)


def run_sync(options: SyncOptions, client=None, summary: Summary | None = None) -> Summary:
    """Run one sync. Raises `UserError` for bad input; per-file failures are in the summary."""
    run = SyncRun(options, client, summary)
    summary = run.summary
    started = time.monotonic()
    try:
        run.run()
    finally:
        summary.duration_seconds = round(time.monotonic() - started, 3)
    # A refused recycle exits 1 like a failed file: the run did not do all it was asked, and must not look green.
    summary.result = "partial" if summary.files_failed or run.recycle_refused else "success"
    summary.exit_code = 1 if summary.files_failed or run.recycle_refused else 0
    return summary
