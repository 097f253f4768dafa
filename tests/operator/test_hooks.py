"""spec.hooks.before: an init container of the backup pod, and a failed hook as a failed run (pure functions)."""

from __future__ import annotations

import pytest
from s3backup_operator.events import run_event
from s3backup_operator.render import render_cronjob, render_run_now_job
from s3backup_operator.spec import InvalidSpec, parse
from s3backup_operator.status import FAILED, SUCCEEDED, last_run

from tests.operator.conftest import TEST_IMAGE, example, make_backup
from tests.operator.test_status import SUMMARY, job

HOOK = {"before": {"command": ["sh", "-c", "echo dump > /data/dump.sql"]}}


def _pod(manifest):
    spec = manifest["spec"]
    return (spec["jobTemplate"]["spec"] if manifest["kind"] == "CronJob" else spec)["template"]["spec"]


def test_the_hook_is_an_init_container_with_the_pods_volumes_and_no_credentials(config):
    backup = make_backup(hooks=HOOK, job={"env": [{"name": "PGHOST", "value": "db"}],
                                          "proxy": {"httpsProxy": "http://proxy:3128"}})
    for manifest in (render_cronjob(parse(backup), config), render_run_now_job(parse(backup), config, "1")):
        pod = _pod(manifest)
        [hook] = pod["initContainers"]
        [sync] = pod["containers"]
        assert hook["name"] == "hook-before"
        assert hook["image"] == TEST_IMAGE == sync["image"]
        assert hook["command"] == ["sh", "-c", "echo dump > /data/dump.sql"] and "args" not in hook
        assert hook["volumeMounts"] == [{"name": "source", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}]
        assert sync["volumeMounts"][0] == {"name": "source", "mountPath": "/data", "readOnly": True}
        assert hook["securityContext"] == sync["securityContext"]
        names = [item["name"] for item in hook["env"]]
        assert names == ["HTTPS_PROXY", "TMPDIR", "HOME", "PGHOST"]
        assert not any(name.startswith("AWS_") for name in names)
        assert any(item["name"] == "AWS_SECRET_ACCESS_KEY" for item in sync["env"])


def test_without_a_hook_there_is_no_init_container(config):
    assert "initContainers" not in _pod(render_cronjob(parse(make_backup()), config))


def test_the_hook_may_name_its_own_image(config):
    pod = _pod(render_cronjob(parse(example("s3backup-dump-hook.yaml")), config))
    assert pod["initContainers"][0]["image"] == "postgres:17"
    assert pod["containers"][0]["image"] == TEST_IMAGE
    assert pod["volumes"][0] == {"name": "source", "emptyDir": {"sizeLimit": "20Gi"}}


@pytest.mark.parametrize("hooks", [{"before": {"command": []}}, {"before": {"command": "pg_dump"}},
                                   {"before": {"command": ["a\0b"]}}, {"before": {"command": ["x"], "image": "a b"}}])
def test_a_bad_hook_is_an_invalid_spec(hooks):
    with pytest.raises(InvalidSpec) as raised:
        parse(make_backup(hooks=hooks))
    assert raised.value.reason == "InvalidSpec" and "spec.hooks.before" in raised.value.message


def hook_pod(exit_code, finished, sync=None):
    """A backup pod whose hook ended with `exit_code`; the sync container's state `sync` (None: never started)."""
    sync_state = sync or {"waiting": {"reason": "PodInitializing"}}
    return {"metadata": {"name": f"p-{finished}"}, "status": {
        "initContainerStatuses": [{"name": "hook-before", "state": {"terminated": {
            "exitCode": exit_code, "message": "FATAL: password authentication failed for user secret-user",
            "startedAt": "2026-11-26T02:44:01Z", "finishedAt": finished}}}],
        "containerStatuses": [{"name": "s3backup", "state": sync_state}]}}


def test_a_failed_hook_fails_the_run_with_its_reason_and_never_its_output():
    pods = [hook_pod(2, "2026-11-26T02:44:05Z"), hook_pod(3, "2026-11-26T02:44:20Z")]
    run = last_run(job(outcome="Failed"), pods)
    assert run["result"] == FAILED
    assert run["reason"] == "HookFailed"
    assert run["exitCode"] == 3  # the latest attempt
    assert "spec.hooks.before exited with code 3" in run["message"]
    assert "secret-user" not in str(run)
    event = run_event({"metadata": {"name": "db-dumps", "namespace": "backups", "uid": "u"}}, run,
                      "2026-11-26T02:45:00Z")
    assert (event["type"], event["reason"]) == ("Warning", "HookFailed")
    assert "secret-user" not in event["message"]


def test_a_hook_that_failed_once_then_passed_is_not_the_runs_reason():
    import json
    done = {"terminated": {"exitCode": 0, "message": json.dumps(SUMMARY), "startedAt": "2026-11-26T02:44:21Z",
                           "finishedAt": "2026-11-26T02:44:29Z"}}
    pods = [hook_pod(2, "2026-11-26T02:44:05Z"), hook_pod(0, "2026-11-26T02:44:20Z", sync=done)]
    run = last_run(job(), pods)
    assert run["result"] == SUCCEEDED and "reason" not in run and run["filesUploaded"] == 3
    killed = {"terminated": {"exitCode": 137, "startedAt": "2026-11-26T02:44:21Z",
                             "finishedAt": "2026-11-26T02:44:29Z"}}
    pods = [hook_pod(2, "2026-11-26T02:44:05Z"), hook_pod(0, "2026-11-26T02:44:20Z", sync=killed)]
    run = last_run(job(outcome="Failed"), pods)
    assert run["result"] == FAILED and "reason" not in run and run["exitCode"] == 137
