"""Reading back what the Pushgateway and Prometheus hold, and the queries of the dashboard."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from s3backup_syncer.report import Summary

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "alerts.rules.yml"
RULE_TESTS = MONITORING / "alerts.rules.test.yml"
DASHBOARD = MONITORING / "dashboard.json"

#: The namespace of the operator's pod: the target label its scrape gets, which honor_labels overrides.
OPERATOR_POD_NAMESPACE = "s3backup-system"

#: Labels the Pushgateway adds to every group on its own.
GATEWAY_OWN_METRICS = {"push_time_seconds", "push_failure_time_seconds"}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def gateway_series(gateway_url: str, *, authorization: str = "", **grouping: str) -> Series:
    """Every series of one group on the gateway, keyed by (name, labels without the grouping)."""
    request = urllib.request.Request(gateway_url + "/metrics")
    if authorization:
        request.add_header("Authorization", authorization)
    text = urllib.request.urlopen(request, timeout=5).read().decode()
    found: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            if labels.get("job") != "s3backup" or any(labels.get(k) != v for k, v in grouping.items()):
                continue
            if set(labels) - {"job", "instance"} - set(grouping) - {"result", "outcome"}:
                continue  # a group with more grouping labels than asked for
            rest = frozenset((k, v) for k, v in labels.items() if k not in {"job", "instance", *grouping})
            found[(sample.name, rest)] = sample.value
    return found


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def summary(**fields: Any) -> Summary:
    """A finished run with distinct counts, so that a metric fed from the wrong field shows."""
    values: dict[str, Any] = dict(
        result="success",
        started_at=1_700_000_000.0,
        duration_seconds=12.5,
        files_scanned=11,
        bytes_scanned=1100,
        files_uploaded=3,
        bytes_uploaded=300,
        files_unchanged=7,
        bytes_unchanged=700,
        files_recycled=2,
        bytes_recycled=200,
        files_failed=0,
        bytes_failed=0,
        files_excluded=4,
        bytes_hashed=450,
        bytes_reused=64,
        remote_objects=12,
        remote_bytes=1234,
        recycle_pending=5,
    )
    values.update(fields)
    return Summary(**values)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30, every: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def prometheus_api(base_url: str, path: str, **params: Any) -> dict:
    """GET a Prometheus HTTP API endpoint; returns the JSON body even for 4xx (parse errors)."""
    query = urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(f"{base_url}{path}?{query}", timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        return json.load(error)


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(board: dict) -> Iterator[dict]:
    for panel in board["panels"]:
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def fill_variables(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana's $var and ${var} the way Grafana does for a single regex value."""
    for name, replacement in values.items():
        expr = expr.replace("${" + name + "}", replacement)
        expr = re.sub(r"\$" + name + r"\b", lambda _m, r=replacement: r, expr)
    return expr
