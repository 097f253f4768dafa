"""One S3Restore spec, parsed once: the typed, frozen object the restore Job is rendered from.

The S3 side is either the S3Backup named by `spec.backupRef` (its destination, credentials, CA bundle,
proxy and job settings, read by the same functions as the S3Backup's own parse) or an explicit
`spec.source` block shaped like an S3Backup's `destination`. The target is a PVC, mounted read-write.
Nothing here talks to the API: the handler fetches the referenced S3Backup and passes it in.
"""

from __future__ import annotations

import datetime
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from s3backup_syncer.config import parse_s3_url
from s3backup_syncer.errors import UserError
from s3backup_syncer.filters import Filters
from s3backup_syncer.restore_plan import parse_as_of

from s3backup_operator.spec import (
    DEFAULTS,
    SOURCE_MOUNT,
    Destination,
    InvalidSpec,
    JobSettings,
    check_endpoint,
    check_job,
    check_region,
    destination_from,
    job_settings_from,
    with_defaults,
)

TARGET_MOUNT = SOURCE_MOUNT  # the PVC is mounted at /data, read-write
DEFAULT_CONCURRENCY = 8  # the syncer's own default for `restore`
MAX_CONCURRENCY = 64


@dataclass(frozen=True)
class Target:
    claim_name: str
    sub_path: str = ""

    @property
    def volume(self) -> dict[str, Any]:
        return {"persistentVolumeClaim": {"claimName": self.claim_name}}

    @property
    def directory(self) -> str:
        """Where the restore writes: the claim's mount point, or `subPath` inside it."""
        directory = posixpath.join(TARGET_MOUNT, self.sub_path) if self.sub_path else TARGET_MOUNT
        return directory.rstrip("/") or "/"


@dataclass(frozen=True)
class RestoreSpec:
    """One S3Restore, parsed and checked (with its S3Backup's settings when it has a backupRef)."""

    name: str
    namespace: str
    source: Destination  # where the objects are: bucket, prefix, endpoint, credentials, CA bundle
    target: Target
    as_of: str = ""  # RFC 3339, UTC ("" = the latest versions); a duration was resolved at creation
    overwrite: bool = False
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    concurrency: int = DEFAULT_CONCURRENCY
    job: JobSettings = field(default_factory=JobSettings)
    backup_name: str = ""  # spec.backupRef.name, "" for an explicit source


def backup_ref(restore: Mapping[str, Any]) -> str:
    """The name of the S3Backup this restore reads its settings from ("" for an explicit source)."""
    return str((((restore.get("spec") or {}).get("backupRef")) or {}).get("name") or "")


def _merged(base: Any, override: Any) -> Any:
    """`override` over `base`, maps merged key by key (the restore's own job settings win)."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: _merged(base.get(key), value) for key, value in override.items()}}
    return base if override is None else override


def resolve_as_of(text: str, created: str) -> str:
    """spec.asOf as the RFC 3339 time the syncer gets. A duration ("3d") counts back from the resource's
    creation, so that every attempt of the Job, and every reconcile, restores the same moment."""
    if not text:
        return ""
    try:
        now = datetime.datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None
    except ValueError:
        now = None
    try:
        moment = parse_as_of(text, now or datetime.datetime.now(datetime.UTC))
    except UserError as error:
        raise InvalidSpec("InvalidSpec", f"spec.asOf: {error}") from None
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_restore(restore: Mapping[str, Any], backup: Mapping[str, Any] | None = None) -> RestoreSpec:
    """The S3Restore as a RestoreSpec. `backup` is the S3Backup named by spec.backupRef (None if it has
    none). Raises InvalidSpec with the field's name for what the CRD's schema cannot express."""
    meta = restore.get("metadata") or {}
    raw = restore.get("spec") or {}
    ref = backup_ref(restore)
    if bool(ref) == bool(raw.get("source")):
        raise InvalidSpec("InvalidSpec", "spec: set exactly one of backupRef, source")
    if ref and backup is None:
        raise InvalidSpec("BackupNotFound", f"S3Backup {ref!r} (spec.backupRef) not found in namespace "
                                            f"{meta.get('namespace', '')!r}")
    try:
        if ref:
            backup_spec = with_defaults((backup or {}).get("spec") or {})
            source = destination_from(backup_spec["destination"])
            job_raw = _merged(backup_spec["job"], raw.get("job") or {})
        else:
            source = destination_from(with_defaults({"destination": raw["source"]})["destination"])
            job_raw = _merged(DEFAULTS["job"], raw.get("job") or {})
        job = job_settings_from(job_raw)
        target_raw = raw.get("target") or {}
        claim = str(((target_raw.get("persistentVolumeClaim")) or {}).get("claimName") or "")
        concurrency = ((raw.get("transfer") or {}).get("concurrency"))
        parsed = RestoreSpec(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            source=source,
            target=Target(claim_name=claim, sub_path=str(target_raw.get("subPath") or "")),
            as_of=resolve_as_of(str(raw.get("asOf") or ""), str(meta.get("creationTimestamp") or "")),
            overwrite=bool(raw.get("overwrite", False)),
            includes=tuple(str(pattern) for pattern in raw.get("include") or ()),
            excludes=tuple(str(pattern) for pattern in raw.get("exclude") or ()),
            concurrency=DEFAULT_CONCURRENCY if concurrency is None else concurrency,
            job=_with_writable_volume(job),
            backup_name=ref,
        )
    except (TypeError, ValueError, KeyError, AttributeError) as error:  # the schema rules these out
        raise InvalidSpec("InvalidSpec", f"spec: a field has the wrong type ({type(error).__name__}: {error})"
                          [:300]) from None
    try:
        check_restore(parsed)
    except InvalidSpec as problem:
        if ref and problem.message.startswith("spec.job") and "job" not in raw:
            raise InvalidSpec(problem.reason, f"S3Backup {ref!r}: {problem.message}") from None
        raise
    return parsed


def _with_writable_volume(job: JobSettings) -> JobSettings:
    """The restore writes as a non-root user into a volume whose root a fresh provisioner leaves to root:
    without an fsGroup of its own, the pod's group gets the volume (changed only if its root does not
    match already, so an existing tree is left as it is)."""
    security = job.security
    if security.fs_group is not None:
        return job
    return replace(job, security=replace(security, fs_group=security.run_as_group,
                                         fs_group_change_policy=security.fs_group_change_policy or "OnRootMismatch"))


def check_restore(spec: RestoreSpec) -> None:
    """The rules the schema cannot express, and the values `s3backup restore` would refuse."""
    source, target = spec.source, spec.target
    if not target.claim_name:
        raise InvalidSpec("InvalidSpec", "spec.target.persistentVolumeClaim.claimName is required")
    if target.sub_path.startswith("/") or ".." in target.sub_path.split("/"):
        raise InvalidSpec("InvalidSubPath", f"spec.target.subPath {target.sub_path!r} must be relative, "
                                            "without '..'")
    where = "spec.source" if not spec.backup_name else f"S3Backup {spec.backup_name!r}: spec.destination"
    values = {f"{where}.prefix": source.prefix, f"{where}.endpoint": source.endpoint,
              "spec.target.subPath": target.sub_path,
              **{f"spec.include[{i}]": pattern for i, pattern in enumerate(spec.includes)},
              **{f"spec.exclude[{i}]": pattern for i, pattern in enumerate(spec.excludes)}}
    for name, value in values.items():
        if "\0" in value:
            raise InvalidSpec("InvalidSpec", f"{name}: must not contain a NUL character")
        if value == "--" and name.startswith(("spec.include", "spec.exclude")):
            raise InvalidSpec("InvalidSpec", f"{name}: '--' alone cannot be passed to the syncer")
    try:
        parse_s3_url(source.url)
    except UserError as error:
        raise InvalidSpec("InvalidSpec", f"{where}: {error}") from None
    if source.endpoint:
        check_endpoint(source.endpoint, f"{where}.endpoint")
    if source.region:
        check_region(source.region, f"{where}.region")
    for name, patterns in (("spec.include", {"includes": spec.includes}),
                           ("spec.exclude", {"excludes": spec.excludes})):
        try:
            Filters(**patterns)
        except UserError as error:
            raise InvalidSpec("InvalidSpec", f"{name}: {error}") from None
    if isinstance(spec.concurrency, bool) or not isinstance(spec.concurrency, int) \
            or not 1 <= spec.concurrency <= MAX_CONCURRENCY:
        raise InvalidSpec("InvalidSpec", f"spec.transfer.concurrency: {spec.concurrency!r}: use 1 to "
                                         f"{MAX_CONCURRENCY}"[:300])
    check_job(spec.job)
