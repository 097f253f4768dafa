"""What the docs state about the code, checked against the code: counts, and the documents cited."""

from __future__ import annotations

import re
from pathlib import Path

from tests.operator.test_crd import INVALID

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_the_readmes_count_of_invalid_inputs_is_the_tests():
    stated = re.search(r"(\d+) kinds of invalid input \(the `INVALID` table in `tests/operator/test_crd.py`\)", README)
    assert stated, "README: the sentence on the CRD schema's invalid inputs is gone or reworded"
    assert int(stated.group(1)) == len(INVALID)


def test_every_document_cited_in_code_exists():
    """A `NAME.md` named in the code or tests is a file of the repository (CONTRACT.md once was not)."""
    missing = []
    for folder in ("syncer", "operator", "tests", "scripts", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            if ".venv" in path.parts or path == Path(__file__):
                continue
            for name in re.findall(r"\b([A-Za-z][\w-]*\.md)\b", path.read_text()):
                if not (REPO / name).exists() and name != "SCALE.md":  # bench/run.py: a name it writes
                    missing.append(f"{path.relative_to(REPO)}: {name}")
    assert missing == []


def test_readme_sections_cited_in_code_exist():
    """`README.md, "Section"` in a docstring names a heading or a bold paragraph title of the README."""
    titles = set(re.findall(r"^#+ (.+)$", README, re.M)) | set(re.findall(r"\*\*(.+?)[.:]?\*\*", README))
    cited = []
    for folder in ("syncer", "operator", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            if path == Path(__file__):
                continue
            text = path.read_text().replace("\n", " ")
            for group in re.findall(r'README(?:\.md)?[,:] ((?:"[^"]+"(?:,? (?:and )?)?)+)', text):
                cited += [(path.name, title) for title in re.findall(r'"([^"]+)"', group)]
    assert cited, "the pattern no longer finds the citations"
    assert [item for item in cited if item[1] not in titles] == []
