"""Upload bytes and accuracy of compressed FedAvg vs dense float32 FedAvg.

One invocation runs, each through Flower's simulation runtime (digits, Dirichlet 0.5,
10 clients, CNN, 20 rounds, every client every round, federated evaluation off so
the download column counts training traffic only):

- ``dense``: float32 models both ways (the baseline);
- ``float16``: float16 uploads;
- ``int8``: int8 delta uploads with error feedback;
- ``sign``: 1-bit (sign + per-tensor scale) delta uploads with error feedback;
- ``topk5``: the 5 % largest entries of each kernel's delta, int8, gap-coded, with
  error feedback;
- ``prune90``: tfmot pruning of the hidden Conv2D/Dense layers to 90 % (PolynomialDecay
  over rounds 1-10), sparse int8 delta uploads with error feedback, sparse float32
  downloads;
- ``prune90_sign``: the same pruning with sparse 1-bit delta uploads.

    uv run python benchmarks/bench_compression.py --out compression.json

FILE keys: ``upload_reduction`` and ``accuracy_drop_points`` of the headline run
(``sign``: mean upload bytes per client per round over all rounds, dense / it;
dense final central accuracy minus its, in points), and ``rows``: every run's
accuracy, bytes and reductions (mean over the run and in the final round).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, simulate, write_json  # noqa: E402

from fl_app.core.results import read_rows  # noqa: E402

HEADLINE = "sign"
DELTA_EF = {"compression-delta": True, "compression-error-feedback": True}
PRUNE90 = {
    "pruning": "polynomial",
    "pruning-final-sparsity": 0.9,
    "pruning-begin-round": 1,
    "pruning-end-round": 10,
    "compression-download": "sparse",
}
RUNS = {
    "dense": {},
    "float16": {"compression": "float16"},
    "int8": {"compression": "int8", **DELTA_EF},
    "sign": {"compression": "sign", **DELTA_EF},
    "topk5": {"compression": "sparse+int8", "compression-topk": 0.05, **DELTA_EF},
    "prune90": {**PRUNE90, "compression": "sparse+int8", **DELTA_EF},
    "prune90_sign": {**PRUNE90, "compression": "sparse+sign", **DELTA_EF},
}


def run(name: str, overrides: dict, rounds: int, workdir: Path) -> dict:
    config = {
        "num-rounds": rounds,
        "save-model": False,
        "evaluate-clients-per-round": 0,
        **overrides,
    }
    outcome = simulate(name, config, workdir)
    rows = read_rows(outcome.output_dir)
    up = [c["bytes_up"] for row in rows for c in row["clients"]]
    last_up = [c["bytes_up"] for c in rows[-1]["clients"]]
    down = [c["bytes_down"] for row in rows for c in row["clients"]]
    return {
        "config": overrides,
        "central_accuracy": outcome.summary["final_accuracy"],
        "bytes_up_per_client_round": statistics.mean(up),
        "bytes_up_per_client_final_round": statistics.mean(last_up),
        "bytes_down_per_client_round": statistics.mean(down),
        "final_sparsity": rows[-1].get("sparsity"),
        "bytes_up_total": outcome.summary["bytes_up"],
        "bytes_down_total": outcome.summary["bytes_down"],
    }


def main() -> None:
    parser = bench_parser(__doc__, rounds=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        runs = {
            name: run(name, cfg, args.rounds, Path(tmp)) for name, cfg in RUNS.items()
        }
    dense = runs["dense"]
    rows = []
    for name, r in runs.items():
        rows.append(
            {
                "run": name,
                **r,
                "upload_reduction": dense["bytes_up_per_client_round"]
                / r["bytes_up_per_client_round"],
                "upload_reduction_final_round": dense["bytes_up_per_client_final_round"]
                / r["bytes_up_per_client_final_round"],
                "download_reduction": dense["bytes_down_per_client_round"]
                / r["bytes_down_per_client_round"],
                "accuracy_drop_points": 100
                * (dense["central_accuracy"] - r["central_accuracy"]),
            }
        )
    headline = next(row for row in rows if row["run"] == HEADLINE)
    result = {
        "headline": HEADLINE,
        "upload_reduction": headline["upload_reduction"],
        "accuracy_drop_points": headline["accuracy_drop_points"],
        "rounds": args.rounds,
        "rows": rows,
    }
    write_json(args.out, result)
    print(
        f"{'run':18s} {'acc':>7s} {'drop':>6s} {'up/round':>10s} {'up x':>6s} "
        f"{'final x':>7s} {'down x':>6s}"
    )
    for row in rows:
        print(
            f"{row['run']:18s} {row['central_accuracy']:7.4f} "
            f"{row['accuracy_drop_points']:6.2f} "
            f"{row['bytes_up_per_client_round']:10.0f} "
            f"{row['upload_reduction']:6.1f} "
            f"{row['upload_reduction_final_round']:7.1f} "
            f"{row['download_reduction']:6.1f}"
        )
    print(
        f"headline {HEADLINE}: upload_reduction {result['upload_reduction']:.1f}x, "
        f"accuracy_drop_points {result['accuracy_drop_points']:.2f} -> {args.out}"
    )


if __name__ == "__main__":
    main()
