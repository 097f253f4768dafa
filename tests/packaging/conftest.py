"""Packaging fixtures: the chart rendered by Helm's own library (once per session, all cases in one go)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.packaging.helm_render import render_cases

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "s3backup"
RELEASE_NAMESPACE = "s3backup-system"
WATCHED = ["team-a", "team-b"]
DIGEST = "sha256:" + "ab" * 32

# Every optional feature on, watching a list of namespaces.
ALL_FEATURES: dict[str, Any] = {
    "watchNamespaces": WATCHED,
    "pushgatewayURL": "http://pushgateway.monitoring:9091",
    "logLevel": "debug",
    "image": {"digest": DIGEST, "pullPolicy": "Always"},
    "backupImage": {"repository": "registry.example.com/s3backup", "tag": "0.1.0-jobs"},
    "imagePullSecrets": [{"name": "regcred"}],
    "podAnnotations": {"example.com/team": "storage"},
    "priorityClassName": "backup-operators",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
    "extraEnv": [{"name": "S3BACKUP_RETRY_DELAY", "value": "30"}],
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/s3backup"}},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    },
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
}
# The same, cluster-wide (RBAC and peering differ).
ALL_FEATURES_CLUSTER_WIDE = {**ALL_FEATURES, "watchNamespaces": []}
STANDALONE = {"leaderElection": {"enabled": False, "peeringName": "s3backup-operator"}}

VALID_CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "all-features": {"values": ALL_FEATURES},
    "all-features-cluster-wide": {"values": ALL_FEATURES_CLUSTER_WIDE},
    "standalone": {"values": STANDALONE},
    # Installed from the packaged .tgz, as users of a chart repository get it.
    "packaged": {"values": ALL_FEATURES, "package": True},
}
# Values that must fail the install, and a fragment of the message the user sees.
INVALID_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-key": ({"watchNamespace": ["a"]}, "watchNamespace"),
    "namespace-glob": ({"watchNamespaces": ["team-*"]}, "watchNamespaces"),
    "log-level": ({"logLevel": "loud"}, "logLevel"),
    "digest": ({"image": {"digest": "latest"}}, "digest"),
    # kopf pauses all peers of equal priority, and a Deployment's replicas all get the same one.
    "replicas-tie": ({"replicas": 2}, "replicas > 1 is not supported yet"),
}


def documents(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


@pytest.fixture(scope="session")
def helm() -> dict[str, Any]:
    """One subprocess renders every case (a Helm install into a fresh emulator each) and lints the chart."""
    cases = {**VALID_CASES, **{name: {"values": values} for name, (values, _) in INVALID_CASES.items()}}
    return render_cases(CHART, RELEASE_NAMESPACE, cases, lint=True)


@pytest.fixture(scope="session")
def rendered(helm) -> dict[str, dict[str, Any]]:
    """Valid case name -> {"manifest", "notes", "objects", "docs"}; fails loudly if Helm refused one."""
    result = {}
    for name in VALID_CASES:
        case = helm["cases"][name]
        assert case["error"] is None, f"helm install ({name}) failed: {case['error']}"
        result[name] = {**case, "docs": documents(case["manifest"])}
    return result
