"""One S3Backup -> the runs it stands for (pure): each target is a BackupSpec of its own, rendered by the
same `render_cronjob` as any other.

`source.volume`: the resource itself, one target (unchanged). `source.hostPath` + `source.nodeSelector`: one
target per matching node, its hostPath volume, pinned to that node, under `PREFIX/<node name>/`.
`source.selector`: one target per matching PersistentVolumeClaim of the namespace, under `PREFIX/<claim name>/`.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

from s3backup_operator.affinity import pin_to_node
from s3backup_operator.render import BACKUP_LABEL
from s3backup_operator.spec import BackupSpec


def matches(labels: Mapping[str, str] | None, selector: Mapping[str, str] | None) -> bool:
    """A plain nodeSelector (every key=value present), as the scheduler reads `nodeSelector`."""
    labels = labels or {}
    return all(labels.get(key) == value for key, value in (selector or {}).items())


def matching_nodes(spec: BackupSpec, nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """The names of the Nodes a hostPath backup runs on: matching its nodeSelector, not being deleted."""
    names = {node["metadata"]["name"] for node in nodes
             if not node["metadata"].get("deletionTimestamp")
             and matches(node["metadata"].get("labels"), spec.source.node_selector)}
    return sorted(names)


def selects(labels: Mapping[str, str] | None, selector: Mapping[str, Any]) -> bool:
    """A metav1.LabelSelector (matchLabels and matchExpressions), as the API server applies it."""
    labels = labels or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if (operator == "In" and labels.get(key) not in values) or (
                operator == "NotIn" and present and labels[key] in values) or (
                operator == "Exists" and not present) or (operator == "DoesNotExist" and present):
            return False
    return True


def matching_claims(spec: BackupSpec, claims: Iterable[Mapping[str, Any]]) -> list[str]:
    """The names of the namespace's PersistentVolumeClaims a selector backup runs for (not being deleted)."""
    return sorted({claim["metadata"]["name"] for claim in claims
                   if not claim["metadata"].get("deletionTimestamp")
                   and BACKUP_LABEL not in (claim["metadata"].get("labels") or {})  # the operator's own clones
                   and selects(claim["metadata"].get("labels"), spec.source.claim_selector or {})})


def target_prefix(prefix: str, key: str) -> str:
    """PREFIX/<key>: each target under its own prefix, never overlapping another's."""
    return posixpath.join(prefix.strip("/"), key) if prefix.strip("/") else key


def pinned_to_node(spec: BackupSpec, node: str) -> BackupSpec:
    """The same run, required on `node` (a ReadWriteOnce claim's pod is there)."""
    return dataclasses.replace(spec, job=dataclasses.replace(spec.job, affinity=pin_to_node(spec.job.affinity, node)))


def node_target(spec: BackupSpec, node: str) -> BackupSpec:
    """The run on one node: its hostPath, required on that node, under PREFIX/<node>/."""
    source = dataclasses.replace(spec.source, volume={"hostPath": {"path": spec.source.host_path,
                                                                   "type": "Directory"}},
                                 host_path="", node_selector=None)
    destination = dataclasses.replace(spec.destination, prefix=target_prefix(spec.destination.prefix, node))
    job = dataclasses.replace(spec.job, affinity=pin_to_node(spec.job.affinity, node))
    return dataclasses.replace(spec, source=source, destination=destination, job=job, target=node)


def claim_target(spec: BackupSpec, claim: str) -> BackupSpec:
    """The run for one claim: that claim as the volume, under PREFIX/<claim>/ (a ReadWriteOnce claim's run is
    then placed on its pod's node like any other's)."""
    source = dataclasses.replace(spec.source, volume={"persistentVolumeClaim": {"claimName": claim}},
                                 claim_selector=None)
    destination = dataclasses.replace(spec.destination, prefix=target_prefix(spec.destination.prefix, claim))
    return dataclasses.replace(spec, source=source, destination=destination, target=claim)


def targets(spec: BackupSpec, names: Iterable[str] = ()) -> dict[str, BackupSpec]:
    """{target key: its BackupSpec}; {"": spec} for a resource that does not fan out. `names`: the matching
    nodes (hostPath) or claims (selector)."""
    if not spec.source.fans_out:
        return {"": spec}
    make = node_target if spec.source.host_path else claim_target
    return {name: make(spec, name) for name in sorted(set(names))}
