"""The operator's side of the API protocol, seen by the emulator: server-side apply with the operator's field
manager, label-filtered watches, error messages, and API faults a real cluster cannot be made to produce.

What server-side apply and the label selectors then do is kube-apiserver's business: tests/cluster checks it
on the real control plane. Here the requests themselves are checked.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes.client import Configuration
from s3backup_operator.kubeapi import FIELD_MANAGER, ApiError, KubeApi, upgraded_managed_fields
from s3backup_operator.render import CHILD_SELECTOR

from tests.operator.conftest import make_backup
from tests.operator.emulator import wait_for
from tests.operator.test_lifecycle import BACKUPS, CRONJOBS, NS, cronjob, wait_ready

pytestmark = pytest.mark.timeout(90)
PLAIN_BACKUP = {"bucket": "abc"}  # no credentials Secret to look up


def _requests(emulator) -> list:
    return list(emulator.kmock)


def test_child_watches_are_filtered_by_labels_at_the_api(emulator, cluster, config, run_operator):
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


def test_the_cronjob_is_applied_server_side_by_the_operator_field_manager(emulator, cluster, config, run_operator):
    with run_operator(config):
        cluster.create(BACKUPS, make_backup(destination=PLAIN_BACKUP))
        wait_ready(cluster, "True", "CronJobReady")
        cluster.patch(f"{BACKUPS}/db-dumps", {"spec": {"suspend": True}})
        wait_for(lambda: cronjob(cluster)["spec"]["suspend"] is True, what="the suspended CronJob")
    writes = [request for request in _requests(emulator)
              if request.resource is not None and request.resource.plural == "cronjobs"
              and request.headers.get("User-Agent") == FIELD_MANAGER and request.action.name != "FETCH"]
    assert len(writes) == 2, writes  # created, then changed: both by one apply each, never a POST or PUT
    for request in writes:
        assert request.headers["Content-Type"] == "application/apply-patch+yaml"
        assert request.params == {"fieldManager": FIELD_MANAGER, "force": "true"}
        assert request.url.path == f"{CRONJOBS}/db-dumps-s3backup"
        applied = json.loads(request.text)  # the whole intent, every time
        assert applied["kind"] == "CronJob" and applied["spec"]["jobTemplate"]
        assert applied["metadata"]["ownerReferences"][0]["controller"] is True


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


def test_api_errors_carry_status_and_reason_never_bodies(emulator):
    api = KubeApi(Configuration(host=emulator.url))
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "j", "namespace": NS, "labels": {"k": "1"}},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i", "args": ["s3cr3t-arg"]}]}}}}
    try:
        assert api.get_cronjob(NS, "nothing") is None
        assert api.secret_keys(NS, "nothing") is None
        assert api.create_job(job) is True
        assert api.create_job(job) is False  # exists: a retried handler's own Job
        assert [item["metadata"]["name"] for item in api.list_jobs(NS, {"k": "1"})] == ["j"]
        assert api.list_jobs(NS, {"k": "2"}) == []  # filtered here too: the emulator ignores selectors
        with pytest.raises(ApiError) as missing:
            api.patch_backup_status(NS, "nothing", {"lastRun": {"message": "s3cr3t-status"}})
        assert missing.value.status == 404 and "s3cr3t" not in str(missing.value)
        assert str(missing.value).startswith("HTTP 404 ") and "\n" not in str(missing.value)
    finally:
        api.close()


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
