"""A sharded backup in the Pushgateway and Prometheus: real `s3backup sync --shard I/2` runs against SeaweedFS
push one group per shard, the final `s3backup recycle` step one of its own, and the dashboard shows the
backup's totals (sums over its groups)."""

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
    metrics = ["--pushgateway", pushgateway.url, "--backup-name", names["backup"],
               "--backup-namespace", names["namespace"]]

    def run(run_id: str) -> dict[int, dict]:
        """Both shards, then the final step; their summaries (the step's under "recycle")."""
        summaries: dict = {}
        for index in (0, 1):
            result = subprocess.run(
                [S3BACKUP, "sync", str(source), s3_url, "--path-style", "--summary-json", "-", "-q",
                 f"--shard={index}/2", f"--run-id={run_id}", "--recycle-after=0s", "--expected-interval=1h",
                 *metrics], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            summaries[index] = json.loads(result.stdout.strip().splitlines()[-1])
        result = subprocess.run([S3BACKUP, "recycle", s3_url, "--path-style", "--summary-json", "-", "-q",
                                 "--shards=2", f"--run-id={run_id}", *metrics], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        summaries["recycle"] = json.loads(result.stdout.strip().splitlines()[-1])
        return summaries

    summaries = run("run-1")
    for index in (0, 1):
        assert summaries[index]["files_uploaded"] == sum(1 for key in FILES if shard_of(key, 2) == index)

    # One group per shard: the second shard's push did not overwrite the first's.
    assert gateway_series(pushgateway.url, **names) == {}  # no unsharded group
    for index in (0, 1):
        pushed = gateway_series(pushgateway.url, **names, shard=str(index))
        assert value(pushed, "s3backup_last_run_files", outcome="uploaded") == summaries[index]["files_uploaded"]
        assert value(pushed, "s3backup_remote_objects") == summaries[index]["remote_objects"]

    # A deletion, recycled by the final step, which pushes what it did in a group of its own.
    gone = sorted(FILES)[0]
    (source / gone).unlink()
    summaries = run("run-2")
    assert summaries["recycle"]["files_recycled"] == 1 and summaries[0]["files_recycled"] == 0
    step = gateway_series(pushgateway.url, **names, shard="recycle")
    assert step == {("s3backup_last_run_files", frozenset({("outcome", "recycled")})): 1,
                    ("s3backup_last_run_bytes", frozenset({("outcome", "recycled")})): len(FILES[gone]),
                    ("s3backup_last_run_recycle_blocked", frozenset()): 0,
                    **{key: found for key, found in step.items() if key[0].startswith("push_")}}

    # The dashboard's panels show the backup's totals.
    panels = {p["title"]: p for p in dashboard_panels(dashboard())}

    def instant(title: str, ref: str = "A") -> dict[str, float]:
        target = next(t for t in panels[title]["targets"] if t["refId"] == ref)
        answer = prometheus_api(prometheus.url, "/api/v1/query", query=fill_variables(target["expr"], names))
        return {s["metric"].get("outcome", ""): float(s["value"][1]) for s in answer["data"]["result"]}

    left = {key: data for key, data in FILES.items() if key != gone}
    deadline = time.monotonic() + 30
    while instant("Files by outcome").get("recycled") != 1 and time.monotonic() < deadline:
        time.sleep(0.3)
    files = instant("Files by outcome")
    assert (files["recycled"], files["unchanged"], files["uploaded"]) == (1, len(left), 0)
    assert instant("Remote size", "B") == {"": len(left) + 1}  # as the shards listed it, before the step
    assert instant("Remote size", "A") == {"": sum(len(data) for data in FILES.values())}
    assert instant("Bytes uploaded per run") == {"": 0}
    assert instant("Result history") == {"": 0}
    assert 0 <= instant("Time since last success")[""] < 600
