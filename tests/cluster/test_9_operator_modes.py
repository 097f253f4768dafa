"""9. The operator's modes on the real control plane: the console script logged in through a kubeconfig (a token,
an exec credential plugin), a list of watched namespaces with RBAC in those only, and no (or no allowed) look at
Secrets, where a missing Secret shows up on the backup pod instead."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from s3backup_syncer.local_s3 import free_port

from tests.cluster.conftest import (
    OPERATOR_NAMESPACE,
    RELEASE,
    chart_values,
    operator_pods,
    wait_operator_ready,
)
from tests.cluster.support import (
    FILES,
    backup_manifest,
    children,
    condition,
    finished_job,
    last_run,
    make_credentials,
    make_volume,
    run_now,
    wait_condition,
    wait_for,
)


@pytest.fixture
def namespace(installed, new_namespace):
    return new_namespace("modes", credentials=False)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def kubeconfig_for(cluster, token: str, how: str) -> dict:
    """The admin kubeconfig's cluster, with a user that presents `token` directly or through an exec credential
    plugin (as EKS, GKE and AKS configure it)."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    if how == "token":
        user = {"token": token}
    else:
        credential = {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                      "status": {"token": token}}
        user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
                         "args": ["-c", f"print({json.dumps(json.dumps(credential))})"], "interactiveMode": "Never"}}
    return {"apiVersion": "v1", "kind": "Config", "current-context": "operator",
            "clusters": [{"name": "test", "cluster": admin["clusters"][0]["cluster"]}],
            "users": [{"name": "operator", "user": user}],
            "contexts": [{"name": "operator", "context": {"cluster": "test", "user": "operator"}}]}


def run_console_operator(cluster, s3, namespace: str, kubeconfig: Path, name: str) -> tuple[str, str]:
    """Start `s3backup-operator` with `kubeconfig`, have it make the CronJob of a new S3Backup `name`, read its
    /healthz and /metrics, stop it with SIGTERM; return its stdout and stderr."""
    liveness, metrics = free_port(), free_port()
    env = {"KUBECONFIG": str(kubeconfig), "S3BACKUP_IMAGE": "example.org/s3backup:e2e", "PATH": "/usr/bin:/bin",
           "S3BACKUP_PUSHGATEWAY_URL": "http://pushgateway.monitoring:9091", "HOME": str(kubeconfig.parent)}
    command = [str(Path(sys.executable).parent / "s3backup-operator"), "-A", "--standalone",
               "--liveness-port", str(liveness), "--metrics-port", str(metrics), "--log-format", "json"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{liveness}/healthz")[0] == 200, "/healthz", timeout=60)
        cluster.apply(backup_manifest(namespace, name, "data", s3, f"modes-{name}"))
        wait_condition(cluster, "s3backup", name, namespace, "True", "CronJobReady")
        cronjob = cluster.get("cronjob", f"{name}-s3backup", "-n", namespace)
        container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "example.org/s3backup:e2e"
        assert "--pushgateway=http://pushgateway.monitoring:9091" in container["args"]
        text = wait_for(lambda: (lambda t: t if f'backup="{name}"' in t else None)(
            _get(f"http://127.0.0.1:{metrics}/metrics")[1]), "/metrics")
        assert (f's3backup_operator_backup_expected_interval_seconds{{backup="{name}",'
                f'namespace="{namespace}"}} 86400.0') in text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    return stdout, stderr


@pytest.mark.parametrize("how", ["token", "exec plugin"])
def test_the_console_script_logs_in_through_a_kubeconfig(cluster, s3, namespace, tmp_path, how):
    """`s3backup-operator` outside the cluster, as the chart's ServiceAccount (its token in the kubeconfig, or
    from an exec plugin): it reconciles with the chart's RBAC, serves /healthz and /metrics, logs JSON lines
    without secrets, and stops on SIGTERM. The chart's operator is scaled to zero meanwhile."""
    make_credentials(cluster, namespace, s3)
    token = cluster.kubectl("create", "token", RELEASE, "-n", OPERATOR_NAMESPACE, "--duration=1h").stdout.strip()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(cluster, token, how)))
    cluster.kubectl("scale", "deployment", RELEASE, "-n", OPERATOR_NAMESPACE, "--replicas=0")
    try:
        wait_for(lambda: not operator_pods(cluster), "the chart's operator pod gone")
        stdout, stderr = run_console_operator(cluster, s3, namespace, kubeconfig, "console")
    finally:
        cluster.kubectl("scale", "deployment", RELEASE, "-n", OPERATOR_NAMESPACE, "--replicas=1")
        wait_operator_ready(cluster)
    records = [json.loads(line) for line in (stdout + stderr).splitlines() if line.strip()]
    created = [r for r in records if "CronJob console-s3backup created" in r.get("message", "")]
    assert created and created[0]["object"]["name"] == "console"
    for secret in (token, s3.secret_key, s3.access_key):
        assert secret not in stdout + stderr


def test_a_list_of_namespaces_is_all_the_operator_sees(cluster, s3, namespace, new_namespace):
    """watchNamespaces: RBAC in those namespaces only, and S3Backups elsewhere are not touched."""
    other = new_namespace("modes-other")
    make_credentials(cluster, namespace, s3)
    with chart_values(cluster, "--set", f"watchNamespaces={{{namespace}}}") as pod:
        assert f"--namespace={namespace}" in pod["spec"]["containers"][0]["args"]
        account = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"
        for where, expected in ((namespace, "yes"), (other, "no")):
            answer = cluster.kubectl("auth", "can-i", f"--as={account}", "create", "cronjobs.batch", "-n", where,
                                     check=False).stdout.strip()
            assert answer == expected, (where, answer)
        for where in (other, namespace):
            cluster.apply(backup_manifest(where, "db", "data", s3, f"modes-list-{where}"))
        # Served at once: kopf does not ask to list the cluster's namespaces (forbidden here); when it did, it
        # asked nine times, with its backoff, about a minute, before falling back to the named ones.
        wait_condition(cluster, "s3backup", "db", namespace, "True", "CronJobReady", timeout=40)
        assert children(cluster, other, "db")["cronjobs"] == []
        untouched = cluster.get("s3backup", "db", "-n", other)
        assert not untouched.get("status") and not untouched["metadata"].get("finalizers")


def test_a_forbidden_secret_lookup_is_not_an_error(cluster, s3, namespace):
    """The operator may not read Secrets (RBAC answers 403): the CronJob is made all the same, and a missing Secret
    shows up where the kubelet reports it: on the backup pod, in RunBlocked; once it is created, the run goes on."""
    roles = cluster.items("clusterroles", "-l", f"app.kubernetes.io/instance={RELEASE}")
    role = next(item["metadata"]["name"] for item in roles if item["metadata"]["name"].endswith("-namespaced"))
    rules = cluster.get("clusterrole", role)["rules"]
    without = [rule for rule in rules if rule.get("resources") != ["secrets"]]
    assert len(without) == len(rules) - 1
    cluster.kubectl("patch", "clusterrole", role, "--type=merge", "-p", json.dumps({"rules": without}))
    try:
        account = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"
        assert cluster.kubectl("auth", "can-i", f"--as={account}", "get", "secrets", "-n", namespace,
                               check=False).stdout.strip() == "no"
        claim = make_volume(cluster, namespace, "data", FILES)
        cluster.apply(backup_manifest(namespace, "db", claim, s3, f"modes-forbidden-{namespace}"))
        wait_condition(cluster, "s3backup", "db", namespace, "True", "CronJobReady")
        job = run_now(cluster, namespace, "db")["metadata"]["name"]
        blocked = wait_condition(cluster, "s3backup", "db", namespace, "True", "CreateContainerConfigError",
                                 type_="RunBlocked")
        assert blocked["message"].startswith(f"pod {job}-") and "s3-credentials" in blocked["message"]
        assert condition(cluster, "s3backup", "db", namespace)["status"] == "True"
        make_credentials(cluster, namespace, s3)
        wait_condition(cluster, "s3backup", "db", namespace, "False", "PodStarted", type_="RunBlocked", timeout=90)
        finished_job(cluster, namespace, job)
        assert last_run(cluster, namespace, "db", job)["result"] == "Succeeded"
    finally:
        cluster.kubectl("patch", "clusterrole", role, "--type=merge", "-p", json.dumps({"rules": rules}))


def test_without_secret_checks_the_cronjob_is_made(cluster, s3, namespace):
    """rbac.checkSecrets=false: no `get` on Secrets, S3BACKUP_CHECK_SECRETS=false, and no Secret needed to
    make the CronJob."""
    with chart_values(cluster, "--set", "rbac.checkSecrets=false") as pod:
        env = {item["name"]: item.get("value") for item in pod["spec"]["containers"][0]["env"]}
        assert env["S3BACKUP_CHECK_SECRETS"] == "false"
        account = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"
        assert cluster.kubectl("auth", "can-i", f"--as={account}", "get", "secrets", "-n", namespace,
                               check=False).stdout.strip() == "no"
        cluster.apply(backup_manifest(namespace, "db", "data", s3, "modes-unchecked"))
        wait_condition(cluster, "s3backup", "db", namespace, "True", "CronJobReady")
        assert children(cluster, namespace, "db")["cronjobs"] == ["db-s3backup"]


def test_the_periodic_resync_finds_a_late_secret(cluster, s3, namespace):
    """With a retry delay longer than the test, the periodic re-check (S3BACKUP_RESYNC_INTERVAL) is what finds
    a Secret created after the S3Backup."""
    with chart_values(cluster, "--set", "extraEnv[0].name=S3BACKUP_RETRY_DELAY", "--set-string",
                      "extraEnv[0].value=3600", "--set", "extraEnv[1].name=S3BACKUP_RESYNC_INTERVAL",
                      "--set-string", "extraEnv[1].value=5") as pod:
        env = {item["name"]: item.get("value") for item in pod["spec"]["containers"][0]["env"]}
        assert (env["S3BACKUP_RETRY_DELAY"], env["S3BACKUP_RESYNC_INTERVAL"]) == ("3600", "5")
        cluster.apply(backup_manifest(namespace, "db", "data", s3, "modes-resync"))
        wait_condition(cluster, "s3backup", "db", namespace, "False", "CredentialsSecretNotFound")
        make_credentials(cluster, namespace, s3)
        wait_condition(cluster, "s3backup", "db", namespace, "True", "CronJobReady", timeout=90)
