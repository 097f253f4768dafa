"""The CRD's openAPIV3Schema as a JSON Schema validator, and its defaults applied as the API server would."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate

#: Kubernetes versions the rendered manifests are checked against (CronJob.spec.timeZone is GA since 1.27).
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema.

    `nullable` becomes a "null" type; objects with fixed properties reject unknown fields, as
    `kubectl apply` does with its default strict field validation (the API server would prune them).
    """
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: to_json_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    schema.pop("nullable", None)
    if node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in node:
        schema["additionalProperties"] = False
    return schema


def validator(openapi_schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(to_json_schema(openapi_schema),
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill in `default`s the way the API server does for a structural schema (recursively)."""
    value = copy.deepcopy(value)
    if schema.get("type") == "object" and isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
    elif schema.get("type") == "array" and isinstance(value, list) and "items" in schema:
        value = [apply_defaults(item, schema["items"]) for item in value]
    return value


def validate_builtin(manifest: dict[str, Any]) -> None:
    """Validate a built-in kind against the official schemas (strict: unknown fields are errors)."""
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)
