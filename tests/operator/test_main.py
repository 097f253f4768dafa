"""The `s3backup-operator` command's flags and configuration, and the Pushgateway client. The command itself (login,
/healthz, /metrics, JSON logs, SIGTERM, peering) runs on the real control plane: tests/cluster/."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from s3backup_operator.main import parse_args
from s3backup_operator.pushgateway import delete_group, redact_url
from s3backup_syncer.local_s3 import free_port

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


def pushed_backups(pushgateway, namespace: str) -> set[str]:
    """The backups with a metrics group in the Pushgateway (job="s3backup", this namespace)."""
    with urllib.request.urlopen(f"{pushgateway.url}/api/v1/metrics", timeout=5) as response:
        groups = json.load(response)["data"]
    return {group["labels"].get("backup", "") for group in groups
            if group["labels"].get("job") == "s3backup" and group["labels"].get("namespace") == namespace}


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
