"""6. The way back and the fences: an S3Restore brings a backed-up PVC's files into an empty one, byte for byte
and with their mtimes; an S3Backup the operator's policy does not allow never gets a CronJob, Job or Pod; each
finished run and restore leaves one Event on its resource."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.cluster.support import (
    FILES,
    GROUP,
    NODE,
    backup_manifest,
    condition,
    delete_namespace,
    finished_job,
    finished_restore,
    handled,
    last_run,
    make_credentials,
    make_namespace,
    make_volume,
    operator_events,
    run_now,
    wait_for,
)

IMAGE_UID = 65532  # the user restore pods run as (the image's USER, the chart's default)


@pytest.fixture(scope="module")
def namespace(cluster, installed, s3):
    name = make_namespace(cluster, "restore")
    make_credentials(cluster, name, s3)
    yield name
    delete_namespace(cluster, name)


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root` (relative path -> content, mtime in ns)."""
    return {str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_backup_run_leaves_one_event_and_restore_brings_the_files_back(cluster, s3, namespace):
    backup, prefix = "dumps", f"restore-{os.getpid()}"
    source = make_volume(cluster, namespace, "dumps", FILES)
    source_dir = cluster.node_dir(NODE, f"/srv/{namespace}-dumps")
    cluster.apply(backup_manifest(namespace, backup, source, s3, prefix))
    wait_for(lambda: condition(cluster, "s3backup", backup, namespace).get("status") == "True", "the S3Backup Ready")
    job = finished_job(cluster, namespace, run_now(cluster, namespace, backup)["metadata"]["name"])
    run = last_run(cluster, namespace, backup, job["metadata"]["name"])
    assert (run["result"], run["filesUploaded"]) == ("Succeeded", len(FILES))

    # One Normal BackupSucceeded Event on the S3Backup, naming the run's Job.
    events = wait_for(lambda: operator_events(cluster, namespace, "S3Backup", backup), "the S3Backup's Event")
    assert [(e["type"], e["reason"]) for e in events] == [("Normal", "BackupSucceeded")]
    assert job["metadata"]["name"] in events[0]["message"]

    # An empty claim, writable by the pod's user (as a fresh volume with fsGroup would be), and an S3Restore.
    target_dir = cluster.node_dir(NODE, f"/srv/{namespace}-restored")
    target_dir.mkdir(parents=True)
    os.chown(target_dir, IMAGE_UID, IMAGE_UID)
    target = make_volume(cluster, namespace, "restored", {})
    cluster.apply({"apiVersion": f"{GROUP}/v1alpha1", "kind": "S3Restore",
                   "metadata": {"name": "back", "namespace": namespace},
                   "spec": {"backupRef": {"name": backup}, "target": {"persistentVolumeClaim": {"claimName": target}}}})

    status = finished_restore(cluster, namespace, "back")
    restore_job = cluster.get("job", status["jobName"], "-n", namespace)
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in restore_job["status"]["conditions"])
    assert restore_job["metadata"]["ownerReferences"][0]["kind"] == "S3Restore"
    assert (status["phase"], status["result"]) == ("Succeeded", "Succeeded"), status
    assert status["filesRestored"] == len(FILES)
    assert status["bytesRestored"] == sum(len(content) for content in FILES.values())
    assert (status["filesFailed"], status["filesConflicting"]) == (0, 0)

    # The files on the target volume are the source's, byte for byte and with their mtimes, and nothing else.
    assert tree(target_dir) == tree(source_dir)
    assert sorted(tree(target_dir)) == sorted(FILES)

    events = wait_for(lambda: operator_events(cluster, namespace, "S3Restore", "back"), "the S3Restore's Event")
    assert [(e["type"], e["reason"]) for e in events] == [("Normal", "RestoreSucceeded")]
    assert f"{len(FILES)} files" in events[0]["message"]
    shutil.rmtree(target_dir, ignore_errors=True)


def test_host_path_is_not_allowed_by_default(cluster, s3, namespace):
    name = "escalate"
    manifest = backup_manifest(namespace, name, "unused", s3, f"escalate-{os.getpid()}")
    manifest["spec"]["source"]["volume"] = {"hostPath": {"path": "/"}}
    cluster.apply(manifest)
    refused = wait_for(lambda: (lambda c: c if c.get("status") == "False" else None)(
        condition(cluster, "s3backup", name, namespace)), "Ready=False")
    assert refused["reason"] == "NotAllowed", refused
    assert "hostPath" in refused["message"]

    # A run-now request, handled (kopf records the annotation it has seen) and refused: nothing runs.
    request = "refused-1"
    cluster.kubectl("annotate", "s3backup", name, "-n", namespace, f"{GROUP}/run-now={request}", "--overwrite")

    wait_for(lambda: handled(cluster, "s3backup", name, namespace, request),
             "the operator to handle the run-now request", timeout=60)
    for kind in ("cronjobs", "jobs", "pods"):
        assert not cluster.items(kind, "-n", namespace, "-l", f"{GROUP}/backup={name}"), kind
    assert cluster.get("cronjob", f"{name}-s3backup", "-n", namespace) is None
    status = (cluster.get("s3backup", name, "-n", namespace) or {}).get("status") or {}
    assert status.get("lastRunNowRequest") != request
    assert condition(cluster, "s3backup", name, namespace)["reason"] == "NotAllowed"

