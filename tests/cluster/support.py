"""Talking to the test cluster (scripts/cluster.sh): kubectl, helm and the Python client, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, check=check, timeout=300)

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
        """Where a hostPath `path` on `node` lives on this machine (DESIGN.md, "The test cluster")."""
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
