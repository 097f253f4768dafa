"""Delete a backup's metrics group from the Pushgateway when its S3Backup goes away."""

from __future__ import annotations

import base64

import aiohttp

JOB = "s3backup"


def _segment(label: str, value: str) -> str:
    # The Pushgateway's URL form for a value that may hold "/" (or be empty): label@base64/<base64url>.
    if not value or "/" in value:
        encoded = base64.urlsafe_b64encode(value.encode()).decode() or "="
        return f"/{label}@base64/{encoded}"
    return f"/{label}/{value}"


def group_url(gateway_url: str, namespace: str, backup: str) -> str:
    """The grouping key the syncer pushes under the operator: job="s3backup", namespace, backup."""
    return f"{gateway_url.rstrip('/')}/metrics/job/{JOB}" + _segment("namespace", namespace) + _segment(
        "backup", backup)


async def delete_group(gateway_url: str, namespace: str, backup: str, timeout: float = 10) -> None:
    """DELETE the group (the Pushgateway answers 202 whether or not it existed). Raises on failure."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
            session.delete(group_url(gateway_url, namespace, backup)) as response:
        if response.status >= 300:
            raise RuntimeError(f"Pushgateway answered HTTP {response.status} to the group deletion")


def redact_url(url: str) -> str:
    """The URL without user:password, for logs and status."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{slash}{path}"
