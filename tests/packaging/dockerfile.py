"""Reading the Dockerfile: its instructions, stages, and the files its build stage copies in."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions(DOCKERFILE.read_text()):
        if instruction[0] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def context_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not from another stage)."""
    copies = []
    for stage in stages():
        for name, args in stage:
            if name == "COPY" and not args.startswith("--from"):
                *sources, destination = args.split()
                copies.append((sources, destination))
    return copies


def build_context_sources() -> list[str]:
    return [source.rstrip("/") for sources, _ in context_copies() for source in sources]


def copy_build_context(workdir: Path) -> Path:
    """Lays out in `workdir` what the Dockerfile's COPY instructions put in its build stage's WORKDIR
    (relative destinations only; a directory source copies its contents, as Docker does)."""
    for sources, destination in context_copies():
        assert not destination.startswith("/"), f"COPY to an absolute path: {destination}"
        target = workdir / destination
        for source in sources:
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            elif destination.endswith("/") or destination in (".", "./") or len(sources) > 1:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return workdir
