"""The README and docs/: every relative link and #anchor resolves, and the README stays a short front door.

Anchors follow GitHub's rules for heading ids: lowercase; punctuation dropped except hyphens (and
underscores, which are word characters); each space a hyphen; a repeated heading gets -1, -2, ...
Links to http(s) and mailto are not checked (no network here).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 300
# The test command CI runs (.ci/run) is the README's; it must stay there exactly.
TEST_COMMAND = 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target ends at whitespace (a title may follow) or ")".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line outside fenced code blocks."""
    lines: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's id for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"<[^>]+>", "", text).lower()  # inline HTML tags are dropped
    text = re.sub(r"[^\w\- ]", "", text)  # punctuation (backticks, colons, dots, ...) goes
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link outside code."""
    found: list[tuple[int, str]] = []
    for number, line in prose_lines(path):
        for match in LINK.finditer(INLINE_CODE.sub(lambda m: "x" * len(m.group(0)), line)):
            found.append((number, line[match.start(1) : match.end(1)]))
    return found


def broken_links() -> list[str]:
    broken: list[str] = []
    for page in pages():
        where = page.relative_to(ROOT)
        for number, target in links(page):
            if not target or target.startswith(EXTERNAL):
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (page.parent / unquote(file_part)).resolve() if file_part else page
            if not resolved.exists():
                broken.append(f"{where}:{number}: {target} -> no such file {file_part}")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{where}:{number}: {target} -> no heading #{anchor} in {resolved.relative_to(ROOT)}")
            elif anchor and resolved.suffix != ".md":
                broken.append(f"{where}:{number}: {target} -> an anchor into a file that is not markdown")
    return broken


def test_slugs_follow_githubs_rules() -> None:
    assert slug("For people: the playground and `vary create`") == "for-people-the-playground-and-vary-create"
    assert slug("Usage accounting when the database is busy or the disk is full") == (
        "usage-accounting-when-the-database-is-busy-or-the-disk-is-full"
    )
    assert slug("What `vary pull` downloads") == "what-vary-pull-downloads"
    assert slug("Gateway: hosted providers and fallbacks") == "gateway-hosted-providers-and-fallbacks"
    assert slug("max_attempts and  Retry-After!") == "max_attempts-and--retry-after"


def test_repeated_headings_get_numbered_anchors(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Tested\n\n```\n## Tested\n```\n\n## Tested\n\n## Tested\n")
    assert anchors(page) == {"title", "tested", "tested-1", "tested-2"}


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = broken_links()
    assert not broken, f"{len(broken)} broken link(s):\n" + "\n".join(broken)


def test_every_docs_page_is_listed_in_the_index() -> None:
    linked = {target.partition("#")[0] for _, target in links(DOCS / "index.md")}
    missing = [page.name for page in sorted(DOCS.glob("*.md")) if page.name != "index.md" and page.name not in linked]
    assert not missing, f"docs/index.md does not link to: {', '.join(missing)}"


def test_the_readme_is_a_short_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move the detail to a page under docs/"
    )
    assert TEST_COMMAND in lines, "README.md must keep the test command that .ci/run runs, exactly"


def test_the_api_docs_give_the_body_cap_the_server_enforces() -> None:
    """docs/api.md's error table: 413 only past the whole body's cap; an image of 4 MiB or more is a 400."""
    from vary.request import MAX_IMAGES
    from vary.settings import Settings

    settings = Settings()
    MiB, KiB = 1024 * 1024, 1024  # noqa: N806 - the units' own names
    rows = [line for line in (DOCS / "api.md").read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    (too_large,) = [row for row in rows if "| 413 |" in row]
    cap = f"{MAX_IMAGES * settings.max_image_bytes // MiB} MiB + {settings.max_body_overhead_bytes // KiB} KiB"
    assert f"body over {cap}" in too_large, too_large
    assert settings.max_body_bytes == MAX_IMAGES * settings.max_image_bytes + settings.max_body_overhead_bytes
    (image_rule,) = [row for row in rows if "Uploaded image must be a PNG and less than 4 MB." in row]
    assert "| 400 |" in image_rule and "≥ 4 MiB" in image_rule
