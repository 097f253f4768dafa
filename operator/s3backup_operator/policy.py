"""The admin's policy over S3Backups and S3Restores (pure): what a user who may create one could otherwise not do.

The operator creates the backup pods, so an S3Backup must not become a way around the rights its author
has. The pod's security settings are pinned by the renderer (non-root, no privilege escalation, all
capabilities dropped, read-only root, RuntimeDefault seccomp); what the spec may still ask for beyond the
`restricted` Pod Security Standard is refused here unless the cluster admin allows it (chart values
`policy.*`): a hostPath volume, any other volume type `restricted` forbids (nfs, iscsi, ...), and a
service account of the user's choice (its API rights, or its cloud identity via IRSA, would be the pod's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from s3backup_operator.config import Allowance, Policy
from s3backup_operator.spec import BackupSpec, InvalidSpec, JobSettings

NOT_ALLOWED = "NotAllowed"

#: Volume types the `restricted` Pod Security Standard allows (Kubernetes 1.25+).
RESTRICTED_VOLUME_TYPES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                                     "persistentVolumeClaim", "projected", "secret"})


def _refuse(what: str, allowance: Allowance, namespace: str, value: str) -> None:
    if not allowance.allows(namespace):
        raise InvalidSpec(NOT_ALLOWED, f"{what} {value} is not allowed in namespace {namespace!r} by the "
                                       "operator's policy (ask the cluster admin: chart values policy.*)")


def check(spec: BackupSpec, policy: Policy) -> None:
    """Raise InvalidSpec(reason "NotAllowed") for what the policy does not allow in the spec's namespace."""
    check_volume(spec.source.volume, "spec.source.volume", spec.namespace, policy)
    if spec.source.host_path:  # a fan-out over Nodes: each run mounts that hostPath
        _refuse("spec.source.hostPath", policy.host_path, spec.namespace, repr(spec.source.host_path))
    check_job(spec.job, spec.namespace, policy)


def check_volume(volume: Mapping[str, Any], field: str, namespace: str, policy: Policy) -> None:
    """A volume the operator's pod would mount: hostPath and the types `restricted` forbids need an allowance."""
    for kind in sorted(volume):
        if kind == "hostPath":
            _refuse(f"{field}.hostPath", policy.host_path, namespace,
                    repr(str((volume.get("hostPath") or {}).get("path", ""))))
        elif kind not in RESTRICTED_VOLUME_TYPES:
            _refuse(f"{field}.{kind}", policy.unrestricted_volumes, namespace,
                    "(a volume type the restricted Pod Security Standard forbids)")


def check_job(job: JobSettings, namespace: str, policy: Policy) -> None:
    """spec.job: a service account of the user's choice needs an allowance."""
    if job.service_account_name:
        _refuse("spec.job.serviceAccountName", policy.service_account_name, namespace,
                repr(job.service_account_name))
