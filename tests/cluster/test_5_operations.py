"""6. Operations: a missing Secret, an invalid schedule, an operator restart, two replicas with peering;
then `helm upgrade` and `helm uninstall`."""

from __future__ import annotations

import os

from tests.cluster.conftest import OPERATOR_NAMESPACE, RELEASE, operator_pods, wait_operator_ready, wait_rollout
from tests.cluster.support import (
    CHART,
    FILES,
    bucket_keys,
    condition,
    finished_job,
    last_run,
    make_credentials,
    make_namespace,
    make_volume,
    run_now,
    wait_condition,
    wait_for,
)
from tests.cluster.support import backup_manifest as manifest


def test_a_missing_secret_shows_until_it_is_created(cluster, operator, s3, new_namespace):
    namespace = new_namespace("no-secret", credentials=False)
    claim = make_volume(cluster, namespace, "data", FILES)
    cluster.apply(manifest(namespace, "waiting", claim, s3, f"no-secret-{os.getpid()}"))
    wait_condition(cluster, "s3backup", "waiting", namespace, "False", "CredentialsSecretNotFound")
    assert s3.secret_key not in str(cluster.get("s3backup", "waiting", "-n", namespace))
    make_credentials(cluster, namespace, s3)
    # The operator re-checks with a backoff (S3BACKUP_RETRY_DELAY: conftest.RETRY_DELAY here, 60 s by default).
    wait_for(lambda: condition(cluster, "s3backup", "waiting", namespace).get("status") == "True", "Ready=True",
             timeout=150, every=2)


def test_an_invalid_schedule_is_reported_and_makes_no_cronjob(cluster, operator, s3, new_namespace):
    namespace = new_namespace("bad-schedule")
    cluster.apply(manifest(namespace, "never", "data", s3, "never", schedule="0 25 * * *"))
    ready = wait_condition(cluster, "s3backup", "never", namespace, "False", "InvalidSchedule")
    assert "spec.schedule" in ready["message"]
    assert cluster.get("cronjob", "never-s3backup", "-n", namespace) is None


def test_an_operator_restart_picks_up_changes_made_meanwhile(cluster, operator, s3, new_namespace):
    namespace = new_namespace("restart")
    claim = make_volume(cluster, namespace, "data", FILES)
    prefix = f"restart-{os.getpid()}"
    cluster.apply(manifest(namespace, "steady", claim, s3, prefix))
    wait_for(lambda: cluster.get("cronjob", "steady-s3backup", "-n", namespace), "the CronJob")
    (old,) = wait_operator_ready(cluster)
    cluster.kubectl("scale", "deployment", RELEASE, "-n", OPERATOR_NAMESPACE, "--replicas=0")
    wait_for(lambda: not operator_pods(cluster), "the operator pod gone")
    cluster.kubectl("patch", "s3backup", "steady", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"schedule":"30 4 * * *"}}')
    cluster.kubectl("scale", "deployment", RELEASE, "-n", OPERATOR_NAMESPACE, "--replicas=1")
    (new,) = wait_operator_ready(cluster)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    wait_for(lambda: (cluster.get("cronjob", "steady-s3backup", "-n", namespace) or {}).get("spec", {})
             .get("schedule") == "30 4 * * *", "the CronJob updated by the restarted operator", timeout=90)
    job = finished_job(cluster, namespace, run_now(cluster, namespace, "steady")["metadata"]["name"])
    assert last_run(cluster, namespace, "steady", job["metadata"]["name"])["result"] == "Succeeded"


def test_two_replicas_with_peering_run_each_request_once(cluster, operator, s3, pushgateway, new_namespace):
    cluster.helm("upgrade", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--reuse-values", "--set", "replicas=2")
    wait_operator_ready(cluster, replicas=2)
    peering = wait_for(lambda: (cluster.get("clusterkopfpeering", "s3backup-operator") or {}).get("status"),
                       "both replicas in the peering object")
    wait_for(lambda: len((cluster.get("clusterkopfpeering", "s3backup-operator") or {}).get("status") or {}) >= 2,
             f"two peers (have {peering})")
    namespace = new_namespace("peers")
    claim = make_volume(cluster, namespace, "data", FILES)
    prefix = f"peers-{os.getpid()}"
    cluster.apply(manifest(namespace, "shared", claim, s3, prefix))
    job = finished_job(cluster, namespace, run_now(cluster, namespace, "shared")["metadata"]["name"])
    assert last_run(cluster, namespace, "shared", job["metadata"]["name"])["result"] == "Succeeded"
    jobs = cluster.items("jobs", "-n", namespace, "-l", "s3backup.dev/backup=shared")
    assert [j["metadata"]["name"] for j in jobs] == [job["metadata"]["name"]]
    assert sorted(bucket_keys(s3, prefix)) == sorted(FILES)
    cluster.helm("upgrade", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--reuse-values", "--set", "replicas=1")
    wait_operator_ready(cluster, replicas=1)


def test_helm_upgrade_then_uninstall(cluster, operator, s3):
    namespace = make_namespace(cluster, "upgrades")
    make_credentials(cluster, namespace, s3)
    claim = make_volume(cluster, namespace, "data", FILES)
    cluster.apply(manifest(namespace, "kept", claim, s3, f"upgrades-{os.getpid()}"))
    wait_for(lambda: cluster.get("cronjob", "kept-s3backup", "-n", namespace), "the CronJob")
    cluster.helm("upgrade", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--reuse-values",
                 "--set", "logLevel=debug")
    (pod,) = wait_rollout(cluster)  # the new pod, not the old one still running
    assert "--debug" in pod["spec"]["containers"][0]["args"]
    history = cluster.helm("history", RELEASE, "-n", OPERATOR_NAMESPACE, "-o", "json").stdout
    assert '"status":"deployed"' in history.replace(" ", "")
    job = finished_job(cluster, namespace, run_now(cluster, namespace, "kept")["metadata"]["name"])
    assert last_run(cluster, namespace, "kept", job["metadata"]["name"])["result"] == "Succeeded"

    cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait")
    wait_for(lambda: not operator_pods(cluster), "the operator pod gone")
    assert cluster.get("deployment", RELEASE, "-n", OPERATOR_NAMESPACE) is None
    assert cluster.get("serviceaccount", RELEASE, "-n", OPERATOR_NAMESPACE) is None
    # The CRDs, the S3Backups and their CronJobs stay (README, "Upgrading and uninstalling").
    assert cluster.get("crd", "s3backups.s3backup.dev")
    assert cluster.get("s3backup", "kept", "-n", namespace)
    assert cluster.get("cronjob", "kept-s3backup", "-n", namespace)
