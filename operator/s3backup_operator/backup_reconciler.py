"""An S3Backup itself: parse -> render -> apply its CronJob(s), run-now requests, deletion, and its metrics."""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import kopf

from s3backup_operator.context import OperatorContext
from s3backup_operator.cronjobs import CronJobs
from s3backup_operator.fan_outs import FanOuts, fan_out_status
from s3backup_operator.kubeapi import ApiError, StatusChange
from s3backup_operator.metrics import BackupState
from s3backup_operator.policy import NOT_ALLOWED
from s3backup_operator.pushgateway import delete_group, redact_url
from s3backup_operator.render import BACKUP_LABEL, cronjob_name
from s3backup_operator.run_gates import RunGates
from s3backup_operator.spec import InvalidSpec, pushgateway_of, schedule_interval
from s3backup_operator.status import job_finished, ready_update

PUSHGATEWAY_DELETE_ATTEMPTS = 3
#: Reasons that something outside the spec may fix (a Secret created later, a foreign CronJob removed).
RETRIED_REASONS = ("CredentialsSecretNotFound", "CredentialsSecretIncomplete", "CronJobConflict")


class BackupReconciler:
    def __init__(self, context: OperatorContext, cronjobs: CronJobs, fan_outs: FanOuts, gates: RunGates) -> None:
        self.context = context
        self.cronjobs = cronjobs
        self.fan_outs = fan_outs
        self.gates = gates

    def reconcile(self, body: dict[str, Any], logger: logging.Logger) -> None:
        """Parse, check the Secret, apply the CronJob; the outcome goes to the Ready condition.

        An invalid spec raises InvalidSpec (a kopf.PermanentError: kopf logs it and posts it as an Event);
        what the cluster may fix later raises a TemporaryError.
        """
        context = self.context
        meta, status = body["metadata"], body.get("status") or {}
        generation = meta.get("generation")
        name = cronjob_name(meta["name"])

        fields: dict[str, Any] = {}  # written with Ready

        def write_status(change: StatusChange) -> None:
            """Onto the live status, not kopf's patch: see kubeapi.update_status."""
            try:
                context.api.update_backup_status(meta["namespace"], meta["name"], change)
            except ApiError as error:  # the status must say it: the handler runs again
                context.metrics.reconcile_errors.labels(reason="StatusUpdateFailed").inc()
                raise kopf.TemporaryError(f"status not written: {error}", delay=context.config.retry_delay) \
                    from None

        def set_ready(ready: bool, reason: str, message: str) -> None:
            write_status(lambda live: ready_update(live, ready, reason, message, generation, **fields))

        fan_out: dict[str, str] | None = None
        try:
            spec = context.admit(body)
            context.check_secret(spec.namespace, spec.destination.credentials)
            if spec.source.fans_out:
                fan_out = self.fan_outs.apply(spec, body, logger)
            else:
                action, _ = self.cronjobs.apply(spec, body, logger)
                if status.get("targets"):  # it fanned out before: its targets' CronJobs go
                    self.cronjobs.remove_others(body, keep={name}, logger=logger)
                    fields["targets"] = None
        except InvalidSpec as problem:
            context.metrics.reconcile_errors.labels(reason=problem.reason).inc()
            ours = status.get("cronJobName") and problem.reason != "CronJobConflict"
            kept = " The existing CronJob is left as it was." if ours else ""
            if problem.reason == NOT_ALLOWED:
                try:
                    removed = self.cronjobs.remove_refused(body)
                    if status.get("targets"):
                        removed = bool(self.cronjobs.remove_others(body, keep=set(), logger=logger)) or removed
                        fields["targets"] = None
                except ApiError as error:
                    raise kopf.TemporaryError(f"deleting CronJob {name!r} of a refused spec: {error}",
                                              delay=context.config.retry_delay) from None
                kept = f" CronJob {name} deleted." if removed else ""
                if removed:
                    logger.warning(f"CronJob {name} deleted: {problem.message}")
                fields["cronJobName"] = None
            set_ready(False, problem.reason, problem.message + kept)
            if problem.reason in RETRIED_REASONS:
                # Something outside the spec may fix it: look again later (a backoff, never a crash loop).
                logger.warning(f"Not ready: {problem.reason}: {problem.message}")
                raise kopf.TemporaryError(problem.message, delay=context.config.retry_delay) from None
            raise
        except ApiError as error:
            context.metrics.reconcile_errors.labels(reason="ApiError").inc()
            set_ready(False, "ApiError", f"Kubernetes API request failed (retrying): {error}")
            raise kopf.TemporaryError(f"reconciling CronJob {name!r}: {error}",
                                      delay=context.config.retry_delay) from None
        if fan_out is not None:
            write_status(lambda live: fan_out_status(spec, live, fan_out, generation))
            return
        zone = f" ({spec.time_zone})" if spec.time_zone else ""
        fields["cronJobName"] = name
        fields["schedule"] = spec.schedule
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
        retry_delay = self.context.config.retry_delay
        spec = self.context.admit(body)
        try:
            runs = list(self.fan_outs.targets(spec).values()) if spec.source.fans_out else [spec]
            jobs = [self.gates.run_now_job(run, request) for run in runs]
        except ApiError as error:
            raise kopf.TemporaryError(f"placing the run-now Jobs: {error}", delay=retry_delay) from None
        names = {job["metadata"]["name"] for job in jobs}
        api = self.context.api
        try:  # one Job per run (one per target of a fan-out), once no run of the resource is in progress
            running = [j["metadata"]["name"] for j in api.list_jobs(spec.namespace, {BACKUP_LABEL: spec.name})
                       if not job_finished(j) and j["metadata"]["name"] not in names]
            if running:
                raise kopf.TemporaryError(f"run-now waits for the running Job {running[0]}", delay=retry_delay)
            for job in jobs:
                kopf.append_owner_reference(job, owner=body)
                if api.create_job(job):
                    logger.info(f"run-now: Job {job['metadata']['name']} created")
        except ApiError as error:
            raise kopf.TemporaryError(f"creating the run-now Jobs: {error}", delay=retry_delay) from None
        patch.status["lastRunNowRequest"] = request
        patch.status["lastRunNowJobName"] = ",".join(sorted(names))

    def cronjob_changed(self, event_type: str, cronjob: dict[str, Any], logger: logging.Logger) -> None:
        """Copy lastScheduleTime; recreate a CronJob deleted behind the operator's back."""
        meta = cronjob["metadata"]
        backup = self.context.live_owner(meta)
        if backup is None:
            return
        backup_name = backup["metadata"]["name"]
        if event_type == "DELETED":
            try:
                spec = self.context.admit(backup)
                if spec.source.fans_out:
                    self.fan_outs.refresh(backup, logger)
                    logger.info(f"CronJob {meta['name']} was deleted: the targets' CronJobs applied again")
                    return
                action, _ = self.cronjobs.apply(spec, backup, logger)
                logger.info(f"CronJob {meta['name']} was deleted: {action} again")
            except (InvalidSpec, ApiError) as problem:
                logger.warning(f"CronJob {meta['name']} was deleted and not recreated: {problem}")
            return
        scheduled = (cronjob.get("status") or {}).get("lastScheduleTime")
        if scheduled and (backup.get("status") or {}).get("lastScheduleTime") != scheduled:
            self.context.api.patch_backup_status(meta["namespace"], backup_name, {"lastScheduleTime": scheduled})

    async def cleanup(self, body: dict[str, Any], retry: int, logger: logging.Logger) -> None:
        """On deletion: drop the backup's Pushgateway group, and the CronJob (the GC would, too)."""
        meta, config = body["metadata"], self.context.config
        gateway = pushgateway_of(body, config.default_pushgateway_url)
        if gateway:
            try:
                for group in metrics_groups(body):
                    await delete_group(gateway, meta["namespace"], group)
                logger.info(f"Pushgateway group deleted at {redact_url(gateway)}")
            except Exception as error:  # any network failure: retry a few times, never block deletion forever
                message = f"{type(error).__name__}: {error}".replace(gateway, redact_url(gateway))
                if retry + 1 < PUSHGATEWAY_DELETE_ATTEMPTS:
                    raise kopf.TemporaryError(f"deleting the Pushgateway group: {message}",
                                              delay=min(config.retry_delay, 10)) from None
                logger.warning(f"Pushgateway group not deleted, giving up: {message}")
        name = cronjob_name(meta["name"])
        try:
            if await asyncio.to_thread(self.context.api.delete_cronjob, meta["namespace"], name):
                logger.info(f"CronJob {name} deleted")
        except ApiError as error:
            raise kopf.TemporaryError(f"deleting CronJob {name!r}: {error}", delay=config.retry_delay) from None

    def observe(self, event_type: str, body: dict[str, Any]) -> None:
        """Keep the metrics' view of one S3Backup in step with its status."""
        meta, status = body["metadata"], body.get("status") or {}
        metrics = self.context.metrics
        if event_type == "DELETED":
            metrics.forget(meta["namespace"], meta["name"])
            self.fan_outs.known.discard((meta["namespace"], meta["name"]))
            return
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        interval = schedule_interval(body)
        run = status.get("lastRun") or {}
        metrics.observe(meta["namespace"], meta["name"], BackupState(
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


def metrics_groups(backup: dict[str, Any]) -> list[str]:
    """The `backup` values of the Pushgateway groups an S3Backup's runs push: its name, and `<name>/<target>`
    for each target of a fan-out."""
    name = backup["metadata"]["name"]
    return [name, *(f"{name}/{target}" for target in ((backup.get("status") or {}).get("targets") or {}))]


def _unix_seconds(timestamp: Any) -> float | None:
    """An RFC 3339 time of the API ("2026-11-26T02:45:00Z") as Unix seconds; None if absent or malformed."""
    if not timestamp:
        return None
    try:
        return datetime.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
