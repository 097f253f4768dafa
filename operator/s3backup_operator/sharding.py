"""Scale-out: one run of a backup as an Indexed Job of N pods, and its final recycle step (pure).

With `spec.transfer.shards: N > 1`, a run's Job is an Indexed Job: N pods at once, pod I running
`s3backup sync ... --shard I/N --run-id <the Job's name>` (the index from the Job controller's
JOB_COMPLETION_INDEX, the Job's name from the pod's `batch.kubernetes.io/job-name` label). A failing
pod is retried on its own (`backoffLimitPerIndex`), the other shards go on. No shard deletes anything.

Once the Job has completed with every index succeeded, the operator creates one more Job, the run's
final step, `s3backup recycle ... --shards N --run-id <the Job's name>`: owned by the run's Job (the
garbage collector removes it with the run), named after it (creating it twice is a 409), and never
created when any shard failed. So **nothing is recycled in a run where any shard failed**; the remote
copies of deleted files stay until a later run in which every shard succeeds. The recycle step has
the whole prefix's guards too (empty source, `--max-recycle` over every shard's candidates).

Here: the Indexed Job and the labels (imported by render.py); recycle_step.py renders the final step from
the run's Job, shard_status.py makes one status.lastRun of the shards and the step, run_reports.py drives it.
"""

from __future__ import annotations

import copy
from typing import Any

from s3backup_operator.spec import BackupSpec

GROUP = "s3backup.dev"  # render.GROUP (render imports this module)
#: On the recycle Job: the step it is ("recycle") and the run (its Job's name) it finishes.
STEP_LABEL = f"{GROUP}/step"
RUN_LABEL = f"{GROUP}/run"
RECYCLE_STEP = "recycle"
#: Set by the Job controller on every pod of a Job, and on each pod of an Indexed Job.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
#: The pod's own environment: the Job controller sets JOB_COMPLETION_INDEX; RUN_ID_ENV is the Job's name.
INDEX_ENV = "JOB_COMPLETION_INDEX"
RUN_ID_ENV = "S3BACKUP_RUN_ID"
#: A usage or configuration error (exit 2) is not retried: the index fails at once.
USAGE_ERROR_EXIT_CODE = 2


def sharded(spec: BackupSpec) -> bool:
    return spec.transfer.shards > 1


def shard_args(count: int) -> list[str]:
    """What each pod adds to `s3backup sync`: its shard and the run id, expanded by the kubelet."""
    return [f"--shard=$({INDEX_ENV})/{count}", f"--run-id=$({RUN_ID_ENV})"]


def run_id_env() -> dict[str, Any]:
    """The run id: the Job's name, from the label the Job controller puts on each of its pods."""
    return {"name": RUN_ID_ENV, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_NAME_LABEL}']"}}}


def indexed_job_spec(job_spec: dict[str, Any], count: int, backoff_limit_per_index: int,
                     container_name: str) -> dict[str, Any]:
    """The Job spec of one unsharded run, made into an Indexed Job of `count` pods, all at once.

    `backoffLimitPerIndex` retries a failed shard on its own, while the others go on; a shard that
    exhausts it fails the Job once every index is done, and the final step is never made. Exit code 2
    (bad arguments) fails its index at once. There is no Job-wide `backoffLimit`: one flaky shard must
    not use up the retries of the others.
    """
    job = copy.deepcopy(job_spec)
    job.pop("backoffLimit", None)
    job.update({
        "completionMode": "Indexed",
        "completions": count,
        "parallelism": count,
        "backoffLimitPerIndex": backoff_limit_per_index,
        "podFailurePolicy": {"rules": [{
            "action": "FailIndex",
            "onExitCodes": {"containerName": container_name, "operator": "In", "values": [USAGE_ERROR_EXIT_CODE]},
        }]},
    })
    container = next(c for c in job["template"]["spec"]["containers"] if c["name"] == container_name)
    container["args"] = [*container["args"], *shard_args(count)]
    container["env"] = [*container["env"], run_id_env()]
    return job


def shard_count(job: dict[str, Any]) -> int:
    """N of a run's Job: its completions when Indexed, else 1."""
    spec = job.get("spec") or {}
    if spec.get("completionMode") != "Indexed":
        return 1
    return int(spec.get("completions") or 1)


def is_recycle_job(job: dict[str, Any]) -> bool:
    return ((job.get("metadata") or {}).get("labels") or {}).get(STEP_LABEL) == RECYCLE_STEP


def run_of(recycle_job: dict[str, Any]) -> str:
    """The name of the run's Job that a recycle Job finishes."""
    return str(((recycle_job.get("metadata") or {}).get("labels") or {}).get(RUN_LABEL) or "")


def completed_indexes(job: dict[str, Any]) -> set[int]:
    """status.completedIndexes ("0-2,4") as a set."""
    return _index_set(((job.get("status") or {}).get("completedIndexes")) or "")


def _index_set(text: str) -> set[int]:
    indexes: set[int] = set()
    for part in filter(None, (item.strip() for item in text.split(","))):
        first, _, last = part.partition("-")
        indexes.update(range(int(first), int(last or first) + 1))
    return indexes
