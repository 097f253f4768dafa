"""What only an emulated API can show: the operator's own requests (the label selectors of its watches) and API
faults a real cluster cannot be made to produce on demand (HTTP 500 on a read). Everything else the operator
does with the API is tested on the real control plane (tests/cluster/; README.md, "How it is tested, and what
the tests cannot show").
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes.client import Configuration
from s3backup_operator.kubeapi import FIELD_MANAGER, ApiError, KubeApi, upgraded_managed_fields
from s3backup_operator.render import CHILD_SELECTOR

from tests.operator.conftest import make_backup
from tests.operator.emulator import Cluster, wait_for

pytestmark = pytest.mark.timeout(90)
NS = "backups"
BACKUPS = f"/apis/s3backup.dev/v1alpha1/namespaces/{NS}/s3backups"
CRONJOBS = f"/apis/batch/v1/namespaces/{NS}/cronjobs"
PLAIN_BACKUP = {"bucket": "abc"}  # no credentials Secret to look up


def ready(cluster: Cluster, name: str = "db-dumps") -> dict[str, Any]:
    status = (cluster.get(f"{BACKUPS}/{name}") or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


def wait_ready(cluster: Cluster, status: str, reason: str) -> dict[str, Any]:
    return wait_for(lambda: (lambda c: c if (c.get("status"), c.get("reason")) == (status, reason) else None)(
        ready(cluster)), what=f"Ready={status} ({reason}); last seen {ready(cluster)}")


def _requests(emulator) -> list:
    return list(emulator.kmock)


def test_child_watches_are_filtered_by_labels_at_the_api(emulator, cluster, config, run_operator):
    """What the watches ask for (the real API server then filters; tests/cluster shows the outcome)."""
    with run_operator(config):
        cluster.create(BACKUPS, make_backup(destination=PLAIN_BACKUP))
        wait_ready(cluster, "True", "CronJobReady")
    watches = {}
    for request in _requests(emulator):
        if request.resource is not None and request.params.get("watch") == "true":
            watches.setdefault(request.resource.plural, set()).add(request.params.get("labelSelector"))
    assert watches["pods"] == watches["jobs"] == watches["cronjobs"] == {CHILD_SELECTOR}
    # Backup children carry s3backup.dev/backup, restore children s3backup.dev/restore: the handlers tell them apart.
    assert CHILD_SELECTOR == "app.kubernetes.io/managed-by=s3backup-operator"
    assert watches["s3backups"] == watches["s3restores"] == {None}  # every S3Backup and S3Restore is the operator's


def test_an_api_fault_is_reported_and_retried(emulator, cluster, config, run_operator):
    """Two answers of HTTP 500 to the CronJob's read: Ready=False (ApiError), then the retry succeeds."""

    async def fail_twice():
        view = emulator.kmock[f"get {CRONJOBS}/db-dumps-s3backup"][:2]
        view << 500
        return view

    failures = asyncio.run_coroutine_threadsafe(fail_twice(), emulator.loop).result(10)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup(destination=PLAIN_BACKUP))
        wait_ready(cluster, "True", "CronJobReady")
    assert len(list(failures)) == 2
    failed = [request for request in _requests(emulator) if request.method.name == "PATCH"
              and request.url.path.endswith("/status") and "ApiError" in str(request.data)]
    assert failed, "the failure never reached the Ready condition"
    applies = [request for request in _requests(emulator) if request.resource is not None
               and request.resource.plural == "cronjobs" and request.headers.get("User-Agent") == FIELD_MANAGER
               and request.headers.get("Content-Type", "").startswith("application/apply-patch")]
    assert len(applies) == 1  # made once, after the retry


RESTORES = f"/apis/s3backup.dev/v1alpha1/namespaces/{NS}/s3restores"
PODS = f"/api/v1/namespaces/{NS}/pods"
UNSCHEDULABLE = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                     "reason": "Unschedulable", "message": "0/1 nodes match"}]}


def condition(cluster: Cluster, path: str, kind: str) -> dict[str, Any]:
    status = (cluster.get(path) or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def test_every_write_of_a_conditions_list_is_conditional_on_the_version_it_was_computed_from(
        emulator, cluster, config, run_operator):
    """The reconciles (Ready), the pod watches (RunBlocked) and the Job watch write the same conditions lists, and a
    merge patch replaces a list whole: unconditional, a list computed from an older read drops a condition written
    meanwhile (a RunBlocked lost, never turned False). kube-apiserver answers a stale resourceVersion with 409; the
    emulator does not check it, so this looks at the requests themselves. tests/cluster shows the outcome."""
    managed = {"app.kubernetes.io/managed-by": "s3backup-operator"}
    with run_operator(config):
        cluster.create(BACKUPS, make_backup(destination=PLAIN_BACKUP))
        wait_ready(cluster, "True", "CronJobReady")
        cluster.create(RESTORES, {
            "apiVersion": "s3backup.dev/v1alpha1", "kind": "S3Restore", "metadata": {"name": "back", "namespace": NS},
            "spec": {"backupRef": {"name": "db-dumps"}, "target": {"persistentVolumeClaim": {"claimName": "fresh"}}}})
        wait_for(lambda: condition(cluster, f"{RESTORES}/back", "Ready").get("reason") == "JobCreated",
                 what="the restore's Job")
        for name, label in (("db-dumps-run-1", {"s3backup.dev/backup": "db-dumps"}),
                            ("back-restore-1", {"s3backup.dev/restore": "back"})):
            cluster.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": name, "namespace": NS, "labels": {**managed, **label}}, "status": UNSCHEDULABLE})
        for path in (f"{BACKUPS}/db-dumps", f"{RESTORES}/back"):
            wait_for(lambda: condition(cluster, path, "RunBlocked").get("status") == "True",  # noqa: B023
                     what=f"RunBlocked on {path}")
    writes = [request for request in _requests(emulator) if request.method.name == "PATCH"
              and isinstance(request.data, dict) and "conditions" in (request.data.get("status") or {})]
    assert {request.resource.plural for request in writes} == {"s3backups", "s3restores"}
    assert len(writes) >= 4
    unconditional = [request.data for request in writes if request.id not in emulator.kmock.preconditions]
    assert unconditional == []


def test_no_connection_is_an_api_error():
    api = KubeApi(Configuration(host="http://127.0.0.1:9"))
    try:
        with pytest.raises(ApiError) as refused:
            api.get_cronjob(NS, "x")
        assert refused.value.status == 0 and refused.value.reason == "ConnectionError"
    finally:
        api.close()


def test_fields_of_the_pre_apply_versions_become_the_appliers():
    """An upgrade from merge patches: the "Update" entry's fields fold into the "Apply" entry, so that the next
    apply removes what it no longer sends. Status entries and other managers stay as they are."""
    entries = [
        {"manager": FIELD_MANAGER, "operation": "Update", "apiVersion": "batch/v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:spec": {"f:jobTemplate": {"f:spec": {"f:template": {"f:spec": {"f:nodeSelector": {}}}}}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
         "fieldsV1": {"f:status": {"f:lastScheduleTime": {}}}},
        {"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": "batch/v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:spec": {"f:schedule": {}}}},
        {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:metadata": {"f:labels": {"f:x": {}}}}},
    ]
    upgraded = upgraded_managed_fields(entries)
    assert upgraded is not None
    assert upgraded[:2] == [entries[1], entries[3]]
    assert upgraded[2] == {
        "manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": "batch/v1", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:schedule": {}, "f:jobTemplate": {"f:spec": {"f:template": {"f:spec": {
            "f:nodeSelector": {}}}}}}},
    }
    assert upgraded_managed_fields(upgraded) is None  # once only
    assert upgraded_managed_fields([entries[1]]) is None
    only_updates = upgraded_managed_fields([entries[0]])
    assert only_updates == [{**entries[0], "operation": "Apply"}]
