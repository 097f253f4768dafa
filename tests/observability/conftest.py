"""A real Prometheus (Debian `prometheus`) that scrapes the session's Pushgateway and the operator's
/metrics, and loads our rules."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import start_http_server
from s3backup_operator.metrics import OperatorMetrics
from s3backup_syncer.local_s3 import free_port

from tests.support.services import Prometheus

from .helpers import OPERATOR_POD_NAMESPACE, RULES


@dataclass(frozen=True)
class ServedOperatorMetrics:
    metrics: OperatorMetrics
    url: str


@pytest.fixture(scope="package")
def operator_metrics():
    """The operator's own metrics (its real collector), served over HTTP like `s3backup-operator` does.
    Tests put backups into it with `metrics.observe()`, as the operator's handlers do."""
    metrics = OperatorMetrics()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        yield ServedOperatorMetrics(metrics, f"http://127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="package")
def prometheus(pushgateway, operator_metrics):
    # Scraped as the chart's ServiceMonitor does: the Prometheus Operator gives the target a `namespace`
    # label (the operator pod's), and honorLabels: true keeps the series' own (the backup's namespace).
    operator_job = {
        "job_name": "s3backup-operator",
        "honor_labels": True,
        "static_configs": [{"targets": [operator_metrics.url.split("://", 1)[1]],
                            "labels": {"namespace": OPERATOR_POD_NAMESPACE}}],
    }
    with Prometheus(pushgateway.url, rule_files=[RULES], extra_scrape_configs=[operator_job]) as server:
        yield server
