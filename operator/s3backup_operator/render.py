"""S3Backup -> CronJob (and the one-off run-now Job): pure functions over plain dicts.

Nothing here talks to the API. The handlers call these functions and apply what they return.
The defaults below mirror the CRD's (crds/s3backup.dev_s3backups.yaml); a test keeps them equal, because
the operator must not depend on the API server having applied the CRD defaults.
"""

from __future__ import annotations

import copy
import hashlib
import json
import posixpath
from typing import Any

from s3backup_operator.config import OperatorConfig
from s3backup_operator.schedule import ScheduleError, expected_interval_seconds, format_duration, resolve
from s3backup_operator.schedule import validate_time_zone as _validate_time_zone

GROUP = "s3backup.dev"
VERSION = "v1alpha1"
PLURAL = "s3backups"
KIND = "S3Backup"

RUN_NOW_ANNOTATION = f"{GROUP}/run-now"
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
BACKUP_LABEL = f"{GROUP}/backup"
TRIGGER_LABEL = f"{GROUP}/trigger"
MANAGED_BY = "s3backup-operator"
CONTAINER_NAME = "s3backup"
SOURCE_MOUNT = "/data"
TERMINATION_LOG = "/dev/termination-log"
DEFAULT_ACCESS_KEY_KEY = "AWS_ACCESS_KEY_ID"
DEFAULT_SECRET_KEY_KEY = "AWS_SECRET_ACCESS_KEY"
RUN_NOW_TTL_SECONDS = 86400
DEFAULT_UID = 65532  # "nonroot" in distroless-style images

#: Spec defaults, identical to those in the CRD schema (tests/operator/test_crd.py checks it).
DEFAULTS: dict[str, Any] = {
    "suspend": False,
    "source": {"subPath": "", "include": [], "exclude": [], "followSymlinks": False},
    "destination": {"prefix": "", "forcePathStyle": False},
    "compare": "md5",
    "recycle": {"maxDelete": "50%"},
    "transfer": {"partSize": "auto", "concurrency": 4},
    "job": {
        "backoffLimit": 2,
        "startingDeadlineSeconds": 3600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
    },
}


class InvalidSpec(ValueError):
    """Bad input the schema cannot catch. `reason` becomes the Ready condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _merge_defaults(value: Any, defaults: Any) -> Any:
    if isinstance(defaults, dict):
        value = dict(value) if isinstance(value, dict) else {}
        for key, default in defaults.items():
            value[key] = _merge_defaults(value.get(key), default) if key in value else copy.deepcopy(default)
        return value
    return defaults if value is None else value


def with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every CRD default filled in (only where the user left a field out)."""
    return _merge_defaults(spec, DEFAULTS)


def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _bounded_name(base: str, suffix: str, limit: int) -> str:
    if len(base) + len(suffix) <= limit:
        return base + suffix
    keep = limit - len(suffix) - 9
    return f"{base[:keep].rstrip('-.')}-{_short_hash(base)}{suffix}"


def cronjob_name(backup_name: str) -> str:
    """`<name>-s3backup`, shortened with a hash to the 52 characters a CronJob name may have."""
    return _bounded_name(backup_name, "-s3backup", 52)


def run_now_job_name(backup_name: str, request: str) -> str:
    """One Job per distinct run-now annotation value, so a retried or replayed handler never runs twice."""
    return _bounded_name(backup_name, f"-now-{_short_hash(request, 10)}", 63)


def identity(backup: dict[str, Any]) -> str:
    meta = backup.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def validate(backup: dict[str, Any]) -> None:
    """Raise InvalidSpec for what the CRD's OpenAPI schema cannot express (cron syntax, time zones...).

    Cross-field rules are also CEL rules in the CRD; they are checked here too (older clusters, the emulator).
    """
    spec = backup.get("spec") or {}
    try:
        resolved = resolve(str(spec.get("schedule", "")), identity(backup))
        expected_interval_seconds(resolved)
    except ScheduleError as error:
        raise InvalidSpec("InvalidSchedule", f"spec.schedule {spec.get('schedule', '')!r}: {error}") from None
    try:
        _validate_time_zone(spec.get("timeZone") or "")
    except ScheduleError as error:
        raise InvalidSpec("InvalidTimeZone", f"spec.timeZone: {error}") from None
    destination = spec.get("destination") or {}
    if destination.get("sseKmsKeyId") and destination.get("sse") != "aws:kms":
        raise InvalidSpec("InvalidSpec", 'spec.destination.sseKmsKeyId needs spec.destination.sse "aws:kms"')
    sub_path = (spec.get("source") or {}).get("subPath") or ""
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        raise InvalidSpec("InvalidSubPath", f"spec.source.subPath {sub_path!r} must be relative, without '..'")


def pushgateway_url(spec: dict[str, Any], config: OperatorConfig) -> str:
    return ((spec.get("metrics") or {}).get("pushgatewayURL") or config.default_pushgateway_url).rstrip("/")


def monitored_interval(backup: dict[str, Any], config: OperatorConfig) -> int | None:
    """The expected interval (seconds) the backup's runs push, or None when they push nothing
    (no Pushgateway) or the schedule is invalid: then no alert can expect a pushed run."""
    spec = backup.get("spec") or {}
    if not pushgateway_url(spec, config):
        return None
    try:
        return expected_interval_seconds(resolve(str(spec.get("schedule", "")), identity(backup)))
    except ScheduleError:
        return None


def labels(backup_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "s3backup",
        "app.kubernetes.io/instance": backup_name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        BACKUP_LABEL: backup_name,
    }


def syncer_args(backup: dict[str, Any], config: OperatorConfig) -> list[str]:
    """The `s3backup sync ...` arguments (see CONTRACT.md, "Syncer CLI")."""
    meta = backup["metadata"]
    spec = with_defaults(backup.get("spec") or {})
    source, destination = spec["source"], spec["destination"]
    source_dir = posixpath.join(SOURCE_MOUNT, source["subPath"]) if source["subPath"] else SOURCE_MOUNT
    url = f"s3://{destination['bucket']}"
    if destination["prefix"].strip("/"):
        url += "/" + destination["prefix"].strip("/")
    args = ["sync", source_dir.rstrip("/") or "/", url]
    if destination.get("endpoint"):
        args += ["--endpoint-url", destination["endpoint"]]
    if destination.get("region"):
        args += ["--region", destination["region"]]
    if destination["forcePathStyle"]:
        args.append("--path-style")
    if destination.get("storageClass"):
        args += ["--storage-class", destination["storageClass"]]
    if destination.get("sse"):
        args += ["--sse", destination["sse"]]
    if destination.get("sseKmsKeyId"):
        args += ["--sse-kms-key-id", destination["sseKmsKeyId"]]
    args += ["--compare", spec["compare"]]
    if spec["recycle"].get("after"):
        args += ["--recycle-after", spec["recycle"]["after"], "--max-recycle", str(spec["recycle"]["maxDelete"])]
    for pattern in source["include"]:
        args += ["--include", pattern]
    for pattern in source["exclude"]:
        args += ["--exclude", pattern]
    if source["followSymlinks"]:
        args.append("--follow-symlinks")
    transfer = spec["transfer"]
    args += ["--part-size", str(transfer["partSize"]), "--concurrency", str(transfer["concurrency"])]
    if transfer.get("bwlimit"):
        args += ["--bwlimit", str(transfer["bwlimit"])]
    args += ["--summary-json", TERMINATION_LOG]
    gateway = pushgateway_url(spec, config)
    if gateway:
        args += ["--pushgateway", gateway]
    interval = expected_interval_seconds(resolve(spec["schedule"], identity(backup)))
    args += [
        "--backup-name", meta["name"],
        "--backup-namespace", meta["namespace"],
        "--expected-interval", format_duration(interval),
    ]
    return args


def _credentials_env(destination: dict[str, Any]) -> list[dict[str, Any]]:
    ref = destination.get("credentialsSecretRef")
    if not ref:
        return []  # the standard AWS chain: IRSA / pod identity / instance metadata
    pairs = (
        ("AWS_ACCESS_KEY_ID", ref.get("accessKeyIDKey") or DEFAULT_ACCESS_KEY_KEY),
        ("AWS_SECRET_ACCESS_KEY", ref.get("secretAccessKeyKey") or DEFAULT_SECRET_KEY_KEY),
    )
    return [
        {"name": env_name, "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": key}}}
        for env_name, key in pairs
    ]


def pod_template(backup: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The pod that runs one backup: shared by the CronJob and the run-now Job."""
    name = backup["metadata"]["name"]
    spec = with_defaults(backup.get("spec") or {})
    job = spec["job"]
    user_security = job.get("podSecurityContext") or {}
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": user_security.get("runAsUser", DEFAULT_UID),
        "runAsGroup": user_security.get("runAsGroup", DEFAULT_UID),
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if user_security.get("supplementalGroups"):
        pod_security["supplementalGroups"] = list(user_security["supplementalGroups"])
    tmp_volume: dict[str, Any] = {"name": "tmp", "emptyDir": {}}
    if job.get("tmpSizeLimit"):
        tmp_volume["emptyDir"] = {"sizeLimit": job["tmpSizeLimit"]}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["s3backup"],
        "args": syncer_args(backup, config),
        "env": [
            *_credentials_env(spec["destination"]),
            {"name": "TMPDIR", "value": "/tmp"},
            {"name": "HOME", "value": "/tmp"},
        ],
        "volumeMounts": [
            {"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if job.get("resources"):
        container["resources"] = copy.deepcopy(job["resources"])
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # one pod per attempt: each attempt keeps its own termination message
        "automountServiceAccountToken": False,  # the job needs no Kubernetes API access
        "securityContext": pod_security,
        "containers": [container],
        "volumes": [{"name": "source", **copy.deepcopy(spec["source"]["volume"])}, tmp_volume],
    }
    for key in ("serviceAccountName", "nodeSelector", "tolerations", "affinity", "imagePullSecrets"):
        if job.get(key):
            pod_spec[key] = copy.deepcopy(job[key])
    if not job.get("imagePullSecrets") and config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in config.image_pull_secrets]
    return {"metadata": {"labels": labels(name)}, "spec": pod_spec}


def _job_spec(backup: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    job = with_defaults(backup.get("spec") or {})["job"]
    spec: dict[str, Any] = {"backoffLimit": job["backoffLimit"], "template": pod_template(backup, config)}
    if job.get("activeDeadlineSeconds"):
        spec["activeDeadlineSeconds"] = job["activeDeadlineSeconds"]
    return spec


def spec_hash(manifest: dict[str, Any]) -> str:
    """A digest of what the operator renders: the CronJob is patched only when it changes.

    (Comparing with the live object would see a difference on every pass: the API server adds defaults.)
    """
    return _short_hash(json.dumps({"labels": manifest["metadata"]["labels"], "spec": manifest["spec"]},
                                  sort_keys=True), 16)


def render_cronjob(backup: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The CronJob for one S3Backup (without ownerReferences: the handler adopts it)."""
    validate(backup)
    meta = backup["metadata"]
    spec = with_defaults(backup.get("spec") or {})
    job = spec["job"]
    cron_spec: dict[str, Any] = {
        "schedule": resolve(spec["schedule"], identity(backup)),
        "suspend": bool(spec["suspend"]),
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": job["startingDeadlineSeconds"],
        "successfulJobsHistoryLimit": job["successfulJobsHistoryLimit"],
        "failedJobsHistoryLimit": job["failedJobsHistoryLimit"],
        "jobTemplate": {"metadata": {"labels": labels(meta["name"])}, "spec": _job_spec(backup, config)},
    }
    if spec.get("timeZone"):
        cron_spec["timeZone"] = spec["timeZone"]
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": cronjob_name(meta["name"]), "namespace": meta["namespace"], "labels": labels(meta["name"]),
        },
        "spec": cron_spec,
    }
    manifest["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(manifest)}
    return manifest


def render_run_now_job(backup: dict[str, Any], config: OperatorConfig, request: str) -> dict[str, Any]:
    """A one-off Job from the same pod template as the CronJob, for the run-now annotation value `request`."""
    validate(backup)
    meta = backup["metadata"]
    job_labels = {**labels(meta["name"]), TRIGGER_LABEL: "run-now"}
    spec = _job_spec(backup, config)
    spec["ttlSecondsAfterFinished"] = RUN_NOW_TTL_SECONDS
    spec["template"]["metadata"]["labels"] = dict(job_labels)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": run_now_job_name(meta["name"], request),
            "namespace": meta["namespace"],
            "labels": job_labels,
            "annotations": {RUN_NOW_ANNOTATION: request},
        },
        "spec": spec,
    }


def merge_patch(live: Any, desired: Any) -> Any:
    """An RFC 7386 JSON merge patch that turns `live` into `desired` (keys only in `live` become null).

    Used for the CronJob's spec, so a field removed from the S3Backup is removed from the CronJob too.
    """
    if not isinstance(live, dict) or not isinstance(desired, dict):
        return copy.deepcopy(desired)
    patch: dict[str, Any] = {key: None for key in live if key not in desired}
    for key, value in desired.items():
        if key not in live:
            patch[key] = copy.deepcopy(value)
        elif live[key] != value:
            patch[key] = merge_patch(live[key], value)
    return patch
