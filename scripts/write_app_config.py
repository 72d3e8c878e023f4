"""Write ``[tool.flwr.app.config]`` of ``pyproject.toml`` from the run-config schema.

Flower reads the app's run-config keys and defaults from that table; the schema
(the ``setting`` declarations on ``fl_app.core.config``'s dataclasses and the registered
sections, see ``fl_app.core.schema``) is where they are declared. Run this after
changing a
setting:

    uv run python scripts/write_app_config.py          # rewrite the table
    uv run python scripts/write_app_config.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _generated

from _generated import rewrite  # noqa: E402

from fl_app.core.config import app_config_toml  # noqa: E402

HEADER = "[tool.flwr.app.config]\n"


def split_table(text: str) -> tuple[str, str, str]:
    """Return (up to the table's body, the body, after it) of ``pyproject.toml``.

    The body is the run of ``key = value`` lines under the header; the first blank,
    comment or table line ends it.
    """
    start = text.index(HEADER) + len(HEADER)
    end = start
    for line in text[start:].splitlines(keepends=True):
        if not line.strip() or line.lstrip().startswith(("[", "#")):
            break
        end += len(line)
    return text[:start], text[start:end], text[end:]


def main() -> int:
    """Rewrite the table (or, with --check, only compare); return the exit code."""
    return rewrite(
        ROOT / "pyproject.toml",
        split_table,
        app_config_toml(),
        "[tool.flwr.app.config]",
        "uv run python scripts/write_app_config.py",
        __doc__.split("\n\n")[0],
    )


if __name__ == "__main__":
    sys.exit(main())
