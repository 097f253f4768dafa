"""The operator's /metrics for the "never ran" alert: per S3Backup, its creation time and expected interval.

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
from tests.operator.test_lifecycle import BACKUPS, NS, create_secret, wait_ready

pytestmark = pytest.mark.timeout(90)

CREATED = "s3backup_operator_backup_created_timestamp_seconds"
INTERVAL = "s3backup_operator_backup_expected_interval_seconds"


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


def scrape(url: str) -> dict[str, dict[str, float]]:
    """metric name -> {backup: value} of the per-backup gauges in namespace NS."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("namespace") == NS and "backup" in sample.labels:
                found.setdefault(sample.name, {})[sample.labels["backup"]] = sample.value
    return found


def created_at(cluster, name: str) -> float:
    stamp = cluster.get(f"{BACKUPS}/{name}")["metadata"]["creationTimestamp"]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_each_backup_exports_its_creation_time_and_expected_interval(cluster, run_operator, pushgateway, served):
    metrics, url = served
    # No default Pushgateway: only backups that name one push their runs, so only they get an interval.
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
        # The schedule's longest gap: 1 h; Friday 09:00 to Monday 09:00. None without a Pushgateway or a
        # valid schedule: no run of theirs will ever be on the Pushgateway for the alert to find.
        assert seen[INTERVAL] == {"hourly": 3600.0, "weekdays": 3 * 86400.0}

        # Deleted: both series go (a deleted backup must not look like one that never ran).
        cluster.delete(f"{BACKUPS}/hourly")
        wait_for(lambda: cluster.get(f"{BACKUPS}/hourly") is None, what="the S3Backup gone")
        after = wait_for(lambda: (lambda s: s if "hourly" not in s.get(CREATED, {}) else None)(scrape(url)),
                         what="the deleted backup's series removed")
        assert set(after[CREATED]) == {"weekdays", "unmonitored", "broken"}
        assert set(after[INTERVAL]) == {"weekdays"}


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
