"""1. `helm install` the chart: CRDs installed, the operator's pod running under the chart's ServiceAccount,
with RBAC enforced by the real API server."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.cluster.conftest import OPERATOR_NAMESPACE, RELEASE, wait_operator_ready
from tests.cluster.support import CHART


def test_helm_installs_the_crds(cluster, operator):
    for crd in ("s3backups.s3backup.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        assert cluster.get("crd", crd), crd
    names = cluster.get("crd", "s3backups.s3backup.dev")["status"]["acceptedNames"]
    assert names["kind"] == "S3Backup"


def test_the_operator_pod_runs_under_the_charts_service_account(cluster, operator):
    (pod,) = wait_operator_ready(cluster)
    assert pod["spec"]["serviceAccountName"] == RELEASE
    image = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    assert pod["spec"]["containers"][0]["image"].startswith(image + ":")
    # The process is the operator's console script, as the pod's user (the chart's runAsUser 65532).
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["65532"] * 4
    assert "s3backup-operator" in Path(f"/proc/{pid}/cmdline").read_text()
    # Its token is the ServiceAccount's, from a TokenRequest: the API server knows whom it belongs to.
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    assert environ["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"


def test_rbac_is_enforced_for_the_operators_service_account(cluster, operator):
    account = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"

    def can(*args: str) -> bool:
        result = cluster.kubectl("auth", "can-i", f"--as={account}", *args, check=False)
        return result.stdout.strip() == "yes"

    assert can("create", "jobs.batch", "-n", "default")
    assert can("patch", "s3backups.s3backup.dev/status", "-n", "default")
    assert not can("delete", "jobs.batch", "-n", "default")
    assert not can("list", "secrets", "-n", "default")
    assert not can("create", "pods", "-n", "default")
