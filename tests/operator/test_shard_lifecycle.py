"""A sharded run through the real kopf handlers against the emulator: the test plays the Job controller and
the kubelet (an Indexed Job, one pod per index, the end states); the operator makes the recycle Job once, and
only when every shard succeeded, and reports the run as one."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from s3backup_operator.config import OperatorConfig
from s3backup_operator.sharding import COMPLETION_INDEX_LABEL, RUN_LABEL

from tests.operator.conftest import TEST_IMAGE, make_backup
from tests.operator.emulator import Cluster, wait_for

NS = "backups"
BACKUPS = f"/apis/s3backup.dev/v1alpha1/namespaces/{NS}/s3backups"
CRONJOBS = f"/apis/batch/v1/namespaces/{NS}/cronjobs"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
PODS = f"/api/v1/namespaces/{NS}/pods"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"

pytestmark = pytest.mark.timeout(90)


def create_secret(cluster: Cluster) -> None:
    cluster.create(SECRETS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials", "namespace": NS},
        "type": "Opaque", "data": {key: base64.b64encode(b"test-value").decode()
                                   for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    })


def backup_status(cluster: Cluster, name: str = "db-dumps") -> dict[str, Any]:
    return (cluster.get(f"{BACKUPS}/{name}") or {}).get("status") or {}


def cronjob(cluster: Cluster, name: str = "db-dumps-s3backup") -> dict[str, Any] | None:
    return cluster.get(f"{CRONJOBS}/{name}")


def summary(**fields: Any) -> dict[str, Any]:
    return {"result": "success", "error": "", "files_uploaded": 0, "bytes_uploaded": 0, "files_failed": 0,
            "files_recycled": 0, **fields}


def post_pod(cluster: Cluster, job: dict[str, Any], name: str, labels: dict[str, str], message: dict[str, Any],
             exit_code: int = 0) -> None:
    template = job["spec"]["template"]
    cluster.create(PODS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {
            **template["metadata"]["labels"], "job-name": job["metadata"]["name"],
            "batch.kubernetes.io/job-name": job["metadata"]["name"], **labels}},
        "spec": template["spec"],
        "status": {"phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [{
            "name": "s3backup", "ready": False, "restartCount": 0, "image": TEST_IMAGE, "imageID": "",
            "state": {"terminated": {"exitCode": exit_code, "message": json.dumps(message),
                                     "startedAt": "2026-11-26T02:44:01Z", "finishedAt": "2026-11-26T02:44:50Z"}}}]},
    })


def finish(cluster: Cluster, job_name: str, outcome: str, end: str, **status: Any) -> None:
    conditions = [{"type": outcome, "status": "True", "lastTransitionTime": end}]
    extra = {"completionTime": end} if outcome == "Complete" else {}
    cluster.patch(f"{JOBS}/{job_name}/status", {"status": {
        "active": None, "startTime": "2026-11-26T02:44:00Z", "conditions": conditions, **extra, **status}})


def post_run(cluster: Cluster, name: str, results: dict[int, tuple[dict[str, Any], int]],
             created: str | None = None) -> dict[str, Any]:
    """An Indexed Job of the CronJob's template, with one finished pod per index."""
    template = cronjob(cluster)["spec"]["jobTemplate"]
    when = {"creationTimestamp": created} if created else {}
    job = cluster.create(JOBS, {"apiVersion": "batch/v1", "kind": "Job",
                                "metadata": {"name": name, "namespace": NS, **template["metadata"], **when},
                                "spec": template["spec"], "status": {"active": 3}})
    for index, (message, exit_code) in results.items():
        post_pod(cluster, job, f"{name}-{index}-x", {COMPLETION_INDEX_LABEL: str(index)}, message, exit_code)
    return job


def recycle_jobs(cluster: Cluster, run: str) -> list[dict[str, Any]]:
    return [job for job in cluster.items(JOBS) if job["metadata"].get("labels", {}).get(RUN_LABEL) == run]


def test_recycle_once_after_all_shards_and_never_after_a_failed_one(cluster, run_operator):
    config = OperatorConfig(image=TEST_IMAGE, retry_delay=0.5, resync_interval=0)
    create_secret(cluster)
    backup = make_backup()
    backup["spec"]["transfer"] = {"shards": 3}
    backup["spec"]["recycle"] = {"after": "7d"}
    with run_operator(config):
        cluster.create(BACKUPS, backup)
        wait_for(lambda: cronjob(cluster), what="the CronJob")
        assert cronjob(cluster)["spec"]["jobTemplate"]["spec"]["completions"] == 3

        # Every shard succeeded: the recycle Job is made, owned by the run; the status waits for it.
        run = post_run(cluster, "db-dumps-s3backup-1", {i: (summary(files_uploaded=i + 1), 0) for i in range(3)})
        finish(cluster, "db-dumps-s3backup-1", "Complete", "2026-11-26T02:45:00Z", completedIndexes="0-2",
               succeeded=3)
        [recycle] = wait_for(lambda: recycle_jobs(cluster, "db-dumps-s3backup-1"), what="the recycle Job")
        assert recycle["metadata"]["name"] == "db-dumps-s3backup-1-recycle"
        owner = recycle["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", "db-dumps-s3backup-1", run["metadata"]["uid"])
        assert recycle["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
            "recycle", "s3://my-backups/cluster-a/db"]
        assert "lastRun" not in backup_status(cluster)

        # The run's Job seen again (a relist, a restart): still one recycle Job.
        cluster.patch(f"{JOBS}/db-dumps-s3backup-1", {"metadata": {"annotations": {"seen": "again"}}})
        time.sleep(1)
        assert len(recycle_jobs(cluster, "db-dumps-s3backup-1")) == 1

        # The recycle step ends: the run is reported as one.
        post_pod(cluster, recycle, "db-dumps-s3backup-1-recycle-x", {}, summary(files_recycled=2))
        finish(cluster, recycle["metadata"]["name"], "Complete", "2026-11-26T02:46:00Z", succeeded=1)
        last = wait_for(lambda: backup_status(cluster).get("lastRun"), what="the run in the status")
        assert last["jobName"] == "db-dumps-s3backup-1" and last["result"] == "Succeeded"
        assert (last["filesUploaded"], last["filesRecycled"], last["shards"], last["failedShards"]) == (6, 2, 3, [])
        assert last["recycleResult"] == "Succeeded" and last["completionTime"] == "2026-11-26T02:46:00Z"
        assert backup_status(cluster)["lastSuccessfulTime"] == "2026-11-26T02:46:00Z"

        # Shard 1 fails: the status names it at once, and no recycle Job is ever made for that run.
        failed = summary(result="partial", files_failed=1, files_uploaded=1)
        post_run(cluster, "db-dumps-s3backup-2", {0: (summary(), 0), 1: (failed, 1), 2: (summary(), 0)})
        finish(cluster, "db-dumps-s3backup-2", "Failed", "2026-11-27T02:45:00Z", completedIndexes="0,2",
               failedIndexes="1", succeeded=2, failed=1)
        last = wait_for(lambda: (lambda r: r if r.get("jobName") == "db-dumps-s3backup-2" else None)(
            backup_status(cluster).get("lastRun") or {}), what="the failed run in the status")
        assert (last["result"], last["failedShards"], last["recycleResult"]) == ("Partial", [1], "Skipped")
        assert last["message"].startswith("shard 1: ") and last["filesFailed"] == 1
        assert backup_status(cluster)["lastSuccessfulTime"] == "2026-11-26T02:46:00Z"
        time.sleep(1)
        assert recycle_jobs(cluster, "db-dumps-s3backup-2") == []

        # A run that completes after a later run has started gets no recycle step: a late recycle could delete
        # the copy of a file that came back, unchanged, in between.
        post_run(cluster, "db-dumps-s3backup-4", {}, created="2099-01-02T02:00:00Z")
        post_run(cluster, "db-dumps-s3backup-3", {i: (summary(), 0) for i in range(3)}, created="2099-01-01T02:00:00Z")
        finish(cluster, "db-dumps-s3backup-3", "Complete", "2099-01-01T02:45:00Z", completedIndexes="0-2",
               succeeded=3)
        last = wait_for(lambda: (lambda r: r if r.get("jobName") == "db-dumps-s3backup-3" else None)(
            backup_status(cluster).get("lastRun") or {}), what="the superseded run in the status")
        assert (last["result"], last["failedShards"], last["recycleResult"]) == ("Partial", [], "Skipped")
        assert last["message"] == "recycle step not run: a later run has started"
        assert recycle_jobs(cluster, "db-dumps-s3backup-3") == []
