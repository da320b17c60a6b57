"""Code comments cite our own documents, and every cited section exists.

Comments once cited numbered sections of a reference that is not in this repository; now they
cite ``docs/<page>.md#<anchor>`` (mostly ``docs/compatibility.md``), which a maintainer can open.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"docs/([\w-]+\.md)#([\w-]+)")


def anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    lines = page.read_text(encoding="utf-8").splitlines()
    return {anchor(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line)}


def sources() -> list[Path]:
    """The code and the tests (but this file, which has to name what it looks for)."""
    found = [*(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    return sorted(path for path in found if path.resolve() != Path(__file__).resolve())


def test_every_cited_section_exists() -> None:
    missing, cited = [], 0
    for path in sources():
        for page, name in CITATION.findall(path.read_text(encoding="utf-8")):
            cited += 1
            doc = REPO / "docs" / page
            if not doc.exists() or name not in anchors(doc):
                missing.append(f"{path.relative_to(REPO)}: docs/{page}#{name}")
    assert cited > 90 and missing == []


def test_no_citation_of_an_outside_reference() -> None:
    cited = [
        f"{path.relative_to(REPO)}:{number}"
        for path in [*sources(), *(REPO / "docs").glob("*.md")]
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "§" in line or "shared/reference" in line
    ]
    assert cited == []


def test_the_anchor_rule() -> None:
    assert anchor("Exit codes and temporary exits") == "exit-codes-and-temporary-exits"
    assert anchor("The app side: `AppClient`") == "the-app-side-appclient"
    assert anchor("Running a job: `vmwrapper job`") == "running-a-job-vmwrapper-job"
