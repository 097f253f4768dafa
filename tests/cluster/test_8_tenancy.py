"""8. Tenancy on the real control plane: what the admin's policy refuses never becomes a pod, what it allows in a
namespace runs there only, the built-in roles carry S3Backup rights, and the pod settings of a spec reach the
pod as the API server stores it."""

from __future__ import annotations

import json
import os

import pytest

from tests.cluster.conftest import chart_values
from tests.cluster.support import (
    FILES,
    GROUP,
    backup_manifest,
    bucket_keys,
    children,
    finished_job,
    handled,
    job_pods,
    last_run,
    make_volume,
    run_now,
    wait_condition,
    wait_for,
)

HOST_PATH = "/var/backups/tenancy"
HOST_NODE = "node-b"


@pytest.fixture
def namespace(installed, new_namespace):
    return new_namespace("tenancy")


def host_path_backup(namespace: str, name: str, s3, prefix: str) -> dict:
    manifest = backup_manifest(namespace, name, "unused", s3, prefix,
                               nodeSelector={"kubernetes.io/hostname": HOST_NODE})
    manifest["spec"]["source"]["volume"] = {"hostPath": {"path": HOST_PATH, "type": "Directory"}}
    return manifest


def assert_refused_and_nothing_runs(cluster, namespace: str, name: str, field: str) -> dict:
    """Ready False NotAllowed naming `field` and the namespace; a run-now request is handled and makes nothing."""
    ready = wait_condition(cluster, "s3backup", name, namespace, "False", "NotAllowed")
    assert field in ready["message"] and repr(namespace) in ready["message"], ready
    cluster.kubectl("annotate", "s3backup", name, "-n", namespace, f"{GROUP}/run-now=refused", "--overwrite")
    wait_for(lambda: handled(cluster, "s3backup", name, namespace, "refused"), "the run-now request handled")
    assert children(cluster, namespace, name) == {"cronjobs": [], "jobs": [], "pods": []}
    assert not cluster.items("pods", "-n", namespace)
    return ready


def test_a_service_account_is_refused_by_default_and_no_pod_is_made(cluster, s3, namespace):
    cluster.kubectl("create", "serviceaccount", "powerful", "-n", namespace)
    cluster.apply(backup_manifest(namespace, "escalate", "data", s3, "tenancy-sa", serviceAccountName="powerful"))
    assert_refused_and_nothing_runs(cluster, namespace, "escalate", "spec.job.serviceAccountName")


def test_what_the_admin_allows_runs_in_the_listed_namespace_only(cluster, s3, namespace, new_namespace):
    """policy.allowHostPath and policy.allowServiceAccountName for one namespace: a hostPath backup with its own
    service account runs there, on the node's files; the same spec elsewhere is refused, and a CronJob made for a
    spec that was allowed is deleted when the spec turns to a refused one."""
    elsewhere = new_namespace("tenancy-other")
    files = cluster.node_dir(HOST_NODE, HOST_PATH)
    files.mkdir(parents=True, exist_ok=True)
    (files / "node.txt").write_text(f"{HOST_NODE}\n")
    files.chmod(0o755)
    prefix = f"tenancy-host-{os.getpid()}"
    with chart_values(cluster, "--set", f"policy.allowHostPath={{{namespace}}}",
                      "--set", f"policy.allowServiceAccountName={{{namespace}}}") as pod:
        env = {item["name"]: item.get("value") for item in pod["spec"]["containers"][0]["env"]}
        assert (env["S3BACKUP_ALLOW_HOST_PATH"], env["S3BACKUP_ALLOW_SERVICE_ACCOUNT_NAME"]) == (namespace,) * 2
        cluster.kubectl("create", "serviceaccount", "writer", "-n", namespace)
        manifest = host_path_backup(namespace, "node-files", s3, prefix)
        manifest["spec"]["job"]["serviceAccountName"] = "writer"
        cluster.apply(manifest)
        wait_condition(cluster, "s3backup", "node-files", namespace, "True", "CronJobReady")
        job = finished_job(cluster, namespace, run_now(cluster, namespace, "node-files")["metadata"]["name"])
        (backup_pod,) = job_pods(cluster, namespace, job["metadata"]["name"])
        assert backup_pod["spec"]["serviceAccountName"] == "writer"
        assert backup_pod["spec"]["nodeName"] == HOST_NODE
        assert last_run(cluster, namespace, "node-files", job["metadata"]["name"])["result"] == "Succeeded"
        assert sorted(bucket_keys(s3, prefix)) == ["node.txt"]

        # The same spec in a namespace the policy does not name: refused, nothing runs.
        cluster.apply(host_path_backup(elsewhere, "node-files", s3, prefix + "-elsewhere"))
        assert_refused_and_nothing_runs(cluster, elsewhere, "node-files", "spec.source.volume.hostPath")
        # A spec that was allowed (a PVC) gets its CronJob; turned into a hostPath, the CronJob goes.
        cluster.apply(backup_manifest(elsewhere, "turns", "data", s3, prefix + "-turns"))
        wait_condition(cluster, "s3backup", "turns", elsewhere, "True", "CronJobReady")
        assert children(cluster, elsewhere, "turns")["cronjobs"] == ["turns-s3backup"]
        cluster.kubectl("patch", "s3backup", "turns", "-n", elsewhere, "--type=merge", "-p", json.dumps(
            {"spec": {"source": {"volume": {"persistentVolumeClaim": None, "hostPath": {"path": HOST_PATH}}}}}))
        ready = wait_condition(cluster, "s3backup", "turns", elsewhere, "False", "NotAllowed")
        assert "CronJob turns-s3backup deleted" in ready["message"]
        wait_for(lambda: not children(cluster, elsewhere, "turns")["cronjobs"], "the refused spec's CronJob gone")

        # An S3Restore with a service account: allowed here, refused there.
        for where in (namespace, elsewhere):
            cluster.apply({"apiVersion": f"{GROUP}/v1alpha1", "kind": "S3Restore",
                           "metadata": {"name": "back", "namespace": where},
                           "spec": {"source": {"bucket": "abc"}, "job": {"serviceAccountName": "writer"},
                                    "target": {"persistentVolumeClaim": {"claimName": "nowhere"}}}})
        wait_condition(cluster, "s3restore", "back", namespace, "True", "JobCreated")
        jobs = cluster.items("jobs", "-n", namespace, "-l", f"{GROUP}/restore=back")
        assert [j["spec"]["template"]["spec"]["serviceAccountName"] for j in jobs] == ["writer"]
        wait_condition(cluster, "s3restore", "back", elsewhere, "False", "NotAllowed")
        assert not cluster.items("jobs", "-n", elsewhere)
    # The allowance withdrawn (the chart's values as before): the CronJob made under it is deleted.
    ready = wait_condition(cluster, "s3backup", "node-files", namespace, "False", "NotAllowed", timeout=90)
    assert "spec.source.volume.hostPath" in ready["message"]
    wait_for(lambda: not children(cluster, namespace, "node-files")["cronjobs"], "the CronJob of the withdrawn spec")


def test_the_built_in_roles_carry_s3backup_rights(cluster, installed, namespace):
    """The chart's aggregated ClusterRoles: admin and edit manage S3Backups and S3Restores (not their status),
    view reads them, and someone without a binding gets nothing."""
    for user, role in (("alice", "admin"), ("erin", "edit"), ("victor", "view")):
        cluster.kubectl("create", "rolebinding", f"{user}-{role}", "-n", namespace, f"--clusterrole={role}",
                        f"--user={user}")

    def can(user: str, verb: str, resource: str) -> bool:
        plural, _, subresource = resource.partition("/")
        answer = cluster.kubectl("auth", "can-i", f"--as={user}", verb, f"{plural}.{GROUP}", "-n", namespace,
                                 *([f"--subresource={subresource}"] if subresource else []), check=False)
        return answer.stdout.strip() == "yes"

    resources = ("s3backups", "s3restores", "s3backups/status", "s3restores/status")
    verbs = ("get", "list", "watch", "create", "update", "patch", "delete")

    def rights(user: str) -> set[tuple[str, str]]:
        return {(verb, resource) for resource in resources for verb in verbs if can(user, verb, resource)}

    manage = {(verb, resource) for resource in resources[:2] for verb in verbs}
    read = {(verb, resource) for resource in resources for verb in ("get", "list", "watch")}
    # The aggregation controller fills the built-in roles from the chart's ClusterRoles.
    wait_for(lambda: can("erin", "create", "s3backups"), "edit to include s3backups")
    assert rights("alice") == rights("erin") == manage | read
    assert rights("victor") == read
    assert rights("mallory") == set()
    # And for real: the API server lets an editor create one, and a viewer not.
    manifest = json.dumps({"apiVersion": f"{GROUP}/v1alpha1", "kind": "S3Backup",
                           "metadata": {"name": "team", "namespace": namespace},
                           "spec": {"schedule": "@daily", "source": {"volume": {"persistentVolumeClaim": {
                               "claimName": "data"}}}, "destination": {"bucket": "abc"}}})
    denied = cluster.kubectl("apply", "--as=victor", "-f", "-", input=manifest, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr, denied.stderr
    cluster.kubectl("apply", "--as=erin", "-f", "-", input=manifest)
    assert cluster.kubectl("get", "s3backup", "team", "-n", namespace, "--as=victor", "-o", "name").stdout.strip() \
        == f"s3backup.{GROUP}/team"


def test_pod_settings_reach_the_pod(cluster, s3, namespace):
    """CA bundle (ConfigMap, Secret), proxies, extra env, pod labels and annotations and a priority class, as the
    API server stores the backup pod; the backup runs with them in a `restricted` namespace."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cluster.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                   "metadata": {"name": f"{namespace}-backups"}, "value": 1234, "globalDefault": False})
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    cluster.kubectl("create", "configmap", "corporate-ca", "-n", namespace, f"--from-literal=ca.crt={ca}")
    cluster.kubectl("create", "secret", "generic", "private-ca", "-n", namespace, f"--from-literal=bundle.pem={ca}")
    cluster.kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=level=high")
    claim = make_volume(cluster, namespace, "data", FILES)
    prefix = f"tenancy-settings-{os.getpid()}"
    job = {"priorityClassName": f"{namespace}-backups",
           "podLabels": {"team": "db", "sidecar.istio.io/inject": "false"},
           "podAnnotations": {"sidecar.istio.io/inject": "false", "example.com/owner": "db-team"},
           "proxy": {"httpsProxy": "http://proxy.example:3128", "noProxy": "127.0.0.1,localhost,.svc"},
           "env": [{"name": "EXTRA", "value": "1"},
                   {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}}]}
    bundles = {"from-configmap": {"configMapKeyRef": {"name": "corporate-ca"}},
               "from-secret": {"secretKeyRef": {"name": "private-ca", "key": "bundle.pem"}}}
    for name, bundle in bundles.items():
        manifest = backup_manifest(namespace, name, claim, s3, f"{prefix}/{name}", **job)
        manifest["spec"]["destination"]["caBundle"] = bundle
        cluster.apply(manifest)
    for name, bundle in bundles.items():
        done = finished_job(cluster, namespace, run_now(cluster, namespace, name)["metadata"]["name"])
        (pod,) = job_pods(cluster, namespace, done["metadata"]["name"])
        assert last_run(cluster, namespace, name, done["metadata"]["name"])["result"] == "Succeeded", \
            cluster.pod_log(pod)
        assert sorted(bucket_keys(s3, f"{prefix}/{name}")) == sorted(FILES)

        meta, spec = pod["metadata"], pod["spec"]
        assert {key: meta["labels"].get(key) for key in job["podLabels"]} == job["podLabels"]
        assert {key: meta["annotations"].get(key) for key in job["podAnnotations"]} == job["podAnnotations"]
        # The Priority admission plugin resolved the class to its value.
        assert (spec["priorityClassName"], spec["priority"]) == (f"{namespace}-backups", 1234)
        container = spec["containers"][0]
        env = {item["name"]: item for item in container["env"]}
        assert env["HTTPS_PROXY"]["value"] == "http://proxy.example:3128"
        assert env["NO_PROXY"]["value"] == "127.0.0.1,localhost,.svc"
        assert env["EXTRA"]["value"] == "1"
        assert env["LEVEL"]["valueFrom"] == {"configMapKeyRef": {"name": "settings", "key": "level"}}
        ca_path = env["AWS_CA_BUNDLE"]["value"]
        mount = next(m for m in container["volumeMounts"] if ca_path.startswith(m["mountPath"]))
        assert mount.get("readOnly") is True
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        source = volume.get("configMap") or volume.get("secret")
        assert source.get("name", source.get("secretName")) == (
            "corporate-ca" if "configMapKeyRef" in bundle else "private-ca")
        # What the process kubelet mounted there is the bundle (its copy of the volume, kept with the pod).
        copies = list((cluster.dir / "pods").glob(f"{namespace}_{meta['name']}_{meta['uid']}/**/"
                                                  f"{ca_path.rsplit('/', 1)[1]}"))
        assert copies and all(copy.read_text() == ca for copy in copies), copies
