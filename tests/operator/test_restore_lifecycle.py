"""S3Restore for real: kopf handlers over HTTP against kmock's emulator, the test playing the cluster.

The emulator has no Job controller, kubelet, CEL or defaults (emulator.py): the test writes the Job's
status and its pod with the restore's termination message, as they would. What only a real control plane
can show (the pod actually running, writing into the PVC, the CEL rules) is listed in the README.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from s3backup_operator.config import Allowance, OperatorConfig, Policy
from s3backup_operator.restore_render import render_restore_job
from s3backup_operator.restore_spec import parse_restore

from tests.operator.conftest import TEST_IMAGE, make_backup, option
from tests.operator.emulator import Cluster, wait_for
from tests.operator.schema_tools import validate_builtin
from tests.operator.test_lifecycle import ACCESS_KEY, BACKUPS, JOBS, NS, PODS, SECRET_KEY, create_secret

pytestmark = pytest.mark.timeout(90)

RESTORES = f"/apis/s3backup.dev/v1alpha1/namespaces/{NS}/s3restores"
EVENTS = f"/api/v1/namespaces/{NS}/events"
JOB_NAME = "get-it-back-restore"
SUMMARY = {"command": "restore", "result": "success", "error": "", "exit_code": 0, "dry_run": False, "as_of": "",
           "files_listed": 5, "bytes_listed": 500, "files_restored": 4, "bytes_restored": 400, "files_unchanged": 1,
           "bytes_unchanged": 100, "files_conflicting": 0, "files_failed": 0, "errors": []}


def make_restore(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "s3backup.dev/v1alpha1", "kind": "S3Restore",
            "metadata": {"name": "get-it-back", "namespace": NS},
            "spec": {"backupRef": {"name": "db-dumps"}, "target": {"persistentVolumeClaim": {"claimName": "fresh"}},
                     **spec}}


def restore_status(cluster: Cluster) -> dict[str, Any]:
    return (cluster.get(f"{RESTORES}/get-it-back") or {}).get("status") or {}


def condition(cluster: Cluster, kind: str = "Ready") -> dict[str, Any]:
    return next((c for c in restore_status(cluster).get("conditions") or [] if c["type"] == kind), {})


def wait_ready(cluster: Cluster, status: str, reason: str) -> dict[str, Any]:
    return wait_for(lambda: (lambda c: c if (c.get("status"), c.get("reason")) == (status, reason) else None)(
        condition(cluster)), what=f"Ready={status} ({reason}); last seen {condition(cluster)}")


def restore_jobs(cluster: Cluster) -> list[dict[str, Any]]:
    return [job for job in cluster.items(JOBS) if "s3backup.dev/restore" in (job["metadata"].get("labels") or {})]


def finish(cluster: Cluster, job: dict[str, Any], summary: dict[str, Any] | None, exit_code: int = 0,
           outcome: str = "Complete", end: str = "2026-11-27T12:05:00Z") -> None:
    """What the kubelet and the Job controller would write: the pod's end state, then the Job's."""
    template = job["spec"]["template"]
    cluster.create(PODS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{JOB_NAME}-x1y2z", "namespace": NS,
                     "labels": {**template["metadata"]["labels"], "job-name": JOB_NAME}},
        "spec": template["spec"],
        "status": {"phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [{
            "name": "s3backup", "ready": False, "restartCount": 0, "image": TEST_IMAGE, "imageID": "",
            "state": {"terminated": {"exitCode": exit_code, "message": json.dumps(summary) if summary else "oops\n",
                                     "startedAt": "2026-11-27T12:00:06Z", "finishedAt": end}}}]},
    })
    status: dict[str, Any] = {"active": None, "startTime": "2026-11-27T12:00:05Z",
                              "conditions": [{"type": outcome, "status": "True", "lastTransitionTime": end}]}
    status.update({"succeeded": 1, "completionTime": end} if outcome == "Complete" else {"failed": 1})
    cluster.patch(f"{JOBS}/{JOB_NAME}/status", {"status": status})


def restore_events(cluster: Cluster) -> list[dict[str, Any]]:
    return [e for e in cluster.items(EVENTS) if e.get("involvedObject", {}).get("kind") == "S3Restore"]


def test_restore_from_a_backup_ref(cluster, config, run_operator):
    """S3Restore -> one Job (the backup's connection, the PVC read-write) -> running -> counts, Event."""
    create_secret(cluster)
    cluster.create(BACKUPS, make_backup(job={"proxy": {"httpsProxy": "http://proxy:3128"}}))
    with run_operator(config) as runner:
        cluster.create(RESTORES, make_restore(asOf="2026-11-20T00:00:00Z", exclude=["*.tmp"]))
        [job] = wait_for(lambda: restore_jobs(cluster), what="the restore Job")
        restore = cluster.get(f"{RESTORES}/get-it-back")
        assert job["metadata"]["name"] == JOB_NAME
        assert job["metadata"]["ownerReferences"] == [{
            "apiVersion": "s3backup.dev/v1alpha1", "kind": "S3Restore", "name": "get-it-back",
            "uid": restore["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        expected = render_restore_job(parse_restore(restore, cluster.get(f"{BACKUPS}/db-dumps")), config)
        assert job["spec"] == expected["spec"]
        validate_builtin(job)
        pod = job["spec"]["template"]["spec"]
        args = pod["containers"][0]["args"]
        assert args[:3] == ["restore", "s3://my-backups/cluster-a/db", "/data"]
        assert option(args, "--endpoint-url") == "https://s3.example.com" and "--path-style" in args
        assert option(args, "--as-of") == "2026-11-20T00:00:00Z" and option(args, "--exclude") == "*.tmp"
        assert "--overwrite" not in args
        assert {"name": "source", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]  # read-write
        assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "fresh"}
        env = {item["name"]: item for item in pod["containers"][0]["env"]}
        assert env["HTTPS_PROXY"]["value"] == "http://proxy:3128"
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials"
        ready = wait_ready(cluster, "True", "JobCreated")
        assert ready["message"] == f"Job {JOB_NAME} restores S3Backup db-dumps into PVC fresh"
        assert restore_status(cluster)["jobName"] == JOB_NAME
        assert restore_status(cluster)["asOf"] == "2026-11-20T00:00:00Z"
        wait_for(lambda: restore_status(cluster).get("phase") == "Pending", what="phase Pending")

        # The Job controller starts a pod: Running.
        cluster.patch(f"{JOBS}/{JOB_NAME}/status", {"status": {"active": 1, "startTime": "2026-11-27T12:00:05Z"}})
        wait_for(lambda: restore_status(cluster).get("phase") == "Running", what="phase Running")
        assert restore_status(cluster)["startTime"] == "2026-11-27T12:00:05Z"

        # It finishes: the counts from the termination message, and one Normal Event.
        finish(cluster, job, SUMMARY)
        wait_for(lambda: restore_status(cluster).get("phase") == "Succeeded", what="phase Succeeded")
        status = restore_status(cluster)
        assert {key: status[key] for key in ("result", "filesRestored", "bytesRestored", "filesUnchanged",
                                             "filesConflicting", "filesFailed", "startTime", "completionTime")} == {
            "result": "Succeeded", "filesRestored": 4, "bytesRestored": 400, "filesUnchanged": 1,
            "filesConflicting": 0, "filesFailed": 0, "startTime": "2026-11-27T12:00:05Z",
            "completionTime": "2026-11-27T12:05:00Z"}
        assert condition(cluster, "Restored")["status"] == "True"
        [event] = wait_for(lambda: restore_events(cluster), what="the Event")
        assert (event["type"], event["reason"]) == ("Normal", "RestoreSucceeded")
        assert event["involvedObject"]["uid"] == restore["metadata"]["uid"]
        assert event["message"].startswith(f"Job {JOB_NAME} succeeded: 4 files (400 bytes) restored, 1 unchanged")

        # Never a second run: not on a replayed Job event, not on a change of the resource.
        cluster.patch(f"{JOBS}/{JOB_NAME}", {"metadata": {"labels": {"poke": "1"}}})
        cluster.patch(f"{RESTORES}/get-it-back", {"spec": {"overwrite": True}})  # CEL forbids it on a real cluster
        wait_ready(cluster, "True", "SpecChangeIgnored")
        assert [j["metadata"]["name"] for j in restore_jobs(cluster)] == [JOB_NAME]
        assert len(restore_events(cluster)) == 1 and restore_status(cluster)["phase"] == "Succeeded"
    with run_operator(config):  # a restart replays every object: still one Job, one Event
        cluster.patch(f"{RESTORES}/get-it-back", {"metadata": {"labels": {"seen": "1"}}})
        wait_for(lambda: "seen" in cluster.get(f"{RESTORES}/get-it-back")["metadata"]["annotations"].get(
            "operator.s3backup.dev/last-handled-configuration", ""), what="the restart's handling")
        assert len(restore_jobs(cluster)) == 1 and len(restore_events(cluster)) == 1
    assert SECRET_KEY not in runner.output and ACCESS_KEY not in runner.output


def test_partial_restore_is_a_warning(cluster, config, run_operator):
    cluster.create(BACKUPS, make_backup(destination={"bucket": "abc"}))
    with run_operator(config):
        cluster.create(RESTORES, make_restore())
        [job] = wait_for(lambda: restore_jobs(cluster), what="the restore Job")
        partial = {**SUMMARY, "result": "partial", "exit_code": 1, "files_restored": 3, "files_conflicting": 1,
                   "errors": ["db.sql: exists and differs"]}
        finish(cluster, job, partial, exit_code=1, outcome="Failed")
        wait_for(lambda: restore_status(cluster).get("phase") == "Failed", what="phase Failed")
        status = restore_status(cluster)
        assert (status["result"], status["filesRestored"], status["filesConflicting"], status["exitCode"]) == (
            "Partial", 3, 1, 1)
        restored = condition(cluster, "Restored")
        assert (restored["status"], restored["reason"]) == ("False", "Partial")
        [event] = wait_for(lambda: restore_events(cluster), what="the Event")
        assert (event["type"], event["reason"]) == ("Warning", "RestorePartial")
        assert "set spec.overwrite to replace them" in event["message"] and "db.sql: exists and differs" in event[
            "message"]
        # Deleting it waits for nothing (no finalizer): the Job goes with it through the garbage collector.
        assert not cluster.get(f"{RESTORES}/get-it-back")["metadata"].get("finalizers")
        cluster.delete(f"{RESTORES}/get-it-back")
        wait_for(lambda: cluster.get(f"{RESTORES}/get-it-back") is None, what="the S3Restore gone")


def test_explicit_source_without_a_summary_fails(cluster, config, run_operator):
    with run_operator(config):
        cluster.create(RESTORES, make_restore(backupRef=None, source={"bucket": "archive", "prefix": "x"}))
        [job] = wait_for(lambda: restore_jobs(cluster), what="the restore Job")
        assert job["spec"]["template"]["spec"]["containers"][0]["args"][1] == "s3://archive/x"
        finish(cluster, job, None, exit_code=137, outcome="Failed")
        wait_for(lambda: restore_status(cluster).get("phase") == "Failed", what="phase Failed")
        assert restore_status(cluster)["message"] == "no summary from the restore (see the pod's logs)"
        [event] = wait_for(lambda: restore_events(cluster), what="the Event")
        assert (event["type"], event["reason"]) == ("Warning", "RestoreFailed")


@pytest.mark.parametrize(("spec", "reason", "words"), [
    ({"asOf": "soon"}, "InvalidSpec", "spec.asOf"),
    ({"source": {"bucket": "abc"}}, "InvalidSpec", "exactly one of backupRef, source"),
    ({"target": {"persistentVolumeClaim": {"claimName": "fresh"}, "subPath": "../x"}}, "InvalidSubPath",
     "spec.target.subPath"),
    ({"job": {"serviceAccountName": "restorer"}}, "NotAllowed", "spec.job.serviceAccountName"),
])
def test_invalid_spec_sets_ready_false(cluster, config, run_operator, spec, reason, words):
    cluster.create(BACKUPS, make_backup(destination={"bucket": "abc"}))
    with run_operator(config) as runner:
        cluster.create(RESTORES, make_restore(**spec))
        ready = wait_ready(cluster, "False", reason)
        assert words in ready["message"], ready["message"]
        assert restore_jobs(cluster) == [] and "jobName" not in restore_status(cluster)
    assert "Traceback" not in runner.output


def test_service_account_where_the_policy_allows_it(cluster, run_operator):
    config = OperatorConfig(image=TEST_IMAGE, retry_delay=0.5, resync_interval=0,
                            policy=Policy(service_account_name=Allowance(namespaces=frozenset({NS}))))
    cluster.create(BACKUPS, make_backup(destination={"bucket": "abc"}))
    with run_operator(config):
        cluster.create(RESTORES, make_restore(job={"serviceAccountName": "restorer"}))
        [job] = wait_for(lambda: restore_jobs(cluster), what="the restore Job")
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == "restorer"


def test_missing_backup_then_created(cluster, config, run_operator):
    """A backupRef to an S3Backup not there (yet): Ready False, retried; the Job once it exists."""
    with run_operator(config):
        cluster.create(RESTORES, make_restore())
        assert "'db-dumps'" in wait_ready(cluster, "False", "BackupNotFound")["message"]
        assert restore_jobs(cluster) == []
        cluster.create(BACKUPS, make_backup(destination={"bucket": "abc"}))
        wait_ready(cluster, "True", "JobCreated")
        assert len(restore_jobs(cluster)) == 1


def test_missing_secret_then_created(cluster, config, run_operator):
    cluster.create(BACKUPS, make_backup())
    with run_operator(config):
        cluster.create(RESTORES, make_restore())
        ready = wait_ready(cluster, "False", "CredentialsSecretNotFound")
        assert ready["message"] == ("Secret 's3-credentials' (S3Backup db-dumps: spec.destination.credentialsSecretRef)"
                                    " not found in namespace 'backups'")
        assert restore_jobs(cluster) == []
        create_secret(cluster)
        wait_ready(cluster, "True", "JobCreated")


def test_a_foreign_job_is_not_taken_over(cluster, config, run_operator):
    foreign = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": JOB_NAME, "namespace": NS},
               "spec": {"template": {"spec": {"restartPolicy": "Never",
                                              "containers": [{"name": "x", "image": "busybox"}]}}}}
    cluster.create(JOBS, foreign)
    cluster.create(BACKUPS, make_backup(destination={"bucket": "abc"}))
    with run_operator(config):
        cluster.create(RESTORES, make_restore())
        wait_ready(cluster, "False", "JobConflict")
        assert cluster.get(f"{JOBS}/{JOB_NAME}")["spec"] == foreign["spec"]
        assert "jobName" not in restore_status(cluster)


def test_a_pod_that_cannot_be_scheduled_is_reported(cluster, config, run_operator):
    """A ReadWriteOnce claim in use on another node: the restore pod waits; RunBlocked says why."""
    cluster.create(BACKUPS, make_backup(destination={"bucket": "abc"}))
    with run_operator(config):
        cluster.create(RESTORES, make_restore())
        [job] = wait_for(lambda: restore_jobs(cluster), what="the restore Job")
        template = job["spec"]["template"]
        pod_name = f"{JOB_NAME}-q8w7e"
        cluster.create(PODS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": NS,
                         "labels": {**template["metadata"]["labels"], "job-name": JOB_NAME}},
            "spec": template["spec"],
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 node(s) had volume node affinity conflict."}]},
        })
        blocked = wait_for(lambda: (lambda c: c if c.get("status") == "True" else None)(
            condition(cluster, "RunBlocked")), what="RunBlocked=True")
        assert blocked["reason"] == "Unschedulable" and blocked["message"].startswith(f"pod {pod_name}: 0/3 nodes")
        assert condition(cluster)["status"] == "True"  # the resource itself is fine
        cluster.patch(f"{PODS}/{pod_name}/status", {"status": {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"}]}})
        wait_for(lambda: (condition(cluster, "RunBlocked").get("status"), condition(cluster, "RunBlocked").get(
            "reason")) == ("False", "PodStarted"), what="RunBlocked=False")
