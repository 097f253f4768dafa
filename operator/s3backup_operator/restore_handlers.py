"""kopf handlers of S3Restores: parse -> render -> create the one restore Job; its Job and pods -> status.

One Job per S3Restore, by a fixed name: a retried handler's create is a 409 ("already made"), and once
status.jobName is set no other Job is ever made for the resource, whatever happens to the first one (its
spec is immutable: a CEL rule in the CRD; the operator holds to it where that rule is not enforced).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import kopf

from s3backup_operator.context import controller_uid
from s3backup_operator.events import restore_event
from s3backup_operator.kubeapi import ApiError, again_on_conflict
from s3backup_operator.policy import check_job, check_volume
from s3backup_operator.render import GROUP, MANAGED_BY, VERSION
from s3backup_operator.restore_render import RESTORE_LABEL, RESTORE_PLURAL, render_restore_job, restore_job_name
from s3backup_operator.restore_spec import RestoreSpec, backup_ref, parse_restore
from s3backup_operator.restore_status import (
    FINISHED_PHASES,
    ready_message,
    restore_message,
    restore_progress,
    restore_status_patch,
)
from s3backup_operator.spec import InvalidSpec
from s3backup_operator.status import job_finished, now_iso, pod_blocked, ready_update, run_blocked_update

if TYPE_CHECKING:
    from s3backup_operator.context import OperatorContext

#: Reasons that something outside the spec may fix: looked at again after the retry delay.
RETRIED_REASONS = ("CredentialsSecretNotFound", "CredentialsSecretIncomplete", "BackupNotFound", "JobConflict")


class RestoreReconciler:
    """The I/O edge of S3Restores, on the operator's shared connection, configuration and metrics."""

    def __init__(self, base: OperatorContext) -> None:
        self.base = base

    def admit(self, restore: dict[str, Any]) -> RestoreSpec:
        """The parsed spec (with its S3Backup's settings), if the admin's policy allows it; else InvalidSpec."""
        meta, api, policy = restore["metadata"], self.base.api, self.base.config.policy
        ref = backup_ref(restore)
        backup = api.get_backup(meta["namespace"], ref) if ref else None
        if backup is not None and backup["metadata"].get("deletionTimestamp"):
            backup = None
        spec = parse_restore(restore, backup)
        check_volume(spec.target.volume, "spec.target", spec.namespace, policy)
        check_job(spec.job, spec.namespace, policy)
        where = f"S3Backup {ref}: spec.destination" if ref else "spec.source"
        self.base.check_secret(spec.namespace, spec.source.credentials, f"{where}.credentialsSecretRef")
        return spec

    def make_job(self, spec: RestoreSpec, restore: dict[str, Any], logger: logging.Logger) -> str:
        """Create the restore Job (or find the one made before); a Job of that name not ours is a conflict."""
        manifest = render_restore_job(spec, self.base.config)
        kopf.append_owner_reference(manifest, owner=restore)  # controller, blockOwnerDeletion: the GC's link
        name = manifest["metadata"]["name"]
        if self.base.api.create_job(manifest):
            logger.info(f"restore Job {name} created: {spec.source.url} -> PVC {spec.target.claim_name}")
            return name
        live = self.base.api.get_job(spec.namespace, name)  # 409: made by an earlier attempt, or by someone else
        if live is not None and controller_uid(live) != restore["metadata"].get("uid"):
            raise InvalidSpec("JobConflict", f"Job {name!r} exists and is not owned by this S3Restore; delete or "
                                             "rename it")
        return name

    def reconcile(self, body: dict[str, Any], logger: logging.Logger) -> None:
        """Parse, check, create the Job once; the outcome goes to the Ready condition (the phase and counts
        come from the Job, see job_changed)."""
        meta, status = body["metadata"], body.get("status") or {}
        generation = meta.get("generation")
        metrics = self.base.metrics

        def set_ready(ready: bool, reason: str, message: str, **fields: Any) -> None:
            """Ready (and `fields`) onto the live status, not kopf's patch: see kubeapi.update_status."""
            try:
                self.base.api.update_restore_status(
                    meta["namespace"], meta["name"],
                    lambda live: ready_update(live, ready, reason, message, generation, **fields))
            except ApiError as error:  # the status must say it: the handler runs again
                metrics.reconcile_errors.labels(reason="StatusUpdateFailed").inc()
                raise kopf.TemporaryError(f"status not written: {error}", delay=self.base.config.retry_delay) \
                    from None

        if status.get("jobName"):  # made once: a restore never runs twice
            if generation != status.get("observedGeneration"):
                set_ready(True, "SpecChangeIgnored", f"Job {status['jobName']} was made from generation "
                          f"{status.get('observedGeneration')}; a restore runs once: create a new S3Restore to "
                          "restore again")
            return
        try:
            spec = self.admit(body)
            name = self.make_job(spec, body, logger)
        except InvalidSpec as problem:
            metrics.reconcile_errors.labels(reason=problem.reason).inc()
            set_ready(False, problem.reason, problem.message)
            if problem.reason in RETRIED_REASONS:
                logger.warning(f"Not ready: {problem.reason}: {problem.message}")
                raise kopf.TemporaryError(problem.message, delay=self.base.config.retry_delay) from None
            raise
        except ApiError as error:
            metrics.reconcile_errors.labels(reason="ApiError").inc()
            set_ready(False, "ApiError", f"Kubernetes API request failed (retrying): {error}")
            raise kopf.TemporaryError(f"creating the restore Job: {error}", delay=self.base.config.retry_delay) \
                from None
        as_of = {"asOf": spec.as_of} if spec.as_of else {}
        set_ready(True, "JobCreated", ready_message(body, name), jobName=name, **as_of)

    def job_changed(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """The restore Job changed: phase, times and (once over) counts to the status, and one Event."""
        again_on_conflict(lambda: self._job_changed(job, logger))

    def _job_changed(self, job: dict[str, Any], logger: logging.Logger) -> None:
        meta = job["metadata"]
        restore_name = (meta.get("labels") or {}).get(RESTORE_LABEL)
        if not restore_name or meta["name"] != restore_job_name(restore_name):
            return
        api = self.base.api
        restore = api.get_restore(meta["namespace"], restore_name)
        if restore is None or restore["metadata"].get("deletionTimestamp") \
                or controller_uid(job) != restore["metadata"].get("uid"):
            return
        current = restore.get("status") or {}
        if current.get("phase") in FINISHED_PHASES:
            return
        pods = api.list_pods(meta["namespace"], {"job-name": meta["name"]}) if job_finished(job) else []
        progress = restore_progress(job, pods)
        status_patch = restore_status_patch(current, progress, ready_message(restore, meta["name"]))
        if not status_patch:
            return
        if progress["phase"] in FINISHED_PHASES:
            # Before the status, by a fixed name: a failed status patch (retried with the next event) cannot
            # lose it, and a repeated one is a 409. Its own failure is logged only.
            try:
                api.create_event(restore_event(restore, progress, restore_message(progress), now_iso()))
            except ApiError as error:
                self.base.metrics.reconcile_errors.labels(reason="EventFailed").inc()
                logger.warning(f"S3Restore {restore_name}: no Event for Job {meta['name']}: {error}")
        api.patch_restore_status(meta["namespace"], restore_name, status_patch,
                                 resource_version=restore["metadata"].get("resourceVersion"))
        if progress["phase"] in FINISHED_PHASES:
            logger.info(f"S3Restore {restore_name}: {restore_message(progress)}")


    def pod_changed(self, event_type: str, pod: dict[str, Any], logger: logging.Logger) -> None:
        """A restore pod that cannot start (unschedulable, e.g. a ReadWriteOnce claim in use on another node; a
        missing Secret; the image) -> RunBlocked=True on its S3Restore, and False again once it starts."""
        meta = pod["metadata"]
        restore_name = (meta.get("labels") or {}).get(RESTORE_LABEL)
        if not restore_name:
            return

        def change(live: dict[str, Any]) -> dict[str, Any] | None:
            blocked = None if event_type == "DELETED" or live.get("phase") in FINISHED_PHASES else pod_blocked(pod)
            update = run_blocked_update(live, meta["name"], blocked, gone=event_type == "DELETED")
            if update and blocked:
                logger.warning(f"S3Restore {restore_name}: blocked: {blocked[0]}: {blocked[1]}")
            return update

        self.base.api.update_restore_status(meta["namespace"], restore_name, change)


def register_restores(registry: kopf.OperatorRegistry, base: OperatorContext) -> RestoreReconciler:
    """The S3Restore handlers, into the registry of the S3Backup ones (same login, settings and metrics)."""
    reconciler = RestoreReconciler(base)
    restores = dict(group=GROUP, version=VERSION, plural=RESTORE_PLURAL, registry=registry)
    managed = {"app.kubernetes.io/managed-by": MANAGED_BY, RESTORE_LABEL: kopf.PRESENT}

    @kopf.on.resume(**restores, id="restore")
    @kopf.on.create(**restores, id="restore")
    @kopf.on.update(**restores, id="restore")
    def reconcile(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        reconciler.reconcile(dict(body), logger)

    @kopf.on.event("batch", "v1", "jobs", labels=managed, registry=registry, id="restore-job")
    def job_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        if event.get("type") == "DELETED":
            return
        try:
            reconciler.job_changed(dict(body), logger)
        except ApiError as error:  # best effort: the next event of the Job tries again
            base.metrics.reconcile_errors.labels(reason="StatusUpdateFailed").inc()
            logger.warning(f"status not updated from Job {body['metadata']['name']}: {error}")

    @kopf.on.event("", "v1", "pods", labels=managed, registry=registry, id="restore-pod")
    def pod_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        try:
            reconciler.pod_changed(event.get("type") or "", dict(body), logger)
        except ApiError as error:  # best effort: the next event of the pod tries again
            base.metrics.reconcile_errors.labels(reason="StatusUpdateFailed").inc()
            logger.warning(f"status not updated from Pod {body['metadata']['name']}: {error}")

    return reconciler
