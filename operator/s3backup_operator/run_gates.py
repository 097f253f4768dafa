"""Runs that wait before they start: a Job made suspended, started once its place or its volume is ready.

- A ReadWriteOnce source: the run must share a node with the pod that mounts the claim now (affinity.py).
- copyMethod Snapshot: the run mounts a clone of a VolumeSnapshot the operator takes first (snapshot.py).

Every step is driven by an event (of the Job, the snapshot or the clone) and is idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

from s3backup_operator.affinity import PLACEMENT_ANNOTATION, claim_name, placement_patch, single_node, volume_node
from s3backup_operator.context import OperatorContext
from s3backup_operator.kubeapi import ApiError
from s3backup_operator.render import BACKUP_LABEL, MANAGED_BY, render_run_now_job
from s3backup_operator.snapshot import (
    FOR_JOB_ANNOTATION,
    SNAPSHOT_OF_ANNOTATION,
    clone_manifest,
    clone_of,
    deferred,
    give_up_patch,
    next_step,
    owned_by_job,
    snapshot_error,
    snapshot_manifest,
    via_snapshot,
    waiting_job,
)
from s3backup_operator.spec import BackupSpec, parse
from s3backup_operator.targets import pinned_to_node


class RunGates:
    def __init__(self, context: OperatorContext) -> None:
        self.context = context

    def single_node_claim(self, spec: BackupSpec) -> str:
        """The source's claim if it can only be mounted on one node (ReadWriteOnce), else "".

        Access modes are immutable, so reading them when the CronJob is applied is enough; the node is
        decided per run (`place`). A claim not (yet) there or not readable counts as not tied to a node.
        """
        claim = claim_name(spec.source.volume)
        if not claim:
            return ""
        try:
            return claim if single_node(self.context.api.get_claim(spec.namespace, claim)) else ""
        except ApiError as error:
            if error.status == 403:  # an older chart without the right: as before, the scheduler decides
                return ""
            raise

    def volume_node(self, namespace: str, claim: str) -> str | None:
        """The node of the running pod that mounts `claim`, now."""
        return volume_node(claim, self.context.api.list_pods(namespace, {}), MANAGED_BY)

    def run_now_job(self, spec: BackupSpec, request: str) -> dict[str, Any]:
        """The run-now Job of one run: through a snapshot (made suspended, started by `advance_snapshot`),
        or pinned now to the node of a ReadWriteOnce claim's pod, or as rendered."""
        config = self.context.config
        if spec.copy_method == "Snapshot":
            job = render_run_now_job(via_snapshot(spec), config, request)
            deferred(job["spec"], job["metadata"], claim_name(spec.source.volume))
            return job
        claim = self.single_node_claim(spec)
        node = self.volume_node(spec.namespace, claim) if claim else None
        return render_run_now_job(pinned_to_node(spec, node) if node else spec, config, request)

    def job_waiting(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """An unfinished Job: start it if it waits for its node or its snapshot and that is ready."""
        self.place(job, logger)
        self.advance_snapshot(job, logger)

    def place(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """A scheduled run of a ReadWriteOnce source, created suspended: pin it to the node of the claim's
        running pod (if any), then start it."""
        meta = job["metadata"]
        claim = (meta.get("annotations") or {}).get(PLACEMENT_ANNOTATION)
        if not claim or placement_patch(job, None) is None:
            return
        node = self.volume_node(meta["namespace"], claim)
        patch = placement_patch(job, node)
        if patch is not None:
            self.context.api.patch_job(meta["namespace"], meta["name"], patch)
            where = f"on node {node}, with the pod that mounts claim {claim}" if node else \
                f"where the scheduler puts it (no running pod mounts claim {claim})"
            logger.info(f"Job {meta['name']} started {where}")

    def advance_snapshot(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """One step for a Job that waits for its snapshot: remove an earlier run's leftovers, take the
        VolumeSnapshot, wait until it is ready, create the clone claim from it, start the Job."""
        meta = job["metadata"]
        claim = waiting_job(job)
        backup = self.context.live_owner(meta) if claim else None
        if backup is None:
            return
        api = self.context.api
        namespace, job_name, name = meta["namespace"], meta["name"], clone_of(job)
        snapshot, clone = api.get_snapshot(namespace, name), api.get_claim(namespace, name)
        step = next_step(job_name, snapshot, clone)
        backup_name = backup["metadata"]["name"]
        if step == "delete-stale":
            for item, delete in ((snapshot, api.delete_snapshot), (clone, api.delete_claim)):
                if item is not None and not owned_by_job(item, job_name):
                    delete(namespace, name)
                    logger.info(f"{item.get('kind', 'object')} {name} of an earlier run deleted (Job {job_name})")
        elif step == "create-snapshot":
            spec = parse(backup)
            manifest = snapshot_manifest(namespace, name, backup_name, job_name, claim, spec.snapshot_class)
            _owned_by_job(manifest, job)
            if api.create_snapshot(manifest):
                logger.info(f"VolumeSnapshot {name} of claim {claim} created for Job {job_name}")
        elif step == "create-clone":
            spec = parse(backup)
            manifest = clone_manifest(namespace, name, backup_name, job_name, snapshot or {},
                                      api.get_claim(namespace, claim), spec.clone_storage_class)
            _owned_by_job(manifest, job)
            if api.create_claim(manifest):
                logger.info(f"claim {name} restored from VolumeSnapshot {name} for Job {job_name}")
            step = "start"  # the pod binds the clone when it is scheduled: nothing more to wait for
        if step == "start":
            api.patch_job(namespace, job_name, {"spec": {"suspend": False}})
            logger.info(f"Job {job_name} started on the snapshot of claim {claim}")
        elif step == "failed":  # the run ends as Failed (SnapshotFailed); the next one takes a new snapshot
            message = snapshot_error(snapshot, claim)
            api.patch_job(namespace, job_name, give_up_patch(message))
            logger.warning(f"Job {job_name}: {message}")

    def advance_waiting_jobs(self, namespace: str, backup_name: str, logger: logging.Logger) -> None:
        """advance_snapshot for each Job of the backup that waits for its snapshot (a snapshot or clone changed)."""
        for job in self.context.api.list_jobs(namespace, {BACKUP_LABEL: backup_name}):
            if waiting_job(job):
                self.advance_snapshot(job, logger)

    def clone_changed(self, event_type: str, claim: dict[str, Any], logger: logging.Logger) -> None:
        """A clone of an earlier run is gone: a run waiting for the same clone name may go on."""
        meta = claim["metadata"]
        if event_type != "DELETED" or FOR_JOB_ANNOTATION not in (meta.get("annotations") or {}):
            return
        backup = self.context.live_owner(meta)
        if backup is not None:
            self.advance_waiting_jobs(meta["namespace"], backup["metadata"]["name"], logger)

    def cleanup_snapshot(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """A finished run through a snapshot: delete its clone claim and its VolumeSnapshot."""
        meta = job["metadata"]
        if SNAPSHOT_OF_ANNOTATION not in (meta.get("annotations") or {}):
            return
        api = self.context.api
        namespace, name = meta["namespace"], clone_of(job)
        clone = api.get_claim(namespace, name)
        if clone is not None and owned_by_job(clone, meta["name"]) and api.delete_claim(namespace, name):
            logger.info(f"claim {name} (the clone of Job {meta['name']}) deleted")
        snapshot = api.get_snapshot(namespace, name)
        if snapshot is not None and owned_by_job(snapshot, meta["name"]) and api.delete_snapshot(namespace, name):
            logger.info(f"VolumeSnapshot {name} (of Job {meta['name']}) deleted")


def _owned_by_job(manifest: dict[str, Any], job: dict[str, Any]) -> None:
    """The Job owns its snapshot and clone: should the operator miss the cleanup, the garbage collector
    removes them with the Job (successfulJobsHistoryLimit)."""
    meta = job["metadata"]
    manifest["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                "uid": meta.get("uid", ""), "blockOwnerDeletion": False}]
