"""The dashboard and the alerts, run by a real Prometheus over metrics really pushed to the gateway
(and, for S3BackupNeverRan, the operator's own /metrics).

Every panel query and every alert expression goes through Prometheus' HTTP API: each must parse,
each panel must return data, and each alert must fire for the backup it is about (and only there).
"""

from __future__ import annotations

import re
import secrets
import time

import pytest
from s3backup_operator.metrics import BackupState
from s3backup_syncer.metrics import push_run_metrics

from .helpers import (
    OPERATOR_POD_NAMESPACE,
    alert_rules,
    dashboard,
    dashboard_panels,
    fill_variables,
    prometheus_api,
    summary,
    wait_for,
)


def _name(kind: str) -> str:
    return f"obs-{kind}-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def backups(pushgateway, prometheus, operator_metrics) -> dict[str, dict[str, str]]:
    """Backups in different situations: four pushed with real timestamps, and what the operator's
    /metrics says about the backups it manages (for S3BackupNeverRan); returns their groupings."""
    now = time.time()
    namespace = _name("ns")
    groups = {
        "healthy": {"namespace": namespace, "backup": _name("healthy")},
        "failed": {"backup": _name("failed")},  # CLI style: no namespace
        "stale": {"namespace": namespace, "backup": _name("stale")},
        "flaky": {"namespace": namespace, "backup": _name("flaky")},
        "empty": {"namespace": namespace, "backup": _name("empty")},  # the volume was not mounted
        "blocked": {"namespace": namespace, "backup": _name("blocked")},  # deletions over --max-recycle
    }

    def push(which: str, interval: float, **fields) -> None:
        assert push_run_metrics(pushgateway.url, groups[which], summary(**fields), interval) is None

    push("healthy", 3600, started_at=now - 200, duration_seconds=20)
    push("healthy", 3600, started_at=now - 70, duration_seconds=10, files_failed=1, result="partial")
    push("healthy", 3600, started_at=now - 40, duration_seconds=30, bytes_uploaded=4096)
    push("failed", 3600, result="error", exit_code=2, started_at=now - 10, duration_seconds=0.5)
    push("stale", 60, started_at=now - 1_010, duration_seconds=10)
    push("flaky", 100, started_at=now - 310, duration_seconds=10)
    push("flaky", 100, result="partial", exit_code=1, files_failed=3, started_at=now - 110, duration_seconds=10)
    push("empty", 3600, started_at=now - 30, duration_seconds=1, files_scanned=0, bytes_scanned=0, files_uploaded=0,
         bytes_uploaded=0, files_unchanged=0, bytes_unchanged=0, files_recycled=0, bytes_recycled=0)
    push("blocked", 3600, started_at=now - 200, duration_seconds=20)
    push("blocked", 3600, result="partial", exit_code=1, files_recycled=0, bytes_recycled=0,
         recycle_blocked="80 object(s) are due for recycling, over the cap of 50", started_at=now - 30,
         duration_seconds=5)

    # Known to the operator only (never pushed): created long ago (fires), recently (not yet), without an
    # interval (pushes nowhere: never judged), and the healthy backup's name in another namespace (fires:
    # the healthy one's runs are not its runs). The healthy backup itself is known to the operator too.
    managed = {
        "never": ({"namespace": namespace, "backup": _name("never")}, now - 10_000, 60.0),
        "young": ({"namespace": namespace, "backup": _name("young")}, now - 100, 60.0),
        "unmonitored": ({"namespace": namespace, "backup": _name("unmonitored")}, now - 100_000, None),
        "elsewhere": ({"namespace": _name("ns"), "backup": groups["healthy"]["backup"]}, now - 10_000, 3600.0),
        "healthy": (groups["healthy"], now - 100_000, 3600.0),
    }
    for grouping, created, interval in managed.values():
        operator_metrics.metrics.observe(grouping["namespace"], grouping["backup"], BackupState(
            ready="True", reason="CronJobReady", created_timestamp=created, expected_interval_seconds=interval))

    def count(query: str) -> str:
        result = prometheus_api(prometheus.url, "/api/v1/query", query=query)["data"]["result"]
        return result[0]["value"][1] if result else "0"

    pushed = "|".join(g["backup"] for g in groups.values())
    wait_for(lambda: count(f'count(s3backup_last_run_timestamp_seconds{{backup=~"{pushed}"}})') == str(len(groups)),
             "Prometheus to scrape the pushed groups")
    managed_names = "|".join(grouping["backup"] for grouping, _, _ in managed.values())
    wait_for(lambda: count(f'count(s3backup_operator_backup_created_timestamp_seconds{{backup=~"{managed_names}"}})')
             == str(len(managed)), "Prometheus to scrape the operator's /metrics")
    return {**groups, **{which: grouping for which, (grouping, _, _) in managed.items() if which not in groups}}


def _panel_targets():
    for panel in dashboard_panels(dashboard()):
        for target in panel["targets"]:
            yield pytest.param(panel, target, id=f"{panel['title']}/{target['refId']}")


@pytest.mark.parametrize(("panel", "target"), list(_panel_targets()))
def test_panel_query_returns_data(prometheus, backups, panel, target):
    healthy = backups["healthy"]
    expr = fill_variables(target["expr"], {"namespace": healthy["namespace"], "backup": healthy["backup"]})
    assert "$" not in expr, f"unknown variable left in {expr}"
    now = time.time()
    if target.get("instant"):
        answer = prometheus_api(prometheus.url, "/api/v1/query", query=expr, time=now)
    else:
        answer = prometheus_api(prometheus.url, "/api/v1/query_range", query=expr, start=now - 60, end=now, step=1)
    assert answer["status"] == "success", f"{panel['title']}: {answer.get('error')}"
    series = answer["data"]["result"]
    assert series, f"dead panel {panel['title']!r}: {expr} returned nothing"
    assert {s["metric"].get("backup") for s in series} == {healthy["backup"]}


def test_panel_values_are_the_pushed_ones(prometheus, backups):
    """Spot-check what the panels show for the healthy backup against what its last run pushed."""
    healthy = backups["healthy"]
    panels = {p["title"]: p for p in dashboard_panels(dashboard())}

    def instant(title: str, ref: str = "A") -> dict[str, float]:
        target = next(t for t in panels[title]["targets"] if t["refId"] == ref)
        expr = fill_variables(target["expr"], healthy)
        result = prometheus_api(prometheus.url, "/api/v1/query", query=expr)["data"]["result"]
        return {s["metric"].get("outcome", ""): float(s["value"][1]) for s in result}

    assert instant("Bytes uploaded per run") == {"": 4096}
    assert instant("Run duration") == {"": 30}
    assert instant("Result history") == {"": 0}  # success
    assert instant("Files by outcome") == {"uploaded": 3, "unchanged": 7, "recycled": 2, "failed": 0, "excluded": 4}
    assert instant("Remote size", "A") == {"": 1234}
    assert instant("Remote size", "B") == {"": 12}
    age = instant("Time since last success")[""]
    assert 5 < age < 600  # ended ~10 s before the fixture ran


def test_result_history_shows_partial_and_error(prometheus, backups):
    panel = next(p for p in dashboard_panels(dashboard()) if p["title"] == "Result history")
    expr = fill_variables(panel["targets"][0]["expr"], {"namespace": ".*", "backup": ".*"})
    result = prometheus_api(prometheus.url, "/api/v1/query", query=expr)["data"]["result"]
    shown = {s["metric"]["backup"]: s["value"][1] for s in result}
    assert shown[backups["failed"]["backup"]] == "2"
    assert shown[backups["flaky"]["backup"]] == "1"
    assert shown[backups["healthy"]["backup"]] == "0"


def test_variable_queries_list_the_backups(prometheus, backups):
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    healthy = backups["healthy"]

    def values(name: str, **fill: str) -> list[str]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variables[name]["query"])
        assert match, variables[name]["query"]
        selector = fill_variables(match.group(1), fill)
        answer = prometheus_api(prometheus.url, f"/api/v1/label/{match.group(2)}/values", **{"match[]": selector})
        assert answer["status"] == "success", answer
        return answer["data"]

    assert healthy["namespace"] in values("namespace")
    in_namespace = values("backup", namespace=healthy["namespace"])
    assert healthy["backup"] in in_namespace
    assert backups["failed"]["backup"] not in in_namespace  # pushed without a namespace
    assert backups["failed"]["backup"] in values("backup", namespace=".*")


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_expression_runs(prometheus, backups, rule):
    answer = prometheus_api(prometheus.url, "/api/v1/query", query=rule["expr"])
    assert answer["status"] == "success", f"{rule['alert']}: {answer.get('error')}"


def test_rules_load_and_evaluate_without_errors(prometheus, backups):
    def evaluated():
        groups = prometheus_api(prometheus.url, "/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

    rules = wait_for(evaluated, "Prometheus to evaluate the rules")
    assert sorted(rule["name"] for rule in rules) == sorted(rule["alert"] for rule in alert_rules())
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule


def test_operator_series_keep_the_backup_namespace(prometheus, backups):
    """honor_labels (the chart's ServiceMonitor: honorLabels: true) keeps the series' namespace, the
    backup's, over the scrape target's: else S3BackupNeverRan could not match them with the pushed runs."""
    never = backups["never"]
    name = never["backup"]
    query = f's3backup_operator_backup_created_timestamp_seconds{{backup="{name}"}}'
    (series,) = prometheus_api(prometheus.url, "/api/v1/query", query=query)["data"]["result"]
    assert series["metric"]["namespace"] == never["namespace"] != OPERATOR_POD_NAMESPACE
    assert "exported_namespace" not in series["metric"]


def test_alerts_fire_for_the_backups_they_are_about(prometheus, backups):
    ours = {(group.get("namespace", ""), group["backup"]): which for which, group in backups.items()}
    expected = {
        ("S3BackupFailed", "failed"),
        ("S3BackupNoRecentSuccess", "failed"),  # never succeeded
        ("S3BackupNotRunning", "stale"),
        ("S3BackupFilesFailing", "flaky"),
        ("S3BackupNoRecentSuccess", "flaky"),  # last success 300 s ago, interval 100 s
        ("S3BackupNeverRan", "never"),  # created 10000 s ago, interval 60 s (so: after 60 s + 1 h)
        ("S3BackupNeverRan", "elsewhere"),  # same name as "healthy", another namespace, created 10000 s ago
        ("S3BackupSourceEmpty", "empty"),  # scanned nothing, the bucket holds 12 objects
        ("S3BackupRecycleBlocked", "blocked"),
    }

    def firing() -> set[tuple[str, str]]:
        alerts = prometheus_api(prometheus.url, "/api/v1/alerts")["data"]["alerts"]
        keys = ((alert, (alert["labels"].get("namespace", ""), alert["labels"].get("backup"))) for alert in alerts)
        return {(alert["labels"]["alertname"], ours[key]) for alert, key in keys
                if alert["state"] == "firing" and key in ours}

    wait_for(lambda: firing() >= expected, f"alerts {sorted(expected)}")
    time.sleep(1.5)  # one more evaluation round (every 1 s): nothing else fires
    assert firing() == expected
