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
    "policy": {"allowHostPath": ["team-a"], "allowServiceAccountName": True, "allowUnrestrictedVolumes": False},
}
# The same, cluster-wide (RBAC and peering differ).
ALL_FEATURES_CLUSTER_WIDE = {**ALL_FEATURES, "watchNamespaces": []}
STANDALONE = {"leaderElection": {"enabled": False, "peeringName": "s3backup-operator"},
              "rbac": {"aggregateRoles": False}}
# Two replicas with kopf peering, no access to Secrets, pull secrets for the backup Jobs, the operator's
# image pinned by digest (the Jobs use it too), and the alerts without the ServiceMonitor.
HA: dict[str, Any] = {
    "replicas": 2,
    "rbac": {"checkSecrets": False},
    "image": {"digest": DIGEST},
    "backupImage": {"pullSecrets": [{"name": "regcred"}, {"name": "mirror-credentials"}]},
    "metrics": {"prometheusRule": {"enabled": True}},
}

VALID_CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "all-features": {"values": ALL_FEATURES},
    "all-features-cluster-wide": {"values": ALL_FEATURES_CLUSTER_WIDE},
    "standalone": {"values": STANDALONE},
    "ha": {"values": HA},
    # Installed from the packaged .tgz, as users of a chart repository get it.
    "packaged": {"values": ALL_FEATURES, "package": True},
}
# Values that must fail the install, and a fragment of the message the user sees.
INVALID_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-key": ({"watchNamespace": ["a"]}, "watchNamespace"),
    "namespace-glob": ({"watchNamespaces": ["team-*"]}, "watchNamespaces"),
    "log-level": ({"logLevel": "loud"}, "logLevel"),
    "digest": ({"image": {"digest": "latest"}}, "digest"),
    # Without peering, every replica would act on every S3Backup.
    "replicas-without-peering": ({**STANDALONE, "replicas": 2}, "replicas > 1 needs leaderElection.enabled=true"),
    # The names go comma-separated into S3BACKUP_IMAGE_PULL_SECRETS.
    "pull-secret-name": ({"backupImage": {"pullSecrets": [{"name": "a,b"}]}}, "pullSecrets"),
    # An allowance is true, false or a list of namespaces (never a string the operator would misread).
    "policy-string": ({"policy": {"allowHostPath": "team-a"}}, "allowHostPath"),
    "policy-glob": ({"policy": {"allowServiceAccountName": ["team-*"]}}, "allowServiceAccountName"),
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
