"""Rendering S3Backup -> CronJob / run-now Job: pure functions, plain data."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from s3backup_operator.config import OperatorConfig
from s3backup_operator.render import (
    InvalidSpec,
    cronjob_name,
    merge_patch,
    monitored_interval,
    render_cronjob,
    render_run_now_job,
    run_now_job_name,
    spec_hash,
    validate,
)

from tests.operator.conftest import TEST_IMAGE, example, make_backup
from tests.operator.schema_tools import validate_builtin


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    return (spec["jobTemplate"]["spec"] if manifest["kind"] == "CronJob" else spec)["template"]["spec"]


def test_cronjob_for_the_full_example(config):
    backup = example("s3backup-full.yaml")
    cronjob = render_cronjob(backup, config)
    validate_builtin(cronjob)
    spec = cronjob["spec"]
    assert cronjob["metadata"]["name"] == "media-s3backup"
    assert cronjob["metadata"]["namespace"] == "backups"
    assert cronjob["metadata"]["labels"]["s3backup.dev/backup"] == "media"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["timeZone"] == "Europe/Berlin"
    assert spec["suspend"] is False
    assert spec["startingDeadlineSeconds"] == 3600
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 3)
    minute, hour, *rest = spec["schedule"].split()
    assert 0 <= int(minute) <= 59 and 1 <= int(hour) <= 5 and rest == ["*", "*", "*"]
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 2 and job["activeDeadlineSeconds"] == 21600
    assert spec["jobTemplate"]["metadata"]["labels"]["s3backup.dev/backup"] == "media"
    pod = _pod(cronjob)
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "podAffinity" in pod["affinity"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "supplementalGroups": [2000],
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["volumes"] == [
        {"name": "source", "persistentVolumeClaim": {"claimName": "media"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    [container] = pod["containers"]
    assert container["image"] == TEST_IMAGE
    assert container["command"] == ["s3backup"]
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["securityContext"] == {
        "runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
        "privileged": False, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["volumeMounts"] == [
        {"name": "source", "mountPath": "/data", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    assert container["args"] == [
        "sync", "/data/uploads", "s3://media-backups/prod/uploads",
        "--endpoint-url", "https://s3.example.com", "--region", "eu-central-1", "--path-style",
        "--storage-class", "STANDARD_IA", "--sse", "AES256",
        "--compare", "md5", "--recycle-after", "30d", "--max-recycle", "10%",
        "--include", "*.jpg", "--include", "*.png", "--include", "*.mp4",
        "--exclude", "cache/**", "--exclude", "*.tmp",
        "--part-size", "auto", "--concurrency", "8", "--bwlimit", "50MiB",
        "--summary-json", "/dev/termination-log",
        "--pushgateway", "http://pushgateway.monitoring:9091",
        "--backup-name", "media", "--backup-namespace", "backups", "--expected-interval", "1d",
    ]


def test_credentials_are_referenced_never_copied(config):
    backup = make_backup()
    cronjob = render_cronjob(backup, config)
    [container] = _pod(cronjob)["containers"]
    secret_env = {env["name"]: env["valueFrom"]["secretKeyRef"] for env in container["env"] if "valueFrom" in env}
    assert secret_env == {
        "AWS_ACCESS_KEY_ID": {"name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    plain = {env["name"]: env["value"] for env in container["env"] if "value" in env}
    assert plain == {"TMPDIR": "/tmp", "HOME": "/tmp"}


def test_custom_secret_keys(config):
    backup = make_backup()
    backup["spec"]["destination"]["credentialsSecretRef"] = {"name": "minio", "accessKeyIDKey": "user",
                                                             "secretAccessKeyKey": "password"}
    [container] = _pod(render_cronjob(backup, config))["containers"]
    refs = [env["valueFrom"]["secretKeyRef"] for env in container["env"] if "valueFrom" in env]
    assert refs == [{"name": "minio", "key": "user"}, {"name": "minio", "key": "password"}]


def test_without_credentials_secret_nothing_is_injected(config):
    cronjob = render_cronjob(example("s3backup-irsa.yaml"), config)
    pod = _pod(cronjob)
    assert pod["serviceAccountName"] == "s3-backup-writer"
    assert not [env for env in pod["containers"][0]["env"] if "valueFrom" in env]
    assert "--endpoint-url" not in pod["containers"][0]["args"]


def test_minimal_backup_args_and_defaults(config):
    backup = make_backup(destination={"bucket": "abc"})
    cronjob = render_cronjob(backup, config)
    validate_builtin(cronjob)
    args = _pod(cronjob)["containers"][0]["args"]
    assert args[:3] == ["sync", "/data", "s3://abc"]
    assert "--recycle-after" not in args and "--max-recycle" not in args  # nothing remote is ever deleted
    assert "--pushgateway" not in args  # neither spec.metrics nor an operator default
    assert args[args.index("--compare") + 1] == "md5"
    assert args[args.index("--expected-interval") + 1] == "1d"
    assert cronjob["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 2
    assert "activeDeadlineSeconds" not in cronjob["spec"]["jobTemplate"]["spec"]
    assert _pod(cronjob)["securityContext"]["runAsUser"] == 65532


def test_image_pull_secrets_fall_back_to_the_operator_default(config):
    defaulted = OperatorConfig(image=TEST_IMAGE, image_pull_secrets=("regcred",))
    assert _pod(render_cronjob(make_backup(), defaulted))["imagePullSecrets"] == [{"name": "regcred"}]
    assert "imagePullSecrets" not in _pod(render_cronjob(make_backup(), config))
    own = make_backup(job={"imagePullSecrets": [{"name": "mine"}]})
    assert _pod(render_cronjob(own, defaulted))["imagePullSecrets"] == [{"name": "mine"}]
    validate_builtin(render_cronjob(make_backup(), defaulted))


def test_pushgateway_falls_back_to_the_operator_default(config):
    backup = make_backup()
    operator_default = OperatorConfig(image=TEST_IMAGE, default_pushgateway_url="http://pgw.monitoring:9091")
    args = _pod(render_cronjob(backup, operator_default))["containers"][0]["args"]
    assert args[args.index("--pushgateway") + 1] == "http://pgw.monitoring:9091"
    backup["spec"]["metrics"] = {"pushgatewayURL": "http://other:9091/"}
    args = _pod(render_cronjob(backup, operator_default))["containers"][0]["args"]
    assert args[args.index("--pushgateway") + 1] == "http://other:9091"


@pytest.mark.parametrize(("schedule", "interval"), [
    ("@hourly", "1h"), ("@daily", "1d"), ("*/15 * * * *", "15m"), ("0 9 * * 1-5", "3d"), ("@weekly", "1w"),
    ("0 */6 * * *", "6h"), ("H/20 * * * *", "20m"),
])
def test_expected_interval_follows_the_schedule(config, schedule, interval):
    args = _pod(render_cronjob(make_backup(schedule=schedule), config))["containers"][0]["args"]
    assert args[args.index("--expected-interval") + 1] == interval


def test_hashed_schedule_is_stable_and_spreads(config):
    first = render_cronjob(make_backup(name="a", schedule="H H * * *"), config)["spec"]["schedule"]
    assert render_cronjob(make_backup(name="a", schedule="H H * * *"), config)["spec"]["schedule"] == first
    schedules = {render_cronjob(make_backup(name=f"db-{i}", schedule="H H * * *"), config)["spec"]["schedule"]
                 for i in range(100)}
    assert len(schedules) > 80  # 1440 slots: a few collisions at most
    other_namespace = render_cronjob(make_backup(name="a", namespace="other", schedule="H H * * *"), config)
    assert other_namespace["spec"]["schedule"] != first  # the namespace is part of the identity


def test_suspend_is_passed_through(config):
    assert render_cronjob(make_backup(suspend=True), config)["spec"]["suspend"] is True


def test_sub_path_and_prefix_are_normalised(config):
    backup = make_backup()
    backup["spec"]["source"]["subPath"] = "a/b/"
    backup["spec"]["destination"]["prefix"] = "x/y/"
    args = _pod(render_cronjob(backup, config))["containers"][0]["args"]
    assert args[1:3] == ["/data/a/b", "s3://my-backups/x/y"]


@pytest.mark.parametrize(("change", "reason"), [
    ({"schedule": "61 * * * *"}, "InvalidSchedule"),
    ({"schedule": "0 0 31 2 *"}, "InvalidSchedule"),  # never runs
    ({"schedule": "TZ=UTC 0 0 * * *"}, "InvalidSchedule"),
    ({"schedule": "H(30-10) * * * *"}, "InvalidSchedule"),
    ({"timeZone": "Mars/Olympus_Mons"}, "InvalidTimeZone"),
    ({"destination": {"bucket": "abc", "sseKmsKeyId": "key-1"}}, "InvalidSpec"),
    ({"destination": {"bucket": "abc", "sse": "AES256", "sseKmsKeyId": "key-1"}}, "InvalidSpec"),
])
def test_what_the_schema_cannot_catch_is_an_invalid_spec(config, change, reason):
    backup = make_backup(**change)
    with pytest.raises(InvalidSpec) as caught:
        validate(backup)
    assert caught.value.reason == reason
    with pytest.raises(InvalidSpec):
        render_cronjob(backup, config)


def test_kms_key_with_kms_encryption_is_fine(config):
    backup = make_backup(destination={"bucket": "abc", "sse": "aws:kms", "sseKmsKeyId": "key-1"})
    args = _pod(render_cronjob(backup, config))["containers"][0]["args"]
    assert args[args.index("--sse") + 1] == "aws:kms" and args[args.index("--sse-kms-key-id") + 1] == "key-1"


def test_names_stay_within_kubernetes_limits(config):
    long = "x" * 60 + "-backup"
    assert cronjob_name("db") == "db-s3backup"
    assert len(cronjob_name(long)) == 52 and cronjob_name(long).endswith("-s3backup")
    assert cronjob_name(long) != cronjob_name(long + "2")
    assert len(run_now_job_name(long, "now")) <= 63
    assert run_now_job_name("db", "1") == run_now_job_name("db", "1") != run_now_job_name("db", "2")
    validate_builtin(render_cronjob(make_backup(name=long), config))
    validate_builtin(render_run_now_job(make_backup(name=long), config, "1"))


def test_run_now_job_uses_the_same_pod_template(config):
    backup = make_backup()
    cronjob = render_cronjob(backup, config)
    job = render_run_now_job(backup, config, "2026-11-26T10:00:00Z")
    validate_builtin(job)
    assert job["spec"]["template"]["spec"] == cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert job["metadata"]["labels"]["s3backup.dev/trigger"] == "run-now"
    assert job["metadata"]["annotations"]["s3backup.dev/run-now"] == "2026-11-26T10:00:00Z"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_spec_hash_changes_only_with_the_spec(config):
    base = render_cronjob(make_backup(), config)
    assert spec_hash(base) == spec_hash(render_cronjob(make_backup(), config))
    assert spec_hash(base) == base["metadata"]["annotations"]["s3backup.dev/spec-hash"]
    changed = render_cronjob(make_backup(transfer={"concurrency": 9}), config)
    assert spec_hash(changed) != spec_hash(base)
    other_image = render_cronjob(make_backup(), OperatorConfig(image="other:1"))
    assert spec_hash(other_image) != spec_hash(base)


def _apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as kube-apiserver applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _apply_merge_patch(result.get(key), value)
    return result


def test_merge_patch_turns_live_into_desired(config):
    old_backup = example("s3backup-full.yaml")
    new_backup = copy.deepcopy(old_backup)
    del new_backup["spec"]["job"]["nodeSelector"]
    del new_backup["spec"]["job"]["tolerations"]
    new_backup["spec"]["transfer"]["concurrency"] = 2
    live = render_cronjob(old_backup, config)["spec"]
    live["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # a server-side default
    desired = render_cronjob(new_backup, config)["spec"]
    patch = merge_patch(live, desired)
    assert _apply_merge_patch(live, patch) == desired
    pod_patch = patch["jobTemplate"]["spec"]["template"]["spec"]
    assert pod_patch["nodeSelector"] is None and pod_patch["tolerations"] is None
    assert "schedule" not in patch  # unchanged fields are left out
    assert json.dumps(merge_patch(desired, desired)) == "{}"


def test_monitored_interval_is_the_pushed_one_and_only_when_runs_push():
    """What the operator exports for S3BackupNeverRan: the --expected-interval its jobs push, else None."""
    pushing = OperatorConfig(image=TEST_IMAGE, default_pushgateway_url="http://pgw:9091")
    silent = OperatorConfig(image=TEST_IMAGE)
    backup = make_backup(schedule="H 2 * * *")
    args = render_cronjob(backup, pushing)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--expected-interval") + 1] == "1d"
    assert monitored_interval(backup, pushing) == 86400
    assert monitored_interval(backup, silent) is None  # its runs push nowhere
    own_gateway = make_backup(schedule="*/15 * * * *", metrics={"pushgatewayURL": "http://pgw:9091"})
    assert monitored_interval(own_gateway, silent) == 900
    assert monitored_interval(make_backup(schedule="61 * * * *"), pushing) is None  # invalid: no runs at all
