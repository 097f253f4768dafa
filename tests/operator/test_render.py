"""Rendering S3Backup -> CronJob / run-now Job: pure functions, plain data."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from s3backup_operator.config import OperatorConfig
from s3backup_operator.render import cronjob_name, render_cronjob, render_run_now_job, run_now_job_name
from s3backup_operator.spec import InvalidSpec, parse, schedule_interval
from s3backup_syncer import cli
from s3backup_syncer.config import RecycleCap
from s3backup_syncer.filters import Filters

from tests.operator.conftest import TEST_IMAGE, example, make_backup, option
from tests.operator.schema_tools import validate_builtin


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    return (spec["jobTemplate"]["spec"] if manifest["kind"] == "CronJob" else spec)["template"]["spec"]


def test_cronjob_for_the_full_example(config):
    backup = example("s3backup-full.yaml")
    cronjob = render_cronjob(parse(backup), config)
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
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch", "supplementalGroups": [2000],
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["priorityClassName"] == "backup"
    assert pod["volumes"] == [
        {"name": "source", "persistentVolumeClaim": {"claimName": "media"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "ca-bundle", "configMap": {"name": "corporate-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    ]
    template = spec["jobTemplate"]["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "media"
    assert template["metadata"]["labels"]["s3backup.dev/backup"] == "media"
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
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
        {"name": "ca-bundle", "mountPath": "/etc/s3backup/ca", "readOnly": True},
    ]
    plain_env = {env["name"]: env["value"] for env in container["env"] if "value" in env}
    assert plain_env == {"AWS_CA_BUNDLE": "/etc/s3backup/ca/ca.crt", "HTTPS_PROXY": "http://proxy.example.com:3128",
                         "NO_PROXY": ".svc,.cluster.local,10.0.0.0/8", "TMPDIR": "/tmp", "HOME": "/tmp",
                         "TZ": "Europe/Berlin"}
    assert container["args"] == [
        "sync", "/data/uploads", "s3://media-backups/prod/uploads",
        "--endpoint-url=https://s3.example.com", "--region=eu-central-1", "--path-style",
        "--storage-class=STANDARD_IA", "--sse=AES256",
        "--compare=md5", "--recycle-after=30d", "--max-recycle=10%",
        "--include=*.jpg", "--include=*.png", "--include=*.mp4",
        "--exclude=cache/**", "--exclude=*.tmp",
        "--part-size=auto", "--concurrency=8", "--bwlimit=50MiB",
        "--summary-json=/dev/termination-log",
        "--pushgateway=http://pushgateway.monitoring:9091",
        "--backup-name=media", "--backup-namespace=backups", "--expected-interval=1d",
    ]


def test_credentials_are_referenced_never_copied(config):
    backup = make_backup()
    cronjob = render_cronjob(parse(backup), config)
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
    [container] = _pod(render_cronjob(parse(backup), config))["containers"]
    refs = [env["valueFrom"]["secretKeyRef"] for env in container["env"] if "valueFrom" in env]
    assert refs == [{"name": "minio", "key": "user"}, {"name": "minio", "key": "password"}]


def test_without_credentials_secret_nothing_is_injected(config):
    cronjob = render_cronjob(parse(example("s3backup-irsa.yaml")), config)
    pod = _pod(cronjob)
    assert pod["serviceAccountName"] == "s3-backup-writer"
    assert not [env for env in pod["containers"][0]["env"] if "valueFrom" in env]
    assert option(pod["containers"][0]["args"], "--endpoint-url") is None


def test_minimal_backup_args_and_defaults(config):
    backup = make_backup(destination={"bucket": "abc"})
    cronjob = render_cronjob(parse(backup), config)
    validate_builtin(cronjob)
    args = _pod(cronjob)["containers"][0]["args"]
    assert args[:3] == ["sync", "/data", "s3://abc"]
    # nothing remote is ever deleted
    assert option(args, "--recycle-after") is None and option(args, "--max-recycle") is None
    assert option(args, "--pushgateway") is None  # neither spec.metrics nor an operator default
    assert option(args, "--compare") == "md5"
    assert option(args, "--expected-interval") == "1d"
    assert cronjob["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 2
    assert "activeDeadlineSeconds" not in cronjob["spec"]["jobTemplate"]["spec"]
    assert _pod(cronjob)["securityContext"]["runAsUser"] == 65532


def test_image_pull_secrets_fall_back_to_the_operator_default(config):
    defaulted = OperatorConfig(image=TEST_IMAGE, image_pull_secrets=("regcred",))
    assert _pod(render_cronjob(parse(make_backup()), defaulted))["imagePullSecrets"] == [{"name": "regcred"}]
    assert "imagePullSecrets" not in _pod(render_cronjob(parse(make_backup()), config))
    own = make_backup(job={"imagePullSecrets": [{"name": "mine"}]})
    assert _pod(render_cronjob(parse(own), defaulted))["imagePullSecrets"] == [{"name": "mine"}]
    validate_builtin(render_cronjob(parse(make_backup()), defaulted))


def test_pushgateway_falls_back_to_the_operator_default(config):
    backup = make_backup()
    operator_default = OperatorConfig(image=TEST_IMAGE, default_pushgateway_url="http://pgw.monitoring:9091")
    args = _pod(render_cronjob(parse(backup), operator_default))["containers"][0]["args"]
    assert option(args, "--pushgateway") == "http://pgw.monitoring:9091"
    backup["spec"]["metrics"] = {"pushgatewayURL": "http://other:9091/"}
    args = _pod(render_cronjob(parse(backup), operator_default))["containers"][0]["args"]
    assert option(args, "--pushgateway") == "http://other:9091"


@pytest.mark.parametrize(("schedule", "interval"), [
    ("@hourly", "1h"), ("@daily", "1d"), ("*/15 * * * *", "15m"), ("0 9 * * 1-5", "3d"), ("@weekly", "1w"),
    ("0 */6 * * *", "6h"), ("H/20 * * * *", "20m"),
])
def test_expected_interval_follows_the_schedule(config, schedule, interval):
    args = _pod(render_cronjob(parse(make_backup(schedule=schedule)), config))["containers"][0]["args"]
    assert option(args, "--expected-interval") == interval


def test_hashed_schedule_is_stable_and_spreads(config):
    first = render_cronjob(parse(make_backup(name="a", schedule="H H * * *")), config)["spec"]["schedule"]
    assert render_cronjob(parse(make_backup(name="a", schedule="H H * * *")), config)["spec"]["schedule"] == first
    schedules = {render_cronjob(parse(make_backup(name=f"db-{i}", schedule="H H * * *")), config)["spec"]["schedule"]
                 for i in range(100)}
    assert len(schedules) > 80  # 1440 slots: a few collisions at most
    other_namespace = render_cronjob(parse(make_backup(name="a", namespace="other", schedule="H H * * *")), config)
    assert other_namespace["spec"]["schedule"] != first  # the namespace is part of the identity


def test_suspend_is_passed_through(config):
    assert render_cronjob(parse(make_backup(suspend=True)), config)["spec"]["suspend"] is True


def test_sub_path_and_prefix_are_normalised(config):
    backup = make_backup()
    backup["spec"]["source"]["subPath"] = "a/b/"
    backup["spec"]["destination"]["prefix"] = "x/y/"
    args = _pod(render_cronjob(parse(backup), config))["containers"][0]["args"]
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
        parse(backup)
    assert caught.value.reason == reason


def test_kms_key_with_kms_encryption_is_fine(config):
    backup = make_backup(destination={"bucket": "abc", "sse": "aws:kms", "sseKmsKeyId": "key-1"})
    args = _pod(render_cronjob(parse(backup), config))["containers"][0]["args"]
    assert option(args, "--sse") == "aws:kms" and option(args, "--sse-kms-key-id") == "key-1"


def _with(path: str, value: Any) -> dict[str, Any]:
    """make_backup() with spec.<path> set to `value`."""
    backup = make_backup()
    *parents, last = path.split(".")
    node = backup["spec"]
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return backup


def _syncer_options(args: list[str]):
    """What the syncer makes of rendered args: its own argparse parser, option parsers and filters."""
    options = cli.options_from_args(cli.build_parser().parse_args(args))
    Filters(options.includes, options.excludes)
    return options


_ENDPOINT = "spec.destination.endpoint"

# What the syncer refuses (every run would exit 2), refused at render time with the syncer's reason (B9).
SYNCER_REFUSES = {
    "part size of 1 byte": ("transfer.partSize", "1", "spec.transfer.partSize", "5MiB to 5GiB"),
    "part size under 5MiB": ("transfer.partSize", "4M", "spec.transfer.partSize", "5MiB to 5GiB"),
    "part size over 5GiB": ("transfer.partSize", "6G", "spec.transfer.partSize", "5MiB to 5GiB"),
    "part size not a size": ("transfer.partSize", "big", "spec.transfer.partSize", "invalid size"),
    "bwlimit under 1KiB": ("transfer.bwlimit", "1", "spec.transfer.bwlimit", "at least 1KiB"),
    "max delete over 100%": ("recycle.maxDelete", "200%", "spec.recycle.maxDelete", "at most 100%"),
    "max delete not a number": ("recycle.maxDelete", "many", "spec.recycle.maxDelete", "a count"),
    "recycle age over 1000 years": ("recycle.after", "400000d", "spec.recycle.after", "too long"),
    "bucket with ..": ("destination.bucket", "a..b", "spec.destination", "invalid bucket name"),
    "prefix with //": ("destination.prefix", "a//b", "spec.destination", "empty path segments"),
    "include of only slashes": ("source.include", ["/"], "spec.source.include", "invalid filter pattern"),
    "exclude with a NUL": ("source.exclude", ["a\0b"], "spec.source.exclude[0]", "NUL"),
    "exclude of only --": ("source.exclude", ["*.tmp", "--"], "spec.source.exclude[1]", "'--' alone"),
    "endpoint that is no URL": ("destination.endpoint", "https://[bad", _ENDPOINT, "invalid S3 endpoint"),
    "endpoint with a bad port": ("destination.endpoint", "http://s3:99999", _ENDPOINT, "invalid S3 endpoint"),
    "endpoint with a query": ("destination.endpoint", "http://s3?x=1", _ENDPOINT, "invalid S3 endpoint"),
    "endpoint with an underscore": ("destination.endpoint", "http://s3_x:9000", _ENDPOINT, "invalid S3 endpoint"),
    "region all digits": ("destination.region", "123", "spec.destination.region", "invalid region"),
    "region ending with -": ("destination.region", "eu-", "spec.destination.region", "invalid region"),
    "compare mode unknown to the syncer": ("compare", "sha1", "spec.compare", "use md5 or size"),
    "concurrency over the syncer's 256": ("transfer.concurrency", 300, "spec.transfer.concurrency", "1 to 256"),
}


@pytest.mark.parametrize(("path", "value", "field", "why"), SYNCER_REFUSES.values(), ids=SYNCER_REFUSES.keys())
def test_what_the_syncer_refuses_is_an_invalid_spec_with_its_reason(config, path, value, field, why):
    backup = _with(path, value)
    with pytest.raises(InvalidSpec) as caught:
        render_cronjob(parse(backup), config)
    problem = caught.value
    assert problem.reason == "InvalidSpec"
    assert problem.message.startswith(f"{field}: ") and why in problem.message, problem.message
    assert "\n" not in problem.message
    with pytest.raises(InvalidSpec):
        render_run_now_job(parse(backup), config, "now")


def test_kms_key_without_kms_is_refused_with_the_syncer_rule_too(config):
    """The renderer's own cross-field check runs first; the syncer's (SyncOptions) agrees with it."""
    backup = make_backup(destination={"bucket": "abc", "sse": "AES256", "sseKmsKeyId": "key-1"})
    with pytest.raises(InvalidSpec) as caught:
        render_cronjob(parse(backup), config)
    assert "sseKmsKeyId" in caught.value.message


# Values at the edges of what the syncer accepts: they render, and the syncer takes them as meant.
SYNCER_ACCEPTS = {
    "smallest part size": ("transfer.partSize", "5M", "part_size", 5 * 2**20),
    "largest part size": ("transfer.partSize", "5GiB", "part_size", 5 * 2**30),
    "smallest bwlimit": ("transfer.bwlimit", "1K", "bwlimit", 1024),
    "bwlimit in bytes": ("transfer.bwlimit", "1024", "bwlimit", 1024),
    "max delete 100%": ("recycle.maxDelete", "100%", "recycle_cap", RecycleCap(percent=100)),
    "max delete as a count": ("recycle.maxDelete", "0", "recycle_cap", RecycleCap(count=0)),
    "bucket with single dots": ("destination.bucket", "a.b-c.d", "bucket", "a.b-c.d"),
    "prefix with a trailing slash": ("destination.prefix", "x/y/", "prefix", "x/y/"),
    "exclude starting with -": ("source.exclude", ["-wal", "--x", "-journal"], "excludes", ("-wal", "--x", "-journal")),
    "include starting with -": ("source.include", ["-"], "includes", ("-",)),
    "include with =": ("source.include", ["a=b", "--include=x"], "includes", ("a=b", "--include=x")),
    "unmatched [ is literal": ("source.include", ["["], "includes", ("[",)),
    "IPv6 endpoint": ("destination.endpoint", "http://[::1]:9000", "endpoint_url", "http://[::1]:9000"),
    "endpoint with a path": ("destination.endpoint", "https://s3.example.com/base", "endpoint_url",
                             "https://s3.example.com/base"),
}


@pytest.mark.parametrize(("path", "value", "attribute", "parsed"), SYNCER_ACCEPTS.values(), ids=SYNCER_ACCEPTS.keys())
def test_values_the_syncer_accepts_render_and_reach_it_unchanged(config, path, value, attribute, parsed):
    backup = _with(path, value)
    if path == "recycle.maxDelete":
        backup["spec"]["recycle"]["after"] = "30d"  # the cap is passed only with recycling on
    args = _pod(render_cronjob(parse(backup), config))["containers"][0]["args"]
    assert getattr(_syncer_options(args), attribute) == parsed


def test_every_value_option_is_one_argument_the_syncer_parses(config):
    """`--option=value` throughout: a value starting with "-" cannot be taken for an option."""
    backup = example("s3backup-full.yaml")
    backup["spec"]["destination"].update(sse="aws:kms", sseKmsKeyId="-key")
    backup["spec"]["source"].update(include=["-a", "*.jpg"], exclude=["-wal", "--x", "-"])
    backup["spec"]["transfer"]["partSize"] = "64MiB"
    args = _pod(render_cronjob(parse(backup), config))["containers"][0]["args"]
    flags = {"--path-style", "--follow-symlinks"}
    for arg in args[3:]:
        assert arg.startswith("--") and ("=" in arg or arg in flags), arg
    parsed = cli.build_parser().parse_args(args)
    options = _syncer_options(args)
    assert (options.bucket, options.prefix, str(options.source)) == ("media-backups", "prod/uploads/", "/data/uploads")
    assert options.endpoint_url == "https://s3.example.com" and options.region == "eu-central-1"
    assert options.path_style and options.storage_class == "STANDARD_IA"
    assert (options.sse, options.sse_kms_key_id) == ("aws:kms", "-key")
    assert options.includes == ("-a", "*.jpg") and options.excludes == ("-wal", "--x", "-")
    assert options.recycle_after_seconds == 30 * 86400 and options.recycle_cap == RecycleCap(percent=10)
    assert (options.part_size, options.concurrency, options.bwlimit) == (64 * 2**20, 8, 50 * 2**20)
    assert parsed.summary_json == "/dev/termination-log"
    assert parsed.pushgateway == "http://pushgateway.monitoring:9091"
    assert (parsed.backup_name, parsed.backup_namespace, parsed.expected_interval) == ("media", "backups", "1d")


def test_names_stay_within_kubernetes_limits(config):
    long = "x" * 60 + "-backup"
    assert cronjob_name("db") == "db-s3backup"
    assert len(cronjob_name(long)) == 52 and cronjob_name(long).endswith("-s3backup")
    assert cronjob_name(long) != cronjob_name(long + "2")
    assert len(run_now_job_name(long, "now")) <= 63
    assert run_now_job_name("db", "1") == run_now_job_name("db", "1") != run_now_job_name("db", "2")
    validate_builtin(render_cronjob(parse(make_backup(name=long)), config))
    validate_builtin(render_run_now_job(parse(make_backup(name=long)), config, "1"))


def test_run_now_job_uses_the_same_pod_template(config):
    backup = make_backup()
    cronjob = render_cronjob(parse(backup), config)
    job = render_run_now_job(parse(backup), config, "2026-11-26T10:00:00Z")
    validate_builtin(job)
    assert job["spec"]["template"]["spec"] == cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert job["metadata"]["labels"]["s3backup.dev/trigger"] == "run-now"
    assert job["metadata"]["annotations"]["s3backup.dev/run-now"] == "2026-11-26T10:00:00Z"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_the_exported_interval_is_the_pushed_one_with_or_without_a_pushgateway():
    """What the operator exports for the staleness alerts: the --expected-interval its jobs push (if they
    push at all: the alerts work from the operator's /metrics alone), None for an invalid schedule."""
    pushing = OperatorConfig(image=TEST_IMAGE, default_pushgateway_url="http://pgw:9091")
    backup = make_backup(schedule="H 2 * * *")
    args = _pod(render_cronjob(parse(backup), pushing))["containers"][0]["args"]
    assert option(args, "--expected-interval") == "1d"
    assert schedule_interval(backup) == 86400
    assert schedule_interval(make_backup(schedule="*/15 * * * *")) == 900
    assert schedule_interval(make_backup(schedule="61 * * * *")) is None  # invalid: no runs at all


def test_fs_group_is_set_only_when_asked(config):
    default = _pod(render_cronjob(parse(make_backup()), config))["securityContext"]
    assert default == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                       "seccompProfile": {"type": "RuntimeDefault"}}
    backup = make_backup(job={"podSecurityContext": {"fsGroup": 0}})  # group 0, user still non-root
    pod = _pod(render_cronjob(parse(backup), config))
    assert pod["securityContext"]["fsGroup"] == 0 and pod["securityContext"]["runAsUser"] == 65532
    validate_builtin(render_cronjob(parse(backup), config))


#: The pod-level and container-level rules of the `restricted` Pod Security Standard (Kubernetes 1.25+),
#: https://kubernetes.io/docs/concepts/security/pod-security-standards/ -- the real PodSecurity admission
#: is exercised on the test cluster; this keeps every rendered pod within it without one.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    problems = []
    pod_context = pod.get("securityContext") or {}
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUMES)}")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(field)
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        context = container.get("securityContext") or {}
        merged = {**pod_context, **context}
        if merged.get("runAsNonRoot") is not True:
            problems.append("runAsNonRoot")
        if merged.get("runAsUser") == 0:
            problems.append("runAsUser 0")
        if (merged.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append("seccompProfile")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation")
        if context.get("privileged"):
            problems.append("privileged")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []) or set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append("capabilities")
        if container.get("ports") and any(port.get("hostPort") for port in container["ports"]):
            problems.append("hostPort")
    return problems


@pytest.mark.parametrize("name", ["s3backup-basic.yaml", "s3backup-full.yaml", "s3backup-irsa.yaml",
                                  "s3backup-dump-hook.yaml", "minimal"])
def test_rendered_pods_pass_the_restricted_pod_security_standard(config, name):
    backup = make_backup() if name == "minimal" else example(name)
    assert restricted_violations(_pod(render_cronjob(parse(backup), config))) == []
    assert restricted_violations(_pod(render_run_now_job(parse(backup), config, "1"))) == []


def test_the_restricted_check_can_fail(config):
    pod = _pod(render_cronjob(parse(make_backup()), config))
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert restricted_violations(pod) == ["volume host: ['hostPath']", "allowPrivilegeEscalation"]


def test_the_spec_is_parsed_once_into_a_frozen_object():
    spec = parse(example("s3backup-full.yaml"))
    assert (spec.name, spec.namespace, spec.identity) == ("media", "backups", "backups/media")
    assert spec.source.directory == "/data/uploads" and spec.destination.url == "s3://media-backups/prod/uploads"
    assert spec.job.security.fs_group == 1000 and spec.job.security.supplemental_groups == (2000,)
    assert spec.expected_interval == "1d" and spec.pushgateway("http://default:9091") == spec.pushgateway_url
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]


def test_a_field_of_the_wrong_type_is_an_invalid_spec_not_a_crash():
    """The API server's schema rules this out; the emulator and older clusters do not."""
    with pytest.raises(InvalidSpec) as caught:
        parse(make_backup(transfer={"concurrency": "many"}))
    assert caught.value.message == "spec.transfer.concurrency: must be an integer, not 'many'"
    with pytest.raises(InvalidSpec) as caught:
        parse(make_backup(job={"podSecurityContext": {"fsGroup": "1000"}}))
    assert caught.value.message == "spec.job.podSecurityContext.fsGroup: must be an integer, not '1000'"
