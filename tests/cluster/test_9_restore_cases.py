"""9. S3Restore cases on the real control plane: what the API server refuses (schema, CEL, the immutable spec), what
the operator waits for (the S3Backup, its Secret), a Job of the same name it does not own, and a restore that
meets files that differ (Partial, a Warning Event)."""

from __future__ import annotations

import json
import os

import pytest

from tests.cluster.support import (
    FILES,
    GROUP,
    NODE,
    backup_manifest,
    finished_job,
    finished_restore,
    make_credentials,
    make_volume,
    operator_events,
    run_now,
    wait_condition,
    wait_for,
)


@pytest.fixture
def namespace(installed, new_namespace):
    return new_namespace("restores", credentials=False)


def restore_manifest(namespace: str, **spec: object) -> dict:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "S3Restore",
            "metadata": {"name": "back", "namespace": namespace},
            "spec": {"backupRef": {"name": "db"}, "target": {"persistentVolumeClaim": {"claimName": "target"}},
                     **spec}}


def restore_jobs(cluster, namespace: str) -> list[str]:
    return [job["metadata"]["name"] for job in cluster.items("jobs", "-n", namespace, "-l", f"{GROUP}/restore=back")]


@pytest.mark.parametrize(("spec", "words"), [
    ({"asOf": "soon"}, "spec.asOf"),
    ({"source": {"bucket": "abc"}}, "set exactly one of backupRef, source"),
    ({"target": {"persistentVolumeClaim": {"claimName": "target"}, "subPath": "../x"}}, "spec.target.subPath"),
])
def test_the_api_server_refuses_an_invalid_restore(cluster, namespace, spec, words):
    refused = cluster.apply(restore_manifest(namespace, **spec), check=False)
    assert refused.returncode != 0 and words in refused.stderr, refused.stderr
    assert cluster.get("s3restore", "back", "-n", namespace) is None


def test_a_restore_waits_for_its_backup_and_secret_and_its_spec_is_immutable(cluster, s3, namespace):
    cluster.apply(restore_manifest(namespace))
    assert "'db'" in wait_condition(cluster, "s3restore", "back", namespace, "False", "BackupNotFound")["message"]
    cluster.apply(backup_manifest(namespace, "db", "data", s3, "restores-db"))
    ready = wait_condition(cluster, "s3restore", "back", namespace, "False", "CredentialsSecretNotFound", timeout=90)
    assert "S3Backup db: spec.destination.credentialsSecretRef" in ready["message"]
    assert restore_jobs(cluster, namespace) == []
    make_credentials(cluster, namespace, s3)
    wait_condition(cluster, "s3restore", "back", namespace, "True", "JobCreated", timeout=90)
    assert restore_jobs(cluster, namespace) == ["back-restore"]
    changed = cluster.kubectl("patch", "s3restore", "back", "-n", namespace, "--type=merge",
                              "-p", '{"spec":{"overwrite":true}}', check=False)
    assert changed.returncode != 0 and "the spec of an S3Restore is immutable" in changed.stderr, changed.stderr


def test_a_foreign_job_is_not_taken_over(cluster, s3, namespace):
    make_credentials(cluster, namespace, s3)
    foreign = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "back-restore", "namespace": namespace},
               "spec": {"template": {"spec": {"restartPolicy": "Never", "nodeSelector": {"nowhere": "x"},
                                              "containers": [{"name": "x", "image": "busybox"}]}}}}
    cluster.apply(foreign)
    before = cluster.get("job", "back-restore", "-n", namespace)
    cluster.apply(backup_manifest(namespace, "db", "data", s3, "restores-foreign"))
    cluster.apply(restore_manifest(namespace))
    wait_condition(cluster, "s3restore", "back", namespace, "False", "JobConflict")
    after = cluster.get("job", "back-restore", "-n", namespace)
    assert after["metadata"]["uid"] == before["metadata"]["uid"] and "ownerReferences" not in after["metadata"]
    assert "jobName" not in (cluster.get("s3restore", "back", "-n", namespace).get("status") or {})


def test_files_that_differ_make_a_partial_restore(cluster, s3, namespace):
    """Without spec.overwrite, a file on the target that differs from the backup stays as it is: the restore ends
    Failed with result Partial, one Warning Event, and every other file restored."""
    make_credentials(cluster, namespace, s3)
    source = make_volume(cluster, namespace, "data", FILES)
    prefix = f"restores-partial-{os.getpid()}"
    cluster.apply(backup_manifest(namespace, "db", source, s3, prefix))
    finished_job(cluster, namespace, run_now(cluster, namespace, "db")["metadata"]["name"])
    mine = b"my own version\n"
    make_volume(cluster, namespace, "target", {"a.txt": mine})
    target_dir = cluster.node_dir(NODE, f"/srv/{namespace}-target")
    for path in (target_dir, *target_dir.rglob("*")):
        os.chown(path, 65532, 65532)  # the restore pod's user owns the target, as with fsGroup on a fresh volume
    cluster.apply(restore_manifest(namespace))

    status = finished_restore(cluster, namespace, "back", timeout=240)
    assert (status["phase"], status["result"], status["filesConflicting"]) == ("Failed", "Partial", 1), status
    assert (target_dir / "a.txt").read_bytes() == mine
    for relative, content in FILES.items():
        if relative != "a.txt":
            assert (target_dir / relative).read_bytes() == content
    wait_condition(cluster, "s3restore", "back", namespace, "False", "Partial", type_="Restored")
    events = wait_for(lambda: operator_events(cluster, namespace, "S3Restore"), "the restore's Event")
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "RestorePartial")], json.dumps(events)
    assert "set spec.overwrite to replace them" in events[0]["message"]


def test_a_restore_pod_that_cannot_be_scheduled_is_reported(cluster, s3, namespace):
    """The backup's nodeSelector matches no node: the scheduler leaves the restore pod Pending, RunBlocked says
    why; once a node matches, the pod runs and RunBlocked turns False."""
    make_credentials(cluster, namespace, s3)
    hold = f"{GROUP}/hold-{namespace}"
    cluster.apply(backup_manifest(namespace, "db", "data", s3, f"restores-blocked-{os.getpid()}",
                                  nodeSelector={hold: "yes"}))
    target = cluster.node_dir(NODE, f"/srv/{namespace}-target")
    target.mkdir(parents=True)
    os.chown(target, 65532, 65532)
    make_volume(cluster, namespace, "target", {})
    cluster.apply(restore_manifest(namespace))
    try:
        blocked = wait_condition(cluster, "s3restore", "back", namespace, "True", "Unschedulable",
                                 type_="RunBlocked")
        assert blocked["message"].startswith("pod back-restore-")
        wait_condition(cluster, "s3restore", "back", namespace, "True", "JobCreated")
        cluster.kubectl("label", "node", NODE, f"{hold}=yes")
        wait_condition(cluster, "s3restore", "back", namespace, "False", "PodStarted", type_="RunBlocked")
        finished_job(cluster, namespace, "back-restore")
    finally:
        cluster.kubectl("label", "node", NODE, f"{hold}-", check=False)
