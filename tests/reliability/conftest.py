"""Reliability suite: fixtures, and the figures (faults injected, runs, kills, objects verified) it reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.reliability.helpers import FIGURES, client_for
from tests.support.fault_proxy import TALLY, FaultProxy


@pytest.fixture(autouse=True)
def _aws_environment(s3_env):
    """Credentials of the session's SeaweedFS in the environment, for the syncer subprocesses."""
    return s3_env


@pytest.fixture
def proxy_factory(s3):
    """`proxy_factory(rates={...}, seed=..)` starts a FaultProxy in front of the session's SeaweedFS."""
    started: list[FaultProxy] = []

    def start(**settings) -> FaultProxy:
        proxy = FaultProxy(s3.endpoint_url, **settings).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def direct(s3):
    """A client straight to SeaweedFS (no proxy): what the tests check with."""
    return client_for(s3)


@pytest.fixture
def src(tmp_path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not FIGURES and not TALLY:
        return
    figures = {**dict(sorted(FIGURES.items())), "faults injected": sum(TALLY.values()),
               "faults by kind": dict(sorted(TALLY.items()))}
    terminalreporter.write_sep("-", "reliability figures")
    for name, value in figures.items():
        terminalreporter.write_line(f"{name}: {value}")
    target = os.environ.get("S3BACKUP_RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps(figures, indent=2) + "\n")
