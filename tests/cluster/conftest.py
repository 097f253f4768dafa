"""The test cluster for the whole session: `scripts/cluster.sh up` once, `down` at the end.

S3BACKUP_CLUSTER_DIR=... (with KUBECONFIG and PATH as `up` printed them) reuses a cluster that is already up.
SeaweedFS and the Pushgateway are the session's (tests/conftest.py): local processes on loopback. Their ports go
into CLUSTER_DIR/host-ports, which the process kubelet forwards into each pod's network namespace on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.cluster.support import (
    CHART,
    REPO,
    Cluster,
    delete_namespace,
    make_credentials,
    make_namespace,
    parse_exports,
    wait_for,
)

RELEASE, OPERATOR_NAMESPACE = "s3backup", "s3backup-system"
#: The operator's retry delay in these tests (S3BACKUP_RETRY_DELAY; 60 s by default): a missing Secret, S3Backup
#: or a deferred run-now request is looked at again after this long.
RETRY_DELAY = "10"


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
    install_operator(cluster, pushgateway.url)
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


def install_operator(cluster: Cluster, pushgateway_url: str) -> None:
    """`helm install` the chart with the tests' values, unless it is installed (test_5 uninstalls it)."""
    if cluster.helm("status", RELEASE, "-n", OPERATOR_NAMESPACE, check=False).returncode != 0:
        cluster.helm("install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
                     "--set", f"pushgatewayURL={pushgateway_url}", "--set", "logFormat=plain",
                     "--set", "logLevel=verbose", "--set", "extraEnv[0].name=S3BACKUP_RETRY_DELAY",
                     "--set-string", f"extraEnv[0].value={RETRY_DELAY}")
    wait_operator_ready(cluster)


@pytest.fixture(scope="module")
def installed(cluster, operator, pushgateway):
    """The operator, for modules after test_5 (whose last test runs `helm uninstall`)."""
    install_operator(cluster, pushgateway.url)
    return RELEASE


@contextlib.contextmanager
def chart_values(cluster: Cluster, *sets: str) -> Iterator[dict]:
    """`helm upgrade --reuse-values --set ...` for the block, then back to the values before it; yields the
    running operator pod. `sets`: `--set`/`--set-string` and their arguments, as on helm's command line."""
    before = json.loads(cluster.helm("get", "values", RELEASE, "-n", OPERATOR_NAMESPACE, "-o", "json").stdout)
    cluster.helm("upgrade", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--reuse-values", *sets)
    (pod,) = wait_rollout(cluster)
    try:
        yield pod
    finally:
        cluster.helm("upgrade", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--reset-values", "-f", "-",
                     input=json.dumps(before or {}))
        wait_rollout(cluster)


def operator_metrics(cluster: Cluster) -> str:
    """The running operator pod's /metrics, read inside the pod's network namespace (the process kubelet gives
    each pod one of its own; there is no port-forward)."""
    (pod,) = wait_operator_ready(cluster)
    pid = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://")
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "metrics")
    read = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    return subprocess.run(["nsenter", "-t", pid, "-n", sys.executable, "-c", read], capture_output=True,
                          text=True, check=True, timeout=30).stdout


def wait_rollout(cluster: Cluster) -> list[dict]:
    """After a `helm upgrade`: the Deployment's new pod, alone and running (not the old one, still running)."""
    cluster.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", OPERATOR_NAMESPACE, "--timeout=120s")
    return wait_operator_ready(cluster)


@pytest.fixture
def new_namespace(cluster, s3) -> Iterator[Callable[..., str]]:
    """`new_namespace(base, labels=None, credentials=True)`: a fresh namespace (with the S3 credentials Secret),
    deleted after the test."""
    made: list[str] = []

    def make(base: str, labels: dict[str, str] | None = None, credentials: bool = True) -> str:
        name = make_namespace(cluster, base, labels)
        made.append(name)
        if credentials:
            make_credentials(cluster, name, s3)
        return name
    yield make
    for name in made:
        delete_namespace(cluster, name)
