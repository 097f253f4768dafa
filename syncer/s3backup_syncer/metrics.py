"""Run metrics, pushed to a Prometheus Pushgateway at the end of every run.

Every run pushes one group under `job="s3backup"` and the backup's grouping key (`backup`, plus
`namespace` under the operator). The push uses POST ("push-add"): the gateway replaces only the
metric names present in the push and keeps the others. That is how the last success timestamp
survives a failed run: a failed run simply does not push it. The same goes for the remote size,
which a failed run may not have measured.

A push never fails the backup: problems come back as one line of text, with any credentials
in the gateway URL removed.
"""

from __future__ import annotations

import base64
import re
import urllib.error
from collections.abc import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import default_handler, pushadd_to_gateway

from .report import Summary

JOB = "s3backup"
RESULTS = ("success", "partial", "error")
FILE_OUTCOMES = ("uploaded", "unchanged", "recycled", "failed", "excluded")
BYTE_OUTCOMES = ("uploaded", "unchanged", "recycled", "failed")
_MAX_WARNING = 300


def run_metrics_registry(summary: Summary, expected_interval_seconds: float | None) -> CollectorRegistry:
    """The metrics of one run, in a registry of their own (never the process-global one)."""
    registry = CollectorRegistry(auto_describe=True)

    def gauge(name: str, documentation: str, value: float) -> None:
        Gauge(name, documentation, registry=registry).set(value)

    result = summary.result if summary.result in RESULTS else "error"
    finished_at = summary.started_at + summary.duration_seconds

    gauge("s3backup_last_run_timestamp_seconds", "When the last run ended (Unix time).", finished_at)
    if result == "success":
        gauge(
            "s3backup_last_success_timestamp_seconds",
            "When the last fully successful run ended (Unix time). Kept by failed runs.",
            finished_at,
        )
    gauge("s3backup_last_run_success", "1 if the last run synced everything, else 0.", result == "success")
    outcome = Gauge(
        "s3backup_last_run_result",
        "Result of the last run: 1 for its result, 0 for the others (success, partial, error).",
        ["result"],
        registry=registry,
    )
    for name in RESULTS:
        outcome.labels(result=name).set(name == result)
    gauge("s3backup_last_run_duration_seconds", "How long the last run took.", summary.duration_seconds)
    gauge("s3backup_last_run_scanned_files", "Local files the last run looked at.", summary.files_scanned)
    gauge("s3backup_last_run_scanned_bytes", "Size of the local files the last run looked at.", summary.bytes_scanned)
    files = Gauge(
        "s3backup_last_run_files",
        "Files of the last run by outcome (uploaded, unchanged, recycled, failed, excluded).",
        ["outcome"],
        registry=registry,
    )
    for name in FILE_OUTCOMES:
        files.labels(outcome=name).set(getattr(summary, f"files_{name}"))
    size = Gauge(
        "s3backup_last_run_bytes",
        "Bytes of the last run by outcome (uploaded, unchanged, recycled, failed).",
        ["outcome"],
        registry=registry,
    )
    for name in BYTE_OUTCOMES:
        size.labels(outcome=name).set(getattr(summary, f"bytes_{name}"))
    gauge("s3backup_last_run_hashed_bytes", "Bytes the last run read to compute checksums.", summary.bytes_hashed)
    gauge(
        "s3backup_last_run_resumed_bytes",
        "Bytes of interrupted uploads that the last run resumed instead of sending again.",
        summary.bytes_reused,
    )
    gauge(
        "s3backup_last_run_recycle_pending_objects",
        "Remote objects whose local file is gone, kept because they are not old enough to recycle.",
        summary.recycle_pending,
    )
    gauge(
        "s3backup_last_run_recycle_blocked",
        "1 if a safety guard refused the last run's due deletions (empty source, failures, cap), else 0.",
        bool(summary.recycle_blocked),
    )
    if result != "error":  # a failed run may not have listed the bucket: keep the last known size
        gauge(
            "s3backup_remote_objects", "Objects under the backup's prefix after the last run.", summary.remote_objects
        )
        gauge("s3backup_remote_bytes", "Bytes under the backup's prefix after the last run.", summary.remote_bytes)
    if expected_interval_seconds is not None and expected_interval_seconds > 0:
        gauge(
            "s3backup_expected_interval_seconds",
            "How often the backup is meant to run; alerts fire after twice this without a success.",
            expected_interval_seconds,
        )
    return registry


#: The `shard` grouping label of the final step of a sharded run (`s3backup recycle`).
RECYCLE_STEP_SHARD = "recycle"


def recycle_metrics_registry(summary: Summary) -> CollectorRegistry:
    """What the final step of a sharded run pushes, in its own group next to the shards': only what it did
    (recycled files and bytes, a refusal). No timestamps, results or scanned files: those are the shards',
    and the dashboard's sums over a backup's groups stay right."""
    registry = CollectorRegistry(auto_describe=True)
    Gauge("s3backup_last_run_files", "Files of the last run by outcome (uploaded, unchanged, recycled, failed, "
          "excluded).", ["outcome"], registry=registry).labels(outcome="recycled").set(summary.files_recycled)
    Gauge("s3backup_last_run_bytes", "Bytes of the last run by outcome (uploaded, unchanged, recycled, failed).",
          ["outcome"], registry=registry).labels(outcome="recycled").set(summary.bytes_recycled)
    Gauge("s3backup_last_run_recycle_blocked",
          "1 if a safety guard refused the last run's due deletions (empty source, failures, cap), else 0.",
          registry=registry).set(bool(summary.recycle_blocked))
    return registry


def push_run_metrics(
    gateway_url: str,
    grouping: dict[str, str],
    summary: Summary,
    expected_interval_seconds: float | None,
    timeout: float = 10,
) -> str | None:
    """Push the metrics of one run. Returns None when pushed, else a one-line warning.

    A dry run changes nothing, metrics included: it pushes nothing and returns None.
    """
    return _push(gateway_url, grouping, summary, lambda: run_metrics_registry(summary, expected_interval_seconds),
                 timeout)


def push_recycle_metrics(gateway_url: str, grouping: dict[str, str], summary: Summary,
                         timeout: float = 10) -> str | None:
    """Push what the final step of a sharded run did (recycle_metrics_registry); as push_run_metrics."""
    return _push(gateway_url, grouping, summary, lambda: recycle_metrics_registry(summary), timeout)


def _push(gateway_url: str, grouping: dict[str, str], summary: Summary, registry_of: Callable[[], CollectorRegistry],
          timeout: float) -> str | None:
    if summary.dry_run:
        return None
    password = ""
    try:
        url, handler, password = gateway_target(gateway_url)
        registry = registry_of()
        pushadd_to_gateway(url, job=JOB, registry=registry, grouping_key=grouping, timeout=timeout, handler=handler)
    except Exception as exc:  # a metrics problem must never fail the backup
        reason = _describe(exc, timeout)
        for secret in filter(None, {password, unquote(password)}):
            reason = reason.replace(secret, "***")  # belt and braces: requests never carry it in the URL
        line = " ".join(f"could not push metrics to {redact_url(gateway_url)}: {reason}".split())
        return line if len(line) <= _MAX_WARNING else line[: _MAX_WARNING - 1] + "…"
    return None


def redact_url(url: str) -> str:
    """The URL without user, password, query or fragment: safe to print."""
    try:
        parts = urlsplit(_with_scheme(url))
    except ValueError:
        return "the Pushgateway (invalid URL)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _with_scheme(url: str) -> str:
    url = url.strip()
    return url if re.match(r"(?i)https?://", url) else f"http://{url}"


def gateway_target(gateway_url: str) -> tuple[str, Callable, str]:
    """The URL without credentials, a request handler that sends them as basic auth, and the password.

    For prometheus_client's `*_to_gateway` and `delete_from_gateway` (the operator deletes groups too):
    urllib would not take `user:password@` from the URL.
    """
    parts = urlsplit(_with_scheme(gateway_url))
    userinfo, at, host = parts.netloc.rpartition("@")
    url = urlunsplit((parts.scheme, host, parts.path, "", ""))
    if not at:
        return url, default_handler, ""
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()

    def handler(url, method, timeout, headers, data):
        return default_handler(url, method, timeout, [*headers, ("Authorization", f"Basic {token}")], data)

    return url, handler, password


def _describe(exc: Exception, timeout: float) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            body = exc.read(500).decode("utf-8", "replace").strip().splitlines()
        except Exception:
            body = []
        return f"HTTP {exc.code} {exc.reason}" + (f": {body[0]}" if body else "")
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, Exception) else OSError(str(exc.reason))
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
