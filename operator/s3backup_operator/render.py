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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from botocore.exceptions import InvalidRegionError
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url, validate_region_name
from s3backup_syncer.config import SyncOptions, parse_duration, parse_recycle_cap, parse_s3_url, parse_size
from s3backup_syncer.errors import UserError
from s3backup_syncer.etag import validate_part_size
from s3backup_syncer.filters import Filters

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
    """Raise InvalidSpec for what the CRD's OpenAPI schema cannot express (cron syntax, time zones, and
    whatever the syncer's own parsers would refuse: see validate_syncer_options).

    Cross-field rules are also CEL rules in the CRD; they are checked here too (older clusters, the emulator).
    """
    spec = backup.get("spec") or {}
    try:
        resolved = resolve(str(spec.get("schedule", "")), identity(backup))
        interval = expected_interval_seconds(resolved)
    except ScheduleError as error:
        raise InvalidSpec("InvalidSchedule", f"spec.schedule {spec.get('schedule', '')!r}: {error}") from None
    _syncer_accepts("spec.schedule", lambda: parse_duration(format_duration(interval)))  # --expected-interval
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
    validate_syncer_options(with_defaults(spec))


_T = TypeVar("_T")


def _syncer_accepts(field: str, check: Callable[[], _T]) -> _T:
    """Run one of the syncer's own parsers; what it refuses becomes an InvalidSpec with its one-line message."""
    try:
        return check()
    except UserError as error:
        raise InvalidSpec("InvalidSpec", f"{field}: {error}") from None


def _check_endpoint(url: str) -> None:
    """What boto3 refuses when the syncer makes its client (or on its first request): the syncer has no
    parser of its own for these (yet), so this mirrors botocore's checks with botocore's functions."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
        valid = bool(is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url))
    except ValueError:
        valid = False
    if not valid or parts.scheme not in ("http", "https") or parts.query:
        raise InvalidSpec("InvalidSpec", f"spec.destination.endpoint: invalid S3 endpoint {url!r}: "
                                         "use http(s)://HOST[:PORT][/PATH] (no query)")


def _check_region(region: str) -> None:
    try:
        validate_region_name(region)
    except InvalidRegionError:
        raise InvalidSpec("InvalidSpec", f"spec.destination.region: invalid region {region!r}: "
                                         "letters, digits and inner '-', not only digits") from None


def validate_syncer_options(spec: dict[str, Any]) -> None:
    """Run every value the CronJob passes to `s3backup sync` through the syncer's own parsers and checks
    (`spec` has its defaults filled in), so a spec the syncer would refuse (exit 2 on every run) is
    refused here instead, with the syncer's reason. The CRD's patterns catch most of it earlier."""
    source, destination = spec["source"], spec["destination"]
    recycle, transfer = spec["recycle"], spec["transfer"]
    option_values = {
        "spec.destination.sseKmsKeyId": destination.get("sseKmsKeyId") or "",
        "spec.destination.storageClass": destination.get("storageClass") or "",
        "spec.destination.endpoint": destination.get("endpoint") or "",
        "spec.metrics.pushgatewayURL": (spec.get("metrics") or {}).get("pushgatewayURL") or "",
        **{f"spec.source.include[{i}]": pattern for i, pattern in enumerate(source["include"])},
        **{f"spec.source.exclude[{i}]": pattern for i, pattern in enumerate(source["exclude"])},
    }
    positional = {"spec.source.subPath": source["subPath"], "spec.destination.prefix": destination["prefix"]}
    for field, value in {**positional, **option_values}.items():
        if "\0" in str(value):  # a process argument cannot hold one: the pod would never start
            raise InvalidSpec("InvalidSpec", f"{field}: must not contain a NUL character")
        if field in option_values and value == "--":  # argparse drops a "--" even from `--exclude=--`
            raise InvalidSpec("InvalidSpec", f"{field}: '--' alone cannot be passed to the syncer")
    bucket, prefix = _syncer_accepts("spec.destination", lambda: parse_s3_url(destination_url(destination)))
    if destination.get("endpoint"):
        _check_endpoint(destination["endpoint"])
    if destination.get("region"):
        _check_region(destination["region"])
    recycle_after = None
    if recycle.get("after"):
        recycle_after = _syncer_accepts("spec.recycle.after", lambda: parse_duration(str(recycle["after"])))
    recycle_cap = _syncer_accepts("spec.recycle.maxDelete", lambda: parse_recycle_cap(str(recycle["maxDelete"])))
    includes, excludes = tuple(source["include"]), tuple(source["exclude"])
    _syncer_accepts("spec.source.include", lambda: Filters(includes=includes))
    _syncer_accepts("spec.source.exclude", lambda: Filters(excludes=excludes))
    part_size = None
    if str(transfer["partSize"]) != "auto":
        part_size = _syncer_accepts("spec.transfer.partSize", lambda: parse_size(str(transfer["partSize"])))
        _syncer_accepts("spec.transfer.partSize", lambda: validate_part_size(part_size))
    bwlimit = None
    if transfer.get("bwlimit"):
        bwlimit = _syncer_accepts("spec.transfer.bwlimit", lambda: parse_size(str(transfer["bwlimit"])))
    # SyncOptions checks the rest: each value alone first (so the message names its field), then together.
    source_dir = Path(source_directory(source))  # only named here, never opened
    concurrency = int(transfer["concurrency"])
    alone = {"transfer.bwlimit": {"bwlimit": bwlimit}, "transfer.concurrency": {"concurrency": concurrency},
             "compare": {"compare": spec["compare"]}}
    for field, value in alone.items():
        _syncer_accepts(f"spec.{field}",
                        lambda value=value: SyncOptions(source=source_dir, bucket=bucket, prefix=prefix, **value))
    _syncer_accepts("spec.destination", lambda: SyncOptions(
        source=source_dir, bucket=bucket, prefix=prefix, endpoint_url=destination.get("endpoint") or None,
        region=destination.get("region") or None, path_style=bool(destination["forcePathStyle"]),
        compare=spec["compare"], recycle_after_seconds=recycle_after, recycle_cap=recycle_cap,
        includes=includes, excludes=excludes, storage_class=destination.get("storageClass") or None,
        sse=destination.get("sse") or None, sse_kms_key_id=destination.get("sseKmsKeyId") or None,
        part_size=part_size, concurrency=concurrency, bwlimit=bwlimit,
        follow_symlinks=bool(source["followSymlinks"]),
    ))


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


def source_directory(source: dict[str, Any]) -> str:
    """Where the syncer reads: the volume's mount point, or `subPath` inside it."""
    directory = posixpath.join(SOURCE_MOUNT, source["subPath"]) if source["subPath"] else SOURCE_MOUNT
    return directory.rstrip("/") or "/"


def destination_url(destination: dict[str, Any]) -> str:
    url = f"s3://{destination.get('bucket', '')}"
    if destination["prefix"].strip("/"):
        url += "/" + destination["prefix"].strip("/")
    return url


def syncer_args(backup: dict[str, Any], config: OperatorConfig) -> list[str]:
    """The `s3backup sync ...` arguments (README.md: "The CLI", and "What the job runs").

    Every option with a value is one `--option=value` argument: argparse would take a separate value
    starting with "-" (an exclude `-wal`, say) for an option of its own.
    """
    meta = backup["metadata"]
    spec = with_defaults(backup.get("spec") or {})
    source, destination = spec["source"], spec["destination"]
    options: list[tuple[str, Any]] = []  # (option, value); None for a flag
    if destination.get("endpoint"):
        options.append(("--endpoint-url", destination["endpoint"]))
    if destination.get("region"):
        options.append(("--region", destination["region"]))
    if destination["forcePathStyle"]:
        options.append(("--path-style", None))
    if destination.get("storageClass"):
        options.append(("--storage-class", destination["storageClass"]))
    if destination.get("sse"):
        options.append(("--sse", destination["sse"]))
    if destination.get("sseKmsKeyId"):
        options.append(("--sse-kms-key-id", destination["sseKmsKeyId"]))
    options.append(("--compare", spec["compare"]))
    if spec["recycle"].get("after"):
        options += [("--recycle-after", spec["recycle"]["after"]), ("--max-recycle", spec["recycle"]["maxDelete"])]
    options += [("--include", pattern) for pattern in source["include"]]
    options += [("--exclude", pattern) for pattern in source["exclude"]]
    if source["followSymlinks"]:
        options.append(("--follow-symlinks", None))
    transfer = spec["transfer"]
    options += [("--part-size", transfer["partSize"]), ("--concurrency", transfer["concurrency"])]
    if transfer.get("bwlimit"):
        options.append(("--bwlimit", transfer["bwlimit"]))
    options.append(("--summary-json", TERMINATION_LOG))
    gateway = pushgateway_url(spec, config)
    if gateway:
        options.append(("--pushgateway", gateway))
    interval = expected_interval_seconds(resolve(spec["schedule"], identity(backup)))
    options += [
        ("--backup-name", meta["name"]),
        ("--backup-namespace", meta["namespace"]),
        ("--expected-interval", format_duration(interval)),
    ]
    flags = [option if value is None else f"{option}={value}" for option, value in options]
    return ["sync", source_directory(source), destination_url(destination), *flags]


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
