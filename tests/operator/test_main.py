"""The `s3backup-operator` command: flags, health and /metrics endpoints, JSON logs, peering, Pushgateway."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import kmock
import pytest
import yaml
from s3backup_operator.main import parse_args
from s3backup_operator.pushgateway import delete_group, redact_url
from s3backup_syncer.local_s3 import free_port

from tests.operator.conftest import emulator_login, make_backup
from tests.operator.emulator import wait_for
from tests.operator.test_lifecycle import ACCESS_KEY, BACKUPS, SECRET_KEY, create_secret, cronjob, pushed_backups

TOKEN = "kubeconfig-Token-That-Must-Not-Be-Logged"
pytestmark = pytest.mark.timeout(90)


def test_defaults():
    options = parse_args([], environ={})
    assert options.clusterwide and options.namespaces == []
    assert options.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert options.metrics_port == 9090
    assert not options.standalone and options.peering == "s3backup-operator"
    assert options.log_format == "json"


def test_namespaces_from_flags_or_environment():
    assert parse_args(["-n", "a", "-n", "b"], environ={}).namespaces == ["a", "b"]
    assert not parse_args(["-n", "a"], environ={}).clusterwide
    assert parse_args([], environ={"S3BACKUP_NAMESPACES": "x, y,"}).namespaces == ["x", "y"]
    assert parse_args(["-A"], environ={"S3BACKUP_NAMESPACES": "x"}).clusterwide


def test_flags():
    options = parse_args(["--standalone", "--liveness-port", "0", "--metrics-port", "9191", "--log-format", "plain",
                          "--debug", "--priority", "5"], environ={})
    assert options.standalone and options.liveness_endpoint is None and options.metrics_port == 9191
    assert options.log_format == "plain" and options.log_level == "debug" and options.priority == 5


def test_replicas_get_distinct_peering_priorities():
    """kopf pauses all replicas that share a priority: the default priority differs per pod name."""
    first = parse_args([], environ={"HOSTNAME": "s3backup-operator-7d9f8-abcde"}).priority
    second = parse_args([], environ={"HOSTNAME": "s3backup-operator-7d9f8-fghij"}).priority
    assert first != second and 1 <= first <= 1_000_000 and 1 <= second <= 1_000_000
    assert parse_args([], environ={"HOSTNAME": "s3backup-operator-7d9f8-abcde"}).priority == first
    assert parse_args(["--priority", "0"], environ={"HOSTNAME": "x"}).priority == 0


@pytest.mark.parametrize("argv", [["-A", "-n", "x"], ["--peering", "p", "--standalone"], ["--metrics-port", "70000"],
                                  ["--log-format", "xml"]])
def test_bad_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        parse_args(argv, environ={})
    assert caught.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def _exec_plugin(token: str) -> dict:
    """A kubeconfig user whose token comes from an exec credential plugin (as with EKS, GKE, AKS)."""
    credential = {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": token}}
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
                     "args": ["-c", f"print({json.dumps(json.dumps(credential))})"], "interactiveMode": "Never"}}


@pytest.mark.parametrize("user", ["token", "exec plugin"])
def test_the_command_end_to_end(emulator, cluster, tmp_path, user):
    """The console script, as the container runs it: kubeconfig login (kopf.login_via_client: a token, or an
    exec credential plugin), /healthz, /metrics, JSON logs, SIGTERM."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": emulator.url}}],
        "users": [{"name": "operator", "user": {"token": TOKEN} if user == "token" else _exec_plugin(TOKEN)}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
    }))
    liveness, metrics = free_port(), free_port()
    env = {"KUBECONFIG": str(kubeconfig), "S3BACKUP_IMAGE": "example.org/s3backup:e2e", "PATH": "/usr/bin:/bin",
           "S3BACKUP_PUSHGATEWAY_URL": "http://pushgateway.monitoring:9091"}
    command = [str(Path(sys.executable).parent / "s3backup-operator"), "-A", "--standalone",
               "--liveness-port", str(liveness), "--metrics-port", str(metrics), "--log-format", "json"]
    create_secret(cluster)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{liveness}/healthz")[0] == 200, what="/healthz")
        cluster.create(BACKUPS, make_backup())
        created = wait_for(lambda: cronjob(cluster), what="the CronJob")
        container = created["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "example.org/s3backup:e2e"
        assert "--pushgateway=http://pushgateway.monitoring:9091" in container["args"]
        text = wait_for(lambda: (lambda t: t if 'ready="True"' in t else None)(
            _get(f"http://127.0.0.1:{metrics}/metrics")[1]), what="/metrics")
        assert 's3backup_operator_backups{namespace="backups",ready="True",reason="CronJobReady"} 1.0' in text
        assert "s3backup_operator_reconcile_errors_total" in text or "s3backup_operator_reconcile_errors" in text
        # For the "never ran" alert (S3BACKUP_PUSHGATEWAY_URL is set, so its runs push): created, daily interval.
        assert 's3backup_operator_backup_created_timestamp_seconds{backup="db-dumps",namespace="backups"}' in text
        assert 's3backup_operator_backup_expected_interval_seconds{backup="db-dumps",namespace="backups"} 86400.0' \
            in text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert lines, "no logs at all"
    records = [json.loads(line) for line in lines]  # every line is a JSON record
    assert any("CronJob db-dumps-s3backup created" in record.get("message", "") for record in records)
    created_record = next(r for r in records if "CronJob db-dumps-s3backup created" in r.get("message", ""))
    assert created_record["object"]["name"] == "db-dumps"  # structured: which object the line is about
    for secret in (TOKEN, SECRET_KEY, ACCESS_KEY):
        assert secret not in stdout + stderr
    # Both clients authenticated with the kubeconfig's credentials: kopf's watches and the operator's own calls.
    agents = {request.headers.get("User-Agent", "").split("/")[0]: request.headers.get("Authorization")
              for request in emulator.kmock if request.resource is not None}
    assert agents["kopf"] == agents["s3backup-operator"] == f"Bearer {TOKEN}"


def test_peering_lets_only_the_highest_priority_replica_act(emulator, cluster, config):
    """A replica that sees a live peer with a higher priority pauses; it takes over when the peer is gone."""
    import kopf
    from kopf.testing import KopfRunner
    from s3backup_operator.handlers import register
    from s3backup_operator.metrics import OperatorMetrics

    async def declare() -> None:
        emulator.kmock.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
            namespaced=False, kind="ClusterKopfPeering", singular="clusterkopfpeering",
            verbs={"get", "list", "watch", "create", "patch", "delete"})

    asyncio.run_coroutine_threadsafe(declare(), emulator.loop).result(10)
    peering = "/apis/kopf.dev/v1/clusterkopfpeerings"
    now = datetime.datetime.now(datetime.UTC).isoformat()
    cluster.create(peering, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                             "metadata": {"name": "s3backup-operator"},
                             "status": {"the-other-replica": {"priority": 100, "lifetime": 300, "lastseen": now}}})
    create_secret(cluster)
    registry = kopf.OperatorRegistry()
    register(registry, config, OperatorMetrics(), **emulator_login(emulator))
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = 2  # keep-alives every second, so the test can wait for one
    messages: list[str] = []  # runner.output cannot be read while kopf runs: collect the log records here
    collector = logging.Handler(level=logging.DEBUG)
    collector.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("kopf").addHandler(collector)
    try:
        with KopfRunner(["run", "-A", "--verbose", "--peering", "s3backup-operator", "--priority", "10"],
                        registry=registry, settings=settings, timeout=30) as runner:
            # This replica announced itself next to the other one...
            wait_for(lambda: len(cluster.get(f"{peering}/s3backup-operator").get("status") or {}) >= 2,
                     what="this replica in the peering object")
            wait_for(lambda: any("Pausing the watch-stream for s3backups" in m and "blockers: s3backup-operator" in m
                                 for m in messages), what="the replica paused by the peering")
            cluster.create(BACKUPS, make_backup())
            keepalives = sum("Keep-alive in 's3backup-operator'" in m for m in messages)
            wait_for(lambda: sum("Keep-alive in 's3backup-operator'" in m for m in messages) > keepalives,
                     what="another keep-alive of this replica")
            assert "finalizers" not in cluster.get(f"{BACKUPS}/db-dumps")["metadata"]  # not even looked at
            assert cronjob(cluster) is None
            # ...and acts once the higher-priority peer is gone.
            cluster.patch(f"{peering}/s3backup-operator", {"status": {"the-other-replica": None}})
            wait_for(lambda: cronjob(cluster), what="the CronJob, made by the remaining replica")
    finally:
        logging.getLogger("kopf").removeHandler(collector)
    assert runner.exit_code == 0


def test_pushgateway_group_deletion_is_a_real_delete(pushgateway):
    for backup in ("to-delete", "to-keep"):
        request = urllib.request.Request(f"{pushgateway.url}/metrics/job/s3backup/namespace/ns1/backup/{backup}",
                                         data=b"s3backup_up 1\n", method="PUT")
        urllib.request.urlopen(request, timeout=5).close()
    assert {"to-delete", "to-keep"} <= pushed_backups(pushgateway, "ns1")
    asyncio.run(delete_group(pushgateway.url, "ns1", "to-delete"))
    assert "to-delete" not in pushed_backups(pushgateway, "ns1") and "to-keep" in pushed_backups(pushgateway, "ns1")
    asyncio.run(delete_group(pushgateway.url, "ns1", "to-delete"))  # deleting twice is fine
    asyncio.run(delete_group(pushgateway.url, "ns1", "to-keep"))


def test_pushgateway_unreachable_raises():
    with pytest.raises(Exception):  # noqa: B017 - aiohttp's connection errors; the handler retries, then warns
        asyncio.run(delete_group(f"http://127.0.0.1:{free_port()}", "ns", "b", timeout=2))


def test_redaction_is_the_syncers():
    assert redact_url("https://user:pw@pgw.example:9091/x?token=t") == "https://pgw.example:9091/x"
    assert redact_url("http://pgw:9091") == "http://pgw:9091"


def test_config_from_environment():
    from s3backup_operator.config import DEFAULT_IMAGE, OperatorConfig

    assert OperatorConfig.from_env({}) == OperatorConfig()
    assert OperatorConfig.from_env({}).image == DEFAULT_IMAGE
    config = OperatorConfig.from_env({
        "S3BACKUP_IMAGE": "r.example/s3backup:1.2", "S3BACKUP_IMAGE_PULL_POLICY": "Always",
        "S3BACKUP_PUSHGATEWAY_URL": "http://pgw:9091/", "S3BACKUP_RETRY_DELAY": "5",
        "S3BACKUP_RESYNC_INTERVAL": "0", "S3BACKUP_CHECK_SECRETS": "false",
        "S3BACKUP_IMAGE_PULL_SECRETS": "regcred, other,",
    })
    assert config == OperatorConfig(image="r.example/s3backup:1.2", image_pull_policy="Always",
                                    default_pushgateway_url="http://pgw:9091", retry_delay=5.0,
                                    resync_interval=0.0, check_secrets=False, image_pull_secrets=("regcred", "other"))
