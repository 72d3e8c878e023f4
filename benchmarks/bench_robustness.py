"""Robust aggregation under attack: how far one or two bad clients move the result.

One invocation runs, each through Flower's simulation runtime (digits, Dirichlet
alpha = 0.5, 10 clients, all of them every round, CNN, 20 rounds, seed 42):

- ``clean``: FedAvg, no attack: the reference;
- one attacker of ten (partition 0) with ``scaled`` (x10^6), ``sign_flip`` (x5)
  and ``examples`` (claims 10^9 rows), against plain FedAvg and against FedAvg with
  the defences on (``robust.norm_bound=3 robust.norm_action=reject``: reject an
  update longer than 3 x the round's median delta norm; ``robust.max_examples=2``:
  cap claims at 2 x the median claim);
- two attackers of ten (partitions 0 and 1) with ``alie`` and ``sign_flip`` (x5),
  against FedAvg and each robust aggregator: median, trimmed mean (beta 0.2),
  Krum and Multi-Krum (f = 2), Bulyan (f = 1: with 10 clients, n >= 4f + 3 allows
  no more);
- on clean data: FedAvg with the defences, and each robust aggregator with its
  defaults (f = 1, beta = 0.1).

    uv run python benchmarks/bench_robustness.py --out FILE

FILE keys: per run ``final_accuracy``, ``drop_points`` (clean FedAvg's final
central accuracy minus the run's, in points), ``clipped``/``capped``/``rejected``
totals; ``worst_drop_points_one_attacker`` (defended FedAvg, worst of the three
attacks); per aggregator ``worst_drop_points_two_attackers`` and the best of them;
``clean_drop_points`` per aggregator and for the defences.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, simulate, write_json  # noqa: E402

BASE = {"save-model": False}
DEFENDED = {
    "robust-norm-bound": 3.0,
    "robust-norm-action": "reject",
    "robust-max-examples": 2.0,
}
ONE = {
    "scaled": {"attack": "scaled", "attack-scale": 1e6},
    "sign_flip": {"attack": "sign_flip", "attack-scale": 5.0},
    "examples": {"attack": "examples", "attack-num-examples": 10**9},
}
TWO = {
    "alie": {"attack": "alie"},
    "sign_flip": {"attack": "sign_flip", "attack-scale": 5.0},
}
AGGREGATORS = {
    "fedavg": {"strategy": "fedavg"},
    "median": {"strategy": "median"},
    "trimmed_mean": {"strategy": "trimmed_mean", "strategy-trim-beta": 0.2},
    "krum": {"strategy": "krum", "strategy-num-malicious": 2},
    "multikrum": {"strategy": "multikrum", "strategy-num-malicious": 2},
    "bulyan": {"strategy": "bulyan", "strategy-num-malicious": 1},
}


def main() -> None:
    parser = bench_parser(__doc__, rounds=20)
    args = parser.parse_args()
    configs: dict[str, dict] = {"clean": {}}
    for attack, cfg in ONE.items():
        one = {**cfg, "attack-clients": "0"}
        configs[f"one/{attack}/fedavg"] = one
        configs[f"one/{attack}/defended"] = {**one, **DEFENDED}
    for attack, cfg in TWO.items():
        for name, agg in AGGREGATORS.items():
            configs[f"two/{attack}/{name}"] = {**cfg, "attack-clients": "0,1", **agg}
    configs["clean/defended"] = dict(DEFENDED)
    for name in AGGREGATORS:
        if name != "fedavg":
            configs[f"clean/{name}"] = {"strategy": name}

    runs = {}
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        for name, cfg in configs.items():
            outcome = simulate(
                name.replace("/", "_"),
                {"num-rounds": args.rounds, **BASE, **cfg},
                Path(tmp),
            )
            s = outcome.summary
            runs[name] = {
                "config": cfg,
                "final_accuracy": s["final_accuracy"],
                "clipped": s["clipped_updates"],
                "capped": s["capped_claims"],
                "rejected": s["rejected_updates"],
                "wall_time_s": s["wall_time_s"],
            }
    clean = runs["clean"]["final_accuracy"]
    for run in runs.values():
        run["drop_points"] = 100 * (clean - run["final_accuracy"])
    two = {
        name: max(runs[f"two/{attack}/{name}"]["drop_points"] for attack in TWO)
        for name in AGGREGATORS
    }
    robust = {k: v for k, v in two.items() if k != "fedavg"}
    best = min(robust, key=robust.get)
    result = {
        "rounds": args.rounds,
        "clean_accuracy": clean,
        "worst_drop_points_one_attacker": max(
            runs[f"one/{a}/defended"]["drop_points"] for a in ONE
        ),
        "worst_drop_points_one_attacker_undefended": max(
            runs[f"one/{a}/fedavg"]["drop_points"] for a in ONE
        ),
        "worst_drop_points_two_attackers": two,
        "best_aggregator_two_attackers": best,
        "best_worst_drop_points_two_attackers": robust[best],
        "clean_drop_points": {
            name: runs[f"clean/{name}"]["drop_points"] for name in ["defended", *robust]
        },
        "runs": runs,
    }
    write_json(args.out, result)
    for name, run in runs.items():
        print(
            f"{name:28s} acc {run['final_accuracy']:.4f}  drop "
            f"{run['drop_points']:+7.2f}  clipped {run['clipped']:3d}  capped "
            f"{run['capped']:3d}  rejected {run['rejected']:3d}"
        )
    print(
        f"worst drop, one attacker, defended FedAvg: "
        f"{result['worst_drop_points_one_attacker']:.2f} points"
    )
    print(
        f"two attackers: best {best} {robust[best]:.2f} points; "
        + ", ".join(f"{k} {v:.2f}" for k, v in two.items())
    )
    print(
        "clean drops: "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["clean_drop_points"].items())
    )


if __name__ == "__main__":
    main()
