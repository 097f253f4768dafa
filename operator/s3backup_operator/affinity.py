"""Where a backup pod must run (pure): pinning to one node, merged into the user's own affinity."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

#: The field of a Node that a nodeSelectorTerm's matchFields may name (what DaemonSets pin their pods with).
NODE_NAME_FIELD = "metadata.name"


def pin_to_node(affinity: Mapping[str, Any] | None, node: str) -> dict[str, Any]:
    """`affinity` with the pod required on `node` (by the Node's name, not a label that may differ from it).

    Required nodeSelectorTerms are ORed, so the node's term is added to each of the user's terms (AND within a
    term) rather than as a term of its own: the user's own node requirements still hold.
    """
    result = copy.deepcopy(dict(affinity or {}))
    node_affinity = result.setdefault("nodeAffinity", {})
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    field = {"key": NODE_NAME_FIELD, "operator": "In", "values": [node]}
    terms = required.get("nodeSelectorTerms") or [{}]
    required["nodeSelectorTerms"] = [{**term, "matchFields": [*(term.get("matchFields") or []), field]}
                                     for term in terms]
    return result


# A ReadWriteOnce claim can be mounted on one node only: the backup pod must run where the claim's running
# pod already is. Decided at run time (the node may change between reconciles): the CronJob creates its Jobs
# suspended, and the operator pins each to the node of the claim's pod, then lets it start.

#: Access modes that tie a claim to one node. A claim that also allows a *Many mode may be mounted anywhere.
SINGLE_NODE_MODES = frozenset({"ReadWriteOnce", "ReadWriteOncePod"})
#: On the CronJob's jobTemplate: the claim whose pod's node a run is pinned to before it starts.
PLACEMENT_ANNOTATION = "s3backup.dev/place-with-claim"


def claim_name(volume: Mapping[str, Any]) -> str:
    """The claim of a persistentVolumeClaim volume source, "" for any other kind."""
    return str((volume.get("persistentVolumeClaim") or {}).get("claimName") or "")


def single_node(claim: Mapping[str, Any] | None) -> bool:
    """Whether a PersistentVolumeClaim can only be mounted on one node (its modes, as bound or as asked)."""
    if not claim:
        return False
    modes = (claim.get("status") or {}).get("accessModes") or (claim.get("spec") or {}).get("accessModes") or []
    return bool(modes) and set(modes) <= SINGLE_NODE_MODES


def volume_node(claim: str, pods: list[Mapping[str, Any]], managed_by: str) -> str | None:
    """The node of a live pod that mounts `claim` (not one of the operator's own), or None.

    A ReadWriteOnce volume's pods share one node, so any of them tells it; the first by name keeps it
    deterministic."""
    nodes = sorted((str(pod["metadata"].get("name", "")), str(pod["spec"]["nodeName"])) for pod in pods
                   if (pod.get("spec") or {}).get("nodeName")
                   and not pod["metadata"].get("deletionTimestamp")
                   and (pod.get("status") or {}).get("phase") in ("Pending", "Running")
                   and (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") != managed_by
                   and any(claim_name(volume) == claim for volume in pod["spec"].get("volumes") or []))
    return nodes[0][1] if nodes else None


def placed_at_run_time(cronjob: dict[str, Any], claim: str) -> dict[str, Any]:
    """The rendered CronJob, its Jobs created suspended and marked with the claim to follow (the operator
    pins and starts each: a suspended Job that never ran may change its node affinity, Kubernetes 1.27+)."""
    result = copy.deepcopy(cronjob)
    template = result["spec"]["jobTemplate"]
    template["spec"]["suspend"] = True
    template["metadata"].setdefault("annotations", {})[PLACEMENT_ANNOTATION] = claim
    return result


def placement_patch(job: Mapping[str, Any], node: str | None) -> dict[str, Any] | None:
    """The merge patch that starts a suspended Job marked by `placed_at_run_time`, pinned to `node` (if any
    pod mounts its claim: else the scheduler decides, as for any pod). None when there is nothing to do."""
    spec = job.get("spec") or {}
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    if not spec.get("suspend") or PLACEMENT_ANNOTATION not in annotations or (job.get("status") or {}).get(
            "startTime"):
        return None
    patch: dict[str, Any] = {"spec": {"suspend": False}}
    if node:
        affinity = ((spec.get("template") or {}).get("spec") or {}).get("affinity")
        pinned = pin_to_node(affinity, node)
        patch["spec"]["template"] = {"spec": {"affinity": {"nodeAffinity": pinned["nodeAffinity"]}}}
    return patch
