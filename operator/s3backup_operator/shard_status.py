"""status.lastRun of a sharded run: its N shards and its final recycle step, as one run (pure).

Counts are summed over the shards (each shard's latest attempt), the worst result wins (Failed over
Partial over Succeeded, the recycle step's included), the shards that did not succeed are named in
`failedShards`, and `filesRecycled` comes from the recycle step, the only one that deletes.
"""

from __future__ import annotations

from typing import Any

from s3backup_operator.sharding import COMPLETION_INDEX_LABEL, completed_indexes, shard_count
from s3backup_operator.status import (
    FAILED,
    PARTIAL,
    SUCCEEDED,
    job_finished,
    last_attempt,
    outcome_of,
    parse_summary,
    summary_count,
)

SKIPPED = "Skipped"
_RANK = {SUCCEEDED: 0, PARTIAL: 1, FAILED: 2}
_COUNTS = (("filesUploaded", "files_uploaded"), ("bytesUploaded", "bytes_uploaded"), ("filesFailed", "files_failed"))


def recycle_due(job: dict[str, Any]) -> bool:
    """A sharded run's Job that completed with every index succeeded: its final step is due."""
    count = shard_count(job)
    return count > 1 and job_finished(job) == "Complete" and completed_indexes(job) >= set(range(count))


def pods_by_index(pods: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """The pods (attempts) of an Indexed Job by completion index (the label the Job controller sets)."""
    shards: dict[int, list[dict[str, Any]]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        index = (meta.get("labels") or {}).get(COMPLETION_INDEX_LABEL) or (meta.get("annotations") or {}).get(
            COMPLETION_INDEX_LABEL)
        if index is not None and str(index).isdigit():
            shards.setdefault(int(index), []).append(pod)
    return shards


def _worst(results: list[str]) -> str:
    return max(results, key=lambda result: _RANK.get(result, 2), default=SUCCEEDED)


def sharded_last_run(job: dict[str, Any], pods: list[dict[str, Any]], recycle_job: dict[str, Any] | None = None,
                     recycle_pods: list[dict[str, Any]] | None = None,
                     recycle_skipped: str = "") -> dict[str, Any] | None:
    """status.lastRun for a finished sharded run, or None while it still runs (its shards or its final step).

    `recycle_job` is the final step (None when it was not made: a shard failed, or `recycle_skipped` says why).
    """
    outcome = job_finished(job)
    if outcome is None or (recycle_job is not None and job_finished(recycle_job) is None):
        return None
    count = shard_count(job)
    done = completed_indexes(job)
    attempts = pods_by_index(pods)
    results: dict[int, str] = {}
    summaries: dict[int, dict[str, Any] | None] = {}
    messages: list[str] = []
    exit_codes: list[int] = []
    for index in range(count):
        attempt = last_attempt(attempts.get(index, []))
        summary = parse_summary((attempt or {}).get("message"))
        summaries[index] = summary
        result = outcome_of(summary, "Complete" if index in done else "Failed")
        if index not in done and result == SUCCEEDED:  # the Job's word wins: e.g. killed after its summary
            result = FAILED
        results[index] = result
        if attempt is not None and attempt.get("exitCode") is not None:
            exit_codes.append(int(attempt["exitCode"]))
        if result != SUCCEEDED:
            why = str((summary or {}).get("error") or "") or (
                "no summary from the syncer (see the pod's logs)" if summary is None else result.lower())
            messages.append(f"shard {index}: {why}")
    failed = sorted(index for index, result in results.items() if result != SUCCEEDED)
    status = job.get("status") or {}
    run: dict[str, Any] = {
        "jobName": job["metadata"]["name"],
        "startTime": status.get("startTime"),
        "completionTime": status.get("completionTime") or _condition_time(job, outcome),
        **{field: sum(summary_count(summary, key) for summary in summaries.values()) for field, key in _COUNTS},
        "filesRecycled": 0,
        "shards": count,
        "failedShards": failed,
    }
    overall = [*results.values()]
    if recycle_job is None:
        run["recycleResult"] = SKIPPED
        if not failed and recycle_skipped:
            messages.append(f"recycle step not run: {recycle_skipped}")
            overall.append(PARTIAL)
    else:
        run.update(_recycle_outcome(recycle_job, recycle_pods or [], messages, exit_codes))
        overall.append(run["recycleResult"])
        run["completionTime"] = (recycle_job.get("status") or {}).get("completionTime") or _condition_time(
            recycle_job, job_finished(recycle_job) or "") or run["completionTime"]
    run["result"] = _worst(overall)
    if exit_codes:
        run["exitCode"] = max(exit_codes)
    if messages:
        run["message"] = "; ".join(messages)[:300]
    return {key: value for key, value in run.items() if value is not None}


def _recycle_outcome(recycle_job: dict[str, Any], pods: list[dict[str, Any]], messages: list[str],
                     exit_codes: list[int]) -> dict[str, Any]:
    attempt = last_attempt(pods)
    summary = parse_summary((attempt or {}).get("message"))
    result = outcome_of(summary, job_finished(recycle_job) or "Failed")
    if attempt is not None and attempt.get("exitCode") is not None:
        exit_codes.append(int(attempt["exitCode"]))
    why = str((summary or {}).get("recycle_blocked") or (summary or {}).get("error") or "")
    if result != SUCCEEDED:
        messages.append(f"recycle: {why or 'no summary from the recycle step (see its logs)'}")
    return {
        "recycleJobName": recycle_job["metadata"]["name"],
        "recycleResult": result,
        "filesRecycled": summary_count(summary, "files_recycled"),
    }


def _condition_time(job: dict[str, Any], kind: str) -> str | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition.get("lastTransitionTime")
    return None
