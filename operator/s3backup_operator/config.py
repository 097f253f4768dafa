"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_IMAGE = "ghcr.io/s3backup/s3backup:0.1.0"


@dataclass(frozen=True)
class Allowance:
    """Where the cluster admin allows one feature of an S3Backup: every namespace, or only those listed."""

    everywhere: bool = False
    namespaces: frozenset[str] = frozenset()

    def allows(self, namespace: str) -> bool:
        return self.everywhere or namespace in self.namespaces

    @classmethod
    def parse(cls, text: str) -> Allowance:
        """"*" (or "true"): every namespace; "a,b": those; "" (or "false"): none."""
        names = {name.strip() for name in text.split(",") if name.strip()}
        if names & {"*", "true"}:
            return cls(everywhere=True)
        return cls(namespaces=frozenset(names - {"false"}))


@dataclass(frozen=True)
class Policy:
    """What users who may create S3Backups may ask of the backup pod beyond what the `restricted` Pod
    Security Standard allows: nothing, unless the admin says so (chart values `policy.*`)."""

    host_path: Allowance = Allowance()
    service_account_name: Allowance = Allowance()
    # Volume types `restricted` forbids other than hostPath: nfs, iscsi, rbd, cephfs, glusterfs, fc, ...
    unrestricted_volumes: Allowance = Allowance()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Policy:
        return cls(
            host_path=Allowance.parse(env.get("S3BACKUP_ALLOW_HOST_PATH") or ""),
            service_account_name=Allowance.parse(env.get("S3BACKUP_ALLOW_SERVICE_ACCOUNT_NAME") or ""),
            unrestricted_volumes=Allowance.parse(env.get("S3BACKUP_ALLOW_UNRESTRICTED_VOLUMES") or ""),
        )


@dataclass(frozen=True)
class OperatorConfig:
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    default_pushgateway_url: str = ""  # used when spec.metrics.pushgatewayURL is empty; "" = no push
    retry_delay: float = 60.0  # seconds before re-checking a missing Secret or retrying a failed API call
    resync_interval: float = 300.0  # periodic re-reconcile (e.g. a Secret created later); 0 = off
    check_secrets: bool = True  # look up credentialsSecretRef (needs `get` on Secrets); off: the pod reports it
    image_pull_secrets: tuple[str, ...] = ()  # for backup jobs whose spec.job.imagePullSecrets is empty
    policy: Policy = field(default_factory=Policy)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorConfig:
        env = os.environ if environ is None else environ
        return cls(
            image=env.get("S3BACKUP_IMAGE") or DEFAULT_IMAGE,
            image_pull_policy=env.get("S3BACKUP_IMAGE_PULL_POLICY") or "IfNotPresent",
            default_pushgateway_url=(env.get("S3BACKUP_PUSHGATEWAY_URL") or "").rstrip("/"),
            retry_delay=float(env.get("S3BACKUP_RETRY_DELAY") or 60),
            resync_interval=float(env.get("S3BACKUP_RESYNC_INTERVAL") or 300),
            check_secrets=(env.get("S3BACKUP_CHECK_SECRETS") or "true").strip().lower() not in ("0", "false", "no"),
            image_pull_secrets=tuple(
                name.strip() for name in (env.get("S3BACKUP_IMAGE_PULL_SECRETS") or "").split(",") if name.strip()),
            policy=Policy.from_env(env),
        )
