"""Tenancy against the emulator: the admin's policy refuses before anything runs, and finished runs become
Events on the S3Backup, once each."""

from __future__ import annotations

import dataclasses

import pytest
from s3backup_operator.config import Allowance, Policy

from tests.operator.conftest import make_backup
from tests.operator.emulator import wait_for
from tests.operator.test_lifecycle import (
    ACCESS_KEY,
    BACKUPS,
    JOBS,
    NS,
    SECRET_KEY,
    SUMMARY,
    create_secret,
    cronjob,
    post_job_run,
    wait_ready,
)

pytestmark = pytest.mark.timeout(90)
EVENTS = f"/api/v1/namespaces/{NS}/events"
HOST_PATH = {"hostPath": {"path": "/var/backups", "type": "Directory"}}
PVC = {"persistentVolumeClaim": {"claimName": "dumps"}}


def test_host_path_is_refused_without_the_admin_and_nothing_runs(cluster, config, run_operator):
    """A namespace the policy does not name: Ready False NotAllowed, no CronJob, and run-now makes no Job."""
    create_secret(cluster)
    elsewhere = dataclasses.replace(config, policy=Policy(host_path=Allowance(namespaces=frozenset({"infra"}))))
    with run_operator(elsewhere) as runner:
        cluster.create(BACKUPS, make_backup(source={"volume": HOST_PATH}))
        condition = wait_ready(cluster, "False", "NotAllowed")
        assert "spec.source.volume.hostPath '/var/backups'" in condition["message"]
        assert "'backups'" in condition["message"]
        assert cronjob(cluster) is None
        cluster.patch(f"{BACKUPS}/db-dumps", {"metadata": {"annotations": {"s3backup.dev/run-now": "1"}}})
        wait_for(lambda: "s3backup.dev/run-now" in cluster.get(f"{BACKUPS}/db-dumps")["metadata"]["annotations"].get(
            "operator.s3backup.dev/last-handled-configuration", ""), what="the run-now request handled")
        assert cluster.items(JOBS) == [] and cronjob(cluster) is None

        # A PVC instead: allowed, the CronJob appears. Back to hostPath: refused again, and the CronJob goes.
        cluster.patch(f"{BACKUPS}/db-dumps", {"spec": {"source": {"volume": {"hostPath": None, **PVC}}}})
        wait_ready(cluster, "True", "CronJobReady")
        assert cronjob(cluster) is not None
        cluster.patch(f"{BACKUPS}/db-dumps", {"spec": {"source": {"volume": {"persistentVolumeClaim": None,
                                                                               **HOST_PATH}}}})
        assert "CronJob db-dumps-s3backup deleted" in wait_ready(cluster, "False", "NotAllowed")["message"]
        assert cronjob(cluster) is None
        assert cluster.items(JOBS) == []
    assert "Traceback" not in runner.output
    refused = "Handler 'run-now/metadata.annotations.s3backup.dev/run-now' failed permanently: spec.source.volume"
    assert refused in runner.output


def test_what_the_admin_allows_runs_in_the_listed_namespace(cluster, config, run_operator):
    create_secret(cluster)
    allowing = dataclasses.replace(config, policy=Policy(host_path=Allowance(namespaces=frozenset({NS})),
                                                         service_account_name=Allowance(everywhere=True)))
    with run_operator(allowing):
        cluster.create(BACKUPS, make_backup(source={"volume": HOST_PATH}, job={"serviceAccountName": "writer"}))
        wait_ready(cluster, "True", "CronJobReady")
        pod = cronjob(cluster)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["volumes"][0] == {"name": "source", **HOST_PATH}
        assert pod["serviceAccountName"] == "writer"


def test_a_service_account_is_refused_by_default(cluster, config, run_operator):
    create_secret(cluster)
    with run_operator(config):
        cluster.create(BACKUPS, make_backup(job={"serviceAccountName": "cluster-admin-sa"}))
        assert "spec.job.serviceAccountName" in wait_ready(cluster, "False", "NotAllowed")["message"]
        assert cronjob(cluster) is None


def _run_events(cluster) -> list[dict]:
    return [e for e in cluster.items(EVENTS) if e.get("reason", "").startswith("Backup")]


def test_every_finished_run_is_one_event_on_the_backup(cluster, config, run_operator):
    create_secret(cluster)
    with run_operator(config) as runner:
        cluster.create(BACKUPS, make_backup())
        the_cronjob = wait_for(lambda: cronjob(cluster), what="the CronJob")
        template = the_cronjob["spec"]["jobTemplate"]["spec"]["template"]
        post_job_run(cluster, "db-dumps-s3backup-1", SUMMARY, owner=the_cronjob, template=template)
        [event] = wait_for(lambda: _run_events(cluster), what="the Event of the first run")
        backup = cluster.get(f"{BACKUPS}/db-dumps")
        assert event["involvedObject"] == {"apiVersion": "s3backup.dev/v1alpha1", "kind": "S3Backup",
                                           "name": "db-dumps", "namespace": NS, "uid": backup["metadata"]["uid"]}
        assert (event["type"], event["reason"]) == ("Normal", "BackupSucceeded")
        assert event["message"] == ("Job db-dumps-s3backup-1 succeeded: 4 files (400 bytes) uploaded, 2 recycled, "
                                    "0 failed")
        partial = {**SUMMARY, "result": "partial", "exit_code": 1, "files_failed": 3,
                   "error": "3 files could not be read"}
        post_job_run(cluster, "db-dumps-s3backup-2", partial, owner=the_cronjob, template=template,
                     exit_code=1, outcome="Failed", end="2026-11-26T03:45:00Z")
        wait_for(lambda: len(_run_events(cluster)) == 2, what="the Event of the second run")
        failed = {**SUMMARY, "result": "error", "exit_code": 2, "files_uploaded": 0,
                  "error": "bucket 'my-backups' does not exist"}
        post_job_run(cluster, "db-dumps-s3backup-3", failed, owner=the_cronjob, template=template,
                     exit_code=2, outcome="Failed", end="2026-11-26T04:45:00Z")
        wait_for(lambda: len(_run_events(cluster)) == 3, what="the Event of the third run")
    by_job = {e["message"].split()[1]: e for e in _run_events(cluster)}
    assert (by_job["db-dumps-s3backup-2"]["type"], by_job["db-dumps-s3backup-2"]["reason"]) == (
        "Warning", "BackupPartial")
    assert "3 failed; 3 files could not be read (exit code 1)" in by_job["db-dumps-s3backup-2"]["message"]
    assert (by_job["db-dumps-s3backup-3"]["type"], by_job["db-dumps-s3backup-3"]["reason"]) == (
        "Warning", "BackupFailed")
    assert "bucket 'my-backups' does not exist" in by_job["db-dumps-s3backup-3"]["message"]
    # A restart replays every Job: no second Event for any run.
    with run_operator(config):
        cluster.patch(f"{BACKUPS}/db-dumps", {"metadata": {"labels": {"poke": "1"}}})
        wait_for(lambda: "poke" in cluster.get(f"{BACKUPS}/db-dumps")["metadata"]["annotations"].get(
            "operator.s3backup.dev/last-handled-configuration", ""), what="the restarted operator caught up")
    assert len(_run_events(cluster)) == 3
    texts = " ".join(str(e) for e in cluster.items(EVENTS)) + runner.output
    assert SECRET_KEY not in texts and ACCESS_KEY not in texts
