"""Heterogeneous width slicing vs full-width FedAvg and vs all clients at 1/4 width.

One invocation runs, each through Flower's simulation runtime (digits, Dirichlet 0.5,
10 clients, CNN, 20 rounds, every client every round):

- ``full``: FedAvg, every client at width 1;
- ``hetero``: HeteroFL, capacities {1, 1/2, 1/4} in equal shares (with the scaler);
- ``hetero_no_scaler``: the same without HeteroFL's training-time scaler;
- ``fedrolex``: the same capacities with rolling windows;
- ``smallest_only``: every client at width 1/4 (the global model evaluated at 1/4);
- ``full_masked`` / ``hetero_masked``: ``full`` and ``hetero`` with HeteroFL's
  label-masked loss (``client-label-mask``);
- ``hetero_dynamic``: ``hetero`` with the capacities redrawn among the clients every
  round (``strategy-dynamic``, HeteroFL's "dynamic" setting), which separates the
  cost of slicing from that of fixing the full width to a few non-IID clients.

    uv run python benchmarks/bench_heterogeneous.py --out heterogeneous.json

FILE keys: ``accuracy_ratio_vs_full`` (hetero full-width central accuracy / full
FedAvg's; fixed capacities), ``dynamic_accuracy_ratio_vs_full`` (the same for
``hetero_dynamic``), ``accuracy_ratio_vs_smallest_only`` (hetero / smallest-only at
width 1/4),
``bytes_per_round_by_width`` (bytes one client uploads per round at each width; the
download is the same slice), and every run's figures.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, simulate, write_json  # noqa: E402

from fl_app.core.results import read_rows  # noqa: E402

EQUAL = "1.0:1,0.5:1,0.25:1"
RUNS = {
    "full": {"strategy": "fedavg"},
    "hetero": {"strategy": "hetero", "strategy-capacities": EQUAL},
    "hetero_no_scaler": {
        "strategy": "hetero",
        "strategy-capacities": EQUAL,
        "strategy-scaler": False,
    },
    "fedrolex": {
        "strategy": "hetero",
        "strategy-capacities": EQUAL,
        "strategy-rolling": True,
    },
    "smallest_only": {"strategy": "hetero", "strategy-capacities": "0.25:1"},
    # HeteroFL's masking trick for non-IID labels, on both sides of the comparison.
    "full_masked": {"strategy": "fedavg", "client-label-mask": True},
    "hetero_masked": {
        "strategy": "hetero",
        "strategy-capacities": EQUAL,
        "client-label-mask": True,
    },
    "hetero_dynamic": {
        "strategy": "hetero",
        "strategy-capacities": EQUAL,
        "strategy-dynamic": True,
    },
}


def run(name: str, overrides: dict, rounds: int, workdir: Path) -> dict:
    config = {"num-rounds": rounds, "save-model": False, **overrides}
    outcome = simulate(name, config, workdir)
    rows = read_rows(outcome.output_dir)
    by_width: dict[str, list[int]] = {}
    for row in rows:
        for client in row["clients"]:
            width = str(client.get("width", 1.0))
            by_width.setdefault(width, []).append(client["bytes_up"])
    return {
        "config": overrides,
        "central_accuracy": outcome.summary["final_accuracy"],
        "accuracy_by_width": outcome.summary.get("accuracy_by_width"),
        "bytes_up_per_client_round_by_width": {
            w: statistics.mean(v) for w, v in sorted(by_width.items())
        },
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
    hetero = runs["hetero"]["central_accuracy"]
    smallest = runs["smallest_only"]["accuracy_by_width"]["0.25"]
    result = {
        "accuracy_ratio_vs_full": hetero / runs["full"]["central_accuracy"],
        "dynamic_accuracy_ratio_vs_full": runs["hetero_dynamic"]["central_accuracy"]
        / runs["full"]["central_accuracy"],
        "accuracy_ratio_vs_smallest_only": hetero / smallest,
        # The same ratios with the label-masked loss on both sides, and the masked
        # hetero run against plain full-width FedAvg.
        "masked_accuracy_ratio_vs_full_masked": runs["hetero_masked"][
            "central_accuracy"
        ]
        / runs["full_masked"]["central_accuracy"],
        "masked_accuracy_ratio_vs_full": runs["hetero_masked"]["central_accuracy"]
        / runs["full"]["central_accuracy"],
        "bytes_per_round_by_width": runs["hetero"][
            "bytes_up_per_client_round_by_width"
        ],
        "rounds": args.rounds,
        "runs": runs,
    }
    write_json(args.out, result)
    for name, r in runs.items():
        by_width = r["accuracy_by_width"]
        print(f"{name:18s} central {r['central_accuracy']:.4f}  by width {by_width}")
    print(
        f"accuracy_ratio_vs_full {result['accuracy_ratio_vs_full']:.3f} (masked: "
        f"{result['masked_accuracy_ratio_vs_full_masked']:.3f} vs masked FedAvg, "
        f"{result['masked_accuracy_ratio_vs_full']:.3f} vs FedAvg; dynamic: "
        f"{result['dynamic_accuracy_ratio_vs_full']:.3f})  "
        "accuracy_ratio_vs_smallest_only "
        f"{result['accuracy_ratio_vs_smallest_only']:.3f}  bytes/round by width "
        f"{result['bytes_per_round_by_width']} -> {args.out}"
    )


if __name__ == "__main__":
    main()
