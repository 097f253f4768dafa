"""A sharded run's results, and its final step: the one place where a sharded run deletes data.

Each shard of N > 1 ends by writing `PREFIX/.s3backup/runs/RUN_ID/shard-I-of-N.json` (its
outcome) and, if it has any, `shard-I-of-N.candidates.jsonl.gz` (its objects due for recycling,
as listed). It deletes nothing itself. The final step, `s3backup recycle s3://B/P --run-id RUN_ID
--shards N`, reads the N results and deletes only when every shard of the run succeeded, with the
whole-prefix guards over the sums (an empty source refuses, `--max-recycle` caps the total),
each object after a HEAD shows it is still as listed (recycle.Recycler). It then removes the run's
result objects; when results are missing it keeps them, so that it can be run again. Results
older than a week are dropped by any final step and by shard 0 of every run, so runs without a
final step do not pile up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore.exceptions

from .config import RecycleCap
from .plan import RecycleConditions, recycle_refusal
from .recycle import RecycleCandidates, Recycler
from .remote import RemoteObject, run_error
from .report import Summary
from .shards import RUNS_DIR, ShardResult, result_name, run_dir, shard_run_refusal
from .state_layout import drop_other_layouts
from .state_objects import fetch_state, store_state

log = logging.getLogger("s3backup")

#: Results no final step read (no recycling asked, or a failed run) are dropped after this long.
STALE_RUN_SECONDS = 7 * 86400


def _put(client, bucket: str, key: str, body: bytes) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=body,
                      ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode())


def _candidates_key(prefix: str, run_id: str, index: int, count: int) -> str:
    return prefix + run_dir(run_id) + result_name(index, count).removesuffix(".json") + ".candidates.jsonl.gz"


def clear_shard_result(client, bucket: str, prefix: str, run_id: str, index: int, count: int) -> None:
    """At a shard's start: no result of an earlier attempt under this run id may outlive a crash of this one
    (the final step would take its candidates for this run's). Raises if that cannot be done."""
    for key in (prefix + run_dir(run_id) + result_name(index, count), _candidates_key(prefix, run_id, index, count)):
        client.delete_object(Bucket=bucket, Key=key)


def write_shard_result(client, bucket: str, prefix: str, run_id: str, result: ShardResult,
                       candidates_path: Path) -> None:
    """The candidates first, then the result that vouches for them."""
    if result.candidates:
        store_state(client, bucket, _candidates_key(prefix, run_id, result.index, result.count), candidates_path)
    body = json.dumps(asdict(result), sort_keys=True).encode()
    _put(client, bucket, prefix + run_dir(run_id) + result_name(result.index, result.count), body)


def read_shard_results(client, bucket: str, prefix: str, run_id: str, count: int) -> dict[int, ShardResult]:
    """The results present for this run and N (missing shards are absent from the answer)."""
    results: dict[int, ShardResult] = {}
    for index in range(count):
        try:
            body = client.get_object(Bucket=bucket, Key=prefix + run_dir(run_id) + result_name(index, count))
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                continue
            raise
        results[index] = ShardResult.from_dict(json.loads(body["Body"].read()))
    return results


def drop_run_results(client, bucket: str, prefix: str, run_id: str | None = None,
                     older_than_seconds: float = STALE_RUN_SECONDS) -> None:
    """Delete the results of run `run_id`, and of any run written more than `older_than_seconds` ago
    (runs no final step read). Housekeeping: a leftover result costs bytes, never safety."""
    stale_before = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
    mine = prefix + run_dir(run_id) if run_id else None
    try:
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + RUNS_DIR):
            keys += [item["Key"] for item in page.get("Contents", [])
                     if (mine and item["Key"].startswith(mine)) or item["LastModified"] < stale_before]
        for key in keys:
            client.delete_object(Bucket=bucket, Key=key)
    except Exception as exc:
        log.debug("could not tidy the results of sharded runs: %s", exc)


def finalize_recycle(client, bucket: str, prefix: str, *, run_id: str, count: int, cap: RecycleCap,
                     concurrency: int = 8, dry_run: bool = False, summary: Summary | None = None) -> Summary:
    """The final step of a sharded run: recycle every shard's candidates, or nothing (see the module doc).

    `summary.recycle_blocked` says why nothing was deleted (the caller's `run_timed` makes the run partial then).
    """
    summary = summary or Summary(dry_run=dry_run)
    try:
        results = read_shard_results(client, bucket, prefix, run_id, count)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise run_error(exc, bucket) from None
    reason = shard_run_refusal(results, count)
    shards_complete = len(results) == count
    if reason is None and not dry_run and all(r.state_saved for r in results.values()):
        drop_other_layouts(client, bucket, prefix, count)  # every shard of this N has its own state now
    if reason is None:
        listed = sum(r.remote_objects for r in results.values())
        reason = recycle_refusal(RecycleConditions(
            candidates=sum(r.candidates for r in results.values()),
            files_scanned=sum(r.files_scanned for r in results.values()),
            files_failed=0,
            server_clock_known=all(r.server_clock_known for r in results.values()),
            cap=cap.limit(listed),
            cap_setting=str(cap),
        ))
    summary.files_scanned = sum(r.files_scanned for r in results.values())
    summary.remote_objects = sum(r.remote_objects for r in results.values())
    if reason is None:
        reason = _recycle_all(client, bucket, prefix, run_id, results, concurrency, dry_run, summary)
    if reason:
        log.error("recycling skipped: %s", reason)
        summary.recycle_blocked = reason
    summary.remote_objects -= summary.files_recycled
    if shards_complete and not dry_run:
        drop_run_results(client, bucket, prefix, run_id)
    return summary


def _recycle_all(client, bucket: str, prefix: str, run_id: str, results: dict[int, ShardResult],
                 concurrency: int, dry_run: bool, summary: Summary) -> str:
    """Delete every shard's candidates (each after its HEAD); returns why some were kept, or ""."""
    writes = [r.own_writes_from for r in results.values() if r.own_writes_from is not None]
    # The shards listed and wrote at overlapping times: any of their writes may show up in another's listing.
    own_writes_from = datetime.fromtimestamp(min(writes), UTC) if writes else None
    with tempfile.TemporaryDirectory(prefix="s3backup-recycle-") as workdir:
        candidates = RecycleCandidates(Path(workdir) / "candidates.jsonl")
        try:
            for result in results.values():
                if result.candidates and _gather(client, bucket, prefix, run_id, result, candidates, workdir) \
                        != result.candidates:
                    return f"the candidates of shard {result.index} do not match its result: nothing was deleted"
        except (OSError, ValueError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            return f"cannot read the recycle candidates: {exc}"
        finally:
            candidates.close()
        recycler = Recycler(client, bucket, prefix, summary=summary, concurrency=concurrency, dry_run=dry_run,
                            on_deleted=lambda key, size: None)
        recycler.recycle(candidates, own_writes_from)
        return recycler.blocked


def _gather(client, bucket: str, prefix: str, run_id: str, result: ShardResult, candidates: RecycleCandidates,
            workdir: str) -> int:
    """Add one shard's candidates to `candidates`; returns how many there were."""
    unpacked = Path(workdir) / f"shard-{result.index}.jsonl"
    if not fetch_state(client, bucket, _candidates_key(prefix, run_id, result.index, result.count), unpacked):
        raise FileNotFoundError(f"shard {result.index}'s recycle candidates are missing")
    found = 0
    with open(unpacked) as lines:
        for line in lines:
            key, size, etag, modified = json.loads(line)
            candidates.add(RemoteObject(key, size, etag, datetime.fromtimestamp(modified, UTC)))
            found += 1
    unpacked.unlink()
    return found
