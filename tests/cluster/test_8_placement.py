"""8. Placement and consistent capture on the real control plane: `hooks.before` runs in the backup pod before
the sync (a dump into the scratch emptyDir that is then backed up; a failing hook fails the run, HookFailed);
`source.hostPath` + `source.nodeSelector` fans out to one run per matching node, each pinned to its node and
under its own prefix (nodes that join or leave are followed)."""

from __future__ import annotations

import os

import pytest

from tests.cluster.conftest import OPERATOR_NAMESPACE, RELEASE, wait_operator_ready
from tests.cluster.support import (
    CHART,
    backup_manifest,
    bucket_keys,
    finished_job,
    last_run,
    make_credentials,
    make_namespace,
    run_now,
    wait_for,
)
from tests.conftest import BUCKET

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


@pytest.fixture(scope="module")
def installed(cluster, operator, pushgateway):
    """The operator, installed again if an earlier module (test_5: `helm uninstall`) took it away."""
    if cluster.helm("status", RELEASE, "-n", OPERATOR_NAMESPACE, check=False).returncode != 0:
        cluster.helm("install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
                     "--set", f"pushgatewayURL={pushgateway.url}", "--set", "logFormat=plain",
                     "--set", "logLevel=verbose")
    wait_operator_ready(cluster)
    return RELEASE


def ready(cluster, name: str, namespace: str) -> dict:
    conditions = ((cluster.get("s3backup", name, "-n", namespace) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def operator_events(cluster, namespace: str, name: str) -> list[dict]:
    return [event for event in cluster.items("events", "-n", namespace, "--field-selector",
                                             f"involvedObject.kind=S3Backup,involvedObject.name={name}")
            if event.get("reportingComponent") == "s3backup-operator"]


@pytest.fixture(scope="module")
def hook_namespace(cluster, installed, s3):
    name = make_namespace(cluster, "hooks", RESTRICTED)  # the hook must pass `restricted` like the sync
    make_credentials(cluster, name, s3)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


DUMP = b"INSERT INTO orders VALUES (1, 'one');\nINSERT INTO orders VALUES (2, 'two');\n"


def test_a_hook_dumps_into_the_scratch_volume_that_is_then_backed_up(cluster, s3, hook_namespace):
    namespace, name, prefix = hook_namespace, "orders", f"hooks-{os.getpid()}"
    manifest = backup_manifest(namespace, name, "unused", s3, prefix)
    manifest["spec"]["source"] = {"volume": {"emptyDir": {}}}
    manifest["spec"]["hooks"] = {"before": {"command": [
        "sh", "-c", "mkdir -p /data/dump && printf \"$ROWS\" > /data/dump/orders.sql"]}}
    manifest["spec"]["job"] = {"env": [{"name": "ROWS", "value": DUMP.decode()}]}
    cluster.apply(manifest)
    wait_for(lambda: ready(cluster, name, namespace).get("status") == "True", "the S3Backup Ready")

    job = finished_job(cluster, namespace, run_now(cluster, namespace, name)["metadata"]["name"])
    pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")
    assert [c["name"] for c in pods[0]["spec"]["initContainers"]] == ["hook-before"]
    hook_state = pods[0]["status"]["initContainerStatuses"][0]["state"]["terminated"]
    assert hook_state["exitCode"] == 0, "\n".join(cluster.pod_log(pod) for pod in pods)
    run = last_run(cluster, namespace, name, job["metadata"]["name"])
    assert (run["result"], run["filesUploaded"]) == ("Succeeded", 1), run
    assert sorted(bucket_keys(s3, prefix)) == ["dump/orders.sql"]
    body = s3.client().get_object(Bucket=BUCKET, Key=f"{prefix}/dump/orders.sql")["Body"].read()
    assert body == DUMP


def test_a_failing_hook_fails_the_run_and_nothing_is_synced(cluster, s3, hook_namespace):
    namespace, name, prefix = hook_namespace, "broken", f"hooks-broken-{os.getpid()}"
    manifest = backup_manifest(namespace, name, "unused", s3, prefix, backoffLimit=0)
    manifest["spec"]["source"] = {"volume": {"emptyDir": {}}}
    manifest["spec"]["hooks"] = {"before": {"command": [
        "sh", "-c", "echo leaked-hook-output-7f3a > /data/file; echo leaked-hook-output-7f3a >&2; exit 3"]}}
    cluster.apply(manifest)
    wait_for(lambda: ready(cluster, name, namespace).get("status") == "True", "the S3Backup Ready")

    job = finished_job(cluster, namespace, run_now(cluster, namespace, name)["metadata"]["name"])
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in job["status"]["conditions"])
    pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")
    assert len(pods) == 1
    assert "terminated" not in pods[0]["status"]["containerStatuses"][0]["state"]  # the sync never ran
    run = last_run(cluster, namespace, name, job["metadata"]["name"])
    assert (run["result"], run["reason"], run["exitCode"]) == ("Failed", "HookFailed", 3), run
    assert "spec.hooks.before exited with code 3" in run["message"]
    status = cluster.get("s3backup", name, "-n", namespace)["status"]
    assert "leaked-hook-output-7f3a" not in str(status)
    assert "lastSuccessfulTime" not in status
    events = wait_for(lambda: operator_events(cluster, namespace, name), "the run's Event")
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "HookFailed")]
    assert "leaked-hook-output-7f3a" not in events[0]["message"]
    assert bucket_keys(s3, prefix) == {}
