"""The documentation holds together: the README stays a landing page, every relative link of the README and
docs/ reaches a file (and a heading) of this repository, and no tracked file refers to notes outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.MULTILINE | re.DOTALL)
# The team's working notes live outside the repository; nothing here may point at them.
OUTSIDE = ("../shared", "/work/shared", "REFERENCE.md", "PERF_NOTES", "STYLE.md")


def prose(text: str) -> str:
    """Markdown without its fenced code blocks (a `# comment` in a shell block is no heading)."""
    return FENCE.sub("", text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated one numbered -1, -2, ..."""
    found, counts = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(page.read_text(encoding="utf-8")), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = counts.get(slug, 0)
        counts[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(text: str, folder: Path) -> list[str]:
    """The relative links of markdown `text` read from `folder` (http and other schemes left out) that
    reach no file of the repository, or no heading of the page they name."""
    broken = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue
        path, _, anchor = target.partition("#")
        file = (folder / path).resolve()
        if not path or not file.is_relative_to(REPO) or not file.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    return broken


def test_the_readme_is_a_landing_page():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_the_link_checker_finds_what_is_broken():
    page = " ".join(
        [
            "[a](nowhere.md) [b](samplers.md#no-such-heading) ![c](../docs/samplers.md#quality-against-cost)",
            "[d](https://arxiv.org/abs/2006.11239) [e](samplers.md#--preset-recommended-diffusion)",
            "[f](samplers.md#samplers---sampler) [g](../notebooks/tutorial.ipynb)",
        ]
    )
    assert broken_links(page, REPO / "docs") == [
        "nowhere.md: no such file in the repository",
        "samplers.md#no-such-heading: no heading #no-such-heading in docs/samplers.md",
    ]
    assert broken_links("[up](../../outside.md)\n```\n[in code](nowhere.md)\n```\n", REPO / "docs") == [
        "../../outside.md: no such file in the repository"
    ]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_every_relative_link_reaches_a_file_of_the_repository(page):
    assert broken_links(page.read_text(encoding="utf-8"), page.parent) == []


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = [REPO / name for name in names.decode().split("\0") if name]
    assert len(files) > 50, "git ls-files listed too few files to be this repository"
    texts = []
    for file in files:
        if file.is_file() and file != Path(__file__).resolve():
            try:
                file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # pictures and other binary files
            texts.append(file)
    return texts


def test_no_tracked_file_refers_outside_the_repository():
    found = [
        f"{file.relative_to(REPO)}: {needle}"
        for file in tracked_text_files()
        for needle in OUTSIDE
        if needle in file.read_text(encoding="utf-8")
    ]
    assert not found, "refer to docs/tutorial.md instead: " + "; ".join(found)
