"""Render and lint the Helm chart with Helm's own Go library (PyPI helm-sdkpy), not a re-implementation.

helm-sdkpy has no `helm template`: it renders only through a real `helm install`. So each case
installs the chart into a fresh kmock KubernetesEmulator over real HTTP and reads back:
- the release manifest (every rendered template, as Helm sends it) and the rendered NOTES.txt;
- the objects the emulator received, which include the CRDs Helm installed from the chart's crds/.

Two details make it work (found by trying):
- Helm's storage driver must be `memory`: the default (Secrets) writes protobuf the emulator cannot
  read. The Go runtime reads the environment once, when the library loads, so HELM_DRIVER=memory has
  to be set before this process starts: `render_cases()` runs this module as a subprocess.
- The emulator's core discovery document (/api/v1) says groupVersion "/v1", which client-go's REST
  mapper does not match with "v1"; this module serves a correct one.

By hand:  HELM_DRIVER=memory .venv/bin/python -m tests.packaging.helm_render < request.json
Request:  {"chart": PATH, "namespace": NS, "cases": {NAME: {"values": {...}, "package": bool}}, "lint": bool,
           "output": PATH}
Answer (JSON, written to "output"; Helm's library may print to stdout):
          {"cases": {NAME: {"manifest", "notes", "objects", "error", "package": {"name", "files"}}}, "lint": {...}}
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]

# What the emulated cluster serves besides the chart's own CRDs: (group/version/plural, kind, namespaced).
# monitoring.coreos.com stands for a cluster with the Prometheus Operator installed.
BUILTIN_RESOURCES = [
    ("v1/configmaps", "ConfigMap", True),
    ("v1/events", "Event", True),
    ("v1/namespaces", "Namespace", False),
    ("v1/pods", "Pod", True),
    ("v1/secrets", "Secret", True),
    ("v1/serviceaccounts", "ServiceAccount", True),
    ("v1/services", "Service", True),
    ("apps/v1/deployments", "Deployment", True),
    ("batch/v1/cronjobs", "CronJob", True),
    ("batch/v1/jobs", "Job", True),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True),
    ("rbac.authorization.k8s.io/v1/clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io/v1/clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io/v1/roles", "Role", True),
    ("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", True),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
    ("monitoring.coreos.com/v1/servicemonitors", "ServiceMonitor", True),
    ("monitoring.coreos.com/v1/prometheusrules", "PrometheusRule", True),
]


def crd_resources(crds_dir: Path) -> list[tuple[str, str, bool]]:
    """The resources the CRDs in `crds_dir` define, as the emulator's discovery should serve them."""
    found = []
    for path in sorted(crds_dir.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    key = f"{spec['group']}/{version['name']}/{spec['names']['plural']}"
                    found.append((key, spec["names"]["kind"], spec["scope"] == "Namespaced"))
    return found


def _kubeconfig(url: str, namespace: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                       "namespace": namespace}}],
        "current-context": "emulator",
    })


async def _install(chart: str, namespace: str, values: dict[str, Any], resources) -> dict[str, Any]:
    import helm_sdkpy
    import kmock

    async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s) as server:
        for key, kind, namespaced in resources:
            k8s.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=VERBS)
        k8s["get /api/v1"] << {
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                {"name": key.split("/")[-1], "kind": kind, "namespaced": namespaced, "singularName": "",
                 "verbs": VERBS}
                for key, kind, namespaced in resources if key.startswith("v1/")
            ],
        }
        config = helm_sdkpy.Configuration(namespace=namespace,
                                          kubeconfig=_kubeconfig(str(server.url).rstrip("/"), namespace))
        try:
            release = await helm_sdkpy.Install(config).run(
                "s3backup", chart, values=values or None, wait=False, timeout=60
            )
        except helm_sdkpy.HelmError as error:
            return {"manifest": "", "notes": "", "objects": [], "error": str(error)}
        objects = [obj.raw for obj in k8s.objects.values() if not obj.deleted]
        return {
            "manifest": release["manifest"],
            "notes": release.get("info", {}).get("notes", ""),
            "objects": objects,
            "error": None,
        }


async def _lint(chart: str) -> dict[str, Any]:
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace="default", kubeconfig=_kubeconfig("http://127.0.0.1:1", "default"))
    return await helm_sdkpy.Lint(config).run(chart)


async def _package(chart: str, dest: str) -> str:
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace="default", kubeconfig=_kubeconfig("http://127.0.0.1:1", "default"))
    return await helm_sdkpy.Package(config).run(chart, dest_dir=dest)


async def _serve(request: dict[str, Any]) -> dict[str, Any]:
    chart = request["chart"]
    resources = BUILTIN_RESOURCES + crd_resources(Path(chart) / "crds")
    answer: dict[str, Any] = {"cases": {}}
    with tempfile.TemporaryDirectory(prefix="s3backup-chart-") as dest:
        for name, case in request["cases"].items():
            source = await _package(chart, dest) if case.get("package") else chart
            answer["cases"][name] = await _install(source, request["namespace"], case.get("values", {}),
                                                   resources)
            if case.get("package"):
                with tarfile.open(source) as archive:
                    files = sorted(member.name for member in archive.getmembers() if member.isfile())
                answer["cases"][name]["package"] = {"name": os.path.basename(source), "files": files}
    if request.get("lint"):
        answer["lint"] = await _lint(chart)
    return answer


def render_cases(chart: Path, namespace: str, cases: dict[str, dict[str, Any]], lint: bool = False) -> dict:
    """Runs this module in a subprocess with HELM_DRIVER=memory and returns its answer."""
    env = {**os.environ, "HELM_DRIVER": "memory"}
    with tempfile.TemporaryDirectory(prefix="s3backup-render-") as tmp:
        output = Path(tmp) / "answer.json"
        request = {"chart": str(chart), "namespace": namespace, "cases": cases, "lint": lint,
                   "output": str(output)}
        done = subprocess.run(
            [sys.executable, "-m", "tests.packaging.helm_render"],
            input=json.dumps(request), capture_output=True, text=True, cwd=REPO, env=env, timeout=170,
        )
        if done.returncode != 0 or not output.exists():
            raise RuntimeError(f"helm_render failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(output.read_text())


def main() -> None:
    if os.environ.get("HELM_DRIVER") != "memory":
        sys.exit("helm_render: run with HELM_DRIVER=memory in the environment (read once by Helm's Go runtime)")
    request = json.load(sys.stdin)
    answer = asyncio.run(_serve(request))
    Path(request["output"]).write_text(json.dumps(answer))


if __name__ == "__main__":
    main()
