"""Status of an S3Backup from its finished Jobs and Pods, and its conditions (pure functions)."""

from __future__ import annotations

import datetime
import json
from typing import Any

from s3backup_operator.render import CONTAINER_NAME, HOOK_CONTAINER_NAME
from s3backup_operator.snapshot import SNAPSHOT_FAILED_ANNOTATION

#: lastRun.result values (the syncer's "success" / "partial" / "error", in Kubernetes' words).
SUCCEEDED, PARTIAL, FAILED = "Succeeded", "Partial", "Failed"
_RESULTS = {"success": SUCCEEDED, "partial": PARTIAL, "error": FAILED}
#: lastRun.reason of a run whose spec.hooks.before failed (the sync container never ran).
HOOK_FAILED = "HookFailed"
SNAPSHOT_FAILED = "SnapshotFailed"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_finished(job: dict[str, Any]) -> str | None:
    """"Complete" or "Failed" once the Job is over, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"]
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER_NAME:
            return (status.get("state") or {}).get("terminated")
    return None


def last_attempt(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The terminated state of the Job's latest attempt (pods with restartPolicy Never: one per attempt)."""
    finished = [state for state in map(_terminated, pods) if state]
    return max(finished, key=lambda state: state.get("finishedAt") or "", default=None)


def hook_failure(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest terminated state of a `hooks.before` init container that exited non-zero, else None."""
    failed = [(status.get("state") or {}).get("terminated") or {}
              for pod in pods for status in (pod.get("status") or {}).get("initContainerStatuses") or []
              if status.get("name") == HOOK_CONTAINER_NAME]
    failed = [state for state in failed if state.get("exitCode") not in (None, 0)]
    return max(failed, key=lambda state: state.get("finishedAt") or "", default=None)


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """The syncer's JSON summary, or None (with FallbackToLogsOnError the message may be a log tail)."""
    if not message:
        return None
    try:
        summary = json.loads(message.strip())
    except ValueError:
        return None
    return summary if isinstance(summary, dict) and "result" in summary else None


def summary_count(summary: dict[str, Any] | None, key: str) -> int:
    value = (summary or {}).get(key, 0)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def outcome_of(summary: dict[str, Any] | None, job_outcome: str) -> str:
    """A run's result: the syncer's summary when there is one (so "partial" is told apart), else the Job's
    condition ("Complete" or "Failed": the pod may have been killed before writing anything)."""
    if summary is not None:
        return _RESULTS.get(str(summary.get("result")), FAILED)
    return SUCCEEDED if job_outcome == "Complete" else FAILED


def last_run(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """status.lastRun for a finished Job, or None while it still runs.

    The result comes from the syncer's summary when there is one (so "partial" is told apart), else
    from the Job's condition (the pod may have been killed before writing anything).
    """
    outcome = job_finished(job)
    if outcome is None:
        return None
    job_status = job.get("status") or {}
    attempt = last_attempt(pods)
    summary = parse_summary((attempt or {}).get("message"))
    result = outcome_of(summary, outcome)
    completion = job_status.get("completionTime") or (attempt or {}).get("finishedAt")
    if not completion:
        conditions = [c for c in job_status.get("conditions") or [] if c.get("type") == outcome]
        completion = conditions[0].get("lastTransitionTime") if conditions else None
    run: dict[str, Any] = {
        "jobName": job["metadata"]["name"],
        "result": result,
        "startTime": job_status.get("startTime") or (attempt or {}).get("startedAt"),
        "completionTime": completion,
        "filesUploaded": summary_count(summary, "files_uploaded"),
        "bytesUploaded": summary_count(summary, "bytes_uploaded"),
        "filesRecycled": summary_count(summary, "files_recycled"),
        "filesFailed": summary_count(summary, "files_failed"),
    }
    hook = hook_failure(pods) if summary is None else None
    if hook is not None and (hook.get("finishedAt") or "") < ((attempt or {}).get("finishedAt") or ""):
        hook = None  # a later attempt got past its hook
    snapshot_error = (job["metadata"].get("annotations") or {}).get(SNAPSHOT_FAILED_ANNOTATION)
    if snapshot_error and summary is None:  # copyMethod Snapshot: no pod ever ran (snapshot.give_up_patch)
        run["reason"] = SNAPSHOT_FAILED
        run["message"] = str(snapshot_error)[:400]
    elif hook is not None:  # the sync never started; the hook's own output stays in its log (it may hold secrets)
        run["reason"] = HOOK_FAILED
        run["message"] = (f"spec.hooks.before exited with code {hook['exitCode']}; the sync did not run "
                          f"(see the logs of container {HOOK_CONTAINER_NAME})")
        attempt = hook
    elif summary is None:
        run["message"] = "no summary from the syncer (see the pod's logs)"
    elif summary.get("error"):
        run["message"] = str(summary["error"])[:300]
    if attempt is not None and attempt.get("exitCode") is not None:
        run["exitCode"] = attempt["exitCode"]
    return {key: value for key, value in run.items() if value is not None}


def status_patch_for_run(current: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The status patch for a finished run, or {} if the status already shows this run or a newer one.

    Replayed events (an operator restart lists every Job again) arrive in any order; only a newer
    completion moves the status forward, and lastSuccessfulTime never goes back.
    """
    previous = current.get("lastRun") or {}
    key = (run.get("completionTime") or "", run["jobName"])
    if previous and (previous.get("completionTime") or "", previous.get("jobName", "")) >= key:
        return {}
    patch: dict[str, Any] = {"lastRun": run}
    completion = run.get("completionTime") or ""
    if run["result"] == SUCCEEDED and completion and (current.get("lastSuccessfulTime") or "") < completion:
        patch["lastSuccessfulTime"] = completion
    return patch


def set_condition(
    current: list[dict[str, Any]] | None, kind: str, true: bool, reason: str, message: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """The conditions list with the `kind` condition set; lastTransitionTime moves only when its status flips."""
    conditions = [dict(c) for c in current or [] if c.get("type") != kind]
    old = next((c for c in current or [] if c.get("type") == kind), None)
    status = "True" if true else "False"
    transition = old["lastTransitionTime"] if old and old.get("status") == status and old.get(
        "lastTransitionTime") else now_iso()
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": transition,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return [condition, *conditions] if kind == "Ready" else [*conditions, condition]


def ready_update(status: dict[str, Any], ready: bool, reason: str, message: str, generation: int | None,
                 **fields: Any) -> dict[str, Any]:
    """The status patch that sets Ready on `status` (the live one), with observedGeneration and `fields`."""
    update = {**fields, "conditions": set_condition(status.get("conditions"), "Ready", ready, reason, message,
                                                    generation)}
    if generation is not None:
        update["observedGeneration"] = generation
    return update


#: Why a backup pod cannot start, as the kubelet and scheduler say it. It would wait forever (and, with
#: concurrencyPolicy Forbid, hold back every later run), so the operator reports it as RunBlocked=True.
BLOCKED_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "ImagePullBackOff",
                             "ErrImagePull", "InvalidImageName"})


def pod_blocked(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when the pod cannot start, else None."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in BLOCKED_REASONS:
            return waiting["reason"], str(waiting.get("message") or waiting["reason"])
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            return "Unschedulable", str(condition.get("message") or "the pod cannot be scheduled")
    return None


RUN_BLOCKED = "RunBlocked"


def run_blocked_conditions(conditions: list[dict[str, Any]], pod_name: str, blocked: tuple[str, str] | None,
                           gone: bool) -> list[dict[str, Any]] | None:
    """The conditions once this pod's state is in RunBlocked (an S3Backup's or an S3Restore's), or None when
    they already say it: True with the pod's reason while it cannot start, False again once it starts or
    is gone (only if it was this pod that blocked)."""
    current = next((c for c in conditions if c.get("type") == RUN_BLOCKED), {})
    prefix = f"pod {pod_name}: "
    if blocked is not None:
        reason, message = blocked
        if current.get("status") == "True" and current.get("message") == prefix + message:
            return None
        return set_condition(conditions, RUN_BLOCKED, True, reason, prefix + message)
    if current.get("status") == "True" and str(current.get("message", "")).startswith(prefix):
        return set_condition(conditions, RUN_BLOCKED, False, "PodGone" if gone else "PodStarted",
                             f"pod {pod_name} is no longer blocked")
    return None


def run_blocked_update(status: dict[str, Any], pod_name: str, blocked: tuple[str, str] | None,
                       gone: bool) -> dict[str, Any] | None:
    """`run_blocked_conditions` on a live status, as a status patch (None: nothing to write)."""
    new = run_blocked_conditions(status.get("conditions") or [], pod_name, blocked, gone)
    return None if new is None else {"conditions": new}


# A fan-out (source.hostPath): one entry per target under status.targets, and the resource's own view of them.

def targets_patch(current: dict[str, Any] | None, cronjobs: dict[str, str]) -> dict[str, Any]:
    """status.targets as a merge patch: each current target with its CronJob, the targets gone removed."""
    patch: dict[str, Any] = {key: None for key in current or {} if key not in cronjobs}
    patch.update({key: {"cronJobName": name} for key, name in cronjobs.items()})
    return patch


def status_patch_for_target_run(current: dict[str, Any], target: str, run: dict[str, Any]) -> dict[str, Any]:
    """The status patch for a finished run of one target, or {} if that target already shows it or a newer one.

    The target's entry moves as `status_patch_for_run` moves a single backup's status. `lastRun` is the newest
    run of any target; `lastSuccessfulTime` the oldest of the targets' last successes (the backup is only as
    fresh as its stalest node), set once every target has one.
    """
    targets = dict(current.get("targets") or {})
    entry = status_patch_for_run(targets.get(target) or {}, run)
    if not entry:
        return {}
    targets[target] = {**(targets.get(target) or {}), **entry}
    patch: dict[str, Any] = {"targets": {target: entry}}
    previous = current.get("lastRun") or {}
    if (run.get("completionTime") or "", run["jobName"]) > (previous.get("completionTime") or "",
                                                           previous.get("jobName", "")):
        patch["lastRun"] = run
    successes = [(value or {}).get("lastSuccessfulTime") for value in targets.values()]
    if successes and all(successes):
        oldest = min(successes)
        if oldest != current.get("lastSuccessfulTime"):
            patch["lastSuccessfulTime"] = oldest
    return patch
