"""The documentation holds together: the README front page stays short and links every manual page
(pytorch/docs/), no relative link or image in the README, the pages, experiments/RESULTS.md or
experiments/NOTES.md is broken (nor an anchor into a Markdown file), and every python block of
the README and the pages is one that tests/test_readme_api.py executes."""
import re
import urllib.parse

import pytest

from conftest import ROOT
from test_readme_api import DOCS, EXECUTED_SECTIONS, api_blocks

README = ROOT / "README.md"
PAGES = sorted(DOCS.glob("*.md"))
LINKED_FILES = [README, *PAGES, ROOT / "experiments" / "RESULTS.md", ROOT / "experiments" / "NOTES.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def unfenced(text: str) -> str:
    """The text without its fenced code blocks."""
    return re.sub(r"^[ \t]*```.*?^[ \t]*```[^\n]*$", "", text, flags=re.S | re.M)


def prose(text: str) -> str:
    """The text outside code: fenced blocks dropped, inline code spans blanked (a link inside code is not one)."""
    return re.sub(r"(`+)(?!`).*?\1", "``", unfenced(text), flags=re.S)


def anchors(path) -> set[str]:
    """The heading anchors of a Markdown file, as GitHub makes them (lower case, punctuation
    dropped, spaces to hyphens, -1, -2 ... for repeats)."""
    seen: dict[str, int] = {}
    out = set()
    for line in unfenced(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6} +(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def local_links_of(text: str) -> list[str]:
    """The targets of the Markdown links and images in `text` that point into the repository."""
    return [t for t in LINK.findall(prose(text)) if not re.match(r"(https?:|mailto:)", t, re.I)]


def local_links(path) -> list[str]:
    return local_links_of(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", LINKED_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(path):
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    broken = []
    for target in local_links(path):
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / urllib.parse.unquote(file_part)).resolve() if file_part else path
        if not dest.exists() or not dest.is_relative_to(ROOT):
            broken.append(f"{target}: no such file in the repository")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: {dest.relative_to(ROOT)} has no heading with anchor #{fragment}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_link_checker_sees_links_and_images():
    """The checker is not vacuous: it finds the README's links and the generated file's images."""
    assert len(local_links(README)) >= len(PAGES)
    assert any(t.startswith("plots/") for t in local_links(ROOT / "experiments" / "RESULTS.md"))
    assert "a.md" not in local_links_of("see `[x](a.md)` and\n```\n[y](a.md)\n```\n")
    assert local_links_of("[x](a.md#b) ![i](p.png \"t\") [w](https://e.org)") == ["a.md#b", "p.png"]


def test_readme_is_a_short_front_page_that_links_every_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; the manual belongs in pytorch/docs/"
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in local_links(README)}
    assert PAGES and not [p.name for p in PAGES if p.resolve() not in linked]


def test_every_python_block_is_executed_by_a_test():
    executed = [block for page, heading in EXECUTED_SECTIONS for block in api_blocks(page, heading)]
    assert executed
    for path in [README, *PAGES]:
        for block in re.findall(r"^[ \t]*```python\n(.*?)^[ \t]*```", path.read_text(encoding="utf-8"), re.S | re.M):
            assert block in executed, (f"{path.relative_to(ROOT)}: a python block that no test runs "
                                       f"(add its section to EXECUTED_SECTIONS in tests/test_readme_api.py):\n"
                                       f"{block[:200]}")
