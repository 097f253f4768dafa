"""kopf handlers: parse -> render -> apply (server-side, owned CronJob), and observe Jobs/Pods -> status.

This module only wires kopf's events to the handlers, one concern each: backup_reconciler (the S3Backup
and its CronJobs, with cronjobs and fan_outs), run_gates (runs that wait for a node or a snapshot),
run_reports (finished runs -> status), restore_handlers (S3Restores); context holds what they share.

Handlers are registered into a given registry (`register`), so tests run a real kopf with its own
registry and connection. They are idempotent: the CronJob has a fixed name and is applied server-side
(an unchanged intent changes nothing), and a run-now Job that already exists counts as made.

The official client is synchronous: the handlers that use it are plain `def`s, which kopf runs in its
thread pool, so the event loop is never blocked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client import Configuration

from s3backup_operator.backup_reconciler import BackupReconciler
from s3backup_operator.config import OperatorConfig
from s3backup_operator.context import OperatorContext
from s3backup_operator.cronjobs import CronJobs
from s3backup_operator.fan_outs import FanOuts
from s3backup_operator.kubeapi import ApiError
from s3backup_operator.metrics import OperatorMetrics
from s3backup_operator.render import (
    BACKUP_LABEL,
    CHILD_SELECTOR,
    GROUP,
    MANAGED_BY,
    PLURAL,
    RUN_NOW_ANNOTATION,
    VERSION,
)
from s3backup_operator.restore_handlers import register_restores
from s3backup_operator.run_gates import RunGates
from s3backup_operator.run_reports import RunReports
from s3backup_operator.spec import InvalidSpec
from s3backup_operator.status import job_finished

LoginFn = Callable[..., kopf.ConnectionInfo | None]
ClientConfigFn = Callable[[], Configuration]
KOPF_PREFIX = f"operator.{GROUP}"


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's login through the official client: the in-cluster service account first, then the kubeconfig
    ($KUBECONFIG or ~/.kube/config, exec credential plugins included). It also configures the client's
    default Configuration, which `default_client_config` then copies for the operator's own requests."""
    return kopf.login_via_client(**kwargs)


def default_client_config() -> Configuration:
    return Configuration.get_default_copy()


def register(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    metrics: OperatorMetrics,
    login: LoginFn = default_login,
    client_config: ClientConfigFn = default_client_config,
) -> OperatorContext:
    """Register every handler into `registry`. `login` gives kopf's connection and `client_config` then the
    official client's (tests: both pointing at the emulator)."""
    context = OperatorContext(config, metrics)
    gates = RunGates(context)
    cronjobs = CronJobs(context, gates)
    fan_outs = FanOuts(context, cronjobs)
    reconciler = BackupReconciler(context, cronjobs, fan_outs, gates)
    reports = RunReports(context)
    backups = dict(group=GROUP, version=VERSION, plural=PLURAL, registry=registry)
    managed = {"app.kubernetes.io/managed-by": MANAGED_BY, BACKUP_LABEL: kopf.PRESENT}
    children = (("batch", "v1", "cronjobs"), ("batch", "v1", "jobs"), ("", "v1", "pods"))

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's bookkeeping under its own prefix: kopf ignores changes to annotations under its prefix,
        # and s3backup.dev/run-now must stay visible to it.
        settings.persistence.finalizer = f"{GROUP}/cleanup"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=KOPF_PREFIX, key="last-handled-configuration")
        settings.posting.level = logging.WARNING  # k8s Events for problems only; the status tells the rest
        # The API server filters the children's watches (labelSelector): only the operator's own CronJobs,
        # Jobs and Pods reach it, never every pod of the cluster. The handlers' `labels=` stays as a guard.
        for resource in children:
            settings.watching.label_selectors[resource] = CHILD_SELECTOR

    @kopf.on.login(registry=registry)
    def authenticate(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = login(**kwargs)
        if info is not None:
            context.connect(client_config())
        return info

    @kopf.on.cleanup(registry=registry)
    def close(**_: Any) -> None:
        context.close()

    @kopf.on.resume(**backups, id="reconcile")
    @kopf.on.create(**backups, id="reconcile")
    @kopf.on.update(**backups, id="reconcile")
    def reconcile(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        reconciler.reconcile(dict(body), logger)

    if config.resync_interval > 0:
        @kopf.timer(**backups, interval=config.resync_interval, initial_delay=config.resync_interval,
                    idle=min(10.0, config.resync_interval), id="resync")
        def resync(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
            if body["metadata"].get("deletionTimestamp"):
                return
            try:
                reconciler.reconcile(dict(body), logger)
            except InvalidSpec as problem:  # the Ready condition says it; a timer must not fail for good
                logger.warning(f"Not ready: {problem.reason}: {problem.message}")

    @kopf.on.field(**backups, field=("metadata", "annotations", RUN_NOW_ANNOTATION), id="run-now")
    def run_now(body: kopf.Body, new: Any, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
        if new:
            reconciler.run_now(dict(body), str(new), patch, logger)

    @kopf.on.delete(**backups, id="cleanup")
    async def cleanup(body: kopf.Body, retry: int, logger: logging.Logger, **_: Any) -> None:
        await reconciler.cleanup(dict(body), retry, logger)

    @kopf.on.event(**backups, id="observe")
    def observe(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        reconciler.observe(event.get("type") or "", dict(body))

    def update_status_from(kind: str, update: Callable[[], None], body: kopf.Body, logger: logging.Logger) -> None:
        """Status updates from children are best effort: a failure is counted and logged, never raised."""
        try:
            update()
        except ApiError as error:
            metrics.reconcile_errors.labels(reason="StatusUpdateFailed").inc()
            logger.warning(f"status not updated from {kind} {body['metadata']['name']}: {error}")

    def job_changed(job: dict[str, Any], logger: logging.Logger) -> None:
        """An unfinished Job may wait for its node or snapshot; a finished one is reported, its snapshot dropped."""
        if not job_finished(job):
            gates.job_waiting(job, logger)
            return
        gates.cleanup_snapshot(job, logger)
        reports.job_finished(job, logger)

    @kopf.on.event("batch", "v1", "jobs", labels=managed, registry=registry, id="job-finished")
    def job_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        if event.get("type") != "DELETED":
            update_status_from("Job", lambda: job_changed(dict(body), logger), body, logger)

    @kopf.on.event("", "v1", "pods", labels=managed, registry=registry, id="pod-changed")
    def pod_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        update = lambda: reports.pod_changed(event.get("type") or "", dict(body), logger)  # noqa: E731
        update_status_from("Pod", update, body, logger)

    @kopf.on.event("batch", "v1", "cronjobs", labels=managed, registry=registry, id="cronjob-changed")
    def cronjob_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        update = lambda: reconciler.cronjob_changed(event.get("type") or "", dict(body), logger)  # noqa: E731
        update_status_from("CronJob", update, body, logger)

    @kopf.on.event("", "v1", "nodes", registry=registry, id="nodes-changed")
    def node_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        """source.hostPath fan-outs follow the Nodes that match their nodeSelector (kopf serves cluster-scoped
        kinds in either mode; the resync timer re-applies the same, should an event be missed)."""
        update = lambda: fan_outs.nodes_changed(event.get("type") or "", dict(body), logger)  # noqa: E731
        update_status_from("Node", update, body, logger)

    @kopf.on.event("snapshot.storage.k8s.io", "v1", "volumesnapshots", labels=managed, registry=registry,
                   id="snapshot-changed")
    def snapshot_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        """copyMethod Snapshot: a snapshot became ready (or an earlier run's is gone): the waiting run goes on."""
        meta = body["metadata"]
        update = lambda: gates.advance_waiting_jobs(  # noqa: E731
            meta["namespace"], (meta.get("labels") or {}).get(BACKUP_LABEL, ""), logger)
        update_status_from("VolumeSnapshot", update, body, logger)

    @kopf.on.event("", "v1", "persistentvolumeclaims", registry=registry, id="claims-changed")
    def claim_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        """source.selector fan-outs follow the claims of their namespace: new ones join, deleted ones leave."""
        def update() -> None:
            gates.clone_changed(event.get("type") or "", dict(body), logger)
            fan_outs.claims_changed(event.get("type") or "", dict(body), logger)

        update_status_from("PersistentVolumeClaim", update, body, logger)

    register_restores(registry, context)
    return context
