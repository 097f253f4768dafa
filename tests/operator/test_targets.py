"""Placement (pure): source.hostPath fans out to one BackupSpec per matching node, rendered like any other;
a ReadWriteOnce claim's runs go to the node of the pod that mounts it."""

from __future__ import annotations

import pytest
from s3backup_operator.affinity import (
    PLACEMENT_ANNOTATION,
    pin_to_node,
    placed_at_run_time,
    placement_patch,
    single_node,
    volume_node,
)
from s3backup_operator.config import Policy
from s3backup_operator.policy import check as check_policy
from s3backup_operator.render import render_cronjob, render_run_now_job
from s3backup_operator.spec import InvalidSpec, parse
from s3backup_operator.status import status_patch_for_target_run, targets_patch
from s3backup_operator.targets import matching_claims, matching_nodes, pinned_to_node, selects, targets

from tests.operator.conftest import make_backup, option
from tests.operator.schema_tools import validate_builtin

HOST_PATH = {"hostPath": {"path": "/var/backups"}, "nodeSelector": {"role": "backup-server"}}


def node(name, deleting=False, **labels):
    meta = {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T02:00:00Z"
    return {"metadata": meta}


NODES = [node("node-a", role="backup-server"), node("node-b", role="backup-server"), node("node-c"),
         node("node-d", deleting=True, role="backup-server")]


def fan_out(**changes):
    return parse(make_backup(source=HOST_PATH, **changes))


def test_only_the_matching_nodes_that_stay_are_targets():
    spec = fan_out()
    assert spec.source.fans_out and spec.source.volume == {}
    assert matching_nodes(spec, NODES) == ["node-a", "node-b"]


def test_a_volume_source_is_its_own_single_target():
    spec = parse(make_backup())
    assert targets(spec, ["node-a"]) == {"": spec}


def _pod(manifest):
    spec = manifest["spec"]
    return (spec["jobTemplate"]["spec"] if manifest["kind"] == "CronJob" else spec)["template"]["spec"]


def test_each_node_gets_its_own_cronjob_pinned_to_it_under_its_own_prefix(config):
    variants = targets(fan_out(), ["node-b", "node-a"])
    assert list(variants) == ["node-a", "node-b"]
    names = set()
    for name, variant in variants.items():
        cronjob = render_cronjob(variant, config)
        validate_builtin(cronjob)
        names.add(cronjob["metadata"]["name"])
        assert cronjob["metadata"]["labels"]["s3backup.dev/backup"] == "db-dumps"  # the owner, as for any run
        assert cronjob["metadata"]["labels"]["s3backup.dev/target"] == name
        assert cronjob["metadata"]["annotations"] == {"s3backup.dev/target": name}
        assert cronjob["spec"]["jobTemplate"]["metadata"]["annotations"] == {"s3backup.dev/target": name}
        pod = _pod(cronjob)
        assert pod["volumes"][0] == {"name": "source", "hostPath": {"path": "/var/backups", "type": "Directory"}}
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [name]}]}]
        args = pod["containers"][0]["args"]
        assert args[1:3] == ["/data", f"s3://my-backups/cluster-a/db/{name}"]
        assert option(args, "--backup-name") == f"db-dumps/{name}"  # one metrics group per node
        job = render_run_now_job(variant, config, "r1")
        assert job["metadata"]["annotations"]["s3backup.dev/target"] == name
        assert job["metadata"]["name"].startswith(f"db-dumps-{name}-now-")
    assert names == {"db-dumps-node-a-s3backup", "db-dumps-node-b-s3backup"}


def test_the_prefix_of_a_target_without_a_prefix_is_the_node_name(config):
    [variant] = targets(parse(make_backup(source=HOST_PATH, destination={
        "bucket": "my-backups", "credentialsSecretRef": {"name": "s"}})), ["node-a"]).values()
    assert variant.destination.url == "s3://my-backups/node-a"


def test_a_long_node_name_keeps_names_and_labels_within_kubernetes_limits(config):
    long = "ip-10-0-0-1." + "compute." * 20 + "internal"
    [variant] = targets(fan_out(), [long]).values()
    cronjob = render_cronjob(variant, config)
    validate_builtin(cronjob)
    assert len(cronjob["metadata"]["name"]) <= 52
    assert len(cronjob["metadata"]["labels"]["s3backup.dev/target"]) <= 63
    assert cronjob["metadata"]["annotations"]["s3backup.dev/target"] == long


def test_pinning_keeps_the_users_own_node_requirements():
    user = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]},
        {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["nvme"]}]}]}},
        "podAntiAffinity": {"x": 1}}
    pinned = pin_to_node(user, "node-a")
    terms = pinned["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    field = {"key": "metadata.name", "operator": "In", "values": ["node-a"]}
    assert [term["matchFields"] for term in terms] == [[field], [field]]  # ANDed into each ORed term
    assert terms[0]["matchExpressions"][0]["values"] == ["ssd"]
    assert pinned["podAntiAffinity"] == {"x": 1}
    assert "matchFields" not in user["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]  # the user's spec is not changed


@pytest.mark.parametrize("source", [
    {"hostPath": {"path": "/var/backups"}},
    {"volume": {"emptyDir": {}}, "nodeSelector": {"role": "x"}},
    {"volume": {"emptyDir": {}}, **HOST_PATH},
    {"hostPath": {"path": "var/backups"}, "nodeSelector": {"role": "x"}},
    {"hostPath": {"path": "/var/../etc"}, "nodeSelector": {"role": "x"}},
    {},
])
def test_a_source_must_be_exactly_one_kind(source):
    with pytest.raises(InvalidSpec) as raised:
        parse(make_backup(source=source))
    assert "spec.source" in raised.value.message


def test_a_fan_out_needs_the_admins_host_path_allowance():
    spec = fan_out()
    with pytest.raises(InvalidSpec) as raised:
        check_policy(spec, Policy.from_env({}))
    assert raised.value.reason == "NotAllowed" and "spec.source.hostPath" in raised.value.message
    check_policy(spec, Policy.from_env({"S3BACKUP_ALLOW_HOST_PATH": "backups"}))


def run(job, completion, result="Succeeded"):
    return {"jobName": job, "result": result, "completionTime": completion, "filesUploaded": 1}


def test_the_status_shows_each_targets_last_run_the_newest_run_and_the_oldest_success():
    status = {"targets": targets_patch(None, {"node-a": "a-cj", "node-b": "b-cj"})}
    first = status_patch_for_target_run(status, "node-a", run("a-1", "2026-11-26T02:00:10Z"))
    assert first == {"targets": {"node-a": {"lastRun": run("a-1", "2026-11-26T02:00:10Z"),
                                            "lastSuccessfulTime": "2026-11-26T02:00:10Z"}},
                     "lastRun": run("a-1", "2026-11-26T02:00:10Z")}  # node-b has no success yet
    status = {"targets": {"node-a": {"cronJobName": "a-cj", **first["targets"]["node-a"]},
                          "node-b": {"cronJobName": "b-cj"}}, "lastRun": first["lastRun"]}
    second = status_patch_for_target_run(status, "node-b", run("b-1", "2026-11-26T02:00:20Z"))
    assert second["lastRun"]["jobName"] == "b-1"
    assert second["lastSuccessfulTime"] == "2026-11-26T02:00:10Z"  # the stalest node's
    status["targets"]["node-b"].update(second["targets"]["node-b"])
    status.update(lastRun=second["lastRun"], lastSuccessfulTime=second["lastSuccessfulTime"])
    # A replayed event of an older run changes nothing; a failed newer run moves lastRun, not the success time.
    assert status_patch_for_target_run(status, "node-a", run("a-0", "2026-11-26T01:00:00Z")) == {}
    failed = status_patch_for_target_run(status, "node-a", run("a-2", "2026-11-27T02:00:00Z", "Failed"))
    assert failed["lastRun"]["jobName"] == "a-2" and "lastSuccessfulTime" not in failed
    assert failed["targets"] == {"node-a": {"lastRun": run("a-2", "2026-11-27T02:00:00Z", "Failed")}}


def test_targets_that_left_are_removed_from_the_status():
    current = {"node-a": {"cronJobName": "a", "lastRun": {}}, "node-c": {"cronJobName": "c"}}
    assert targets_patch(current, {"node-a": "a", "node-b": "b"}) == {
        "node-c": None, "node-a": {"cronJobName": "a"}, "node-b": {"cronJobName": "b"}}


# --- ReadWriteOnce claims: the run goes where the claim's pod is (affinity.py) -------------------------------

def claim(*modes, bound=None):
    body = {"metadata": {"name": "dumps"}, "spec": {"accessModes": list(modes)}}
    if bound is not None:
        body["status"] = {"accessModes": list(bound)}
    return body


@pytest.mark.parametrize(("body", "tied"), [
    (claim("ReadWriteOnce"), True), (claim("ReadWriteOncePod"), True),
    (claim("ReadWriteOnce", "ReadOnlyMany"), False), (claim("ReadWriteMany"), False),
    (claim("ReadWriteMany", bound=["ReadWriteOnce"]), True), (claim(), False), (None, False),
])
def test_a_claim_is_tied_to_one_node_by_its_access_modes(body, tied):
    assert single_node(body) is tied


def app_pod(name, node, claim_name="dumps", phase="Running", deleting=False, managed=False):
    meta = {"name": name, "labels": {"app.kubernetes.io/managed-by": "s3backup-operator"} if managed else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T02:00:00Z"
    return {"metadata": meta, "status": {"phase": phase},
            "spec": {"nodeName": node, "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim_name}}]}}


def test_the_claims_node_is_that_of_a_live_pod_of_the_application():
    pods = [app_pod("a-gone", "node-c", deleting=True), app_pod("b-done", "node-c", phase="Succeeded"),
            app_pod("c-ours", "node-c", managed=True), app_pod("d-other-claim", "node-c", claim_name="x"),
            app_pod("z-app", "node-b")]
    assert volume_node("dumps", pods, "s3backup-operator") == "node-b"
    assert volume_node("dumps", pods[:4], "s3backup-operator") is None


def test_a_scheduled_run_of_a_single_node_claim_starts_suspended_and_is_then_pinned(config):
    anti = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    spec = parse(make_backup(job={"affinity": anti}))
    cronjob = placed_at_run_time(render_cronjob(spec, config), "dumps")
    validate_builtin(cronjob)
    template = cronjob["spec"]["jobTemplate"]
    assert template["spec"]["suspend"] is True
    assert template["metadata"]["annotations"] == {PLACEMENT_ANNOTATION: "dumps"}
    # What the CronJob controller makes of it: a suspended Job with the template's metadata.
    job = {"metadata": {"name": "db-dumps-s3backup-1", **template["metadata"]}, "spec": template["spec"], "status": {}}
    patch = placement_patch(job, "node-b")
    assert patch["spec"]["suspend"] is False
    affinity = patch["spec"]["template"]["spec"]["affinity"]
    assert list(affinity) == ["nodeAffinity"]  # only what a suspended Job may change: not the pod affinity
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-b"]}]}]
    assert placement_patch(job, None) == {"spec": {"suspend": False}}  # no pod mounts it: the scheduler decides
    started = {**job, "status": {"startTime": "2026-11-26T02:00:00Z"}}
    assert placement_patch(started, "node-b") is None
    assert placement_patch({**job, "spec": {**job["spec"], "suspend": False}}, "node-b") is None
    plain = render_cronjob(spec, config)["spec"]["jobTemplate"]
    assert "suspend" not in plain["spec"] and "annotations" not in plain["metadata"]  # other claims: as before


def test_a_run_now_of_a_claim_in_use_is_pinned_when_it_is_made(config):
    job = render_run_now_job(pinned_to_node(parse(make_backup()), "node-b"), config, "r")
    terms = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchFields"][0]["values"] == ["node-b"]
    assert "suspend" not in job["spec"]


# --- source.selector: one run per matching claim of the namespace ---------------------------------------------

SELECTOR = {"selector": {"matchLabels": {"backup": "daily"},
                         "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["scratch"]}]}}


def pvc(name, deleting=False, **labels):
    meta = {"name": name, "namespace": "backups", "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T02:00:00Z"
    return {"metadata": meta, "spec": {"accessModes": ["ReadWriteOnce"]}}


def test_each_matching_claim_gets_its_own_run_under_its_own_prefix(config):
    spec = parse(make_backup(source=SELECTOR))
    assert spec.source.fans_out and spec.source.volume == {}
    claims = [pvc("db", backup="daily"), pvc("media", backup="daily", tier="gold"), pvc("tmp", backup="daily",
              tier="scratch"), pvc("weekly", backup="weekly"), pvc("old", deleting=True, backup="daily")]
    names = matching_claims(spec, claims)
    assert names == ["db", "media"]
    for name, variant in targets(spec, names).items():
        cronjob = render_cronjob(variant, config)
        validate_builtin(cronjob)
        assert cronjob["metadata"]["name"] == f"db-dumps-{name}-s3backup"
        assert cronjob["metadata"]["annotations"] == {"s3backup.dev/target": name}
        pod = _pod(cronjob)
        assert pod["volumes"][0] == {"name": "source", "persistentVolumeClaim": {"claimName": name}}
        assert "affinity" not in pod  # placed per run, like any ReadWriteOnce claim
        assert pod["containers"][0]["args"][2] == f"s3://my-backups/cluster-a/db/{name}"


@pytest.mark.parametrize(("labels", "selected"), [
    ({"a": "1"}, True), ({"a": "2"}, False), ({}, False),
])
def test_selector_operators(labels, selected):
    for selector in ({"matchLabels": {"a": "1"}},
                     {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}):
        assert selects(labels, selector) is selected
    assert selects(labels, {"matchExpressions": [{"key": "a", "operator": "Exists"}]}) is bool(labels)
    assert selects(labels, {"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}) is (not labels)
    assert selects(labels, {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}) is (
        not selected)


@pytest.mark.parametrize("selector", [
    {}, {"matchLabels": {}}, {"matchExpressions": [{"key": "a", "operator": "In"}]},
    {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
    {"matchExpressions": [{"key": "a", "operator": "Near", "values": ["x"]}]},
    {"matchLabels": {"bad key!": "x"}},
])
def test_a_bad_selector_is_an_invalid_spec(selector):
    with pytest.raises(InvalidSpec) as raised:
        parse(make_backup(source={"selector": selector}))
    assert "spec.source.selector" in raised.value.message


def test_a_selector_and_a_volume_together_are_refused():
    with pytest.raises(InvalidSpec) as raised:
        parse(make_backup(source={"volume": {"emptyDir": {}}, **SELECTOR}))
    assert "exactly one of volume, hostPath, selector" in raised.value.message
