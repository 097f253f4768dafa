"""A backup's metrics groups in the Pushgateway: deleted when its S3Backup goes away, pruned when N changes.

A backup pushes one group (job="s3backup", namespace, backup), or with `spec.transfer.shards: N > 1` one
group per shard (label `shard`, "0" to "N-1") and one of the final recycle step (`shard="recycle"`).
The URL handling (credentials sent as basic auth, `redact_url`) is the syncer's, in `s3backup_syncer.metrics`:
both talk to the same gateway.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from prometheus_client import delete_from_gateway
from s3backup_syncer.metrics import JOB, RECYCLE_STEP_SHARD, gateway_target, redact_url

__all__ = ["delete_group", "prune_shard_groups", "redact_url", "stale_groups"]

Labels = dict[str, str]


def _own(groups: Iterable[Labels], namespace: str, backup: str) -> list[Labels]:
    """The grouping keys (without `job`) of one backup's groups."""
    return [{key: value for key, value in labels.items() if key != "job"} for labels in groups
            if labels.get("job") == JOB and labels.get("namespace") == namespace and labels.get("backup") == backup]


def stale_groups(groups: Iterable[Labels], namespace: str, backup: str, shards: int) -> list[Labels]:
    """The groups of this backup that a backup of `shards` shards no longer pushes (pure): with N > 1 its
    unsharded group and shards >= N, with N = 1 every shard's and the recycle step's. They would add to the
    dashboard's sums."""
    base = {"namespace": namespace, "backup": backup}
    labels = [*map(str, range(shards)), RECYCLE_STEP_SHARD]
    pushed = [base] if shards == 1 else [{**base, "shard": label} for label in labels]
    return [labels for labels in _own(groups, namespace, backup) if labels not in pushed]


def _list_groups(gateway_url: str, timeout: float) -> list[Labels]:
    """Every group's labels (the gateway's GET /api/v1/metrics), with the basic auth the syncer sends."""
    url, _handler, _password = gateway_target(gateway_url)
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/metrics")
    parts = urlsplit(gateway_url if "://" in gateway_url else f"http://{gateway_url}")
    if parts.username is not None:
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = json.load(response).get("data") or []
    return [dict(group.get("labels") or {}) for group in data]


def _delete(gateway_url: str, grouping: Labels, timeout: float) -> None:
    url, handler, _password = gateway_target(gateway_url)
    delete_from_gateway(url, job=JOB, grouping_key=grouping, timeout=timeout, handler=handler)


async def delete_group(gateway_url: str, namespace: str, backup: str, timeout: float = 10) -> None:
    """Delete every group of the backup: its own (job="s3backup", namespace, backup) and one per shard.

    The Pushgateway answers 202 whether or not a group existed. Raises on failure (urllib's errors).
    """
    def delete_all() -> None:
        _delete(gateway_url, {"namespace": namespace, "backup": backup}, timeout)
        for grouping in _own(_list_groups(gateway_url, timeout), namespace, backup):
            _delete(gateway_url, grouping, timeout)

    await asyncio.to_thread(delete_all)


def prune_shard_groups(gateway_url: str, namespace: str, backup: str, shards: int, timeout: float = 10) -> int:
    """Delete the groups that a backup of `shards` shards no longer pushes; returns how many. Raises on failure."""
    stale = stale_groups(_list_groups(gateway_url, timeout), namespace, backup, shards)
    for grouping in stale:
        _delete(gateway_url, grouping, timeout)
    return len(stale)
