"""The docs build from the repository alone: every relative link and every docs/… or recipes/… path
named in README.md and docs/*.md exists, and every benchmark docs/performance.md cites is a file."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_repository_paths_exist(page):
    text = page.read_text()
    for path in set(re.findall(r"(?<![\w/.])((?:docs|recipes|benchmarks|tests|capidsl|schemas|grammar)/[\w./-]+\.(?:md|yaml|py|json|lark))", text)):
        assert (ROOT / path).exists(), f"{page.name}: names {path}, which does not exist"
