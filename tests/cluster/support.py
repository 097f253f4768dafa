"""Talking to the test cluster (scripts/cluster.sh): kubectl, helm and the Python client, as a user would."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import BUCKET

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "s3backup"
GROUP, VERSION, PLURAL = "s3backup.dev", "v1alpha1", "s3backups"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60, every: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; on timeout, fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Cluster:
    """A running test cluster: its admin kubeconfig, CLUSTER_DIR and the PATH with its kubectl and helm."""

    kubeconfig: Path
    dir: Path
    path: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "CLUSTER_DIR": str(self.dir), "PATH": self.path}

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, input=input,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, check=check, input=input)

    def helm(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, check=check, input=input, timeout=300)

    def get(self, *args: str) -> dict[str, Any] | None:
        """`kubectl get ... -o json`, or None when it is not there."""
        result = self.kubectl("get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)}: {result.stderr}")
        return json.loads(result.stdout)

    def items(self, *args: str) -> list[dict[str, Any]]:
        found = self.get(*args)
        return found["items"] if found else []

    def apply(self, manifest: dict[str, Any] | str, check: bool = True) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", input=text, check=check)

    def node_dir(self, node: str, path: str) -> Path:
        """Where a hostPath `path` on `node` lives on this machine
        (README.md, "Testing on a real control plane (`tests/cluster/`)")."""
        return self.dir / "nodes" / node / path.lstrip("/")

    def pod_log(self, pod: dict[str, Any]) -> str:
        """A container's output (the process kubelet keeps it in CLUSTER_DIR; there is no `kubectl logs`)."""
        meta = pod["metadata"]
        logs = sorted((self.dir / "pods").glob(f"{meta['namespace']}_{meta['name']}_{meta['uid']}/containers/*/log"))
        return "\n".join(path.read_text(errors="replace") for path in logs)


def parse_exports(text: str) -> dict[str, str]:
    """`export NAME=value` lines (scripts/cluster.sh up's output) -> {NAME: value}, $PATH expanded."""
    found = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export "):].split("=", 1)
            found[name] = value.replace("$PATH", os.environ.get("PATH", ""))
    return found


# Building blocks of the tests, in a user's terms: a namespace, a volume with files, credentials, a backup.

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


# Shared by several test modules: conditions, pods of a Job, namespaces, the installed chart's values.

def condition(cluster: Cluster, kind: str, name: str, namespace: str, type_: str = "Ready") -> dict:
    """The condition `type_` of a resource's status (S3Backup, S3Restore), or {}."""
    found = cluster.get(kind, name, "-n", namespace) or {}
    return next((c for c in (found.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def wait_condition(cluster: Cluster, kind: str, name: str, namespace: str, status: str, reason: str,
                   type_: str = "Ready", timeout: float = 60) -> dict:
    """Wait until the condition `type_` has `status` and `reason`; return it."""
    def reached():
        found = condition(cluster, kind, name, namespace, type_)
        return found if (found.get("status"), found.get("reason")) == (status, reason) else None
    return wait_for(reached, f"{kind} {namespace}/{name}: {type_}={status} ({reason})", timeout=timeout)


def job_pods(cluster: Cluster, namespace: str, job_name: str) -> list[dict[str, Any]]:
    return cluster.items("pods", "-n", namespace, "-l", f"job-name={job_name}")


def delete_namespace(cluster: Cluster, namespace: str) -> None:
    """Delete without waiting (its finalizers may take a while; each test makes namespaces of its own)."""
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def children(cluster: Cluster, namespace: str, backup: str) -> dict[str, list[str]]:
    """The names of an S3Backup's CronJobs, Jobs and Pods (by the operator's label)."""
    return {kind: [item["metadata"]["name"] for item in cluster.items(kind, "-n", namespace, "-l",
                                                                     f"{GROUP}/backup={backup}")]
            for kind in ("cronjobs", "jobs", "pods")}


def handled(cluster: Cluster, kind: str, name: str, namespace: str, text: str) -> bool:
    """Whether kopf has handled a version of the resource that contains `text` (its last-handled annotation)."""
    meta = (cluster.get(kind, name, "-n", namespace) or {}).get("metadata") or {}
    return text in (meta.get("annotations") or {}).get(f"operator.{GROUP}/last-handled-configuration", "")


def operator_events(cluster: Cluster, namespace: str, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The operator's own Events on resources of `kind` (or on one of them), not kopf's reports of retries."""
    selector = f"involvedObject.kind={kind}" + (f",involvedObject.name={name}" if name else "")
    return [event for event in cluster.items("events", "-n", namespace, "--field-selector", selector)
            if event.get("reportingComponent") == "s3backup-operator"]


def finished_restore(cluster: Cluster, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    """The status of an S3Restore once its phase is Succeeded or Failed (its pods' status and logs if never)."""
    def finished():
        status = (cluster.get("s3restore", name, "-n", namespace) or {}).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None
    try:
        return wait_for(finished, f"S3Restore {namespace}/{name} finished", timeout=timeout)
    except AssertionError:
        pods = cluster.items("pods", "-n", namespace, "-l", f"{GROUP}/restore={name}")
        detail = "\n".join(json.dumps(pod.get("status"), indent=1) + cluster.pod_log(pod) for pod in pods)
        raise AssertionError(f"S3Restore {name} did not finish; its pods:\n{detail}") from None
