"""Status from finished Jobs and Pods (pure functions)."""

from __future__ import annotations

import json

from s3backup_operator.status import (
    FAILED,
    PARTIAL,
    SUCCEEDED,
    last_run,
    parse_summary,
    ready_update,
    run_blocked_conditions,
    status_patch_for_run,
)

SUMMARY = {
    "result": "success", "error": "", "exit_code": 0, "dry_run": False, "started_at": 1764147600.0,
    "duration_seconds": 12.5, "files_scanned": 10, "bytes_scanned": 1000, "files_uploaded": 3,
    "bytes_uploaded": 300, "files_unchanged": 7, "bytes_unchanged": 700, "files_recycled": 1,
    "bytes_recycled": 10, "files_failed": 0, "bytes_failed": 0, "files_excluded": 0, "bytes_hashed": 300,
    "remote_objects": 10, "remote_bytes": 1000, "recycle_pending": 0, "errors": [],
}


def job(name="db-dumps-s3backup-29400000", outcome="Complete", start="2026-11-26T02:44:00Z",
        end="2026-11-26T02:44:30Z"):
    status = {"startTime": start, "conditions": [{"type": outcome, "status": "True", "lastTransitionTime": end}]}
    if outcome == "Complete":
        status["completionTime"] = end
    return {"metadata": {"name": name, "namespace": "backups"}, "status": status}


def pod(message, exit_code=0, finished="2026-11-26T02:44:29Z"):
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": [{
        "name": "s3backup",
        "state": {"terminated": {"exitCode": exit_code, "message": message, "startedAt": "2026-11-26T02:44:01Z",
                                 "finishedAt": finished}},
    }]}}


def test_a_running_job_has_no_result():
    running = {"metadata": {"name": "j"}, "status": {"active": 1}}
    assert last_run(running, []) is None


def test_success_from_the_summary():
    run = last_run(job(), [pod(json.dumps(SUMMARY))])
    assert run == {
        "jobName": "db-dumps-s3backup-29400000", "result": SUCCEEDED,
        "startTime": "2026-11-26T02:44:00Z", "completionTime": "2026-11-26T02:44:30Z",
        "filesUploaded": 3, "bytesUploaded": 300, "filesRecycled": 1, "filesFailed": 0, "exitCode": 0,
    }


def test_partial_run_is_told_apart():
    summary = {**SUMMARY, "result": "partial", "exit_code": 1, "files_failed": 2, "errors": ["a: denied"]}
    run = last_run(job(outcome="Failed"), [pod(json.dumps(summary), exit_code=1)])
    assert run["result"] == PARTIAL and run["filesFailed"] == 2 and run["exitCode"] == 1
    assert "completionTime" in run  # from the Failed condition


def test_error_carries_the_syncer_message():
    summary = {**SUMMARY, "result": "error", "exit_code": 2, "error": "bucket 'x' does not exist"}
    run = last_run(job(outcome="Failed"), [pod(json.dumps(summary), exit_code=2)])
    assert run["result"] == FAILED and run["message"] == "bucket 'x' does not exist"


def test_without_a_summary_the_job_condition_decides():
    logs_tail = "Traceback (most recent call last):\n  ... OOMKilled"
    run = last_run(job(outcome="Failed"), [pod(logs_tail, exit_code=137)])
    assert run["result"] == FAILED and run["filesUploaded"] == 0 and "no summary" in run["message"]
    assert last_run(job(), [])["result"] == SUCCEEDED  # pods already gone


def test_the_latest_attempt_counts():
    failed_first = pod(json.dumps({**SUMMARY, "result": "error"}), exit_code=1, finished="2026-11-26T02:44:10Z")
    then_ok = pod(json.dumps(SUMMARY), finished="2026-11-26T02:44:29Z")
    assert last_run(job(), [then_ok, failed_first])["result"] == SUCCEEDED


def test_parse_summary_is_defensive():
    assert parse_summary(None) is None
    assert parse_summary("") is None
    assert parse_summary("not json") is None
    assert parse_summary("[1, 2]") is None
    assert parse_summary('{"no": "result"}') is None
    assert parse_summary(json.dumps(SUMMARY) + "\n")["files_uploaded"] == 3


def test_counts_ignore_garbage():
    summary = {**SUMMARY, "files_uploaded": "many", "bytes_uploaded": True}
    run = last_run(job(), [pod(json.dumps(summary))])
    assert run["filesUploaded"] == 0 and run["bytesUploaded"] == 0


def test_status_moves_forward_only():
    older = last_run(job(name="j-1", end="2026-11-25T02:44:30Z"), [pod(json.dumps(SUMMARY))])
    newer = last_run(job(name="j-2", end="2026-11-26T02:44:30Z"), [pod(json.dumps(SUMMARY))])
    first = status_patch_for_run({}, newer)
    assert first == {"lastRun": newer, "lastSuccessfulTime": "2026-11-26T02:44:30Z"}
    current = {"lastRun": newer, "lastSuccessfulTime": "2026-11-26T02:44:30Z"}
    assert status_patch_for_run(current, older) == {}  # a replayed older Job
    assert status_patch_for_run(current, newer) == {}  # the same Job again


def test_a_failure_keeps_the_last_success():
    success = last_run(job(name="j-1", end="2026-11-25T02:44:30Z"), [pod(json.dumps(SUMMARY))])
    failure = last_run(job(name="j-2", outcome="Failed", end="2026-11-26T02:44:30Z"), [])
    current = {"lastRun": success, "lastSuccessfulTime": success["completionTime"]}
    assert status_patch_for_run(current, failure) == {"lastRun": failure}


def test_ready_update_moves_the_transition_time_only_on_a_flip():
    first = ready_update({}, True, "CronJobReady", "ok", 1, cronJobName="c")
    assert first["cronJobName"] == "c" and first["observedGeneration"] == 1
    assert first["conditions"][0]["status"] == "True" and first["conditions"][0]["observedGeneration"] == 1
    stamped = {"conditions": [{**first["conditions"][0], "lastTransitionTime": "2020-01-01T00:00:00Z"}]}
    (again,) = ready_update(stamped, True, "Suspended", "suspended", 2)["conditions"]
    assert again["lastTransitionTime"] == "2020-01-01T00:00:00Z" and again["reason"] == "Suspended"
    (flipped,) = ready_update(stamped, False, "InvalidSchedule", "bad", 3)["conditions"]
    assert flipped["lastTransitionTime"] != "2020-01-01T00:00:00Z" and flipped["status"] == "False"
    others = {"conditions": [{"type": "Other", "status": "True"}]}
    unversioned = ready_update(others, True, "r", "m", None)
    assert [c["type"] for c in unversioned["conditions"]] == ["Ready", "Other"]
    assert "observedGeneration" not in unversioned


def _waiting_pod(reason, message="m"):
    return {"status": {"phase": "Pending", "containerStatuses": [
        {"name": "s3backup", "state": {"waiting": {"reason": reason, "message": message}}}]}}


def test_pod_blocked():
    from s3backup_operator.status import pod_blocked

    assert pod_blocked(_waiting_pod("CreateContainerConfigError", 'secret "s3" not found')) == (
        "CreateContainerConfigError", 'secret "s3" not found')
    assert pod_blocked(_waiting_pod("ImagePullBackOff"))[0] == "ImagePullBackOff"
    assert pod_blocked(_waiting_pod("ContainerCreating")) is None  # just slow, not blocked
    unschedulable = {"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: 3 node(s) had volume node affinity conflict."}]}}
    assert pod_blocked(unschedulable)[0] == "Unschedulable"
    assert pod_blocked(pod(json.dumps(SUMMARY))) is None  # terminated
    assert pod_blocked({}) is None


def test_run_blocked_moves_once_per_state_and_only_for_the_pod_that_blocked():
    blocked = run_blocked_conditions([], "run-1-abc", ("ImagePullBackOff", "cannot pull"), gone=False)
    assert [(c["type"], c["status"], c["reason"], c["message"]) for c in blocked] == [
        ("RunBlocked", "True", "ImagePullBackOff", "pod run-1-abc: cannot pull")]
    assert run_blocked_conditions(blocked, "run-1-abc", ("ImagePullBackOff", "cannot pull"), gone=False) is None
    assert run_blocked_conditions(blocked, "run-2-def", None, gone=False) is None  # another pod cannot clear it
    started = run_blocked_conditions(blocked, "run-1-abc", None, gone=False)
    assert [(c["status"], c["reason"]) for c in started] == [("False", "PodStarted")]
    assert run_blocked_conditions(started, "run-1-abc", None, gone=False) is None
    gone = run_blocked_conditions(blocked, "run-1-abc", None, gone=True)
    assert [(c["status"], c["reason"]) for c in gone] == [("False", "PodGone")]
