"""A real Prometheus (Debian `prometheus`) that scrapes the session's Pushgateway and loads our rules."""

from __future__ import annotations

import pytest

from tests.support.services import Prometheus

from .helpers import RULES


@pytest.fixture(scope="package")
def prometheus(pushgateway):
    with Prometheus(pushgateway.url, rule_files=[RULES]) as server:
        yield server
