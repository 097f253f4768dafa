"""The Helm chart, rendered and installed by Helm's own library into kmock's emulator."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from s3backup_operator.config import OperatorConfig
from s3backup_operator.main import parse_args
from s3backup_operator.render import RUN_NOW_ANNOTATION

from .conftest import (
    ALL_FEATURES,
    CHART,
    DIGEST,
    HA,
    INVALID_CASES,
    REPO,
    VALID_CASES,
    WATCHED,
    documents,
)

CRDS = REPO / "crds"
MONITORING = REPO / "monitoring"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.25", kubernetes_validate.latest_version()]
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def crd_documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(CRDS.glob("*.y*ml")) for doc in documents(path.read_text())]


def crd_schema(kind: str) -> dict[str, Any]:
    for crd in crd_documents():
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
            return version["schema"]["openAPIV3Schema"]
    raise KeyError(f"no CRD in crds/ defines {kind}")


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


# --- Helm's own checks ---------------------------------------------------------------------------

def test_helm_lint_finds_nothing_above_info(helm):
    lint = helm["lint"]
    assert lint["TotalChartsLinted"] == 1
    serious = [m for m in lint["Messages"] if m["Severity"] >= 2]  # 2 warning, 3 error
    assert not serious, f"helm lint: {serious} (messages are empty through helm-sdkpy; `helm lint` shows them)"


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
def test_bad_values_fail_the_install_naming_the_problem(helm, case):
    _, expected = INVALID_CASES[case]
    error = helm["cases"][case]["error"]
    assert error, f"{case}: helm install accepted values it should refuse"
    assert expected in error, error


def test_install_sends_exactly_the_rendered_manifest(rendered):
    """What Helm applied to the (emulated) cluster is the manifest, plus the CRDs from crds/."""
    for name, case in rendered.items():
        sent = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in case["objects"]}
        expected = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in case["docs"]}
        expected |= {("CustomResourceDefinition", None, crd["metadata"]["name"]) for crd in crd_documents()}
        assert sent == expected, name


# --- every manifest is valid ---------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(VALID_CASES))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates(rendered, case, version):
    """kubernetes-validate (strict: unknown fields fail) for built-in kinds; kopf's peering objects
    against their CRD's own schema. The Prometheus Operator kinds have no schema here: the tests below
    check what they do instead (promtool on the rules, the ServiceMonitor finding the Service)."""
    docs = rendered[case]["docs"]
    assert docs
    for doc in docs:
        if doc["kind"] in PROMETHEUS_OPERATOR_KINDS:
            continue
        if doc["apiVersion"].startswith("kopf.dev/"):
            jsonschema.validate(doc, crd_schema(doc["kind"]))
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_crds_validate(rendered):
    for crd in crd_documents():
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(crd, version, strict=True)


def test_namespaced_objects_name_their_namespace(rendered):
    """Every namespaced object says where it goes (never a silent `default`)."""
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "CustomResourceDefinition"}
    for name, case in rendered.items():
        for doc in case["docs"]:
            if doc["kind"] not in cluster_scoped:
                assert doc["metadata"].get("namespace"), f"{name}: {doc['kind']} {doc['metadata']['name']}"


# --- CRDs and monitoring files: one source of truth ----------------------------------------------

def test_chart_crds_and_monitoring_are_links_to_the_top_level_folders():
    for link, target in [("crds", CRDS), ("monitoring", MONITORING)]:
        path = CHART / link
        assert path.is_symlink(), f"charts/s3backup/{link} must be a link to the top-level {link}/"
        assert path.resolve() == target.resolve()


@pytest.mark.parametrize("case", ["default", "packaged"])
def test_helm_installs_exactly_the_crds_of_the_top_level_folder(rendered, case):
    """The CRDs Helm sent (from the chart directory, and from the packaged .tgz) are the files in crds/."""
    sent = {o["metadata"]["name"]: o for o in rendered[case]["objects"] if o["kind"] == "CustomResourceDefinition"}
    on_disk = {crd["metadata"]["name"]: crd for crd in crd_documents()}
    assert on_disk, "crds/ holds no CRD"
    assert set(sent) == set(on_disk)
    for name, crd in on_disk.items():
        assert {k: sent[name][k] for k in crd} == crd, f"{name} differs from crds/"


def test_package_carries_the_linked_files_and_nothing_else_of_theirs(helm, rendered):
    package = helm["cases"]["packaged"]["package"]
    assert package["name"] == "s3backup-0.1.0.tgz"
    linked = {name for name in package["files"] if name.startswith(("s3backup/crds/", "s3backup/monitoring/"))}
    assert linked == {f"s3backup/crds/{path.name}" for path in CRDS.glob("*.y*ml")} | {
        "s3backup/monitoring/alerts.rules.yml", "s3backup/monitoring/dashboard.json"}
    assert rendered["packaged"]["manifest"] == rendered["all-features"]["manifest"]


def test_prometheus_rule_is_the_alert_rules_file(rendered, tmp_path):
    rule = one(rendered["all-features"]["docs"], "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == yaml.safe_load((MONITORING / "alerts.rules.yml").read_text())["groups"]
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (Debian package prometheus; scripts/bootstrap.sh test)"
    rules_file = tmp_path / "rendered.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_config_map_is_the_dashboard_file(rendered):
    config_map = one(rendered["all-features"]["docs"], "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    (content,) = config_map["data"].values()
    assert json.loads(content) == json.loads((MONITORING / "dashboard.json").read_text())


def test_service_monitor_scrapes_the_operator_metrics_port(rendered):
    docs = rendered["all-features"]["docs"]
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    # The operator's series carry the backup's `namespace` (S3BackupNeverRan matches it with the pushed runs).
    assert endpoint["honorLabels"] is True
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    pod = one(docs, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container_ports = {p["name"]: p["containerPort"] for p in operator_container(docs)["ports"]}
    options = parse_args(operator_container(docs)["args"], environ={})
    assert container_ports[port["targetPort"]] == options.metrics_port


def test_optional_monitoring_is_off_by_default(rendered):
    kinds = {d["kind"] for d in rendered["default"]["docs"]}
    assert not kinds & (PROMETHEUS_OPERATOR_KINDS | {"ConfigMap"})


# --- the Deployment runs the operator as its CLI understands it --------------------------------

@pytest.mark.parametrize("case", sorted(VALID_CASES))
def test_operator_arguments_parse_and_match_the_values(rendered, case):
    values = VALID_CASES[case].get("values", {})
    docs = rendered[case]["docs"]
    container = operator_container(docs)
    assert container["command"] == ["s3backup-operator"]
    options = parse_args(container["args"], environ={})
    assert options.namespaces == values.get("watchNamespaces", [])
    leader_election = values.get("leaderElection", {}).get("enabled", True)
    assert options.standalone is not leader_election
    deployment = one(docs, "Deployment")["spec"]
    assert deployment["replicas"] == values.get("replicas", 1)
    assert deployment["strategy"]["type"] == ("RollingUpdate" if deployment["replicas"] > 1 else "Recreate")
    assert options.log_level == values.get("logLevel", "info")
    # The probes hit kopf's liveness endpoint, where the operator serves it.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        http = container[probe]["httpGet"]
        assert f"http://0.0.0.0:{ports[http['port']]}{http['path']}" == options.liveness_endpoint


def test_operator_environment_matches_the_values(rendered):
    container = operator_container(rendered["all-features"]["docs"])
    env = {e["name"]: e["value"] for e in container["env"]}
    config = OperatorConfig.from_env(env)
    assert container["image"] == f"ghcr.io/s3backup/s3backup@{DIGEST}"
    assert config.image == "registry.example.com/s3backup:0.1.0-jobs"
    assert config.image_pull_policy == "Always"
    assert config.default_pushgateway_url == ALL_FEATURES["pushgatewayURL"]
    assert config.retry_delay == 30

    assert config.check_secrets is True
    assert config.image_pull_secrets == ()  # the operator's own imagePullSecrets are not passed on

    default = operator_container(rendered["default"]["docs"])
    config = OperatorConfig.from_env({e["name"]: e["value"] for e in default["env"]})
    assert default["image"] == config.image == "ghcr.io/s3backup/s3backup:0.1.0"
    assert config.default_pushgateway_url == ""
    assert config.check_secrets is True and config.image_pull_secrets == ()


def test_backup_jobs_get_the_chart_image_and_pull_secrets(rendered):
    """S3BACKUP_IMAGE follows image.* (digest included) when backupImage is not set, and the backup Jobs'
    default pull secrets are backupImage.pullSecrets, in their order."""
    container = operator_container(rendered["ha"]["docs"])
    config = OperatorConfig.from_env({e["name"]: e["value"] for e in container["env"]})
    assert container["image"] == config.image == f"ghcr.io/s3backup/s3backup@{DIGEST}"
    assert config.image_pull_secrets == tuple(s["name"] for s in HA["backupImage"]["pullSecrets"])
    assert config.image_pull_secrets == ("regcred", "mirror-credentials")
    assert "imagePullSecrets" not in one(rendered["ha"]["docs"], "Deployment")["spec"]["template"]["spec"]


# --- several replicas: kopf peering picks one ---------------------------------------------------------

def test_two_replicas_run_with_peering_and_roll_one_at_a_time(rendered):
    docs = rendered["ha"]["docs"]
    deployment = one(docs, "Deployment")["spec"]
    assert deployment["replicas"] == 2
    assert deployment["strategy"] == {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = operator_container(docs)
    assert not any(arg.startswith("--priority") for arg in container["args"])  # each pod derives its own
    options = [parse_args(container["args"], environ={"HOSTNAME": pod})
               for pod in ("s3backup-7d9f8c-x2k4q", "s3backup-7d9f8c-p8r7m")]
    assert not any(o.standalone for o in options)
    assert {o.peering for o in options} == {"s3backup-operator"}
    assert options[0].priority != options[1].priority  # kopf would pause both on a tie
    peering = one(docs, "ClusterKopfPeering", "s3backup-operator")
    jsonschema.validate(peering, crd_schema("ClusterKopfPeering"))
    assert allowed(docs, "patch", "kopf.dev", "clusterkopfpeerings", None)
    assert "2 replicas: one acts, the others stand by" in rendered["ha"]["notes"]
    assert "replicas" not in rendered["default"]["notes"]


def test_pod_is_locked_down(rendered):
    for name, case in rendered.items():
        pod = one(case["docs"], "Deployment")["spec"]["template"]["spec"]
        container = operator_container(case["docs"])
        security = container["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 10000, name
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert security["seccompProfile"]["type"] == "RuntimeDefault"
        assert set(container["resources"]) == {"requests", "limits"}


# --- RBAC: what the operator's account can do, and where ------------------------------------------

def allowed(docs: list[dict[str, Any]], verb: str, group: str, resource: str, namespace: str | None) -> bool:
    """Whether the chart's service account may do `verb` on `group/resource` in `namespace`
    (None: cluster-wide), following (Cluster)RoleBindings to their roles."""
    account = one(docs, "ServiceAccount")["metadata"]
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d["rules"]
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account["name"]
                   and s["namespace"] == account["namespace"] for s in binding["subjects"]):
            continue
        if binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] != namespace:
            continue
        ref = binding["roleRef"]
        role_namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        for rule in roles.get((ref["kind"], role_namespace, ref["name"]), []):
            if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
                return True
    return False


# What the operator needs (its own list: operator helper's notes), as (verb, group, resource).
OPERATOR_NEEDS = [
    *[(v, "s3backup.dev", "s3backups") for v in ("get", "list", "watch", "patch")],
    *[(v, "s3backup.dev", "s3backups/status") for v in ("get", "patch")],
    *[(v, "s3backup.dev", "s3restores") for v in ("get", "list", "watch", "patch")],
    *[(v, "s3backup.dev", "s3restores/status") for v in ("get", "patch")],
    *[(v, "batch", "cronjobs") for v in ("get", "list", "watch", "create", "patch", "delete")],
    *[(v, "batch", "jobs") for v in ("get", "list", "watch", "create", "patch")],
    *[(v, "", "persistentvolumeclaims") for v in ("get", "list", "watch", "create", "delete")],
    *[(v, "snapshot.storage.k8s.io", "volumesnapshots") for v in ("get", "list", "watch", "create", "delete")],
    *[(v, "", "pods") for v in ("get", "list", "watch")],
    ("get", "", "secrets"),
    *[(v, "", "events") for v in ("create", "patch")],
]


def test_namespaced_mode_grants_only_in_the_watched_namespaces(rendered):
    docs = rendered["all-features"]["docs"]
    for verb, group, resource in [*OPERATOR_NEEDS, ("patch", "kopf.dev", "kopfpeerings")]:
        for namespace in WATCHED:
            assert allowed(docs, verb, group, resource, namespace), (verb, group, resource, namespace)
        assert not allowed(docs, verb, group, resource, "kube-system"), (verb, group, resource)
        assert not allowed(docs, verb, group, resource, None), (verb, group, resource)
    assert allowed(docs, "watch", "apiextensions.k8s.io", "customresourcedefinitions", None)
    assert not allowed(docs, "list", "", "namespaces", None)
    for verb, group, resource in [("delete", "batch", "jobs"), ("list", "", "secrets"), ("delete", "", "pods")]:
        assert not allowed(docs, verb, group, resource, WATCHED[0]), (verb, group, resource)  # least privilege
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == WATCHED
    assert not [d for d in docs if d["kind"] == "ClusterKopfPeering"]


def test_cluster_wide_mode_grants_everywhere(rendered):
    docs = rendered["all-features-cluster-wide"]["docs"]
    for verb, group, resource in [*OPERATOR_NEEDS, ("patch", "kopf.dev", "clusterkopfpeerings")]:
        assert allowed(docs, verb, group, resource, None), (verb, group, resource)
    one(docs, "ClusterKopfPeering", "s3backup-operator")


@pytest.mark.parametrize("case", ["all-features", "all-features-cluster-wide", "ha"])
def test_secret_access_follows_rbac_check_secrets(rendered, case):
    """rbac.checkSecrets=false: no access to any Secret, and the operator is told not to look."""
    values = VALID_CASES[case]["values"]
    docs = rendered[case]["docs"]
    check = values.get("rbac", {}).get("checkSecrets", True)
    config = OperatorConfig.from_env({e["name"]: e["value"] for e in operator_container(docs)["env"]})
    assert config.check_secrets is check
    namespaces = values.get("watchNamespaces") or [None, "backups"]
    for namespace in namespaces:
        assert allowed(docs, "get", "", "secrets", namespace) is check, namespace
        for verb, group, resource in OPERATOR_NEEDS:
            if resource != "secrets":
                assert allowed(docs, verb, group, resource, namespace), (verb, group, resource, namespace)
    grants_secrets = any("secrets" in rule["resources"] for role in docs if role["kind"] in ("Role", "ClusterRole")
                         for rule in role["rules"])
    assert grants_secrets is check


@pytest.mark.parametrize("case", ["all-features", "all-features-cluster-wide"])
def test_nodes_are_read_cluster_wide_in_either_mode(rendered, case):
    """source.hostPath fans out over the matching Nodes, a cluster-scoped kind: read, never written."""
    docs = rendered[case]["docs"]
    for verb in ("get", "list", "watch"):
        assert allowed(docs, verb, "", "nodes", None), verb
    for verb in ("patch", "update", "delete", "create"):
        assert not allowed(docs, verb, "", "nodes", None), verb


def test_rbac_never_grants_more_than_the_operator_needs(rendered):
    """No wildcard, no secret listing or writing, nothing on workloads the operator does not manage."""
    for name, case in rendered.items():
        for role in (d for d in case["docs"] if d["kind"] in ("Role", "ClusterRole")):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], (name, rule)
                if "secrets" in rule["resources"]:
                    assert rule["verbs"] == ["get"], (name, rule)
    standalone = rendered["standalone"]["docs"]
    assert not allowed(standalone, "patch", "kopf.dev", "clusterkopfpeerings", None)
    assert not [d for d in standalone if d["kind"].endswith("KopfPeering")]


@pytest.mark.parametrize(("case", "host_path", "service_account"), [
    ("default", set(), set()),
    ("all-features", {"team-a"}, {"team-a", "team-b", "anywhere"}),
])
def test_policy_values_reach_the_operator(rendered, case, host_path, service_account):
    """policy.*: nothing beyond the restricted standard unless the values allow it, where they allow it."""
    env = {e["name"]: e["value"] for e in operator_container(rendered[case]["docs"])["env"] if "value" in e}
    policy = OperatorConfig.from_env(env).policy
    for namespace in ("team-a", "team-b", "anywhere"):
        assert policy.host_path.allows(namespace) is (namespace in host_path), namespace
        assert policy.service_account_name.allows(namespace) is (namespace in service_account), namespace
        assert not policy.unrestricted_volumes.allows(namespace)


def _aggregated(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"
            and d["metadata"]["name"] in ("s3backup-edit", "s3backup-view")}


def test_aggregated_roles_give_the_built_in_roles_s3backup_rights(rendered):
    roles = _aggregated(rendered["default"]["docs"])
    assert set(roles) == {"s3backup-edit", "s3backup-view"}
    edit, view = roles["s3backup-edit"], roles["s3backup-view"]
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k: v for k, v in edit["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        aggregate + "admin": "true", aggregate + "edit": "true"}
    assert {k: v for k, v in view["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        aggregate + "view": "true"}

    def verbs(role: dict[str, Any], resource: str) -> set[str]:
        return {verb for rule in role["rules"] if "s3backup.dev" in rule["apiGroups"] and resource in rule["resources"]
                for verb in rule["verbs"]}

    for kind in ("s3backups", "s3restores"):
        assert {"create", "update", "patch", "delete"} <= verbs(edit, kind)
        assert verbs(edit, f"{kind}/status") == verbs(view, kind) == verbs(view, f"{kind}/status") == {
            "get", "list", "watch"}  # the status is the operator's; viewers read only
    for role in (edit, view):
        assert all(rule["apiGroups"] == ["s3backup.dev"] for rule in role["rules"]), role["metadata"]["name"]
    # Aggregation only: the chart binds them to nobody.
    bound = {d["roleRef"]["name"] for d in rendered["default"]["docs"] if d["kind"].endswith("Binding")}
    assert not bound & set(roles)
    assert not _aggregated(rendered["standalone"]["docs"])  # rbac.aggregateRoles=false (e.g. a second install)


# --- NOTES.txt: the first S3Backup it shows is valid -----------------------------------------------

def test_notes_show_a_valid_first_backup_and_how_to_see_and_trigger_it(rendered):
    notes = rendered["default"]["notes"]
    # A here-document that works when pasted: its terminator alone on a line, unindented.
    example = re.search(r"apply -f - <<'YAML'\n(.*?)\nYAML\n", notes, re.S)
    assert example, notes
    backup = yaml.safe_load(example.group(1))
    jsonschema.validate(backup, crd_schema("S3Backup"))
    assert "kubectl -n NAMESPACE get s3backups" in notes
    assert f"annotate s3backup {backup['metadata']['name']} {RUN_NOW_ANNOTATION}=" in notes
    namespaced = rendered["all-features"]["notes"]
    assert "watching team-a, team-b" in namespaced and "pushgateway.monitoring:9091" in namespaced
    # The alerts without the operator's scrape: S3BackupNeverRan would never fire; the notes say so.
    assert "S3BackupNeverRan" in rendered["ha"]["notes"] and "s3backup-metrics Service" in rendered["ha"]["notes"]
    assert "S3BackupNeverRan" not in namespaced  # the ServiceMonitor is on


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of user values over values.yaml: maps merge, everything else is replaced."""
    result = dict(base)
    for key, value in override.items():
        both_maps = isinstance(value, dict) and isinstance(base.get(key), dict)
        result[key] = merged(base[key], value) if both_maps else value
    return result


def test_values_file_passes_its_own_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    jsonschema.validate(merged(values, ALL_FEATURES), schema)
    jsonschema.validate(merged(values, HA), schema)


def test_chart_version_matches_the_project():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert chart["appVersion"] == project
    assert Path(CHART / "crds").is_dir()
