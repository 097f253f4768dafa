"""8. Placement and consistent capture on the real control plane: `hooks.before` runs in the backup pod before
the sync (a dump into the scratch emptyDir that is then backed up; a failing hook fails the run, HookFailed);
`source.hostPath` + `source.nodeSelector` fans out to one run per matching node, each pinned to its node and
under its own prefix (nodes that join or leave are followed); copyMethod Snapshot, whose failed snapshot fails
the run (SnapshotFailed) without holding back the next."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from s3backup_syncer.metrics import push_run_metrics
from s3backup_syncer.report import Summary

from tests.cluster.conftest import OPERATOR_NAMESPACE, RELEASE, wait_operator_ready
from tests.cluster.support import (
    CHART,
    GROUP,
    backup_manifest,
    bucket_keys,
    finished_job,
    last_run,
    make_credentials,
    make_namespace,
    make_volume,
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


# --- source.hostPath + source.nodeSelector: one run per matching node ------------------------------------

#: node-a and node-b (README.md, "Testing on a real control plane (`tests/cluster/`)")
SELECTOR = {"role": "backup-server"}
NODE_FILES = {node: {f"{node}.txt": f"only on {node}\n".encode(), f"logs/{node}-1.log": node.encode() * 500}
              for node in ("node-a", "node-b", "node-c")}


@pytest.fixture(scope="module")
def fan_out_namespace(cluster, installed, s3, pushgateway):
    """A namespace where the operator's policy allows hostPath (and only there), as an admin would set it."""
    name = make_namespace(cluster, "fanout")
    make_credentials(cluster, name, s3)
    cluster.helm("upgrade", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--reuse-values",
                 "--set", f"policy.allowHostPath={{{name}}}")
    wait_for(lambda: name in str(operator_env(cluster)), "the operator's new policy", timeout=60)
    wait_operator_ready(cluster)
    yield name
    cluster.helm("upgrade", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--reuse-values",
                 "--set", "policy.allowHostPath=false")
    wait_operator_ready(cluster)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def operator_env(cluster) -> list[dict]:
    pods = [pod for pod in cluster.items("pods", "-n", OPERATOR_NAMESPACE,
                                         "-l", f"app.kubernetes.io/instance={RELEASE}")
            if pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")]
    return [env for pod in pods for env in pod["spec"]["containers"][0].get("env", [])
            if env["name"] == "S3BACKUP_ALLOW_HOST_PATH"]


def target_cronjobs(cluster, namespace: str, name: str) -> dict[str, str]:
    """{target node: CronJob name} of the backup's CronJobs."""
    return {cronjob["metadata"]["annotations"][f"{GROUP}/target"]: cronjob["metadata"]["name"]
            for cronjob in cluster.items("cronjobs", "-n", namespace, "-l", f"{GROUP}/backup={name}")
            if not cronjob["metadata"].get("deletionTimestamp")}


def status_targets(cluster, namespace: str, name: str) -> dict:
    return ((cluster.get("s3backup", name, "-n", namespace) or {}).get("status") or {}).get("targets") or {}


def test_host_path_fans_out_to_each_matching_node_under_its_own_prefix(cluster, s3, fan_out_namespace):
    namespace, name, prefix = fan_out_namespace, "servers", f"fanout-{os.getpid()}"
    path = f"/var/backups/{namespace}"
    for node, files in NODE_FILES.items():  # node-c holds files too: they must not be backed up
        for relative, content in files.items():
            target = cluster.node_dir(node, path) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    manifest = backup_manifest(namespace, name, "unused", s3, prefix)
    manifest["spec"]["source"] = {"hostPath": {"path": path}, "nodeSelector": SELECTOR}
    cluster.apply(manifest)
    condition = wait_for(lambda: (lambda c: c if c.get("status") == "True" else None)(
        ready(cluster, name, namespace)), "the S3Backup Ready")
    assert condition["reason"] == "CronJobsReady" and "node-a, node-b" in condition["message"], condition
    cronjobs = target_cronjobs(cluster, namespace, name)
    assert sorted(cronjobs) == ["node-a", "node-b"]
    assert cluster.get("cronjob", f"{name}-s3backup", "-n", namespace) is None  # no CronJob of its own

    # One run-now: one Job per node, each pod on its node.
    request = "fan-out-1"
    cluster.kubectl("annotate", "s3backup", name, "-n", namespace, f"{GROUP}/run-now={request}", "--overwrite")
    jobs = wait_for(lambda: (lambda found: found if len(found) == 2 else None)(
        [job for job in cluster.items("jobs", "-n", namespace, "-l", f"{GROUP}/backup={name}")
         if job["metadata"].get("annotations", {}).get(f"{GROUP}/run-now") == request]), "two run-now Jobs")
    for job in jobs:
        node = job["metadata"]["annotations"][f"{GROUP}/target"]
        finished = finished_job(cluster, namespace, job["metadata"]["name"])
        pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")
        assert {pod["spec"]["nodeName"] for pod in pods} == {node}
        assert any(c["type"] == "Complete" and c["status"] == "True" for c in finished["status"]["conditions"]), \
            "\n".join(cluster.pod_log(pod) for pod in pods)

    # Each node's files under PREFIX/<node>/, and nothing else (node-c's files nowhere).
    expected = sorted(f"{node}/{relative}" for node in ("node-a", "node-b") for relative in NODE_FILES[node])
    stored = sorted(key for key in bucket_keys(s3, prefix) if "/.s3backup/" not in key)  # each run's own cache
    assert stored == expected
    for node in ("node-a", "node-b"):
        for relative, content in NODE_FILES[node].items():
            assert s3.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{node}/{relative}")["Body"].read() == content

    # The status shows each node's last run; lastRun is the newest of them, lastSuccessfulTime the oldest.
    def both_reported():
        found = status_targets(cluster, namespace, name)
        runs = {node: (entry.get("lastRun") or {}) for node, entry in found.items()}
        return found if all(run.get("result") == "Succeeded" for run in runs.values()) and len(runs) == 2 else None
    targets = wait_for(both_reported, "both nodes' last runs in the status")
    assert sorted(targets) == ["node-a", "node-b"]
    for node, entry in targets.items():
        assert entry["cronJobName"] == cronjobs[node]
        assert entry["lastRun"]["filesUploaded"] == len(NODE_FILES[node])
        assert entry["lastRun"]["jobName"].startswith(f"{name}-{node}-now-")
    status = cluster.get("s3backup", name, "-n", namespace)["status"]
    assert status["lastSuccessfulTime"] == min(entry["lastSuccessfulTime"] for entry in targets.values())
    assert status["lastRun"]["jobName"] in {entry["lastRun"]["jobName"] for entry in targets.values()}


def pushed_backups(pushgateway, namespace: str) -> set[str]:
    """The backups (`<name>/<target>` for a fan-out) with a metrics group in the Pushgateway, in `namespace`."""
    with urllib.request.urlopen(f"{pushgateway.url}/api/v1/metrics", timeout=5) as response:
        groups = json.load(response)["data"]
    return {group["labels"].get("backup", "") for group in groups
            if group["labels"].get("job") == "s3backup" and group["labels"].get("namespace") == namespace}


def test_a_node_that_joins_or_leaves_gains_or_loses_its_run(cluster, s3, fan_out_namespace, pushgateway):
    namespace, name = fan_out_namespace, "servers"  # the resource of the test above
    assert sorted(target_cronjobs(cluster, namespace, name)) == ["node-a", "node-b"]
    assert {f"{name}/node-a", f"{name}/node-b"} <= pushed_backups(pushgateway, namespace)  # their runs pushed
    try:
        cluster.kubectl("label", "node", "node-c", "role=backup-server", "--overwrite")
        wait_for(lambda: sorted(target_cronjobs(cluster, namespace, name)) == ["node-a", "node-b", "node-c"],
                 "node-c's CronJob")
        wait_for(lambda: "node-c" in status_targets(cluster, namespace, name), "node-c in the status")
        assert "node-a, node-b, node-c" in ready(cluster, name, namespace)["message"]
        # what node-c's run would push, pushed by the syncer's own code
        summary = Summary(result="success", duration_seconds=1.0)
        assert push_run_metrics(pushgateway.url, {"namespace": namespace, "backup": f"{name}/node-c"}, summary,
                                86400) is None
    finally:
        cluster.kubectl("label", "node", "node-c", "role-")
    wait_for(lambda: sorted(target_cronjobs(cluster, namespace, name)) == ["node-a", "node-b"],
             "node-c's CronJob gone")
    wait_for(lambda: sorted(status_targets(cluster, namespace, name)) == ["node-a", "node-b"],
             "node-c gone from the status")
    wait_for(lambda: f"{name}/node-c" not in pushed_backups(pushgateway, namespace), "node-c's metrics group gone")
    assert {f"{name}/node-a", f"{name}/node-b"} <= pushed_backups(pushgateway, namespace)


# --- A ReadWriteOnce claim in use: each run goes to the node of the pod that mounts it -------------------

IMAGE = "ghcr.io/s3backup/s3backup:0.1.0"  # the project's image: what the process kubelet runs


@pytest.fixture(scope="module")
def rwo_namespace(cluster, installed, s3):
    name = make_namespace(cluster, "rwo")
    make_credentials(cluster, name, s3)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def shared_claim(cluster, namespace: str, name: str) -> str:
    """A ReadWriteOnce claim on a hostPath PersistentVolume without node affinity: the scheduler alone would put
    a pod mounting it on any node, and each node has its own directory behind it (the process kubelet)."""
    cluster.apply({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-{name}"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/srv/{namespace}-{name}"},
                 "claimRef": {"namespace": namespace, "name": name}},
    })
    cluster.apply({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": f"{namespace}-{name}",
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
    wait_for(lambda: (cluster.get("pvc", name, "-n", namespace) or {}).get("status", {}).get("phase") == "Bound",
             f"claim {namespace}/{name} bound")
    return name


def run_app(cluster, namespace: str, claim: str, node: str, files: dict[str, bytes]) -> None:
    """The application: a running pod on `node` that mounts the claim, with `files` in the volume there."""
    for relative, content in files.items():
        target = cluster.node_dir(node, f"/srv/{namespace}-{claim}") / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    cluster.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"app-{node}", "namespace": namespace},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "app", "image": IMAGE, "command": ["sh", "-c", "exec sleep 3600"],
                                 "volumeMounts": [{"name": "data", "mountPath": "/var/lib/app"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
    })
    wait_for(lambda: (cluster.get("pod", f"app-{node}", "-n", namespace) or {}).get("status", {}).get("phase")
             == "Running", f"the application pod on {node}")


def pinned_node(job: dict) -> list[str]:
    affinity = job["spec"]["template"]["spec"].get("affinity") or {}
    terms = (affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution", {}).get(
        "nodeSelectorTerms") or []
    return [value for term in terms for field in term.get("matchFields") or [] for value in field["values"]]


def scheduled_job(cluster, namespace: str, name: str, seen: set[str]) -> dict:
    """The next Job the CronJob starts (not a run-now one, not one in `seen`), once finished."""
    def new():
        for job in cluster.items("jobs", "-n", namespace, "-l", f"{GROUP}/backup={name}"):
            if job["metadata"]["name"] not in seen and f"{GROUP}/run-now" not in job["metadata"].get("annotations", {}):
                return job
        return None
    job = wait_for(new, "a scheduled Job", timeout=150, every=2)
    return finished_job(cluster, namespace, job["metadata"]["name"], timeout=120)


FILES_B = {"on-b.txt": b"written by the app on node-b\n"}
FILES_C = {"on-c.txt": b"written by the app on node-c\n"}


def test_runs_of_a_claim_in_use_go_to_its_pods_node_decided_at_run_time(cluster, s3, rwo_namespace):
    namespace, name, prefix = rwo_namespace, "app-data", f"rwo-{os.getpid()}"
    claim = shared_claim(cluster, namespace, "data")
    run_app(cluster, namespace, claim, "node-b", FILES_B)
    cluster.apply(backup_manifest(namespace, name, claim, s3, prefix, schedule="* * * * *"))
    wait_for(lambda: ready(cluster, name, namespace).get("status") == "True", "the S3Backup Ready")
    template = cluster.get("cronjob", f"{name}-s3backup", "-n", namespace)["spec"]["jobTemplate"]
    assert template["spec"]["suspend"] is True  # the operator places each run, then starts it
    assert template["metadata"]["annotations"][f"{GROUP}/place-with-claim"] == claim

    # A run-now Job is pinned when it is made.
    job = finished_job(cluster, namespace, run_now(cluster, namespace, name)["metadata"]["name"])
    assert pinned_node(job) == ["node-b"]
    pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")
    assert {pod["spec"]["nodeName"] for pod in pods} == {"node-b"}, "\n".join(map(cluster.pod_log, pods))
    assert last_run(cluster, namespace, name, job["metadata"]["name"])["result"] == "Succeeded"
    assert sorted(bucket_keys(s3, prefix)) == ["on-b.txt"]

    # A scheduled Job, created suspended by the CronJob, is pinned and started by the operator. One the CronJob made
    # while the run-now Job ran may finish no later than it: the status keeps the newest run, so that one is skipped.
    seen = {j["metadata"]["name"] for j in cluster.items("jobs", "-n", namespace, "-l", f"{GROUP}/backup={name}")}
    job = scheduled_job(cluster, namespace, name, seen)
    seen.add(job["metadata"]["name"])
    assert pinned_node(job) == ["node-b"] and job["spec"]["suspend"] is False
    pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")
    assert {pod["spec"]["nodeName"] for pod in pods} == {"node-b"}
    assert last_run(cluster, namespace, name, job["metadata"]["name"])["result"] == "Succeeded"

    # The application moves to node-c (the backup's spec unchanged): the next run follows it there.
    cluster.kubectl("patch", "s3backup", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for(lambda: cluster.get("cronjob", f"{name}-s3backup", "-n", namespace)["spec"]["suspend"], "suspended")
    wait_for(lambda: not [j for j in cluster.items("jobs", "-n", namespace, "-l", f"{GROUP}/backup={name}")
                          if not any(c["status"] == "True" and c["type"] in ("Complete", "Failed")
                                     for c in j.get("status", {}).get("conditions", []))], "no run in progress")
    seen |= {j["metadata"]["name"] for j in cluster.items("jobs", "-n", namespace, "-l", f"{GROUP}/backup={name}")}
    cluster.kubectl("delete", "pod", "app-node-b", "-n", namespace, "--wait=true")
    run_app(cluster, namespace, claim, "node-c", FILES_C)
    cluster.kubectl("patch", "s3backup", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    job = scheduled_job(cluster, namespace, name, seen)
    assert pinned_node(job) == ["node-c"]
    pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")
    assert {pod["spec"]["nodeName"] for pod in pods} == {"node-c"}
    run = last_run(cluster, namespace, name, job["metadata"]["name"])
    assert (run["result"], run["filesUploaded"]) == ("Succeeded", 1), run
    assert sorted(bucket_keys(s3, prefix)) == ["on-b.txt", "on-c.txt"]  # node-c's file joined (on-b.txt kept)
    cluster.kubectl("patch", "s3backup", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')


# --- source.selector: one run per matching claim ---------------------------------------------------------

CLAIM_FILES = {claim: {f"{claim}.txt": f"the {claim} volume\n".encode(), "shared-name.txt": claim.encode() * 100}
               for claim in ("db", "media", "other", "logs")}


@pytest.fixture(scope="module")
def selector_namespace(cluster, installed, s3):
    name = make_namespace(cluster, "selector", RESTRICTED)
    make_credentials(cluster, name, s3)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_each_selected_claim_is_backed_up_under_its_own_prefix_and_claims_join_and_leave(
        cluster, s3, selector_namespace):
    namespace, name, prefix = selector_namespace, "volumes", f"selector-{os.getpid()}"
    for claim in ("db", "media", "other"):
        make_volume(cluster, namespace, claim, CLAIM_FILES[claim])
    cluster.kubectl("label", "pvc", "db", "media", "-n", namespace, "backup=daily")
    manifest = backup_manifest(namespace, name, "unused", s3, prefix)
    manifest["spec"]["source"] = {"selector": {"matchLabels": {"backup": "daily"}}}
    cluster.apply(manifest)
    condition = wait_for(lambda: (lambda c: c if c.get("status") == "True" else None)(
        ready(cluster, name, namespace)), "the S3Backup Ready")
    assert condition["reason"] == "CronJobsReady" and "volumes db, media" in condition["message"], condition
    assert sorted(target_cronjobs(cluster, namespace, name)) == ["db", "media"]

    request = "selector-1"
    cluster.kubectl("annotate", "s3backup", name, "-n", namespace, f"{GROUP}/run-now={request}", "--overwrite")
    jobs = wait_for(lambda: (lambda found: found if len(found) == 2 else None)(
        [job for job in cluster.items("jobs", "-n", namespace, "-l", f"{GROUP}/backup={name}")
         if job["metadata"].get("annotations", {}).get(f"{GROUP}/run-now") == request]), "two run-now Jobs")
    for job in jobs:
        finished = finished_job(cluster, namespace, job["metadata"]["name"])
        pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")
        assert any(c["type"] == "Complete" and c["status"] == "True" for c in finished["status"]["conditions"]), \
            "\n".join(cluster.pod_log(pod) for pod in pods)
    expected = sorted(f"{claim}/{relative}" for claim in ("db", "media") for relative in CLAIM_FILES[claim])
    assert sorted(key for key in bucket_keys(s3, prefix) if "/.s3backup/" not in key) == expected
    for claim in ("db", "media"):
        body = s3.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{claim}/shared-name.txt")["Body"].read()
        assert body == CLAIM_FILES[claim]["shared-name.txt"]

    def reported():
        found = status_targets(cluster, namespace, name)
        done = {claim: (entry.get("lastRun") or {}).get("result") for claim, entry in found.items()}
        return found if done == {"db": "Succeeded", "media": "Succeeded"} else None
    targets = wait_for(reported, "each volume's last run in the status")
    for claim, entry in targets.items():
        assert entry["lastRun"]["filesUploaded"] == len(CLAIM_FILES[claim])

    # A new matching claim joins; a deleted one leaves (its files stay in the bucket).
    make_volume(cluster, namespace, "logs", CLAIM_FILES["logs"])
    cluster.kubectl("label", "pvc", "logs", "-n", namespace, "backup=daily")
    wait_for(lambda: sorted(target_cronjobs(cluster, namespace, name)) == ["db", "logs", "media"], "logs' CronJob")
    wait_for(lambda: "logs" in status_targets(cluster, namespace, name), "logs in the status")
    cluster.kubectl("delete", "pvc", "media", "-n", namespace, "--wait=false")
    wait_for(lambda: sorted(target_cronjobs(cluster, namespace, name)) == ["db", "logs"], "media's CronJob gone")
    wait_for(lambda: sorted(status_targets(cluster, namespace, name)) == ["db", "logs"], "media gone from the status")
    assert "volumes db, logs" in ready(cluster, name, namespace)["message"]
    assert "media/media.txt" in bucket_keys(s3, prefix)


# --- copyMethod: Snapshot: the objects the operator makes and removes around a run ------------------------

#: A minimal VolumeSnapshot CRD (this test's own, not the external-snapshotter's): the test cluster has no
#: snapshot controller and the process kubelet no CSI driver, so the test plays both, see
#: README.md, "Consistent capture: a snapshot per run (`copyMethod: Snapshot`)".
VOLUME_SNAPSHOT_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "volumesnapshots.snapshot.storage.k8s.io",  # a *.k8s.io group wants an approval note
                 "annotations": {"api-approved.kubernetes.io": "unapproved, a minimal stand-in for tests"}},
    "spec": {"group": "snapshot.storage.k8s.io", "scope": "Namespaced",
             "names": {"kind": "VolumeSnapshot", "plural": "volumesnapshots", "singular": "volumesnapshot",
                       "listKind": "VolumeSnapshotList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                               "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}
LIVE_FILES = {"live.txt": b"still being written\n"}
SNAPSHOT_FILES = {"frozen.txt": b"the volume as it was at the snapshot\n", "dir/db.bin": bytes(range(256)) * 8}


@pytest.fixture(scope="module")
def snapshot_namespace(cluster, installed, s3):
    cluster.apply(VOLUME_SNAPSHOT_CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/volumesnapshots.snapshot.storage.k8s.io",
                    "--timeout=60s")
    name = make_namespace(cluster, "snapshot")
    make_credentials(cluster, name, s3)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def snapshot_backup(cluster, s3, namespace: str, name: str, claim: str, prefix: str) -> str:
    """A claim holding LIVE_FILES and a Ready copyMethod Snapshot S3Backup of it; returns its clone's name."""
    make_volume(cluster, namespace, claim, LIVE_FILES)
    manifest = backup_manifest(namespace, name, claim, s3, prefix)
    manifest["spec"]["copyMethod"] = "Snapshot"
    cluster.apply(manifest)
    wait_for(lambda: ready(cluster, name, namespace).get("status") == "True", "the S3Backup Ready")
    return f"{name}-s3backup-snap"


def test_a_snapshot_run_backs_up_a_clone_and_removes_both_afterwards(cluster, s3, snapshot_namespace):
    namespace, name, prefix = snapshot_namespace, "frozen", f"snapshot-{os.getpid()}"
    clone = snapshot_backup(cluster, s3, namespace, name, "live", prefix)
    template = cluster.get("cronjob", f"{name}-s3backup", "-n", namespace)["spec"]["jobTemplate"]
    assert template["spec"]["suspend"] is True
    assert template["metadata"]["annotations"][f"{GROUP}/snapshot-of"] == "live"
    assert template["spec"]["template"]["spec"]["volumes"][0] == {
        "name": "source", "persistentVolumeClaim": {"claimName": clone, "readOnly": True}}

    # run-now: a suspended Job, and a VolumeSnapshot of the source claim made for it.
    job = run_now(cluster, namespace, name)
    job_name = job["metadata"]["name"]
    assert job["spec"]["suspend"] is True
    snapshot = wait_for(lambda: cluster.get("volumesnapshot", clone, "-n", namespace), "the VolumeSnapshot")
    assert snapshot["spec"]["source"] == {"persistentVolumeClaimName": "live"}
    assert snapshot["metadata"]["annotations"][f"{GROUP}/for-job"] == job_name
    assert snapshot["metadata"]["ownerReferences"][0]["name"] == job_name
    assert cluster.get("pvc", clone, "-n", namespace) is None  # nothing restored before the snapshot is ready
    assert cluster.get("job", job_name, "-n", namespace)["spec"]["suspend"] is True
    assert not cluster.items("pods", "-n", namespace, "-l", f"job-name={job_name}")

    # The test plays the snapshot controller: the snapshot is ready.
    cluster.kubectl("patch", "volumesnapshot", clone, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", '{"status":{"readyToUse":true,"restoreSize":"1Gi"}}')
    claim = wait_for(lambda: cluster.get("pvc", clone, "-n", namespace), "the clone claim")
    assert claim["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                           "name": clone}
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert claim["metadata"]["annotations"][f"{GROUP}/for-job"] == job_name
    wait_for(lambda: cluster.get("job", job_name, "-n", namespace)["spec"].get("suspend") is False, "the Job started")

    # ... and the provisioner: a volume holding the snapshot's content, bound to the clone claim.
    path = f"/srv/{namespace}-restored"
    for relative, content in SNAPSHOT_FILES.items():
        target = cluster.node_dir("node-b", path) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    cluster.apply({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-restored"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "local": {"path": path},
                 "claimRef": {"namespace": namespace, "name": clone},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-b"]}]}]}}},
    })
    job = finished_job(cluster, namespace, job_name, timeout=150)
    pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job_name}")
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"]), \
        "\n".join(cluster.pod_log(pod) for pod in pods)
    run = last_run(cluster, namespace, name, job_name)
    assert (run["result"], run["filesUploaded"]) == ("Succeeded", len(SNAPSHOT_FILES))
    assert sorted(bucket_keys(s3, prefix)) == sorted(SNAPSHOT_FILES)  # the snapshot's files, not the live ones

    # After the run: the clone claim and the snapshot are deleted.
    def clone_deleted():  # gone, or held only by the pvc-protection finalizer while the Job's pod is kept
        found = cluster.get("pvc", clone, "-n", namespace)
        return found is None or bool(found["metadata"].get("deletionTimestamp"))
    wait_for(clone_deleted, "the clone claim deleted")
    wait_for(lambda: cluster.get("volumesnapshot", clone, "-n", namespace) is None, "the VolumeSnapshot deleted")
    assert cluster.get("pvc", "live", "-n", namespace)["status"]["phase"] == "Bound"  # the source is untouched
    cluster.kubectl("delete", "pv", f"{namespace}-restored", "--wait=false", check=False)


def test_a_failed_snapshot_fails_the_run_without_a_pod_and_the_next_run_takes_a_new_one(
        cluster, s3, snapshot_namespace):
    namespace, name, prefix = snapshot_namespace, "unlucky", f"snapshot-failed-{os.getpid()}"
    clone = snapshot_backup(cluster, s3, namespace, name, "busy", prefix)
    job_name = run_now(cluster, namespace, name)["metadata"]["name"]
    wait_for(lambda: cluster.get("volumesnapshot", clone, "-n", namespace), "the VolumeSnapshot")

    # The test plays the snapshot controller: the snapshot fails.
    cluster.kubectl("patch", "volumesnapshot", clone, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", '{"status":{"readyToUse":false,"error":{"message":"driver: the volume is busy"}}}')
    job = finished_job(cluster, namespace, job_name, timeout=60)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "DeadlineExceeded")
    assert job["spec"]["parallelism"] == 0
    assert not cluster.items("pods", "-n", namespace, "-l", f"job-name={job_name}")  # no pod ever ran
    run = last_run(cluster, namespace, name, job_name)
    assert (run["result"], run["reason"]) == ("Failed", "SnapshotFailed"), run
    assert run["message"] == (f"VolumeSnapshot {clone} of claim busy failed: driver: the volume is busy; "
                              "the run did not start")
    events = wait_for(lambda: operator_events(cluster, namespace, name), "the run's Event")
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "SnapshotFailed")]
    assert "lastSuccessfulTime" not in cluster.get("s3backup", name, "-n", namespace)["status"]
    wait_for(lambda: cluster.get("volumesnapshot", clone, "-n", namespace) is None, "the failed snapshot deleted")
    assert cluster.get("pvc", clone, "-n", namespace) is None  # no clone was ever made
    assert bucket_keys(s3, prefix) == {}

    # The next run is not held back by the failed one: it gets a snapshot of its own.
    second = run_now(cluster, namespace, name)["metadata"]["name"]
    snapshot = wait_for(lambda: cluster.get("volumesnapshot", clone, "-n", namespace), "the next run's snapshot")
    assert snapshot["metadata"]["annotations"][f"{GROUP}/for-job"] == second
    assert "error" not in (snapshot.get("status") or {})
