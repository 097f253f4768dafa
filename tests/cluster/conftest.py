"""The test cluster for the whole session: `scripts/cluster.sh up` once, `down` at the end.

S3BACKUP_CLUSTER_DIR=... (with KUBECONFIG and PATH as `up` printed them) reuses a cluster that is already up.
SeaweedFS and the Pushgateway are the session's (tests/conftest.py): local processes on loopback. Their ports go
into CLUSTER_DIR/host-ports, which the process kubelet forwards into each pod's network namespace on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.cluster.support import CHART, REPO, Cluster, parse_exports, wait_for

RELEASE, OPERATOR_NAMESPACE = "s3backup", "s3backup-system"


@pytest.fixture(scope="session")
def cluster(s3, pushgateway):
    reuse = os.environ.get("S3BACKUP_CLUSTER_DIR")
    if reuse:
        running = Cluster(Path(os.environ["KUBECONFIG"]), Path(reuse), os.environ["PATH"])
        forward_ports(running, s3, pushgateway)
        yield running
        return
    result = subprocess.run([str(REPO / "scripts" / "cluster.sh"), "up"], capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/cluster.sh up failed:\n{result.stderr[-4000:]}")
    exports = parse_exports(result.stdout)
    running = Cluster(Path(exports["KUBECONFIG"]), Path(exports["CLUSTER_DIR"]), exports["PATH"])
    try:
        forward_ports(running, s3, pushgateway)
        yield running
    finally:
        subprocess.run([str(REPO / "scripts" / "cluster.sh"), "down", str(running.dir)], timeout=120)


@pytest.fixture(scope="session")
def operator(cluster, pushgateway):
    """The chart installed with the cluster's helm, its operator pod running under the process kubelet."""
    cluster.helm("install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
                 "--set", f"pushgatewayURL={pushgateway.url}", "--set", "logFormat=plain",
                 "--set", "logLevel=verbose")
    wait_operator_ready(cluster)
    yield RELEASE
    cluster.helm("uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait", check=False)


def forward_ports(cluster: Cluster, s3, pushgateway) -> None:
    """Make the session's S3 and Pushgateway reachable from pods (each pod has its own network namespace)."""
    ports = [urlsplit(s3.endpoint_url).port, pushgateway.port]
    (cluster.dir / "host-ports").write_text("".join(f"{port}\n" for port in ports))


def operator_pods(cluster: Cluster) -> list[dict]:
    return cluster.items("pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")


def wait_operator_ready(cluster: Cluster, replicas: int = 1) -> list[dict]:
    def ready():
        pods = [pod for pod in operator_pods(cluster) if not pod["metadata"].get("deletionTimestamp")]
        running = [pod for pod in pods if pod["status"].get("phase") == "Running"
                   and all(s.get("ready") for s in pod["status"].get("containerStatuses", []))]
        return running if len(running) == replicas else None
    return wait_for(ready, f"{replicas} running operator pod(s)", timeout=90)
