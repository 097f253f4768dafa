"""The CRD: a valid, structural schema; the examples pass it; bad input is rejected; defaults agree."""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from botocore.utils import validate_region_name
from s3backup_operator.render import render_cronjob, render_run_now_job
from s3backup_operator.spec import DEFAULTS, BackupSpec, destination_url, parse
from s3backup_operator.targets import targets
from s3backup_syncer.config import SyncOptions, parse_duration, parse_recycle_cap, parse_s3_url, parse_size
from s3backup_syncer.errors import UserError
from s3backup_syncer.etag import validate_part_size
from s3backup_syncer.filters import Filters

from tests.operator.conftest import CRD_PATH, EXAMPLES, example, make_backup
from tests.operator.schema_tools import apply_defaults, validate_builtin, validator

EXAMPLE_FILES = sorted(path.name for path in EXAMPLES.glob("*.yaml"))
BACKUP_EXAMPLES = [name for name in EXAMPLE_FILES if example(name)["kind"] == "S3Backup"]


def test_examples_exist():
    assert len(BACKUP_EXAMPLES) >= 3
    assert "s3-credentials-secret.yaml" in EXAMPLE_FILES


def test_crd_is_valid_for_kubernetes(crd):
    validate_builtin(crd)
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "s3backups.s3backup.dev"
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == ["s3b"]
    columns = [column["name"] for column in version["additionalPrinterColumns"] if not column.get("priority")]
    for wanted in ("Schedule", "Suspend", "Last Success", "Last Result", "Age"):
        assert wanted in columns


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, sub in (node.get("properties") or {}).items():
        found += _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        found += _walk(node["items"], f"{path}[]")
    return found


def test_schema_is_structural(crd_schema):
    """Every node has a type (or is int-or-string / preserve-unknown), as a structural schema requires."""
    for path, node in _walk(crd_schema):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if node.get("type") == "object" and "properties" not in node and path not in (".metadata",):
            assert node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node, path
        for key in ("default",):
            if key in node and node["type"] != "object":
                assert validator(node).is_valid(node[key]), f"{path}: default {node[key]!r} fails its own schema"


@pytest.mark.parametrize("name", BACKUP_EXAMPLES)
def test_example_passes_the_crd_schema(crd_schema, name):
    validator(crd_schema).validate(example(name))
    validator(crd_schema).validate(apply_defaults(example(name), crd_schema))


def test_secret_example_is_valid():
    validate_builtin(example("s3-credentials-secret.yaml"))


def _adopted(manifest: dict[str, Any], backup: dict[str, Any]) -> dict[str, Any]:
    owner = copy.deepcopy(backup)
    owner["metadata"]["uid"] = "0b0b0b0b-1111-2222-3333-444455556666"
    kopf.adopt(manifest, owner=owner)
    return manifest


@pytest.mark.parametrize("name", BACKUP_EXAMPLES)
def test_example_renders_valid_manifests(config, crd_schema, name):
    backup = apply_defaults(example(name), crd_schema)
    for spec in runs(backup):
        validate_builtin(_adopted(render_cronjob(spec, config), backup))
        validate_builtin(_adopted(render_run_now_job(spec, config, "2026-11-26T10:00:00Z"), backup))


def runs(backup: dict[str, Any]) -> list[BackupSpec]:
    """What the operator renders for `backup`: itself, or a fan-out's run on each of two nodes."""
    return list(targets(parse(backup), ["node-a", "node-b"]).values())


@pytest.mark.parametrize("name", [*BACKUP_EXAMPLES, "minimal"])
def test_renderer_defaults_equal_the_crd_defaults(config, crd_schema, name):
    """The operator renders the same with or without the API server's defaulting (the emulator does none)."""
    backup = make_backup() if name == "minimal" else example(name)
    assert [render_cronjob(spec, config) for spec in runs(backup)] == [
        render_cronjob(spec, config) for spec in runs(apply_defaults(backup, crd_schema))]


def test_every_renderer_default_is_a_crd_default(crd_schema):
    spec_schema = crd_schema["properties"]["spec"]

    def check(defaults: dict[str, Any], schema: dict[str, Any], path: str) -> None:
        for key, value in defaults.items():
            sub = schema["properties"][key]
            if isinstance(value, dict):
                check(value, sub, f"{path}.{key}")
            else:
                assert sub.get("default") == value, f"{path}.{key}: CRD {sub.get('default')!r} != {value!r}"

    check(DEFAULTS, spec_schema, "spec")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return mutate


_DELETE = object()

INVALID = {
    "missing bucket": _set("spec.destination.bucket", _DELETE),
    "missing schedule": _set("spec.schedule", _DELETE),
    "missing source": _set("spec.source", _DELETE),
    "empty schedule": _set("spec.schedule", ""),
    "bucket with capitals": _set("spec.destination.bucket", "My-Backups"),
    "bucket too short": _set("spec.destination.bucket", "ab"),
    "bucket with underscore": _set("spec.destination.bucket", "my_backups"),
    "bucket ending with a hyphen": _set("spec.destination.bucket", "backups-"),
    "prefix with leading slash": _set("spec.destination.prefix", "/cluster-a"),
    "endpoint without scheme": _set("spec.destination.endpoint", "s3.example.com"),
    "unknown compare mode": _set("spec.compare", "sha256"),
    "negative concurrency": _set("spec.transfer.concurrency", -1),
    "zero concurrency": _set("spec.transfer.concurrency", 0),
    "concurrency as a string": _set("spec.transfer.concurrency", "4"),
    "bad part size": _set("spec.transfer.partSize", "5 MB"),
    "bad recycle age": _set("spec.recycle.after", "30 days"),
    "bad max delete": _set("spec.recycle.maxDelete", "-5"),
    "two volume sources": _set("spec.source.volume", {"persistentVolumeClaim": {"claimName": "a"},
                                                      "emptyDir": {}}),
    "no volume source": _set("spec.source.volume", {}),
    "absolute subPath": _set("spec.source.subPath", "/etc"),
    "subPath escaping the volume": _set("spec.source.subPath", "a/../../etc"),
    "suspend as a string": _set("spec.suspend", "yes"),
    "unknown sse": _set("spec.destination.sse", "rot13"),
    "secret ref without name": _set("spec.destination.credentialsSecretRef", {}),
    "secret name with capitals": _set("spec.destination.credentialsSecretRef", {"name": "S3"}),
    "negative backoffLimit": _set("spec.job.backoffLimit", -1),
    "root user": _set("spec.job.podSecurityContext", {"runAsUser": 0}),
    "negative fsGroup": _set("spec.job.podSecurityContext", {"fsGroup": -1}),
    "unknown fsGroupChangePolicy": _set("spec.job.podSecurityContext", {"fsGroupChangePolicy": "Never"}),
    "unknown field (typo)": _set("spec.destination.buckets", "x"),
    "time zone with spaces": _set("spec.timeZone", "Central European Time"),
    # B9: values the syncer refuses (each would make every run exit 2)
    "part size of 1 byte": _set("spec.transfer.partSize", "1"),
    "part size under 5MiB": _set("spec.transfer.partSize", "4M"),
    "part size over 5GiB": _set("spec.transfer.partSize", "6G"),
    "part size with Mi but no B": _set("spec.transfer.partSize", "64Mi"),
    "bwlimit under 1KiB": _set("spec.transfer.bwlimit", "1"),
    "bwlimit of 1000 bytes": _set("spec.transfer.bwlimit", "1000"),
    "max delete over 100%": _set("spec.recycle.maxDelete", "200%"),
    "recycle age over 1000 years": _set("spec.recycle.after", "400000d"),
    "bucket with ..": _set("spec.destination.bucket", "a..b"),
    "prefix with //": _set("spec.destination.prefix", "a//b"),
    "prefix ending with //": _set("spec.destination.prefix", "a//"),
    "include of only slashes": _set("spec.source.include", ["/"]),
    "empty exclude": _set("spec.source.exclude", [""]),
    "endpoint that is no URL": _set("spec.destination.endpoint", "https://[bad"),
    "endpoint with a port over 65535": _set("spec.destination.endpoint", "http://s3:70000"),
    "endpoint with a query": _set("spec.destination.endpoint", "https://s3.example.com/?x=1"),
    "endpoint host with an underscore": _set("spec.destination.endpoint", "http://s3_x:9000"),
    "region ending with -": _set("spec.destination.region", "eu-"),
    "region of digits": _set("spec.destination.region", "123"),
    # Pod settings
    "CA bundle ref without name": _set("spec.destination.caBundle", {"configMapKeyRef": {"key": "ca.crt"}}),
    "CA bundle key with a slash": _set("spec.destination.caBundle", {"secretKeyRef": {"name": "ca", "key": "a/b"}}),
    "proxy with a space": _set("spec.job.proxy", {"httpsProxy": "http://proxy :3128"}),
    "proxy over two lines": _set("spec.job.proxy", {"noProxy": ".svc\n.local"}),
    "env without name": _set("spec.job.env", [{"value": "x"}]),
    "env name with a space": _set("spec.job.env", [{"name": "MY VAR", "value": "x"}]),
    "env value not a string": _set("spec.job.env", [{"name": "N", "value": 5}]),
    "pod label value too long": _set("spec.job.podLabels", {"team": "x" * 64}),
    "pod annotation not a string": _set("spec.job.podAnnotations", {"sidecar.istio.io/inject": False}),
    "priority class with capitals": _set("spec.job.priorityClassName", "High"),
    # Placement and consistent capture
    "hook without command": _set("spec.hooks", {"before": {"image": "postgres:17"}}),
    "hook with an empty command": _set("spec.hooks.before", {"command": []}),
    "hostPath with a relative path": _set("spec.source.hostPath", {"path": "var/backups"}),
    "nodeSelector value not a string": _set("spec.source.nodeSelector", {"role": 1}),
    "selector with an unknown operator": _set("spec.source.selector",
                                              {"matchExpressions": [{"key": "a", "operator": "Near"}]}),
    "unknown copy method": _set("spec.copyMethod", "Clone"),
}


@pytest.mark.parametrize("mutation", INVALID.values(), ids=INVALID.keys())
def test_invalid_input_is_rejected_by_the_schema(crd_schema, mutation):
    doc = example("s3backup-full.yaml")
    mutation(doc)
    assert list(validator(crd_schema).iter_errors(doc)), "the schema accepted it"


def test_the_unmutated_full_example_is_accepted(crd_schema):
    """The control for the test above: only the mutation makes the document invalid."""
    assert not list(validator(crd_schema).iter_errors(example("s3backup-full.yaml")))


@pytest.mark.parametrize("path", ["", "a", "a/b", "a/b/", ".hidden", "a/.b/c", "..x", "x..", "a/./b", "my dir/x"])
def test_sub_path_pattern_accepts(crd_schema, path):
    pattern = crd_schema["properties"]["spec"]["properties"]["source"]["properties"]["subPath"]["pattern"]
    assert re.search(pattern, path)


@pytest.mark.parametrize("path", ["/", "/a", "..", "../a", "a/..", "a/../b", "a//b"])
def test_sub_path_pattern_rejects(crd_schema, path):
    pattern = crd_schema["properties"]["spec"]["properties"]["source"]["properties"]["subPath"]["pattern"]
    assert not re.search(pattern, path)


def test_patterns_avoid_lookarounds():
    """kube-apiserver evaluates `pattern` with Go's RE2: no look-aheads or look-behinds."""
    text = CRD_PATH.read_text()
    assert "(?=" not in text and "(?!" not in text and "(?<" not in text
    yaml.safe_load(text)


# The CRD's patterns against the syncer's own parsers (B9): what a pattern lets through, the syncer accepts;
# where the pattern can express the syncer's rule exactly, both agree on every value tried.

def _pattern(crd_schema: dict[str, Any], path: str) -> str:
    node = crd_schema["properties"]["spec"]
    for key in path.split("."):
        node = node["items"] if key == "[]" else node["properties"][key]
    return node["pattern"]


def _accepted(check: Callable[[], Any]) -> bool:
    try:
        check()
    except UserError:
        return False
    return True


def _strings(alphabet: str, lengths: range) -> list[str]:
    return ["".join(chars) for length in lengths for chars in itertools.product(alphabet, repeat=length)]


def test_part_size_pattern_is_the_syncer_range(crd_schema):
    pattern = _pattern(crd_schema, "transfer.partSize")
    unit_sizes = [f"{n}{unit}" for n in range(0, 5200) for unit in ("M", "MB", "MiB")]
    unit_sizes += [f"{n}{unit}" for n in range(0, 8) for unit in ("G", "GB", "GiB")]
    for value in unit_sizes:
        syncer = _accepted(lambda value=value: validate_part_size(parse_size(value)))
        assert bool(re.search(pattern, value)) == syncer, value
    for value in ["auto", "5242880", "8192K", "1T", "64Mi", "64mib", "5.5M"]:  # stricter is fine, never looser
        if re.search(pattern, value):
            assert value == "auto" or _accepted(lambda value=value: validate_part_size(parse_size(value))), value


def _bwlimit_accepted(value: str) -> bool:
    return _accepted(lambda: SyncOptions(source=Path("/data"), bucket="abc", prefix="", bwlimit=parse_size(value)))


def test_bwlimit_pattern_is_the_syncer_minimum(crd_schema):
    pattern = _pattern(crd_schema, "transfer.bwlimit")
    for value in [*map(str, range(1, 3000)), *(f"{n}B" for n in range(1, 3000))]:
        assert bool(re.search(pattern, value)) == _bwlimit_accepted(value), value
    for value in [f"{n}{unit}{suffix}" for n in (1, 50, 999999, 1000000) for unit in "KMGT"
                  for suffix in ("", "B", "iB")] + ["9" * 15, "9" * 16, "9" * 20]:
        if re.search(pattern, value):
            assert _bwlimit_accepted(value), value


def test_max_delete_pattern_is_the_syncer_cap(crd_schema):
    pattern = _pattern(crd_schema, "recycle.maxDelete")
    for value in [*map(str, range(0, 300)), *(f"{n}%" for n in range(0, 300)), "9" * 12, "-1", "1e3"]:
        assert bool(re.search(pattern, value)) == _accepted(lambda value=value: parse_recycle_cap(value)), value
    assert not re.search(pattern, "5.5%")  # the syncer takes fractions; the schema keeps to whole numbers


def test_recycle_age_pattern_stays_within_the_syncer_limit(crd_schema):
    pattern = _pattern(crd_schema, "recycle.after")
    for unit in "smhdw":
        for digits in range(1, 14):
            value = "9" * digits + unit
            if re.search(pattern, value):
                assert _accepted(lambda value=value: parse_duration(value)), value
        assert re.search(pattern, f"0{unit}") and re.search(pattern, f"100{unit}")
    assert re.search(pattern, "36500d")  # a century is expressible


def test_bucket_pattern_is_the_syncer_rule(crd_schema):
    node = crd_schema["properties"]["spec"]["properties"]["destination"]["properties"]["bucket"]
    for name in [*_strings("a0.-", range(1, 6)), "a" * 63, "a" * 64]:
        in_schema = bool(re.search(node["pattern"], name)) and node["minLength"] <= len(name) <= node["maxLength"]
        assert in_schema == _accepted(lambda name=name: parse_s3_url(f"s3://{name}")), name


def test_prefix_pattern_is_the_syncer_rule(crd_schema):
    pattern = _pattern(crd_schema, "destination.prefix")
    for prefix in _strings("a/", range(0, 7)):
        if prefix.startswith("/"):
            assert not re.search(pattern, prefix), prefix  # a leading "/" is refused outright
            continue
        syncer = _accepted(lambda prefix=prefix: parse_s3_url(destination_url("abc", prefix)))
        if prefix.endswith("//"):  # the syncer strips trailing slashes; the schema refuses "//" anywhere
            assert not re.search(pattern, prefix), prefix
        else:
            assert bool(re.search(pattern, prefix)) == syncer, prefix


@pytest.mark.parametrize("field", ["include", "exclude"])
def test_filter_item_pattern_is_the_syncer_rule_for_slashes(crd_schema, field):
    pattern = _pattern(crd_schema, f"source.{field}.[]")
    for glob in _strings("a/", range(1, 5)):
        assert bool(re.search(pattern, glob)) == _accepted(lambda glob=glob: Filters(includes=(glob,))), glob


def test_region_pattern_is_accepted_by_botocore(crd_schema):
    pattern = _pattern(crd_schema, "destination.region")
    for region in [*_strings("a1-", range(1, 5)), "eu-central-1", "a" * 63]:
        if re.search(pattern, region):
            validate_region_name(region)


ENDPOINTS = ["https://s3.example.com", "http://127.0.0.1:9000", "http://[::1]:9000", "http://s3:65535/base/x",
             "https://s3.example.com/", "http://minio.minio.svc.cluster.local:9000", "https://[bad", "http://s3:65536",
             "http://s3?x=1", "http://s3_x", "http://-s3", "ftp://s3", "http://s3/a b", "http://user@s3"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_endpoints_the_schema_accepts_are_accepted_by_the_renderer(crd_schema, config, endpoint):
    if re.search(_pattern(crd_schema, "destination.endpoint"), endpoint):
        render_cronjob(parse(make_backup(destination={"bucket": "abc", "endpoint": endpoint})), config)
