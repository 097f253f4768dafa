"""What every handler shares: the connection, the configuration, the metrics, one status lock per resource.

The handlers are split by concern (backup_reconciler, fan_outs, run_gates, run_reports, restore_handlers);
each holds this one context instead of a reference to another handler class.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from kubernetes.client import Configuration

from s3backup_operator.config import OperatorConfig
from s3backup_operator.kubeapi import ApiError, KubeApi
from s3backup_operator.metrics import OperatorMetrics
from s3backup_operator.policy import check as check_policy
from s3backup_operator.render import BACKUP_LABEL
from s3backup_operator.spec import BackupSpec, Credentials, InvalidSpec, parse


class OperatorContext:
    def __init__(self, config: OperatorConfig, metrics: OperatorMetrics, api: KubeApi | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._api = api
        self._status_locks: dict[tuple[str, str], threading.Lock] = collections.defaultdict(threading.Lock)

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            raise ApiError(0, "NotLoggedIn", "no connection to the Kubernetes API yet")
        return self._api

    def connect(self, configuration: Configuration) -> None:
        """Use this client configuration from now on (the login handler calls it, also on a re-login).

        The previous client is not closed here: a handler in another thread may still be using it.
        Tokens of in-cluster service accounts and exec plugins are refreshed by the client itself.
        """
        self._api = KubeApi(configuration)

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def status_lock(self, namespace: str, name: str) -> threading.Lock:
        """One status writer per S3Backup at a time (read, compute, patch)."""
        return self._status_locks[(namespace, name)]

    def admit(self, backup: dict[str, Any]) -> BackupSpec:
        """The parsed spec, if the admin's policy allows it in its namespace; else InvalidSpec("NotAllowed")."""
        spec = parse(backup)
        check_policy(spec, self.config.policy)
        return spec

    def live_owner(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """The S3Backup a labelled child belongs to, unless it is gone or being deleted."""
        backup_name = (meta.get("labels") or {}).get(BACKUP_LABEL)
        if not backup_name:
            return None
        backup = self.api.get_backup(meta["namespace"], backup_name)
        if backup is None or backup["metadata"].get("deletionTimestamp"):
            return None
        return backup

    def check_secret(self, namespace: str, credentials: Credentials | None,
                     field: str = "spec.destination.credentialsSecretRef") -> None:
        """The credentials Secret must exist with both keys (S3Backup, S3Restore). Only key names are looked
        at, never values."""
        if credentials is None or not self.config.check_secrets:
            return
        try:
            keys = self.api.secret_keys(namespace, credentials.secret_name)
        except ApiError as error:
            if error.status == 403:  # not allowed to look (RBAC without Secrets): the job's pod will tell
                return
            raise
        if keys is None:
            raise InvalidSpec("CredentialsSecretNotFound",
                              f"Secret {credentials.secret_name!r} ({field}) not found in namespace "
                              f"{namespace!r}")
        missing = [key for key in (credentials.access_key_key, credentials.secret_key_key) if key not in keys]
        if missing:
            raise InvalidSpec("CredentialsSecretIncomplete",
                              f"Secret {credentials.secret_name!r} has no key {', '.join(missing)}")


def controller_uid(obj: dict[str, Any] | None) -> str | None:
    """The uid of the object's controller (its ownerReference with controller: true), if any."""
    owners = [ref for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or [] if ref.get("controller")]
    return owners[0].get("uid") if owners else None
