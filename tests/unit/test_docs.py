"""The docs stay true to the code and to each other.

- ``docs/configuration.md``'s settings table is the one
  ``scripts/write_config_docs.py`` writes from the schema now;
- README.md stays short and gives the two commands (CI runs the test command it
  gives, ``.ci/run``);
- every relative link in README.md and ``docs/*.md`` points to a file that exists.
"""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
REGENERATE = "run `uv run python scripts/write_config_docs.py`"


def load_script():
    spec = importlib.util.spec_from_file_location(
        "write_config_docs", ROOT / "scripts" / "write_config_docs.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_docs_settings_table_is_written_from_the_schema():
    script = load_script()
    _, table, _ = script.split_page(script.PAGE.read_text())
    assert table == script.settings_table(), (
        f"docs/configuration.md's settings table is out of date: {REGENERATE}"
    )


def test_docs_settings_table_lists_every_run_config_key():
    from fl_app.core.config import run_config_fields

    script = load_script()
    _, table, _ = script.split_page(script.PAGE.read_text())
    listed = re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE)
    assert listed == list(run_config_fields()), REGENERATE


def test_docs_hydra_keys_flatten_back_to_their_keys():
    from fl_app.core.config import flatten_nested

    for key, dotted in load_script().hydra_keys().items():
        nested = {}
        node = nested
        *groups, field = dotted.split(".")
        for group in groups:
            node = node.setdefault(group, {})
        node[field] = 0
        assert list(flatten_nested(nested)) == [key], (key, dotted)


def test_readme_is_short_and_gives_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; at most 150"
    # the commands CI (.ci/run) and the start-up benchmark run, as README gives them
    commands = [line.split("#", 1)[0].strip() for line in lines]
    assert "uv run python run_simulation.py" in commands
    assert "uv run pytest" in commands


# [text](target) and [text]: target; images too. Code spans and fences are skipped.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)


def prose(text: str) -> str:
    """Return ``text`` without fenced code blocks and inline code spans."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(page: Path, *, fragments: bool = False) -> list[str]:
    """Return the relative link targets of ``page`` (with ``fragments``: ``#x`` too)."""
    text = prose(page.read_text())
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [
        target
        for target in targets
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)  # http:, mailto:, ...
        and (fragments or not target.startswith("#"))
    ]


def anchors(page: Path) -> set[str]:
    """Return the anchors GitHub gives ``page``'s headings (lower case, punctuation
    dropped, spaces to hyphens, ``-1``, ``-2`` for repeats)."""
    text = re.sub(
        r"^(```|~~~).*?^\1[^\n]*$", "", page.read_text(), flags=re.MULTILINE | re.DOTALL
    )
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url): text
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_relative_links_resolve(page):
    broken = [
        target
        for target in relative_links(page)
        if not (page.parent / target.split("#", 1)[0]).exists()
    ]
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_link_anchors_exist(page):
    broken = []
    for target in relative_links(page, fragments=True):
        path, _, fragment = target.partition("#")
        linked = page.parent / path if path else page
        if fragment and linked.suffix == ".md" and linked.exists():
            if fragment not in anchors(linked):
                broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing headings: {broken}"


def test_docs_pages_link_to_each_other():
    """The checks above see README.md and every docs page, and they are linked."""
    linked = {
        (README.parent / target.split("#", 1)[0]).resolve()
        for target in relative_links(README)
    }
    assert {page.resolve() for page in PAGES[1:]} <= linked
