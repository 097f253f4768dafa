"""Fixtures: a fresh emulator per test, and a real kopf operator (KopfRunner) logged in to it."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes.client import Configuration
from s3backup_operator.config import OperatorConfig
from s3backup_operator.handlers import register
from s3backup_operator.metrics import OperatorMetrics

from tests.operator.emulator import Cluster, Emulator

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "s3backup.dev_s3backups.yaml"
EXAMPLES = ROOT / "examples"
TEST_IMAGE = "registry.example/s3backup:test"


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="session")
def crd_schema(crd) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator() as server:
        yield server


@pytest.fixture
def cluster(emulator) -> Cluster:
    return Cluster(emulator.url)


@pytest.fixture
def config() -> OperatorConfig:
    # No periodic resync in tests (see handlers.register): every step is driven by an event.
    return OperatorConfig(image=TEST_IMAGE, retry_delay=0.5, resync_interval=0)


@pytest.fixture
def run_operator(emulator) -> Callable[..., contextlib.AbstractContextManager[KopfRunner]]:
    """`with run_operator(config, metrics) as runner:` a real kopf (by default cluster-wide, standalone)."""

    @contextlib.contextmanager
    def start(config: OperatorConfig, metrics: OperatorMetrics | None = None,
              scope: tuple[str, ...] = ("-A",)) -> Iterator[KopfRunner]:
        registry = kopf.OperatorRegistry()
        register(registry, config, metrics or OperatorMetrics(), **emulator_login(emulator))
        settings = kopf.OperatorSettings()
        settings.queueing.exit_timeout = 0.5
        with KopfRunner(["run", *scope, "--standalone", "--verbose"], registry=registry, settings=settings,
                        timeout=30) as runner:
            yield runner
        assert runner.exit_code == 0, runner.output
        assert runner.exception is None

    return start


def emulator_login(emulator: Emulator) -> dict[str, Any]:
    """register()'s login and client configuration, both pointing at the emulator (plain HTTP, no auth)."""
    return {"login": lambda **_: kopf.ConnectionInfo(server=emulator.url),
            "client_config": lambda: Configuration(host=emulator.url)}


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def make_backup(name: str = "db-dumps", namespace: str = "backups", **spec_changes: Any) -> dict[str, Any]:
    """An S3Backup as kubectl would post it (the emulator adds uid, generation, resourceVersion)."""
    body: dict[str, Any] = {
        "apiVersion": "s3backup.dev/v1alpha1",
        "kind": "S3Backup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "schedule": "H 2 * * *",
            "timeZone": "Europe/Berlin",
            "source": {"volume": {"persistentVolumeClaim": {"claimName": "dumps"}}},
            "destination": {
                "bucket": "my-backups",
                "prefix": "cluster-a/db",
                "endpoint": "https://s3.example.com",
                "region": "eu-west-1",
                "forcePathStyle": True,
                "credentialsSecretRef": {"name": "s3-credentials"},
            },
        },
    }
    body["spec"].update(copy.deepcopy(spec_changes))
    return body


def option(args: list[str], name: str) -> str | None:
    """The value of the syncer option `name` in rendered args (each is one `--name=value` item), else None."""
    values = [arg.partition("=")[2] for arg in args if arg.partition("=")[0] == name]
    return values[0] if values else None
