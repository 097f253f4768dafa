"""The operator for real: kopf handlers over HTTP against kmock's emulator, the test playing the cluster.

What the emulator does not do (garbage collection, defaults, controllers) is listed in emulator.py; here
the test posts the Jobs and Pods a CronJob controller and kubelet would create, with the syncer's
termination message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from typing import Any

import pytest
from prometheus_client import generate_latest
from s3backup_operator.config import OperatorConfig
from s3backup_operator.metrics import OperatorMetrics
from s3backup_operator.pushgateway import delete_group
from s3backup_operator.render import render_cronjob
from s3backup_operator.spec import parse
from s3backup_syncer.metrics import push_run_metrics
from s3backup_syncer.report import Summary

from tests.operator.conftest import TEST_IMAGE, make_backup, option
from tests.operator.emulator import Cluster, wait_for
from tests.operator.schema_tools import validate_builtin

NS = "backups"
BACKUPS = f"/apis/s3backup.dev/v1alpha1/namespaces/{NS}/s3backups"
CRONJOBS = f"/apis/batch/v1/namespaces/{NS}/cronjobs"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
PODS = f"/api/v1/namespaces/{NS}/pods"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
ACCESS_KEY = "AKIAOPERATORTEST0001"
SECRET_KEY = "s3cr3t-Operator-Value-Never-Logged"

pytestmark = pytest.mark.timeout(90)

SUMMARY = {
    "result": "success", "error": "", "exit_code": 0, "dry_run": False, "started_at": 1764124000.0,
    "duration_seconds": 3.2, "files_scanned": 5, "bytes_scanned": 500, "files_uploaded": 4, "bytes_uploaded": 400,
    "files_unchanged": 1, "bytes_unchanged": 100, "files_recycled": 2, "bytes_recycled": 20, "files_failed": 0,
    "bytes_failed": 0, "files_excluded": 0, "bytes_hashed": 400, "remote_objects": 5, "remote_bytes": 500,
    "recycle_pending": 0, "errors": [],
}


def create_secret(cluster: Cluster, name: str = "s3-credentials", keys: tuple[str, ...] = (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")) -> None:
    values = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    cluster.create(SECRETS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "type": "Opaque",
        "data": {key: base64.b64encode(values.get(key, "x").encode()).decode() for key in keys},
    })


def backup_status(cluster: Cluster, name: str = "db-dumps") -> dict[str, Any]:
    return (cluster.get(f"{BACKUPS}/{name}") or {}).get("status") or {}


def ready(cluster: Cluster, name: str = "db-dumps") -> dict[str, Any]:
    return next((c for c in backup_status(cluster, name).get("conditions") or [] if c["type"] == "Ready"), {})


def wait_ready(cluster: Cluster, status: str, reason: str, name: str = "db-dumps") -> dict[str, Any]:
    return wait_for(lambda: (lambda c: c if c.get("status") == status and c.get("reason") == reason else None)(
        ready(cluster, name)), what=f"Ready={status} ({reason}); last seen {ready(cluster, name)}")


def cronjob(cluster: Cluster, name: str = "db-dumps-s3backup") -> dict[str, Any] | None:
    return cluster.get(f"{CRONJOBS}/{name}")


def args_of(manifest: dict[str, Any]) -> list[str]:
    spec = manifest["spec"]
    template = spec["jobTemplate"]["spec"]["template"] if manifest["kind"] == "CronJob" else spec["template"]
    return template["spec"]["containers"][0]["args"]


def post_job_run(cluster: Cluster, job_name: str, summary: dict[str, Any] | None, *, owner: dict[str, Any],
                 template: dict[str, Any], outcome: str = "Complete", exit_code: int = 0,
                 end: str = "2026-11-26T02:45:00Z") -> None:
    """What the Job controller and the kubelet would write: the Job, its Pod, the end states."""
    cluster.create(JOBS, {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name, "namespace": NS, "labels": dict(template["metadata"]["labels"]),
                     "ownerReferences": [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                          "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                          "controller": True}]},
        "spec": {"template": template},
        "status": {"active": 1, "startTime": "2026-11-26T02:44:00Z"},
    })
    cluster.create(PODS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job_name}-abcde", "namespace": NS,
                     "labels": {**template["metadata"]["labels"], "job-name": job_name,
                                "batch.kubernetes.io/job-name": job_name}},
        "spec": template["spec"],
        "status": {"phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [{
            "name": "s3backup", "ready": False, "restartCount": 0, "image": TEST_IMAGE, "imageID": "",
            "state": {"terminated": {
                "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                "message": json.dumps(summary, sort_keys=True) if summary else "fatal: no summary\n",
                "startedAt": "2026-11-26T02:44:01Z", "finishedAt": end}},
        }]},
    })
    status: dict[str, Any] = {"active": None, "conditions": [
        {"type": outcome, "status": "True", "lastTransitionTime": end}]}
    if outcome == "Complete":
        status.update(succeeded=1, completionTime=end)
    else:
        status.update(failed=1)
    cluster.patch(f"{JOBS}/{job_name}/status", {"status": status})


def push_group(pushgateway, backup: str) -> None:
    """What a backup job pushes, pushed by the syncer's own code (the gateway rejects inconsistent types)."""
    summary = Summary(result="success", duration_seconds=1.0)
    assert push_run_metrics(pushgateway.url, {"namespace": NS, "backup": backup}, summary, 86400) is None


def pushed_backups(pushgateway, namespace: str = NS) -> set[str]:
    """The backups with a metrics group in the Pushgateway (job="s3backup", this namespace)."""
    with urllib.request.urlopen(f"{pushgateway.url}/api/v1/metrics", timeout=5) as response:
        groups = json.load(response)["data"]
    return {group["labels"].get("backup", "") for group in groups
            if group["labels"].get("job") == "s3backup" and group["labels"].get("namespace") == namespace}


def test_full_lifecycle(cluster, run_operator, pushgateway):
    """create -> CronJob -> update -> patched -> a Job finishes -> status -> delete -> cleaned up."""
    config = OperatorConfig(image=TEST_IMAGE, retry_delay=0.5, resync_interval=0,
                            default_pushgateway_url=pushgateway.url)
    metrics = OperatorMetrics()
    create_secret(cluster)
    push_group(pushgateway, "db-dumps")
    push_group(pushgateway, "someone-else")
    with run_operator(config, metrics) as runner:
        # Create: the CronJob appears, adopted, with exactly the rendered spec.
        cluster.create(BACKUPS, make_backup())
        created = wait_for(lambda: cronjob(cluster), what="the CronJob")
        backup = cluster.get(f"{BACKUPS}/db-dumps")
        expected = render_cronjob(parse(backup), config)
        assert created["spec"] == expected["spec"]
        assert created["metadata"]["labels"] == expected["metadata"]["labels"]
        assert created["metadata"]["ownerReferences"] == [{
            "apiVersion": "s3backup.dev/v1alpha1", "kind": "S3Backup", "name": "db-dumps",
            "uid": backup["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
        }]
        validate_builtin(created)
        assert option(args_of(created), "--pushgateway") == pushgateway.url
        condition = wait_ready(cluster, "True", "CronJobReady")
        status = backup_status(cluster)
        assert status["cronJobName"] == "db-dumps-s3backup"
        assert status["schedule"] == created["spec"]["schedule"] and "H" not in status["schedule"]
        assert status["observedGeneration"] == 1 and condition["observedGeneration"] == 1

        # Nothing changes when nothing changed: a label on the S3Backup re-runs the handler, not a patch.
        version = created["metadata"]["resourceVersion"]
        cluster.patch(f"{BACKUPS}/db-dumps", {"metadata": {"labels": {"team": "db"}}})
        wait_for(lambda: "team" in cluster.get(f"{BACKUPS}/db-dumps")["metadata"]["annotations"].get(
            "operator.s3backup.dev/last-handled-configuration", ""), what="the label change handled")
        assert cronjob(cluster)["metadata"]["resourceVersion"] == version

        # Update: any spec change re-renders and patches the CronJob.
        cluster.patch(f"{BACKUPS}/db-dumps", {"spec": {"transfer": {"concurrency": 9}, "schedule": "@hourly",
                                                        "destination": {"region": None}}})
        patched = wait_for(lambda: (lambda c: c if "--concurrency=9" in args_of(c) else None)(cronjob(cluster)),
                           what="the patched CronJob")
        assert patched["spec"]["schedule"] == "@hourly"
        assert option(args_of(patched), "--region") is None
        assert option(args_of(patched), "--expected-interval") == "1h"
        assert patched["spec"] == render_cronjob(parse(cluster.get(f"{BACKUPS}/db-dumps")), config)["spec"]
        wait_for(lambda: backup_status(cluster).get("observedGeneration") == 2, what="observedGeneration 2")

        # A scheduled run finishes: status.lastRun from the pod's termination message.
        post_job_run(cluster, "db-dumps-s3backup-29400000", SUMMARY, owner=patched,
                     template=patched["spec"]["jobTemplate"]["spec"]["template"])
        last_run = wait_for(lambda: backup_status(cluster).get("lastRun"), what="status.lastRun")
        assert last_run == {
            "jobName": "db-dumps-s3backup-29400000", "result": "Succeeded", "startTime": "2026-11-26T02:44:00Z",
            "completionTime": "2026-11-26T02:45:00Z", "filesUploaded": 4, "bytesUploaded": 400,
            "filesRecycled": 2, "filesFailed": 0, "exitCode": 0,
        }
        assert backup_status(cluster)["lastSuccessfulTime"] == "2026-11-26T02:45:00Z"

        # A later failed run: lastRun moves on, lastSuccessfulTime stays.
        failed = {**SUMMARY, "result": "error", "exit_code": 2, "error": "bucket 'my-backups' does not exist"}
        post_job_run(cluster, "db-dumps-s3backup-29400060", failed, owner=patched, outcome="Failed", exit_code=2,
                     template=patched["spec"]["jobTemplate"]["spec"]["template"], end="2026-11-26T03:45:00Z")
        wait_for(lambda: backup_status(cluster).get("lastRun", {}).get("result") == "Failed", what="a Failed run")
        assert backup_status(cluster)["lastRun"]["message"] == "bucket 'my-backups' does not exist"
        assert backup_status(cluster)["lastSuccessfulTime"] == "2026-11-26T02:45:00Z"

        # The CronJob controller records a schedule: copied to the S3Backup.
        cluster.patch(f"{CRONJOBS}/db-dumps-s3backup/status", {"status": {"lastScheduleTime": "2026-11-26T03:44:00Z"}})
        wait_for(lambda: backup_status(cluster).get("lastScheduleTime") == "2026-11-26T03:44:00Z",
                 what="status.lastScheduleTime")

        # The operator's own metrics reflect the status.
        text = wait_for(lambda: (lambda t: t if 'result="Failed"} 1.0' in t else None)(
            generate_latest(metrics.registry).decode()), what="metrics with the last result")
        assert 's3backup_operator_backups{namespace="backups",ready="True",reason="CronJobReady"} 1.0' in text
        assert ('s3backup_operator_backup_last_result{backup="db-dumps",namespace="backups",result="Succeeded"} 0.0'
                in text)

        # Delete: the Pushgateway group and the CronJob go; the finalizer is released.
        cluster.delete(f"{BACKUPS}/db-dumps")
        wait_for(lambda: cluster.get(f"{BACKUPS}/db-dumps") is None, what="the S3Backup gone")
        assert cronjob(cluster) is None
        assert "db-dumps" not in pushed_backups(pushgateway)
        assert "someone-else" in pushed_backups(pushgateway)  # only its own group
        asyncio.run(delete_group(pushgateway.url, NS, "someone-else"))
        wait_for(lambda: "db-dumps" not in generate_latest(metrics.registry).decode(), what="metrics forgotten")

    # The syncer's Jobs and Pods are left to the garbage collector (which the emulator does not have):
    # they are owned by the CronJob, which is owned by the S3Backup.
    assert all(job["metadata"]["ownerReferences"][0]["kind"] == "CronJob" for job in cluster.items(JOBS))
    assert SECRET_KEY not in runner.output and base64.b64encode(SECRET_KEY.encode()).decode() not in runner.output
    assert ACCESS_KEY not in runner.output


def test_run_now(cluster, config, run_operator):
    create_secret(cluster)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup())
        the_cronjob = wait_for(lambda: cronjob(cluster), what="the CronJob")
        cluster.patch(f"{BACKUPS}/db-dumps", {"metadata": {"annotations": {"s3backup.dev/run-now": "1"}}})
        jobs = wait_for(lambda: cluster.items(JOBS), what="the run-now Job")
        [job] = jobs
        assert job["metadata"]["labels"]["s3backup.dev/trigger"] == "run-now"
        assert job["metadata"]["ownerReferences"][0]["uid"] == cluster.get(f"{BACKUPS}/db-dumps")["metadata"]["uid"]
        assert job["spec"]["template"]["spec"] == the_cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        validate_builtin(job)
        wait_for(lambda: backup_status(cluster).get("lastRunNowRequest") == "1", what="the request recorded")

        # A second request while the first Job still runs waits for it (no two syncers on one prefix).
        cluster.patch(f"{BACKUPS}/db-dumps", {"metadata": {"annotations": {"s3backup.dev/run-now": "2"}}})
        wait_for(lambda: _deferred(cluster), what="the second request deferred")
        assert len(cluster.items(JOBS)) == 1
        cluster.patch(f"{JOBS}/{job['metadata']['name']}/status", {"status": {
            "active": None, "succeeded": 1, "completionTime": "2026-11-26T10:00:05Z",
            "conditions": [{"type": "Complete", "status": "True"}]}})
        wait_for(lambda: len(cluster.items(JOBS)) == 2, what="the second run-now Job")
        wait_for(lambda: backup_status(cluster).get("lastRunNowRequest") == "2", what="the second request recorded")
        # The same value again is not a new request.
        cluster.patch(f"{BACKUPS}/db-dumps", {"metadata": {"labels": {"poke": "1"}}})
        wait_for(lambda: "poke" in cluster.get(f"{BACKUPS}/db-dumps")["metadata"]["annotations"].get(
            "operator.s3backup.dev/last-handled-configuration", ""), what="the label change handled")
        assert len(cluster.items(JOBS)) == 2


def _deferred(cluster: Cluster) -> bool:
    """kopf keeps a handler's TemporaryError message in its progress annotation until it is retried."""
    annotations = cluster.get(f"{BACKUPS}/db-dumps")["metadata"].get("annotations") or {}
    return any("run-now waits for the running Job db-dumps-now-" in value for value in annotations.values())


def test_suspend_and_resume(cluster, config, run_operator):
    create_secret(cluster)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup())
        wait_ready(cluster, "True", "CronJobReady")
        assert cronjob(cluster)["spec"]["suspend"] is False
        cluster.patch(f"{BACKUPS}/db-dumps", {"spec": {"suspend": True}})
        wait_for(lambda: cronjob(cluster)["spec"]["suspend"] is True, what="a suspended CronJob")
        assert "suspended" in wait_ready(cluster, "True", "Suspended")["message"]
        cluster.patch(f"{BACKUPS}/db-dumps", {"spec": {"suspend": False}})
        wait_for(lambda: cronjob(cluster)["spec"]["suspend"] is False, what="a resumed CronJob")
        wait_ready(cluster, "True", "CronJobReady")


def test_operator_restart_makes_no_duplicate(cluster, config, run_operator):
    create_secret(cluster)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup())
        first = wait_for(lambda: cronjob(cluster), what="the CronJob")
        wait_ready(cluster, "True", "CronJobReady")
    # While the operator is down: a run finishes, and the spec changes.
    post_job_run(cluster, "db-dumps-s3backup-29400000", SUMMARY, owner=first,
                 template=first["spec"]["jobTemplate"]["spec"]["template"])
    with run_operator(config):
        wait_for(lambda: backup_status(cluster).get("lastRun", {}).get("result") == "Succeeded",
                 what="the run finished while the operator was down")
        assert [c["metadata"]["name"] for c in cluster.items(CRONJOBS)] == ["db-dumps-s3backup"]
        assert cronjob(cluster)["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    cluster.patch(f"{BACKUPS}/db-dumps", {"spec": {"compare": "size"}})
    with run_operator(config):
        wait_for(lambda: "--compare=size" in args_of(cronjob(cluster)), what="the change made while down, applied")
        assert len(cluster.items(CRONJOBS)) == 1


def test_missing_secret_then_created(cluster, config, run_operator):
    with run_operator(config) as runner:
        cluster.create(BACKUPS, make_backup())
        condition = wait_ready(cluster, "False", "CredentialsSecretNotFound")
        assert condition["message"] == ("Secret 's3-credentials' (spec.destination.credentialsSecretRef) not found "
                                        "in namespace 'backups'")
        assert cronjob(cluster) is None  # nothing half-made
        create_secret(cluster, keys=("AWS_ACCESS_KEY_ID",))
        assert "AWS_SECRET_ACCESS_KEY" in wait_ready(cluster, "False", "CredentialsSecretIncomplete")["message"]
        assert cronjob(cluster) is None
        cluster.patch(f"{SECRETS}/s3-credentials", {"data": {"AWS_SECRET_ACCESS_KEY": "eA=="}})
        wait_ready(cluster, "True", "CronJobReady")  # retried with a backoff, no restart needed
        assert cronjob(cluster) is not None
    assert "Traceback" not in runner.output


@pytest.mark.parametrize(("change", "reason"), [
    ({"schedule": "61 2 * * *"}, "InvalidSchedule"),
    ({"schedule": "0 0 31 2 *"}, "InvalidSchedule"),
    ({"timeZone": "Mars/Base"}, "InvalidTimeZone"),
])
def test_invalid_spec_sets_a_false_condition(cluster, config, run_operator, change, reason):
    create_secret(cluster)
    with run_operator(config) as runner:
        cluster.create(BACKUPS, make_backup(**change))
        wait_ready(cluster, "False", reason)
        assert cronjob(cluster) is None
        # Fixed by the user: the CronJob follows.
        cluster.patch(f"{BACKUPS}/db-dumps", {"spec": {"schedule": "H 2 * * *", "timeZone": "Etc/UTC"}})
        wait_ready(cluster, "True", "CronJobReady")
        good = cronjob(cluster)
        # Broken again: the condition says so, the last good CronJob stays as it was.
        cluster.patch(f"{BACKUPS}/db-dumps", {"spec": change})
        assert "left as it was" in wait_ready(cluster, "False", reason)["message"]
        assert cronjob(cluster)["spec"] == good["spec"]
    assert "Traceback" not in runner.output
    # A kopf.PermanentError that names the field: logged once per change of the spec, never retried in a loop.
    failures = [line for line in runner.output.splitlines() if "Handler 'reconcile' failed permanently:" in line]
    field = "spec.timeZone" if reason == "InvalidTimeZone" else "spec.schedule"
    assert len(failures) == 2 and all(field in line for line in failures), failures


def test_cronjob_deleted_behind_our_back_is_recreated(cluster, config, run_operator):
    create_secret(cluster)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup())
        wait_for(lambda: cronjob(cluster), what="the CronJob")
        cluster.delete(f"{CRONJOBS}/db-dumps-s3backup")
        wait_for(lambda: cronjob(cluster), what="the CronJob recreated")


def test_a_foreign_cronjob_is_not_taken_over(cluster, config, run_operator):
    create_secret(cluster)
    foreign = {"apiVersion": "batch/v1", "kind": "CronJob",
               "metadata": {"name": "db-dumps-s3backup", "namespace": NS},
               "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {
                   "restartPolicy": "Never", "containers": [{"name": "x", "image": "busybox"}]}}}}}}
    cluster.create(CRONJOBS, foreign)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup())
        wait_ready(cluster, "False", "CronJobConflict")
        assert cronjob(cluster)["spec"] == foreign["spec"]


def test_secret_check_can_be_turned_off(cluster, run_operator):
    """Without `get` on Secrets (S3BACKUP_CHECK_SECRETS=false) the CronJob is made; the pod would report it."""
    config = OperatorConfig(image=TEST_IMAGE, retry_delay=0.5, resync_interval=0, check_secrets=False)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup())
        wait_ready(cluster, "True", "CronJobReady")
        assert cronjob(cluster) is not None


def test_forbidden_secret_lookup_is_not_an_error(emulator, cluster, config, run_operator):
    """RBAC without `get` on Secrets: the API answers 403, the operator goes on (the pod would report it)."""

    async def forbid():
        view = emulator.kmock[f"get {SECRETS}/s3-credentials"]
        view << 403
        return view

    secret_lookups = asyncio.run_coroutine_threadsafe(forbid(), emulator.loop).result(10)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup())
        wait_ready(cluster, "True", "CronJobReady")
        assert cronjob(cluster) is not None
    assert list(secret_lookups), "the operator did not even ask"  # the requests this reaction answered


def test_watching_a_list_of_namespaces(emulator, cluster, config, run_operator):
    emulator.kmock.namespaces = ("other", "backups")
    metrics = OperatorMetrics()
    with run_operator(config, metrics, scope=("-n", "backups")):
        other = make_backup(namespace="other", destination={"bucket": "abc"})
        cluster.create(BACKUPS.replace(f"/{NS}/", "/other/"), other)
        cluster.create(BACKUPS, make_backup(destination={"bucket": "abc"}))
        wait_ready(cluster, "True", "CronJobReady")
        assert 'namespace="backups"' in generate_latest(metrics.registry).decode()
    assert cluster.get(CRONJOBS.replace(f"/{NS}/", "/other/") + "/db-dumps-s3backup") is None
    assert not cluster.get(BACKUPS.replace(f"/{NS}/", "/other/") + "/db-dumps").get("status")
    assert 'namespace="other"' not in generate_latest(metrics.registry).decode()


def test_a_pod_that_cannot_start_is_reported(cluster, run_operator):
    """With the Secret check off, a missing Secret shows up where the kubelet reports it: the backup pod."""
    config = OperatorConfig(image=TEST_IMAGE, retry_delay=0.5, resync_interval=0, check_secrets=False)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup())
        template = wait_for(lambda: cronjob(cluster), what="the CronJob")["spec"]["jobTemplate"]["spec"]["template"]
        pod_name = "db-dumps-s3backup-29400000-x1y2z"
        cluster.create(PODS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": NS, "labels": {**template["metadata"]["labels"],
                                                                       "job-name": "db-dumps-s3backup-29400000"}},
            "spec": template["spec"],
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "s3backup", "ready": False, "restartCount": 0, "image": TEST_IMAGE, "imageID": "",
                "state": {"waiting": {"reason": "CreateContainerConfigError",
                                      "message": 'secret "s3-credentials" not found'}}}]},
        })
        blocked = wait_for(lambda: next((c for c in backup_status(cluster).get("conditions") or []
                                         if c["type"] == "RunBlocked" and c["status"] == "True"), None),
                           what="RunBlocked=True")
        assert blocked["reason"] == "CreateContainerConfigError"
        assert blocked["message"] == f'pod {pod_name}: secret "s3-credentials" not found'
        assert ready(cluster)["status"] == "True"  # the resource itself is fine
        cluster.patch(f"{PODS}/{pod_name}/status", {"status": {"phase": "Running", "containerStatuses": [{
            "name": "s3backup", "ready": True, "restartCount": 0, "image": TEST_IMAGE, "imageID": "",
            "state": {"running": {"startedAt": "2026-11-26T02:44:01Z"}}}]}})
        wait_for(lambda: any(c["type"] == "RunBlocked" and c["status"] == "False" and c["reason"] == "PodStarted"
                             for c in backup_status(cluster).get("conditions") or []), what="RunBlocked=False")


def test_periodic_resync_picks_up_a_late_secret(cluster, run_operator):
    """The retry after a missing Secret is slow here (60 s): the periodic resync is what finds it."""
    config = OperatorConfig(image=TEST_IMAGE, retry_delay=60, resync_interval=0.5)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup())
        wait_ready(cluster, "False", "CredentialsSecretNotFound")
        create_secret(cluster)
        wait_ready(cluster, "True", "CronJobReady")
        assert cronjob(cluster) is not None
