"""The operator's own Prometheus metrics, computed at scrape time from what the handlers observed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RESULTS = ("Succeeded", "Partial", "Failed")


@dataclass
class BackupState:
    ready: str = "Unknown"  # the Ready condition's status: "True" / "False" / "Unknown"
    reason: str = ""
    last_result: str = ""
    last_success_timestamp: float | None = None
    last_run_timestamp: float | None = None  # status.lastRun.completionTime
    last_run_files: dict[str, int] | None = None  # outcome ("uploaded", "recycled", "failed") -> files
    created_timestamp: float | None = None  # metadata.creationTimestamp
    expected_interval_seconds: float | None = None  # the schedule's longest gap (None: invalid schedule)


class OperatorMetrics(Collector):
    """Backups by namespace and condition, reconcile errors, and per backup (labels `namespace`, `backup`,
    as in the Pushgateway's grouping key): its last run's end, result and file counts, its last success
    (all from its status), when it was created and how often it should run.

    With these the shipped alerts work from a ServiceMonitor alone: they take the newest of what the runs
    pushed and what the operator saw (`max by (namespace, backup)`), so the Pushgateway is optional.
    Creation time and interval serve the "never ran" alert. Scrape with honor_labels (the chart's
    ServiceMonitor sets honorLabels: true) so that `namespace` stays the backup's namespace.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._lock = threading.Lock()
        self._backups: dict[tuple[str, str], BackupState] = {}
        self.reconcile_errors = Counter(
            "s3backup_operator_reconcile_errors", "Reconciliations that failed, by reason.",
            ["reason"], registry=self.registry,
        )
        self.registry.register(self)

    def observe(self, namespace: str, name: str, state: BackupState) -> None:
        with self._lock:
            self._backups[(namespace, name)] = state

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._backups.pop((namespace, name), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            backups = dict(self._backups)
        managed = GaugeMetricFamily(
            "s3backup_operator_backups", "S3Backup resources managed, by namespace and Ready condition.",
            labels=["namespace", "ready", "reason"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        for (namespace, _), state in backups.items():
            key = (namespace, state.ready, state.reason)
            counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            managed.add_metric(list(key), count)
        yield managed
        last = GaugeMetricFamily(
            "s3backup_operator_backup_last_result",
            "1 for the result of each backup's last finished run (status.lastRun.result), 0 for the others.",
            labels=["namespace", "backup", "result"],
        )
        last_run = GaugeMetricFamily(
            "s3backup_operator_backup_last_run_timestamp_seconds",
            "status.lastRun.completionTime of each backup (the end of its last finished run), as Unix seconds.",
            labels=["namespace", "backup"],
        )
        files = GaugeMetricFamily(
            "s3backup_operator_backup_last_run_files",
            "Files of each backup's last finished run (status.lastRun), by outcome.",
            labels=["namespace", "backup", "outcome"],
        )
        success = GaugeMetricFamily(
            "s3backup_operator_backup_last_success_timestamp_seconds",
            "status.lastSuccessfulTime of each backup, as Unix seconds.",
            labels=["namespace", "backup"],
        )
        created = GaugeMetricFamily(
            "s3backup_operator_backup_created_timestamp_seconds",
            "metadata.creationTimestamp of each S3Backup, as Unix seconds.",
            labels=["namespace", "backup"],
        )
        interval = GaugeMetricFamily(
            "s3backup_operator_backup_expected_interval_seconds",
            "Longest gap between two scheduled runs of each backup (absent with an invalid schedule).",
            labels=["namespace", "backup"],
        )
        for (namespace, name), state in sorted(backups.items()):
            if state.last_result:
                for result in RESULTS:
                    last.add_metric([namespace, name, result], 1.0 if state.last_result == result else 0.0)
            if state.last_run_timestamp is not None:
                last_run.add_metric([namespace, name], state.last_run_timestamp)
            for outcome, count in sorted((state.last_run_files or {}).items()):
                files.add_metric([namespace, name, outcome], float(count))
            if state.last_success_timestamp is not None:
                success.add_metric([namespace, name], state.last_success_timestamp)
            if state.created_timestamp is not None:
                created.add_metric([namespace, name], state.created_timestamp)
            if state.expected_interval_seconds is not None:
                interval.add_metric([namespace, name], state.expected_interval_seconds)
        yield last
        yield last_run
        yield files
        yield success
        yield created
        yield interval
