"""Write the settings table of ``docs/configuration.md`` from the run-config schema.

The table lists every flat run-config key (``fl_app.core.config.run_config_fields``:
the ``setting`` declarations and the registered sections, see
``fl_app.core.schema``) with the Hydra key that sets it, its type, default, what is
allowed and its help text. It sits between two marker comments in the page; the
rest of the page is written by hand. Run this after changing a setting:

    uv run python scripts/write_config_docs.py          # rewrite the table
    uv run python scripts/write_config_docs.py --check  # exit 1 if it is out of date

The Hydra key of a flat key is read from ``conf/``: every field of ``config.yaml``
and of every option file of every app group is flattened with
``fl_app.core.config.flatten_nested`` (what ``run_simulation.py`` does), so the
mapping is the one the entry point really applies.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _generated

from _generated import rewrite  # noqa: E402

from fl_app.core.config import (  # noqa: E402
    NON_APP_GROUPS,
    flatten_nested,
    run_config_fields,
    toml_value,
)
from fl_app.core.schema import Setting  # noqa: E402

PAGE = ROOT / "docs" / "configuration.md"
CONF = ROOT / "conf"
BEGIN = (
    "<!-- settings:begin (written by scripts/write_config_docs.py; do not edit) -->\n"
)
END = "<!-- settings:end -->\n"
COMMAND = "`uv run python scripts/write_config_docs.py`"
# Groups whose options are presets over other groups, not settings of their own.
PRESET_GROUPS = frozenset({"experiment"})
# Keys that no conf file sets; what sets them instead.
NOT_IN_CONF = {"output-dir": "Hydra's run directory (`hydra.run.dir=...`)"}


def leaves(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple]:
    """Yield the path of every scalar under ``tree`` (the ``defaults`` list skipped)."""
    for field, value in tree.items():
        if not path and field == "defaults":
            continue
        if isinstance(value, Mapping):
            yield from leaves(value, (*path, field))
        else:
            yield (*path, field)


def nest(path: tuple[str, ...], value: Any = None) -> dict[str, Any]:
    """Return ``{path[0]: {path[1]: ... value}}``."""
    tree: Any = value
    for part in reversed(path):
        tree = {part: tree}
    return tree


def hydra_keys(conf: Path = CONF) -> dict[str, str]:
    """Map every flat key some file of ``conf`` sets to its dotted Hydra key."""
    found: dict[str, str] = {}

    def add(path: tuple[str, ...]) -> None:
        (flat,) = flatten_nested(nest(path))
        found.setdefault(flat, ".".join(path))

    top = yaml.safe_load((conf / "config.yaml").read_text()) or {}
    for path in leaves(top):
        if path[0] not in NON_APP_GROUPS:
            add(path)
    for option in sorted(conf.glob("*/**/*.yaml")):
        group = option.parent.relative_to(conf).parts
        if group[0] in NON_APP_GROUPS | PRESET_GROUPS:
            continue
        for path in leaves(yaml.safe_load(option.read_text()) or {}):
            add((*group, *path))
    return found


def cell(text: str) -> str:
    """Escape ``text`` for one cell of a Markdown table."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def allowed(spec: Setting) -> str:
    """Return what ``spec`` accepts: its choices, its rule, or only its type."""
    choices = spec.allowed()
    if choices is not None:
        return ", ".join(f"`{choice}`" for choice in choices)
    if spec.rule:
        return cell(spec.rule)
    if spec.kind is bool:
        return "`true`, `false`"
    return "any"


def settings_table() -> str:
    """Return the generated table (the text between the markers)."""
    hydra = hydra_keys()
    rows = [
        "| key | Hydra key | type | default | allowed | help |\n",
        "|---|---|---|---|---|---|\n",
    ]
    for key, spec in run_config_fields().items():
        if key in hydra:
            where = f"`{hydra[key]}`"
        else:
            where = NOT_IN_CONF.get(key, "—")
        kind = "text" if spec.kind is str else spec.kind.__name__
        rows.append(
            f"| `{key}` | {where} | {kind} | `{cell(toml_value(spec.default))}` "
            f"| {allowed(spec)} | {cell(spec.help)} |\n"
        )
    return "".join(rows)


def split_page(text: str) -> tuple[str, str, str]:
    """Return (up to and with the begin marker, the table, from the end marker on)."""
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END, start)
    return text[:start], text[start:end], text[end:]


def main() -> int:
    """Rewrite the table (or, with --check, only compare); return the exit code."""
    return rewrite(
        PAGE,
        split_page,
        settings_table(),
        "the settings table",
        COMMAND,
        __doc__.split("\n\n")[0],
    )


if __name__ == "__main__":
    sys.exit(main())
