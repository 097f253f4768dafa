"""spec.transfer.shards: the Indexed Job, its final recycle step, and the status of a sharded run (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from s3backup_operator.recycle_step import recycle_job_name, render_recycle_job
from s3backup_operator.render import render_cronjob, render_run_now_job
from s3backup_operator.shard_status import SKIPPED, recycle_due, sharded_last_run
from s3backup_operator.sharding import COMPLETION_INDEX_LABEL, JOB_NAME_LABEL, RUN_LABEL, STEP_LABEL, shard_count
from s3backup_operator.spec import InvalidSpec, parse
from s3backup_operator.status import FAILED, PARTIAL, SUCCEEDED
from s3backup_syncer import cli
from s3backup_syncer.shards import MAX_SHARDS, Shard

from tests.operator.conftest import make_backup, option
from tests.operator.schema_tools import validate_builtin

RUN = "db-dumps-s3backup-29400000"


def sharded_backup(shards: int = 3, **changes: Any) -> dict[str, Any]:
    backup = make_backup(**changes)
    backup["spec"].setdefault("transfer", {})["shards"] = shards
    backup["spec"]["recycle"] = {"after": "7d", "maxDelete": "10%"}
    return backup


def _expand(arg: str, env: dict[str, str]) -> str:
    for name, value in env.items():
        arg = arg.replace(f"$({name})", value)
    return arg


def test_one_shard_is_the_plain_job(config):
    plain = render_cronjob(parse(make_backup()), config)
    one = render_cronjob(parse(sharded_backup(1)), config)["spec"]["jobTemplate"]["spec"]
    assert "completionMode" not in one and one["backoffLimit"] == 2
    assert not any("--shard" in arg for arg in one["template"]["spec"]["containers"][0]["args"])
    assert "completionMode" not in plain["spec"]["jobTemplate"]["spec"]


def test_shards_render_an_indexed_job_of_n_pods_at_once(config):
    cronjob = render_cronjob(parse(sharded_backup(3)), config)
    validate_builtin(cronjob)
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 3, 3)
    # A failing shard is retried on its own; no Job-wide limit lets one shard use up the others' retries.
    assert job["backoffLimitPerIndex"] == 2 and "backoffLimit" not in job
    [rule] = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailIndex" and rule["onExitCodes"]["values"] == [2]
    container = job["template"]["spec"]["containers"][0]
    run_id = next(item for item in container["env"] if item["name"] == "S3BACKUP_RUN_ID")
    assert run_id["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{JOB_NAME_LABEL}']"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_pod_runs_its_own_shard_of_the_run_named_after_its_job(config, index):
    """What the kubelet makes of the args ($(VAR) expansion) is what the syncer's own parser takes."""
    container = render_cronjob(parse(sharded_backup(3)), config)["spec"]["jobTemplate"]["spec"]["template"][
        "spec"]["containers"][0]
    args = [_expand(arg, {"JOB_COMPLETION_INDEX": str(index), "S3BACKUP_RUN_ID": RUN}) for arg in container["args"]]
    options = cli.options_from_args(cli.build_parser().parse_args(args))
    assert options.shard == Shard(index, 3) and options.run_id == RUN
    assert options.recycle_after_seconds == 7 * 86400


def test_run_now_is_indexed_too(config):
    job = render_run_now_job(parse(sharded_backup(4)), config, "now")
    validate_builtin(job)
    assert job["spec"]["completions"] == 4 and job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


@pytest.mark.parametrize("shards", [0, -1, MAX_SHARDS + 1])
def test_shards_out_of_range_are_refused(shards):
    with pytest.raises(InvalidSpec) as caught:
        parse(sharded_backup(shards))
    assert caught.value.message.startswith("spec.transfer.shards: ")


def test_shards_must_be_an_integer():
    with pytest.raises(InvalidSpec):
        parse(sharded_backup("3"))  # type: ignore[arg-type]


def run_job(count: int = 3, outcome: str = "Complete", completed: str = "0-2", failed: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": "2026-11-26T02:44:00Z", "completedIndexes": completed,
                              "conditions": [{"type": outcome, "status": "True",
                                              "lastTransitionTime": "2026-11-26T02:45:00Z"}]}
    if failed:
        status["failedIndexes"] = failed
    if outcome == "Complete":
        status["completionTime"] = "2026-11-26T02:45:00Z"
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": RUN, "namespace": "backups", "uid": "u-1"},
            "spec": {"completionMode": "Indexed", "completions": count, "parallelism": count}, "status": status}


def summary(result: str = "success", **counts: Any) -> str:
    return json.dumps({"result": result, "files_uploaded": 0, "bytes_uploaded": 0, "files_failed": 0,
                       "files_recycled": 0, **counts})


def shard_pod(index: int, message: str, exit_code: int = 0, finished: str = "2026-11-26T02:44:50Z"):
    return {"metadata": {"name": f"{RUN}-{index}-x", "labels": {COMPLETION_INDEX_LABEL: str(index)}},
            "status": {"containerStatuses": [{"name": "s3backup", "state": {"terminated": {
                "exitCode": exit_code, "message": message, "startedAt": "2026-11-26T02:44:01Z",
                "finishedAt": finished}}}]}}


def recycle_job(outcome: str = "Complete") -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": outcome, "status": "True",
                                              "lastTransitionTime": "2026-11-26T02:46:00Z"}]}
    if outcome == "Complete":
        status["completionTime"] = "2026-11-26T02:46:00Z"
    return {"metadata": {"name": recycle_job_name(RUN), "labels": {STEP_LABEL: "recycle", RUN_LABEL: RUN}},
            "status": status}


def live_run_job(config, backup: dict[str, Any]) -> dict[str, Any]:
    """A run's Job as the API server returns it: the Job controller's labels on it and on its template."""
    job = render_cronjob(parse(backup), config)["spec"]["jobTemplate"]
    controller = {"batch.kubernetes.io/controller-uid": "u-1", "controller-uid": "u-1",
                  "batch.kubernetes.io/job-name": RUN, "job-name": RUN}
    job["spec"]["template"]["metadata"]["labels"].update(controller)
    job["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {**run_job()["metadata"], **job["metadata"]},
            "spec": job["spec"], "status": run_job()["status"]}


def test_recycle_job_is_the_runs_own_pod_running_the_final_step(config):
    backup = sharded_backup(3)
    backup["spec"]["destination"]["caBundle"] = {"configMapKeyRef": {"name": "corporate-ca"}}
    backup["spec"]["job"] = {"nodeSelector": {"role": "backup-server"}, "backoffLimit": 4}
    backup["spec"]["metrics"] = {"pushgatewayURL": "http://pgw.monitoring:9091"}
    run = live_run_job(config, backup)
    job = render_recycle_job(run)
    validate_builtin(job)
    assert job["metadata"]["name"] == f"{RUN}-recycle" and job["metadata"]["labels"][RUN_LABEL] == RUN
    assert job["metadata"]["labels"]["s3backup.dev/backup"] == "db-dumps"
    assert job["spec"]["backoffLimit"] == 0 and "completionMode" not in job["spec"]
    pod = job["spec"]["template"]["spec"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert not any(key.startswith("batch.kubernetes.io/") or key in ("job-name", "controller-uid") for key in labels)
    assert labels[STEP_LABEL] == "recycle" and "selector" not in job["spec"]
    [container] = pod["containers"]
    args = container["args"]
    parsed = cli.build_parser().parse_args(args)
    assert (parsed.command, parsed.destination, parsed.run_id, parsed.shards) == (
        "recycle", "s3://my-backups/cluster-a/db", RUN, 3)
    assert parsed.max_recycle == "10%" and parsed.endpoint_url == "https://s3.example.com" and parsed.path_style
    assert parsed.region == "eu-west-1" and option(args, "--summary-json") == "/dev/termination-log"
    # Its own metrics group, next to the shards' (shard="recycle").
    assert (parsed.pushgateway, parsed.backup_name, parsed.backup_namespace) == (
        "http://pgw.monitoring:9091", "db-dumps", "backups")
    # The run's S3 connection and pod settings; not the user's volume: the step reads only the shards' results.
    assert {"name": "source", "emptyDir": {}} in pod["volumes"]
    assert all("persistentVolumeClaim" not in volume for volume in pod["volumes"])
    assert any(volume.get("configMap", {}).get("name") == "corporate-ca" for volume in pod["volumes"])
    env = {item["name"] for item in container["env"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CA_BUNDLE"} <= env and "S3BACKUP_RUN_ID" not in env
    assert pod["nodeSelector"] == {"role": "backup-server"} and pod["securityContext"]["runAsNonRoot"]


def test_recycle_job_name_fits_a_long_run_name():
    name = recycle_job_name("x" * 63)
    assert len(name) <= 63 and name.endswith("-recycle") and name == recycle_job_name("x" * 63)


def test_recycle_is_due_only_when_every_index_succeeded():
    assert recycle_due(run_job())
    assert not recycle_due(run_job(outcome="Failed", completed="0,2", failed="1"))
    assert not recycle_due(run_job(completed="0-1"))  # (never Complete so, but the indexes decide)
    unsharded = run_job()
    unsharded["spec"] = {"completions": 1}
    assert shard_count(unsharded) == 1 and not recycle_due(unsharded)


def test_sharded_run_waits_for_its_recycle_step():
    pods = [shard_pod(i, summary()) for i in range(3)]
    running = recycle_job()
    running["status"] = {"active": 1}
    assert sharded_last_run(run_job(), pods, running, []) is None


def test_status_sums_the_shards_and_takes_recycled_files_from_the_final_step():
    pods = [shard_pod(i, summary(files_uploaded=i + 1, bytes_uploaded=100 * (i + 1))) for i in range(3)]
    recycled = shard_pod(0, summary(files_recycled=2))
    run = sharded_last_run(run_job(), pods, recycle_job(), [recycled])
    assert run == {
        "jobName": RUN, "result": SUCCEEDED, "startTime": "2026-11-26T02:44:00Z",
        "completionTime": "2026-11-26T02:46:00Z",  # the run ends with its final step
        "filesUploaded": 6, "bytesUploaded": 600, "filesFailed": 0, "filesRecycled": 2,
        "shards": 3, "failedShards": [], "recycleJobName": f"{RUN}-recycle", "recycleResult": SUCCEEDED,
        "exitCode": 0,
    }


def test_a_failed_shard_is_named_the_worst_result_wins_and_nothing_is_recycled():
    failed = json.dumps({"result": "partial", "files_uploaded": 1, "files_failed": 2, "errors": ["a: denied"],
                         "error": ""})
    pods = [shard_pod(0, summary(files_uploaded=4)),
            shard_pod(1, failed, exit_code=1, finished="2026-11-26T02:44:10Z"),
            shard_pod(1, failed, exit_code=1, finished="2026-11-26T02:44:40Z"),
            shard_pod(2, summary(files_uploaded=5))]
    run = sharded_last_run(run_job(outcome="Failed", completed="0,2", failed="1"), pods)
    assert run["result"] == PARTIAL and run["failedShards"] == [1]
    assert run["filesUploaded"] == 10 and run["filesFailed"] == 2  # each shard's latest attempt, summed
    assert run["recycleResult"] == SKIPPED and run["filesRecycled"] == 0 and "recycleJobName" not in run
    assert run["message"].startswith("shard 1: ") and run["exitCode"] == 1


def test_a_retried_shard_that_succeeded_counts_its_last_attempt():
    pods = [shard_pod(0, summary(files_uploaded=1)),
            shard_pod(1, "killed", exit_code=137, finished="2026-11-26T02:44:10Z"),
            shard_pod(1, summary(files_uploaded=2), finished="2026-11-26T02:44:40Z"),
            shard_pod(2, summary(files_uploaded=3))]
    run = sharded_last_run(run_job(), pods, recycle_job(), [shard_pod(0, summary())])
    assert run["result"] == SUCCEEDED and run["failedShards"] == [] and run["filesUploaded"] == 6


def test_a_shard_without_summary_or_pod_fails_the_run():
    pods = [shard_pod(0, summary()), shard_pod(2, summary())]
    run = sharded_last_run(run_job(outcome="Failed", completed="0,2", failed="1"), pods)
    assert run["result"] == FAILED and run["failedShards"] == [1]
    assert "no summary" in run["message"]


def test_a_refused_recycle_makes_the_run_partial_with_its_reason():
    pods = [shard_pod(i, summary()) for i in range(3)]
    refused = json.dumps({"result": "partial", "files_recycled": 0, "recycle_blocked": "over the cap of 1"})
    run = sharded_last_run(run_job(), pods, recycle_job("Failed"), [shard_pod(0, refused, exit_code=1)])
    assert run["result"] == PARTIAL and run["recycleResult"] == PARTIAL and run["failedShards"] == []
    assert run["message"] == "recycle: over the cap of 1"


def test_a_recycle_step_that_could_not_be_made_is_partial():
    pods = [shard_pod(i, summary()) for i in range(3)]
    run = sharded_last_run(run_job(), pods, None, recycle_skipped="the S3Backup's spec is not valid now")
    assert run["result"] == PARTIAL and run["recycleResult"] == SKIPPED
    assert "recycle step not run" in run["message"]
