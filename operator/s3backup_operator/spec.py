"""One S3Backup spec, parsed once: the typed, frozen object that rendering and the syncer's arguments read.

`parse` is the only place that reads the resource's spec. It fills in the CRD's defaults, runs every value
the CronJob passes to `s3backup sync` through the syncer's own parsers, and raises `InvalidSpec` (a
`kopf.PermanentError`) with the field's name for what the CRD's schema cannot express. Nothing here talks
to the API.
"""

from __future__ import annotations

import copy
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import kopf
from botocore.exceptions import InvalidRegionError
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url, validate_region_name
from s3backup_syncer.config import SyncOptions, parse_duration, parse_recycle_cap, parse_s3_url, parse_size
from s3backup_syncer.errors import UserError
from s3backup_syncer.etag import validate_part_size
from s3backup_syncer.filters import Filters
from s3backup_syncer.shards import MAX_SHARDS

from s3backup_operator.schedule import ScheduleError, expected_interval_seconds, format_duration, resolve
from s3backup_operator.schedule import validate_time_zone as _validate_time_zone

SOURCE_MOUNT = "/data"
DEFAULT_ACCESS_KEY_KEY = "AWS_ACCESS_KEY_ID"
DEFAULT_SECRET_KEY_KEY = "AWS_SECRET_ACCESS_KEY"
DEFAULT_UID = 65532  # "nonroot" in distroless-style images

#: Spec defaults, identical to those in the CRD schema (tests/operator/test_crd.py checks it): the operator
#: must not depend on the API server having applied them.
DEFAULTS: dict[str, Any] = {
    "suspend": False,
    "source": {"subPath": "", "include": [], "exclude": [], "followSymlinks": False},
    "destination": {"prefix": "", "forcePathStyle": False},
    "compare": "md5",
    "recycle": {"maxDelete": "50%"},
    "transfer": {"partSize": "auto", "concurrency": 4, "shards": 1},
    "job": {
        "backoffLimit": 2,
        "startingDeadlineSeconds": 3600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
    },
}


class InvalidSpec(kopf.PermanentError):
    """Bad input the schema cannot catch. `reason` becomes the Ready condition's reason; the message names
    the field. Permanent: only a change of the resource (or, for a Secret, of the cluster) can fix it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Credentials:
    """spec.destination.credentialsSecretRef: only the Secret's name and key names, never a value."""

    secret_name: str
    access_key_key: str = DEFAULT_ACCESS_KEY_KEY
    secret_key_key: str = DEFAULT_SECRET_KEY_KEY


@dataclass(frozen=True)
class Source:
    volume: Mapping[str, Any]  # a Kubernetes volume source, passed through as it is ({} while it fans out)
    sub_path: str = ""
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    follow_symlinks: bool = False
    host_path: str = ""  # spec.source.hostPath.path: one run per node matching node_selector (targets.py)
    node_selector: Mapping[str, str] | None = None  # spec.source.nodeSelector (with host_path only)
    claim_selector: Mapping[str, Any] | None = None  # spec.source.selector: one run per matching PVC

    @property
    def fans_out(self) -> bool:
        """True when the resource stands for several runs (targets.py), not one CronJob of its own."""
        return bool(self.host_path) or self.claim_selector is not None

    @property
    def directory(self) -> str:
        """Where the syncer reads: the volume's mount point, or `subPath` inside it."""
        directory = posixpath.join(SOURCE_MOUNT, self.sub_path) if self.sub_path else SOURCE_MOUNT
        return directory.rstrip("/") or "/"


@dataclass(frozen=True)
class CABundle:
    """spec.destination.caBundle: one key of a ConfigMap or Secret, the PEM bundle that S3 endpoints behind
    a corporate TLS proxy or a private CA are checked against (mounted read-only; AWS_CA_BUNDLE)."""

    kind: str  # "configMap" | "secret"
    name: str
    key: str = "ca.crt"


@dataclass(frozen=True)
class Destination:
    bucket: str
    prefix: str = ""
    endpoint: str = ""
    region: str = ""
    path_style: bool = False
    storage_class: str = ""
    sse: str = ""
    sse_kms_key_id: str = ""
    credentials: Credentials | None = None  # None: the standard AWS chain (IRSA, pod identity, ...)
    ca_bundle: CABundle | None = None

    @property
    def url(self) -> str:
        return destination_url(self.bucket, self.prefix)


@dataclass(frozen=True)
class Recycle:
    after: str = ""  # "" = remote copies of deleted files are never deleted
    max_delete: str = "50%"


@dataclass(frozen=True)
class Transfer:
    part_size: str = "auto"
    concurrency: int = 4
    bwlimit: str = ""
    shards: int = 1  # N > 1: one Indexed Job of N pods per run, `--shard I/N` each (sharding.py)


@dataclass(frozen=True)
class PodSecurity:
    """spec.job.podSecurityContext: the user and groups the backup runs as (never root)."""

    run_as_user: int = DEFAULT_UID
    run_as_group: int = DEFAULT_UID
    fs_group: int | None = None
    fs_group_change_policy: str = ""
    supplemental_groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Proxy:
    """spec.job.proxy: HTTPS_PROXY, HTTP_PROXY and NO_PROXY of the backup pod ("" = not set)."""

    https_proxy: str = ""
    http_proxy: str = ""
    no_proxy: str = ""

    def env(self) -> dict[str, str]:
        values = {"HTTPS_PROXY": self.https_proxy, "HTTP_PROXY": self.http_proxy, "NO_PROXY": self.no_proxy}
        return {name: value for name, value in values.items() if value}


@dataclass(frozen=True)
class JobSettings:
    """spec.job: where and how the backup pod runs. Kubernetes structures are passed through as they are."""

    security: PodSecurity = PodSecurity()
    resources: Mapping[str, Any] | None = None
    node_selector: Mapping[str, str] | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    image_pull_secrets: tuple[Mapping[str, Any], ...] = ()
    service_account_name: str = ""
    tmp_size_limit: int | str | None = None
    backoff_limit: int = 2
    active_deadline_seconds: int | None = None
    starting_deadline_seconds: int = 3600
    successful_jobs_history_limit: int = 3
    failed_jobs_history_limit: int = 3
    proxy: Proxy = Proxy()
    env: tuple[Mapping[str, Any], ...] = ()  # core/v1 EnvVars, after the operator's own
    pod_labels: Mapping[str, str] | None = None
    pod_annotations: Mapping[str, str] | None = None
    priority_class_name: str = ""


@dataclass(frozen=True)
class Hook:
    """spec.hooks.before: a command the backup pod runs before the sync (an init container: same pod, same
    volumes, the sync starts only when it exits 0). `image` "" = the operator's image."""

    command: tuple[str, ...]
    image: str = ""


@dataclass(frozen=True)
class BackupSpec:
    """One S3Backup, parsed and checked: everything downstream reads this, never the raw spec."""

    name: str
    namespace: str
    schedule: str  # resolved: hashed fields (H) filled in, a plain 5-field cron or standard macro
    interval_seconds: int  # the schedule's longest gap between two runs
    time_zone: str
    suspend: bool
    source: Source
    destination: Destination
    compare: str
    recycle: Recycle
    transfer: Transfer
    job: JobSettings
    pushgateway_url: str = ""  # spec.metrics.pushgatewayURL; "" = the operator's default
    hook_before: Hook | None = None  # spec.hooks.before
    target: str = ""  # set by targets.py on one run of a fan-out: a node's name; "" for the resource itself
    copy_method: str = "Direct"  # spec.copyMethod: "Direct" (the claim itself) or "Snapshot" (snapshot.py)
    snapshot_class: str = ""  # spec.snapshot.volumeSnapshotClassName ("" = the cluster's default)
    clone_storage_class: str | None = None  # spec.snapshot.storageClassName (None = the source claim's)

    @property
    def identity(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def expected_interval(self) -> str:
        """The schedule's longest gap as the syncer's --expected-interval ("1d", "90m")."""
        return format_duration(self.interval_seconds)

    def pushgateway(self, default: str) -> str:
        """Where the runs push their metrics: the spec's URL, else the operator's default ("" = nowhere)."""
        return (self.pushgateway_url or default).rstrip("/")


def _merge_defaults(value: Any, defaults: Any) -> Any:
    if isinstance(defaults, dict):
        value = dict(value) if isinstance(value, dict) else {}
        for key, default in defaults.items():
            value[key] = _merge_defaults(value.get(key), default) if key in value else copy.deepcopy(default)
        return value
    return defaults if value is None else value


def with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with every CRD default filled in (only where the user left a field out)."""
    return _merge_defaults(dict(spec), DEFAULTS)


def destination_url(bucket: str, prefix: str) -> str:
    url = f"s3://{bucket}"
    if prefix.strip("/"):
        url += "/" + prefix.strip("/")
    return url


def identity(backup: Mapping[str, Any]) -> str:
    meta = backup.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def parse_schedule(backup: Mapping[str, Any]) -> tuple[str, int]:
    """(resolved schedule, its longest gap in seconds). Raises InvalidSpec("InvalidSchedule", ...)."""
    raw = (backup.get("spec") or {}).get("schedule", "")
    try:
        resolved = resolve(str(raw), identity(backup))
        return resolved, expected_interval_seconds(resolved)
    except ScheduleError as error:
        raise InvalidSpec("InvalidSchedule", f"spec.schedule {raw!r}: {error}") from None


_T = TypeVar("_T")


def _syncer_accepts(field: str, check: Callable[[], _T]) -> _T:
    """Run one of the syncer's own parsers; what it refuses becomes an InvalidSpec with its one-line message."""
    try:
        return check()
    except UserError as error:
        raise InvalidSpec("InvalidSpec", f"{field}: {error}") from None


def _integer(value: Any, field: str) -> int:
    """An integer field (the schema says so; the emulator and older API servers do not check)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec("InvalidSpec", f"{field}: must be an integer, not {value!r}"[:300])
    return value


def _optional(mapping: Mapping[str, Any], key: str) -> Any:
    """A value the user may leave out, null or empty: None then."""
    return mapping.get(key) or None


def parse(backup: Mapping[str, Any]) -> BackupSpec:
    """The S3Backup's spec as a BackupSpec. Raises InvalidSpec for what the CRD's schema cannot express
    (cron syntax, time zones, cross-field rules, and whatever the syncer's own parsers would refuse).

    Cross-field rules are also CEL rules in the CRD; they are checked here too (older clusters, the emulator).
    """
    meta = backup.get("metadata") or {}
    raw = backup.get("spec") or {}
    schedule, interval = parse_schedule(backup)
    _syncer_accepts("spec.schedule", lambda: parse_duration(format_duration(interval)))  # --expected-interval
    time_zone = str(raw.get("timeZone") or "")
    try:
        _validate_time_zone(time_zone)
    except ScheduleError as error:
        raise InvalidSpec("InvalidTimeZone", f"spec.timeZone: {error}") from None
    try:
        parsed = _build(meta, with_defaults(raw), schedule, interval, time_zone)
    except (TypeError, ValueError, KeyError, AttributeError) as error:  # the schema rules these out
        raise InvalidSpec("InvalidSpec", f"spec: a field has the wrong type ({type(error).__name__}: {error})"
                          [:300]) from None
    check(parsed)
    return parsed


def _build(meta: Mapping[str, Any], spec: dict[str, Any], schedule: str, interval: int, time_zone: str) -> BackupSpec:
    source = spec["source"]
    return BackupSpec(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        schedule=schedule,
        interval_seconds=interval,
        time_zone=time_zone,
        suspend=bool(spec["suspend"]),
        source=Source(
            volume=copy.deepcopy(source.get("volume") or {}),
            sub_path=str(source["subPath"] or ""),
            includes=tuple(str(pattern) for pattern in source["include"] or ()),
            excludes=tuple(str(pattern) for pattern in source["exclude"] or ()),
            follow_symlinks=bool(source["followSymlinks"]),
            host_path=str((source.get("hostPath") or {}).get("path") or ""),
            node_selector={str(k): str(v) for k, v in source["nodeSelector"].items()}
            if source.get("nodeSelector") else None,
            claim_selector=copy.deepcopy(source["selector"]) if source.get("selector") is not None else None,
        ),
        destination=destination_from(spec["destination"]),
        compare=str(spec["compare"]),
        recycle=Recycle(after=str(spec["recycle"].get("after") or ""),
                        max_delete=str(spec["recycle"]["maxDelete"])),
        transfer=Transfer(part_size=str(spec["transfer"]["partSize"]),
                          concurrency=_integer(spec["transfer"]["concurrency"], "spec.transfer.concurrency"),
                          bwlimit=str(spec["transfer"].get("bwlimit") or ""),
                          shards=_integer(spec["transfer"]["shards"], "spec.transfer.shards")),
        job=job_settings_from(spec["job"]),
        pushgateway_url=str((spec.get("metrics") or {}).get("pushgatewayURL") or ""),
        hook_before=hook_from((spec.get("hooks") or {}).get("before")),
        copy_method=str(spec.get("copyMethod") or "Direct"),
        snapshot_class=str((spec.get("snapshot") or {}).get("volumeSnapshotClassName") or ""),
        clone_storage_class=None if (spec.get("snapshot") or {}).get("storageClassName") is None
        else str(spec["snapshot"]["storageClassName"]),
    )


def hook_from(raw: Any) -> Hook | None:
    """spec.hooks.before (None when absent). The command is passed as it is: no shell unless it names one."""
    if not raw:
        return None
    command = raw.get("command") or []
    if not isinstance(command, list) or not command or not all(isinstance(part, str) for part in command):
        raise InvalidSpec("InvalidSpec", "spec.hooks.before.command: a non-empty list of strings")
    if any("\0" in part for part in command):
        raise InvalidSpec("InvalidSpec", "spec.hooks.before.command: must not contain a NUL character")
    image = str(raw.get("image") or "")
    if image and (any(char.isspace() for char in image) or len(image) > 1024):
        raise InvalidSpec("InvalidSpec", f"spec.hooks.before.image: invalid image {image[:100]!r}")
    return Hook(command=tuple(command), image=image)


def destination_from(destination: Mapping[str, Any]) -> Destination:
    """spec.destination (defaults filled in) as a Destination: an S3Restore's `source` block reads the same."""
    ref = destination.get("credentialsSecretRef")
    return Destination(
        bucket=str(destination.get("bucket") or ""),
        prefix=str(destination.get("prefix") or ""),
        endpoint=str(destination.get("endpoint") or ""),
        region=str(destination.get("region") or ""),
        path_style=bool(destination.get("forcePathStyle")),
        storage_class=str(destination.get("storageClass") or ""),
        sse=str(destination.get("sse") or ""),
        sse_kms_key_id=str(destination.get("sseKmsKeyId") or ""),
        credentials=Credentials(
            secret_name=str(ref["name"]),
            access_key_key=ref.get("accessKeyIDKey") or DEFAULT_ACCESS_KEY_KEY,
            secret_key_key=ref.get("secretAccessKeyKey") or DEFAULT_SECRET_KEY_KEY,
        ) if ref else None,
        ca_bundle=_ca_bundle(destination.get("caBundle")),
    )


def job_settings_from(job: Mapping[str, Any]) -> JobSettings:
    """spec.job (defaults filled in) as JobSettings: shared by S3Backups and S3Restores."""
    security = job.get("podSecurityContext") or {}
    context = "spec.job.podSecurityContext"
    defaults = DEFAULTS["job"]
    return JobSettings(
        security=PodSecurity(
            run_as_user=_integer(security.get("runAsUser", DEFAULT_UID), f"{context}.runAsUser"),
            run_as_group=_integer(security.get("runAsGroup", DEFAULT_UID), f"{context}.runAsGroup"),
            fs_group=None if security.get("fsGroup") is None else _integer(security["fsGroup"],
                                                                            f"{context}.fsGroup"),
            fs_group_change_policy=str(security.get("fsGroupChangePolicy") or ""),
            supplemental_groups=tuple(_integer(group, f"{context}.supplementalGroups[]")
                                    for group in security.get("supplementalGroups") or ()),
        ),
        resources=copy.deepcopy(_optional(job, "resources")),
        node_selector=copy.deepcopy(_optional(job, "nodeSelector")),
        tolerations=tuple(copy.deepcopy(job.get("tolerations") or ())),
        affinity=copy.deepcopy(_optional(job, "affinity")),
        image_pull_secrets=tuple(copy.deepcopy(job.get("imagePullSecrets") or ())),
        service_account_name=str(job.get("serviceAccountName") or ""),
        tmp_size_limit=_optional(job, "tmpSizeLimit"),
        backoff_limit=_integer(job.get("backoffLimit", defaults["backoffLimit"]), "spec.job.backoffLimit"),
        active_deadline_seconds=None if not job.get("activeDeadlineSeconds") else _integer(
            job["activeDeadlineSeconds"], "spec.job.activeDeadlineSeconds"),
        starting_deadline_seconds=_integer(job.get("startingDeadlineSeconds", defaults["startingDeadlineSeconds"]),
                                           "spec.job.startingDeadlineSeconds"),
        successful_jobs_history_limit=_integer(
            job.get("successfulJobsHistoryLimit", defaults["successfulJobsHistoryLimit"]),
            "spec.job.successfulJobsHistoryLimit"),
        failed_jobs_history_limit=_integer(job.get("failedJobsHistoryLimit", defaults["failedJobsHistoryLimit"]),
                                           "spec.job.failedJobsHistoryLimit"),
        proxy=Proxy(https_proxy=str((job.get("proxy") or {}).get("httpsProxy") or ""),
                    http_proxy=str((job.get("proxy") or {}).get("httpProxy") or ""),
                    no_proxy=str((job.get("proxy") or {}).get("noProxy") or "")),
        env=tuple(copy.deepcopy(dict(item)) for item in job.get("env") or ()),
        pod_labels={str(k): str(v) for k, v in job["podLabels"].items()} if job.get("podLabels") else None,
        pod_annotations={str(k): str(v) for k, v in job["podAnnotations"].items()}
        if job.get("podAnnotations") else None,
        priority_class_name=str(job.get("priorityClassName") or ""),
    )


def _ca_bundle(raw: Any) -> CABundle | None:
    """spec.destination.caBundle: exactly one of configMapKeyRef / secretKeyRef (a CEL rule says so too)."""
    if not raw:
        return None
    refs = {kind: raw.get(f"{kind}KeyRef") for kind in ("configMap", "secret") if raw.get(f"{kind}KeyRef")}
    if len(refs) != 1:
        raise InvalidSpec("InvalidSpec", "spec.destination.caBundle: set exactly one of configMapKeyRef, secretKeyRef")
    [(kind, ref)] = refs.items()
    return CABundle(kind=kind, name=str(ref["name"]), key=str(ref.get("key") or "ca.crt"))


#: Environment the operator sets itself, or that would change where and as whom the syncer connects:
#: spec.job.env must not override it (credentials, endpoint, CA bundle and proxies have their own fields).
RESERVED_ENV = frozenset({"HOME", "TMPDIR", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY",
                          "https_proxy", "http_proxy", "no_proxy", "all_proxy", "REQUESTS_CA_BUNDLE",
                          "SSL_CERT_FILE", "SSL_CERT_DIR", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"})
RESERVED_ENV_PREFIXES = ("AWS_", "S3BACKUP_")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
#: Labels the operator sets and selects on, and the Job controller's own.
RESERVED_LABEL_PREFIXES = ("s3backup.dev/", "app.kubernetes.io/", "batch.kubernetes.io/")
RESERVED_LABELS = frozenset({"job-name", "controller-uid"})
#: Annotations that would loosen the pod's pinned security settings, and the operator's own.
RESERVED_ANNOTATION_PREFIXES = ("s3backup.dev/", "container.apparmor.security.beta.kubernetes.io/",
                                "seccomp.security.alpha.kubernetes.io/")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)")


def _check_key(key: str, field: str) -> None:
    """A qualified name ([prefix/]name), as Kubernetes checks label and annotation keys."""
    prefix, _, name = key.rpartition("/")
    if (not _LABEL_NAME.fullmatch(name) or len(name) > 63
            or (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)))):
        raise InvalidSpec("InvalidSpec", f"{field}: invalid key {key!r}"[:300])


def check_job(job: JobSettings) -> None:
    """spec.job's rules beyond the schema (S3Backups and S3Restores alike)."""
    if job.security.run_as_user == 0:  # the pod says runAsNonRoot; the kubelet would refuse it
        raise InvalidSpec("InvalidSpec", "spec.job.podSecurityContext.runAsUser: the backup never runs as root")
    _check_pod_settings(job)


def _check_pod_settings(job: JobSettings) -> None:
    seen: set[str] = set()
    for item in job.env:
        name = str(item.get("name") or "")
        if not _ENV_NAME.fullmatch(name):
            raise InvalidSpec("InvalidSpec", f"spec.job.env: invalid name {name!r}"[:300])
        if name in RESERVED_ENV or name.upper().startswith(RESERVED_ENV_PREFIXES):
            raise InvalidSpec("ReservedEnv", f"spec.job.env: {name} is set by the operator or would override "
                                             "the backup's credentials or connection; use the spec's own fields")
        if name in seen:
            raise InvalidSpec("InvalidSpec", f"spec.job.env: {name} appears twice")
        seen.add(name)
    for key, value in (job.pod_labels or {}).items():
        _check_key(key, "spec.job.podLabels")
        if key in RESERVED_LABELS or key.startswith(RESERVED_LABEL_PREFIXES):
            raise InvalidSpec("InvalidSpec", f"spec.job.podLabels: {key} is the operator's or the Job's own label")
        if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
            raise InvalidSpec("InvalidSpec", f"spec.job.podLabels: invalid value of {key}"[:300])
    for key in job.pod_annotations or {}:
        _check_key(key, "spec.job.podAnnotations")
        if key.startswith(RESERVED_ANNOTATION_PREFIXES):
            raise InvalidSpec("InvalidSpec", f"spec.job.podAnnotations: {key} is not allowed (it is the "
                                             "operator's own, or would loosen the pod's security settings)")
    name = job.priority_class_name
    if name and (len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name)):
        raise InvalidSpec("InvalidSpec", f"spec.job.priorityClassName: invalid name {name!r}"[:300])
    if name.startswith("system-"):
        raise InvalidSpec("NotAllowed", f"spec.job.priorityClassName: {name} is reserved for the cluster's "
                                        "critical pods")
    for field, value in (("httpsProxy", job.proxy.https_proxy), ("httpProxy", job.proxy.http_proxy),
                         ("noProxy", job.proxy.no_proxy)):
        if any(char in value for char in "\0\r\n"):
            raise InvalidSpec("InvalidSpec", f"spec.job.proxy.{field}: must be one line")


def check_source_kind(source: Source) -> None:
    """Exactly one of spec.source.volume, hostPath (with nodeSelector) and selector; CEL rules too."""
    if [bool(source.volume), bool(source.host_path), source.claim_selector is not None].count(True) != 1:
        raise InvalidSpec("InvalidSpec", "spec.source: set exactly one of volume, hostPath, selector")
    if source.claim_selector is not None:
        check_label_selector(source.claim_selector, "spec.source.selector")
    if bool(source.host_path) != bool(source.node_selector):
        raise InvalidSpec("InvalidSpec", "spec.source.nodeSelector: required with hostPath, and only with it")
    path = source.host_path
    if path and (not path.startswith("/") or ".." in path.split("/") or "\0" in path):
        raise InvalidSpec("InvalidSpec", f"spec.source.hostPath.path {path[:100]!r}: an absolute path without '..'")


def check_copy_method(spec: BackupSpec) -> None:
    """copyMethod Snapshot needs claims: source.volume.persistentVolumeClaim or source.selector."""
    if spec.copy_method not in ("Direct", "Snapshot"):
        raise InvalidSpec("InvalidSpec", f"spec.copyMethod {spec.copy_method[:50]!r}: Direct or Snapshot")
    claim = "persistentVolumeClaim" in spec.source.volume or spec.source.claim_selector is not None
    if spec.copy_method == "Snapshot" and not claim:
        raise InvalidSpec("InvalidSpec", "spec.copyMethod Snapshot needs a PersistentVolumeClaim source "
                                         "(source.volume.persistentVolumeClaim or source.selector)")


_SELECTOR_OPERATORS = {"In": True, "NotIn": True, "Exists": False, "DoesNotExist": False}  # -> needs values


def check_label_selector(selector: Mapping[str, Any], field: str) -> None:
    """A metav1.LabelSelector as Kubernetes checks one: an empty one would select every PVC, and is refused."""
    labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not labels and not expressions:
        raise InvalidSpec("InvalidSpec", f"{field}: give matchLabels or matchExpressions (an empty selector "
                                         "would back up every claim of the namespace)")
    for key, value in labels.items():
        _check_key(str(key), f"{field}.matchLabels")
        if not isinstance(value, str) or len(value) > 63 or (value and not _LABEL_NAME.fullmatch(value)):
            raise InvalidSpec("InvalidSpec", f"{field}.matchLabels: invalid value of {key}"[:300])
    for expression in expressions:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        _check_key(str(key or ""), f"{field}.matchExpressions")
        if operator not in _SELECTOR_OPERATORS or bool(values) != _SELECTOR_OPERATORS[operator]:
            raise InvalidSpec("InvalidSpec", f"{field}.matchExpressions: {operator!r} on {key!r}: In and NotIn "
                                             "take values, Exists and DoesNotExist none"[:300])


def check_endpoint(url: str, field: str = "spec.destination.endpoint") -> None:
    """What boto3 refuses when the syncer makes its client (or on its first request): the syncer has no
    parser of its own for these (yet), so this mirrors botocore's checks with botocore's functions."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
        valid = bool(is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url))
    except ValueError:
        valid = False
    if not valid or parts.scheme not in ("http", "https") or parts.query:
        raise InvalidSpec("InvalidSpec", f"{field}: invalid S3 endpoint {url!r}: "
                                         "use http(s)://HOST[:PORT][/PATH] (no query)")


def check_region(region: str, field: str = "spec.destination.region") -> None:
    try:
        validate_region_name(region)
    except InvalidRegionError:
        raise InvalidSpec("InvalidSpec", f"{field}: invalid region {region!r}: "
                                         "letters, digits and inner '-', not only digits") from None


def check(spec: BackupSpec) -> None:
    """The rules the schema cannot express, then every value the CronJob passes to `s3backup sync` through
    the syncer's own parsers and checks: a spec the syncer would refuse (exit 2 on every run) is refused
    here instead, with the syncer's reason. The CRD's patterns catch most of it earlier."""
    source, destination, recycle, transfer = spec.source, spec.destination, spec.recycle, spec.transfer
    if destination.sse_kms_key_id and destination.sse != "aws:kms":
        raise InvalidSpec("InvalidSpec", 'spec.destination.sseKmsKeyId needs spec.destination.sse "aws:kms"')
    check_job(spec.job)
    check_source_kind(source)
    check_copy_method(spec)
    if source.sub_path.startswith("/") or ".." in source.sub_path.split("/"):
        raise InvalidSpec("InvalidSubPath", f"spec.source.subPath {source.sub_path!r} must be relative, without '..'")
    option_values = {
        "spec.destination.sseKmsKeyId": destination.sse_kms_key_id,
        "spec.destination.storageClass": destination.storage_class,
        "spec.destination.endpoint": destination.endpoint,
        "spec.metrics.pushgatewayURL": spec.pushgateway_url,
        **{f"spec.source.include[{i}]": pattern for i, pattern in enumerate(source.includes)},
        **{f"spec.source.exclude[{i}]": pattern for i, pattern in enumerate(source.excludes)},
    }
    positional = {"spec.source.subPath": source.sub_path, "spec.destination.prefix": destination.prefix}
    for field, value in {**positional, **option_values}.items():
        if "\0" in value:  # a process argument cannot hold one: the pod would never start
            raise InvalidSpec("InvalidSpec", f"{field}: must not contain a NUL character")
        if field in option_values and value == "--":  # argparse drops a "--" even from `--exclude=--`
            raise InvalidSpec("InvalidSpec", f"{field}: '--' alone cannot be passed to the syncer")
    bucket, prefix = _syncer_accepts("spec.destination", lambda: parse_s3_url(destination.url))
    if destination.endpoint:
        check_endpoint(destination.endpoint)
    if destination.region:
        check_region(destination.region)
    recycle_after = None
    if recycle.after:
        recycle_after = _syncer_accepts("spec.recycle.after", lambda: parse_duration(recycle.after))
    recycle_cap = _syncer_accepts("spec.recycle.maxDelete", lambda: parse_recycle_cap(recycle.max_delete))
    _syncer_accepts("spec.source.include", lambda: Filters(includes=source.includes))
    _syncer_accepts("spec.source.exclude", lambda: Filters(excludes=source.excludes))
    part_size = None
    if transfer.part_size != "auto":
        part_size = _syncer_accepts("spec.transfer.partSize", lambda: parse_size(transfer.part_size))
        _syncer_accepts("spec.transfer.partSize", lambda: validate_part_size(part_size))
    if not 1 <= transfer.shards <= MAX_SHARDS:
        raise InvalidSpec("InvalidSpec", f"spec.transfer.shards: must be 1 to {MAX_SHARDS}, not {transfer.shards}")
    bwlimit = None
    if transfer.bwlimit:
        bwlimit = _syncer_accepts("spec.transfer.bwlimit", lambda: parse_size(transfer.bwlimit))
    # SyncOptions checks the rest: each value alone first (so the message names its field), then together.
    source_dir = Path(source.directory)  # only named here, never opened
    alone = {"transfer.bwlimit": {"bwlimit": bwlimit}, "transfer.concurrency": {"concurrency": transfer.concurrency},
             "compare": {"compare": spec.compare}}
    for field, value in alone.items():
        _syncer_accepts(f"spec.{field}",
                        lambda value=value: SyncOptions(source=source_dir, bucket=bucket, prefix=prefix, **value))
    _syncer_accepts("spec.destination", lambda: SyncOptions(
        source=source_dir, bucket=bucket, prefix=prefix, endpoint_url=destination.endpoint or None,
        region=destination.region or None, path_style=destination.path_style,
        compare=spec.compare, recycle_after_seconds=recycle_after, recycle_cap=recycle_cap,
        includes=source.includes, excludes=source.excludes, storage_class=destination.storage_class or None,
        sse=destination.sse or None, sse_kms_key_id=destination.sse_kms_key_id or None,
        part_size=part_size, concurrency=transfer.concurrency, bwlimit=bwlimit,
        follow_symlinks=source.follow_symlinks,
    ))


def pushgateway_of(backup: Mapping[str, Any], default: str) -> str:
    """Where a backup's runs push, read without the full parse: deleting an S3Backup whose spec became
    invalid must still remove its metrics group."""
    url = ((backup.get("spec") or {}).get("metrics") or {}).get("pushgatewayURL") or ""
    return str(url or default).rstrip("/")


def schedule_interval(backup: Mapping[str, Any]) -> int | None:
    """The schedule's longest gap (seconds), or None when the schedule is invalid: the operator exports it
    for the staleness alerts. Only the schedule matters: a last good CronJob may still run under a spec
    that became invalid elsewhere."""
    try:
        return parse_schedule(backup)[1]
    except InvalidSpec:
        return None
