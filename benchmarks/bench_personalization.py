"""Personalized blending vs FedAvg on non-IID digits, and augmentation on small data.

One invocation runs, each through Flower's simulation runtime (10 clients, digits):

- pathological partition (2 classes per client): FedAvg, APFL and FedPer;
- Dirichlet(0.5): FedAvg and APFL;
- a small-data setting (80 % of digits held out as the central test set, so each
  client trains on about 30 rows): FedAvg without and with the ``light`` augmentation.

Client accuracy is measured on each client's own held-out rows (its validation split,
20 % of its partition: rows of its own classes), as the example-weighted mean over
clients, for the global model and for the personalized one.

    uv run python benchmarks/bench_personalization.py --out personalization.json
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, simulate, write_json  # noqa: E402

from fl_app.core.results import read_rows  # noqa: E402

APFL = {"strategy": "personalized", "strategy-mode": "apfl"}
FEDPER = {"strategy": "personalized", "strategy-mode": "fedper"}
PATHOLOGICAL = {"partition": "pathological", "partition-classes-per-client": 2}
DIRICHLET = {"partition": "dirichlet", "partition-alpha": 0.5}
LIGHT = {
    "client-augmentation": "light",
    "client-augmentation-rotation": 0.05,
    "client-augmentation-translation": 0.1,
    "client-augmentation-zoom": 0.1,
}
SMALL = {"dataset-test-fraction": 0.8, "dataset-val-fraction": 0.1}


def run(name: str, overrides: dict, rounds: int, workdir: Path) -> dict:
    config = {
        "num-rounds": rounds,
        "save-model": False,
        "dataset-val-fraction": 0.2,
        **overrides,
    }
    started = time.perf_counter()
    outcome = simulate(name, config, workdir)
    last = read_rows(outcome.output_dir)[-1]
    return {
        "config": overrides,
        "central_accuracy": outcome.summary["final_accuracy"],
        "client_global_accuracy": last.get("federated_accuracy"),
        "client_personalized_accuracy": last.get("federated_personalized_accuracy"),
        "mean_alpha": last.get("federated_alpha"),
        "total_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = bench_parser(__doc__, rounds=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        w = Path(tmp)
        runs = {
            "pathological_fedavg": run(
                "pathological_fedavg", PATHOLOGICAL, args.rounds, w
            ),
            "pathological_apfl": run(
                "pathological_apfl", {**PATHOLOGICAL, **APFL}, args.rounds, w
            ),
            "pathological_fedper": run(
                "pathological_fedper", {**PATHOLOGICAL, **FEDPER}, args.rounds, w
            ),
            "dirichlet_fedavg": run("dirichlet_fedavg", DIRICHLET, args.rounds, w),
            "dirichlet_apfl": run(
                "dirichlet_apfl", {**DIRICHLET, **APFL}, args.rounds, w
            ),
            "small_data_plain": run("small_data_plain", SMALL, args.rounds, w),
            "small_data_augmented": run(
                "small_data_augmented", {**SMALL, **LIGHT}, args.rounds, w
            ),
        }

    def gain(partition: str, method: str) -> float:
        personalized = runs[f"{partition}_{method}"]["client_personalized_accuracy"]
        return 100 * (
            personalized - runs[f"{partition}_fedavg"]["client_global_accuracy"]
        )

    result = {
        "pathological_personalized_accuracy": runs["pathological_apfl"][
            "client_personalized_accuracy"
        ],
        "pathological_gain_points": gain("pathological", "apfl"),
        "pathological_fedper_gain_points": gain("pathological", "fedper"),
        "dirichlet_gain_points": gain("dirichlet", "apfl"),
        "augmentation_small_data": {
            "central_accuracy_without": runs["small_data_plain"]["central_accuracy"],
            "central_accuracy_with": runs["small_data_augmented"]["central_accuracy"],
        },
        "rounds": args.rounds,
        "runs": runs,
    }
    write_json(args.out, result)
    for name, r in runs.items():
        personalized = r["client_personalized_accuracy"] or float("nan")
        print(
            f"{name:24s} central {r['central_accuracy']:.4f}  "
            f"client global {r['client_global_accuracy']:.4f}  "
            f"client personalized {personalized:.4f}"
        )
    print(
        "pathological: personalized "
        f"{result['pathological_personalized_accuracy']:.4f}, "
        f"gain {result['pathological_gain_points']:.1f} points (FedPer "
        f"{result['pathological_fedper_gain_points']:.1f}); dirichlet gain "
        f"{result['dirichlet_gain_points']:.1f} points -> {args.out}"
    )


if __name__ == "__main__":
    main()
