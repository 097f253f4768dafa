"""S3Backups that fan out: one CronJob per Node (source.hostPath with a nodeSelector) or per claim
(source.selector), kept in step as Nodes and claims join, leave or change their labels."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from s3backup_operator.context import OperatorContext
from s3backup_operator.cronjobs import CronJobs
from s3backup_operator.kubeapi import ApiError
from s3backup_operator.pushgateway import delete_group
from s3backup_operator.render import cronjob_name, run_name
from s3backup_operator.snapshot import FOR_JOB_ANNOTATION
from s3backup_operator.spec import BackupSpec, InvalidSpec, parse
from s3backup_operator.status import ready_update, targets_patch
from s3backup_operator.targets import matching_claims, matching_nodes, targets


class FanOuts:
    def __init__(self, context: OperatorContext, cronjobs: CronJobs) -> None:
        self.context = context
        self.cronjobs = cronjobs
        #: (namespace, name) of the S3Backups that fan out: what a Node or claim that joins or leaves may concern.
        self.known: set[tuple[str, str]] = set()
        self._node_labels: dict[str, dict[str, str]] = {}
        self._claim_labels: dict[str, dict[str, str]] = {}

    def targets(self, spec: BackupSpec) -> dict[str, BackupSpec]:
        """The runs a fan-out stands for now: one per Node matching its nodeSelector, or per claim of its
        namespace matching its selector."""
        api = self.context.api
        if spec.source.host_path:
            return targets(spec, matching_nodes(spec, api.list_nodes(spec.source.node_selector or {})))
        return targets(spec, matching_claims(spec, api.list_claims(spec.namespace)))

    def apply(self, spec: BackupSpec, backup: dict[str, Any], logger: logging.Logger) -> dict[str, str]:
        """One CronJob per target (applied as any other), the CronJobs of targets gone deleted.
        Returns {target: CronJob name}."""
        cronjobs: dict[str, str] = {}
        for key, variant in self.targets(spec).items():
            action, _ = self.cronjobs.apply(variant, backup, logger)
            cronjobs[key] = cronjob_name(run_name(variant))
            if action != "unchanged":
                logger.info(f"CronJob {cronjobs[key]} {action} (target {key})")
        removed = self.cronjobs.remove_others(backup, keep=set(cronjobs.values()), logger=logger)
        self.forget_targets(spec, removed, logger)
        self.known.add((spec.namespace, spec.name))
        return cronjobs

    def forget_targets(self, spec: BackupSpec, removed: list[str], logger: logging.Logger) -> None:
        """The Pushgateway groups of targets that left (best effort): their staleness alerts would fire forever."""
        gateway = spec.pushgateway(self.context.config.default_pushgateway_url)
        for target in removed if gateway else ():
            try:
                asyncio.run(delete_group(gateway, spec.namespace, f"{spec.name}/{target}"))
            except Exception as error:  # any network failure: logged, the group stays (and alerts)
                logger.warning(f"Pushgateway group of target {target} not deleted: {type(error).__name__}")

    def refresh(self, backup: dict[str, Any], logger: logging.Logger) -> None:
        """Re-apply a fan-out's CronJobs outside kopf's handlers (a Node joined, left or was relabelled)."""
        meta = backup["metadata"]
        try:
            spec = self.context.admit(backup)
        except InvalidSpec:
            return  # its Ready condition already says why; the next reconcile handles it
        if not spec.source.fans_out:
            self.known.discard((meta["namespace"], meta["name"]))
            return
        cronjobs = self.apply(spec, backup, logger)
        self.context.api.update_backup_status(
            meta["namespace"], meta["name"], lambda live: fan_out_status(spec, live, cronjobs, meta.get("generation")))

    def nodes_changed(self, event_type: str, node: dict[str, Any], logger: logging.Logger) -> None:
        """A Node joined, left or changed its labels: refresh every fan-out (heartbeats change nothing here)."""
        meta = node["metadata"]
        if self._labels_moved(self._node_labels, meta["name"], event_type, meta):
            self._refresh_concerned(lambda spec: spec.source.host_path, f"Node {meta['name']}", logger)

    def claims_changed(self, event_type: str, claim: dict[str, Any], logger: logging.Logger) -> None:
        """A claim was made, deleted or relabelled: refresh the selector fan-outs of its namespace."""
        meta = claim["metadata"]
        if FOR_JOB_ANNOTATION in (meta.get("annotations") or {}):
            return  # the operator's own clones are never a selector's targets
        key = f"{meta['namespace']}/{meta['name']}"
        if self._labels_moved(self._claim_labels, key, event_type, meta):
            self._refresh_concerned(lambda spec: spec.namespace == meta["namespace"] and spec.source.claim_selector,
                                    f"claim {key}", logger)

    @staticmethod
    def _labels_moved(seen: dict[str, dict[str, str]], key: str, event_type: str, meta: dict[str, Any]) -> bool:
        """Record the object's labels (none once it is gone); whether they differ from those last seen."""
        gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
        labels = None if gone else dict(meta.get("labels") or {})
        if seen.get(key) == labels:
            return False
        if labels is None:
            seen.pop(key, None)
        else:
            seen[key] = labels
        return True

    def _refresh_concerned(self, concerned: Callable[[BackupSpec], Any], what: str, logger: logging.Logger) -> None:
        """refresh for each known fan-out that `concerned` says the change is about."""
        for namespace, name in sorted(self.known):
            backup = self.context.api.get_backup(namespace, name)
            if backup is None or backup["metadata"].get("deletionTimestamp"):
                self.known.discard((namespace, name))
                continue
            try:
                if concerned(parse(backup)):
                    self.refresh(backup, logger)
            except InvalidSpec:
                continue  # its Ready condition says why
            except ApiError as error:  # the resync and the next event try again
                logger.warning(f"S3Backup {namespace}/{name}: targets not refreshed after {what} changed: {error}")


def fan_out_status(spec: BackupSpec, status: dict[str, Any], cronjobs: dict[str, str],
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
    return ready_update(status, ready, reason, message, generation, cronJobName=None, schedule=spec.schedule,
                        targets=targets_patch(status.get("targets"), cronjobs))
