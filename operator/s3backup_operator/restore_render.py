"""RestoreSpec -> the one restore Job (pure). The pod is the backup pod's, with the PVC mounted read-write.

The Job's name is fixed by the S3Restore's name: creating it again is a 409, never a second run.
"""

from __future__ import annotations

from typing import Any

from s3backup_operator.config import OperatorConfig
from s3backup_operator.render import GROUP, MANAGED_BY, TERMINATION_LOG, bounded_name, build_pod_template
from s3backup_operator.restore_spec import RestoreSpec

RESTORE_PLURAL = "s3restores"
RESTORE_KIND = "S3Restore"
RESTORE_LABEL = f"{GROUP}/restore"
#: A usage or configuration error (exit 2) comes back on every attempt: the Job fails at once. Other
#: failures (exit 1: some files failed) are retried, and a retry resumes where the last attempt stopped.
USAGE_ERROR_EXIT_CODE = 2


def restore_job_name(restore_name: str) -> str:
    """`<name>-restore`, shortened with a hash to the 63 characters a Job name (and its pods' label) may have."""
    return bounded_name(restore_name, "-restore", 63)


def restore_labels(restore_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "s3backup",
        "app.kubernetes.io/instance": restore_name,
        "app.kubernetes.io/component": "restore",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        RESTORE_LABEL: restore_name,
    }


def restore_args(spec: RestoreSpec) -> list[str]:
    """The `s3backup restore ...` arguments; each option with a value is one `--option=value` argument."""
    source = spec.source
    options: list[tuple[str, Any]] = []
    if source.endpoint:
        options.append(("--endpoint-url", source.endpoint))
    if source.region:
        options.append(("--region", source.region))
    if source.path_style:
        options.append(("--path-style", None))
    if spec.as_of:
        options.append(("--as-of", spec.as_of))
    if spec.overwrite:
        options.append(("--overwrite", None))
    options += [("--include", pattern) for pattern in spec.includes]
    options += [("--exclude", pattern) for pattern in spec.excludes]
    options += [("--concurrency", spec.concurrency), ("--summary-json", TERMINATION_LOG)]
    flags = [option if value is None else f"{option}={value}" for option, value in options]
    return ["restore", source.url, spec.target.directory, *flags]


def render_restore_job(spec: RestoreSpec, config: OperatorConfig) -> dict[str, Any]:
    """The restore Job (without ownerReferences: the handler adds the S3Restore as its controller)."""
    labels = restore_labels(spec.name)
    template = build_pod_template(config, spec.job, spec.source, spec.target.volume, read_only=False,
                                  args=restore_args(spec), pod_labels={**(spec.job.pod_labels or {}), **labels})
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.job.backoff_limit,
        "podFailurePolicy": {"rules": [{
            "action": "FailJob",
            "onExitCodes": {"containerName": template["spec"]["containers"][0]["name"], "operator": "In",
                            "values": [USAGE_ERROR_EXIT_CODE]},
        }]},
        "template": template,
    }
    if spec.job.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.job.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": restore_job_name(spec.name), "namespace": spec.namespace, "labels": labels},
        "spec": job_spec,
    }
