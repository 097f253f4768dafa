"""The S3Backup's CronJobs: applied server-side, never taken over from another owner, removed when not wanted."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from s3backup_operator.affinity import claim_name, placed_at_run_time
from s3backup_operator.context import OperatorContext, controller_uid
from s3backup_operator.render import BACKUP_LABEL, TARGET_LABEL, cronjob_name, render_cronjob
from s3backup_operator.run_gates import RunGates
from s3backup_operator.snapshot import deferred, via_snapshot
from s3backup_operator.spec import BackupSpec, InvalidSpec


class CronJobs:
    def __init__(self, context: OperatorContext, gates: RunGates) -> None:
        self.context = context
        self.gates = gates

    def apply(self, spec: BackupSpec, backup: dict[str, Any], logger: logging.Logger) -> tuple[str, dict[str, Any]]:
        """Server-side apply of the CronJob. Returns ("created" | "updated" | "unchanged", applied object).

        A CronJob of that name that this S3Backup does not control is never taken over.
        """
        config, api = self.context.config, self.context.api
        if spec.copy_method == "Snapshot":  # the run mounts a clone the operator makes first (snapshot.py)
            manifest = render_cronjob(via_snapshot(spec), config)
            template = manifest["spec"]["jobTemplate"]
            deferred(template["spec"], template["metadata"], claim_name(spec.source.volume))
        else:
            manifest = render_cronjob(spec, config)
            claim = self.gates.single_node_claim(spec)
            if claim:
                manifest = placed_at_run_time(manifest, claim)
        kopf.append_owner_reference(manifest, owner=backup)  # controller, blockOwnerDeletion: the GC's link
        name = manifest["metadata"]["name"]
        live = api.get_cronjob(spec.namespace, name)
        if live is not None:
            if controller_uid(live) is None or controller_uid(live) != backup["metadata"].get("uid"):
                raise InvalidSpec("CronJobConflict",
                                  f"CronJob {name!r} exists and is not owned by this S3Backup; delete or rename it")
            if api.upgrade_field_ownership(live):  # made by a version before server-side apply
                logger.info(f"CronJob {name}: fields of the earlier merge patches now owned by the apply")
        applied = api.apply_cronjob(manifest)
        if live is None:
            return "created", applied
        version = (applied.get("metadata") or {}).get("resourceVersion")
        return ("unchanged" if version == live["metadata"].get("resourceVersion") else "updated"), applied

    def remove_refused(self, backup: dict[str, Any]) -> bool:
        """Delete this S3Backup's CronJob (if it controls one): a refused spec keeps no schedule running, also
        when the admin withdrew an allowance after the CronJob was made. Running Jobs finish."""
        meta = backup["metadata"]
        name = cronjob_name(meta["name"])
        live = self.context.api.get_cronjob(meta["namespace"], name)
        if live is None or controller_uid(live) is None or controller_uid(live) != meta.get("uid"):
            return False
        return self.context.api.delete_cronjob(meta["namespace"], name)

    def remove_others(self, backup: dict[str, Any], keep: set[str], logger: logging.Logger) -> list[str]:
        """Delete this S3Backup's CronJobs (those it controls) not named in `keep`: targets that left, or the
        single CronJob of a resource that now fans out. Running Jobs finish. Returns the targets removed."""
        meta = backup["metadata"]
        removed = []
        for cronjob in self.context.api.list_cronjobs(meta["namespace"], {BACKUP_LABEL: meta["name"]}):
            name = cronjob["metadata"]["name"]
            if name in keep or controller_uid(cronjob) is None or controller_uid(cronjob) != meta.get("uid"):
                continue
            if self.context.api.delete_cronjob(meta["namespace"], name):
                target = (cronjob["metadata"].get("annotations") or {}).get(TARGET_LABEL)
                if target:
                    removed.append(target)
                logger.info(f"CronJob {name} deleted (its target left)")
        return removed
