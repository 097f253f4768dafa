"""The container image's install steps, run for real (there is no Docker engine here).

The Dockerfile's build stage copies a few files in and runs scripts/install-into-venv.sh: wheel, then a
pip-less venv with the pins of constraints.txt. Once per session, this lays out the same files (read from
the Dockerfile's COPY lines) in an empty folder and runs the same script there; the tests then use only
that venv, from an empty directory and a bare environment, as the image would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO
from .dockerfile import copy_build_context


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory) -> Path:
    """The image's /opt/s3backup, built as its build stage does (`RUN ... install-into-venv.sh /src ...`)."""
    root = tmp_path_factory.mktemp("image")
    context = copy_build_context(root / "src")
    venv = root / "venv"
    done = subprocess.run(
        ["sh", "scripts/install-into-venv.sh", str(context), str(venv)],
        env={**os.environ, "PYTHON": sys.executable}, cwd=context, capture_output=True, text=True, timeout=170,
    )
    assert done.returncode == 0, f"install-into-venv.sh failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return venv


def run(venv: Path, *args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess:
    """A command from the venv with nothing of the development environment: no PYTHONPATH, no .venv."""
    bare = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd), "TMPDIR": str(cwd), **(env or {})}
    return subprocess.run(list(args), env=bare, cwd=cwd, capture_output=True, text=True, timeout=120)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_installed_distribution_is_pinned(image_venv):
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[normalized(name)] = version
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(image_venv / "bin" / "python"), "list", "--format=json"],
        capture_output=True, text=True, check=True,
    )
    installed = {normalized(d["name"]): d["version"] for d in json.loads(listed.stdout)}
    assert installed.pop("s3backup") == re.search(
        r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert "pip" not in installed, "the image's venv must hold no installer"
    assert installed == pins, (
        f"not pinned: {sorted(set(installed) - set(pins))}; pinned but not installed: "
        f"{sorted(set(pins) - set(installed))}; version differs: "
        f"{sorted(n for n in set(pins) & set(installed) if pins[n] != installed[n])}"
    )


def test_code_comes_from_the_wheel_not_the_source_tree(image_venv, tmp_path):
    done = run(image_venv, "python", "-c",
               "import s3backup_syncer, s3backup_operator; print(s3backup_syncer.__file__, s3backup_operator.__file__)",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for path in done.stdout.split():
        assert Path(path).is_relative_to(image_venv), path


@pytest.mark.parametrize("command, expected", [
    (["s3backup", "--help"], "sync"),
    (["s3backup", "sync", "--help"], "--recycle-after"),
    (["s3backup-operator", "--help"], "--peering"),
])
def test_entrypoints_answer_help(image_venv, tmp_path, command, expected):
    done = run(image_venv, *command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout


def test_installed_cli_syncs_to_s3(image_venv, tmp_path, s3_env, s3_client, s3_url):
    source = tmp_path / "data"
    files = {"a.txt": b"alpha\n", "dir/b.bin": os.urandom(70_000), "dir/sub/c.txt": b""}
    for name, content in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(content)
    summary = tmp_path / "summary.json"

    def sync() -> dict:
        done = run(image_venv, "s3backup", "sync", str(source), s3_url, "--summary-json", str(summary),
                   env=s3_env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(summary.read_text())

    first = sync()
    assert first["result"] == "success" and first["files_uploaded"] == len(files)
    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    objects = {o["Key"][len(prefix) + 1:]: o["Size"] for o in listed.get("Contents", [])
               if not o["Key"][len(prefix) + 1:].startswith(".s3backup/")}
    assert objects == {name: len(content) for name, content in files.items()}
    head = s3_client.head_object(Bucket=bucket, Key=f"{prefix}/dir/b.bin")
    assert head["Metadata"]["s3backup-mtime"] == str((source / "dir/b.bin").stat().st_mtime_ns)

    second = sync()
    assert second["files_uploaded"] == 0 and second["files_unchanged"] == len(files)
