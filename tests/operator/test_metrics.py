"""The operator's /metrics: per S3Backup, what the alerts need without a Pushgateway (last run, last success,
result, files) and for the "never ran" alert (creation time, expected interval).

A real kopf runs the handlers against kmock's emulator; /metrics is read over HTTP from the same
prometheus_client server `s3backup-operator` starts.
"""

from __future__ import annotations

import datetime
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families
from s3backup_operator.config import OperatorConfig
from s3backup_operator.metrics import OperatorMetrics
from s3backup_syncer.local_s3 import free_port

from tests.operator.conftest import TEST_IMAGE, make_backup
from tests.operator.emulator import wait_for
from tests.operator.test_lifecycle import BACKUPS, CRONJOBS, NS, SUMMARY, create_secret, post_job_run, wait_ready

pytestmark = pytest.mark.timeout(90)

CREATED = "s3backup_operator_backup_created_timestamp_seconds"
INTERVAL = "s3backup_operator_backup_expected_interval_seconds"
LAST_RUN = "s3backup_operator_backup_last_run_timestamp_seconds"


@pytest.fixture
def served() -> Iterator[tuple[OperatorMetrics, str]]:
    """The operator's metrics, served over HTTP as `s3backup-operator --metrics-port` does."""
    metrics = OperatorMetrics()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        yield metrics, f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def scrape(url: str, key: str = "backup") -> dict[str, dict[str, float]]:
    """metric name -> {label `key` (the backup's name by default): value} of the per-backup gauges in NS."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("namespace") == NS and "backup" in sample.labels:
                found.setdefault(sample.name, {})[sample.labels.get(key, "")] = sample.value
    return found


def created_at(cluster, name: str) -> float:
    stamp = cluster.get(f"{BACKUPS}/{name}")["metadata"]["creationTimestamp"]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_each_backup_exports_its_creation_time_and_expected_interval(cluster, run_operator, pushgateway, served):
    metrics, url = served
    # No default Pushgateway: the interval is exported all the same (the alerts also read the operator).
    config = OperatorConfig(image=TEST_IMAGE, retry_delay=0.5, resync_interval=0)
    gateway = {"pushgatewayURL": pushgateway.url}
    create_secret(cluster)
    with run_operator(config, metrics):
        cluster.create(BACKUPS, make_backup("hourly", schedule="@hourly", metrics=gateway))
        cluster.create(BACKUPS, make_backup("weekdays", schedule="0 9 * * 1-5", metrics=gateway))
        cluster.create(BACKUPS, make_backup("unmonitored", schedule="@hourly"))  # pushes nothing
        cluster.create(BACKUPS, make_backup("broken", schedule="61 * * * *", metrics=gateway))
        wait_ready(cluster, "False", "InvalidSchedule", name="broken")
        for name in ("hourly", "weekdays", "unmonitored"):
            wait_ready(cluster, "True", "CronJobReady", name=name)

        seen = wait_for(lambda: (lambda s: s if len(s.get(CREATED, {})) == 4 else None)(scrape(url)),
                        what="the creation time of all four backups on /metrics")
        assert seen[CREATED] == {name: created_at(cluster, name)
                                 for name in ("hourly", "weekdays", "unmonitored", "broken")}
        now = datetime.datetime.now(datetime.UTC).timestamp()
        assert all(now - 60 < value <= now for value in seen[CREATED].values())
        # The schedule's longest gap: 1 h; Friday 09:00 to Monday 09:00. None without a valid schedule.
        assert seen[INTERVAL] == {"hourly": 3600.0, "weekdays": 3 * 86400.0, "unmonitored": 3600.0}

        # Deleted: both series go (a deleted backup must not look like one that never ran).
        cluster.delete(f"{BACKUPS}/hourly")
        wait_for(lambda: cluster.get(f"{BACKUPS}/hourly") is None, what="the S3Backup gone")
        after = wait_for(lambda: (lambda s: s if "hourly" not in s.get(CREATED, {}) else None)(scrape(url)),
                         what="the deleted backup's series removed")
        assert set(after[CREATED]) == {"weekdays", "unmonitored", "broken"}
        assert set(after[INTERVAL]) == {"weekdays", "unmonitored"}


def test_the_default_pushgateway_gives_every_backup_an_interval(cluster, run_operator, served):
    metrics, url = served
    config = OperatorConfig(image=TEST_IMAGE, retry_delay=0.5, resync_interval=0,
                            default_pushgateway_url="http://pushgateway.monitoring:9091")
    create_secret(cluster)
    with run_operator(config, metrics):
        cluster.create(BACKUPS, make_backup("daily", schedule="H 2 * * *"))
        seen = wait_for(lambda: (lambda s: s if s.get(INTERVAL) else None)(scrape(url)), what="the interval")
        assert seen[INTERVAL] == {"daily": 86400.0}
        assert seen[CREATED] == {"daily": created_at(cluster, "daily")}


def test_the_last_run_and_success_are_exported_without_a_pushgateway(cluster, run_operator, served):
    """What the alerts read when no Pushgateway is scraped: the status of each backup, on /metrics."""
    metrics, url = served
    config = OperatorConfig(image=TEST_IMAGE, retry_delay=0.5, resync_interval=0)
    create_secret(cluster)
    with run_operator(config, metrics):
        cluster.create(BACKUPS, make_backup("db", schedule="@hourly"))
        the_cronjob = wait_for(lambda: cluster.get(f"{CRONJOBS}/db-s3backup"), what="the CronJob")
        template = the_cronjob["spec"]["jobTemplate"]["spec"]["template"]
        post_job_run(cluster, "db-s3backup-1", SUMMARY, owner=the_cronjob, template=template)
        partial = {**SUMMARY, "result": "partial", "exit_code": 1, "files_failed": 3}
        post_job_run(cluster, "db-s3backup-2", partial, owner=the_cronjob, template=template, exit_code=1,
                     outcome="Failed", end="2026-11-26T03:45:00Z")
        seen = wait_for(lambda: (lambda s: s if s.get(LAST_RUN, {}).get("db") == at("2026-11-26T03:45:00Z")
                                 else None)(scrape(url)), what="the second run on /metrics")
    assert seen["s3backup_operator_backup_last_success_timestamp_seconds"] == {"db": at("2026-11-26T02:45:00Z")}
    assert seen[INTERVAL] == {"db": 3600.0}
    results = scrape(url, key="result")["s3backup_operator_backup_last_result"]
    assert results == {"Succeeded": 0.0, "Partial": 1.0, "Failed": 0.0}
    assert scrape(url, key="outcome")["s3backup_operator_backup_last_run_files"] == {
        "uploaded": 4.0, "recycled": 2.0, "failed": 3.0}


def at(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
