"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/s3backup/s3backup:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    default_pushgateway_url: str = ""  # used when spec.metrics.pushgatewayURL is empty; "" = no push
    retry_delay: float = 60.0  # seconds before re-checking a missing Secret or retrying a failed API call
    resync_interval: float = 300.0  # periodic re-reconcile (e.g. a Secret created later); 0 = off
    check_secrets: bool = True  # look up credentialsSecretRef (needs `get` on Secrets); off: the pod reports it
    image_pull_secrets: tuple[str, ...] = ()  # for backup jobs whose spec.job.imagePullSecrets is empty

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
        )
