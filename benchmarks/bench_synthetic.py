"""Balancing non-IID clients with a federated conditional GAN, against plain FedAvg.

One invocation runs, each through Flower's simulation runtime (digits, 10 clients,
CNN, FedAvg, 20 classifier rounds, every client every round):

- ``pathological``: 2 classes per client, no synthetic rows;
- ``pathological_gan``: the same, after the GAN phase (``synthetic=gan``, the
  defaults of ``conf/synthetic/gan.yaml``); each client fills every class up to
  its largest;
- ``dirichlet`` / ``dirichlet_gan``: Dirichlet(0.1) label skew, without and with;
- ``pathological_gan_dp``: pathological with DP-SGD on the discriminator
  (``DP`` below: per-client ε after the GAN phase is reported, and must be ≤ 8);
- ``pathological_untrained``: a control, balanced with rows of a generator trained
  for one step only (noise with the right labels): how much of a gain comes from
  balancing the labels a client trains on, whatever the rows look like.

    uv run python benchmarks/bench_synthetic.py --out benchmarks/results/synthetic.json

FILE keys: ``pathological_gain_points``, ``dirichlet_gain_points``,
``dp_pathological_gain_points`` (central accuracy with balancing minus without, in
points, after the last round), ``untrained_pathological_gain_points`` (the
control); ``tstr_accuracy`` (of the pathological run's final generator: a
classifier trained only on its rows, tested on the real central test set),
``tstr_accuracy_dirichlet``, ``tstr_accuracy_dp``; ``dp_epsilon`` (the largest
per-client ε of the DP run, δ = 1e-5); per run ``central_accuracy``,
``accuracy_by_round``, ``gan_wall_time_s`` beside ``classifier_wall_time_s`` (the
run's wall time minus the GAN phase and the TSTR score), ``synthetic_to_real_ratio``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, simulate, write_json  # noqa: E402

from fl_app.core.results import read_rows  # noqa: E402

BASE = {"save-model": False}
PARTITIONS = {
    "pathological": {"partition": "pathological"},
    "dirichlet": {"partition": "dirichlet", "partition-alpha": 0.1},
}
GAN = {"synthetic": "gan"}
# DP on the discriminator: small Poisson batches, few steps, enough noise for ε <= 8
# on the smallest client (86 training rows) after the GAN phase.
DP = {
    **GAN,
    "synthetic-dp": True,
    "synthetic-batch-size": 8,
    "synthetic-dp-noise-multiplier": 2.0,
    "synthetic-rounds": 40,
    "synthetic-local-steps": 20,
}
UNTRAINED = {**GAN, "synthetic-rounds": 1, "synthetic-local-steps": 1}
EPSILON_TARGET = 8.0


def run(name: str, overrides: dict, rounds: int, workdir: Path) -> dict:
    outcome = simulate(name, {"num-rounds": rounds, **BASE, **overrides}, workdir)
    summary = outcome.summary
    rows = read_rows(outcome.output_dir)
    result = {
        "config": overrides,
        "central_accuracy": summary["final_accuracy"],
        "accuracy_by_round": [row["central_accuracy"] for row in rows],
        "wall_time_s": summary["wall_time_s"],
    }
    if "synthetic" in overrides:
        result.update(
            gan_figures(summary),
            gan_bytes_up=summary["gan_bytes_up"],
            gan_bytes_down=summary["gan_bytes_down"],
            synthetic_to_real_ratio=summary["synthetic_to_real_ratio"],
            gan_losses=[
                (r["gan_d_loss"], r["gan_g_loss"])
                for r in read_rows(outcome.output_dir, "gan")
            ],
        )
    return result


def gan_figures(summary: dict) -> dict:
    """Return a GAN run's phase figures from its summary, and the classifier's time.

    The classifier's wall time is the run's minus the GAN phase and the TSTR score.
    """
    keys = (
        "tstr_accuracy",
        "gan_wall_time_s",
        "tstr_wall_time_s",
        "gan_rounds",
        "epsilon_gan_max",
        "synthetic_rows",
        "synthetic_real_rows",
    )
    gan_time = summary["gan_wall_time_s"] + summary["tstr_wall_time_s"]
    return {
        **{key: summary[key] for key in keys},
        "classifier_wall_time_s": summary["wall_time_s"] - gan_time,
    }


def main() -> None:
    parser = bench_parser(__doc__, rounds=20)
    args = parser.parse_args()
    configs = {
        "pathological": PARTITIONS["pathological"],
        "pathological_gan": {**PARTITIONS["pathological"], **GAN},
        "dirichlet": PARTITIONS["dirichlet"],
        "dirichlet_gan": {**PARTITIONS["dirichlet"], **GAN},
        "pathological_gan_dp": {**PARTITIONS["pathological"], **DP},
        "pathological_untrained": {**PARTITIONS["pathological"], **UNTRAINED},
    }
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        runs = {
            name: run(name, cfg, args.rounds, Path(tmp))
            for name, cfg in configs.items()
        }

    def gain(with_gan: str, without: str) -> float:
        return 100 * (
            runs[with_gan]["central_accuracy"] - runs[without]["central_accuracy"]
        )

    dp_epsilon = runs["pathological_gan_dp"]["epsilon_gan_max"]
    result = {
        "rounds": args.rounds,
        "pathological_gain_points": gain("pathological_gan", "pathological"),
        "dirichlet_gain_points": gain("dirichlet_gan", "dirichlet"),
        "dp_pathological_gain_points": gain("pathological_gan_dp", "pathological"),
        "untrained_pathological_gain_points": gain(
            "pathological_untrained", "pathological"
        ),
        "dp_epsilon": dp_epsilon,
        "dp_epsilon_within_target": dp_epsilon is not None
        and dp_epsilon <= EPSILON_TARGET,
        "tstr_accuracy": runs["pathological_gan"]["tstr_accuracy"],
        "tstr_accuracy_dirichlet": runs["dirichlet_gan"]["tstr_accuracy"],
        "tstr_accuracy_dp": runs["pathological_gan_dp"]["tstr_accuracy"],
        "tstr_accuracy_untrained": runs["pathological_untrained"]["tstr_accuracy"],
        "runs": runs,
    }
    write_json(args.out, result)
    for name, r in runs.items():
        line = (
            f"{name:22s} central {r['central_accuracy']:.4f}  {r['wall_time_s']:.0f}s"
        )
        if "tstr_accuracy" in r:
            line += (
                f"  tstr {r['tstr_accuracy']:.4f}  GAN phase "
                f"{r['gan_wall_time_s']:.0f}s vs classifier "
                f"{r['classifier_wall_time_s']:.0f}s"
            )
        print(line)
    print(
        {k: v for k, v in result.items() if k != "runs"},
        f"-> {args.out}",
    )


if __name__ == "__main__":
    main()
