"""A real `s3backup sync` against SeaweedFS pushes to the real Pushgateway; Prometheus shows it.

This is what a user sees: the CLI (as the container runs it), the gateway's content, and every
dashboard panel filled from it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3backup_syncer.local_s3 import free_port

from .helpers import alert_rules, dashboard, dashboard_panels, fill_variables, gateway_series, prometheus_api, value

S3BACKUP = str(Path(sys.executable).with_name("s3backup"))

#: Summary JSON fields and the series that carry them.
PUSHED_FROM_SUMMARY = {
    "duration_seconds": ("s3backup_last_run_duration_seconds", {}),
    "files_scanned": ("s3backup_last_run_scanned_files", {}),
    "bytes_scanned": ("s3backup_last_run_scanned_bytes", {}),
    "files_uploaded": ("s3backup_last_run_files", {"outcome": "uploaded"}),
    "bytes_uploaded": ("s3backup_last_run_bytes", {"outcome": "uploaded"}),
    "files_unchanged": ("s3backup_last_run_files", {"outcome": "unchanged"}),
    "bytes_unchanged": ("s3backup_last_run_bytes", {"outcome": "unchanged"}),
    "files_recycled": ("s3backup_last_run_files", {"outcome": "recycled"}),
    "bytes_recycled": ("s3backup_last_run_bytes", {"outcome": "recycled"}),
    "files_failed": ("s3backup_last_run_files", {"outcome": "failed"}),
    "bytes_failed": ("s3backup_last_run_bytes", {"outcome": "failed"}),
    "files_excluded": ("s3backup_last_run_files", {"outcome": "excluded"}),
    "bytes_hashed": ("s3backup_last_run_hashed_bytes", {}),
    "bytes_reused": ("s3backup_last_run_resumed_bytes", {}),
    "remote_objects": ("s3backup_remote_objects", {}),
    "remote_bytes": ("s3backup_remote_bytes", {}),
    "recycle_pending": ("s3backup_last_run_recycle_pending_objects", {}),
}


def sync(source: Path, url: str, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run(
        [S3BACKUP, "sync", str(source), url, "--path-style", "--summary-json", "-", "-q", *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, json.loads(result.stdout.strip().splitlines()[-1])


def write_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "dir/b.bin": secrets.token_bytes(70_000),
        "dir/sub/c.txt": b"gamma" * 1000,
        "skip.tmp": b"excluded",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


@pytest.fixture
def names() -> dict[str, str]:
    return {"namespace": f"obs-e2e-{secrets.token_hex(3)}", "backup": f"obs-e2e-{secrets.token_hex(3)}"}


def test_sync_pushes_its_summary_and_a_failure_keeps_the_last_success(
    tmp_path, s3_env, s3_url, pushgateway, prometheus, names
):
    source = tmp_path / "src"
    files = write_tree(source)
    options = ["--pushgateway", pushgateway.url, "--backup-name", names["backup"],
               "--backup-namespace", names["namespace"], "--expected-interval", "1h", "--exclude", "*.tmp"]  # fmt: skip

    first, first_summary = sync(source, s3_url, *options)
    assert first.returncode == 0, first.stderr
    assert first_summary["files_uploaded"] == len(files) - 1

    (source / "a.txt").write_bytes(b"alpha, changed\n")
    second, second_summary = sync(source, s3_url, *options)
    assert second.returncode == 0, second.stderr
    assert second_summary["files_uploaded"] == 1 and second_summary["files_unchanged"] == len(files) - 2

    pushed = gateway_series(pushgateway.url, **names)
    for field, (name, labels) in PUSHED_FROM_SUMMARY.items():
        assert value(pushed, name, **labels) == pytest.approx(second_summary[field]), field
    ended = second_summary["started_at"] + second_summary["duration_seconds"]
    assert value(pushed, "s3backup_last_success_timestamp_seconds") == pytest.approx(ended)
    assert value(pushed, "s3backup_last_run_timestamp_seconds") == pytest.approx(ended)
    assert value(pushed, "s3backup_last_run_result", result="success") == 1
    assert value(pushed, "s3backup_expected_interval_seconds") == 3600
    assert abs(ended - time.time()) < 60

    # The same backup, now pointed at a bucket that does not exist: exit 2, the failure is pushed,
    # the last success and the last known remote size stay.
    missing = f"s3://obs-missing-{secrets.token_hex(4)}/x"
    failed, failed_summary = sync(source, missing, *options)
    assert failed.returncode == 2, failed.stderr
    assert failed_summary["result"] == "error"
    pushed = gateway_series(pushgateway.url, **names)
    assert value(pushed, "s3backup_last_run_result", result="error") == 1
    assert value(pushed, "s3backup_last_run_success") == 0
    assert value(pushed, "s3backup_last_success_timestamp_seconds") == pytest.approx(ended)
    assert value(pushed, "s3backup_last_run_timestamp_seconds") > ended
    assert value(pushed, "s3backup_remote_objects") == second_summary["remote_objects"]

    # Every panel of the dashboard shows this backup, once Prometheus has scraped the gateway.
    def dead_panels() -> list[str]:
        dead = []
        for panel in dashboard_panels(dashboard()):
            for target in panel["targets"]:
                answer = prometheus_api(prometheus.url, "/api/v1/query", query=fill_variables(target["expr"], names))
                assert answer["status"] == "success", answer
                if not answer["data"]["result"]:
                    dead.append(f"{panel['title']}/{target['refId']}")
        return dead

    deadline = time.monotonic() + 30
    while (dead := dead_panels()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not dead, f"dead panels after a real sync: {dead}"

    # The failed run raises S3BackupFailed for this backup, and only that alert.
    def firing() -> set[str]:
        alerts = prometheus_api(prometheus.url, "/api/v1/alerts")["data"]["alerts"]
        return {
            a["labels"]["alertname"]
            for a in alerts
            if a["state"] == "firing" and a["labels"].get("backup") == names["backup"]
        }

    deadline = time.monotonic() + 30
    while "S3BackupFailed" not in (alerts := firing()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert alerts == {"S3BackupFailed"}
    for rule in alert_rules():
        assert prometheus_api(prometheus.url, "/api/v1/query", query=rule["expr"])["status"] == "success", rule["alert"]


def test_sync_completes_when_the_pushgateway_is_down(tmp_path, s3_env, s3_url):
    source = tmp_path / "src"
    write_tree(source)
    port = free_port()  # nothing listens there (and, below the ephemeral range, a connection never meets itself)
    gateway = f"http://metrics-user:hunter2-metrics@127.0.0.1:{port}"

    result, summary = sync(source, s3_url, "--pushgateway", gateway)

    assert result.returncode == 0, result.stderr
    assert summary["result"] == "success" and summary["files_uploaded"] == 4
    warnings = [line for line in result.stderr.splitlines() if "could not push metrics" in line]
    assert len(warnings) == 1, result.stderr
    assert f"http://127.0.0.1:{port}: Connection refused" in warnings[0]
    assert "hunter2" not in result.stderr and "metrics-user" not in result.stderr
    assert "Traceback" not in result.stderr
