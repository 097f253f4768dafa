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
