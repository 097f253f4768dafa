"""copyMethod: Snapshot (VolSync's model), as pure functions: each run backs up a claim restored from a fresh
VolumeSnapshot of the source claim, and both are deleted once the run is over.

The backup pod has no API rights, so the operator does the snapshot around the run: the Job is created
suspended and marked with the source claim; the operator takes the VolumeSnapshot, waits until it is ready,
creates the clone claim (dataSource: the snapshot), and only then lets the Job start. With concurrencyPolicy
Forbid there is one run at a time, so the snapshot and the clone have fixed names per CronJob (the pod template
names the clone), and carry the Job they were made for: leftovers of an earlier run are deleted first.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from s3backup_operator.affinity import claim_name
from s3backup_operator.render import bounded_name, cronjob_name, labels, run_name
from s3backup_operator.spec import BackupSpec

SNAPSHOT_GROUP, SNAPSHOT_VERSION, SNAPSHOT_PLURAL = "snapshot.storage.k8s.io", "v1", "volumesnapshots"
#: On Jobs: the source claim a run is backed up from through a snapshot.
SNAPSHOT_OF_ANNOTATION = "s3backup.dev/snapshot-of"
#: On the VolumeSnapshot and the clone claim: the Job they were made for.
FOR_JOB_ANNOTATION = "s3backup.dev/for-job"
#: On a Job whose snapshot failed: why (status.py reports the run as SnapshotFailed with it).
SNAPSHOT_FAILED_ANNOTATION = "s3backup.dev/snapshot-failed"


def clone_name(spec: BackupSpec) -> str:
    """The VolumeSnapshot's and the clone claim's name: one pair per CronJob (one run at a time)."""
    return bounded_name(cronjob_name(run_name(spec)), "-snap", 63)


def via_snapshot(spec: BackupSpec) -> BackupSpec:
    """The run as rendered: the clone claim at /data instead of the source claim."""
    source = dataclasses.replace(spec.source, volume={"persistentVolumeClaim": {"claimName": clone_name(spec),
                                                                                "readOnly": True}})
    return dataclasses.replace(spec, source=source)


def deferred(job_spec: dict[str, Any], metadata: dict[str, Any], claim: str) -> None:
    """Make a Job (or a CronJob's jobTemplate) start suspended, marked with the claim to snapshot first."""
    job_spec["suspend"] = True
    metadata.setdefault("annotations", {})[SNAPSHOT_OF_ANNOTATION] = claim


def waiting_job(job: Mapping[str, Any]) -> str:
    """The source claim of a suspended Job that waits for its snapshot (never started), else ""."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    if not (job.get("spec") or {}).get("suspend") or (job.get("status") or {}).get("startTime"):
        return ""
    return str(annotations.get(SNAPSHOT_OF_ANNOTATION) or "")


def clone_of(job: Mapping[str, Any]) -> str:
    """The clone claim a Job's pod mounts (its source volume)."""
    volumes = ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("volumes") or []
    return next((claim_name(volume) for volume in volumes if volume.get("name") == "source"), "")


def snapshot_error(snapshot: Mapping[str, Any] | None, claim: str) -> str:
    """Why a run's VolumeSnapshot failed, as the run's message (the snapshot controller's words, bounded)."""
    error = ((snapshot or {}).get("status") or {}).get("error") or {}
    name = ((snapshot or {}).get("metadata") or {}).get("name", "")
    detail = str(error.get("message") or "no message")[:300]
    return f"VolumeSnapshot {name} of claim {claim} failed: {detail}; the run did not start"


def give_up_patch(message: str) -> dict[str, Any]:
    """The patch that ends a Job whose snapshot failed without a pod: no pod may run (parallelism 0), and
    the Job's deadline passes at once, so Kubernetes marks it Failed (DeadlineExceeded). A Job left
    suspended would count as running and, with concurrencyPolicy Forbid, hold back every later run; the
    operator may patch Jobs but not delete them."""
    return {"metadata": {"annotations": {SNAPSHOT_FAILED_ANNOTATION: message}},
            "spec": {"parallelism": 0, "activeDeadlineSeconds": 1, "suspend": False}}


def _made_for(item: Mapping[str, Any] | None) -> str:
    return str((((item or {}).get("metadata") or {}).get("annotations") or {}).get(FOR_JOB_ANNOTATION) or "")


def next_step(job_name: str, snapshot: Mapping[str, Any] | None, clone: Mapping[str, Any] | None) -> str:
    """What to do next for a waiting Job, given the live snapshot and clone of its name (None: absent):
    "delete-stale" (an earlier run's, to be removed first), "wait" (being deleted, or not ready), "create-snapshot",
    "failed" (the snapshot reports an error), "create-clone", or "start"."""
    for item in (snapshot, clone):
        if item is not None and _made_for(item) != job_name:
            return "wait" if item["metadata"].get("deletionTimestamp") else "delete-stale"
    if snapshot is None:
        return "create-snapshot"
    status = snapshot.get("status") or {}
    if status.get("error"):
        return "failed"
    if not status.get("readyToUse"):
        return "wait"
    return "create-clone" if clone is None else "start"


def snapshot_manifest(namespace: str, name: str, backup: str, job_name: str, claim: str,
                      snapshot_class: str) -> dict[str, Any]:
    """The VolumeSnapshot of the source claim for one run."""
    body: dict[str, Any] = {
        "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(backup),
                     "annotations": {FOR_JOB_ANNOTATION: job_name}},
        "spec": {"source": {"persistentVolumeClaimName": claim}},
    }
    if snapshot_class:
        body["spec"]["volumeSnapshotClassName"] = snapshot_class
    return body


def clone_manifest(namespace: str, name: str, backup: str, job_name: str, snapshot: Mapping[str, Any],
                   source: Mapping[str, Any] | None, storage_class: str | None) -> dict[str, Any]:
    """The claim restored from the snapshot: the snapshot's restore size (else the source's request), the
    spec's storage class (else the source claim's), ReadWriteOnce (one backup pod mounts it)."""
    source_spec = (source or {}).get("spec") or {}
    size = (snapshot.get("status") or {}).get("restoreSize") or (
        (source_spec.get("resources") or {}).get("requests") or {}).get("storage") or "1Gi"
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
        "dataSource": {"apiGroup": SNAPSHOT_GROUP, "kind": "VolumeSnapshot", "name": snapshot["metadata"]["name"]},
    }
    storage_class = storage_class if storage_class is not None else source_spec.get("storageClassName")
    if storage_class is not None:
        claim_spec["storageClassName"] = storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace, "labels": labels(backup),
                         "annotations": {FOR_JOB_ANNOTATION: job_name}},
            "spec": copy.deepcopy(claim_spec)}


def owned_by_job(item: Mapping[str, Any], job_name: str) -> bool:
    """Whether a snapshot or clone was made for `job_name` (so that its cleanup is this run's to do)."""
    return _made_for(item) == job_name
