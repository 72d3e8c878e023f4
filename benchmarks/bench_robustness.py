"""Robust aggregation under attack: how far one or two bad clients move the result.

One invocation runs, each through Flower's simulation runtime (digits, Dirichlet
alpha = 0.5, 10 clients, all of them every round, CNN, 20 rounds, seed 42):

- ``clean``: FedAvg with the update defences off (``robust.norm_bound=0
  robust.max_examples=0``), no attack: the reference;
- one attacker of ten (partition 0) with ``scaled`` (x10^6), ``sign_flip`` (x5)
  and ``examples`` (claims 10^9 rows), against FedAvg with the defences off
  (``fedavg``) and with the default config (``defended``: the defences on by
  default, rejecting an update longer than 3 x the round's median delta norm and
  capping claims at 2 x the median claim, widened to the round's spread);
- two attackers of ten (partitions 0 and 1) with ``alie`` and ``sign_flip`` (x5),
  against FedAvg and each robust aggregator alone (defences off): median, trimmed
  mean (beta 0.2), Krum and Multi-Krum (f = 2), Bulyan (f = 1: with 10 clients,
  n >= 4f + 3 allows no more);
- on clean data: the default config (``defended``), and each robust aggregator with
  its defaults (f = 1, beta = 0.1; defences off).

    uv run python benchmarks/bench_robustness.py --out FILE [--only one,two,clean]

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
OFF = {"robust-norm-bound": 0.0, "robust-max-examples": 0.0}
DEFENDED: dict = {}  # the default config: the update defences are on
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
    parser.add_argument(
        "--only",
        default="one,two,clean",
        help="comma-separated groups to run (the reference run always runs)",
    )
    args = parser.parse_args()
    groups = set(args.only.split(","))
    configs: dict[str, dict] = {"clean": dict(OFF)}
    if "one" in groups:
        for attack, cfg in ONE.items():
            one = {**cfg, "attack-clients": "0"}
            configs[f"one/{attack}/fedavg"] = {**one, **OFF}
            configs[f"one/{attack}/defended"] = {**one, **DEFENDED}
    if "two" in groups:
        for attack, cfg in TWO.items():
            for name, agg in AGGREGATORS.items():
                configs[f"two/{attack}/{name}"] = {
                    **cfg,
                    "attack-clients": "0,1",
                    **agg,
                    **OFF,
                }
    if "clean" in groups:
        configs["clean/defended"] = dict(DEFENDED)
        for name in AGGREGATORS:
            if name != "fedavg":
                configs[f"clean/{name}"] = {"strategy": name, **OFF}

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
    result: dict = {"rounds": args.rounds, "clean_accuracy": clean}
    if "one" in groups:
        result["worst_drop_points_one_attacker"] = max(
            runs[f"one/{a}/defended"]["drop_points"] for a in ONE
        )
        result["worst_drop_points_one_attacker_undefended"] = max(
            runs[f"one/{a}/fedavg"]["drop_points"] for a in ONE
        )
    if "two" in groups:
        two = {
            name: max(runs[f"two/{attack}/{name}"]["drop_points"] for attack in TWO)
            for name in AGGREGATORS
        }
        robust = {k: v for k, v in two.items() if k != "fedavg"}
        best = min(robust, key=robust.get)
        result["worst_drop_points_two_attackers"] = two
        result["best_aggregator_two_attackers"] = best
        result["best_worst_drop_points_two_attackers"] = robust[best]
    if "clean" in groups:
        result["clean_drop_points"] = {
            name: runs[f"clean/{name}"]["drop_points"]
            for name in ["defended", *AGGREGATORS]
            if name != "fedavg"
        }
    result["runs"] = runs
    write_json(args.out, result)
    for name, run in runs.items():
        print(
            f"{name:28s} acc {run['final_accuracy']:.4f}  drop "
            f"{run['drop_points']:+7.2f}  clipped {run['clipped']:3d}  capped "
            f"{run['capped']:3d}  rejected {run['rejected']:3d}"
        )
    for key, value in result.items():
        if key not in ("runs", "rounds"):
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
