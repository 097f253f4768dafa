"""2. `kubectl apply` the README's examples: the API server applies the CRD's defaults and rejects invalid input
with its message (the structural schema and the CEL rules, for real)."""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import yaml

from tests.cluster.support import REPO
from tests.operator.test_crd import INVALID

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def backups_namespace(cluster, operator):
    cluster.kubectl("create", "namespace", "backups", check=False)
    yield "backups"
    cluster.kubectl("delete", "namespace", "backups", "--wait=false", check=False)


def full_example() -> dict:
    return yaml.safe_load((EXAMPLES / "s3backup-full.yaml").read_text())


def test_the_basic_example_gets_the_crds_defaults(cluster, backups_namespace):
    cluster.kubectl("apply", "-f", str(EXAMPLES / "s3-credentials-secret.yaml"))
    cluster.kubectl("apply", "-f", str(EXAMPLES / "s3backup-basic.yaml"))
    stored = cluster.get("s3backup", "db-dumps", "-n", "backups")
    spec = stored["spec"]
    assert spec["compare"] == "md5"
    assert spec["suspend"] is False
    assert spec["transfer"] == {"partSize": "auto", "concurrency": 4, "shards": 1}
    assert spec["recycle"] == {"maxDelete": "50%"}
    assert spec["job"]["backoffLimit"] == 2
    assert spec["source"]["subPath"] == ""
    assert spec["destination"]["forcePathStyle"] is False


@pytest.mark.parametrize("name", ["s3backup-full.yaml", "s3backup-irsa.yaml"])
def test_the_other_examples_are_accepted(cluster, backups_namespace, name):
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(EXAMPLES / name))
    assert "created (server dry run)" in result.stdout or "configured (server dry run)" in result.stdout


@pytest.mark.parametrize("mutation", INVALID.values(), ids=INVALID.keys())
def test_invalid_input_is_rejected_by_the_api_server(cluster, backups_namespace, mutation):
    doc = full_example()
    mutation(doc)
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
    assert result.returncode != 0, result.stdout
    # The message names the field that was made invalid.
    field = inspect.getclosurevars(mutation).nonlocals["path"]
    assert 'S3Backup "media" is invalid' in result.stderr or "unknown field" in result.stderr, result.stderr
    assert field in result.stderr, result.stderr


def test_a_cel_rule_rejects_with_its_message(cluster, backups_namespace):
    doc = copy.deepcopy(full_example())
    doc["spec"]["destination"]["sse"] = "AES256"
    doc["spec"]["destination"]["sseKmsKeyId"] = "arn:aws:kms:eu-central-1:123456789012:key/abc"
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
    assert result.returncode != 0
    assert 'sseKmsKeyId needs sse "aws:kms"' in result.stderr
    doc["spec"]["destination"]["sse"] = "aws:kms"
    cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc))
