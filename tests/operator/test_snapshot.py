"""copyMethod: Snapshot (pure): the suspended run, the snapshot and clone it gets, and the steps between."""

from __future__ import annotations

import pytest
from s3backup_operator.render import render_cronjob, render_run_now_job
from s3backup_operator.snapshot import (
    SNAPSHOT_OF_ANNOTATION,
    clone_manifest,
    clone_name,
    clone_of,
    deferred,
    give_up_patch,
    next_step,
    snapshot_error,
    snapshot_manifest,
    via_snapshot,
    waiting_job,
)
from s3backup_operator.spec import InvalidSpec, parse
from s3backup_operator.status import last_run

from tests.operator.conftest import make_backup
from tests.operator.schema_tools import validate_builtin


def snapshot_backup(**changes):
    return parse(make_backup(copyMethod="Snapshot", **changes))


def test_the_run_mounts_the_clone_and_starts_suspended(config):
    spec = snapshot_backup(snapshot={"volumeSnapshotClassName": "csi-snap", "storageClassName": "fast"})
    assert (spec.copy_method, spec.snapshot_class, spec.clone_storage_class) == ("Snapshot", "csi-snap", "fast")
    cronjob = render_cronjob(via_snapshot(spec), config)
    template = cronjob["spec"]["jobTemplate"]
    deferred(template["spec"], template["metadata"], "dumps")
    validate_builtin(cronjob)
    assert clone_name(spec) == "db-dumps-s3backup-snap"
    assert template["spec"]["template"]["spec"]["volumes"][0] == {
        "name": "source", "persistentVolumeClaim": {"claimName": "db-dumps-s3backup-snap", "readOnly": True}}
    job = {"metadata": {"name": "j1", **template["metadata"]}, "spec": template["spec"], "status": {}}
    assert waiting_job(job) == "dumps" and clone_of(job) == "db-dumps-s3backup-snap"
    assert waiting_job({**job, "status": {"startTime": "2026-11-26T02:00:00Z"}}) == ""
    assert waiting_job({**job, "spec": {**job["spec"], "suspend": False}}) == ""
    run_now = render_run_now_job(via_snapshot(spec), config, "r")
    deferred(run_now["spec"], run_now["metadata"], "dumps")
    assert run_now["spec"]["suspend"] is True and run_now["metadata"]["annotations"][SNAPSHOT_OF_ANNOTATION] == "dumps"


def test_direct_is_the_default_and_renders_as_before(config):
    spec = parse(make_backup())
    assert spec.copy_method == "Direct"
    assert "suspend" not in render_cronjob(spec, config)["spec"]["jobTemplate"]["spec"]


@pytest.mark.parametrize("source", [{"volume": {"emptyDir": {}}},
                                    {"hostPath": {"path": "/x"}, "nodeSelector": {"a": "b"}}])
def test_a_snapshot_needs_a_claim(source):
    with pytest.raises(InvalidSpec) as raised:
        parse(make_backup(copyMethod="Snapshot", source=source))
    assert "spec.copyMethod Snapshot needs a PersistentVolumeClaim source" in raised.value.message


def item(job, deleting=False, **status):
    meta = {"name": "snap", "annotations": {"s3backup.dev/for-job": job}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T02:00:00Z"
    return {"metadata": meta, "status": status}


@pytest.mark.parametrize(("snapshot", "clone", "step"), [
    (None, None, "create-snapshot"),
    (item("j1"), None, "wait"),
    (item("j1", error={"message": "no such class"}), None, "failed"),
    (item("j1", readyToUse=True), None, "create-clone"),
    (item("j1", readyToUse=True), item("j1"), "start"),
    (item("j0", readyToUse=True), None, "delete-stale"),  # an earlier run's leftovers go first
    (None, item("j0"), "delete-stale"),
    (item("j0", deleting=True), None, "wait"),
    (item("j1", readyToUse=True), item("j0", deleting=True), "wait"),
])
def test_the_steps_of_a_waiting_run(snapshot, clone, step):
    assert next_step("j1", snapshot, clone) == step


def test_the_snapshot_and_its_clone():
    snapshot = snapshot_manifest("backups", "db-dumps-s3backup-snap", "db-dumps", "j1", "dumps", "csi-snap")
    assert snapshot["spec"] == {"source": {"persistentVolumeClaimName": "dumps"}, "volumeSnapshotClassName": "csi-snap"}
    assert snapshot["metadata"]["labels"]["s3backup.dev/backup"] == "db-dumps"
    assert snapshot_manifest("backups", "s", "b", "j1", "dumps", "")["spec"] == {
        "source": {"persistentVolumeClaimName": "dumps"}}
    ready = {**snapshot, "status": {"readyToUse": True, "restoreSize": "10Gi"}}
    source = {"spec": {"storageClassName": "standard", "resources": {"requests": {"storage": "8Gi"}}}}
    clone = clone_manifest("backups", "db-dumps-s3backup-snap", "db-dumps", "j1", ready, source, None)
    validate_builtin(clone)
    assert clone["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}},
                             "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                            "name": "db-dumps-s3backup-snap"},
                             "storageClassName": "standard"}
    assert clone["metadata"]["annotations"] == {"s3backup.dev/for-job": "j1"}
    other = clone_manifest("backups", "c", "b", "j1", snapshot, source, "fast")
    assert other["spec"]["resources"]["requests"]["storage"] == "8Gi"  # no restoreSize: the source's request
    assert other["spec"]["storageClassName"] == "fast"


def test_a_failed_snapshot_ends_the_run_as_failed_without_a_pod():
    snapshot = {"metadata": {"name": "db-dumps-s3backup-snap"},
                "status": {"error": {"message": "driver: volume busy " + "x" * 400}}}
    message = snapshot_error(snapshot, "dumps")
    assert message.startswith("VolumeSnapshot db-dumps-s3backup-snap of claim dumps failed: driver: volume busy")
    assert message.endswith("; the run did not start") and len(message) < 400
    patch = give_up_patch(message)
    assert patch["spec"] == {"parallelism": 0, "activeDeadlineSeconds": 1, "suspend": False}
    # What Kubernetes makes of it: a Failed Job (DeadlineExceeded) that never had a pod.
    job = {"metadata": {"name": "db-dumps-s3backup-29400000", **patch["metadata"]},
           "status": {"startTime": "2026-11-26T02:00:00Z", "conditions": [
               {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                "lastTransitionTime": "2026-11-26T02:00:01Z"}]}}
    run = last_run(job, pods=[])
    assert (run["result"], run["reason"], run["message"]) == ("Failed", "SnapshotFailed", message)
    assert run["completionTime"] == "2026-11-26T02:00:01Z"
