"""Shared fixtures: one real SeaweedFS for the session, a fresh prefix per test."""

from __future__ import annotations

import secrets

import pytest
from s3backup_syncer.local_s3 import LocalS3

from tests.support.services import Pushgateway

BUCKET = "s3backup-tests"


@pytest.fixture(scope="session")
def s3():
    """A running SeaweedFS (`LocalS3`) with one bucket, `BUCKET`, shared by the whole session."""
    with LocalS3() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def s3_client(s3):
    return s3.client()


@pytest.fixture
def prefix(request) -> str:
    """A prefix no other test uses (bucket creation is costly in SeaweedFS; prefixes are free)."""
    return f"t-{request.node.name[:40].replace('[', '-').replace(']', '')}-{secrets.token_hex(4)}"


@pytest.fixture
def s3_url(prefix) -> str:
    return f"s3://{BUCKET}/{prefix}"


@pytest.fixture
def s3_env(s3, monkeypatch):
    """Point the AWS environment (credentials and endpoint) at the test server."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3.env()


@pytest.fixture(scope="session")
def pushgateway():
    with Pushgateway() as gateway:
        yield gateway
