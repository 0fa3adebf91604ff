"""The README is a front door (short, the two set-up commands, the badges, links to every page of docs/),
and the reference lives on in docs/: every page reachable, every relative link resolving."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
LINK = re.compile(r"\]\(([^)#]+)(?:#[^)]*)?\)")


def test_the_readme_is_a_short_front_door_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.encode()) < 8000
    assert "bash scripts/provision.sh            # provision: detects Colab / VM / workstation and picks the profile" in text
    assert "bash scripts/test.sh                 # run the checks (ruff + the test suite)" in text
    assert text.startswith("[![Open In Colab]") and "[![Open In Kaggle]" in text.splitlines()[1]
    for thing in ("Stage a few subsets", "Mirror once", "Check the GPU", "smoke test", "When it refuses", "Troubleshooting"):
        assert thing in text


def test_every_page_of_docs_is_linked_from_the_readme_and_every_link_resolves() -> None:
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    linked = {Path(m).name for m in LINK.findall(README.read_text()) if m.startswith("docs/")}
    assert set(pages) == linked
    for page in [README, *DOCS.glob("*.md")]:
        for target in LINK.findall(page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_reference_sections_live_on_in_docs() -> None:
    everything = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    for heading in ("## Commands", "### Exit codes", "## Profiles", "## Disk planning", "## How staging stays safe and resumable",
                    "## The ways to stage", "## Data sets and manifests", "## On a cloud VM", "## More than one machine (SkyPilot)",
                    "## Performance", "## Tests", "## Continuous integration", "## Kaggle: the data set is already there",
                    "## Mirror once, stage every session (Google Cloud Storage)", "## The book's code: fixes and the smoke run"):
        assert heading in everything, heading
