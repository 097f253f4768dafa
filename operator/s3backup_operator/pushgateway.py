"""Delete a backup's metrics group from the Pushgateway when its S3Backup goes away.

The URL handling (credentials sent as basic auth, `redact_url`) is the syncer's, in `s3backup_syncer.metrics`:
both push to the same gateway under the same grouping key.
"""

from __future__ import annotations

import asyncio

from prometheus_client import delete_from_gateway
from s3backup_syncer.metrics import JOB, gateway_target, redact_url

__all__ = ["delete_group", "redact_url"]


async def delete_group(gateway_url: str, namespace: str, backup: str, timeout: float = 10) -> None:
    """Delete the group the syncer pushes under the operator: job="s3backup", namespace, backup.

    The Pushgateway answers 202 whether or not the group existed. Raises on failure (urllib's errors).
    """
    url, handler, _password = gateway_target(gateway_url)
    await asyncio.to_thread(delete_from_gateway, url, job=JOB, grouping_key={"namespace": namespace, "backup": backup},
                            timeout=timeout, handler=handler)
