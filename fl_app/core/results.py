"""Run results: ``metrics.jsonl``, ``summary.json``, plots, TensorBoard scalars.

``metrics.jsonl`` has one record per round; the same per-round scalars also go to
TensorBoard event files under ``tensorboard/`` in the run's output directory.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "final_model.keras"
PLOT_FILE = "accuracy_loss.png"
BYTES_PLOT_FILE = "accuracy_vs_bytes.png"
EPSILON_PLOT_FILE = "accuracy_vs_epsilon.png"
TENSORBOARD_DIR = "tensorboard"
EPSILON_KEYS = {
    "epsilon_sample_level_max": "sample-level (DP-SGD, largest client ε)",
    "epsilon_client_level": "client-level",
}


def _jsonable(value: Any) -> Any:
    """Make numpy scalars plain and non-finite floats null, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_round(row: Mapping[str, Any], num_rounds: int) -> str:
    """One progress line for a round record."""
    parts = [f"round {row['round']}/{num_rounds}"]
    for key, label in (
        ("central_accuracy", "central acc"),
        ("central_loss", "central loss"),
        ("federated_accuracy", "fed acc"),
        ("train_loss", "train loss"),
    ):
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:.4f}")
    return " | ".join(parts + _round_tail(row))


def format_phase_round(row: Mapping[str, Any], phase_rounds: int) -> str:
    """One progress line for the record of a phase before the classifier's rounds."""
    parts = [f"{row['phase']} round {row['round']}/{phase_rounds}"]
    for key, value in row.items():
        if key.endswith("_loss") and value is not None:
            parts.append(f"{key.replace('_', ' ')} {value:.4f}")
    if row.get("epsilon_gan_max") is not None:
        parts.append(f"epsilon {row['epsilon_gan_max']:.2f}")
    return " | ".join(parts + _round_tail(row))


def _round_tail(row: Mapping[str, Any]) -> list[str]:
    """Wall time, rejections and failures of a round record, as progress parts."""
    parts = [f"{row.get('wall_time_s', 0):.2f}s"]
    if row.get("num_rejected"):
        parts.append(f"rejected {row['num_rejected']}")
    if row.get("num_clipped"):
        parts.append(f"clipped {row['num_clipped']}")
    if row.get("num_failures"):
        parts.append(f"failures {row['num_failures']}")
    if row.get("num_timeouts"):
        parts.append(f"timeouts {row['num_timeouts']}")
    return parts


def scalars(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Return a record's finite numeric top-level fields as scalars.

    Per-client lists, text and the round's own coordinates (``round``, its start
    time ``started_unix_s``) are left out; ``prefix`` names a phase's scalars
    (``gan/gan_d_loss``).
    """
    return {
        f"{prefix}{key}": float(value)
        for key, value in row.items()
        if key not in ("round", "started_unix_s")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class TensorBoardScalars:
    """Per-round scalars as TensorBoard event files (TensorBoard's own summary API).

    ``tensorboard --logdir outputs`` then shows every run under ``outputs`` side by
    side, each curve stepped by round. TensorFlow is imported on first use.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._writer = None

    def write(self, step: int, values: Mapping[str, float]) -> None:
        """Write ``values`` at ``step`` and flush, so a live TensorBoard sees them."""
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        with self._writer.as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)
        self._writer.flush()


class RunRecorder:
    """Writes one run's results into ``output_dir`` as the run goes."""

    def __init__(
        self,
        output_dir: Path,
        num_rounds: int,
        rows: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Start ``metrics.jsonl`` and the TensorBoard scalars afresh.

        ``rows``: the records of the rounds a resumed run keeps (its checkpoint's);
        both files are rewritten from them, so whatever a killed run wrote after
        its last checkpoint is gone and the curves continue from there.
        """
        self.output_dir = output_dir
        self.num_rounds = num_rounds
        self.rows: list[dict[str, Any]] = [dict(row) for row in rows]
        self.phase_rows: list[dict[str, Any]] = []  # rounds before the classifier's
        output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = output_dir / METRICS_FILE
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        shutil.rmtree(output_dir / TENSORBOARD_DIR, ignore_errors=True)
        self.tensorboard = TensorBoardScalars(output_dir / TENSORBOARD_DIR)
        for row in self.rows:
            self.tensorboard.write(row["round"], scalars(row))

    def write_round(self, row: Mapping[str, Any]) -> None:
        """Append one round's record to ``metrics.jsonl`` and log a progress line."""
        clean = self._append(row)
        self.rows.append(clean)
        self.tensorboard.write(clean["round"], scalars(clean))
        log.info("%s", format_round(clean, self.num_rounds))

    def write_phase_round(self, row: Mapping[str, Any], phase_rounds: int) -> None:
        """Append a record of a phase before the classifier's rounds (``row["phase"]``).

        It goes to ``metrics.jsonl`` like a round's, but not into the classifier's
        rounds, totals and plots.
        """
        clean = self._append(row)
        self.phase_rows.append(clean)
        self.tensorboard.write(clean["round"], scalars(clean, f"{clean['phase']}/"))
        log.info("%s", format_phase_round(clean, phase_rounds))

    def _append(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``row`` to ``metrics.jsonl`` as JSON; return it made JSON-able."""
        clean = _jsonable(row)
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(clean) + "\n")
        return clean

    def write_summary(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` (with run totals) and the plot; return the summary."""
        totals = {
            "rounds": len(self.rows),
            "bytes_up": sum(row.get("bytes_up", 0) for row in self.rows),
            "bytes_down": sum(row.get("bytes_down", 0) for row in self.rows),
            "client_failures": sum(row.get("num_failures", 0) for row in self.rows),
            "client_timeouts": sum(row.get("num_timeouts", 0) for row in self.rows),
            "rejected_updates": sum(row.get("num_rejected", 0) for row in self.rows),
            "clipped_updates": sum(row.get("num_clipped", 0) for row in self.rows),
            "capped_claims": sum(row.get("num_capped", 0) for row in self.rows),
        }
        full = _jsonable({**totals, **summary})
        (self.output_dir / SUMMARY_FILE).write_text(json.dumps(full, indent=2) + "\n")
        by_width = full.get("accuracy_by_width") or {}
        if by_width:  # after the last round, one point per width served
            self.tensorboard.write(
                len(self.rows),
                {f"accuracy_by_width/{w}": float(a) for w, a in by_width.items()},
            )
        plot_rounds(self.rows, self.output_dir / PLOT_FILE)
        plot_accuracy_vs_bytes(self.rows, self.output_dir / BYTES_PLOT_FILE)
        plot_accuracy_vs_epsilon(self.rows, self.output_dir / EPSILON_PLOT_FILE)
        return full


def read_rows(output_dir: Path, phase: str | None = None) -> list[dict[str, Any]]:
    """Read the round records of a finished (or running) run.

    ``phase=None``: the classifier's rounds; ``phase="gan"``: the records of that
    phase before them (``"phase"`` in the record).
    """
    path = output_dir / METRICS_FILE
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row.get("phase") == phase]


def _pyplot():
    """Return ``matplotlib.pyplot`` on the file-only Agg backend (imported lazily)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    """Lay out, write ``fig`` as a PNG at ``path`` and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_accuracy_against(
    series: Mapping[str, tuple[Sequence[float], Sequence[float], str]],
    xlabel: str,
    path: Path,
) -> None:
    """Plot central accuracy against one quantity: ``{label: (x, y, style)}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y, style) in series.items():
        ax.plot(x, y, style, markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("central accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(plt, fig, path)


def plot_rounds(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Plot accuracy and loss per round (central and federated) to a PNG."""
    plt = _pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    rounds = [row["round"] for row in rows]
    for prefix, style in (("central", "-o"), ("federated", "--s"), ("train", ":^")):
        for ax, metric in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            values = [row.get(f"{prefix}_{metric}") for row in rows]
            if any(v is not None for v in values):
                ax.plot(
                    rounds,
                    [math.nan if v is None else v for v in values],
                    style,
                    markersize=3,
                    label=prefix,
                )
    for ax, metric in ((ax_acc, "accuracy"), (ax_loss, "loss")):
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(plt, fig, path)


def plot_accuracy_vs_bytes(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Plot central accuracy against cumulative bytes (up, and up + down) to a PNG."""
    up = np.cumsum([row.get("bytes_up", 0) for row in rows]) / 1e6
    total = up + np.cumsum([row.get("bytes_down", 0) for row in rows]) / 1e6
    accuracy = [row.get("central_accuracy", math.nan) for row in rows]
    _plot_accuracy_against(
        {
            "bytes up": (up, accuracy, "-o"),
            "bytes up + down": (total, accuracy, "--s"),
        },
        "cumulative MB",
        path,
    )


def plot_accuracy_vs_epsilon(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Plot central accuracy against cumulative ε per round, if any ε was recorded."""
    series = {
        label: [
            (row[key], row.get("central_accuracy", math.nan))
            for row in rows
            if row.get(key) is not None
        ]
        for key, label in EPSILON_KEYS.items()
    }
    series = {label: points for label, points in series.items() if points}
    if not series:
        return
    _plot_accuracy_against(
        {
            label: ([e for e, _ in points], [a for _, a in points], "-o")
            for label, points in series.items()
        },
        "ε (cumulative)",
        path,
    )


SWEEP_FILE = "comparison.md"
SWEEP_COLUMNS = ("final_accuracy", "rounds", "wall_time_s", "bytes_up", "bytes_down")


def append_sweep_row(
    sweep_dir: Path, overrides: Sequence[str], job_dir: Path, summary: Mapping[str, Any]
) -> None:
    """Add one job to the sweep's ``comparison.jsonl`` and ``comparison.md`` table."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    row = {
        "overrides": " ".join(overrides) or "(defaults)",
        "job_dir": str(job_dir),
        **{key: summary.get(key) for key in SWEEP_COLUMNS},
    }
    with (sweep_dir / "comparison.jsonl").open("a") as handle:
        handle.write(json.dumps(_jsonable(row)) + "\n")
    rows = [
        json.loads(line)
        for line in (sweep_dir / "comparison.jsonl").read_text().splitlines()
        if line.strip()
    ]
    lines = [
        "| overrides | " + " | ".join(SWEEP_COLUMNS) + " |",
        "|---" * (len(SWEEP_COLUMNS) + 1) + "|",
    ]
    for r in rows:
        cells = [
            f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])
            for c in SWEEP_COLUMNS
        ]
        lines.append(f"| {r['overrides']} | " + " | ".join(cells) + " |")
    (sweep_dir / SWEEP_FILE).write_text("\n".join(lines) + "\n")
    plot_sweep(rows, sweep_dir / "comparison.png")


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Bar chart of each sweep job's final central accuracy."""
    plt = _pyplot()
    labels = [row["overrides"] for row in rows]
    values = [row.get("final_accuracy") or 0.0 for row in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 2), 4))
    ax.bar(range(len(rows)), values)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("final central accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    _save(plt, fig, path)
