"""BackupSpec -> CronJob (and the one-off run-now Job): pure functions over the parsed spec.

Nothing here talks to the API, and nothing here reads the raw resource: `spec.parse` did that once. The
handlers apply what these functions return (server-side apply, then kopf's adoption for the owner).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from typing import Any

from s3backup_operator.config import OperatorConfig
from s3backup_operator.sharding import indexed_job_spec, sharded
from s3backup_operator.spec import (
    SOURCE_MOUNT,
    BackupSpec,
    CABundle,
    Credentials,
    Destination,
    Hook,
    JobSettings,
    PodSecurity,
)

GROUP = "s3backup.dev"
VERSION = "v1alpha1"
PLURAL = "s3backups"
KIND = "S3Backup"

RUN_NOW_ANNOTATION = f"{GROUP}/run-now"
BACKUP_LABEL = f"{GROUP}/backup"
TRIGGER_LABEL = f"{GROUP}/trigger"
#: On a fan-out's CronJobs, Jobs and Pods: the target (node or claim) they run for. The label may be shortened (63
#: characters); the annotation of the same key on CronJobs and Jobs holds the full name.
TARGET_LABEL = f"{GROUP}/target"
MANAGED_BY = "s3backup-operator"
#: The label selector of every child the operator makes (CronJobs, Jobs, their Pods; an S3Backup's carry
#: BACKUP_LABEL, an S3Restore's RESTORE_LABEL): the watches send it to the API server, so only these objects
#: ever reach the operator.
CHILD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
CONTAINER_NAME = "s3backup"
HOOK_CONTAINER_NAME = "hook-before"
TERMINATION_LOG = "/dev/termination-log"
RUN_NOW_TTL_SECONDS = 86400
CA_BUNDLE_DIR = "/etc/s3backup/ca"
CA_BUNDLE_FILE = "ca.crt"


def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def bounded_name(base: str, suffix: str, limit: int) -> str:
    if len(base) + len(suffix) <= limit:
        return base + suffix
    keep = limit - len(suffix) - 9
    return f"{base[:keep].rstrip('-.')}-{_short_hash(base)}{suffix}"


def cronjob_name(backup_name: str) -> str:
    """`<name>-s3backup`, shortened with a hash to the 52 characters a CronJob name may have."""
    return bounded_name(backup_name, "-s3backup", 52)


def run_now_job_name(backup_name: str, request: str) -> str:
    """One Job per distinct run-now annotation value, so a retried or replayed handler never runs twice."""
    return bounded_name(backup_name, f"-now-{_short_hash(request, 10)}", 63)


def run_name(spec: BackupSpec) -> str:
    """The base of a run's object names: the resource's name, plus `-<target>` for one target of a fan-out."""
    return f"{spec.name}-{spec.target}" if spec.target else spec.name


def target_labels(spec: BackupSpec) -> dict[str, str]:
    return {TARGET_LABEL: bounded_name(spec.target, "", 63)} if spec.target else {}


def target_annotations(spec: BackupSpec) -> dict[str, str]:
    return {TARGET_LABEL: spec.target} if spec.target else {}


def labels(backup_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "s3backup",
        "app.kubernetes.io/instance": backup_name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        BACKUP_LABEL: backup_name,
    }


def syncer_args(spec: BackupSpec, config: OperatorConfig) -> list[str]:
    """The `s3backup sync ...` arguments (README, "What the job runs").

    Every option with a value is one `--option=value` argument: argparse would take a separate value
    starting with "-" (an exclude `-wal`, say) for an option of its own.
    """
    source, destination, transfer = spec.source, spec.destination, spec.transfer
    options: list[tuple[str, Any]] = []  # (option, value); None for a flag
    if destination.endpoint:
        options.append(("--endpoint-url", destination.endpoint))
    if destination.region:
        options.append(("--region", destination.region))
    if destination.path_style:
        options.append(("--path-style", None))
    if destination.storage_class:
        options.append(("--storage-class", destination.storage_class))
    if destination.sse:
        options.append(("--sse", destination.sse))
    if destination.sse_kms_key_id:
        options.append(("--sse-kms-key-id", destination.sse_kms_key_id))
    options.append(("--compare", spec.compare))
    if spec.recycle.after:
        options += [("--recycle-after", spec.recycle.after), ("--max-recycle", spec.recycle.max_delete)]
    options += [("--include", pattern) for pattern in source.includes]
    options += [("--exclude", pattern) for pattern in source.excludes]
    if source.follow_symlinks:
        options.append(("--follow-symlinks", None))
    options += [("--part-size", transfer.part_size), ("--concurrency", transfer.concurrency)]
    if transfer.bwlimit:
        options.append(("--bwlimit", transfer.bwlimit))
    options.append(("--summary-json", TERMINATION_LOG))
    gateway = spec.pushgateway(config.default_pushgateway_url)
    if gateway:
        options.append(("--pushgateway", gateway))
    options += [
        ("--backup-name", f"{spec.name}/{spec.target}" if spec.target else spec.name),  # one group per target
        ("--backup-namespace", spec.namespace),
        ("--expected-interval", spec.expected_interval),
    ]
    flags = [option if value is None else f"{option}={value}" for option, value in options]
    return ["sync", source.directory, destination.url, *flags]


def _credentials_env(credentials: Credentials | None) -> list[dict[str, Any]]:
    if credentials is None:
        return []  # the standard AWS chain: IRSA / pod identity / instance metadata
    pairs = (("AWS_ACCESS_KEY_ID", credentials.access_key_key), ("AWS_SECRET_ACCESS_KEY", credentials.secret_key_key))
    return [
        {"name": env_name, "valueFrom": {"secretKeyRef": {"name": credentials.secret_name, "key": key}}}
        for env_name, key in pairs
    ]


def _ca_bundle_volume(bundle: CABundle) -> dict[str, Any]:
    """Only the one key, as ca.crt: a ConfigMap or Secret volume (both allowed by `restricted`)."""
    items = [{"key": bundle.key, "path": CA_BUNDLE_FILE}]
    if bundle.kind == "secret":
        return {"name": "ca-bundle", "secret": {"secretName": bundle.name, "items": items}}
    return {"name": "ca-bundle", "configMap": {"name": bundle.name, "items": items}}


def pod_security_context(security: PodSecurity) -> dict[str, Any]:
    """Non-root, seccomp RuntimeDefault: with the container's context, the `restricted` Pod Security Standard.

    `fsGroup` makes a volume's files group-readable for the backup user where the volume plugin supports it
    (most block-device PVCs; not hostPath or NFS).
    """
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": security.run_as_user,
        "runAsGroup": security.run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if security.fs_group is not None:
        context["fsGroup"] = security.fs_group
    if security.fs_group_change_policy:
        context["fsGroupChangePolicy"] = security.fs_group_change_policy
    if security.supplemental_groups:
        context["supplementalGroups"] = list(security.supplemental_groups)
    return context


#: The container's side of the `restricted` Pod Security Standard (and a read-only root filesystem).
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_template(spec: BackupSpec, config: OperatorConfig) -> dict[str, Any]:
    """The pod that runs one backup: shared by the CronJob and the run-now Job."""
    template = build_pod_template(config, spec.job, spec.destination, spec.source.volume, read_only=True,
                                  args=syncer_args(spec, config), pod_labels=pod_labels(spec))
    if spec.hook_before is not None:
        template["spec"]["initContainers"] = [hook_container(spec.hook_before, spec.job, config)]
    return template


def hook_container(hook: Hook, job: JobSettings, config: OperatorConfig) -> dict[str, Any]:
    """spec.hooks.before as an init container: the sync container starts only after it exits 0, and a
    failure fails the attempt (restartPolicy Never). Same volumes as the sync, with the source read-write
    (a dump into an emptyDir source is the point), the same pinned security context (`restricted`), the
    user's env and proxies, but no S3 credentials: the hook has no business with the bucket."""
    container: dict[str, Any] = {
        "name": HOOK_CONTAINER_NAME,
        "image": hook.image or config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(hook.command),
        "env": [
            *({"name": name, "value": value} for name, value in job.proxy.env().items()),
            {"name": "TMPDIR", "value": "/tmp"},
            {"name": "HOME", "value": "/tmp"},
            *copy.deepcopy([dict(item) for item in job.env]),
        ],
        "volumeMounts": [{"name": "source", "mountPath": SOURCE_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePolicy": "File",  # its output stays in its log: it never reaches the status
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
    }
    if job.resources:
        container["resources"] = copy.deepcopy(dict(job.resources))
    return container


def build_pod_template(config: OperatorConfig, job: JobSettings, destination: Destination,
                       volume: Mapping[str, Any], *, read_only: bool, args: list[str],
                       pod_labels: dict[str, str]) -> dict[str, Any]:
    """One syncer pod: `volume` at /data (read-only for a backup, read-write for a restore), the S3
    connection of `destination` (credentials, CA bundle, proxy) and the pinned security settings."""
    tmp_volume: dict[str, Any] = {"name": "tmp", "emptyDir": {}}
    if job.tmp_size_limit:
        tmp_volume["emptyDir"] = {"sizeLimit": job.tmp_size_limit}
    data_mount: dict[str, Any] = {"name": "source", "mountPath": SOURCE_MOUNT}
    if read_only:
        data_mount["readOnly"] = True
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["s3backup"],
        "args": args,
        "env": [
            *_credentials_env(destination.credentials),
            *([{"name": "AWS_CA_BUNDLE", "value": f"{CA_BUNDLE_DIR}/{CA_BUNDLE_FILE}"}]  # boto3 honours it
              if destination.ca_bundle else []),
            *({"name": name, "value": value} for name, value in job.proxy.env().items()),
            {"name": "TMPDIR", "value": "/tmp"},
            {"name": "HOME", "value": "/tmp"},
            *copy.deepcopy([dict(item) for item in job.env]),  # spec.parse refused any of the names above
        ],
        "volumeMounts": [data_mount, {"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
    }
    volumes = [{"name": "source", **copy.deepcopy(dict(volume))}, tmp_volume]
    if destination.ca_bundle:
        volumes.append(_ca_bundle_volume(destination.ca_bundle))
        container["volumeMounts"].append({"name": "ca-bundle", "mountPath": CA_BUNDLE_DIR, "readOnly": True})
    if job.resources:
        container["resources"] = copy.deepcopy(dict(job.resources))
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # one pod per attempt: each attempt keeps its own termination message
        "automountServiceAccountToken": False,  # the job needs no Kubernetes API access
        "securityContext": pod_security_context(job.security),
        "containers": [container],
        "volumes": volumes,
    }
    if job.service_account_name:
        pod_spec["serviceAccountName"] = job.service_account_name
    if job.priority_class_name:
        pod_spec["priorityClassName"] = job.priority_class_name
    if job.node_selector:
        pod_spec["nodeSelector"] = dict(job.node_selector)
    if job.tolerations:
        pod_spec["tolerations"] = copy.deepcopy([dict(item) for item in job.tolerations])
    if job.affinity:
        pod_spec["affinity"] = copy.deepcopy(dict(job.affinity))
    if job.image_pull_secrets:
        pod_spec["imagePullSecrets"] = copy.deepcopy([dict(item) for item in job.image_pull_secrets])
    elif config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in config.image_pull_secrets]
    metadata: dict[str, Any] = {"labels": pod_labels}
    if job.pod_annotations:
        metadata["annotations"] = dict(job.pod_annotations)
    return {"metadata": metadata, "spec": pod_spec}


def pod_labels(spec: BackupSpec, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The user's spec.job.podLabels, then the operator's own (spec.parse refused any that would clash)."""
    return {**(spec.job.pod_labels or {}), **labels(spec.name), **target_labels(spec), **(extra or {})}


def _job_spec(spec: BackupSpec, config: OperatorConfig) -> dict[str, Any]:
    job: dict[str, Any] = {"backoffLimit": spec.job.backoff_limit, "template": pod_template(spec, config)}
    if spec.job.active_deadline_seconds:
        job["activeDeadlineSeconds"] = spec.job.active_deadline_seconds
    if sharded(spec):  # one Indexed Job of N pods (sharding.py)
        job = indexed_job_spec(job, spec.transfer.shards, spec.job.backoff_limit, CONTAINER_NAME)
    return job


def render_cronjob(spec: BackupSpec, config: OperatorConfig) -> dict[str, Any]:
    """The CronJob for one S3Backup (without ownerReferences: the handler adopts it).

    It is the whole intent: applied server-side, a field left out here is removed from the live CronJob.
    """
    cron_spec: dict[str, Any] = {
        "schedule": spec.schedule,
        "suspend": spec.suspend,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": spec.job.starting_deadline_seconds,
        "successfulJobsHistoryLimit": spec.job.successful_jobs_history_limit,
        "failedJobsHistoryLimit": spec.job.failed_jobs_history_limit,
        "jobTemplate": {"metadata": {"labels": {**labels(spec.name), **target_labels(spec)}},
                        "spec": _job_spec(spec, config)},
    }
    if spec.target:
        cron_spec["jobTemplate"]["metadata"]["annotations"] = target_annotations(spec)
    if spec.time_zone:
        cron_spec["timeZone"] = spec.time_zone
    metadata: dict[str, Any] = {"name": cronjob_name(run_name(spec)), "namespace": spec.namespace,
                                "labels": {**labels(spec.name), **target_labels(spec)}}
    if spec.target:
        metadata["annotations"] = target_annotations(spec)
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": metadata, "spec": cron_spec}


def render_run_now_job(spec: BackupSpec, config: OperatorConfig, request: str) -> dict[str, Any]:
    """A one-off Job from the same pod template as the CronJob, for the run-now annotation value `request`."""
    job_labels = {**labels(spec.name), **target_labels(spec), TRIGGER_LABEL: "run-now"}
    job_spec = _job_spec(spec, config)
    job_spec["ttlSecondsAfterFinished"] = RUN_NOW_TTL_SECONDS
    job_spec["template"]["metadata"]["labels"] = pod_labels(spec, {TRIGGER_LABEL: "run-now"})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": run_now_job_name(run_name(spec), request),
            "namespace": spec.namespace,
            "labels": job_labels,
            "annotations": {RUN_NOW_ANNOTATION: request, **target_annotations(spec)},
        },
        "spec": job_spec,
    }
