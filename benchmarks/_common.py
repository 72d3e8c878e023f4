"""Pieces the benchmark scripts share."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def progress_echo(name: str | None = None) -> Callable[[str], None]:
    """Return a log callback printing only fl-dnn's progress lines, tagged ``name``."""
    prefix = f"[{name}] " if name else ""

    def echo(line: str) -> None:
        if "fl-dnn:" in line:
            print(f"{prefix}{line}", flush=True)

    return echo


def simulate(
    name: str, config: Mapping[str, Any], workdir: Path, num_supernodes: int = 10
):
    """Run the app once in Flower's simulation into ``workdir / name``; echo progress.

    Returns :class:`fl_app.deploy.launcher.RunOutcome` (``output_dir``, ``summary``).
    """
    from fl_app.deploy.launcher import run_simulation

    return run_simulation(
        config,
        output_dir=workdir / name,
        num_supernodes=num_supernodes,
        echo=progress_echo(name),
    )


def bench_parser(doc: str, rounds: int | None = 20) -> argparse.ArgumentParser:
    """Return a benchmark's parser: ``--out FILE`` and, unless ``rounds`` is None,
    ``--rounds`` (that default); described by the first paragraph of ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds)
    return parser


def add_only(parser: argparse.ArgumentParser, known: list[str]) -> None:
    """Add ``--only A,B``: a comma-separated subset of ``known`` (unknown: an error).

    ``args.only`` is the list of names, or None without the option.
    """

    def names(value: str) -> list[str]:
        chosen = value.split(",")
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown}; known: {', '.join(known)}"
            )
        return chosen

    parser.add_argument(
        "--only",
        type=names,
        metavar="A,B",
        help="run only these (comma-separated): " + ", ".join(known),
    )


def write_json(path: Path, data: Any) -> None:
    """Write a benchmark's figures to ``path`` (its directory made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def rss_bytes(pid: int | str) -> int:
    """Resident memory of process ``pid`` (``/proc``); raises ``OSError`` if gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # a zombie has no resident set
