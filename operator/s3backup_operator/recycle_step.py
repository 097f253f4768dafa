"""The final step of a sharded run: its recycle Job, made from the run's own Job (pure).

It is derived from the finished run's Job, not from the S3Backup as it is now: the same destination,
credentials, CA bundle, proxy, pod settings and `--max-recycle` as the shards ran with, whatever changed in
the spec since, and whichever variant of a backup (one S3Backup may render several CronJobs) the run was.
Its one container is the syncer's, running `s3backup recycle` instead of `s3backup sync`, without the
user's volume (an emptyDir stands in at /data: the step reads only the shards' results in the bucket),
without init containers or other containers, and with one attempt: a failed or refused recycle deletes
nothing, and the next run in which every shard succeeds proposes the same deletions again.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from s3backup_operator.render import CONTAINER_NAME, TERMINATION_LOG, bounded_name
from s3backup_operator.sharding import RECYCLE_STEP, RUN_ID_ENV, RUN_LABEL, STEP_LABEL, shard_count

#: `s3backup sync` options that `s3backup recycle` takes too, with the same meaning (the metrics' ones push
#: the step's own group, next to the shards').
SHARED_OPTIONS = ("--endpoint-url", "--region", "--path-style", "--max-recycle", "--pushgateway", "--backup-name",
                  "--backup-namespace")
#: Labels the API server and the Job controller put on a Job and its template: never copied.
_JOB_CONTROLLER_LABELS = ("controller-uid", "job-name")


def recycle_job_name(run_job_name: str) -> str:
    """`<run>-recycle`, shortened with a hash to a Job name's 63 characters: one per run, whoever makes it."""
    return bounded_name(run_job_name, "-recycle", 63)


def recycle_args(sync_args: list[str], run_id: str, count: int) -> list[str]:
    """`s3backup recycle` for the run whose shards ran `sync_args` (["sync", SOURCE, URL, "--opt=value", ...])."""
    url = sync_args[2]
    shared = [arg for arg in sync_args[3:] if arg.partition("=")[0] in SHARED_OPTIONS]
    return ["recycle", url, f"--run-id={run_id}", f"--shards={count}", *shared, f"--summary-json={TERMINATION_LOG}"]


def run_destination(job: Mapping[str, Any]) -> str | None:
    """The s3:// URL a run's Job syncs to (its syncer container's arguments), or None for another Job."""
    containers = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    args = next((c.get("args") or [] for c in containers if c.get("name") == CONTAINER_NAME), [])
    return args[2] if len(args) > 2 and args[0] == "sync" else None


def _own_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    return {key: value for key, value in (labels or {}).items()
            if not key.startswith("batch.kubernetes.io/") and key not in _JOB_CONTROLLER_LABELS}


def render_recycle_job(run_job: Mapping[str, Any]) -> dict[str, Any]:
    """The recycle Job of a finished sharded run's Job (without ownerReferences: the handler adds the run's)."""
    meta, spec = run_job["metadata"], run_job["spec"]
    run_name = meta["name"]
    extra = {STEP_LABEL: RECYCLE_STEP, RUN_LABEL: run_name}
    template = copy.deepcopy(dict(spec["template"]))
    pod = template["spec"]
    container = next(c for c in pod["containers"] if c["name"] == CONTAINER_NAME)
    container["args"] = recycle_args(container["args"], run_name, shard_count(dict(run_job)))
    container["env"] = [item for item in container.get("env") or [] if item.get("name") != RUN_ID_ENV]
    pod["containers"] = [container]
    pod.pop("initContainers", None)
    pod["volumes"] = [{"name": "source", "emptyDir": {}} if volume["name"] == "source" else volume
                      for volume in pod.get("volumes") or []]
    template["metadata"] = {**template.get("metadata", {}),
                            "labels": {**_own_labels((template.get("metadata") or {}).get("labels")), **extra}}
    job_spec: dict[str, Any] = {"backoffLimit": 0, "template": template}
    if spec.get("activeDeadlineSeconds"):
        job_spec["activeDeadlineSeconds"] = spec["activeDeadlineSeconds"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": recycle_job_name(run_name), "namespace": meta["namespace"],
                     "labels": {**_own_labels(meta.get("labels")), **extra}},
        "spec": job_spec,
    }
