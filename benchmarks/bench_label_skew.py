"""Label skew: FedAvg, FedRS, FedLC and GAN balancing on MNIST's and digits' splits.

Each cell is one run through Flower's simulation runtime, same seed and rounds per
dataset:

- ``mnist``: McMahan et al.'s pathological preset (``fedavg_mnist_2nn_shards``: the
  2NN, 100 clients of 2 shards of 300 label-sorted rows, 10 per round, E = 1,
  B = 10, SGD 0.2), ``--mnist-rounds`` rounds;
- ``digits``: the default CNN, 10 clients of two classes each
  (``partition=pathological``), every client every round, ``--rounds`` rounds;

and on each, the methods:

- ``fedavg``; ``fedrs`` (alpha ``--alpha``); ``fedlc`` (tau ``--tau``);
- ``iid``: FedAvg on the same dataset dealt IID (MNIST: the
  ``fedavg_mnist_2nn_iid`` preset), same rounds: what clients without label skew
  reach, the room any fix for label skew has;
- ``gan``: GAN balancing (``synthetic=gan``; on MNIST the 28x28 convolutional GAN,
  ``--gan-rounds`` GAN rounds of ``--gan-steps`` batches of 64 per sampled client,
  generator labels ``--gan-labels`` (default: the batch's own), class weight
  ``--gan-class-weight``, mode-seeking weight ``--gan-diversity``, every class
  filled to the client's largest or to ``--gan-fill-count`` rows, TSTR on 1,000
  rows per class; on digits ``conf/synthetic/gan.yaml``'s defaults);
- ``control``: the same, with a generator trained for one step (rows of noise with
  the right labels): how much of a gain is label balancing alone;
- ``gan_cheap``: GAN balancing plus the better of FedRS and FedLC on that dataset
  (by this file's rows; run it after both);
- ``gan_dp``: GAN balancing with DP-SGD on the discriminator (MNIST:
  ``--dp-rounds`` GAN rounds, Poisson batches of 16, noise ``--dp-noise``,
  ``--dp-discriminator-steps``, uniform generator labels, the only ones DP allows;
  digits: ``bench_synthetic.py``'s DP setting).

    uv run python benchmarks/bench_label_skew.py --out FILE [--only mnist_gan,...]

FILE keeps one row per cell (``--only`` replaces those and keeps the others): the
central accuracy after the last round and the mean of the last five, every round's
accuracy, the wall time, and for GAN cells the GAN phase's and the classifier's
wall times, the TSTR accuracy of the final generator (a classifier trained only on
its rows, tested on the real test set) and the largest client ε of a DP GAN. The
figures: per dataset the gains over FedAvg in points (mean of the last five
rounds); on MNIST ``best_cheap_gain_points`` (best of FedRS and FedLC over FedAvg),
``gan_over_best_cheap_points`` (the better of ``gan`` and ``gan_cheap`` over the
best cheap fix), ``gan_over_control_points`` (``gan`` over ``control``),
``tstr_accuracy``, ``tstr_accuracy_dp``, ``epsilon_dp``, ``iid_gain_points`` (``iid``
over ``fedavg``).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_only, bench_parser, simulate, write_json  # noqa: E402

from fl_app.core.results import read_rows  # noqa: E402

DIGITS = {
    "partition": "pathological",
    "num-clients": 10,
    "clients-per-round": 10,
    "evaluate-clients-per-round": 0,
    "save-model": False,
}
DATASETS = ("mnist", "digits")
METHODS = ("fedavg", "iid", "fedrs", "fedlc", "gan", "control", "gan_cheap", "gan_dp")
CHEAP = ("fedrs", "fedlc")


def dataset_configs(args) -> dict[str, dict[str, Any]]:
    """Return each dataset's base run config, and its IID one (``<dataset>_iid``)."""
    from bench_mnist import preset_config

    mnist = {"save-model": False, "num-rounds": args.mnist_rounds}
    digits = {**DIGITS, "num-rounds": args.rounds}
    return {
        "mnist": {**preset_config("fedavg_mnist_2nn_shards"), **mnist},
        "mnist_iid": {**preset_config("fedavg_mnist_2nn_iid"), **mnist},
        "digits": digits,
        "digits_iid": {**digits, "partition": "iid"},
    }


def gan_settings(dataset: str, method: str, args) -> dict[str, Any]:
    """Return the synthetic-* settings of a GAN method on a dataset."""
    if dataset == "mnist":
        gan = {
            "synthetic": "gan",
            "synthetic-rounds": args.gan_rounds,
            "synthetic-local-steps": args.gan_steps,
            "synthetic-tstr-rows": 1000,
        }
        gan["synthetic-diversity-weight"] = args.gan_diversity
        gan["synthetic-class-weight"] = args.gan_class_weight
        gan["synthetic-generator-labels"] = args.gan_labels
        if args.gan_fill_count:
            gan.update(
                {"synthetic-fill": "count", "synthetic-fill-count": args.gan_fill_count}
            )
        dp = {
            "synthetic-dp": True,
            "synthetic-rounds": args.dp_rounds,
            "synthetic-discriminator-steps": args.dp_discriminator_steps,
            "synthetic-generator-labels": "uniform",
            "synthetic-batch-size": 16,
            "synthetic-dp-noise-multiplier": args.dp_noise,
        }
    else:
        from bench_synthetic import DP as dp

        gan = {"synthetic": "gan"}
    if method == "control":
        return {**gan, "synthetic-rounds": 1, "synthetic-local-steps": 1}
    if method == "gan_dp":
        return {**gan, **dp}
    return gan


def method_settings(
    dataset: str, method: str, args, rows: dict[str, dict]
) -> dict[str, Any]:
    """Return the settings a method adds to the dataset's base config."""
    cheap = {
        "fedrs": {"client-fedrs-alpha": args.alpha},
        "fedlc": {"client-fedlc-tau": args.tau},
    }
    if method in ("fedavg", "iid"):
        return {}
    if method in cheap:
        return cheap[method]
    extra = gan_settings(dataset, method, args)
    if method == "gan_cheap":
        best = best_cheap(dataset, rows)
        if best is None:
            raise SystemExit(
                f"{dataset}_gan_cheap needs {dataset}_fedrs and {dataset}_fedlc first"
            )
        extra.update(cheap[best])
    return extra


def best_cheap(dataset: str, rows: dict[str, dict]) -> str | None:
    """Return the better of FedRS and FedLC on ``dataset`` by ``rows``, or None."""
    got = {m: rows.get(f"{dataset}_{m}") for m in CHEAP}
    if any(r is None for r in got.values()):
        return None
    return max(got, key=lambda m: got[m]["last5_mean_accuracy"])


def run(name: str, config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one cell; return its figures."""
    started = time.perf_counter()
    outcome = simulate(
        name, config, workdir, num_supernodes=int(config.get("num-clients", 10))
    )
    summary = outcome.summary
    accuracy = [row["central_accuracy"] for row in read_rows(outcome.output_dir)]
    result = {
        "central_accuracy": summary["final_accuracy"],
        "last5_mean_accuracy": statistics.mean(accuracy[-5:]),
        "accuracy_per_round": [round(a, 5) for a in accuracy],
        "wall_s": time.perf_counter() - started,
        "settings": {
            k: v for k, v in config.items() if k.startswith(("synth", "cli", "part"))
        },
    }
    if config.get("synthetic") == "gan":
        from bench_synthetic import gan_figures

        result.update(gan_figures(summary))
    return result


def points(rows: dict[str, dict], a: str, b: str) -> float | None:
    """Return ``a``'s mean accuracy of the last five rounds minus ``b``'s, in points."""
    if a not in rows or b not in rows:
        return None
    return 100 * (rows[a]["last5_mean_accuracy"] - rows[b]["last5_mean_accuracy"])


def summarize(rows: dict[str, dict], args) -> dict[str, Any]:
    """Return FILE's contents: the rows and the figures they give."""
    out: dict[str, Any] = {"alpha": args.alpha, "tau": args.tau, "rows": rows}
    for dataset in DATASETS:
        out[dataset] = {
            "gain_points": {
                m: points(rows, f"{dataset}_{m}", f"{dataset}_fedavg")
                for m in METHODS[1:]
                if f"{dataset}_{m}" in rows
            },
            "best_cheap_method": best_cheap(dataset, rows),
        }
    best = out["mnist"]["best_cheap_method"]
    out["best_cheap_method"] = best
    out["best_cheap_gain_points"] = (
        points(rows, f"mnist_{best}", "mnist_fedavg") if best else None
    )
    over_cheap = [
        p
        for m in ("gan", "gan_cheap")
        if best and (p := points(rows, f"mnist_{m}", f"mnist_{best}")) is not None
    ]
    out["gan_over_best_cheap_points"] = max(over_cheap, default=None)
    out["gan_over_control_points"] = points(rows, "mnist_gan", "mnist_control")
    out["tstr_accuracy"] = rows.get("mnist_gan", {}).get("tstr_accuracy")
    out["tstr_accuracy_dp"] = rows.get("mnist_gan_dp", {}).get("tstr_accuracy")
    out["epsilon_dp"] = rows.get("mnist_gan_dp", {}).get("epsilon_gan_max")
    out["tstr_accuracy_control"] = rows.get("mnist_control", {}).get("tstr_accuracy")
    out["iid_gain_points"] = points(rows, "mnist_iid", "mnist_fedavg")
    return out


def main() -> None:
    parser = bench_parser(__doc__, rounds=30)
    parser.add_argument("--mnist-rounds", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.5, help="FedRS's alpha")
    parser.add_argument("--tau", type=float, default=1.0, help="FedLC's tau")
    parser.add_argument("--gan-rounds", type=int, default=20, help="MNIST GAN rounds")
    parser.add_argument(
        "--gan-steps", type=int, default=60, help="MNIST GAN batches per client"
    )
    parser.add_argument("--dp-rounds", type=int, default=15, help="MNIST DP GAN rounds")
    parser.add_argument(
        "--dp-noise", type=float, default=0.7, help="MNIST DP GAN noise multiplier"
    )
    parser.add_argument(
        "--dp-discriminator-steps",
        type=int,
        default=1,
        help="MNIST DP GAN's discriminator steps per generator step",
    )
    parser.add_argument(
        "--gan-diversity",
        type=float,
        default=0.0,
        help="MNIST GAN's mode-seeking weight",
    )
    parser.add_argument(
        "--gan-class-weight", type=float, default=1.0, help="MNIST GAN's class weight"
    )
    parser.add_argument(
        "--gan-fill-count",
        type=int,
        help="MNIST GAN cells fill each class to this many rows (default: to the "
        "client's largest class)",
    )
    parser.add_argument(
        "--gan-labels",
        choices=("uniform", "local"),
        default="local",
        help="MNIST GAN's generator labels (the DP GAN's are uniform)",
    )
    cells = [f"{d}_{m}" for d in DATASETS for m in METHODS]
    add_only(parser, cells)
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    if args.out.exists():
        rows = json.loads(args.out.read_text()).get("rows", {})
    bases = dataset_configs(args)
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        for name in args.only or cells:
            dataset, method = name.split("_", 1)
            base = bases[name if method == "iid" else dataset]
            config = {**base, **method_settings(dataset, method, args, rows)}
            rows[name] = run(name, config, Path(tmp))
            write_json(args.out, summarize(rows, args))
            r = rows[name]
            print(
                f"{name:18s} final {r['central_accuracy']:.4f} "
                f"last5 {r['last5_mean_accuracy']:.4f} "
                + (f"tstr {r['tstr_accuracy']:.4f} " if "tstr_accuracy" in r else "")
                + f"{r['wall_s']:.0f} s",
                flush=True,
            )
    result = summarize(rows, args)
    write_json(args.out, result)
    print(
        {k: result[k] for k in result if k.endswith(("points", "accuracy", "_dp"))},
        "->",
        args.out,
    )


if __name__ == "__main__":
    main()
