"""7. Scale-out on the real control plane: an S3Backup with `spec.transfer.shards: 3` runs as an Indexed Job of
three pods (the real job controller and scheduler), each syncing its own share of the keys; the operator makes
the final recycle Job only once all three succeeded, and the status sums them. A run in which one shard fails
names that shard and recycles nothing."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest
from s3backup_syncer.shards import shard_of

from tests.cluster.support import (
    GROUP,
    NODE,
    backup_manifest,
    bucket_keys,
    finished_job,
    last_run,
    make_credentials,
    make_namespace,
    make_volume,
    run_now,
    wait_for,
)

SHARDS = 3
FILES = {f"d{i % 3}/f{i:02d}.txt": f"file {i}\n".encode() * (i + 1) for i in range(12)}
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


def owned_by(index: int) -> list[str]:
    return sorted(key for key in FILES if shard_of(key, SHARDS) == index)


@pytest.fixture(scope="module")
def shards_namespace(cluster, operator, s3):
    namespace = make_namespace(cluster, "shards")
    make_credentials(cluster, namespace, s3)
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def summaries(cluster, namespace: str, job_name: str) -> dict[int, list[dict]]:
    """Each shard's attempts (terminated pods), as {index: [summary, ...]}."""
    found: dict[int, list[dict]] = {}
    for pod in cluster.items("pods", "-n", namespace, "-l", f"job-name={job_name}"):
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        summary = json.loads(terminated["message"])
        summary["exit_code_seen"], summary["node"] = terminated["exitCode"], pod["spec"]["nodeName"]
        found.setdefault(int(pod["metadata"]["labels"][INDEX_LABEL]), []).append(summary)
    return found


def recycle_job(cluster, namespace: str, run_job: dict) -> dict:
    name = f"{run_job['metadata']['name']}-recycle"
    job = wait_for(lambda: cluster.get("job", name, "-n", namespace), f"the recycle Job {name}", timeout=60)
    return finished_job(cluster, namespace, job["metadata"]["name"], timeout=180)


def run(cluster, namespace: str, name: str) -> dict:
    return finished_job(cluster, namespace, run_now(cluster, namespace, name)["metadata"]["name"], timeout=300)


def condition(job: dict, kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in job["status"].get("conditions", []))


def test_three_shards_each_file_once_one_recycle_and_a_summed_status(cluster, operator, s3, pushgateway,
                                                                     shards_namespace):
    assert all(owned_by(index) for index in range(SHARDS)), "every shard must own some of the test files"
    namespace, name, prefix = shards_namespace, "big", f"shards-{os.getpid()}"
    claim = make_volume(cluster, namespace, "big", FILES)
    manifest = backup_manifest(namespace, name, claim, s3, prefix, pushgateway.url, backoffLimit=0)
    manifest["spec"]["transfer"] = {"shards": SHARDS}
    manifest["spec"]["recycle"] = {"after": "0s", "maxDelete": "100%"}
    cluster.apply(manifest)
    wait_for(lambda: cluster.get("cronjob", f"{name}-s3backup", "-n", namespace), "the CronJob")

    # 1. One run: an Indexed Job of three pods, each its own shard; every file lands once in the bucket.
    first = run(cluster, namespace, name)
    assert first["spec"]["completionMode"] == "Indexed" and first["spec"]["completions"] == SHARDS
    assert condition(first, "Complete"), json.dumps(first["status"])
    shards = summaries(cluster, namespace, first["metadata"]["name"])
    assert sorted(shards) == list(range(SHARDS)) and all(len(attempts) == 1 for attempts in shards.values())
    assert {attempts[0]["node"] for attempts in shards.values()} == {NODE}  # the local volume's node
    for index, [summary] in shards.items():
        assert summary["result"] == "success" and summary["exit_code_seen"] == 0
        assert summary["files_uploaded"] == len(owned_by(index))  # its own keys, no other shard's
        assert summary["files_recycled"] == 0
    assert sorted(bucket_keys(s3, prefix)) == sorted(FILES)

    # 2. The final recycle step: made after all three succeeded, owned by the run's Job.
    recycle = recycle_job(cluster, namespace, first)
    owner = recycle["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", first["metadata"]["name"], first["metadata"]["uid"])
    assert recycle["metadata"]["creationTimestamp"] >= first["status"]["completionTime"]
    assert condition(recycle, "Complete")

    # 3. The status sums the three shards.
    status = last_run(cluster, namespace, name, first["metadata"]["name"])
    assert status["result"] == "Succeeded", status
    assert status["filesUploaded"] == len(FILES)
    assert status["bytesUploaded"] == sum(len(content) for content in FILES.values())
    assert (status["shards"], status["failedShards"], status["filesFailed"]) == (SHARDS, [], 0)
    assert (status["recycleJobName"], status["recycleResult"]) == (recycle["metadata"]["name"], "Succeeded")

    # 4. Per-shard metrics in the Pushgateway: one group per shard, none overwriting another.
    metrics = urllib.request.urlopen(pushgateway.url + "/metrics", timeout=5).read().decode()
    pushed = {line.split('shard="')[1].split('"')[0]: line.rsplit(" ", 1)[1]
              for line in metrics.splitlines()
              if line.startswith("s3backup_last_run_files{") and 'outcome="uploaded"' in line
              and f'backup="{name}"' in line and f'namespace="{namespace}"' in line and 'shard="' in line}
    assert {shard: float(value) for shard, value in pushed.items()} == {
        str(index): float(len(owned_by(index))) for index in range(SHARDS)}

    # 5. A deleted file is recycled exactly once, by the final step; no shard deletes anything.
    gone = owned_by(1)[0]
    (cluster.node_dir(NODE, f"/srv/{namespace}-big") / gone).unlink()
    second = run(cluster, namespace, name)
    assert all(s["files_recycled"] == 0 and s["files_uploaded"] == 0
               for [s] in summaries(cluster, namespace, second["metadata"]["name"]).values())
    recycle = recycle_job(cluster, namespace, second)
    [recycle_pod] = cluster.items("pods", "-n", namespace, "-l", f"job-name={recycle['metadata']['name']}")
    assert json.loads(recycle_pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])[
        "files_recycled"] == 1
    status = last_run(cluster, namespace, name, second["metadata"]["name"])
    assert (status["result"], status["filesRecycled"], status["filesUploaded"]) == ("Succeeded", 1, 0)
    metrics = urllib.request.urlopen(pushgateway.url + "/metrics", timeout=5).read().decode()
    assert [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith("s3backup_last_run_files{") and 'outcome="recycled"' in line
            and f'backup="{name}"' in line and 'shard="recycle"' in line] == [1.0]  # the step's own group
    assert sorted(bucket_keys(s3, prefix)) == sorted(set(FILES) - {gone})

    # 6. One shard fails (a file only shard 2 owns is unreadable): that shard is named, and nothing is
    # recycled anywhere, not even a deletion in a shard that succeeded.
    root = cluster.node_dir(NODE, f"/srv/{namespace}-big")
    unreadable, deleted = owned_by(2)[0], owned_by(0)[0]
    (root / unreadable).chmod(0)
    (root / deleted).unlink()
    try:
        third = run(cluster, namespace, name)
    finally:
        (root / unreadable).chmod(0o644)
    assert condition(third, "Failed"), json.dumps(third["status"])
    status = last_run(cluster, namespace, name, third["metadata"]["name"])
    assert status["failedShards"] == [2] and status["result"] == "Partial", status
    assert (status["recycleResult"], status["filesRecycled"], status["filesFailed"]) == ("Skipped", 0, 1)
    assert status["message"].startswith("shard 2: ")
    time.sleep(5)  # the status is written by the handler that would have made the recycle Job
    jobs = cluster.items("jobs", "-n", namespace, "-l", f"{GROUP}/run={third['metadata']['name']}")
    assert jobs == [] and cluster.get("job", f"{third['metadata']['name']}-recycle", "-n", namespace) is None
    assert deleted in bucket_keys(s3, prefix)

    # 7. Two shards instead of three: nothing is uploaded again, the deletion the failed run kept is recycled
    # now, and the Pushgateway group of the shard that is gone is pruned.
    manifest["spec"]["transfer"] = {"shards": 2}
    cluster.apply(manifest)
    wait_for(lambda: cluster.get("cronjob", f"{name}-s3backup", "-n", namespace)["spec"]["jobTemplate"]["spec"][
        "completions"] == 2, "the CronJob re-rendered for two shards")
    fourth = run(cluster, namespace, name)
    assert fourth["spec"]["completions"] == 2 and condition(fourth, "Complete"), json.dumps(fourth["status"])
    recycle_job(cluster, namespace, fourth)
    status = last_run(cluster, namespace, name, fourth["metadata"]["name"])
    assert (status["result"], status["shards"], status["filesUploaded"], status["filesRecycled"]) == (
        "Succeeded", 2, 0, 1), status
    assert sorted(bucket_keys(s3, prefix)) == sorted(set(FILES) - {gone, deleted})

    def shard_groups() -> set[str]:
        with urllib.request.urlopen(pushgateway.url + "/api/v1/metrics", timeout=5) as response:
            groups = [group["labels"] for group in json.load(response)["data"]]
        return {labels.get("shard", "") for labels in groups
                if labels.get("backup") == name and labels.get("namespace") == namespace}
    wait_for(lambda: shard_groups() == {"0", "1", "recycle"}, "the group of shard 2 pruned")
