"""S3Restore, pure: the CRD (and its drift from the S3Backup's), the parse, the Job it renders, its status."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from s3backup_operator.config import Allowance, OperatorConfig, Policy
from s3backup_operator.events import restore_event
from s3backup_operator.policy import check_job
from s3backup_operator.render import CONTAINER_SECURITY_CONTEXT, TERMINATION_LOG, render_cronjob
from s3backup_operator.restore_render import render_restore_job, restore_args, restore_job_name
from s3backup_operator.restore_spec import parse_restore, resolve_as_of
from s3backup_operator.restore_status import restore_message, restore_progress, restore_status_patch
from s3backup_operator.spec import InvalidSpec, parse

from tests.operator.conftest import ROOT, TEST_IMAGE, example, make_backup, option
from tests.operator.schema_tools import apply_defaults, validate_builtin, validator

RESTORE_CRD_PATH = ROOT / "crds" / "s3backup.dev_s3restores.yaml"
CONFIG = OperatorConfig(image=TEST_IMAGE)


def restore_crd() -> dict[str, Any]:
    return yaml.safe_load(Path(RESTORE_CRD_PATH).read_text())


def restore_schema() -> dict[str, Any]:
    return restore_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def make_restore(name: str = "get-it-back", namespace: str = "backups", **spec: Any) -> dict[str, Any]:
    """An S3Restore as the API server stores it (its schema's defaults applied), created at a fixed time."""
    body = {"apiVersion": "s3backup.dev/v1alpha1", "kind": "S3Restore",
            "metadata": {"name": name, "namespace": namespace, "uid": "restore-uid",
                         "creationTimestamp": "2026-11-27T12:00:00Z"},
            "spec": {"backupRef": {"name": "db-dumps"}, "target": {"persistentVolumeClaim": {"claimName": "fresh"}},
                     **copy.deepcopy(spec)}}
    return apply_defaults(body, restore_schema())


SOURCE = {"bucket": "archive", "prefix": "team/db", "endpoint": "https://minio.example:9000", "forcePathStyle": True,
          "credentialsSecretRef": {"name": "minio-keys"}}


# --- the CRD -------------------------------------------------------------------------------------------

def test_crd_is_valid_and_structural():
    crd = restore_crd()
    validate_builtin(crd)
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "s3restores.s3backup.dev" and crd["spec"]["names"]["shortNames"] == ["s3r"]
    assert version["subresources"] == {"status": {}}
    columns = [column["name"] for column in version["additionalPrinterColumns"] if not column.get("priority")]
    assert columns == ["Backup", "PVC", "Phase", "Restored", "Failed", "Age"]
    rules = [rule["rule"] for rule in version["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validations"]]
    assert rules == ["has(self.backupRef) != has(self.source)", "self == oldSelf"]


def _without(properties: dict[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in properties.items() if key not in names}


def test_source_and_job_blocks_are_the_s3backups(crd_schema):
    """No drift: `source` is the S3Backup's destination without the upload-only fields, `job` its job
    without the CronJob-only ones (and without backoffLimit's default, so a backupRef's value shows through)."""
    backup, restore = crd_schema["properties"]["spec"]["properties"], restore_schema()["properties"]["spec"][
        "properties"]
    assert restore["source"]["properties"] == _without(backup["destination"]["properties"],
                                                       "storageClass", "sse", "sseKmsKeyId")
    backup_job = _without(backup["job"]["properties"], "startingDeadlineSeconds", "successfulJobsHistoryLimit",
                          "failedJobsHistoryLimit", "backoffLimit")
    assert _without(restore["job"]["properties"], "backoffLimit") == backup_job
    assert "default" not in restore["job"] and "default" not in restore["job"]["properties"]["backoffLimit"]
    assert _without(restore["target"]["properties"]["subPath"], "description") == _without(
        backup["source"]["properties"]["subPath"], "description")


def test_example_passes_the_schema_and_parses():
    manifest = example("s3restore.yaml")
    validator(restore_schema()).validate(manifest)
    backup = example("s3backup-basic.yaml")
    spec = parse_restore(apply_defaults(manifest, restore_schema()), backup)
    assert spec.source.url == "s3://my-backups/cluster-a/db" and spec.target.claim_name == "dumps-restored"


@pytest.mark.parametrize("as_of", ["3d", "2026-11-01T00:00:00Z", "2026-11-01T00:00:00.5+01:00"])
def test_as_of_pattern_accepts(as_of):
    assert validator(restore_schema()).is_valid(make_restore(asOf=as_of))


@pytest.mark.parametrize("spec", [
    {"asOf": "yesterday"}, {"asOf": "2026-11-01T00:00:00"}, {"target": {}},
    {"target": {"persistentVolumeClaim": {"claimName": "fresh"}, "subPath": "../etc"}},
    {"transfer": {"concurrency": 0}}, {"include": ["/"]}, {"source": {"bucket": "A"}},
])
def test_schema_rejects(spec):
    assert not validator(restore_schema()).is_valid(make_restore(**spec))


# --- parse ---------------------------------------------------------------------------------------------

def test_backup_ref_reuses_the_backups_destination_and_job_settings():
    backup = make_backup(destination={**SOURCE, "caBundle": {"configMapKeyRef": {"name": "corp-ca"}}},
                         job={"proxy": {"httpsProxy": "http://proxy:3128"}, "nodeSelector": {"zone": "a"},
                              "backoffLimit": 5, "podSecurityContext": {"runAsUser": 1000, "fsGroup": 2000}})
    spec = parse_restore(make_restore(job={"nodeSelector": {"zone": "b"}}), backup)
    assert spec.source == parse(backup).destination  # the very same parsed object
    assert spec.job.proxy.https_proxy == "http://proxy:3128" and spec.job.backoff_limit == 5
    assert spec.job.node_selector == {"zone": "b"}  # the restore's own setting wins
    assert (spec.job.security.run_as_user, spec.job.security.fs_group) == (1000, 2000)


def test_explicit_source_and_defaults():
    body = make_restore(source=SOURCE)
    del body["spec"]["backupRef"]
    spec = parse_restore(body)
    assert spec.source.url == "s3://archive/team/db" and spec.source.credentials.secret_name == "minio-keys"
    assert spec.concurrency == 8 and spec.job.backoff_limit == 2 and not spec.overwrite
    # A fresh volume's root belongs to root: the pod's group gets it, unless the spec says otherwise.
    assert (spec.job.security.fs_group, spec.job.security.fs_group_change_policy) == (65532, "OnRootMismatch")


def test_as_of_duration_counts_back_from_creation():
    assert resolve_as_of("3d", "2026-11-27T12:00:00Z") == "2026-11-24T12:00:00Z"
    assert resolve_as_of("2026-11-01T01:00:00+01:00", "2026-11-27T12:00:00Z") == "2026-11-01T00:00:00Z"
    assert parse_restore(make_restore(asOf="12h"), make_backup()).as_of == "2026-11-27T00:00:00Z"


@pytest.mark.parametrize(("restore", "backup", "reason", "words"), [
    (make_restore(), None, "BackupNotFound", "S3Backup 'db-dumps' (spec.backupRef) not found"),
    (make_restore(source=SOURCE), make_backup(), "InvalidSpec", "exactly one of backupRef, source"),
    (make_restore(asOf="soon"), make_backup(), "InvalidSpec", "spec.asOf"),
    (make_restore(include=["/"]), make_backup(), "InvalidSpec", "spec.include"),
    (make_restore(job={"env": [{"name": "AWS_ACCESS_KEY_ID", "value": "x"}]}), make_backup(), "ReservedEnv",
     "spec.job.env"),
    (make_restore(), make_backup(job={"podSecurityContext": {"runAsUser": 0}}), "InvalidSpec",
     "S3Backup 'db-dumps': spec.job.podSecurityContext.runAsUser"),
    (make_restore(target={"persistentVolumeClaim": {"claimName": "x"}, "subPath": "a/../../b"}), make_backup(),
     "InvalidSubPath", "spec.target.subPath"),
])
def test_invalid_specs_name_the_field(restore, backup, reason, words):
    with pytest.raises(InvalidSpec) as raised:
        parse_restore(restore, backup)
    assert raised.value.reason == reason and words in raised.value.message, raised.value.message


def test_policy_refuses_a_service_account_unless_allowed():
    spec = parse_restore(make_restore(job={"serviceAccountName": "restorer"}), make_backup())
    with pytest.raises(InvalidSpec) as raised:
        check_job(spec.job, "backups", Policy())
    assert raised.value.reason == "NotAllowed"
    check_job(spec.job, "backups", Policy(service_account_name=Allowance(namespaces=frozenset({"backups"}))))


# --- render --------------------------------------------------------------------------------------------

def test_render_restore_job():
    backup = make_backup(destination={**SOURCE, "caBundle": {"secretKeyRef": {"name": "ca", "key": "root.pem"}}})
    spec = parse_restore(make_restore(asOf="2026-11-20T00:00:00Z", overwrite=True, include=["*.sql"],
                                      exclude=["-wal"], transfer={"concurrency": 3},
                                      target={"persistentVolumeClaim": {"claimName": "fresh"}, "subPath": "pg"}),
                         backup)
    job = render_restore_job(spec, CONFIG)
    validate_builtin(job)
    assert job["metadata"]["name"] == "get-it-back-restore" and job["kind"] == "Job"
    assert job["metadata"]["labels"]["s3backup.dev/restore"] == "get-it-back"
    assert "s3backup.dev/backup" not in job["metadata"]["labels"]  # not one of the backup's runs
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == [
        "restore", "s3://archive/team/db", "/data/pg", "--endpoint-url=https://minio.example:9000", "--path-style",
        "--as-of=2026-11-20T00:00:00Z", "--overwrite", "--include=*.sql", "--exclude=-wal", "--concurrency=3",
        f"--summary-json={TERMINATION_LOG}"]
    assert option(container["args"], "--exclude") == "-wal"
    # The PVC read-write at /data; the same pinned security settings and connection as the backup pod.
    assert pod["volumes"][0] == {"name": "source", "persistentVolumeClaim": {"claimName": "fresh"}}
    assert {"name": "source", "mountPath": "/data"} in container["volumeMounts"]
    backup_pod = render_cronjob(parse(backup), CONFIG)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert container["securityContext"] == CONTAINER_SECURITY_CONTEXT == backup_pod["containers"][0]["securityContext"]
    assert container["env"] == backup_pod["containers"][0]["env"]  # credentials, AWS_CA_BUNDLE, HOME, TMPDIR
    assert pod["volumes"][2] == backup_pod["volumes"][2]  # the CA bundle
    assert pod["securityContext"] == {**backup_pod["securityContext"], "fsGroup": 65532,
                                      "fsGroupChangePolicy": "OnRootMismatch"}
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    assert "ttlSecondsAfterFinished" not in job["spec"]  # kept: its pod's logs, until the S3Restore goes


def test_minimal_args_and_bounded_name():
    body = make_restore(source={"bucket": "abc"})
    del body["spec"]["backupRef"]
    assert restore_args(parse_restore(body)) == ["restore", "s3://abc", "/data", "--concurrency=8",
                                                 f"--summary-json={TERMINATION_LOG}"]
    long = restore_job_name("r" * 80)
    assert len(long) == 63 and long.endswith("-restore") and long != restore_job_name("r" * 81)


# --- status and Event ----------------------------------------------------------------------------------

SUMMARY = {"command": "restore", "result": "success", "error": "", "files_listed": 5, "files_restored": 4,
           "bytes_restored": 400, "files_unchanged": 1, "files_conflicting": 0, "files_failed": 0, "errors": [],
           "as_of": "2026-11-20T00:00:00Z", "exit_code": 0}


def job(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "get-it-back-restore"}, "status": status}


def pod(summary: dict[str, Any] | None, exit_code: int = 0, finished: str = "2026-11-27T12:05:00Z") -> dict[str, Any]:
    message = json.dumps(summary) if summary else "Traceback...\n"
    return {"status": {"containerStatuses": [{"name": "s3backup", "state": {"terminated": {
        "exitCode": exit_code, "message": message, "finishedAt": finished}}}]}}


def test_phases_from_the_job():
    assert restore_progress(job({}), []) == {"jobName": "get-it-back-restore", "phase": "Pending"}
    assert restore_progress(job({"active": 1, "startTime": "2026-11-27T12:00:05Z"}), [])["phase"] == "Running"
    done = job({"startTime": "2026-11-27T12:00:05Z", "completionTime": "2026-11-27T12:05:00Z",
                "conditions": [{"type": "Complete", "status": "True"}]})
    progress = restore_progress(done, [pod(SUMMARY)])
    assert progress == {"jobName": "get-it-back-restore", "phase": "Succeeded", "result": "Succeeded",
                        "startTime": "2026-11-27T12:00:05Z", "completionTime": "2026-11-27T12:05:00Z",
                        "filesRestored": 4, "bytesRestored": 400, "filesUnchanged": 1, "filesConflicting": 0,
                        "filesFailed": 0, "restoredAsOf": "2026-11-20T00:00:00Z", "exitCode": 0}


def test_partial_and_failed():
    failed_job = job({"failed": 3, "conditions": [{"type": "Failed", "status": "True",
                                                   "lastTransitionTime": "2026-11-27T12:09:00Z"}]})
    partial = {**SUMMARY, "result": "partial", "files_conflicting": 2, "exit_code": 1,
               "errors": ["a.sql: exists and differs (use --overwrite)"]}
    progress = restore_progress(failed_job, [pod(SUMMARY, finished="2026-11-27T12:01:00Z"),
                                             pod(partial, 1, finished="2026-11-27T12:08:00Z")])
    assert (progress["phase"], progress["result"], progress["filesConflicting"]) == ("Failed", "Partial", 2)
    assert progress["completionTime"] == "2026-11-27T12:08:00Z"  # the last attempt's end
    assert "set spec.overwrite" in restore_message(progress)
    killed = restore_progress(failed_job, [pod(None, 137)])
    assert (killed["result"], killed["filesRestored"], killed["exitCode"]) == ("Failed", 0, 137)
    assert killed["message"] == "no summary from the restore (see the pod's logs)"


def test_status_patch_moves_forward_only():
    running = restore_progress(job({"active": 1, "startTime": "2026-11-27T12:00:05Z"}), [])
    first = restore_status_patch({}, running, "r")
    kinds = {c["type"]: (c["status"], c["reason"]) for c in first["conditions"]}
    assert first["phase"] == "Running" and kinds == {"Ready": ("True", "JobCreated"), "Restored": ("False", "Running")}
    assert restore_status_patch({**first}, running, "r") == {}
    done = restore_progress(job({"completionTime": "2026-11-27T12:05:00Z",
                                 "conditions": [{"type": "Complete", "status": "True"}]}), [pod(SUMMARY)])
    final = restore_status_patch(first, done, "r")
    [restored] = [c for c in final["conditions"] if c["type"] == "Restored"]
    assert (restored["status"], restored["reason"]) == ("True", "Succeeded")
    # Finished is final: a replayed Job event (say, of an earlier state) changes nothing.
    assert restore_status_patch({**first, **final}, running, "r") == {}


def test_event_per_outcome():
    restore = make_restore()
    done = restore_progress(job({"completionTime": "2026-11-27T12:05:00Z",
                                 "conditions": [{"type": "Complete", "status": "True"}]}), [pod(SUMMARY)])
    event = restore_event(restore, done, restore_message(done), "2026-11-27T13:00:00Z")
    assert (event["type"], event["reason"]) == ("Normal", "RestoreSucceeded")
    assert event["involvedObject"]["kind"] == "S3Restore" and event["involvedObject"]["uid"] == "restore-uid"
    assert event["message"].startswith("Job get-it-back-restore succeeded: 4 files (400 bytes) restored")
    assert event == restore_event(restore, done, restore_message(done), "later")  # same name: posted once
    for result, reason in (("Partial", "RestorePartial"), ("Failed", "RestoreFailed")):
        other = restore_event(restore, {**done, "result": result}, "m", "now")
        assert (other["type"], other["reason"]) == ("Warning", reason)
