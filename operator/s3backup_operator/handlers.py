"""kopf handlers: parse -> render -> apply (server-side, owned CronJob), and observe Jobs/Pods -> status.

Handlers are registered into a given registry (`register`), so tests run a real kopf with its own
registry and connection. They are idempotent: the CronJob has a fixed name and is applied server-side
(an unchanged intent changes nothing), and a run-now Job that already exists counts as made.

The official client is synchronous: the handlers that use it are plain `def`s, which kopf runs in its
thread pool, so the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import threading
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client import Configuration

from s3backup_operator.affinity import (
    PLACEMENT_ANNOTATION,
    claim_name,
    placed_at_run_time,
    placement_patch,
    single_node,
    volume_node,
)
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
    TARGET_LABEL,
    VERSION,
    cronjob_name,
    render_cronjob,
    render_run_now_job,
    run_name,
)
from s3backup_operator.restore_handlers import register_restores
from s3backup_operator.shard_status import recycle_due, sharded_last_run
from s3backup_operator.sharding import is_recycle_job, run_of, shard_count
from s3backup_operator.snapshot import (
    FOR_JOB_ANNOTATION,
    SNAPSHOT_OF_ANNOTATION,
    clone_manifest,
    clone_of,
    deferred,
    next_step,
    owned_by_job,
    snapshot_manifest,
    via_snapshot,
    waiting_job,
)
from s3backup_operator.spec import BackupSpec, Credentials, InvalidSpec, parse, pushgateway_of, schedule_interval
from s3backup_operator.status import (
    job_finished,
    last_run,
    now_iso,
    pod_blocked,
    ready_condition,
    set_condition,
    status_patch_for_run,
    status_patch_for_target_run,
    targets_patch,
)
from s3backup_operator.targets import matching_claims, matching_nodes, pinned_to_node, targets

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
        #: (namespace, name) of the S3Backups that fan out (over Nodes or claims): what a Node or claim that
        #: joins or leaves may concern.
        self.fan_outs: set[tuple[str, str]] = set()
        self._node_labels: dict[str, dict[str, str]] = {}
        self._claim_labels: dict[str, dict[str, str]] = {}
        self._status_locks: dict[tuple[str, str], threading.Lock] = collections.defaultdict(threading.Lock)

    def _status_lock(self, namespace: str, name: str) -> threading.Lock:
        return self._status_locks[(namespace, name)]

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
        if spec.copy_method == "Snapshot":  # the run mounts a clone the operator makes first (snapshot.py)
            manifest = render_cronjob(via_snapshot(spec), self.config)
            template = manifest["spec"]["jobTemplate"]
            deferred(template["spec"], template["metadata"], claim_name(spec.source.volume))
        else:
            manifest = render_cronjob(spec, self.config)
            claim = self.single_node_claim(spec)
            if claim:
                manifest = placed_at_run_time(manifest, claim)
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

    def single_node_claim(self, spec: BackupSpec) -> str:
        """The source's claim if it can only be mounted on one node (ReadWriteOnce), else "".

        Access modes are immutable, so reading them when the CronJob is applied is enough; the node is
        decided per run (`place_job`). A claim not (yet) there or not readable counts as not tied to a node.
        """
        claim = claim_name(spec.source.volume)
        if not claim:
            return ""
        try:
            return claim if single_node(self.api.get_claim(spec.namespace, claim)) else ""
        except ApiError as error:
            if error.status == 403:  # an older chart without the right: as before, the scheduler decides
                return ""
            raise

    def volume_node(self, namespace: str, claim: str) -> str | None:
        """The node of the running pod that mounts `claim`, now."""
        return volume_node(claim, self.api.list_pods(namespace, {}), MANAGED_BY)

    def place_job(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """A scheduled run of a ReadWriteOnce source, created suspended: pin it to the node of the claim's
        running pod (if any), then start it."""
        meta = job["metadata"]
        claim = (meta.get("annotations") or {}).get(PLACEMENT_ANNOTATION)
        if not claim or placement_patch(job, None) is None:
            return
        node = self.volume_node(meta["namespace"], claim)
        patch = placement_patch(job, node)
        if patch is not None:
            self.api.patch_job(meta["namespace"], meta["name"], patch)
            where = f"on node {node}, with the pod that mounts claim {claim}" if node else \
                f"where the scheduler puts it (no running pod mounts claim {claim})"
            logger.info(f"Job {meta['name']} started {where}")

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

        fan_out: dict[str, str] | None = None
        try:
            spec = self.admit(body)
            self.check_credentials(spec)
            if spec.source.fans_out:
                fan_out = self.apply_targets(spec, body, logger)
            else:
                action, _ = self.apply_cronjob(spec, body, logger)
                if status.get("targets"):  # it fanned out before: its targets' CronJobs go
                    self.remove_cronjobs(body, keep={name}, logger=logger)
                    patch.status["targets"] = None
        except InvalidSpec as problem:
            self.metrics.reconcile_errors.labels(reason=problem.reason).inc()
            ours = status.get("cronJobName") and problem.reason != "CronJobConflict"
            kept = " The existing CronJob is left as it was." if ours else ""
            if problem.reason == NOT_ALLOWED:
                try:
                    removed = self.remove_refused_cronjob(body)
                    if status.get("targets"):
                        removed = bool(self.remove_cronjobs(body, keep=set(), logger=logger)) or removed
                        patch.status["targets"] = None
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
        if fan_out is not None:
            self.fan_outs.add((spec.namespace, spec.name))
            for key, value in self.fan_out_status(spec, status, fan_out, generation).items():
                patch.status[key] = value
            return
        zone = f" ({spec.time_zone})" if spec.time_zone else ""
        patch.status["cronJobName"] = name
        patch.status["schedule"] = spec.schedule
        if spec.suspend:
            set_ready(True, "Suspended", f"CronJob {name} is suspended (schedule {spec.schedule}{zone})")
        else:
            set_ready(True, "CronJobReady", f"CronJob {name} runs at {spec.schedule}{zone}")
        if action != "unchanged":
            logger.info(f"CronJob {name} {action} (schedule {spec.schedule}{zone}, suspend={spec.suspend})")

    def fan_out_targets(self, spec: BackupSpec) -> dict[str, BackupSpec]:
        """The runs a fan-out stands for now: one per Node matching its nodeSelector, or per claim of its
        namespace matching its selector."""
        if spec.source.host_path:
            return targets(spec, matching_nodes(spec, self.api.list_nodes(spec.source.node_selector or {})))
        return targets(spec, matching_claims(spec, self.api.list_claims(spec.namespace)))

    def apply_targets(self, spec: BackupSpec, backup: dict[str, Any], logger: logging.Logger) -> dict[str, str]:
        """A fan-out: one CronJob per target (applied as any other), the CronJobs of targets gone deleted.
        Returns {target: CronJob name}."""
        cronjobs: dict[str, str] = {}
        for key, variant in self.fan_out_targets(spec).items():
            action, _ = self.apply_cronjob(variant, backup, logger)
            cronjobs[key] = cronjob_name(run_name(variant))
            if action != "unchanged":
                logger.info(f"CronJob {cronjobs[key]} {action} (target {key})")
        removed = self.remove_cronjobs(backup, keep=set(cronjobs.values()), logger=logger)
        self.forget_targets(spec, removed, logger)
        return cronjobs

    def forget_targets(self, spec: BackupSpec, removed: list[str], logger: logging.Logger) -> None:
        """The Pushgateway groups of targets that left (best effort): their staleness alerts would fire forever."""
        gateway = spec.pushgateway(self.config.default_pushgateway_url)
        for target in removed if gateway else ():
            try:
                asyncio.run(delete_group(gateway, spec.namespace, f"{spec.name}/{target}"))
            except Exception as error:  # any network failure: logged, the group stays (and alerts)
                logger.warning(f"Pushgateway group of target {target} not deleted: {type(error).__name__}")

    def remove_cronjobs(self, backup: dict[str, Any], keep: set[str], logger: logging.Logger) -> list[str]:
        """Delete this S3Backup's CronJobs (those it controls) not named in `keep`: targets that left, or the
        single CronJob of a resource that now fans out. Running Jobs finish. Returns the targets removed."""
        meta = backup["metadata"]
        removed = []
        for cronjob in self.api.list_cronjobs(meta["namespace"], {BACKUP_LABEL: meta["name"]}):
            owners = [ref for ref in cronjob["metadata"].get("ownerReferences") or [] if ref.get("controller")]
            name = cronjob["metadata"]["name"]
            if name in keep or not owners or owners[0].get("uid") != meta.get("uid"):
                continue
            if self.api.delete_cronjob(meta["namespace"], name):
                target = (cronjob["metadata"].get("annotations") or {}).get(TARGET_LABEL)
                if target:
                    removed.append(target)
                logger.info(f"CronJob {name} deleted (its target left)")
        return removed

    def fan_out_status(self, spec: BackupSpec, status: dict[str, Any], cronjobs: dict[str, str],
                       generation: int | None) -> dict[str, Any]:
        """The status of a fan-out after its CronJobs were applied: per target, and Ready."""
        zone = f" ({spec.time_zone})" if spec.time_zone else ""
        kind = "nodes" if spec.source.host_path else "volumes"
        names = f"{kind} {', '.join(cronjobs)}"
        if not cronjobs:
            ready, reason = False, "NoTargets"
            message = ("no Node matches spec.source.nodeSelector" if spec.source.host_path else
                       f"no PersistentVolumeClaim in namespace {spec.namespace} matches spec.source.selector")
            message += ": nothing runs"
        elif spec.suspend:
            ready, reason, message = True, "Suspended", f"{len(cronjobs)} CronJobs ({names}) are suspended"
        else:
            ready, reason = True, "CronJobsReady"
            message = f"{len(cronjobs)} CronJobs ({names}) run at {spec.schedule}{zone}"
        update = {"cronJobName": None, "schedule": spec.schedule,
                  "targets": targets_patch(status.get("targets"), cronjobs),
                  "conditions": ready_condition(status.get("conditions"), ready, reason, message, generation)}
        if generation is not None:
            update["observedGeneration"] = generation
        return update

    def refresh_targets(self, backup: dict[str, Any], logger: logging.Logger) -> None:
        """Re-apply a fan-out's CronJobs outside kopf's handlers (a Node joined, left or was relabelled)."""
        meta = backup["metadata"]
        try:
            spec = self.admit(backup)
        except InvalidSpec:
            return  # its Ready condition already says why; the next reconcile handles it
        if not spec.source.fans_out:
            self.fan_outs.discard((meta["namespace"], meta["name"]))
            return
        status = backup.get("status") or {}
        update = self.fan_out_status(spec, status, self.apply_targets(spec, backup, logger), meta.get("generation"))
        self.api.patch_backup_status(meta["namespace"], meta["name"], update)

    def nodes_changed(self, event_type: str, node: dict[str, Any], logger: logging.Logger) -> None:
        """A Node joined, left or changed its labels: refresh every fan-out (heartbeats change nothing here)."""
        meta = node["metadata"]
        gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
        labels = None if gone else dict(meta.get("labels") or {})
        if self._node_labels.get(meta["name"]) == labels:
            return
        if labels is None:
            self._node_labels.pop(meta["name"], None)
        else:
            self._node_labels[meta["name"]] = labels
        self.refresh_fan_outs(lambda spec: spec.source.host_path, f"Node {meta['name']}", logger)

    def claims_changed(self, event_type: str, claim: dict[str, Any], logger: logging.Logger) -> None:
        """A claim was made, deleted or relabelled: refresh the selector fan-outs of its namespace."""
        meta = claim["metadata"]
        if FOR_JOB_ANNOTATION in (meta.get("annotations") or {}) and event_type == "DELETED":
            backup = self._live_owner(meta)  # a clone of an earlier run is gone: a waiting run may go on
            if backup is not None:
                self.advance_waiting_jobs(meta["namespace"], backup["metadata"]["name"], logger)
        if FOR_JOB_ANNOTATION in (meta.get("annotations") or {}):
            return  # the operator's own clones are never a selector's targets
        gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
        key = f"{meta['namespace']}/{meta['name']}"
        labels = None if gone else dict(meta.get("labels") or {})
        if self._claim_labels.get(key) == labels:
            return
        if labels is None:
            self._claim_labels.pop(key, None)
        else:
            self._claim_labels[key] = labels
        self.refresh_fan_outs(lambda spec: spec.namespace == meta["namespace"] and spec.source.claim_selector,
                              f"claim {key}", logger)

    def refresh_fan_outs(self, concerned: Callable[[BackupSpec], Any], what: str, logger: logging.Logger) -> None:
        """refresh_targets for each known fan-out that `concerned` says the change is about."""
        for namespace, name in sorted(self.fan_outs):
            backup = self.api.get_backup(namespace, name)
            if backup is None or backup["metadata"].get("deletionTimestamp"):
                self.fan_outs.discard((namespace, name))
                continue
            try:
                if concerned(parse(backup)):
                    self.refresh_targets(backup, logger)
            except InvalidSpec:
                continue  # its Ready condition says why
            except ApiError as error:  # the resync and the next event try again
                logger.warning(f"S3Backup {namespace}/{name}: targets not refreshed after {what} changed: {error}")

    def run_now(self, body: dict[str, Any], request: str, patch: kopf.Patch, logger: logging.Logger) -> None:
        """Start the one-off Job for this run-now request (once per distinct annotation value).

        An invalid spec raises InvalidSpec: the request is not recorded, and kopf does not retry it.
        """
        if (body.get("status") or {}).get("lastRunNowRequest") == request:
            return
        spec = self.admit(body)
        try:
            runs = list(self.fan_out_targets(spec).values()) if spec.source.fans_out else [spec]
            jobs = [self.run_now_job(run, request) for run in runs]
        except ApiError as error:
            raise kopf.TemporaryError(f"placing the run-now Jobs: {error}", delay=self.config.retry_delay) from None
        names = {job["metadata"]["name"] for job in jobs}
        try:  # one Job per run (one per target of a fan-out), once no run of the resource is in progress
            running = [j["metadata"]["name"] for j in self.api.list_jobs(spec.namespace, {BACKUP_LABEL: spec.name})
                       if not job_finished(j) and j["metadata"]["name"] not in names]
            if running:
                raise kopf.TemporaryError(f"run-now waits for the running Job {running[0]}",
                                          delay=self.config.retry_delay)
            for job in jobs:
                kopf.append_owner_reference(job, owner=body)
                if self.api.create_job(job):
                    logger.info(f"run-now: Job {job['metadata']['name']} created")
        except ApiError as error:
            raise kopf.TemporaryError(f"creating the run-now Jobs: {error}", delay=self.config.retry_delay) from None
        patch.status["lastRunNowRequest"] = request
        patch.status["lastRunNowJobName"] = ",".join(sorted(names))

    def run_now_job(self, spec: BackupSpec, request: str) -> dict[str, Any]:
        """The run-now Job of one run: through a snapshot (made suspended, started by `advance_snapshot`),
        or pinned now to the node of a ReadWriteOnce claim's pod, or as rendered."""
        if spec.copy_method == "Snapshot":
            job = render_run_now_job(via_snapshot(spec), self.config, request)
            deferred(job["spec"], job["metadata"], claim_name(spec.source.volume))
            return job
        claim = self.single_node_claim(spec)
        node = self.volume_node(spec.namespace, claim) if claim else None
        return render_run_now_job(pinned_to_node(spec, node) if node else spec, self.config, request)

    def advance_snapshot(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """One step for a Job that waits for its snapshot: remove an earlier run's leftovers, take the
        VolumeSnapshot, wait until it is ready, create the clone claim from it, start the Job. Each step is
        driven by an event (of the Job, the snapshot or the clone); all are idempotent."""
        meta = job["metadata"]
        claim = waiting_job(job)
        backup = self._live_owner(meta) if claim else None
        if backup is None:
            return
        namespace, job_name, name = meta["namespace"], meta["name"], clone_of(job)
        snapshot, clone = self.api.get_snapshot(namespace, name), self.api.get_claim(namespace, name)
        step = next_step(job_name, snapshot, clone)
        backup_name = backup["metadata"]["name"]
        if step == "delete-stale":
            for item, delete in ((snapshot, self.api.delete_snapshot), (clone, self.api.delete_claim)):
                if item is not None and not owned_by_job(item, job_name):
                    delete(namespace, name)
                    logger.info(f"{item.get('kind', 'object')} {name} of an earlier run deleted (Job {job_name})")
        elif step == "create-snapshot":
            spec = parse(backup)
            manifest = snapshot_manifest(namespace, name, backup_name, job_name, claim, spec.snapshot_class)
            _owned_by_job(manifest, job)
            if self.api.create_snapshot(manifest):
                logger.info(f"VolumeSnapshot {name} of claim {claim} created for Job {job_name}")
        elif step == "create-clone":
            spec = parse(backup)
            manifest = clone_manifest(namespace, name, backup_name, job_name, snapshot or {},
                                      self.api.get_claim(namespace, claim), spec.clone_storage_class)
            _owned_by_job(manifest, job)
            if self.api.create_claim(manifest):
                logger.info(f"claim {name} restored from VolumeSnapshot {name} for Job {job_name}")
            step = "start"  # the pod binds the clone when it is scheduled: nothing more to wait for
        if step == "start":
            self.api.patch_job(namespace, job_name, {"spec": {"suspend": False}})
            logger.info(f"Job {job_name} started on the snapshot of claim {claim}")
        elif step == "failed":
            message = str(((snapshot or {}).get("status") or {}).get("error", {}).get("message") or "")[:300]
            logger.warning(f"VolumeSnapshot {name} of claim {claim} failed: {message}")

    def advance_waiting_jobs(self, namespace: str, backup_name: str, logger: logging.Logger) -> None:
        """advance_snapshot for each Job of the backup that waits for its snapshot (a snapshot or clone changed)."""
        for job in self.api.list_jobs(namespace, {BACKUP_LABEL: backup_name}):
            if waiting_job(job):
                self.advance_snapshot(job, logger)

    def cleanup_snapshot(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """A finished run through a snapshot: delete its clone claim and its VolumeSnapshot."""
        meta = job["metadata"]
        if SNAPSHOT_OF_ANNOTATION not in (meta.get("annotations") or {}):
            return
        namespace, name = meta["namespace"], clone_of(job)
        clone = self.api.get_claim(namespace, name)
        if clone is not None and owned_by_job(clone, meta["name"]) and self.api.delete_claim(namespace, name):
            logger.info(f"claim {name} (the clone of Job {meta['name']}) deleted")
        snapshot = self.api.get_snapshot(namespace, name)
        if snapshot is not None and owned_by_job(snapshot, meta["name"]) and self.api.delete_snapshot(namespace, name):
            logger.info(f"VolumeSnapshot {name} (of Job {meta['name']}) deleted")

    def job_changed(self, job: dict[str, Any], logger: logging.Logger) -> None:
        """A finished Job (scheduled or run-now) -> status.lastRun / lastSuccessfulTime of its S3Backup."""
        if not job_finished(job):
            self.place_job(job, logger)
            self.advance_snapshot(job, logger)
            return
        self.cleanup_snapshot(job, logger)
        if shard_count(job) > 1 or is_recycle_job(job):
            self.sharded_job_changed(job, logger)
            return
        meta = job["metadata"]
        backup_name = (meta.get("labels") or {}).get(BACKUP_LABEL)
        if not backup_name:
            return
        pods = self.api.list_pods(meta["namespace"], {"job-name": meta["name"]})
        run = last_run(job, pods)
        if run is None:
            return
        self.report_run(meta["namespace"], backup_name, run, _target_of(job), logger)

    def report_run(self, namespace: str, backup_name: str, run: dict[str, Any], target: str | None,
                   logger: logging.Logger) -> None:
        """A finished run -> its Event and status.lastRun / lastSuccessfulTime (once: only when the status moves).

        One status writer per S3Backup at a time: a fan-out's runs end together, and each derives the
        resource's lastRun / lastSuccessfulTime from every target's entry (read, compute, patch).
        """
        with self._status_lock(namespace, backup_name):
            backup = self.api.get_backup(namespace, backup_name)
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
                self.api.create_event(run_event(backup, run, now_iso()))
            except ApiError as error:
                self.metrics.reconcile_errors.labels(reason="EventFailed").inc()
                logger.warning(f"S3Backup {backup_name}: no Event for run {run['jobName']}: {error}")
            self.api.patch_backup_status(namespace, backup_name, status_patch)
            logger.info(f"S3Backup {backup_name}: run {run['jobName']} {run['result']}, "
                        f"{run['filesUploaded']} files uploaded, {run['filesFailed']} failed")
            previous = (status.get("lastRun") or {}).get("shards", 1)
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
            self.report_run(namespace, backup["metadata"]["name"], run, _target_of(run_job), logger)

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
                spec = self.admit(backup)
                if spec.source.fans_out:
                    self.refresh_targets(backup, logger)
                    logger.info(f"CronJob {meta['name']} was deleted: the targets' CronJobs applied again")
                    return
                action, _ = self.apply_cronjob(spec, backup, logger)
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
                for group in metrics_groups(body):
                    await delete_group(gateway, meta["namespace"], group)
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
            self.fan_outs.discard((meta["namespace"], meta["name"]))
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


def metrics_groups(backup: dict[str, Any]) -> list[str]:
    """The `backup` values of the Pushgateway groups an S3Backup's runs push: its name, and `<name>/<target>`
    for each target of a fan-out."""
    name = backup["metadata"]["name"]
    return [name, *(f"{name}/{target}" for target in ((backup.get("status") or {}).get("targets") or {}))]


def _owned_by_job(manifest: dict[str, Any], job: dict[str, Any]) -> None:
    """The Job owns its snapshot and clone: should the operator miss the cleanup, the garbage collector
    removes them with the Job (successfulJobsHistoryLimit)."""
    meta = job["metadata"]
    manifest["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                "uid": meta.get("uid", ""), "blockOwnerDeletion": False}]


def _target_of(job: dict[str, Any]) -> str | None:
    """The fan-out target (a node or a claim) a run's Job is for; None for a resource with one source."""
    return (job["metadata"].get("annotations") or {}).get(TARGET_LABEL)


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

    @kopf.on.event("", "v1", "nodes", registry=registry, id="nodes-changed")
    def node_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        """source.hostPath fan-outs follow the Nodes that match their nodeSelector (kopf serves cluster-scoped
        kinds in either mode; the resync timer re-applies the same, should an event be missed)."""
        update = lambda: reconciler.nodes_changed(event.get("type") or "", dict(body), logger)  # noqa: E731
        update_status_from("Node", update, body, logger)

    @kopf.on.event("snapshot.storage.k8s.io", "v1", "volumesnapshots", labels=managed, registry=registry,
                   id="snapshot-changed")
    def snapshot_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        """copyMethod Snapshot: a snapshot became ready (or an earlier run's is gone): the waiting run goes on."""
        meta = body["metadata"]
        update = lambda: reconciler.advance_waiting_jobs(  # noqa: E731
            meta["namespace"], (meta.get("labels") or {}).get(BACKUP_LABEL, ""), logger)
        update_status_from("VolumeSnapshot", update, body, logger)

    @kopf.on.event("", "v1", "persistentvolumeclaims", registry=registry, id="claims-changed")
    def claim_event(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        """source.selector fan-outs follow the claims of their namespace: new ones join, deleted ones leave."""
        update = lambda: reconciler.claims_changed(event.get("type") or "", dict(body), logger)  # noqa: E731
        update_status_from("PersistentVolumeClaim", update, body, logger)

    register_restores(registry, reconciler)
    return reconciler
