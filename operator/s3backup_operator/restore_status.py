"""Status of an S3Restore from its Job and the Job's pods (pure): phase, counts, times, condition.

The counts come from the syncer's JSON summary, which the restore pod writes as its termination message.
"""

from __future__ import annotations

from typing import Any

from s3backup_operator.spec import destination_url
from s3backup_operator.status import job_finished, last_attempt, parse_summary, set_condition, summary_count

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
FINISHED_PHASES = (SUCCEEDED, FAILED)
#: The syncer's result -> status.result (the phase is Succeeded only for a full success).
RESULTS = {"success": "Succeeded", "partial": "Partial", "error": "Failed"}
#: status field -> summary key
COUNTS = {"filesRestored": "files_restored", "bytesRestored": "bytes_restored",
          "filesUnchanged": "files_unchanged", "filesConflicting": "files_conflicting",
          "filesFailed": "files_failed"}
RESTORED = "Restored"  # the condition that tells how the restore ended


def restore_progress(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The status fields for the Job as it is now: phase, times and, once it is over, result and counts."""
    job_status = job.get("status") or {}
    fields: dict[str, Any] = {"jobName": job["metadata"]["name"]}
    if job_status.get("startTime"):
        fields["startTime"] = job_status["startTime"]
    outcome = job_finished(job)
    if outcome is None:
        started = job_status.get("active") or job_status.get("startTime") or job_status.get("failed")
        fields["phase"] = RUNNING if started else PENDING
        return fields
    attempt = last_attempt(pods)
    summary = parse_summary((attempt or {}).get("message"))
    if summary is not None:
        result = RESULTS.get(str(summary.get("result")), "Failed")
    else:
        result = "Succeeded" if outcome == "Complete" else "Failed"
    fields["phase"] = SUCCEEDED if result == "Succeeded" else FAILED
    fields["result"] = result
    completion = job_status.get("completionTime") or (attempt or {}).get("finishedAt")
    if not completion:
        conditions = [c for c in job_status.get("conditions") or [] if c.get("type") == outcome]
        completion = conditions[0].get("lastTransitionTime") if conditions else None
    if completion:
        fields["completionTime"] = completion
    fields.update({name: summary_count(summary, key) for name, key in COUNTS.items()})
    if summary is None:
        fields["message"] = "no summary from the restore (see the pod's logs)"
    elif summary.get("error"):
        fields["message"] = str(summary["error"])[:300]
    elif summary.get("errors"):
        fields["message"] = str(summary["errors"][0])[:300]
    if summary is not None and summary.get("as_of"):
        fields["restoredAsOf"] = str(summary["as_of"])
    if attempt is not None and attempt.get("exitCode") is not None:
        fields["exitCode"] = attempt["exitCode"]
    return fields


def ready_message(restore: dict[str, Any], job_name: str) -> str:
    """The Ready condition's message once the Job is made (the same from the reconcile and the Job's events)."""
    spec = restore.get("spec") or {}
    ref = (spec.get("backupRef") or {}).get("name")
    source = spec.get("source") or {}
    what = f"S3Backup {ref}" if ref else destination_url(str(source.get("bucket") or ""),
                                                          str(source.get("prefix") or ""))
    claim = ((spec.get("target") or {}).get("persistentVolumeClaim") or {}).get("claimName", "")
    return f"Job {job_name} restores {what} into PVC {claim}"


def restore_status_patch(current: dict[str, Any], progress: dict[str, Any], ready: str) -> dict[str, Any]:
    """The status patch that moves `current` to `progress`, or {} if there is nothing new.

    A finished phase is final: replayed or late events of the Job never move it back, nor change its counts.
    The conditions list is written whole, by the reconcile and by this patch alike: both say Ready=True
    JobCreated (with the message `ready`) once the Job exists, so that whichever writes last, neither undoes
    the other.
    """
    if current.get("phase") in FINISHED_PHASES:
        return {}
    changed = {key: value for key, value in progress.items() if current.get(key) != value}
    if not changed:
        return {}
    conditions = current.get("conditions") or []
    old_ready = next((c for c in conditions if c.get("type") == "Ready"), {})
    if old_ready.get("status") != "True":
        conditions = set_condition(conditions, "Ready", True, "JobCreated", ready, old_ready.get("observedGeneration"))
    phase = progress.get("phase")
    if phase in FINISHED_PHASES:
        reason = progress.get("result", phase)
        changed["conditions"] = set_condition(conditions, RESTORED, phase == SUCCEEDED, reason,
                                              restore_message(progress))
    elif current.get("phase") != phase:
        changed["conditions"] = set_condition(conditions, RESTORED, False, phase,
                                              f"Job {progress['jobName']} is {phase.lower()}")
    return changed


def restore_message(progress: dict[str, Any]) -> str:
    """"Job x-restore succeeded: 4 files (400 bytes) restored, 1 unchanged, 0 conflicting, 0 failed" (+ why)."""
    message = (f"Job {progress['jobName']} {str(progress.get('result', FAILED)).lower()}: "
               f"{progress.get('filesRestored', 0)} files ({progress.get('bytesRestored', 0)} bytes) restored, "
               f"{progress.get('filesUnchanged', 0)} unchanged, {progress.get('filesConflicting', 0)} conflicting, "
               f"{progress.get('filesFailed', 0)} failed")
    if progress.get("filesConflicting"):
        message += " (different files were left as they are: set spec.overwrite to replace them)"
    if progress.get("message"):
        message += f"; {progress['message']}"
    if progress.get("exitCode") not in (None, 0):
        message += f" (exit code {progress['exitCode']})"
    return message[:1024]
