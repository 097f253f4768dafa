"""A sharded backup in the Pushgateway and Prometheus: real `s3backup sync --shard I/2` runs against SeaweedFS
push one group per shard, and the dashboard shows the backup's totals (sums over its shards)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

from s3backup_syncer.shards import shard_of

from .helpers import dashboard, dashboard_panels, fill_variables, gateway_series, prometheus_api, value

S3BACKUP = str(Path(sys.executable).with_name("s3backup"))
FILES = {f"dir{i % 2}/file-{i}.txt": f"content {i}\n".encode() * (10 * i + 1) for i in range(10)}


def test_each_shard_pushes_its_own_group_and_the_dashboard_sums_them(tmp_path, s3_env, s3_url, pushgateway,
                                                                     prometheus):
    names = {"namespace": f"obs-shards-{secrets.token_hex(3)}", "backup": f"obs-shards-{secrets.token_hex(3)}"}
    assert {shard_of(key, 2) for key in FILES} == {0, 1}, "both shards must own some of the files"
    source = tmp_path / "src"
    for key, data in FILES.items():
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(data)
    summaries = {}
    for index in (0, 1):
        result = subprocess.run(
            [S3BACKUP, "sync", str(source), s3_url, "--path-style", "--summary-json", "-", "-q",
             f"--shard={index}/2", "--run-id=run-1", "--pushgateway", pushgateway.url,
             "--backup-name", names["backup"], "--backup-namespace", names["namespace"], "--expected-interval", "1h"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        summaries[index] = json.loads(result.stdout.strip().splitlines()[-1])
        assert summaries[index]["files_uploaded"] == sum(1 for key in FILES if shard_of(key, 2) == index)

    # One group per shard: the second shard's push did not overwrite the first's.
    assert gateway_series(pushgateway.url, **names) == {}  # no unsharded group
    for index in (0, 1):
        pushed = gateway_series(pushgateway.url, **names, shard=str(index))
        assert value(pushed, "s3backup_last_run_files", outcome="uploaded") == summaries[index]["files_uploaded"]
        assert value(pushed, "s3backup_remote_objects") == summaries[index]["remote_objects"]

    # The dashboard's panels show the backup's totals.
    panels = {p["title"]: p for p in dashboard_panels(dashboard())}

    def instant(title: str, ref: str = "A") -> dict[str, float]:
        target = next(t for t in panels[title]["targets"] if t["refId"] == ref)
        answer = prometheus_api(prometheus.url, "/api/v1/query", query=fill_variables(target["expr"], names))
        return {s["metric"].get("outcome", ""): float(s["value"][1]) for s in answer["data"]["result"]}

    deadline = time.monotonic() + 30
    while instant("Remote size", "B") != {"": len(FILES)} and time.monotonic() < deadline:
        time.sleep(0.3)
    assert instant("Remote size", "B") == {"": len(FILES)}
    assert instant("Remote size", "A") == {"": sum(len(data) for data in FILES.values())}
    assert instant("Files by outcome")["uploaded"] == len(FILES)
    assert instant("Bytes uploaded per run") == {"": sum(len(data) for data in FILES.values())}
    assert instant("Result history") == {"": 0}
    assert 0 <= instant("Time since last success")[""] < 600
