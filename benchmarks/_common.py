"""Pieces the benchmark scripts share."""

from __future__ import annotations

from collections.abc import Callable


def progress_echo(name: str | None = None) -> Callable[[str], None]:
    """Return a log callback printing only fl-dnn's progress lines, tagged ``name``."""
    prefix = f"[{name}] " if name else ""

    def echo(line: str) -> None:
        if "fl-dnn:" in line:
            print(f"{prefix}{line}", flush=True)

    return echo
