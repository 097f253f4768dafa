"""A sharded backup's Pushgateway groups (one per shard): all deleted with the S3Backup, and those of an earlier
shard count pruned, against the real Pushgateway; the syncer's `shard` grouping label."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request

from s3backup_operator.pushgateway import delete_group, prune_shard_groups, stale_groups
from s3backup_syncer.cli import _shard_label
from s3backup_syncer.metrics import push_run_metrics
from s3backup_syncer.report import Summary


def push(pushgateway, grouping: dict[str, str]) -> None:
    assert push_run_metrics(pushgateway.url, grouping, Summary(result="success", duration_seconds=1.0), 86400) is None


def groups_of(pushgateway, namespace: str) -> list[dict[str, str]]:
    with urllib.request.urlopen(f"{pushgateway.url}/api/v1/metrics", timeout=5) as response:
        data = json.load(response)["data"]
    return sorted(({k: v for k, v in group["labels"].items() if k != "job"} for group in data
                   if group["labels"].get("namespace") == namespace), key=lambda g: sorted(g.items()))


def test_only_a_sharded_run_has_a_shard_label():
    assert _shard_label("2/4") == "2" and _shard_label("0/2") == "0"
    assert _shard_label(None) is None and _shard_label("0/1") is None
    assert _shard_label("5/4") is None  # a bad --shard: that run failed with its own message


def test_stale_groups_are_those_the_current_shard_count_does_not_push():
    base = {"job": "s3backup", "namespace": "ns", "backup": "b"}
    groups = [base, *({**base, "shard": str(i)} for i in range(4)), {**base, "shard": "recycle"},
              {**base, "backup": "other", "shard": "5"}, {"job": "other", "namespace": "ns", "backup": "b"}]
    own = {"namespace": "ns", "backup": "b"}
    assert stale_groups(groups, "ns", "b", 2) == [own, {**own, "shard": "2"}, {**own, "shard": "3"}]
    assert stale_groups(groups, "ns", "b", 1) == [{**own, "shard": shard} for shard in ("0", "1", "2", "3", "recycle")]
    assert stale_groups(groups, "ns", "b", 4) == [own]


def test_deleting_a_backup_deletes_every_shard_group_and_nothing_else(pushgateway):
    namespace = f"ns-{secrets.token_hex(3)}"
    for grouping in ({"backup": "big"}, *({"backup": "big", "shard": str(i)} for i in range(3)),
                     {"backup": "other", "shard": "0"}):
        push(pushgateway, {"namespace": namespace, **grouping})
    assert len(groups_of(pushgateway, namespace)) == 5
    asyncio.run(delete_group(pushgateway.url, namespace, "big"))
    assert groups_of(pushgateway, namespace) == [{"namespace": namespace, "backup": "other", "shard": "0"}]
    asyncio.run(delete_group(pushgateway.url, namespace, "other"))
    assert groups_of(pushgateway, namespace) == []


def test_a_new_shard_count_prunes_the_groups_no_longer_pushed(pushgateway):
    namespace = f"ns-{secrets.token_hex(3)}"
    for grouping in ({"backup": "big"}, *({"backup": "big", "shard": str(i)} for i in range(4))):
        push(pushgateway, {"namespace": namespace, **grouping})
    assert prune_shard_groups(pushgateway.url, namespace, "big", 2) == 3
    assert groups_of(pushgateway, namespace) == [{"namespace": namespace, "backup": "big", "shard": str(i)}
                                                 for i in range(2)]
    assert prune_shard_groups(pushgateway.url, namespace, "big", 2) == 0
    asyncio.run(delete_group(pushgateway.url, namespace, "big"))
