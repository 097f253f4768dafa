"""The alert rules (promtool) and the dashboard, checked without a server."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml
from s3backup_operator.metrics import BackupState, OperatorMetrics
from s3backup_syncer.metrics import run_metrics_registry

from .helpers import RULE_TESTS, RULES, alert_rules, dashboard, dashboard_panels, summary

PROMTOOL = shutil.which("promtool")


def promtool(*args: str, cwd=RULES.parent) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool is not installed (Debian package `prometheus`; scripts/bootstrap.sh test)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def pushed_metric_names() -> set[str]:
    """Every name a run can push (a successful run with an expected interval pushes them all)."""
    registry = run_metrics_registry(summary(), expected_interval_seconds=3600)
    return {metric.name for metric in registry.collect()}


def test_promtool_check_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path):
    """The unit tests can fail: a rule that fires too late is caught."""
    broken = RULES.read_text().replace("> 2 * max by", "> 3 * max by")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']}: no test where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']}: no test where it must not fire"


def test_every_alert_has_severity_and_text():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["alert"].startswith("S3Backup")


def _names_in(text: str) -> set[str]:
    return set(re.findall(r"\bs3backup_[a-z_]+\b", text))


def operator_metric_names() -> set[str]:
    """Every name the operator's /metrics serves (a backup with every field known shows them all)."""
    metrics = OperatorMetrics()
    metrics.observe("ns", "db", BackupState(ready="True", reason="CronJobReady", last_result="Succeeded",
                                            last_success_timestamp=1.0, created_timestamp=1.0,
                                            last_run_timestamp=1.0, last_run_files={"failed": 0},
                                            expected_interval_seconds=3600.0))
    return {metric.name for metric in metrics.registry.collect() if metric.samples}


def test_rules_and_dashboard_use_only_metrics_that_exist():
    """Rules and panels read what runs push and what the operator's own /metrics serves."""
    pushed, served = pushed_metric_names(), operator_metric_names()
    assert "s3backup_last_success_timestamp_seconds" in pushed
    assert "s3backup_operator_backup_created_timestamp_seconds" in served
    used_by_rules = _names_in(" ".join(rule["expr"] for rule in alert_rules()))
    used_by_panels = _names_in(" ".join(t["expr"] for p in dashboard_panels(dashboard()) for t in p["targets"]))
    assert used_by_rules and used_by_panels
    assert used_by_rules <= pushed | served, used_by_rules - pushed - served
    assert used_by_panels <= pushed | served, used_by_panels - pushed - served


#: Alerts that must work from either source alone: the Pushgateway (CLI backups, or no ServiceMonitor) or
#: the operator's /metrics (kube-prometheus-stack without a Pushgateway).
EITHER_SOURCE = ("S3BackupFailed", "S3BackupNoRecentSuccess", "S3BackupNotRunning", "S3BackupFilesFailing")


def test_run_alerts_and_main_panels_read_both_sources():
    """Each run alert and the success/result/files panels name a pushed and an operator metric for each
    thing they read, taken together with `max by (namespace, backup)`: either source alone is enough."""
    pushed, served = pushed_metric_names(), operator_metric_names() - {"s3backup_operator_backups"}
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    panels = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard_panels(dashboard())}
    checked = [*(rules[name] for name in EITHER_SOURCE),
               *(panels[title] for title in ("Time since last success", "Overdue (age / expected interval)",
                                             "Result history", "Files by outcome"))]
    for expr in checked:
        names = _names_in(expr)
        assert names & pushed and names & served, expr
        for selector in re.findall(r'__name__=~"([^"]+)"', expr):
            alternatives = set(selector.split("|"))
            assert alternatives & pushed and alternatives & served and alternatives <= pushed | served, selector
        assert "max by (namespace, backup" in expr, expr


def test_metric_names_have_the_prefix_and_base_units():
    for name in pushed_metric_names() | operator_metric_names():
        assert name.startswith("s3backup_"), name
        assert not re.search(r"_(milliseconds|ms|kb|mb|kib|mib|minutes|hours|days)\b", name), name
        if "timestamp" in name or "duration" in name or "interval" in name:
            assert name.endswith("_seconds"), name


def test_dashboard_has_the_variables_and_panels_users_look_for():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "backup"} <= set(variables)
    for name in ("namespace", "backup"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    titles = [p["title"] for p in dashboard_panels(board)]
    for wanted in ("Time since last success", "Result history", "Bytes uploaded per run", "Run duration",
                   "Files by outcome", "Remote size"):  # fmt: skip
        assert wanted in titles
    ids = [p["id"] for p in dashboard_panels(board)]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels(board):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'namespace=~"$namespace"' in target["expr"] and 'backup=~"$backup"' in target["expr"], (
                f"{panel['title']}: every query follows the namespace and backup variables"
            )
