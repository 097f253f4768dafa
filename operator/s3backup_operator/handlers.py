"""kopf handlers: parse -> render -> apply (server-side, owned CronJob), and observe Jobs/Pods -> status.

Handlers are registered into a given registry (`register`), so tests run a real kopf with its own
registry and connection. They are idempotent: the CronJob has a fixed name and is applied server-side
(an unchanged intent changes nothing), and a run-now Job that already exists counts as made.

The official client is synchronous: the handlers that use it are plain `def`s, which kopf runs in its
thread pool, so the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client import Configuration

from s3backup_operator.config import OperatorConfig
from s3backup_operator.events import run_event
from s3backup_operator.kubeapi import ApiError, KubeApi
from s3backup_operator.metrics import BackupState, OperatorMetrics
from s3backup_operator.policy import NOT_ALLOWED
from s3backup_operator.policy import check as check_policy
from s3backup_operator.pushgateway import delete_group, prune_shard_groups, redact_url
from s3backup_operator.recycle_step import render_recycle_job, run_destination
from s3backup_operator.render import (
    BACKUP_LABEL,
    CHILD_SELECTOR,
    GROUP,
    MANAGED_BY,
    PLURAL,
    RUN_NOW_ANNOTATION,
    VERSION,
    cronjob_name,
    render_cronjob,
    render_run_now_job,
)
from s3backup_operator.restore_handlers import register_restores
from s3backup_operator.shard_status import recycle_due, sharded_last_run
from s3backup_operator.sharding import is_recycle_job, run_of, shard_count
from s3backup_operator.spec import BackupSpec, Credentials, InvalidSpec, parse, pushgateway_of, schedule_interval
from s3backup_operator.status import (
    job_finished,
    last_run,
    now_iso,
    pod_blocked,
    ready_condition,
    set_condition,
    status_patch_for_run,
)

LoginFn = Callable[..., kopf.ConnectionInfo | None]
ClientConfigFn = Callable[[], Configuration]
PUSHGATEWAY_DELETE_ATTEMPTS = 3
KOPF_PREFIX = f"operator.{GROUP}"
RUN_BLOCKED = "RunBlocked"
#: Reasons that something outside the spec may fix (a Secret created later, a foreign CronJob removed).
RETRIED_REASONS = ("CredentialsSecretNotFound", "CredentialsSecretIncomplete", "CronJobConflict")


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's login through the official client: the in-cluster service account first, then the kubeconfig
    ($KUBECONFIG or ~/.kube/config, exec credential plugins included). It also configures the client's
    default Configuration, which `default_client_config` then copies for the operator's own requests."""
    return kopf.login_via_client(**kwargs)


def default_client_config() -> Configuration:
    return Configuration.get_default_copy()


class Reconciler:
    """The I/O edge: reads the cluster, calls the pure parser and renderers, writes the result."""

    def __init__(self, config: OperatorConfig, metrics: OperatorMetrics, api: KubeApi | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._api = api

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            raise ApiError(0, "NotLoggedIn", "no connection to the Kubernetes API yet")
        return self._api

    def connect(self, configuration: Configuration) -> None:
        """Use this client configuration from now on (the login handler calls it, also on a re-login).

        The previous client is not closed here: a handler in another thread may still be using it.
        Tokens of in-cluster service accounts and exec plugins are refreshed by the client itself.
        """
        self._api = KubeApi(configuration)

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def admit(self, backup: dict[str, Any]) -> BackupSpec:
        """The parsed spec, if the admin's policy allows it in its namespace; else InvalidSpec("NotAllowed")."""
        spec = parse(backup)
        check_policy(spec, self.config.policy)
        return spec

    def remove_refused_cronjob(self, backup: dict[str, Any]) -> bool:
        """Delete this S3Backup's CronJob (if it controls one): a refused spec keeps no schedule running, also
        when the admin withdrew an allowance after the CronJob was made. Running Jobs finish."""
        meta = backup["metadata"]
        name = cronjob_name(meta["name"])
        live = self.api.get_cronjob(meta["namespace"], name)
        owners = [ref for ref in ((live or {}).get("metadata") or {}).get("ownerReferences") or []
                  if ref.get("controller")]
        if live is None or not owners or owners[0].get("uid") != meta.get("uid"):
            return False
        return self.api.delete_cronjob(meta["namespace"], name)

    def check_credentials(self, spec: BackupSpec) -> None:
        """The credentials Secret must exist with both keys. Only key names are looked at, never values."""
        self.check_secret(spec.namespace, spec.destination.credentials)

    def check_secret(self, namespace: str, credentials: Credentials | None,
                     field: str = "spec.destination.credentialsSecretRef") -> None:
        """check_credentials for any resource's credentialsSecretRef (S3Backup, S3Restore)."""
        if credentials is None or not self.config.check_secrets:
            return
        try:
            keys = self.api.secret_keys(namespace, credentials.secret_name)
        except ApiError as error:
            if error.status == 403:  # not allowed to look (RBAC without Secrets): the job's pod will tell
                return
            raise
        if keys is None:
            raise InvalidSpec("CredentialsSecretNotFound",
                              f"Secret {credentials.secret_name!r} ({field}) not found in namespace "
                              f"{namespace!r}")
        missing = [key for key in (credentials.access_key_key, credentials.secret_key_key) if key not in keys]
        if missing:
            raise InvalidSpec("CredentialsSecretIncomplete",
                              f"Secret {credentials.secret_name!r} has no key {', '.join(missing)}")

    def apply_cronjob(self, spec: BackupSpec, backup: dict[str, Any],
                      logger: logging.Logger) -> tuple[str, dict[str, Any]]:
        """Server-side apply of the CronJob. Returns ("created" | "updated" | "unchanged", applied object).

        A CronJob of that name that this S3Backup does not control is never taken over.
        """
        manifest = render_cronjob(spec, self.config)
        kopf.append_owner_reference(manifest, owner=backup)  # controller, blockOwnerDeletion: the GC's link
        name = manifest["metadata"]["name"]
        live = self.api.get_cronjob(spec.namespace, name)
        if live is not None:
            owners = [ref for ref in (live.get("metadata") or {}).get("ownerReferences") or [] if ref.get("controller")]
            if not owners or owners[0].get("uid") != backup["metadata"].get("uid"):
                raise InvalidSpec("CronJobConflict",
                                  f"CronJob {name!r} exists and is not owned by this S3Backup; delete or rename it")
            if self.api.upgrade_field_ownership(live):  # made by a version before server-side apply
                logger.info(f"CronJob {name}: fields of the earlier merge patches now owned by the apply")
        applied = self.api.apply_cronjob(manifest)
        if live is None:
            return "created", applied
        version = (applied.get("metadata") or {}).get("resourceVersion")
        return ("unchanged" if version == live["metadata"].get("resourceVersion") else "updated"), applied

    def reconcile(self, body: dict[str, Any], patch: kopf.Patch, logger: logging.Logger) -> None:
        """Parse, check the Secret, apply the CronJob; the outcome goes to the Ready condition.

        An invalid spec raises InvalidSpec (a kopf.PermanentError: kopf logs it and posts it as an Event);
        what the cluster may fix later raises a TemporaryError.
        """
        meta, status = body["metadata"], body.get("status") or {}
        generation = meta.get("generation")
        name = cronjob_name(meta["name"])

        def set_ready(ready: bool, reason: str, message: str) -> None:
            patch.status["conditions"] = ready_condition(status.get("conditions"), ready, reason, message,
                                                         generation)
            if generation is not None:
                patch.status["observedGeneration"] = generation

        try:
            spec = self.admit(body)
            self.check_credentials(spec)
            action, _ = self.apply_cronjob(spec, body, logger)
        except InvalidSpec as problem:
            self.metrics.reconcile_errors.labels(reason=problem.reason).inc()
            ours = status.get("cronJobName") and problem.reason != "CronJobConflict"
            kept = " The existing CronJob is left as it was." if ours else ""
            if problem.reason == NOT_ALLOWED:
                try:
                    removed = self.remove_refused_cronjob(body)
                except ApiError as error:
                    raise kopf.TemporaryError(f"deleting CronJob {name!r} of a refused spec: {error}",
                                              delay=self.config.retry_delay) from None
                kept = f" CronJob {name} deleted." if removed else ""
                if removed:
                    logger.warning(f"CronJob {name} deleted: {problem.message}")
                patch.status["cronJobName"] = None
            set_ready(False, problem.reason, problem.message + kept)
            if problem.reason in RETRIED_REASONS:
                # Something outside the spec may fix it: look again later (a backoff, never a crash loop).
                logger.warning(f"Not ready: {problem.reason}: {problem.message}")
                raise kopf.TemporaryError(problem.message, delay=self.config.retry_delay) from None
            raise
        except ApiError as error:
            self.metrics.reconcile_errors.labels(reason="ApiError").inc()
            set_ready(False, "ApiError", f"Kubernetes API request failed (retrying): {error}")
            raise kopf.TemporaryError(f"reconciling CronJob {name!r}: {error}", delay=self.config.retry_delay) from None
        zone = f" ({spec.time_zone})" if spec.time_zone else ""
        patch.status["cronJobName"] = name
        patch.status["schedule"] = spec.schedule
        if spec.suspend:
            set_ready(True, "Suspended", f"CronJob {name} is suspended (schedule {spec.schedule}{zone})")
        else:
            set_ready(True, "CronJobReady", f"CronJob {name} runs at {spec.schedule}{zone}")
        if action != "unchanged":
            logger.info(f"CronJob {name} {action} (schedule {spec.schedule}{zone}, suspend={spec.suspend})")

    def run_now(self, body: dict[str, Any], request: str, patch: kopf.Patch, logger: logging.Logger) -> None:
        """Start the one-off Job for this run-now request (once per distinct annotation value).

        An invalid spec raises InvalidSpec: the request is not recorded, and kopf does not retry it.
        """
        if (body.get("status") or {}).get("lastRunNowRequest") == request:
            return
        spec = self.admit(body)
        job = render_run_now_job(spec, self.config, request)
        try:
            jobs = self.api.list_jobs(spec.namespace, {BACKUP_LABEL: spec.name})
            running = [j["metadata"]["name"] for j in jobs
                       if not job_finished(j) and j["metadata"]["name"] != job["metadata"]["name"]]
            if running:
                raise kopf.TemporaryError(f"run-now waits for the running Job {running[0]}",
                                          delay=self.config.retry_delay)
            kopf.append_owner_reference(job, owner=body)
            if self.api.create_job(job):
                logger.info(f"run-now: Job {job['metadata']['name']} created")
        except ApiError as error:
            raise kopf.TemporaryError(f"creating the run-now Job: {error}", delay=self.config.retry_delay) from None
        patch.status["lastRunNowRequest"] = request
        patch.status["lastRunNowJobName"] = job["metadata"]["name"]

    def job_changed(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """A finished Job (scheduled or run-now) -> status.lastRun / lastSuccessfulTime of its S3Backup."""
        if not job_finished(job):
            return
        if shard_count(job) > 1 or is_recycle_job(job):
            self.sharded_job_changed(job, logger)
            return
        meta = job["metadata"]
        backup_name = (meta.get("labels") or {}).get(BACKUP_LABEL)
        if not backup_name:
            return
        pods = self.api.list_pods(meta["namespace"], {"job-name": meta["name"]})
        run = last_run(job, pods)
        backup = self.api.get_backup(meta["namespace"], backup_name)
        if run is None or backup is None or backup["metadata"].get("deletionTimestamp"):
            return
        self.report_run(backup, run, logger)

    def report_run(self, backup: dict[str, Any], run: dict[str, Any], logger: logging.Logger) -> None:
        """A finished run -> its Event and status.lastRun / lastSuccessfulTime (once: only when the status moves)."""
        meta = backup["metadata"]
        backup_name = meta["name"]
        status_patch = status_patch_for_run(backup.get("status") or {}, run)
        if status_patch:
            # Once per run: only when the status moves to it, and by a fixed name. Before the status, so a
            # failed status patch (retried with the next event) cannot lose it; its own failure is logged only.
            try:
                self.api.create_event(run_event(backup, run, now_iso()))
            except ApiError as error:
                self.metrics.reconcile_errors.labels(reason="EventFailed").inc()
                logger.warning(f"S3Backup {backup_name}: no Event for run {run['jobName']}: {error}")
            self.api.patch_backup_status(meta["namespace"], backup_name, status_patch)
            logger.info(f"S3Backup {backup_name}: run {run['jobName']} {run['result']}, "
                        f"{run['filesUploaded']} files uploaded, {run['filesFailed']} failed")
            previous = ((backup.get("status") or {}).get("lastRun") or {}).get("shards", 1)
            if run.get("shards", 1) != previous:
                self.prune_metrics(backup, run.get("shards", 1), logger)

    def prune_metrics(self, backup: dict[str, Any], shards: int, logger: logging.Logger) -> None:
        """The first run after a change of spec.transfer.shards has pushed its groups: drop those the backup
        no longer pushes, which would add to the dashboard's sums. Best effort: a failure is logged only."""
        meta = backup["metadata"]
        gateway = pushgateway_of(backup, self.config.default_pushgateway_url)
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

    def sharded_job_changed(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """A finished Job of a sharded run (sharding.py): its shards' Indexed Job, or its final recycle step.

        When every shard succeeded, the recycle Job is made and the status waits for it; when one failed, no
        recycle Job is ever made and the status names the failed shards at once.
        """
        meta = job["metadata"]
        backup = self._live_owner(meta)
        if backup is None:
            return
        recycle_job, skipped = None, ""
        if is_recycle_job(job):
            run_job, recycle_job = self.api.get_job(meta["namespace"], run_of(job)), job
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
        pods = self.api.list_pods(namespace, {"job-name": run_job["metadata"]["name"]})
        recycle_pods = self.api.list_pods(namespace, {"job-name": recycle_job["metadata"]["name"]}) \
            if recycle_job else []
        run = sharded_last_run(run_job, pods, recycle_job, recycle_pods, skipped)
        if run is not None:
            self.report_run(backup, run, logger)

    def _later_run(self, backup: dict[str, Any], run_job: dict[str, Any]) -> bool:
        """Whether a later run to the same destination has started: a run's final step is never made after
        that. A late recycle could delete the copy of a file that came back, unchanged, after the run."""
        started, destination = run_job["metadata"].get("creationTimestamp") or "", run_destination(run_job)
        jobs = self.api.list_jobs(run_job["metadata"]["namespace"], {BACKUP_LABEL: backup["metadata"]["name"]})
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
        if self.api.create_job(manifest):
            logger.info(f"Job {manifest['metadata']['name']} created: the final recycle step of "
                        f"{run_job['metadata']['name']}")

    def _live_owner(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """The S3Backup a labelled child belongs to, unless it is gone or being deleted."""
        backup_name = (meta.get("labels") or {}).get(BACKUP_LABEL)
        if not backup_name:
            return None
        backup = self.api.get_backup(meta["namespace"], backup_name)
        if backup is None or backup["metadata"].get("deletionTimestamp"):
            return None
        return backup

    def cronjob_changed(self, event_type: str, cronjob: dict[str, Any], logger: logging.Logger) -> None:
        """Copy lastScheduleTime; recreate a CronJob deleted behind the operator's back."""
        meta = cronjob["metadata"]
        backup = self._live_owner(meta)
        if backup is None:
            return
        backup_name = backup["metadata"]["name"]
        if event_type == "DELETED":
            try:
                action, _ = self.apply_cronjob(self.admit(backup), backup, logger)
                logger.info(f"CronJob {meta['name']} was deleted: {action} again")
            except (InvalidSpec, ApiError) as problem:
                logger.warning(f"CronJob {meta['name']} was deleted and not recreated: {problem}")
            return
        scheduled = (cronjob.get("status") or {}).get("lastScheduleTime")
        if scheduled and (backup.get("status") or {}).get("lastScheduleTime") != scheduled:
            self.api.patch_backup_status(meta["namespace"], backup_name, {"lastScheduleTime": scheduled})

    def pod_changed(self, event_type: str, pod: dict[str, Any], logger: logging.Logger) -> None:
        """A backup pod that cannot start (missing Secret, image pull, unschedulable) -> RunBlocked=True."""
        meta = pod["metadata"]
        backup = self._live_owner(meta)
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
        self.api.patch_backup_status(meta["namespace"], backup_name, {"conditions": new})

    async def cleanup(self, body: dict[str, Any], retry: int, logger: logging.Logger) -> None:
        """On deletion: drop the backup's Pushgateway group, and the CronJob (the GC would, too)."""
        meta = body["metadata"]
        gateway = pushgateway_of(body, self.config.default_pushgateway_url)
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
        name = cronjob_name(meta["name"])
        try:
            if await asyncio.to_thread(self.api.delete_cronjob, meta["namespace"], name):
                logger.info(f"CronJob {name} deleted")
        except ApiError as error:
            raise kopf.TemporaryError(f"deleting CronJob {name!r}: {error}", delay=self.config.retry_delay) from None

    def observe(self, event_type: str, body: dict[str, Any]) -> None:
        """Keep the metrics' view of one S3Backup in step with its status."""
        meta, status = body["metadata"], body.get("status") or {}
        if event_type == "DELETED":
            self.metrics.forget(meta["namespace"], meta["name"])
            return
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        interval = schedule_interval(body)
        run = status.get("lastRun") or {}
        self.metrics.observe(meta["namespace"], meta["name"], BackupState(
            ready=ready.get("status", "Unknown"), reason=ready.get("reason", ""),
            last_result=run.get("result", ""),
            last_run_timestamp=_unix_seconds(run.get("completionTime")),
            last_run_files={outcome: int(run.get(key) or 0) for outcome, key in (
                ("uploaded", "filesUploaded"), ("recycled", "filesRecycled"), ("failed", "filesFailed"))}
            if run else None,
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
    client_config: ClientConfigFn = default_client_config,
) -> Reconciler:
    """Register every handler into `registry`. `login` gives kopf's connection and `client_config` then the
    official client's (tests: both pointing at the emulator)."""
    reconciler = Reconciler(config, metrics)
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
            reconciler.connect(client_config())
        return info

    @kopf.on.cleanup(registry=registry)
    def close(**_: Any) -> None:
        reconciler.close()

    @kopf.on.resume(**backups, id="reconcile")
    @kopf.on.create(**backups, id="reconcile")
    @kopf.on.update(**backups, id="reconcile")
    def reconcile(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
        reconciler.reconcile(dict(body), patch, logger)

    if config.resync_interval > 0:
        @kopf.timer(**backups, interval=config.resync_interval, initial_delay=config.resync_interval,
                    idle=min(10.0, config.resync_interval), id="resync")
        def resync(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
            if body["metadata"].get("deletionTimestamp"):
                return
            try:
                reconciler.reconcile(dict(body), patch, logger)
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

    @kopf.on.event("batch", "v1", "jobs", labels=managed, registry=registry, id="job-finished")
    def job_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        if event.get("type") != "DELETED":
            update_status_from("Job", lambda: reconciler.job_changed(dict(body), logger), body, logger)

    @kopf.on.event("", "v1", "pods", labels=managed, registry=registry, id="pod-changed")
    def pod_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        update = lambda: reconciler.pod_changed(event.get("type") or "", dict(body), logger)  # noqa: E731
        update_status_from("Pod", update, body, logger)

    @kopf.on.event("batch", "v1", "cronjobs", labels=managed, registry=registry, id="cronjob-changed")
    def cronjob_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        update = lambda: reconciler.cronjob_changed(event.get("type") or "", dict(body), logger)  # noqa: E731
        update_status_from("CronJob", update, body, logger)

    register_restores(registry, reconciler)
    return reconciler
