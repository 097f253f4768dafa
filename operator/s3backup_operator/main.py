"""`s3backup-operator`: run the kopf operator (namespaces, health, peering, logs, /metrics)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket
import sys
from dataclasses import dataclass, field

import kopf
from prometheus_client import start_http_server

from s3backup_operator.config import OperatorConfig
from s3backup_operator.handlers import register
from s3backup_operator.metrics import OperatorMetrics

DEFAULT_PEERING = "s3backup-operator"


@dataclass(frozen=True)
class Options:
    namespaces: list[str] = field(default_factory=list)  # empty = all namespaces
    liveness_port: int = 8080
    metrics_port: int = 9090
    standalone: bool = False
    peering: str = DEFAULT_PEERING
    priority: int = 0
    log_format: str = "json"
    log_level: str = "info"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def liveness_endpoint(self) -> str | None:
        return f"http://0.0.0.0:{self.liveness_port}/healthz" if self.liveness_port else None


def default_priority(pod_name: str) -> int:
    """A peering priority from the pod name: 1..1,000,000.

    kopf pauses every replica when live peers share a priority; with distinct priorities the highest
    one acts and the others stand by until it is gone.
    """
    return int(hashlib.sha256(pod_name.encode()).hexdigest()[:12], 16) % 1_000_000 + 1


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Options:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="s3backup-operator",
        description="Kubernetes operator: one CronJob per S3Backup resource, running `s3backup sync`, and "
                    "one Job per S3Restore resource, running `s3backup restore`.",
        epilog="Environment: S3BACKUP_IMAGE, S3BACKUP_IMAGE_PULL_POLICY, S3BACKUP_PUSHGATEWAY_URL, "
               "S3BACKUP_NAMESPACES (comma-separated), S3BACKUP_LOG_FORMAT, S3BACKUP_RETRY_DELAY, "
               "S3BACKUP_RESYNC_INTERVAL, S3BACKUP_CHECK_SECRETS, S3BACKUP_IMAGE_PULL_SECRETS (comma-separated), "
               "S3BACKUP_ALLOW_HOST_PATH, S3BACKUP_ALLOW_SERVICE_ACCOUNT_NAME, S3BACKUP_ALLOW_UNRESTRICTED_VOLUMES "
               "('*' for every namespace, or comma-separated namespaces; empty: refused everywhere).",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)")
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch only this namespace (repeatable; globs allowed)")
    parser.add_argument("--liveness-port", type=int, default=8080, metavar="PORT",
                        help="serve GET /healthz on this port for liveness and readiness probes (0: off)")
    parser.add_argument("--metrics-port", type=int, default=9090, metavar="PORT",
                        help="serve Prometheus /metrics on this port (0: off)")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", default=DEFAULT_PEERING, metavar="NAME",
                         help="kopf peering object: only the highest-priority replica acts "
                              "(needs crds/kopf-peering.yaml)")
    peering.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    parser.add_argument("--priority", type=int, default=None,
                        help="this replica's peering priority (default: derived from the pod name, so that "
                             "replicas of one Deployment differ and only one of them acts)")
    parser.add_argument("--log-format", choices=["json", "plain", "full"],
                        default=env.get("S3BACKUP_LOG_FORMAT") or "json")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--verbose", action="store_const", const="verbose", dest="log_level")
    level.add_argument("--debug", action="store_const", const="debug", dest="log_level")
    level.add_argument("--quiet", action="store_const", const="quiet", dest="log_level")
    args = parser.parse_args(argv)
    namespaces = list(args.namespace)
    if not namespaces and not args.all_namespaces:
        namespaces = [ns.strip() for ns in (env.get("S3BACKUP_NAMESPACES") or "").split(",") if ns.strip()]
    for port in (args.liveness_port, args.metrics_port):
        if not 0 <= port <= 65535:
            parser.error(f"invalid port {port}")
    return Options(
        namespaces=namespaces,
        liveness_port=args.liveness_port,
        metrics_port=args.metrics_port,
        standalone=args.standalone,
        peering=args.peering,
        priority=args.priority if args.priority is not None else default_priority(
            env.get("HOSTNAME") or socket.gethostname()),
        log_format=args.log_format,
        log_level=args.log_level or "info",
    )


def configure_logging(options: Options) -> None:
    """kopf's own logging setup: JSON lines carrying the object reference of each handler's logger."""
    kopf.configure(
        debug=options.log_level == "debug",
        verbose=options.log_level in ("verbose", "debug"),
        quiet=options.log_level == "quiet",
        log_format=kopf.LogFormat[options.log_format.upper()],
        log_refkey="object",
        log_prefix=options.log_format != "json",
    )


def serve_only_the_named_namespaces(registry: kopf.OperatorRegistry) -> None:
    """With --namespace, RBAC grants the operator those namespaces only: kopf must not try to list the cluster's
    (it asked nine times, with its backoff, about a minute, before falling back to the named ones)."""

    @kopf.on.startup(registry=registry)
    def no_namespace_scanning(settings: kopf.OperatorSettings, **_: object) -> None:
        settings.scanning.disabled = True


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    config = OperatorConfig.from_env()
    configure_logging(options)
    metrics = OperatorMetrics()
    if options.metrics_port:
        start_http_server(options.metrics_port, registry=metrics.registry)
    registry = kopf.OperatorRegistry()
    register(registry, config, metrics)
    if not options.clusterwide:
        serve_only_the_named_namespaces(registry)
    logging.getLogger("s3backup_operator").info(
        "starting: namespaces=%s peering=%s image=%s", options.namespaces or "all",
        "standalone" if options.standalone else options.peering, config.image,
    )
    try:
        kopf.run(
            registry=registry,
            clusterwide=options.clusterwide,
            namespaces=options.namespaces,
            # A peering name makes peering mandatory (kopf pauses until the peering CRD exists): never with
            # --standalone, which kopf would otherwise not honour.
            standalone=options.standalone,
            peering_name=None if options.standalone else options.peering,
            priority=options.priority,
            liveness_endpoint=options.liveness_endpoint,
        )
    except KeyboardInterrupt:
        return 0
    except Exception as error:  # a one-line reason for the pod's last state, no traceback
        print(f"s3backup-operator: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
