"""3. The whole chain of one run: S3Backup -> CronJob -> run-now -> Job (operator) -> Pod (scheduler) ->
the real `s3backup sync` against SeaweedFS -> Job complete (job controller) -> S3Backup status and Pushgateway."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request

import pytest

from tests.cluster.support import (
    FILES,
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
from tests.conftest import BUCKET


@pytest.fixture(scope="module")
def chain_namespace(cluster, operator, s3):
    namespace = make_namespace(cluster, "chain")
    make_credentials(cluster, namespace, s3)
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_one_run_end_to_end(cluster, operator, s3, pushgateway, chain_namespace):
    namespace, name, prefix = chain_namespace, "dumps", f"chain-{os.getpid()}"
    claim = make_volume(cluster, namespace, "dumps", FILES)
    cluster.apply(backup_manifest(namespace, name, claim, s3, prefix, pushgateway.url))

    # 1. S3Backup -> CronJob, owned by the S3Backup.
    cronjob = wait_for(lambda: cluster.get("cronjob", f"{name}-s3backup", "-n", namespace), "the CronJob")
    backup = cluster.get("s3backup", name, "-n", namespace)
    owner = cronjob["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner.get("controller")) == ("S3Backup", backup["metadata"]["uid"], True)
    wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True"
                         for c in (cluster.get("s3backup", name, "-n", namespace) or {}).get("status", {})
                         .get("conditions", [])), "Ready=True")

    # 2. run-now -> a Job created by the operator; 3. the scheduler places its pod on the volume's node.
    job = run_now(cluster, namespace, name)
    job = finished_job(cluster, namespace, job["metadata"]["name"])
    pods = cluster.items("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")
    assert pods, "the Job's pod is gone"
    assert {pod["spec"]["nodeName"] for pod in pods} == {NODE}  # the local PV's node affinity, honoured
    # 4./5. The real syncer ran and the job controller marked the Job complete.
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"]), \
        "\n".join(cluster.pod_log(pod) for pod in pods)
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    summary = json.loads(terminated["message"])
    assert summary["files_uploaded"] == len(FILES)
    keys = bucket_keys(s3, prefix)
    assert sorted(keys) == sorted(FILES)
    for relative, content in FILES.items():
        body = s3.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{relative}")["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(content).digest()

    # 6. The S3Backup's status shows the run's counts; the Pushgateway holds its metrics.
    run = last_run(cluster, namespace, name, job["metadata"]["name"])
    assert run["result"] == "Succeeded"
    assert run["filesUploaded"] == len(FILES)
    assert run["bytesUploaded"] == sum(len(content) for content in FILES.values())
    assert run["filesFailed"] == 0
    metrics = urllib.request.urlopen(pushgateway.url + "/metrics", timeout=5).read().decode()
    pushed = [line for line in metrics.splitlines()
              if line.startswith("s3backup_last_run_success{") and f'backup="{name}"' in line
              and f'namespace="{namespace}"' in line]
    assert pushed and pushed[0].endswith(" 1"), pushed

    # A second run uploads nothing: the bucket already holds every file.
    second = finished_job(cluster, namespace, run_now(cluster, namespace, name)["metadata"]["name"])
    run = last_run(cluster, namespace, name, second["metadata"]["name"])
    assert (run["result"], run["filesUploaded"]) == ("Succeeded", 0)
    assert bucket_keys(s3, prefix) == keys
