"""The docs a user reads: the README stays one sitting long, every relative link and anchor in
the docs resolves, and the docs speak of the tool, not of how its work was organised."""
import re

import pytest

from tests.helpers import REPO

DOCS = [REPO / "README.md", REPO / "docs" / "guide.md", REPO / "bench" / "README.md"]


def slug(heading):
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def test_the_readme_reads_in_one_sitting():
    assert len((REPO / "README.md").read_text().splitlines()) <= 350


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name}: {target}: no such file"
        if anchor:
            assert anchor in anchors(linked), f"{path.name}: {target}: no such heading"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_docs_speak_of_the_tool_not_of_issues_or_sessions(path):
    words = re.findall(r"\b(issues?|sessions?)\b", path.read_text(), flags=re.I)
    assert not words, f"{path.name} mentions {sorted(set(words))}"


def test_the_slug_follows_github():
    assert slug(" The paper's claims as an ablation table") == "the-papers-claims-as-an-ablation-table"
    assert slug("Bulk sampling for FID") == "bulk-sampling-for-fid"
