"""checkov finds nothing in the rendered manifests and the Dockerfile.

checkov lives in its own virtualenv (.venv-checkov, made by scripts/bootstrap.sh): its pins clash with
the project's. Without a Prisma Cloud key it reports no severities, so the bar is zero failed checks of
any severity; a finding we disagree with is skipped inline with its reason (a `checkov.io/skipN`
annotation in the template, a `# checkov:skip=` comment in the Dockerfile).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from .conftest import REPO

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
CASES = ["default", "all-features", "all-features-cluster-wide", "standalone", "ha"]


@pytest.fixture(scope="session")
def checkov_report(rendered, tmp_path_factory) -> list[dict[str, Any]]:
    assert CHECKOV.exists(), "checkov is not installed: run scripts/bootstrap.sh test (it makes .venv-checkov)"
    folder = tmp_path_factory.mktemp("rendered")
    files = []
    for case in CASES:
        path = folder / f"{case}.yaml"
        path.write_text(rendered[case]["manifest"])
        files += ["-f", str(path)]
    done = subprocess.run(
        [str(CHECKOV), "--skip-download", "--output", "json",
         "--framework", "kubernetes", "dockerfile", *files, "-f", str(REPO / "Dockerfile")],
        capture_output=True, text=True, timeout=150, cwd=folder,
    )
    assert done.stdout.strip(), f"checkov printed no report (exit {done.returncode}):\n{done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    return report if isinstance(report, list) else [report]


def by_framework(report: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {part["check_type"]: part for part in report}


def test_checkov_scanned_every_rendered_object_and_the_dockerfile(checkov_report, rendered):
    parts = by_framework(checkov_report)
    assert set(parts) == {"kubernetes", "dockerfile"}
    objects = sum(len(rendered[case]["docs"]) for case in CASES)
    # checkov also counts each pod template's containers as resources of their own.
    assert parts["kubernetes"]["summary"]["resource_count"] >= objects
    assert parts["kubernetes"]["summary"]["parsing_errors"] == 0
    assert parts["dockerfile"]["summary"]["passed"] > 0


def test_checkov_finds_nothing(checkov_report):
    failed = [
        f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
        for part in checkov_report for check in part["results"]["failed_checks"]
    ]
    assert not failed, "checkov findings:\n" + "\n".join(failed)


def test_every_skip_gives_its_reason(checkov_report):
    skipped = [check for part in checkov_report for check in part["results"].get("skipped_checks", [])]
    assert skipped, "expected the documented skips (e.g. CKV_DOCKER_2: no HEALTHCHECK by design)"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason.strip()) > 20, f"{check['check_id']}: skipped without a reason"
