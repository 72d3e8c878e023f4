"""Bytes each way and accuracy of compressed FedAvg vs dense float32 FedAvg.

Every run goes through Flower's simulation runtime, federated evaluation off so the
download column counts training traffic only. ``--dataset`` picks the setups (both
by default, in one invocation):

``digits`` (Dirichlet 0.5, 10 clients, the default CNN, every client every round,
``--rounds`` rounds):

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

``mnist`` (McMahan et al.'s CNN preset ``fedavg_mnist_cnn_iid``: 100 clients of 600
rows, 10 per round, E = 1, B = 10; and the same with the pathological split, 2 shards
of 300 sorted rows per client; ``--mnist-rounds`` rounds): dense, top-k uploads at
1 % and 0.3 % (int8 values, or signs: ternary, as in Sattler et al.'s STC) with
error feedback, with and without DGC's 3-round warm-up (``*_nowarm``), and top-k
uploads with compressed downloads (each client sent what changed since its copy;
``compression=topk_down``).

    uv run python benchmarks/bench_compression.py --out compression.json
    uv run python benchmarks/bench_compression.py --out F --dataset mnist \
        --only mnist/dense,mnist/topk1_int8 --merge   # some runs, kept in F

FILE keys: per dataset, ``rows`` (every run's accuracy, bytes and reductions: mean
per client per round, dense / it) and, for mnist, the top-level targets of the best
runs on the IID preset: ``upload_reduction`` and ``accuracy_drop_points`` (the run
with the largest upload reduction within 1 point of dense), ``total_reduction`` and
``total_accuracy_drop_points`` (up + down, same rule), and ``pathological`` (the same
codecs on the pathological split). Accuracy: final central accuracy after the same
rounds; drop = dense minus it, in points. ``digits_headline``: the digits ``sign``
run's figures (the figure BENCHMARKS.md quoted before MNIST). A plot of accuracy
against bytes per client-round goes next to FILE (``.png``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def topk(fraction: float, values: str = "int8", warmup: int = 3) -> dict[str, Any]:
    """Top-k delta uploads with error feedback (and DGC's warm-up, ``warmup`` rounds
    from 100 % down to ``fraction``)."""
    return {
        "compression": f"sparse+{values}",
        "compression-topk": fraction,
        "compression-topk-warmup-rounds": warmup,
        **DELTA_EF,
    }


# compressed downloads (conf/compression/topk_down.yaml moves 1 % a round: the
# topk1_int8_down1_nowarm run), with history enough for every copy in these runs
DOWN = {
    "compression-download": "float16",
    "compression-download-delta": True,
    "compression-download-topk": 0.05,
    "compression-download-max-age": 100,
}
SHARDS = {"partition": "shards", "partition-shards-per-client": 2}
MNIST_PRESET = "fedavg_mnist_cnn_iid"
MNIST_RUNS = {
    "dense": {},
    "topk1_int8": topk(0.01),
    "topk1_sign": topk(0.01, "sign"),
    "topk03_int8": topk(0.003),
    "topk1_int8_down": {**topk(0.01), **DOWN},
    # without the warm-up: its first rounds (32 %, 10 %, 3 % of each kernel) are
    # most of a 20-round run's upload bytes
    "topk1_int8_nowarm": topk(0.01, warmup=0),
    "topk1_sign_nowarm": topk(0.01, "sign", warmup=0),
    "topk03_int8_nowarm": topk(0.003, warmup=0),
    "topk1_int8_down_nowarm": {**topk(0.01, warmup=0), **DOWN},
    # the public model moving 2 % and 1 % of each kernel a round instead of 5 %
    "topk1_int8_down2_nowarm": {
        **topk(0.01, warmup=0),
        **DOWN,
        "compression-download-topk": 0.02,
    },
    "topk1_int8_down1_nowarm": {
        **topk(0.01, warmup=0),
        **DOWN,
        "compression-download-topk": 0.01,
    },
    "shards_dense": SHARDS,
    "shards_topk1_int8": {**topk(0.01), **SHARDS},
    "shards_topk1_int8_down": {**topk(0.01), **DOWN, **SHARDS},
    "shards_topk1_int8_down_nowarm": {**topk(0.01, warmup=0), **DOWN, **SHARDS},
}


def run(
    name: str, overrides: dict, rounds: int, workdir: Path, base: dict | None = None
) -> dict:
    """Run one configuration; return its accuracy and bytes per client-round."""
    config = {
        **(base or {}),
        "num-rounds": rounds,
        "save-model": False,
        "evaluate-clients-per-round": 0,
        **overrides,
    }
    started = time.perf_counter()
    outcome = simulate(
        name, config, workdir, num_supernodes=int(config.get("num-clients", 10))
    )
    rows = read_rows(outcome.output_dir)
    up = [c["bytes_up"] for row in rows for c in row["clients"]]
    last_up = [c["bytes_up"] for c in rows[-1]["clients"]]
    down = [c["bytes_down"] for row in rows for c in row["clients"]]
    accuracy = [row["central_accuracy"] for row in rows]
    return {
        "config": overrides,
        "central_accuracy": outcome.summary["final_accuracy"],
        "central_accuracy_last3_mean": statistics.mean(accuracy[-3:]),
        "accuracy_per_round": [round(a, 5) for a in accuracy],
        "bytes_up_per_client_round": statistics.mean(up),
        "bytes_up_per_client_final_round": statistics.mean(last_up),
        "bytes_down_per_client_round": statistics.mean(down),
        "final_sparsity": rows[-1].get("sparsity"),
        "bytes_up_total": outcome.summary["bytes_up"],
        "bytes_down_total": outcome.summary["bytes_down"],
        "num_failures": sum(row.get("num_failures", 0) for row in rows),
        "wall_s": time.perf_counter() - started,
    }


def compare(runs: dict[str, dict], dense_of: dict[str, str]) -> list[dict]:
    """Each run beside its dense baseline (``dense_of[name]``): reductions, drop."""
    rows = []
    for name, r in runs.items():
        dense = runs.get(dense_of[name])
        if dense is None:
            continue
        up = dense["bytes_up_per_client_round"] / r["bytes_up_per_client_round"]
        down = dense["bytes_down_per_client_round"] / r["bytes_down_per_client_round"]
        total = (
            dense["bytes_up_per_client_round"] + dense["bytes_down_per_client_round"]
        ) / (r["bytes_up_per_client_round"] + r["bytes_down_per_client_round"])
        rows.append(
            {
                "run": name,
                "baseline": dense_of[name],
                **r,
                "upload_reduction": up,
                "upload_reduction_final_round": dense["bytes_up_per_client_final_round"]
                / r["bytes_up_per_client_final_round"],
                "download_reduction": down,
                "total_reduction": total,
                "accuracy_drop_points": 100
                * (dense["central_accuracy"] - r["central_accuracy"]),
            }
        )
    return rows


def best(rows: list[dict], key: str, limit: float = 1.0) -> dict | None:
    """The row with the largest ``key`` within ``limit`` points of its baseline."""
    within = [
        r
        for r in rows
        if r["run"] != r["baseline"] and r["accuracy_drop_points"] <= limit
    ]
    return max(within, key=lambda r: r[key], default=None)


def plot(results: dict, path: Path) -> None:
    """Accuracy against bytes per client-round (up + down), one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in ("mnist", "digits") if results.get(d, {}).get("rows")]
    if not datasets:
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5))
    panels = [axes] if len(datasets) == 1 else list(axes)
    for ax, dataset in zip(panels, datasets, strict=True):
        for row in results[dataset]["rows"]:
            total = (
                row["bytes_up_per_client_round"] + row["bytes_down_per_client_round"]
            )
            ax.scatter(total, row["central_accuracy"])
            ax.annotate(row["run"], (total, row["central_accuracy"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("bytes per client per round, up + down (log)")
        ax.set_ylabel("final central accuracy")
        ax.set_title(f"{dataset}: {results[dataset]['setup']}", fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mnist_base() -> dict[str, Any]:
    from bench_mnist import preset_config

    return preset_config(MNIST_PRESET)


def main() -> None:
    import json

    parser = bench_parser(__doc__, rounds=20)
    parser.add_argument(
        "--dataset", choices=("digits", "mnist", "both"), default="both"
    )
    parser.add_argument("--mnist-rounds", type=int, default=20)
    parser.add_argument(
        "--only", help="comma-separated DATASET/RUN names (e.g. mnist/dense)"
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep FILE's other runs (update it)"
    )
    args = parser.parse_args()
    datasets = ("digits", "mnist") if args.dataset == "both" else (args.dataset,)
    wanted = None if args.only is None else set(args.only.split(","))
    old = json.loads(args.out.read_text()) if args.merge and args.out.exists() else {}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        for dataset in ("digits", "mnist"):
            kept = dict(old.get(dataset, {}).get("runs", {}))
            table, rounds, base = RUNS, args.rounds, None
            if dataset == "mnist":
                table, rounds = MNIST_RUNS, args.mnist_rounds
            for name, overrides in table.items():
                if dataset not in datasets or (
                    wanted is not None and f"{dataset}/{name}" not in wanted
                ):
                    continue
                if dataset == "mnist" and base is None:
                    base = mnist_base()
                kept[name] = run(
                    f"{dataset}_{name}", overrides, rounds, Path(tmp), base
                ) | {"rounds": rounds}
            if kept:
                results[dataset] = {"runs": kept}
    for dataset, part in results.items():
        dense_of = {
            name: ("shards_dense" if name.startswith("shards_") else "dense")
            for name in part["runs"]
        }
        part["rows"] = compare(part["runs"], dense_of)
        part["setup"] = (
            f"{MNIST_PRESET} (100 clients, 10 per round), IID and shards"
            if dataset == "mnist"
            else "10 clients, Dirichlet 0.5, all every round"
        )
    mnist_rows = results.get("mnist", {}).get("rows", [])
    iid = [r for r in mnist_rows if not r["run"].startswith("shards_")]
    shards = [r for r in mnist_rows if r["run"].startswith("shards_")]
    up, total = best(iid, "upload_reduction"), best(iid, "total_reduction")
    summary: dict[str, Any] = {
        "upload_reduction": up and up["upload_reduction"],
        "accuracy_drop_points": up and up["accuracy_drop_points"],
        "best_upload_run": up and up["run"],
        "total_reduction": total and total["total_reduction"],
        "total_accuracy_drop_points": total and total["accuracy_drop_points"],
        "best_total_run": total and total["run"],
        "pathological": {
            r["run"]: {
                k: r[k]
                for k in (
                    "central_accuracy",
                    "accuracy_drop_points",
                    "upload_reduction",
                    "download_reduction",
                    "total_reduction",
                )
            }
            for r in shards
        },
    }
    digits = {r["run"]: r for r in results.get("digits", {}).get("rows", [])}
    if HEADLINE in digits:
        summary["digits_headline"] = {
            "run": HEADLINE,
            "upload_reduction": digits[HEADLINE]["upload_reduction"],
            "accuracy_drop_points": digits[HEADLINE]["accuracy_drop_points"],
        }
    out = {**summary, **results}
    write_json(args.out, out)
    plot(out, args.out.with_suffix(".png"))
    for dataset, part in results.items():
        print(
            f"{dataset:6s} {'run':24s} {'acc':>7s} {'drop':>6s} {'up x':>7s} "
            f"{'down x':>7s} {'total x':>7s}"
        )
        for row in part["rows"]:
            print(
                f"{'':6s} {row['run']:24s} {row['central_accuracy']:7.4f} "
                f"{row['accuracy_drop_points']:6.2f} {row['upload_reduction']:7.1f} "
                f"{row['download_reduction']:7.1f} {row['total_reduction']:7.1f}"
            )
    print(
        f"mnist best upload: {summary['best_upload_run']} "
        f"{summary['upload_reduction']}x at {summary['accuracy_drop_points']} points; "
        f"best total: {summary['best_total_run']} {summary['total_reduction']}x "
        f"-> {args.out}"
    )


if __name__ == "__main__":
    main()
