"""A source.hostPath fan-out under a real kopf against the emulator: the Node watch adds and removes runs, and
the Pushgateway groups of targets that left, and of all targets on deletion, are deleted."""

from __future__ import annotations

import pytest
from s3backup_operator.config import OperatorConfig, Policy
from s3backup_operator.metrics import OperatorMetrics

from tests.operator.conftest import TEST_IMAGE, make_backup
from tests.operator.emulator import wait_for
from tests.operator.test_lifecycle import (
    BACKUPS,
    CRONJOBS,
    NS,
    backup_status,
    create_secret,
    push_group,
    pushed_backups,
    wait_ready,
)

pytestmark = pytest.mark.timeout(90)
NODES = "/api/v1/nodes"


def node(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def target_cronjobs(cluster) -> list[str]:
    return sorted(item["metadata"]["name"] for item in cluster.items(CRONJOBS))


def test_nodes_that_join_or_leave_gain_or_lose_their_run_and_metrics(cluster, run_operator, pushgateway):
    config = OperatorConfig(image=TEST_IMAGE, retry_delay=0.5, resync_interval=0,
                            default_pushgateway_url=pushgateway.url,
                            policy=Policy.from_env({"S3BACKUP_ALLOW_HOST_PATH": NS}))
    create_secret(cluster)
    cluster.create(NODES, node("node-a", role="backup-server"))
    cluster.create(NODES, node("node-b", role="backup-server"))
    cluster.create(NODES, node("node-c"))
    with run_operator(config, OperatorMetrics()):
        cluster.create(BACKUPS, make_backup("servers", source={"hostPath": {"path": "/var/backups"},
                                                               "nodeSelector": {"role": "backup-server"}}))
        wait_ready(cluster, "True", "CronJobsReady", name="servers")
        assert target_cronjobs(cluster) == ["servers-node-a-s3backup", "servers-node-b-s3backup"]
        assert sorted(backup_status(cluster, "servers")["targets"]) == ["node-a", "node-b"]
        for target in ("node-a", "node-b"):
            push_group(pushgateway, f"servers/{target}")

        # node-c joins; node-b leaves: its CronJob, its status entry and its metrics group go.
        cluster.patch(f"{NODES}/node-c", {"metadata": {"labels": {"role": "backup-server"}}})
        wait_for(lambda: target_cronjobs(cluster) == ["servers-node-a-s3backup", "servers-node-b-s3backup",
                                                      "servers-node-c-s3backup"], what="node-c's CronJob")
        cluster.patch(f"{NODES}/node-b", {"metadata": {"labels": {"role": None}}})
        wait_for(lambda: target_cronjobs(cluster) == ["servers-node-a-s3backup", "servers-node-c-s3backup"],
                 what="node-b's CronJob gone")
        wait_for(lambda: sorted(backup_status(cluster, "servers").get("targets") or {}) == ["node-a", "node-c"],
                 what="node-b gone from the status")
        wait_for(lambda: "servers/node-b" not in pushed_backups(pushgateway), what="node-b's metrics group gone")
        assert "servers/node-a" in pushed_backups(pushgateway)

        # Deleting the S3Backup deletes every target's group.
        cluster.delete(f"{BACKUPS}/servers")
        wait_for(lambda: cluster.get(f"{BACKUPS}/servers") is None, what="the S3Backup gone")
        assert not {"servers/node-a", "servers/node-c"} & pushed_backups(pushgateway)
