"""The operator's few Kubernetes API calls, through the official `kubernetes` client. Plain dicts in and out.

The client is synchronous: the handlers that call it are plain `def`s, which kopf runs in its thread pool,
so the event loop never waits on a request. Responses are read raw (`_preload_content=False`), so callers
see the API's JSON as it is (timestamps keep their "Z"), not the client's models.

Errors carry the API's status, reason and the first line of its message, never a request body or headers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import urllib3
from kubernetes.client import ApiClient, BatchV1Api, Configuration, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from s3backup_operator.render import GROUP, PLURAL, VERSION
from s3backup_operator.restore_render import RESTORE_PLURAL

#: Who owns the fields the operator applies (server-side apply), in every object's managedFields.
FIELD_MANAGER = "s3backup-operator"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
REQUEST_TIMEOUT = (10, 30)  # seconds: connect, read
CONFLICT_ATTEMPTS = 5

#: A status patch computed from the live status (None or {}: nothing to write).
StatusChange = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}"[:500] if status else f"{reason}: {message}"[:500])
        self.status = status
        self.reason = reason

    @classmethod
    def of(cls, error: ApiException) -> ApiError:
        """The API's Status (reason, message's first line) from the client's exception; nothing else."""
        reason, message = str(error.reason or ""), ""
        try:
            status = json.loads(error.body or b"{}")
            reason, message = str(status.get("reason") or reason), str(status.get("message") or "")
        except (ValueError, AttributeError):
            pass
        return cls(int(error.status or 0), reason, message.splitlines()[0] if message else "")


def again_on_conflict(update: Callable[[], None]) -> None:
    """Run a read-compute-write again when the write meets a newer version of the resource (HTTP 409)."""
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            update()
            return
        except ApiError as error:
            if error.status != 409 or attempt == CONFLICT_ATTEMPTS - 1:
                raise


def update_status(read: Callable[[], dict[str, Any] | None], write: Callable[[dict[str, Any], str], None],
                  compute: StatusChange) -> None:
    """Write `compute(live status)` on the version it was computed from, reading again after a conflict.

    Several handlers write one resource's conditions list (the reconcile its Ready, the pod watch RunBlocked,
    the Job watch Restored), and a merge patch replaces a list whole: a list computed from an older read
    would drop a condition written meanwhile. A patch that changes nothing is not written.
    """
    def attempt() -> None:
        live = read()
        if live is None or live["metadata"].get("deletionTimestamp"):
            return
        status = live.get("status") or {}
        patch = compute(status)
        if patch and any(status.get(key) != value for key, value in patch.items()):
            write(patch, live["metadata"]["resourceVersion"])

    again_on_conflict(attempt)


def _merge_fields(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The union of two managedFields field sets (fieldsV1: nested dicts, one key per owned field)."""
    merged = dict(a)
    for key, value in b.items():
        merged[key] = _merge_fields(merged[key], value) if isinstance(merged.get(key), dict) else value
    return merged


def upgraded_managed_fields(entries: list[dict[str, Any]], manager: str = FIELD_MANAGER) -> list[dict[str, Any]] | None:
    """managedFields with `manager`'s "Update" entries folded into its "Apply" entry, or None if it has none.

    Operator versions before server-side apply created and merge-patched the CronJob; the API server
    recorded those fields under an "Update" entry of the same manager name. Left there, they would keep
    every field the operator stops sending (a removed nodeSelector, say). This is client-go's csaupgrade
    in small: the fields become the applier's, so the next apply removes what it no longer sends.
    """
    def old(entry: dict[str, Any]) -> bool:
        return entry.get("manager") == manager and entry.get("operation") == "Update" and not entry.get("subresource")

    updates = [entry for entry in entries if old(entry)]
    if not updates:
        return None
    applied = next((entry for entry in entries if entry.get("manager") == manager
                    and entry.get("operation") == "Apply" and not entry.get("subresource")), None)
    fields: dict[str, Any] = {}
    for entry in [*updates, *([applied] if applied else [])]:
        fields = _merge_fields(fields, entry.get("fieldsV1") or {})
    base = applied or updates[-1]
    upgraded = {**base, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields}
    return [entry for entry in entries if not old(entry) and entry is not applied] + [upgraded]


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items())


def _matches(item: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    item_labels = (item.get("metadata") or {}).get("labels") or {}
    return all(item_labels.get(key) == value for key, value in labels.items())


SNAPSHOT_GROUP = "snapshot.storage.k8s.io"


class KubeApi:
    """The calls the operator makes, by what they are for."""

    def __init__(self, configuration: Configuration) -> None:
        self.client = ApiClient(configuration)
        self.client.user_agent = FIELD_MANAGER
        self.core = CoreV1Api(self.client)
        self.batch = BatchV1Api(self.client)
        self.custom = CustomObjectsApi(self.client)

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            response = method(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as error:
            raise ApiError.of(error) from None
        except urllib3.exceptions.HTTPError as error:  # no answer at all (connection refused, timeout)
            raise ApiError(0, "ConnectionError", type(error).__name__) from None
        return json.loads(response.data or b"{}")

    def _or_none(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        try:
            return self._call(method, *args, **kwargs)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    # Secrets: only the key names ever leave this function.
    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The Secret's key names, or None if there is no such Secret."""
        secret = self._or_none(self.core.read_namespaced_secret, name, namespace)
        if secret is None:
            return None
        return set(secret.get("data") or {}) | set(secret.get("stringData") or {})

    # CronJobs
    def get_cronjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._or_none(self.batch.read_namespaced_cron_job, name, namespace)

    def apply_cronjob(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply, forced: the manifest is the operator's whole intent for the fields it owns
        (a field it no longer sends is removed); fields of others (status, defaults) are left alone."""
        meta = manifest["metadata"]
        return self._call(self.batch.patch_namespaced_cron_job, meta["name"], meta["namespace"], manifest,
                          field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH)

    def upgrade_field_ownership(self, live: dict[str, Any]) -> bool:
        """Fold the operator's pre-apply field ownership into its apply entry (see upgraded_managed_fields).

        The JSON patch tests the resourceVersion: a concurrent change makes it fail, and the reconcile retries.
        """
        meta = live["metadata"]
        entries = upgraded_managed_fields(meta.get("managedFields") or [])
        if entries is None:
            return False
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
                 {"op": "replace", "path": "/metadata/managedFields", "value": entries}]
        self._call(self.batch.patch_namespaced_cron_job, meta["name"], meta["namespace"], patch,
                   field_manager=FIELD_MANAGER, _content_type=JSON_PATCH)
        return True

    def delete_cronjob(self, namespace: str, name: str) -> bool:
        """Delete it and, in the background, its Jobs; False if it was already gone."""
        deleted = self._or_none(self.batch.delete_namespaced_cron_job, name, namespace,
                                propagation_policy="Background")
        return deleted is not None

    def list_cronjobs(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        items = self._call(self.batch.list_namespaced_cron_job, namespace, label_selector=_selector(labels))
        return [item for item in items.get("items") or [] if _matches(item, labels)]

    # Nodes (source.hostPath fan-out)
    def list_nodes(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        items = self._call(self.core.list_node, label_selector=_selector(labels))
        return [item for item in items.get("items") or [] if _matches(item, labels)]

    # Jobs and Pods
    def create_job(self, manifest: dict[str, Any]) -> bool:
        """Create the Job; False if one of that name exists (a retried handler: the same request)."""
        try:
            self._call(self.batch.create_namespaced_job, manifest["metadata"]["namespace"], manifest,
                       field_manager=FIELD_MANAGER)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    def create_event(self, manifest: dict[str, Any]) -> bool:
        """Create the Event; False if one of that name exists (this run was already reported)."""
        try:
            self._call(self.core.create_namespaced_event, manifest["metadata"]["namespace"], manifest,
                       field_manager=FIELD_MANAGER)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A merge patch of a Job (a suspended run: its node affinity, then suspend false)."""
        self._call(self.batch.patch_namespaced_job, name, namespace, patch, field_manager=FIELD_MANAGER,
                   _content_type=MERGE_PATCH)

    def get_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._or_none(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def create_claim(self, manifest: dict[str, Any]) -> bool:
        """Create a claim (a snapshot's clone); False if one of that name exists."""
        return self._create(self.core.create_namespaced_persistent_volume_claim, manifest)

    def delete_claim(self, namespace: str, name: str) -> bool:
        return self._or_none(self.core.delete_namespaced_persistent_volume_claim, name, namespace) is not None

    # VolumeSnapshots (copyMethod: Snapshot)
    def get_snapshot(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._or_none(self.custom.get_namespaced_custom_object, SNAPSHOT_GROUP, "v1", namespace,
                             "volumesnapshots", name)

    def create_snapshot(self, manifest: dict[str, Any]) -> bool:
        meta = manifest["metadata"]
        try:
            self._call(self.custom.create_namespaced_custom_object, SNAPSHOT_GROUP, "v1", meta["namespace"],
                       "volumesnapshots", manifest, field_manager=FIELD_MANAGER)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    def delete_snapshot(self, namespace: str, name: str) -> bool:
        return self._or_none(self.custom.delete_namespaced_custom_object, SNAPSHOT_GROUP, "v1", namespace,
                             "volumesnapshots", name) is not None

    def _create(self, method: Callable[..., Any], manifest: dict[str, Any]) -> bool:
        try:
            self._call(method, manifest["metadata"]["namespace"], manifest, field_manager=FIELD_MANAGER)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    def list_claims(self, namespace: str) -> list[dict[str, Any]]:
        """Every PersistentVolumeClaim of the namespace (a source.selector is matched by the operator)."""
        return self._call(self.core.list_namespaced_persistent_volume_claim, namespace).get("items") or []

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._or_none(self.batch.read_namespaced_job, name, namespace)

    def list_jobs(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        items = self._call(self.batch.list_namespaced_job, namespace, label_selector=_selector(labels))
        return [item for item in items.get("items") or [] if _matches(item, labels)]

    def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        items = self._call(self.core.list_namespaced_pod, namespace, label_selector=_selector(labels))
        return [item for item in items.get("items") or [] if _matches(item, labels)]

    # S3Backups
    def get_backup(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._or_none(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)

    def patch_backup_status(self, namespace: str, name: str, status: dict[str, Any],
                            resource_version: str | None = None) -> None:
        self._patch_status(PLURAL, namespace, name, status, resource_version)

    def update_backup_status(self, namespace: str, name: str, compute: StatusChange) -> None:
        """`compute` the status patch from the live S3Backup's status, and write it on that version only."""
        update_status(lambda: self.get_backup(namespace, name),
                      lambda status, version: self.patch_backup_status(namespace, name, status, version), compute)

    # S3Restores
    def get_restore(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._or_none(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, RESTORE_PLURAL,
                             name)

    def patch_restore_status(self, namespace: str, name: str, status: dict[str, Any],
                             resource_version: str | None = None) -> None:
        self._patch_status(RESTORE_PLURAL, namespace, name, status, resource_version)

    def update_restore_status(self, namespace: str, name: str, compute: StatusChange) -> None:
        """`compute` the status patch from the live S3Restore's status, and write it on that version only."""
        update_status(lambda: self.get_restore(namespace, name),
                      lambda status, version: self.patch_restore_status(namespace, name, status, version), compute)

    def _patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any],
                      resource_version: str | None) -> None:
        """With `resource_version`, only if the resource is still that version (else ApiError 409): for a status
        computed from a read of it, such as its whole conditions list."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        self._call(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, plural, name,
                   body, field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH)
