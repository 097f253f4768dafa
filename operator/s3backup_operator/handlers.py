"""kopf handlers: validate -> render -> apply (adopted CronJob), and observe Jobs/Pods -> status.

Handlers are registered into a given registry (`register`), so tests run a real kopf with its own
registry and connection. They are idempotent: the CronJob has a fixed name, "already exists" counts as
success, and it is patched only when the rendered spec's hash changes.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from typing import Any

import kopf

from s3backup_operator import render
from s3backup_operator.config import OperatorConfig
from s3backup_operator.kube import ApiError, KubeApi, namespaced
from s3backup_operator.metrics import BackupState, OperatorMetrics
from s3backup_operator.pushgateway import delete_group, redact_url
from s3backup_operator.render import (
    BACKUP_LABEL,
    GROUP,
    MANAGED_BY,
    PLURAL,
    RUN_NOW_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    VERSION,
    InvalidSpec,
)
from s3backup_operator.status import (
    job_finished,
    last_run,
    pod_blocked,
    ready_condition,
    set_condition,
    status_patch_for_run,
)

LoginFn = Callable[..., kopf.ConnectionInfo | None]
PUSHGATEWAY_DELETE_ATTEMPTS = 3
KOPF_PREFIX = f"operator.{GROUP}"
RUN_BLOCKED = "RunBlocked"


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """An explicit $KUBECONFIG first, then the in-cluster service account, then ~/.kube/config."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


class Reconciler:
    """The I/O edge: reads the cluster, calls the pure renderers, writes the result."""

    def __init__(self, config: OperatorConfig, api: KubeApi, metrics: OperatorMetrics) -> None:
        self.config = config
        self.api = api
        self.metrics = metrics

    def _backup_path(self, namespace: str, name: str = "", sub: str = "") -> str:
        return namespaced(f"{GROUP}/{VERSION}", PLURAL, namespace, name, sub)

    async def check_credentials(self, backup: dict[str, Any]) -> None:
        """The credentials Secret must exist with both keys. Only key names are looked at, never values."""
        destination = (backup.get("spec") or {}).get("destination") or {}
        ref = destination.get("credentialsSecretRef")
        if not ref or not self.config.check_secrets:
            return
        namespace = backup["metadata"]["namespace"]
        try:
            secret = await self.api.get_or_none(namespaced("v1", "secrets", namespace, ref["name"]))
        except ApiError as error:
            if error.status == 403:  # not allowed to look (RBAC without Secrets): the job's pod will tell
                return
            raise
        if secret is None:
            raise InvalidSpec("CredentialsSecretNotFound",
                              f"Secret {ref['name']!r} (spec.destination.credentialsSecretRef) not found in "
                              f"namespace {namespace!r}")
        keys = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
        wanted = [ref.get("accessKeyIDKey") or render.DEFAULT_ACCESS_KEY_KEY,
                  ref.get("secretAccessKeyKey") or render.DEFAULT_SECRET_KEY_KEY]
        missing = [key for key in wanted if key not in keys]
        secret = None  # drop the values as soon as possible
        if missing:
            raise InvalidSpec("CredentialsSecretIncomplete",
                              f"Secret {ref['name']!r} has no key {', '.join(missing)}")

    async def apply_cronjob(self, backup: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Create or patch the CronJob. Returns ("created" | "patched" | "unchanged", manifest)."""
        manifest = render.render_cronjob(backup, self.config)
        kopf.adopt(manifest, owner=backup)
        meta = manifest["metadata"]
        path = namespaced("batch/v1", "cronjobs", meta["namespace"])
        live = await self.api.get_or_none(f"{path}/{meta['name']}")
        if live is None:
            try:
                await self.api.create(path, manifest)
                return "created", manifest
            except ApiError as error:
                if error.status != 409:
                    raise
                live = await self.api.get(f"{path}/{meta['name']}")
        owners = [ref for ref in (live.get("metadata") or {}).get("ownerReferences") or [] if ref.get("controller")]
        if not owners or owners[0].get("uid") != backup["metadata"].get("uid"):
            raise InvalidSpec("CronJobConflict",
                              f"CronJob {meta['name']!r} exists and is not owned by this S3Backup; "
                              "delete or rename it")
        if ((live.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION) == \
                meta["annotations"][SPEC_HASH_ANNOTATION]:
            return "unchanged", manifest
        patch = {
            "metadata": {"labels": meta["labels"], "annotations": meta["annotations"]},
            "spec": render.merge_patch(live.get("spec") or {}, manifest["spec"]),
        }
        await self.api.merge_patch(f"{path}/{meta['name']}", patch)
        return "patched", manifest

    async def reconcile(self, body: dict[str, Any], patch: kopf.Patch, logger: logging.Logger) -> None:
        """Validate, check the Secret, apply the CronJob; the outcome goes to the Ready condition."""
        meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
        generation = meta.get("generation")
        name = render.cronjob_name(meta["name"])

        def set_ready(ready: bool, reason: str, message: str) -> None:
            patch.status["conditions"] = ready_condition(status.get("conditions"), ready, reason, message,
                                                         generation)
            if generation is not None:
                patch.status["observedGeneration"] = generation

        try:
            render.validate(body)
            await self.check_credentials(body)
            action, manifest = await self.apply_cronjob(body)
        except InvalidSpec as problem:
            self.metrics.reconcile_errors.labels(reason=problem.reason).inc()
            ours = status.get("cronJobName") and problem.reason != "CronJobConflict"
            kept = " The existing CronJob is left as it was." if ours else ""
            set_ready(False, problem.reason, problem.message + kept)
            logger.warning(f"Not ready: {problem.reason}: {problem.message}")
            if problem.reason in ("CredentialsSecretNotFound", "CredentialsSecretIncomplete", "CronJobConflict"):
                # Something outside the spec may fix it: look again later (a backoff, never a crash loop).
                raise kopf.TemporaryError(problem.message, delay=self.config.retry_delay) from None
            return
        except ApiError as error:
            self.metrics.reconcile_errors.labels(reason="ApiError").inc()
            set_ready(False, "ApiError", f"Kubernetes API request failed (retrying): {error}")
            raise kopf.TemporaryError(f"reconciling CronJob {name!r}: {error}", delay=self.config.retry_delay) from None
        resolved = manifest["spec"]["schedule"]
        zone = f" ({spec['timeZone']})" if spec.get("timeZone") else ""
        patch.status["cronJobName"] = name
        patch.status["schedule"] = resolved
        if spec.get("suspend"):
            set_ready(True, "Suspended", f"CronJob {name} is suspended (schedule {resolved}{zone})")
        else:
            set_ready(True, "CronJobReady", f"CronJob {name} runs at {resolved}{zone}")
        if action != "unchanged":
            logger.info(f"CronJob {name} {action} (schedule {resolved}{zone}, suspend={bool(spec.get('suspend'))})")

    async def run_now(self, body: dict[str, Any], request: str, patch: kopf.Patch, logger: logging.Logger) -> None:
        """Start the one-off Job for this run-now request (once per distinct annotation value)."""
        meta, status = body["metadata"], body.get("status") or {}
        if status.get("lastRunNowRequest") == request:
            return
        try:
            render.validate(body)
        except InvalidSpec as problem:
            logger.warning(f"run-now ignored: {problem.reason}: {problem.message}")
            return
        jobs = await self.api.list(namespaced("batch/v1", "jobs", meta["namespace"]), {BACKUP_LABEL: meta["name"]})
        job = render.render_run_now_job(body, self.config, request)
        running = [j["metadata"]["name"] for j in jobs
                   if not job_finished(j) and j["metadata"]["name"] != job["metadata"]["name"]]
        if running:
            raise kopf.TemporaryError(f"run-now waits for the running Job {running[0]}", delay=self.config.retry_delay)
        kopf.adopt(job, owner=body)
        try:
            await self.api.create(namespaced("batch/v1", "jobs", meta["namespace"]), job)
            logger.info(f"run-now: Job {job['metadata']['name']} created")
        except ApiError as error:
            if error.status != 409:
                raise kopf.TemporaryError(f"creating the run-now Job: {error}", delay=self.config.retry_delay) from None
        patch.status["lastRunNowRequest"] = request
        patch.status["lastRunNowJobName"] = job["metadata"]["name"]

    async def job_changed(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """A finished Job (scheduled or run-now) -> status.lastRun / lastSuccessfulTime of its S3Backup."""
        if not job_finished(job):
            return
        meta = job["metadata"]
        backup_name = (meta.get("labels") or {}).get(BACKUP_LABEL)
        if not backup_name:
            return
        pods = await self.api.list(namespaced("v1", "pods", meta["namespace"]), {"job-name": meta["name"]})
        run = last_run(job, pods)
        backup = await self.api.get_or_none(self._backup_path(meta["namespace"], backup_name))
        if run is None or backup is None or backup["metadata"].get("deletionTimestamp"):
            return
        status_patch = status_patch_for_run(backup.get("status") or {}, run)
        if status_patch:
            await self.api.merge_patch(self._backup_path(meta["namespace"], backup_name, "status"),
                                       {"status": status_patch})
            logger.info(f"S3Backup {backup_name}: run {run['jobName']} {run['result']}, "
                        f"{run['filesUploaded']} files uploaded, {run['filesFailed']} failed")

    async def _live_owner(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """The S3Backup a labelled child belongs to, unless it is gone or being deleted."""
        backup_name = (meta.get("labels") or {}).get(BACKUP_LABEL)
        if not backup_name:
            return None
        backup = await self.api.get_or_none(self._backup_path(meta["namespace"], backup_name))
        if backup is None or backup["metadata"].get("deletionTimestamp"):
            return None
        return backup

    async def cronjob_changed(self, event_type: str, cronjob: dict[str, Any], logger: logging.Logger) -> None:
        """Copy lastScheduleTime; recreate a CronJob deleted behind the operator's back."""
        meta = cronjob["metadata"]
        backup = await self._live_owner(meta)
        if backup is None:
            return
        backup_name = backup["metadata"]["name"]
        if event_type == "DELETED":
            try:
                render.validate(backup)
                action, _ = await self.apply_cronjob(backup)
                logger.info(f"CronJob {meta['name']} was deleted: {action} again")
            except (InvalidSpec, ApiError) as problem:
                logger.warning(f"CronJob {meta['name']} was deleted and not recreated: {problem}")
            return
        scheduled = (cronjob.get("status") or {}).get("lastScheduleTime")
        if scheduled and (backup.get("status") or {}).get("lastScheduleTime") != scheduled:
            await self.api.merge_patch(self._backup_path(meta["namespace"], backup_name, "status"),
                                       {"status": {"lastScheduleTime": scheduled}})

    async def pod_changed(self, event_type: str, pod: dict[str, Any], logger: logging.Logger) -> None:
        """A backup pod that cannot start (missing Secret, image pull, unschedulable) -> RunBlocked=True."""
        meta = pod["metadata"]
        backup = await self._live_owner(meta)
        if backup is None:
            return
        backup_name = backup["metadata"]["name"]
        conditions = (backup.get("status") or {}).get("conditions") or []
        current = next((c for c in conditions if c.get("type") == RUN_BLOCKED), {})
        blocked = None if event_type == "DELETED" else pod_blocked(pod)
        prefix = f"pod {meta['name']}: "
        if blocked is not None:
            reason, message = blocked
            if current.get("status") == "True" and current.get("message") == prefix + message:
                return
            new = set_condition(conditions, RUN_BLOCKED, True, reason, prefix + message)
            logger.warning(f"S3Backup {backup_name}: run blocked: {reason}: {message}")
        elif current.get("status") == "True" and str(current.get("message", "")).startswith(prefix):
            new = set_condition(conditions, RUN_BLOCKED, False, "PodGone" if event_type == "DELETED" else "PodStarted",
                                f"pod {meta['name']} is no longer blocked")
        else:
            return
        await self.api.merge_patch(self._backup_path(meta["namespace"], backup_name, "status"),
                                   {"status": {"conditions": new}})

    async def cleanup(self, body: dict[str, Any], retry: int, logger: logging.Logger) -> None:
        """On deletion: drop the backup's Pushgateway group, and the CronJob (the GC would, too)."""
        meta, spec = body["metadata"], body.get("spec") or {}
        gateway = render.pushgateway_url(spec, self.config)
        if gateway:
            try:
                await delete_group(gateway, meta["namespace"], meta["name"])
                logger.info(f"Pushgateway group deleted at {redact_url(gateway)}")
            except Exception as error:  # any network failure: retry a few times, never block deletion forever
                message = f"{type(error).__name__}: {error}".replace(gateway, redact_url(gateway))
                if retry + 1 < PUSHGATEWAY_DELETE_ATTEMPTS:
                    raise kopf.TemporaryError(f"deleting the Pushgateway group: {message}",
                                              delay=min(self.config.retry_delay, 10)) from None
                logger.warning(f"Pushgateway group not deleted, giving up: {message}")
        name = render.cronjob_name(meta["name"])
        if await self.api.delete(namespaced("batch/v1", "cronjobs", meta["namespace"], name)):
            logger.info(f"CronJob {name} deleted")

    def observe(self, event_type: str, body: dict[str, Any]) -> None:
        """Keep the metrics' view of one S3Backup in step with its status."""
        meta, status = body["metadata"], body.get("status") or {}
        if event_type == "DELETED":
            self.metrics.forget(meta["namespace"], meta["name"])
            return
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        interval = render.monitored_interval(body, self.config)
        self.metrics.observe(meta["namespace"], meta["name"], BackupState(
            ready=ready.get("status", "Unknown"), reason=ready.get("reason", ""),
            last_result=(status.get("lastRun") or {}).get("result", ""),
            last_success_timestamp=_unix_seconds(status.get("lastSuccessfulTime")),
            created_timestamp=_unix_seconds(meta.get("creationTimestamp")),
            expected_interval_seconds=None if interval is None else float(interval),
        ))


def _unix_seconds(timestamp: Any) -> float | None:
    """An RFC 3339 time of the API ("2026-11-26T02:45:00Z") as Unix seconds; None if absent or malformed."""
    if not timestamp:
        return None
    try:
        return datetime.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def register(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    metrics: OperatorMetrics,
    login: LoginFn = default_login,
) -> Reconciler:
    """Register every handler into `registry`. `login` gives the API connection (tests: the emulator)."""
    api = KubeApi()
    reconciler = Reconciler(config, api, metrics)
    backups = dict(group=GROUP, version=VERSION, plural=PLURAL, registry=registry)
    managed = {"app.kubernetes.io/managed-by": MANAGED_BY, BACKUP_LABEL: kopf.PRESENT}

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's bookkeeping under its own prefix: kopf ignores changes to annotations under its prefix,
        # and s3backup.dev/run-now must stay visible to it.
        settings.persistence.finalizer = f"{GROUP}/cleanup"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=KOPF_PREFIX, key="last-handled-configuration")
        settings.posting.level = logging.WARNING  # k8s Events for problems only; the status tells the rest

    @kopf.on.login(registry=registry)
    def authenticate(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = login(**kwargs)
        if info is not None:
            api.connect(info)
        return info

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await api.close()

    @kopf.on.resume(**backups, id="reconcile")
    @kopf.on.create(**backups, id="reconcile")
    @kopf.on.update(**backups, id="reconcile")
    async def reconcile(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
        await reconciler.reconcile(dict(body), patch, logger)

    if config.resync_interval > 0:
        @kopf.timer(**backups, interval=config.resync_interval, initial_delay=config.resync_interval,
                    idle=min(10.0, config.resync_interval), id="resync")
        async def resync(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
            if not body["metadata"].get("deletionTimestamp"):
                await reconciler.reconcile(dict(body), patch, logger)

    @kopf.on.field(**backups, field=("metadata", "annotations", RUN_NOW_ANNOTATION), id="run-now")
    async def run_now(body: kopf.Body, new: Any, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
        if new:
            await reconciler.run_now(dict(body), str(new), patch, logger)

    @kopf.on.delete(**backups, id="cleanup")
    async def cleanup(body: kopf.Body, retry: int, logger: logging.Logger, **_: Any) -> None:
        await reconciler.cleanup(dict(body), retry, logger)

    @kopf.on.event(**backups, id="observe")
    def observe(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        reconciler.observe(event.get("type") or "", dict(body))

    async def update_status_from(kind: str, update, body: kopf.Body, logger: logging.Logger) -> None:
        """Status updates from children are best effort: a failure is counted and logged, never raised."""
        try:
            await update
        except ApiError as error:
            metrics.reconcile_errors.labels(reason="StatusUpdateFailed").inc()
            logger.warning(f"status not updated from {kind} {body['metadata']['name']}: {error}")

    @kopf.on.event("batch", "v1", "jobs", labels=managed, registry=registry, id="job-finished")
    async def job_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        if event.get("type") != "DELETED":
            await update_status_from("Job", reconciler.job_changed(dict(body), logger), body, logger)

    @kopf.on.event("", "v1", "pods", labels=managed, registry=registry, id="pod-changed")
    async def pod_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        update = reconciler.pod_changed(event.get("type") or "", dict(body), logger)
        await update_status_from("Pod", update, body, logger)

    @kopf.on.event("batch", "v1", "cronjobs", labels=managed, registry=registry, id="cronjob-changed")
    async def cronjob_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        update = reconciler.cronjob_changed(event.get("type") or "", dict(body), logger)
        await update_status_from("CronJob", update, body, logger)

    return reconciler

