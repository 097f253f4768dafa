"""The admin's policy and the pod settings a spec may not ask for: pure functions over the parsed spec."""

from __future__ import annotations

from typing import Any

import pytest
from s3backup_operator import policy
from s3backup_operator.config import Allowance, OperatorConfig, Policy
from s3backup_operator.render import render_cronjob, render_run_now_job
from s3backup_operator.spec import InvalidSpec, parse

from tests.operator.conftest import make_backup
from tests.operator.test_render import _pod, restricted_violations

HOST_PATH = {"hostPath": {"path": "/var/backups", "type": "Directory"}}
NFS = {"nfs": {"server": "nfs.example.com", "path": "/exports"}}


def refusal(backup: dict[str, Any], rules: Policy) -> str | None:
    try:
        policy.check(parse(backup), rules)
    except InvalidSpec as problem:
        assert problem.reason == "NotAllowed"
        return problem.message
    return None


@pytest.mark.parametrize("volume", [HOST_PATH, NFS, {"iscsi": {"targetPortal": "10.0.0.1:3260", "iqn": "x", "lun": 0}}])
def test_privileged_volumes_are_refused_by_default(volume):
    message = refusal(make_backup(source={"volume": volume}), Policy())
    assert message and f"spec.source.volume.{next(iter(volume))}" in message and "'backups'" in message


@pytest.mark.parametrize("volume", [{"persistentVolumeClaim": {"claimName": "data"}},
                                    {"csi": {"driver": "example.csi", "readOnly": True}},
                                    {"ephemeral": {"volumeClaimTemplate": {"spec": {}}}}])
def test_volumes_of_the_restricted_standard_are_always_fine(volume):
    assert refusal(make_backup(source={"volume": volume}), Policy()) is None


def test_host_path_allowed_everywhere_or_in_listed_namespaces():
    backup = make_backup(namespace="backups", source={"volume": HOST_PATH})
    assert refusal(backup, Policy(host_path=Allowance(everywhere=True))) is None
    assert refusal(backup, Policy(host_path=Allowance(namespaces=frozenset({"backups"})))) is None
    assert refusal(backup, Policy(host_path=Allowance(namespaces=frozenset({"other"})))) is not None
    # each feature has its own allowance
    assert refusal(backup, Policy(unrestricted_volumes=Allowance(everywhere=True))) is not None
    nfs = make_backup(source={"volume": NFS})
    assert refusal(nfs, Policy(unrestricted_volumes=Allowance(namespaces=frozenset({"backups"})))) is None
    assert refusal(nfs, Policy(host_path=Allowance(everywhere=True))) is not None


def test_service_account_name_needs_the_admin():
    backup = make_backup(job={"serviceAccountName": "s3-writer"})
    message = refusal(backup, Policy())
    assert message == ("spec.job.serviceAccountName 's3-writer' is not allowed in namespace 'backups' by the "
                       "operator's policy (ask the cluster admin: chart values policy.*)")
    assert refusal(backup, Policy(service_account_name=Allowance(namespaces=frozenset({"backups"})))) is None
    assert refusal(make_backup(), Policy()) is None


@pytest.mark.parametrize(("text", "everywhere", "namespaces"), [
    ("", False, set()), ("false", False, set()), ("*", True, set()), ("true", True, set()),
    ("a, b,", False, {"a", "b"}),
])
def test_allowances_from_the_environment(text, everywhere, namespaces):
    allowance = Allowance.parse(text)
    assert (allowance.everywhere, set(allowance.namespaces)) == (everywhere, namespaces)
    config = OperatorConfig.from_env({"S3BACKUP_ALLOW_HOST_PATH": text, "S3BACKUP_ALLOW_SERVICE_ACCOUNT_NAME": "x"})
    assert config.policy.host_path == allowance
    assert config.policy.service_account_name.allows("x") and not config.policy.service_account_name.allows("y")
    assert config.policy.unrestricted_volumes == Allowance()


@pytest.mark.parametrize(("job", "reason", "words"), [
    ({"env": [{"name": "AWS_ACCESS_KEY_ID", "value": "mine"}]}, "ReservedEnv", "AWS_ACCESS_KEY_ID"),
    ({"env": [{"name": "aws_secret_access_key", "value": "x"}]}, "ReservedEnv", "aws_secret_access_key"),
    ({"env": [{"name": "AWS_ENDPOINT_URL", "value": "https://evil"}]}, "ReservedEnv", "AWS_ENDPOINT_URL"),
    ({"env": [{"name": "HOME", "value": "/"}]}, "ReservedEnv", "HOME"),
    ({"env": [{"name": "https_proxy", "value": "http://p"}]}, "ReservedEnv", "https_proxy"),
    ({"env": [{"name": "TZ", "value": "UTC"}, {"name": "TZ", "value": "CET"}]}, "InvalidSpec", "twice"),
    ({"env": [{"name": "1X", "value": "x"}]}, "InvalidSpec", "invalid name"),
    ({"podLabels": {"s3backup.dev/backup": "other"}}, "InvalidSpec", "s3backup.dev/backup"),
    ({"podLabels": {"app.kubernetes.io/managed-by": "me"}}, "InvalidSpec", "managed-by"),
    ({"podLabels": {"job-name": "x"}}, "InvalidSpec", "job-name"),
    ({"podLabels": {"team": "has space"}}, "InvalidSpec", "invalid value"),
    ({"podLabels": {"bad key!": "x"}}, "InvalidSpec", "invalid key"),
    ({"podAnnotations": {"container.apparmor.security.beta.kubernetes.io/s3backup": "unconfined"}},
     "InvalidSpec", "security settings"),
    ({"podAnnotations": {"s3backup.dev/run-now": "1"}}, "InvalidSpec", "not allowed"),
    ({"priorityClassName": "system-cluster-critical"}, "NotAllowed", "reserved"),
    ({"priorityClassName": "Not_A_Name"}, "InvalidSpec", "invalid name"),
    ({"podSecurityContext": {"runAsUser": 0}}, "InvalidSpec", "root"),
    ({"proxy": {"httpsProxy": "http://a\nb"}}, "InvalidSpec", "one line"),
])
def test_pod_settings_that_would_override_the_operator_are_refused(job, reason, words):
    with pytest.raises(InvalidSpec) as caught:
        parse(make_backup(job=job))
    assert caught.value.reason == reason and words in caught.value.message


def test_a_ca_bundle_names_exactly_one_source():
    refs = {"configMapKeyRef": {"name": "ca"}, "secretKeyRef": {"name": "ca"}}
    backup = make_backup()
    backup["spec"]["destination"]["caBundle"] = refs
    with pytest.raises(InvalidSpec, match="exactly one"):
        parse(backup)


def test_a_ca_bundle_from_a_secret_is_mounted_read_only_and_named_by_aws_ca_bundle(config):
    backup = make_backup()
    backup["spec"]["destination"]["caBundle"] = {"secretKeyRef": {"name": "tls", "key": "bundle.pem"}}
    pod = _pod(render_cronjob(parse(backup), config))
    assert {"name": "ca-bundle", "secret": {"secretName": "tls", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}} \
        in pod["volumes"]
    [container] = pod["containers"]
    assert {"name": "ca-bundle", "mountPath": "/etc/s3backup/ca", "readOnly": True} in container["volumeMounts"]
    assert {"name": "AWS_CA_BUNDLE", "value": "/etc/s3backup/ca/ca.crt"} in container["env"]
    assert restricted_violations(pod) == []


def test_without_pod_settings_nothing_extra_is_rendered(config):
    pod = _pod(render_cronjob(parse(make_backup()), config))
    assert "priorityClassName" not in pod and [v["name"] for v in pod["volumes"]] == ["source", "tmp"]
    assert {env["name"] for env in pod["containers"][0]["env"]} == {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TMPDIR", "HOME"}


def test_extra_env_comes_after_the_operator_env_and_may_read_a_secret(config):
    extra = [{"name": "TZ", "value": "UTC"}, {"name": "DB_PASSWORD_FILE",
                                              "valueFrom": {"secretKeyRef": {"name": "db", "key": "file"}}}]
    [container] = _pod(render_cronjob(parse(make_backup(job={"env": extra, "proxy": {"httpProxy": "http://p:3128"}})),
                                      config))["containers"]
    names = [env["name"] for env in container["env"]]
    assert names == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HTTP_PROXY", "TMPDIR", "HOME", "TZ",
                     "DB_PASSWORD_FILE"]


def test_run_now_pods_keep_the_user_labels_and_annotations(config):
    backup = make_backup(job={"podLabels": {"team": "db"}, "podAnnotations": {"sidecar.istio.io/inject": "false"}})
    template = render_run_now_job(parse(backup), config, "1")["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "db"
    assert template["metadata"]["labels"]["s3backup.dev/trigger"] == "run-now"
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
