"""S3Backup specs through the renderer: any spec the CRD schema accepts either renders a CronJob whose
syncer command line the syncer itself accepts, or is refused with a one-line `InvalidSpec` (shown in
the Ready condition). What must never happen: an exception, or a CronJob whose every run fails with
exit 2 because the renderer and the syncer disagree on what a value means."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from s3backup_operator.config import OperatorConfig
from s3backup_operator.render import render_cronjob
from s3backup_operator.spec import InvalidSpec, parse
from s3backup_syncer import cli
from s3backup_syncer.errors import UserError

from tests.operator.schema_tools import validator
from tests.reliability.helpers import FIGURES

CRD = Path(__file__).resolve().parents[2] / "crds" / "s3backup.dev_s3backups.yaml"
SCHEMA = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC_VALIDATOR = validator(SCHEMA)


def matching(pattern: str, max_size: int = 40):
    return st.from_regex(pattern, fullmatch=True).filter(lambda text: len(text) <= max_size)


dns_label = matching(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?")
free_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), min_size=1, max_size=20)
maybe = st.none().__or__  # `maybe(strategy)`: absent or a value

specs = st.fixed_dictionaries(
    {
        "schedule": st.one_of(st.sampled_from(["@daily", "@hourly", "H 2 * * *", "*/15 * * * *", "0 3 * * 1-5",
                                               "H H(1-5) * * *", "@weekly"]), free_text),
        "source": st.fixed_dictionaries(
            {"volume": st.just({"persistentVolumeClaim": {"claimName": "data"}})},
            optional={
                "subPath": st.one_of(st.sampled_from(["", "db", "a/b/", ".", "..x", "a/../b"]), free_text),
                "include": st.lists(st.one_of(free_text, st.sampled_from(["*.sql", "db/**", "-wal", "--x", "[",
                                                                          "a[]b", "/", "**/"])), max_size=3),
                "exclude": st.lists(st.one_of(free_text, st.sampled_from(["*.tmp", "-journal", "cache/", "[z-a]"])),
                                    max_size=3),
                "followSymlinks": st.booleans(),
            },
        ),
        "destination": st.fixed_dictionaries(
            {"bucket": st.one_of(matching(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]"), st.sampled_from(["a..b", "ab"]))},
            optional={
                "prefix": st.one_of(st.sampled_from(["", "a//b", "x/", "cluster-a/db", "ü/ß"]), free_text),
                "endpoint": st.sampled_from(["https://s3.example.com", "http://127.0.0.1:9000", "http://[::1]:9000",
                                             "https://[bad"]),
                "region": matching(r"[a-z0-9-]{0,12}"),
                "forcePathStyle": st.booleans(),
                "storageClass": matching(r"[A-Z0-9_]{1,12}"),
                "sse": st.sampled_from(["AES256", "aws:kms"]),
                "sseKmsKeyId": st.sampled_from(["", "key-1", "arn:aws:kms:eu-west-1:1:key/x"]),
            },
        ),
    },
    optional={
        "timeZone": st.sampled_from(["Etc/UTC", "Europe/Berlin", "Mars/Olympus", "UTC"]),
        "suspend": st.booleans(),
        "compare": st.sampled_from(["md5", "size"]),
        "recycle": st.fixed_dictionaries({}, optional={"after": matching(r"[0-9]{1,12}[smhdw]"),
                                                       "maxDelete": matching(r"[0-9]{1,4}%?")}),
        "transfer": st.fixed_dictionaries({}, optional={
            "partSize": st.one_of(st.just("auto"), matching(r"[1-9][0-9]{0,5}([KMGT](i?B)?)?")),
            "concurrency": st.integers(1, 64),
            "bwlimit": matching(r"[1-9][0-9]{0,6}([KMGT](i?B)?)?"),
        }),
        "metrics": st.fixed_dictionaries({}, optional={"pushgatewayURL": st.sampled_from(
            ["http://pushgateway.monitoring:9091", "https://pg.example.com/base/"])}),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, name=dns_label, namespace=dns_label)
def test_schema_valid_specs_render_runnable_cronjobs_or_a_clear_error(spec, name, namespace):
    backup = {"apiVersion": "s3backup.dev/v1alpha1", "kind": "S3Backup",
              "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    assume(SPEC_VALIDATOR.is_valid(backup))  # the API server refuses the rest
    FIGURES["S3Backup specs fuzzed"] += 1
    try:
        cronjob = render_cronjob(parse(backup), OperatorConfig())
    except InvalidSpec as refused:
        assert refused.reason and refused.message and "\n" not in refused.message
        return
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    try:
        parsed = cli.build_parser().parse_args(args)
        options = cli.options_from_args(parsed)
    except SystemExit:
        pytest.fail(f"the syncer rejects the rendered arguments: {args}")
    except UserError as error:
        pytest.fail(f"the syncer rejects the rendered arguments ({error}): {args}")
    source = spec["source"]
    assert list(options.includes) == source.get("include", [])
    assert list(options.excludes) == source.get("exclude", [])
    assert options.bucket == spec["destination"]["bucket"]
