"""What the scripts that write a generated part of a file share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def rewrite(
    path: Path,
    split: Callable[[str], tuple[str, str, str]],
    wanted: str,
    what: str,
    command: str,
    description: str,
) -> int:
    """Write ``wanted`` between ``split``'s parts of ``path`` (``--check``: compare).

    Returns the exit code: 1 when ``--check`` finds the part out of date.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1")
    args = parser.parse_args()
    before, current, after = split(path.read_text())
    if current == wanted:
        return 0
    if args.check:
        print(f"{path}: {what} is out of date; run {command}")
        return 1
    path.write_text(before + wanted + after)
    print(f"wrote {what} in {path}")
    return 0
