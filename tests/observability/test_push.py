"""push_run_metrics against a real Pushgateway (Debian prometheus-pushgateway): what lands there."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import threading
import urllib.error

import pytest
from s3backup_syncer.local_s3 import free_port
from s3backup_syncer.metrics import push_run_metrics, redact_url

from tests.support.services import Pushgateway

from .helpers import GATEWAY_OWN_METRICS, gateway_series, summary, value

# bcrypt (cost 4) of PASSWORD, for a Pushgateway behind basic auth.
USER, PASSWORD = "pusher", "s3cr3t/p@ss%word"
PASSWORD_HASH = "$2b$04$4B9T1Lcp2CkNdiZIV1Lu6u.lPRGcgQk2Rs/hyq/sB8PbXEfjQda0a"
PASSWORD_IN_URL = "s3cr3t%2Fp%40ss%25word"


def backup_name() -> str:
    return f"obs-{secrets.token_hex(4)}"


def without_gateway_own(series):
    return {key: v for key, v in series.items() if key[0] not in GATEWAY_OWN_METRICS}


def test_success_pushes_every_metric_with_its_value(pushgateway):
    backup = backup_name()
    assert push_run_metrics(pushgateway.url, {"backup": backup}, summary(), expected_interval_seconds=86400) is None

    pushed = without_gateway_own(gateway_series(pushgateway.url, backup=backup))
    end = 1_700_000_012.5

    def key(name, **labels):
        return (name, frozenset(labels.items()))

    assert pushed == {
        key("s3backup_last_run_timestamp_seconds"): end,
        key("s3backup_last_success_timestamp_seconds"): end,
        key("s3backup_last_run_success"): 1,
        key("s3backup_last_run_result", result="success"): 1,
        key("s3backup_last_run_result", result="partial"): 0,
        key("s3backup_last_run_result", result="error"): 0,
        key("s3backup_last_run_duration_seconds"): 12.5,
        key("s3backup_last_run_scanned_files"): 11,
        key("s3backup_last_run_scanned_bytes"): 1100,
        key("s3backup_last_run_files", outcome="uploaded"): 3,
        key("s3backup_last_run_files", outcome="unchanged"): 7,
        key("s3backup_last_run_files", outcome="recycled"): 2,
        key("s3backup_last_run_files", outcome="failed"): 0,
        key("s3backup_last_run_files", outcome="excluded"): 4,
        key("s3backup_last_run_bytes", outcome="uploaded"): 300,
        key("s3backup_last_run_bytes", outcome="unchanged"): 700,
        key("s3backup_last_run_bytes", outcome="recycled"): 200,
        key("s3backup_last_run_bytes", outcome="failed"): 0,
        key("s3backup_last_run_hashed_bytes"): 450,
        key("s3backup_last_run_resumed_bytes"): 64,
        key("s3backup_last_run_recycle_pending_objects"): 5,
        key("s3backup_last_run_recycle_blocked"): 0,
        key("s3backup_remote_objects"): 12,
        key("s3backup_remote_bytes"): 1234,
        key("s3backup_expected_interval_seconds"): 86400,
    }


def test_grouping_labels_namespace_and_a_backup_name_with_slashes(pushgateway):
    backup = f"bucket/{backup_name()}/db dumps"  # the CLI's default name is BUCKET/PREFIX
    grouping = {"namespace": "team-a", "backup": backup}
    assert push_run_metrics(pushgateway.url, grouping, summary(), expected_interval_seconds=None) is None

    pushed = gateway_series(pushgateway.url, namespace="team-a", backup=backup)
    assert value(pushed, "s3backup_last_run_success") == 1
    assert value(pushed, "push_time_seconds") > 0
    assert value(pushed, "s3backup_expected_interval_seconds") is None  # not given, not invented


def test_failed_run_keeps_the_last_success_and_the_last_known_remote_size(pushgateway):
    backup = backup_name()
    grouping = {"backup": backup}
    first = summary(started_at=1_000.0, duration_seconds=10.0, remote_objects=12, remote_bytes=1234)
    assert push_run_metrics(pushgateway.url, grouping, first, 3600) is None

    failed = summary(
        result="error", error="bucket 'x' does not exist", exit_code=2, started_at=2_000.0,
        duration_seconds=1.0, files_scanned=0, bytes_scanned=0, files_uploaded=0, bytes_uploaded=0,
        files_unchanged=0, bytes_unchanged=0, files_recycled=0, bytes_recycled=0, files_excluded=0,
        bytes_hashed=0, remote_objects=0, remote_bytes=0, recycle_pending=0,
    )  # fmt: skip
    assert push_run_metrics(pushgateway.url, grouping, failed, 3600) is None

    pushed = gateway_series(pushgateway.url, backup=backup)
    assert value(pushed, "s3backup_last_success_timestamp_seconds") == 1_010.0
    assert value(pushed, "s3backup_last_run_timestamp_seconds") == 2_001.0
    assert value(pushed, "s3backup_last_run_success") == 0
    assert value(pushed, "s3backup_last_run_result", result="error") == 1
    assert value(pushed, "s3backup_last_run_result", result="success") == 0
    assert value(pushed, "s3backup_last_run_duration_seconds") == 1.0
    assert value(pushed, "s3backup_last_run_files", outcome="uploaded") == 0  # this run's counts
    assert value(pushed, "s3backup_remote_bytes") == 1234  # not measured by the failed run
    assert value(pushed, "s3backup_remote_objects") == 12

    partial = summary(result="partial", exit_code=1, started_at=3_000.0, duration_seconds=5.0,
                      files_failed=2, bytes_failed=20, remote_objects=14, remote_bytes=1500)  # fmt: skip
    assert push_run_metrics(pushgateway.url, grouping, partial, 3600) is None
    pushed = gateway_series(pushgateway.url, backup=backup)
    assert value(pushed, "s3backup_last_success_timestamp_seconds") == 1_010.0  # partial is no success
    assert value(pushed, "s3backup_last_run_result", result="partial") == 1
    assert value(pushed, "s3backup_last_run_files", outcome="failed") == 2
    assert value(pushed, "s3backup_last_run_bytes", outcome="failed") == 20
    assert value(pushed, "s3backup_remote_bytes") == 1500  # a partial run did list the bucket

    assert push_run_metrics(pushgateway.url, grouping, summary(started_at=4_000.0, duration_seconds=2.0), 3600) is None
    pushed = gateway_series(pushgateway.url, backup=backup)
    assert value(pushed, "s3backup_last_success_timestamp_seconds") == 4_002.0
    assert value(pushed, "s3backup_last_run_success") == 1


def test_run_that_failed_early_pushes_its_failure_without_a_success(pushgateway):
    backup = backup_name()
    early = summary(result="error", error="no AWS credentials found", exit_code=2, started_at=5_000.0,
                    duration_seconds=0.0, files_scanned=0, remote_objects=0, remote_bytes=0)  # fmt: skip
    assert push_run_metrics(pushgateway.url, {"backup": backup}, early, 600) is None

    pushed = gateway_series(pushgateway.url, backup=backup)
    assert value(pushed, "s3backup_last_run_result", result="error") == 1
    assert value(pushed, "s3backup_last_run_timestamp_seconds") == 5_000.0
    assert value(pushed, "s3backup_expected_interval_seconds") == 600
    assert value(pushed, "s3backup_last_success_timestamp_seconds") is None
    assert value(pushed, "s3backup_remote_bytes") is None  # unknown, not zero


def test_a_result_the_metrics_do_not_know_counts_as_an_error(pushgateway):
    backup = backup_name()
    assert push_run_metrics(pushgateway.url, {"backup": backup}, summary(result="running"), 60) is None
    pushed = gateway_series(pushgateway.url, backup=backup)
    assert value(pushed, "s3backup_last_run_result", result="error") == 1
    assert value(pushed, "s3backup_last_success_timestamp_seconds") is None


def test_dry_run_pushes_nothing(pushgateway):
    backup = backup_name()
    assert push_run_metrics(pushgateway.url, {"backup": backup}, summary(dry_run=True), 60) is None
    assert gateway_series(pushgateway.url, backup=backup) == {}


def test_the_operators_group_deletion_removes_what_the_syncer_pushed(pushgateway):
    """Under the operator the syncer pushes {namespace, backup}; deleting the S3Backup deletes that group."""
    from s3backup_operator.pushgateway import delete_group

    keep, gone = backup_name(), backup_name()
    for backup in (keep, gone):
        assert push_run_metrics(pushgateway.url, {"namespace": "ns", "backup": backup}, summary(), 60) is None
    assert gateway_series(pushgateway.url, namespace="ns", backup=gone) != {}

    asyncio.run(delete_group(pushgateway.url, "ns", gone))

    assert gateway_series(pushgateway.url, namespace="ns", backup=gone) == {}
    assert value(gateway_series(pushgateway.url, namespace="ns", backup=keep), "s3backup_last_run_success") == 1


def test_gateway_down_gives_one_line_without_credentials():
    port = free_port()  # nothing listens there (and, below the ephemeral range, a connection never meets itself)
    url = f"http://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{port}/gw?token=abc"
    warning = push_run_metrics(url, {"backup": "b"}, summary(), 60, timeout=2)

    assert warning is not None
    assert warning == f"could not push metrics to http://127.0.0.1:{port}/gw: Connection refused"
    assert "\n" not in warning


def test_gateway_that_never_answers_times_out_with_a_warning():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # accepts connections into the backlog, never answers
        port = server.getsockname()[1]
        warning = push_run_metrics(f"127.0.0.1:{port}", {"backup": "b"}, summary(), 60, timeout=0.5)
    assert warning == f"could not push metrics to http://127.0.0.1:{port}: no answer within 0.5s"


def test_gateway_error_status_is_reported_on_one_line(pushgateway):
    # "job" cannot be a grouping label twice: the gateway answers 400 with its reason.
    backup = backup_name()
    warning = push_run_metrics(pushgateway.url + "/metrics/job/x", {"backup": backup}, summary(), 60)
    assert warning is not None and warning.startswith(
        f"could not push metrics to {pushgateway.url}/metrics/job/x: HTTP "
    )
    assert "\n" not in warning


class AuthPushgateway(Pushgateway):
    """A Pushgateway that wants basic auth (exporter-toolkit web config)."""

    def args(self) -> list[str]:
        config = self.dir / "web.yml"
        config.write_text(f'basic_auth_users:\n  {USER}: "{PASSWORD_HASH}"\n')
        return [*super().args(), f"--web.config.file={config}"]


@pytest.fixture(scope="module")
def auth_gateway():
    with AuthPushgateway() as gateway:
        yield gateway


def test_credentials_in_the_url_are_sent_as_basic_auth(auth_gateway):
    backup = backup_name()
    url = auth_gateway.url.replace("http://", f"http://{USER}:{PASSWORD_IN_URL}@")
    assert push_run_metrics(url, {"backup": backup}, summary(), 60) is None
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert value(gateway_series(auth_gateway.url, authorization=basic, backup=backup), "s3backup_last_run_success") == 1
    with pytest.raises(urllib.error.HTTPError, match="401"):
        gateway_series(auth_gateway.url, backup=backup)  # the gateway does want credentials


def test_wrong_credentials_give_a_warning_without_them(auth_gateway):
    url = auth_gateway.url.replace("http://", f"http://{USER}:wrong-{PASSWORD_IN_URL}@")
    warning = push_run_metrics(url, {"backup": backup_name()}, summary(), 60)
    assert warning is not None
    assert warning.startswith(f"could not push metrics to {auth_gateway.url}: HTTP 401 Unauthorized")
    for secret in (PASSWORD, PASSWORD_IN_URL, "wrong-", f"{USER}:"):
        assert secret not in warning


def test_the_operators_deletion_sends_the_urls_credentials_and_encodes_slashes(auth_gateway):
    """The operator deletes through prometheus_client with the syncer's URL handling: basic auth from the
    URL, and a backup name with `/` in the grouping key (base64), as the syncer pushed it."""
    from s3backup_operator.pushgateway import delete_group

    url = auth_gateway.url.replace("http://", f"http://{USER}:{PASSWORD_IN_URL}@")
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    gone, keep = backup_name() + "/x", backup_name()
    for backup in (gone, keep):
        assert push_run_metrics(url, {"namespace": "ns", "backup": backup}, summary(), 60) is None
    assert gateway_series(auth_gateway.url, authorization=basic, namespace="ns", backup=gone) != {}

    asyncio.run(delete_group(url, "ns", gone))

    assert gateway_series(auth_gateway.url, authorization=basic, namespace="ns", backup=gone) == {}
    assert gateway_series(auth_gateway.url, authorization=basic, namespace="ns", backup=keep) != {}
    with pytest.raises(urllib.error.HTTPError, match="401"):
        asyncio.run(delete_group(auth_gateway.url, "ns", keep))  # without credentials: refused, and raised


def test_concurrent_pushes_of_different_backups_do_not_mix(pushgateway):
    names = [backup_name() for _ in range(4)]
    results: list[str | None] = []
    threads = [
        threading.Thread(
            target=lambda n=n, i=i: results.append(
                push_run_metrics(pushgateway.url, {"backup": n}, summary(files_uploaded=i), 60)
            )
        )
        for i, n in enumerate(names)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [None] * 4
    for i, name in enumerate(names):
        assert value(gateway_series(pushgateway.url, backup=name), "s3backup_last_run_files", outcome="uploaded") == i


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:pw@gw.example:9091/prefix?x=1#y", "http://gw.example:9091/prefix"),
        ("https://gw.example", "https://gw.example"),
        ("gw.example:9091", "http://gw.example:9091"),
        ("http://u:p@ss@gw.example", "http://gw.example"),
        ("http://[::1", "the Pushgateway (invalid URL)"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_an_invalid_url_gives_a_warning_not_an_exception():
    warning = push_run_metrics("http://user:hunter2@[::1", {"backup": "b"}, summary(), 60)
    assert warning is not None and warning.startswith("could not push metrics to the Pushgateway (invalid URL): ")
    assert "hunter2" not in warning
