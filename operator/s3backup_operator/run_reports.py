"""Finished runs -> the S3Backup's status and Events; a sharded run's final recycle step; blocked pods.

A run is a Job (scheduled or run-now); a sharded run is an Indexed Job and then its recycle Job
(sharding.py). The status moves once per run, written by one writer per S3Backup at a time.
"""

from __future__ import annotations

import logging
from typing import Any

from s3backup_operator.context import OperatorContext
from s3backup_operator.events import run_event
from s3backup_operator.kubeapi import ApiError
from s3backup_operator.pushgateway import prune_shard_groups, redact_url
from s3backup_operator.recycle_step import render_recycle_job, run_destination
from s3backup_operator.render import BACKUP_LABEL, TARGET_LABEL
from s3backup_operator.shard_status import recycle_due, sharded_last_run
from s3backup_operator.sharding import is_recycle_job, run_of, shard_count
from s3backup_operator.spec import pushgateway_of
from s3backup_operator.status import (
    last_run,
    now_iso,
    pod_blocked,
    run_blocked_update,
    status_patch_for_run,
    status_patch_for_target_run,
)


class RunReports:
    def __init__(self, context: OperatorContext) -> None:
        self.context = context

    def job_finished(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """A finished Job (scheduled or run-now) -> status.lastRun / lastSuccessfulTime of its S3Backup."""
        if shard_count(job) > 1 or is_recycle_job(job):
            self.sharded_job_finished(job, logger)
            return
        meta = job["metadata"]
        backup_name = (meta.get("labels") or {}).get(BACKUP_LABEL)
        if not backup_name:
            return
        run = last_run(job, self.context.api.list_pods(meta["namespace"], {"job-name": meta["name"]}))
        if run is not None:
            self.report_run(meta["namespace"], backup_name, run, _target_of(job), logger)

    def report_run(self, namespace: str, backup_name: str, run: dict[str, Any], target: str | None,
                   logger: logging.Logger) -> None:
        """A finished run -> its Event and status.lastRun / lastSuccessfulTime (once: only when the status moves).

        One status writer per S3Backup at a time: a fan-out's runs end together, and each derives the
        resource's lastRun / lastSuccessfulTime from every target's entry (read, compute, patch).
        """
        api = self.context.api
        with self.context.status_lock(namespace, backup_name):
            backup = api.get_backup(namespace, backup_name)
            if backup is None or backup["metadata"].get("deletionTimestamp"):
                return
            status = backup.get("status") or {}
            if target:  # one run of a fan-out: its target's entry, and the resource's own view of them
                status_patch = status_patch_for_target_run(status, target, run)
            else:
                status_patch = status_patch_for_run(status, run)
            if not status_patch:
                return
            # Once per run: only when the status moves to it, and by a fixed name. Before the status, so a
            # failed status patch (retried with the next event) cannot lose it; its own failure is logged only.
            try:
                api.create_event(run_event(backup, run, now_iso()))
            except ApiError as error:
                self.context.metrics.reconcile_errors.labels(reason="EventFailed").inc()
                logger.warning(f"S3Backup {backup_name}: no Event for run {run['jobName']}: {error}")
            api.patch_backup_status(namespace, backup_name, status_patch)
            logger.info(f"S3Backup {backup_name}: run {run['jobName']} {run['result']}, "
                        f"{run['filesUploaded']} files uploaded, {run['filesFailed']} failed")
            previous = (status.get("lastRun") or {}).get("shards", 1)
            if run.get("shards", 1) != previous:
                self.prune_metrics(backup, run.get("shards", 1), logger)

    def prune_metrics(self, backup: dict[str, Any], shards: int, logger: logging.Logger) -> None:
        """The first run after a change of spec.transfer.shards has pushed its groups: drop those the backup
        no longer pushes, which would add to the dashboard's sums. Best effort: a failure is logged only."""
        meta = backup["metadata"]
        gateway = pushgateway_of(backup, self.context.config.default_pushgateway_url)
        if not gateway:
            return
        try:
            pruned = prune_shard_groups(gateway, meta["namespace"], meta["name"], shards, timeout=5)
        except Exception as error:  # any network failure: the groups stay until the S3Backup is deleted
            logger.warning(f"Pushgateway groups of earlier shard counts not pruned at {redact_url(gateway)}: "
                           f"{type(error).__name__}")
            return
        if pruned:
            logger.info(f"S3Backup {meta['name']}: {pruned} Pushgateway group(s) of an earlier shard count deleted")

    def sharded_job_finished(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """A finished Job of a sharded run (sharding.py): its shards' Indexed Job, or its final recycle step.

        When every shard succeeded, the recycle Job is made and the status waits for it; when one failed, no
        recycle Job is ever made and the status names the failed shards at once.
        """
        meta = job["metadata"]
        backup = self.context.live_owner(meta)
        if backup is None:
            return
        api = self.context.api
        recycle_job, skipped = None, ""
        if is_recycle_job(job):
            run_job, recycle_job = api.get_job(meta["namespace"], run_of(job)), job
            if run_job is None:
                return
        else:
            run_job = job
            if recycle_due(run_job):
                if ((backup.get("status") or {}).get("lastRun") or {}).get("jobName") == meta["name"]:
                    return  # reported already: its recycle Job (if any) is never made again
                if not self._later_run(backup, run_job):
                    self.start_recycle(run_job, logger)
                    return  # the status waits for the recycle Job
                skipped = "a later run has started"
        namespace = meta["namespace"]
        pods = api.list_pods(namespace, {"job-name": run_job["metadata"]["name"]})
        recycle_pods = api.list_pods(namespace, {"job-name": recycle_job["metadata"]["name"]}) if recycle_job else []
        run = sharded_last_run(run_job, pods, recycle_job, recycle_pods, skipped)
        if run is not None:
            self.report_run(namespace, backup["metadata"]["name"], run, _target_of(run_job), logger)

    def _later_run(self, backup: dict[str, Any], run_job: dict[str, Any]) -> bool:
        """Whether a later run to the same destination has started: a run's final step is never made after
        that. A late recycle could delete the copy of a file that came back, unchanged, after the run."""
        started, destination = run_job["metadata"].get("creationTimestamp") or "", run_destination(run_job)
        jobs = self.context.api.list_jobs(run_job["metadata"]["namespace"], {BACKUP_LABEL: backup["metadata"]["name"]})
        return any((j["metadata"].get("creationTimestamp") or "") > started and run_destination(j) == destination
                   for j in jobs)

    def start_recycle(self, run_job: dict[str, Any], logger: logging.Logger) -> None:
        """Make the run's recycle Job, from the run's own Job (recycle_step.py), owned by it. A fixed name:
        made once, whoever asks again."""
        manifest = render_recycle_job(run_job)
        manifest["metadata"]["ownerReferences"] = [{
            "apiVersion": "batch/v1", "kind": "Job", "name": run_job["metadata"]["name"],
            "uid": run_job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": False,
        }]
        if self.context.api.create_job(manifest):
            logger.info(f"Job {manifest['metadata']['name']} created: the final recycle step of "
                        f"{run_job['metadata']['name']}")

    def pod_changed(self, event_type: str, pod: dict[str, Any], logger: logging.Logger) -> None:
        """A backup pod that cannot start (missing Secret, image pull, unschedulable) -> RunBlocked=True."""
        meta = pod["metadata"]
        backup_name = (meta.get("labels") or {}).get(BACKUP_LABEL)
        if not backup_name:
            return
        blocked = None if event_type == "DELETED" else pod_blocked(pod)

        def change(live: dict[str, Any]) -> dict[str, Any] | None:
            update = run_blocked_update(live, meta["name"], blocked, gone=event_type == "DELETED")
            if update and blocked:
                logger.warning(f"S3Backup {backup_name}: run blocked: {blocked[0]}: {blocked[1]}")
            return update

        self.context.api.update_backup_status(meta["namespace"], backup_name, change)


def _target_of(job: dict[str, Any]) -> str | None:
    """The fan-out target (a node or a claim) a run's Job is for; None for a resource with one source."""
    return (job["metadata"].get("annotations") or {}).get(TARGET_LABEL)
