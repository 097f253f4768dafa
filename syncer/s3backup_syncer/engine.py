"""One sync run, as a script: check the inputs, march, check and upload, recycle, clean up.

    walk (scan.py) ─┐
                    ├─ merge_join + decide (plan.py, pure) ─ workers: hash / upload (filework.py)
    list (remote.py)┘                                     └─ recycle candidates (recycle.py, on disk)

The whole listing is read before the first upload starts (it is put in key order on disk first),
so every listed object predates this run's writes: the recycle guard relies on that.
Recycling runs last, and only if the run had no error, the source was not empty, and the
number of deletions stays under the cap (plan.recycle_refusal).

A shard of N > 1 (`--shard I/N`, shards.py) handles its own keys only, keeps its own state, and
never deletes: it leaves its outcome and its recycle candidates under `.s3backup/runs/RUN_ID/`
for the final step (shard_runs.finalize_recycle), which deletes only once all N succeeded.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import botocore.exceptions

from .attributes_state import ATTRIBUTES_NAME, AttributeState, load_attribute_state, save_attribute_state
from .config import SyncOptions
from .errors import ConfigError
from .filework import FileWorker
from .filters import Filters
from .hashcache import CACHE_NAME, HashCache, load_remote_cache, save_remote_cache
from .plan import Action, RecycleConditions, decide_present, decide_remote_only, merge_join, recycle_refusal
from .recycle import RecycleCandidates, Recycler
from .remote import (
    STATE_DIR,
    RemoteListing,
    RemoteObject,
    make_run_client,
    run_error,
)
from .report import Summary
from .scan import LocalFile, ScanProblem, walk
from .shard_runs import clear_shard_result, drop_run_results, write_shard_result
from .shards import ShardResult
from .state_layout import StateObject, drop_other_layouts, list_state_objects, seed_states
from .transfer import Uploader
from .upload_markers import UploadMarkers

log = logging.getLogger("s3backup")


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


def _listed_whole(objects: Iterator[RemoteObject]) -> Iterator[RemoteObject]:
    """Start the listing, which is read whole before its first object comes out, before any upload:
    the recycle guard relies on every listed object predating this run's first write."""
    first = next(objects, None)
    return iter(()) if first is None else itertools.chain([first], objects)


class SyncRun:
    """The script of one run; the work is done by the walk, the listing, the workers and the recycler."""

    def __init__(self, options: SyncOptions, client=None, summary: Summary | None = None):
        self.options = options
        self.summary = summary or Summary(dry_run=options.dry_run)
        self.client = client or make_run_client(options)
        self.filters = Filters(tuple(options.includes), tuple(options.excludes), options.include_lost_found)
        self.cache: HashCache | None = None
        self.attributes: AttributeState | None = None
        self.recycle_refused = False  # a guard stopped due deletions: the run must not look green
        self.run_started = datetime.now(UTC)  # replaced by the server's clock once it answers
        self.server_clock_known = False
        self._keys_with_leftovers: set[str] = set()  # source files with an unfinished upload from before
        self._remote_delta = [0, 0]  # objects, bytes added under the prefix by this run
        self._delta_lock = threading.Lock()
        self.shard = options.shard
        self._foreign_files = 0  # files of other shards seen by the walk (never stat-ed)
        self._state_objects: list[StateObject] | None = None  # s3backup's state objects, at the start

    # --- the script --------------------------------------------------------------------------
    def run(self) -> Summary:
        options, summary = self.options, self.summary
        if not self.shard.whole and not options.dry_run:
            self._clear_earlier_result()
        check_source(options.source)
        listing = RemoteListing(self.client, options.bucket, options.prefix, parallel=options.concurrency,
                                owns=None if self.shard.whole else self.shard.owns)
        try:
            first_page = listing.first_page()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise run_error(exc, options.bucket) from None
        # Ages and "written during this run" are judged by the server's clock, never ours.
        self.server_clock_known = listing.server_now is not None
        self.run_started = listing.server_now or datetime.now(UTC)
        with tempfile.TemporaryDirectory(prefix="s3backup-") as workdir:
            self._load_state(Path(workdir))
            markers = UploadMarkers(self.client, options.bucket, options.prefix,
                                    markers_dir=self.shard.state_dir + "uploads/", owns=self.shard.owns)
            markers.load()
            uploader = Uploader(self.client, options, summary, markers)
            worker = FileWorker(options, summary, uploader, cache=self.cache, attributes=self.attributes,
                                on_uploaded=self._count_upload)
            candidates = RecycleCandidates(Path(workdir) / "recycle.jsonl")
            try:
                remote = _listed_whole(listing.in_key_order(first_page, Path(workdir) / "remote-index.sqlite"))
                self._march(remote, markers, worker, candidates)
            finally:
                candidates.close()
                uploader.close()
            own_count, own_bytes = listing.count, listing.bytes  # this shard's keys only, if sharded
            if summary.files_scanned + self._foreign_files == 0 and listing.any_listed:
                held = f"holds {listing.count} object(s)" if self.shard.whole else "is not empty"
                log.warning("the source %s is empty, but the prefix %s: is the volume mounted? "
                            "Nothing is deleted from an empty source.", options.source, held)
            # This run's writes all came after the listing, so none is older than its last page.
            own_writes_from = (listing.listed_until or self.run_started) if uploader.objects_written else None
            if self.shard.whole:
                self._recycle(candidates, own_count, own_writes_from)
            if not options.dry_run:
                aborted = markers.abort_leftovers(self.run_started, self._keys_with_leftovers)
                if aborted:
                    log.info("aborted %d unfinished upload(s) left by earlier runs", aborted)
                markers.drop_stale()
                state_saved = self._save_state()
                if not self.shard.whole:
                    self._report_to_final_step(candidates, own_count, own_writes_from, state_saved)
                elif state_saved and not summary.files_failed and self._state_objects:
                    # An unsharded run that went whole supersedes the state of any earlier N.
                    drop_other_layouts(self.client, options.bucket, options.prefix, 1, self._state_objects)
        summary.remote_objects = own_count + self._remote_delta[0]
        summary.remote_bytes = own_bytes + self._remote_delta[1]
        return summary

    def _clear_earlier_result(self) -> None:
        """First of all, a shard removes what an earlier attempt under the same run id reported: whatever
        ends this attempt, the final step must never take that for this attempt's outcome."""
        options = self.options
        assert options.run_id is not None  # SyncOptions requires it for a shard
        try:
            clear_shard_result(self.client, options.bucket, options.prefix, options.run_id, self.shard.index,
                               self.shard.count)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise run_error(exc, options.bucket) from None

    def _report_to_final_step(self, candidates: RecycleCandidates, own_count: int,
                              own_writes_from: datetime | None, state_saved: bool) -> None:
        """Leave this shard's outcome and recycle candidates for the final step (`s3backup recycle`)."""
        summary = self.summary
        result = ShardResult(
            index=self.shard.index, count=self.shard.count,
            result="partial" if summary.files_failed else "success",
            files_scanned=summary.files_scanned, files_failed=summary.files_failed,
            tree_entries=summary.files_scanned + self._foreign_files, remote_objects=own_count,
            candidates=candidates.count, server_clock_known=self.server_clock_known,
            own_writes_from=own_writes_from.timestamp() if own_writes_from else None,
            state_saved=state_saved,
        )
        assert self.options.run_id is not None  # SyncOptions requires it for a shard
        write_shard_result(self.client, self.options.bucket, self.options.prefix, self.options.run_id, result,
                           candidates.path)
        if self.shard.index == 0:
            drop_run_results(self.client, self.options.bucket, self.options.prefix)  # those of forgotten runs
        if candidates.count:
            log.info("%d object(s) due for recycling, left to the final step of run %s",
                     candidates.count, self.options.run_id)

    def _march(self, remote_objects: Iterator[RemoteObject], markers: UploadMarkers, worker: FileWorker,
               candidates: RecycleCandidates) -> None:
        options = self.options
        in_flight = threading.BoundedSemaphore(options.concurrency * 4)
        with ThreadPoolExecutor(options.concurrency, thread_name_prefix="s3backup-file") as workers:
            for local, remote in merge_join(self._local_files(), remote_objects):
                if self.attributes is not None:
                    self.attributes.write_queued(at_least=1000)  # what the workers recorded, bounded in memory
                if local is None:
                    decision = decide_remote_only(
                        remote,
                        recycle_after_seconds=options.recycle_after_seconds,
                        in_scope=self.filters.in_scope(remote.key),
                        server_now=self.run_started,
                    )
                    if decision.action is Action.RECYCLE:
                        candidates.add(remote)
                    elif decision.action is Action.KEEP_YOUNG:
                        self.summary.add(recycle_pending=1)
                    continue
                if markers.has_leftovers(local.key):
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
                future = workers.submit(worker.process, decision, cached or {})
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
            owns=None if self.shard.whole else self.shard.owns,
            on_foreign=self._count_foreign,
        ):
            if isinstance(item, ScanProblem):
                if not item.is_directory and not self.shard.owns(item.key):
                    continue  # another shard's file: reported there (a directory's problem, by every shard)
                log.error("%s: %s", item.key, item.message)
                self.summary.fail(item.key, item.message)
                continue
            if item.key.startswith(STATE_DIR):
                self.summary.fail(item.key, f"{STATE_DIR} at the top of the source is reserved for s3backup")
                continue
            self.summary.add(files_scanned=1, bytes_scanned=item.size)
            yield item

    def _count_foreign(self) -> None:
        self._foreign_files += 1

    def _count_upload(self, local: LocalFile, remote: RemoteObject | None) -> None:
        with self._delta_lock:
            self._remote_delta[0] += 0 if remote else 1
            self._remote_delta[1] += local.size - (remote.size if remote else 0)

    def _count_deletion(self, key: str, size: int) -> None:
        with self._delta_lock:
            self._remote_delta[0] -= 1
            self._remote_delta[1] -= size
        if self.attributes is not None:
            self.attributes.forget(key)

    # --- recycling ------------------------------------------------------------------------------
    def _recycle(self, candidates: RecycleCandidates, remote_count: int, own_writes_from: datetime | None) -> None:
        options, summary = self.options, self.summary
        reason = recycle_refusal(RecycleConditions(
            candidates=candidates.count,
            files_scanned=summary.files_scanned,
            files_failed=summary.files_failed,
            server_clock_known=self.server_clock_known,
            cap=options.recycle_cap.limit(remote_count),
            cap_setting=str(options.recycle_cap),
        ))
        if reason is not None:
            log.error("recycling skipped: %s", reason)
        elif candidates.count:
            recycler = Recycler(self.client, options.bucket, options.prefix, summary=summary,
                                concurrency=options.concurrency, dry_run=options.dry_run,
                                on_deleted=self._count_deletion)
            recycler.recycle(candidates, own_writes_from)
            reason = recycler.blocked or None  # each such object was logged and kept
        if reason:
            summary.recycle_blocked = reason
            self.recycle_refused = True

    # --- s3backup's own state ---------------------------------------------------------------------
    def _load_state(self, workdir: Path) -> None:
        """The hash cache and the recorded attributes.

        A cache hit skips a file without looking at it, so the attributes recorded when it was last
        checked must still be there: if they cannot be read, the cache is not trusted either.
        """
        options = self.options
        seeded = self._seed_state(workdir)
        attributes_lost = seeded is None
        seeded_attributes, seeded_cache = seeded or (None, None)
        if not options.dry_run:
            if seeded_attributes is not None:
                self.attributes = seeded_attributes
            else:
                self.attributes, warning = load_attribute_state(self.client, options.bucket, options.prefix,
                                                                workdir, self.shard.state_dir + ATTRIBUTES_NAME)
                if warning:
                    log.warning(warning)
                    attributes_lost = True
        if options.hash_cache and options.compare == "md5":
            if attributes_lost:
                self.cache = HashCache(workdir / "hash-cache-afresh.sqlite")
                return
            if seeded_cache is not None:
                self.cache = seeded_cache
                return
            self.cache, warning = load_remote_cache(self.client, options.bucket, options.prefix, workdir,
                                                    self.shard.state_dir + CACHE_NAME)
            if warning:
                log.warning(warning)

    def _seed_state(self, workdir: Path) -> tuple[AttributeState | None, HashCache | None] | None:
        """This shard's state built from an earlier N's, on its first run (state_layout.py); None if that failed.

        The state objects listed here are also those an unsharded run drops at its end."""
        options = self.options
        try:
            self._state_objects = list_state_objects(self.client, options.bucket, options.prefix)
            seeded = seed_states(self.client, options.bucket, options.prefix, self._state_objects,
                                 self.shard.state_dir, self.shard.count, self.shard.owns, workdir)
            attributes = AttributeState(seeded[ATTRIBUTES_NAME]) if ATTRIBUTES_NAME in seeded else None
            cache = HashCache(seeded[CACHE_NAME]) if CACHE_NAME in seeded else None
            for state in (attributes, cache):
                if state is not None:
                    state.changed = True  # saved as this shard's own, even if nothing else changes
            return attributes, cache
        except Exception as exc:  # this shard starts afresh: files are read once, attributes recorded again
            log.warning("could not build this shard's state from an earlier shard layout's, starting afresh: %s",
                        exc)
            self._state_objects = None
            return None

    def _save_state(self) -> bool:
        """Save the recorded attributes, then the hash cache: a cache never vouches for files whose
        attributes were not saved (the next run checks them again). The backup is done either way.
        Returns whether both were saved (or had nothing to save)."""
        if self.attributes is not None:
            try:
                save_attribute_state(self.attributes, self.client, self.options.bucket, self.options.prefix,
                                     self.shard.state_dir + ATTRIBUTES_NAME)
            except Exception as exc:
                log.warning("could not save the recorded file attributes (the next run records them again): %s",
                            exc)
                return False
        if self.cache is not None:
            try:
                save_remote_cache(self.cache, self.client, self.options.bucket, self.options.prefix,
                                  self.shard.state_dir + CACHE_NAME)
            except Exception as exc:  # the next run re-hashes
                log.warning("could not save the hash cache: %s", exc)
                return False
        return True


def run_sync(options: SyncOptions, client=None, summary: Summary | None = None) -> Summary:
    """Run one sync. Raises `UserError` for bad input; per-file failures are in the summary."""
    run = SyncRun(options, client, summary)
    summary = run.summary
    # A refused recycle exits 1 like a failed file: the run did not do all it was asked, and must not look green.
    summary.run_timed(run.run, lambda: bool(summary.files_failed or run.recycle_refused))
    return summary
