"""FedAvg against FedProx (mu = 0.01, 0.1) on strongly non-IID digits.

One invocation runs, each through Flower's simulation runtime (digits, Dirichlet
alpha = 0.1, 10 clients, CNN, 20 rounds, every client every round, Adam lr 0.005):

- ``fedavg``, ``fedprox_0.01``, ``fedprox_0.1``: one local epoch (the defaults);
- the same three with five local epochs (``*_e5``), where local models drift
  further from the global one and the proximal term has more to hold back.

    uv run python benchmarks/bench_fedprox.py --out benchmarks/results/fedprox.json

FILE keys: per run ``central_accuracy`` (after the last round), ``best_accuracy``
(best round), ``accuracy_by_round``, ``proximal_distance`` (mean over clients of
``||w - w_global||`` after local training, last round); ``gain_points`` (FedProx's
central accuracy minus FedAvg's, in points, per mu and epoch setting).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, simulate, write_json  # noqa: E402

from fl_app.core.results import read_rows  # noqa: E402

BASE = {"partition": "dirichlet", "partition-alpha": 0.1, "save-model": False}
MUS = {"fedavg": 0.0, "fedprox_0.01": 0.01, "fedprox_0.1": 0.1}
EPOCHS = {"": 1, "_e5": 5}


def run(name: str, overrides: dict, rounds: int, workdir: Path) -> dict:
    outcome = simulate(name, {"num-rounds": rounds, **BASE, **overrides}, workdir)
    rows = read_rows(outcome.output_dir)
    last = rows[-1]["clients"]
    distances = [c["proximal_distance"] for c in last if "proximal_distance" in c]
    accuracy = [row["central_accuracy"] for row in rows]
    return {
        "config": overrides,
        "central_accuracy": outcome.summary["final_accuracy"],
        "best_accuracy": max(accuracy),
        "accuracy_by_round": accuracy,
        "proximal_distance": statistics.mean(distances) if distances else None,
    }


def main() -> None:
    parser = bench_parser(__doc__, rounds=20)
    args = parser.parse_args()
    configs = {
        f"{name}{suffix}": {"client-proximal-mu": mu, "client-local-epochs": epochs}
        for suffix, epochs in EPOCHS.items()
        for name, mu in MUS.items()
    }
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        runs = {
            name: run(name, cfg, args.rounds, Path(tmp))
            for name, cfg in configs.items()
        }
    gains = {
        f"{name}{suffix}": 100
        * (
            runs[f"{name}{suffix}"]["central_accuracy"]
            - runs[f"fedavg{suffix}"]["central_accuracy"]
        )
        for suffix in EPOCHS
        for name in MUS
        if name != "fedavg"
    }
    result = {"rounds": args.rounds, "gain_points": gains, "runs": runs}
    write_json(args.out, result)
    for name, r in runs.items():
        distance = r["proximal_distance"]
        print(
            f"{name:18s} central {r['central_accuracy']:.4f}  best "
            f"{r['best_accuracy']:.4f}  distance "
            f"{'-' if distance is None else f'{distance:.3f}'}"
        )
    print(f"gain_points {gains} -> {args.out}")


if __name__ == "__main__":
    main()
