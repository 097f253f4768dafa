"""3. The whole chain of one run: S3Backup -> CronJob -> run-now -> Job (operator) -> Pod (scheduler) ->
the real `s3backup sync` against SeaweedFS -> Job complete (job controller) -> S3Backup status and Pushgateway."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import urllib.request

import pytest

from tests.cluster.support import GROUP, Cluster, wait_for
from tests.conftest import BUCKET

NODE = "node-a"
FILES = {"a.txt": b"alpha\n", "dir/b.bin": bytes(range(256)) * 40, "dir/sub/c.txt": b"gamma\n" * 1000}


def make_namespace(cluster: Cluster, base: str, labels: dict[str, str] | None = None) -> str:
    """A new namespace `<base>-<random>` (a namespace of an earlier run may still be terminating)."""
    name = f"{base}-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}})
    wait_for(lambda: cluster.get("serviceaccount", "default", "-n", name), f"the default ServiceAccount in {name}")
    return name


def make_volume(cluster: Cluster, namespace: str, name: str, files: dict[str, bytes], node: str = NODE) -> str:
    """A local PersistentVolume on `node` holding `files` (root-owned, world-readable, like a typical volume),
    and a claim bound to it. Returns the claim's name."""
    path = f"/srv/{namespace}-{name}"
    root = cluster.node_dir(node, path)
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    cluster.apply({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-{name}"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "local": {"path": path},
                 "claimRef": {"namespace": namespace, "name": name},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
    })
    cluster.apply({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": f"{namespace}-{name}",
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
    wait_for(lambda: (cluster.get("pvc", name, "-n", namespace) or {}).get("status", {}).get("phase") == "Bound",
             f"claim {namespace}/{name} bound")
    return name


def make_credentials(cluster: Cluster, namespace: str, s3) -> None:
    cluster.kubectl("create", "secret", "generic", "s3-credentials", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={s3.secret_key}")


def backup_manifest(namespace: str, name: str, claim: str, s3, prefix: str, pushgateway_url: str | None = None,
                    schedule: str = "H 2 * * *", **job: object) -> dict:
    spec: dict = {
        "schedule": schedule,
        "source": {"volume": {"persistentVolumeClaim": {"claimName": claim}}},
        "destination": {"bucket": BUCKET, "prefix": prefix, "endpoint": s3.endpoint_url, "region": s3.region,
                        "forcePathStyle": True, "credentialsSecretRef": {"name": "s3-credentials"}},
    }
    if pushgateway_url:
        spec["metrics"] = {"pushgatewayURL": pushgateway_url}
    if job:
        spec["job"] = job
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "S3Backup",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def run_now(cluster: Cluster, namespace: str, name: str) -> dict:
    """Annotate for one run; return the Job the operator creates for it."""
    request = str(time.time_ns())
    cluster.kubectl("annotate", "s3backup", name, "-n", namespace, f"{GROUP}/run-now={request}", "--overwrite")

    def job():
        for found in cluster.items("jobs", "-n", namespace, "-l", f"{GROUP}/backup={name}"):
            if found["metadata"].get("annotations", {}).get(f"{GROUP}/run-now") == request:
                return found
        return None
    return wait_for(job, f"the run-now Job of {namespace}/{name}", timeout=60)


def finished_job(cluster: Cluster, namespace: str, job_name: str, timeout: float = 120) -> dict:
    def done():
        job = cluster.get("job", job_name, "-n", namespace)
        conditions = {c["type"]: c["status"] for c in (job or {}).get("status", {}).get("conditions", [])}
        return job if conditions.get("Complete") == "True" or conditions.get("Failed") == "True" else None
    try:
        return wait_for(done, f"Job {namespace}/{job_name} finished", timeout=timeout)
    except AssertionError:
        pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job_name}")
        detail = "\n".join(json.dumps(pod.get("status"), indent=1) + cluster.pod_log(pod) for pod in pods)
        raise AssertionError(f"Job {job_name} did not finish; its pods:\n{detail}") from None


def last_run(cluster: Cluster, namespace: str, name: str, job_name: str) -> dict:
    def reported():
        status = (cluster.get("s3backup", name, "-n", namespace) or {}).get("status", {})
        run = status.get("lastRun") or {}
        return run if run.get("jobName") == job_name else None
    return wait_for(reported, f"the status of {namespace}/{name} reporting {job_name}", timeout=60)


def bucket_keys(s3, prefix: str) -> dict[str, str]:
    """The backed-up files under `prefix` (key relative to it -> ETag), without the syncer's own `.s3backup/`."""
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    keys = {item["Key"][len(prefix) + 1:]: item["ETag"].strip('"') for item in listing.get("Contents", [])}
    return {key: etag for key, etag in keys.items() if not key.startswith(".s3backup/")}


@pytest.fixture(scope="module")
def chain_namespace(cluster, operator, s3):
    namespace = make_namespace(cluster, "chain")
    make_credentials(cluster, namespace, s3)
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_one_run_end_to_end(cluster, operator, s3, pushgateway, chain_namespace):
    namespace, name, prefix = chain_namespace, "dumps", f"chain-{os.getpid()}"
    claim = make_volume(cluster, namespace, "dumps", FILES)
    cluster.apply(backup_manifest(namespace, name, claim, s3, prefix, pushgateway.url))

    # 1. S3Backup -> CronJob, owned by the S3Backup.
    cronjob = wait_for(lambda: cluster.get("cronjob", f"{name}-s3backup", "-n", namespace), "the CronJob")
    backup = cluster.get("s3backup", name, "-n", namespace)
    owner = cronjob["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner.get("controller")) == ("S3Backup", backup["metadata"]["uid"], True)
    wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True"
                         for c in (cluster.get("s3backup", name, "-n", namespace) or {}).get("status", {})
                         .get("conditions", [])), "Ready=True")

    # 2. run-now -> a Job created by the operator; 3. the scheduler places its pod on the volume's node.
    job = run_now(cluster, namespace, name)
    job = finished_job(cluster, namespace, job["metadata"]["name"])
    pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")
    assert pods, "the Job's pod is gone"
    assert {pod["spec"]["nodeName"] for pod in pods} == {NODE}  # the local PV's node affinity, honoured
    # 4./5. The real syncer ran and the job controller marked the Job complete.
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"]), \
        "\n".join(cluster.pod_log(pod) for pod in pods)
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    summary = json.loads(terminated["message"])
    assert summary["files_uploaded"] == len(FILES)
    keys = bucket_keys(s3, prefix)
    assert sorted(keys) == sorted(FILES)
    for relative, content in FILES.items():
        body = s3.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{relative}")["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(content).digest()

    # 6. The S3Backup's status shows the run's counts; the Pushgateway holds its metrics.
    run = last_run(cluster, namespace, name, job["metadata"]["name"])
    assert run["result"] == "Succeeded"
    assert run["filesUploaded"] == len(FILES)
    assert run["bytesUploaded"] == sum(len(content) for content in FILES.values())
    assert run["filesFailed"] == 0
    metrics = urllib.request.urlopen(pushgateway.url + "/metrics", timeout=5).read().decode()
    pushed = [line for line in metrics.splitlines()
              if line.startswith("s3backup_last_run_success{") and f'backup="{name}"' in line
              and f'namespace="{namespace}"' in line]
    assert pushed and pushed[0].endswith(" 1"), pushed

    # A second run uploads nothing: the bucket already holds every file.
    second = finished_job(cluster, namespace, run_now(cluster, namespace, name)["metadata"]["name"])
    run = last_run(cluster, namespace, name, second["metadata"]["name"])
    assert (run["result"], run["filesUploaded"]) == ("Succeeded", 0)
    assert bucket_keys(s3, prefix) == keys
