"""One Kubernetes Event per finished run, on its S3Backup or S3Restore (pure): `kubectl describe` shows the history.

The Event's name derives from the run (Job name and completion time), so posting it again, after an
operator restart or by a second replica, is a 409 "already exists", never a second Event. Its text holds
the counts and the syncer's one-line reason, which never carries a secret (the status holds the same).
"""

from __future__ import annotations

import hashlib
from typing import Any

from s3backup_operator.status import FAILED, PARTIAL, SUCCEEDED

REPORTING_COMPONENT = "s3backup-operator"
#: lastRun.result -> (Event type, reason)
KINDS = {SUCCEEDED: ("Normal", "BackupSucceeded"), PARTIAL: ("Warning", "BackupPartial"),
         FAILED: ("Warning", "BackupFailed")}


def event_name(backup_name: str, run: dict[str, Any]) -> str:
    key = f"{run['jobName']}\0{run.get('completionTime') or ''}"
    return f"{backup_name[:200]}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def run_message(run: dict[str, Any]) -> str:
    """"Job db-dumps-29400000 succeeded: 4 files (400 bytes) uploaded, 2 recycled, 0 failed" (+ the reason)."""
    result = str(run.get("result", FAILED)).lower()
    message = (f"Job {run['jobName']} {result}: {run.get('filesUploaded', 0)} files "
               f"({run.get('bytesUploaded', 0)} bytes) uploaded, {run.get('filesRecycled', 0)} recycled, "
               f"{run.get('filesFailed', 0)} failed")
    if run.get("message"):
        message += f"; {run['message']}"
    if run.get("exitCode") not in (None, 0):
        message += f" (exit code {run['exitCode']})"
    return message[:1024]


def run_event(backup: dict[str, Any], run: dict[str, Any], now: str) -> dict[str, Any]:
    """The core/v1 Event for a finished run (lastRun) of `backup`."""
    meta = backup["metadata"]
    kind, reason = KINDS.get(run.get("result", FAILED), KINDS[FAILED])
    reason = run.get("reason") or reason  # e.g. HookFailed: the sync never ran
    when = run.get("completionTime") or now
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(meta["name"], run), "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": backup.get("apiVersion", "s3backup.dev/v1alpha1"),
                           "kind": backup.get("kind", "S3Backup"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid", "")},
        "type": kind,
        "reason": reason,
        "message": run_message(run),
        "source": {"component": REPORTING_COMPONENT},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": REPORTING_COMPONENT,
        "action": "BackupRun",
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
    }


#: S3Restore status.result -> (Event type, reason)
RESTORE_KINDS = {"Succeeded": ("Normal", "RestoreSucceeded"), "Partial": ("Warning", "RestorePartial"),
                 "Failed": ("Warning", "RestoreFailed")}


def restore_event(restore: dict[str, Any], progress: dict[str, Any], message: str, now: str) -> dict[str, Any]:
    """The core/v1 Event for a finished restore (`progress`: its status fields), named by its Job's run."""
    meta = restore["metadata"]
    kind, reason = RESTORE_KINDS.get(progress.get("result", "Failed"), RESTORE_KINDS["Failed"])
    when = progress.get("completionTime") or now
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(meta["name"], progress), "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": restore.get("apiVersion", "s3backup.dev/v1alpha1"),
                           "kind": restore.get("kind", "S3Restore"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid", "")},
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": REPORTING_COMPONENT},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": REPORTING_COMPONENT,
        "action": "Restore",
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
    }
