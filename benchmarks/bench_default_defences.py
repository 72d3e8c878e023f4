"""The default update defences on honest runs: what they touch, and what it costs.

The update defences are on by default (reject a delta longer than 3 x the round's
median, cap a claim at 2 x the median claim, both widened to the round's spread, in
rounds of at least 5 updates). On an honest run they should change nothing. One
invocation runs, through Flower's simulation runtime (10 clients, all of them every
round, 20 rounds, seed 42), each case twice: with the default config and with the
defences off (``robust.norm_bound=0 robust.max_examples=0``). The cases are the
settings of the other benchmarks where a median-relative bound could hurt an honest
client: label skew (Dirichlet 0.1, pathological), log-normal data sizes
(``dataset=synthetic``, FedProx's Synthetic(1, 1)), width slices (HeteroFL),
personalized partial updates (APFL, FedPer), compressed updates (sign, top-k int8,
both with error feedback) and DP-SGD's noisy updates.

    uv run python benchmarks/bench_default_defences.py --out FILE [--only a,b]

FILE keys: per case ``default`` and ``off`` (``final_accuracy``, ``rejected``,
``clipped``, ``capped``), ``change_points`` (default minus off, in points);
``cases_touched`` (the cases where the defaults rejected, clipped or capped any
update) and ``max_abs_change_points``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, simulate, write_json  # noqa: E402

OFF = {"robust-norm-bound": 0.0, "robust-max-examples": 0.0}
DELTA_EF = {"compression-delta": True, "compression-error-feedback": True}
CASES = {
    "default": {},
    "dirichlet_0.1": {"partition": "dirichlet", "partition-alpha": 0.1},
    "pathological": {"partition": "pathological"},
    "synthetic_lognormal": {
        "dataset": "synthetic",
        "partition": "natural",
        "model": "softmax",
    },
    "hetero": {"strategy": "hetero", "strategy-capacities": "1.0:1,0.5:1,0.25:1"},
    "apfl": {"strategy": "personalized", "strategy-mode": "apfl"},
    "fedper": {"strategy": "personalized", "strategy-mode": "fedper"},
    "sign": {"compression": "sign", **DELTA_EF},
    "topk_int8": {
        "compression": "sparse+int8",
        "compression-topk": 0.05,
        **DELTA_EF,
    },
    "dpsgd": {"dpsgd": "adam", "client-learning-rate": 0.01},
}


def figures(summary: dict) -> dict:
    """The run's final accuracy and what the defences did."""
    return {
        "final_accuracy": summary["final_accuracy"],
        "rejected": summary["rejected_updates"],
        "clipped": summary["clipped_updates"],
        "capped": summary["capped_claims"],
    }


def main() -> None:
    parser = bench_parser(__doc__, rounds=20)
    parser.add_argument("--only", default=",".join(CASES), help="cases to run")
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    cases = {}
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        for name in names:
            base = {"num-rounds": args.rounds, "save-model": False, **CASES[name]}
            result = {"config": CASES[name]}
            for variant, extra in (("default", {}), ("off", OFF)):
                outcome = simulate(f"{name}_{variant}", {**base, **extra}, Path(tmp))
                result[variant] = figures(outcome.summary)
            result["change_points"] = 100 * (
                result["default"]["final_accuracy"] - result["off"]["final_accuracy"]
            )
            cases[name] = result
            d = result["default"]
            print(
                f"{name:22s} default {d['final_accuracy']:.4f}  off "
                f"{result['off']['final_accuracy']:.4f}  change "
                f"{result['change_points']:+.2f}  rejected {d['rejected']}  "
                f"clipped {d['clipped']}  capped {d['capped']}",
                flush=True,
            )
    touched = [
        name
        for name, c in cases.items()
        if c["default"]["rejected"] or c["default"]["clipped"] or c["default"]["capped"]
    ]
    write_json(
        args.out,
        {
            "rounds": args.rounds,
            "cases": cases,
            "cases_touched": touched,
            "max_abs_change_points": max(
                abs(c["change_points"]) for c in cases.values()
            ),
        },
    )
    print(f"touched: {touched or 'none'}")


if __name__ == "__main__":
    main()
