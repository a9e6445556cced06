"""README.md stays a landing page, and every relative link in it and in docs/*.md leads somewhere:
an existing file, and for `file.md#anchor` (or `#anchor`) a heading of that file with that anchor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

README_MAX_LINES = 260
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks, with inline code spans replaced by a placeholder (a code
    span may hold brackets and parentheses that are no link, but may also be a link's text)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "code", line))
    return "\n".join(lines)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation (but - and _) removed,
    each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of the headings of a markdown file (outside code blocks), duplicates numbered -1, -2…"""
    found: dict[str, int] = {}
    result = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            count = found.get(slug, 0)
            found[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(path: Path) -> list[str]:
    """The relative link targets of a markdown file (web and mail links left out)."""
    targets = [m.group("target") for m in LINK.finditer(_prose(path.read_text()))]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.I)]


def test_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail into docs/"
    )


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.split("#")[0]).resolve() for t in links(ROOT / "README.md") if t.split("#")[0]}
    pages = set(p.resolve() for p in (ROOT / "docs").glob("*.md"))
    assert pages, "docs/ holds no pages"
    assert pages <= linked, sorted(p.name for p in pages - linked)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(
                f"{target}: no file {destination.relative_to(ROOT) if destination.is_relative_to(ROOT) else destination}"
            )
        elif anchor:
            if destination.suffix != ".md" or destination.is_dir():
                broken.append(f"{target}: an anchor into a file that is not markdown")
            elif anchor not in anchors(destination):
                broken.append(f"{target}: no heading with anchor #{anchor} in {destination.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_slugs_follow_github():
    """The anchor rule on headings these pages use: code, '+', ':', parentheses, a comma."""
    assert _slug("`edgecli run`: a pipeline file") == "edgecli-run-a-pipeline-file"
    assert _slug("PyTorch state_dict + your model code") == "pytorch-state_dict--your-model-code"
    assert _slug("Quantization recipes, measured") == "quantization-recipes-measured"
    assert _slug("What `make demo` prints") == "what-make-demo-prints"
    assert _slug("Lineage: `edgecli inspect`") == "lineage-edgecli-inspect"
