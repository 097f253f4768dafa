"""The CRD: a valid, structural schema; the examples pass it; bad input is rejected; defaults agree."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import kopf
import pytest
import yaml
from s3backup_operator.render import DEFAULTS, render_cronjob, render_run_now_job

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
    validate_builtin(_adopted(render_cronjob(backup, config), backup))
    validate_builtin(_adopted(render_run_now_job(backup, config, "2026-11-26T10:00:00Z"), backup))


@pytest.mark.parametrize("name", [*BACKUP_EXAMPLES, "minimal"])
def test_renderer_defaults_equal_the_crd_defaults(config, crd_schema, name):
    """The operator renders the same with or without the API server's defaulting (the emulator does none)."""
    backup = make_backup() if name == "minimal" else example(name)
    assert render_cronjob(backup, config) == render_cronjob(apply_defaults(backup, crd_schema), config)


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
    "unknown field (typo)": _set("spec.destination.buckets", "x"),
    "time zone with spaces": _set("spec.timeZone", "Central European Time"),
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
