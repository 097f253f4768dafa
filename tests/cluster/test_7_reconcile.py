"""7. What the operator keeps in step on a real API server: updates applied server-side (and a foreign change taken
back), suspend, a CronJob deleted or taken by someone else, an invalid spec after a valid one, a failed run after a
good one (status, Events, /metrics), deletion (the Pushgateway group), run-now while a run is blocked, and the
operator's API errors."""

from __future__ import annotations

import datetime
import json
import os
import urllib.request

import pytest
from kubernetes.client import Configuration
from kubernetes.config import load_kube_config
from prometheus_client.parser import text_string_to_metric_families
from s3backup_operator.kubeapi import FIELD_MANAGER, ApiError, KubeApi
from s3backup_syncer.metrics import push_run_metrics
from s3backup_syncer.report import Summary

from tests.cluster.conftest import OPERATOR_NAMESPACE, RELEASE, operator_metrics, wait_rollout
from tests.cluster.support import (
    FILES,
    GROUP,
    NODE,
    backup_manifest,
    bucket_keys,
    children,
    condition,
    finished_job,
    handled,
    job_pods,
    last_run,
    make_volume,
    operator_events,
    run_now,
    wait_condition,
    wait_for,
)


@pytest.fixture
def namespace(installed, new_namespace):
    return new_namespace("reconcile")


def args_of(cronjob: dict) -> list[str]:
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]


def poke(cluster, namespace: str, name: str, value: str) -> None:
    """A label change on the S3Backup: the operator reconciles it (and must write nothing if nothing changed)."""
    cluster.kubectl("label", "s3backup", name, "-n", namespace, f"poke={value}", "--overwrite")
    wait_for(lambda: handled(cluster, "s3backup", name, namespace, f'"poke":"{value}"'), f"poke={value} handled")


def test_updates_are_applied_server_side_and_foreign_changes_taken_back(cluster, s3, namespace):
    cluster.apply(backup_manifest(namespace, "db", "data", s3, "reconcile-db", schedule="@daily"))
    wait_condition(cluster, "s3backup", "db", namespace, "True", "CronJobReady")
    cronjob = cluster.get("cronjob", "db-s3backup", "-n", namespace, "--show-managed-fields")
    # The operator's fields are one Apply entry of its field manager (never a POST, PUT or merge patch).
    managers = {(entry["manager"], entry["operation"], entry.get("subresource", ""))
                for entry in cronjob["metadata"]["managedFields"]}
    assert (FIELD_MANAGER, "Apply", "") in managers
    assert not [m for m in managers if m[0] == FIELD_MANAGER and m[1] != "Apply"], managers
    assert f"--region={s3.region}" in args_of(cronjob)

    # Nothing changed, nothing written: a label on the S3Backup leaves the CronJob's resourceVersion alone.
    poke(cluster, namespace, "db", "1")
    assert cluster.get("cronjob", "db-s3backup", "-n", namespace)["metadata"]["resourceVersion"] == \
        cronjob["metadata"]["resourceVersion"]

    # A spec change: applied; a field dropped from the S3Backup is dropped from the CronJob.
    cluster.kubectl("patch", "s3backup", "db", "-n", namespace, "--type=merge", "-p", json.dumps(
        {"spec": {"schedule": "@hourly", "transfer": {"concurrency": 9}, "destination": {"region": None}}}))
    patched = wait_for(lambda: (lambda c: c if "--concurrency=9" in args_of(c) else None)(
        cluster.get("cronjob", "db-s3backup", "-n", namespace)), "the CronJob with the new spec")
    assert patched["spec"]["schedule"] == "@hourly"
    assert not [arg for arg in args_of(patched) if arg.startswith("--region")]
    wait_for(lambda: (cluster.get("s3backup", "db", "-n", namespace)["status"].get("observedGeneration") == 2),
             "observedGeneration 2")

    # Someone else changes the CronJob's schedule (another field manager): the next reconcile takes it back
    # (the apply is forced), and leaves what the API server and the CronJob controller own alone.
    cluster.kubectl("patch", "cronjob", "db-s3backup", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"schedule":"5 5 * * *"}}')
    poke(cluster, namespace, "db", "2")
    restored = wait_for(lambda: (lambda c: c if c["spec"]["schedule"] == "@hourly" else None)(
        cluster.get("cronjob", "db-s3backup", "-n", namespace)), "the operator's schedule back")
    assert restored["spec"]["concurrencyPolicy"] == patched["spec"]["concurrencyPolicy"]


def test_suspend_and_resume(cluster, s3, namespace):
    cluster.apply(backup_manifest(namespace, "db", "data", s3, "reconcile-suspend"))
    wait_condition(cluster, "s3backup", "db", namespace, "True", "CronJobReady")
    assert cluster.get("cronjob", "db-s3backup", "-n", namespace)["spec"]["suspend"] is False
    cluster.kubectl("patch", "s3backup", "db", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    assert "suspended" in wait_condition(cluster, "s3backup", "db", namespace, "True", "Suspended")["message"]
    assert cluster.get("cronjob", "db-s3backup", "-n", namespace)["spec"]["suspend"] is True
    cluster.kubectl("patch", "s3backup", "db", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_condition(cluster, "s3backup", "db", namespace, "True", "CronJobReady")
    assert cluster.get("cronjob", "db-s3backup", "-n", namespace)["spec"]["suspend"] is False


def test_a_deleted_cronjob_comes_back_and_a_foreign_one_is_not_taken(cluster, s3, namespace):
    cluster.apply(backup_manifest(namespace, "db", "data", s3, "reconcile-deleted"))
    first = wait_for(lambda: cluster.get("cronjob", "db-s3backup", "-n", namespace), "the CronJob")
    cluster.kubectl("delete", "cronjob", "db-s3backup", "-n", namespace)
    again = wait_for(lambda: cluster.get("cronjob", "db-s3backup", "-n", namespace), "the CronJob recreated")
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    assert again["metadata"]["ownerReferences"] == first["metadata"]["ownerReferences"]

    foreign = {"apiVersion": "batch/v1", "kind": "CronJob",
               "metadata": {"name": "other-s3backup", "namespace": namespace},
               "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {
                   "restartPolicy": "Never", "containers": [{"name": "x", "image": "busybox"}]}}}}}}
    cluster.apply(foreign)
    before = cluster.get("cronjob", "other-s3backup", "-n", namespace)
    cluster.apply(backup_manifest(namespace, "other", "data", s3, "reconcile-foreign"))
    assert "not owned" in wait_condition(cluster, "s3backup", "other", namespace, "False", "CronJobConflict")["message"]
    after = cluster.get("cronjob", "other-s3backup", "-n", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert "ownerReferences" not in after["metadata"]


def test_an_incomplete_secret_shows_until_it_is_completed(cluster, s3, installed, new_namespace):
    namespace = new_namespace("reconcile-secret", credentials=False)
    cluster.kubectl("create", "secret", "generic", "s3-credentials", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3.access_key}")
    cluster.apply(backup_manifest(namespace, "db", "data", s3, "reconcile-secret"))
    ready = wait_condition(cluster, "s3backup", "db", namespace, "False", "CredentialsSecretIncomplete")
    assert "AWS_SECRET_ACCESS_KEY" in ready["message"] and s3.access_key not in json.dumps(ready)
    assert children(cluster, namespace, "db")["cronjobs"] == []
    cluster.kubectl("patch", "secret", "s3-credentials", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"stringData": {"AWS_SECRET_ACCESS_KEY": s3.secret_key}}))
    wait_condition(cluster, "s3backup", "db", namespace, "True", "CronJobReady", timeout=90)  # retried
    assert s3.secret_key not in json.dumps(cluster.get("s3backup", "db", "-n", namespace))


def test_an_invalid_spec_after_a_valid_one_keeps_the_last_good_cronjob(cluster, s3, namespace):
    """February 31st passes the schema (five valid fields) but never comes: the operator refuses it."""
    cluster.apply(backup_manifest(namespace, "db", "data", s3, "reconcile-invalid", schedule="0 0 31 2 *"))
    assert "spec.schedule" in wait_condition(cluster, "s3backup", "db", namespace, "False", "InvalidSchedule")[
        "message"]
    assert cluster.get("cronjob", "db-s3backup", "-n", namespace) is None
    cluster.kubectl("patch", "s3backup", "db", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"schedule":"0 3 * * *","timeZone":"Etc/UTC"}}')
    wait_condition(cluster, "s3backup", "db", namespace, "True", "CronJobReady")
    good = cluster.get("cronjob", "db-s3backup", "-n", namespace)
    assert (good["spec"]["schedule"], good["spec"]["timeZone"]) == ("0 3 * * *", "Etc/UTC")
    cluster.kubectl("patch", "s3backup", "db", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"timeZone":"Mars/Base"}}')
    ready = wait_condition(cluster, "s3backup", "db", namespace, "False", "InvalidTimeZone")
    assert "spec.timeZone" in ready["message"] and "left as it was" in ready["message"]
    kept = cluster.get("cronjob", "db-s3backup", "-n", namespace)
    assert kept["metadata"]["resourceVersion"] == good["metadata"]["resourceVersion"]


def pushed_groups(pushgateway, namespace: str) -> set[str]:
    """The backups with a metrics group in the Pushgateway (job="s3backup", this namespace)."""
    with urllib.request.urlopen(f"{pushgateway.url}/api/v1/metrics", timeout=5) as response:
        groups = json.load(response)["data"]
    return {group["labels"].get("backup", "") for group in groups
            if group["labels"].get("job") == "s3backup" and group["labels"].get("namespace") == namespace}


def backup_series(text: str, namespace: str, name: str, key: str | None = None) -> dict[str, float]:
    """metric name (or `name{key}`) -> value, of one backup's series on the operator's /metrics."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("namespace") == namespace and sample.labels.get("backup") == name:
                label = f"{sample.name}{{{sample.labels[key]}}}" if key and key in sample.labels else sample.name
                found[label] = sample.value
    return found


def at(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_a_failed_run_after_a_good_one_then_deletion(cluster, s3, pushgateway, namespace):
    """Status, Events and the operator's /metrics tell the two runs apart; deleting the S3Backup removes its
    Pushgateway group and its series, and nothing else."""
    claim = make_volume(cluster, namespace, "data", FILES)
    prefix = f"reconcile-failed-{os.getpid()}"
    cluster.apply(backup_manifest(namespace, "db", claim, s3, prefix, pushgateway.url))
    good = finished_job(cluster, namespace, run_now(cluster, namespace, "db")["metadata"]["name"])
    first = last_run(cluster, namespace, "db", good["metadata"]["name"])
    assert first["result"] == "Succeeded"
    success_time = cluster.get("s3backup", "db", "-n", namespace)["status"]["lastSuccessfulTime"]

    cluster.kubectl("patch", "s3backup", "db", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"destination":{"bucket":"no-such-bucket"}}}')
    wait_for(lambda: any("s3://no-such-bucket/" in arg for arg in args_of(
        cluster.get("cronjob", "db-s3backup", "-n", namespace))), "the CronJob on the new bucket")
    bad = finished_job(cluster, namespace, run_now(cluster, namespace, "db")["metadata"]["name"])
    assert bad["status"].get("failed") and not bad["status"].get("succeeded")
    run = last_run(cluster, namespace, "db", bad["metadata"]["name"])
    assert (run["result"], run["exitCode"]) == ("Failed", 2), run
    assert "no-such-bucket" in run["message"] and "does not exist" in run["message"]
    assert cluster.get("s3backup", "db", "-n", namespace)["status"]["lastSuccessfulTime"] == success_time

    def run_events() -> list[dict]:
        return operator_events(cluster, namespace, "S3Backup")
    events = wait_for(lambda: (lambda e: e if len(e) == 2 else None)(run_events()), "two run Events")
    by_job = {e["message"].split()[1]: (e["type"], e["reason"]) for e in events}
    assert by_job == {good["metadata"]["name"]: ("Normal", "BackupSucceeded"),
                      bad["metadata"]["name"]: ("Warning", "BackupFailed")}
    assert s3.secret_key not in json.dumps(events) and s3.access_key not in json.dumps(events)

    # The operator's /metrics: the last run failed, the last success is the first run's.
    series = wait_for(lambda: (lambda s: s if s.get("s3backup_operator_backup_last_result{Failed}") == 1 else None)(
        backup_series(operator_metrics(cluster), namespace, "db", key="result")), "the failed run on /metrics")
    assert series["s3backup_operator_backup_last_success_timestamp_seconds"] == at(success_time)
    assert series["s3backup_operator_backup_last_run_timestamp_seconds"] == at(run["completionTime"])
    assert series["s3backup_operator_backup_last_result{Succeeded}"] == 0

    # A restarted operator replays every Job: no second Event for any run.
    cluster.kubectl("rollout", "restart", f"deployment/{RELEASE}", "-n", OPERATOR_NAMESPACE)
    wait_rollout(cluster)
    poke(cluster, namespace, "db", "restarted")
    assert len(run_events()) == 2

    # Deletion: its Pushgateway group goes, another backup's group of the namespace stays.
    assert push_run_metrics(pushgateway.url, {"namespace": namespace, "backup": "someone-else"},
                            Summary(result="success", duration_seconds=1.0), 86400) is None
    assert {"db", "someone-else"} <= pushed_groups(pushgateway, namespace)
    cluster.kubectl("delete", "s3backup", "db", "-n", namespace, "--wait=true", "--timeout=60s")
    assert pushed_groups(pushgateway, namespace) == {"someone-else"}
    wait_for(lambda: not backup_series(operator_metrics(cluster), namespace, "db"), "the series gone from /metrics")
    assert sorted(bucket_keys(s3, prefix)) == sorted(FILES)


def test_creation_time_and_expected_interval_on_metrics(cluster, s3, namespace):
    """For the "never ran" alert: each S3Backup's creation time and its schedule's longest gap, on /metrics."""
    for name, schedule in (("hourly", "@hourly"), ("weekdays", "0 9 * * 1-5"), ("broken", "0 0 31 2 *")):
        cluster.apply(backup_manifest(namespace, name, "data", s3, f"reconcile-{name}", schedule=schedule))
    wait_condition(cluster, "s3backup", "broken", namespace, "False", "InvalidSchedule")
    created = {name: at(cluster.get("s3backup", name, "-n", namespace)["metadata"]["creationTimestamp"])
               for name in ("hourly", "weekdays", "broken")}

    def seen():
        text = operator_metrics(cluster)
        found = {name: backup_series(text, namespace, name) for name in created}
        return found if all("s3backup_operator_backup_created_timestamp_seconds" in s for s in found.values()) \
            and "s3backup_operator_backup_expected_interval_seconds" in found["weekdays"] else None
    found = wait_for(seen, "the three backups on /metrics")
    assert {name: s["s3backup_operator_backup_created_timestamp_seconds"] for name, s in found.items()} == created
    assert {name: s.get("s3backup_operator_backup_expected_interval_seconds") for name, s in found.items()} == {
        "hourly": 3600.0, "weekdays": 3 * 86400.0, "broken": None}  # Friday 09:00 to Monday 09:00
    cluster.kubectl("delete", "s3backup", "hourly", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: not backup_series(operator_metrics(cluster), namespace, "hourly"), "hourly's series gone")


def test_run_now_waits_for_a_blocked_run(cluster, s3, namespace):
    """A run whose pod cannot be scheduled: RunBlocked says why; a second run-now request waits for the first
    run, and both run once the pod can be placed."""
    hold = f"{GROUP}/hold-{namespace}"
    claim = make_volume(cluster, namespace, "data", FILES)
    prefix = f"reconcile-blocked-{os.getpid()}"
    cluster.apply(backup_manifest(namespace, "db", claim, s3, prefix, nodeSelector={hold: "yes"}))
    try:
        first = run_now(cluster, namespace, "db")["metadata"]["name"]
        blocked = wait_condition(cluster, "s3backup", "db", namespace, "True", "Unschedulable", type_="RunBlocked")
        assert blocked["message"].startswith(f"pod {first}-")
        assert condition(cluster, "s3backup", "db", namespace)["status"] == "True"  # the resource itself is fine

        second_request = "second"
        cluster.kubectl("annotate", "s3backup", "db", "-n", namespace, f"{GROUP}/run-now={second_request}",
                        "--overwrite")
        wait_for(lambda: any(f"run-now waits for the running Job {first}" in value for value in (
            cluster.get("s3backup", "db", "-n", namespace)["metadata"].get("annotations") or {}).values()),
            "the second request deferred")
        assert children(cluster, namespace, "db")["jobs"] == [first]

        cluster.kubectl("label", "node", NODE, f"{hold}=yes")
        wait_condition(cluster, "s3backup", "db", namespace, "False", "PodStarted", type_="RunBlocked")
        finished_job(cluster, namespace, first)
        assert last_run(cluster, namespace, "db", first)["result"] == "Succeeded"
        second = wait_for(lambda: (lambda s: s.get("lastRunNowRequest") == second_request and s)(
            cluster.get("s3backup", "db", "-n", namespace)["status"]), "the second request run")["lastRunNowJobName"]
        assert second != first
        finished_job(cluster, namespace, second)
        assert (last_run(cluster, namespace, "db", second)["filesUploaded"]) == 0  # all there from the first
        poke(cluster, namespace, "db", "after")  # the same request value, seen again: not a new run
        assert sorted(children(cluster, namespace, "db")["jobs"]) == sorted([first, second])
        assert {pod["spec"]["nodeName"] for job in (first, second) for pod in job_pods(cluster, namespace, job)} == {
            NODE}
    finally:
        cluster.kubectl("label", "node", NODE, f"{hold}-", check=False)


def test_api_errors_carry_status_and_reason_never_bodies(cluster, installed, namespace):
    """The operator's client against the real API server: 404, 409 (AlreadyExists) and a label selector."""
    configuration = Configuration()
    load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    api = KubeApi(configuration)
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "j", "namespace": namespace, "labels": {"k": "1"}},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
               {"name": "c", "image": "busybox", "args": ["s3cr3t-arg"]}]}}}}
    try:
        assert api.get_cronjob(namespace, "nothing") is None
        assert api.secret_keys(namespace, "nothing") is None
        assert sorted(api.secret_keys(namespace, "s3-credentials")) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        assert api.create_job(job) is True
        assert api.create_job(job) is False  # exists: a retried handler's own Job
        assert [item["metadata"]["name"] for item in api.list_jobs(namespace, {"k": "1"})] == ["j"]
        assert api.list_jobs(namespace, {"k": "2"}) == []
        with pytest.raises(ApiError) as missing:
            api.patch_backup_status(namespace, "nothing", {"lastRun": {"message": "s3cr3t-status"}})
        assert missing.value.status == 404 and "s3cr3t" not in str(missing.value)
        assert str(missing.value).startswith("HTTP 404 ") and "\n" not in str(missing.value)
    finally:
        api.close()
