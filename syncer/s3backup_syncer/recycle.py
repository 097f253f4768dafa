"""Deletion I/O: the recycle candidates (spilled to disk), the HEAD before each deletion, the deletes.

Whether recycling may happen at all, and whether one object may go once its HEAD is known, are
decided in plan.py (`recycle_refusal`, `check_before_recycle`); this module only asks and acts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import botocore.exceptions

from .plan import HeadAnswer, RecycleCheck, check_before_recycle
from .remote import RemoteObject, describe_client_error
from .report import Summary

log = logging.getLogger("s3backup")

BATCH = 1000  # DeleteObjects takes at most 1,000 keys


class RecycleCandidates:
    """Remote-only objects old enough to recycle, as listed, in a file (never all in memory)."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._out = open(path, "w")  # noqa: SIM115 - closed in close()

    def add(self, remote: RemoteObject) -> None:
        self._out.write(json.dumps([remote.key, remote.size, remote.etag, remote.last_modified.timestamp()]) + "\n")
        self.count += 1

    def close(self) -> None:
        self._out.close()

    def batches(self) -> Iterator[list[RemoteObject]]:
        self.close()
        batch: list[RemoteObject] = []
        with open(self.path) as lines:
            for line in lines:
                key, size, etag, modified = json.loads(line)
                batch.append(RemoteObject(key, size, etag, datetime.fromtimestamp(modified, UTC)))
                if len(batch) == BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch


class Recycler:
    """Deletes recycle candidates from `bucket/prefix`, each after a HEAD shows it is still as listed."""

    def __init__(self, client, bucket: str, prefix: str, *, summary: Summary, concurrency: int, dry_run: bool,
                 on_deleted: Callable[[str, int], None]):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.summary = summary
        self.concurrency = concurrency
        self.dry_run = dry_run
        self.on_deleted = on_deleted
        self.blocked = ""  # why some objects could not be judged (and were kept); "" if none
        self._batch_delete = True  # DeleteObjects, until the server refuses it

    def recycle(self, candidates: RecycleCandidates, own_writes_from: datetime | None) -> None:
        """`own_writes_from`: the server's time before this run's first write; None if it wrote nothing."""
        for batch in candidates.batches():
            if self.dry_run:
                for remote in batch:
                    print(f"would recycle: {remote.key} ({remote.size} bytes)", flush=True)
                self.summary.add(files_recycled=len(batch), bytes_recycled=sum(r.size for r in batch))
                continue
            self._delete(self._still_as_listed(batch, own_writes_from))

    # --- the HEAD before the deletion ------------------------------------------------------------
    def _head(self, remote: RemoteObject) -> tuple[HeadAnswer, str]:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + remote.key)
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return HeadAnswer(status), describe_client_error(exc, self.bucket)
        except botocore.exceptions.BotoCoreError as exc:
            return HeadAnswer(0), describe_client_error(exc, self.bucket)
        return HeadAnswer(200, head.get("ETag", ""), head.get("LastModified")), ""

    def _still_as_listed(self, batch: list[RemoteObject], own_writes_from: datetime | None) -> list[RemoteObject]:
        """The candidates that may go (one HEAD each; deletions are rare). The others are kept."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            heads = list(pool.map(self._head, batch))
        doomed = []
        for remote, (head, problem) in zip(batch, heads, strict=True):
            verdict = check_before_recycle(remote, head, own_writes_from)
            if verdict in (RecycleCheck.DELETE, RecycleCheck.GONE):
                doomed.append(remote)
            elif verdict is RecycleCheck.REWRITTEN:
                log.warning("%s: not recycled: it was written during this run (does the server alias names?)",
                            remote.key)
                self.summary.add(recycle_pending=1)
            else:
                log.error("%s: not recycled: cannot tell whether it changed since it was listed: %s",
                          remote.key, problem)
                self.summary.add(recycle_pending=1)
                self.blocked = f"cannot check {remote.key!r} before deleting it ({problem}): it was kept"
        return doomed

    # --- the deletions ---------------------------------------------------------------------------
    def _delete(self, batch: list[RemoteObject]) -> None:
        """Delete up to 1,000 objects in one request (one by one where the server lacks DeleteObjects)."""
        failed: dict[str, str] = {}
        try:
            if batch and self._batch_delete:
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.prefix + r.key} for r in batch], "Quiet": True},
                )
                failed = {e["Key"][len(self.prefix):]: e.get("Message", e.get("Code", ""))
                          for e in response.get("Errors", [])}
        except botocore.exceptions.ClientError as exc:
            log.info("batch delete refused (%s): deleting one by one", describe_client_error(exc, self.bucket))
            self._batch_delete = False
        if not self._batch_delete:
            for remote in batch:
                try:
                    self.client.delete_object(Bucket=self.bucket, Key=self.prefix + remote.key)
                except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                    failed[remote.key] = describe_client_error(exc, self.bucket)
        for remote in batch:
            if remote.key in failed:
                log.error("%s: cannot recycle: %s", remote.key, failed[remote.key])
                self.summary.fail(remote.key, f"cannot recycle: {failed[remote.key]}")
                continue
            log.info("recycled %s (%d bytes)", remote.key, remote.size)
            self.summary.add(files_recycled=1, bytes_recycled=remote.size)
            self.on_deleted(remote.key, remote.size)
