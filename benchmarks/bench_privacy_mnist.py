"""Private federated learning on MNIST: record-level DP-SGD and client-level DP.

Cells, each one run through Flower's simulation runtime (``--only A,B`` runs those;
without it, all in order). Every cell's ε is the one its run reported in its
summary (the accountant the run used), never recomputed here.

- ``dpsgd_*``: tensorflow-privacy's MNIST tutorial CNN (``model=dp_cnn``), 10
  clients, IID, 6,000 rows each, every client every round, DP-SGD (Poisson batches
  of expected size 256, plain SGD), δ = 1e-5 per client, each client's ε from its
  own sampling rate (256 / 6,000) and steps; ``dpsgd_non_dp`` is the same without
  DP. The budget stop is on (``dpsgd-epsilon-budget`` = the cell's target).
- ``clientdp_{1000,10000}_*``: the 2NN (``model=mlp``), IID, N clients of 60,000 / N
  rows, 100 per round, Flower's DP-FedAvg wrapper (fixed or adaptive clipping),
  δ = 1 / (10 N), the server's ε; ``*_non_dp`` is FedAvg of the same setup.

    uv run python benchmarks/bench_privacy_mnist.py --out FILE [--only A,B]
    uv run python benchmarks/bench_privacy_mnist.py --out FILE --plot PNG --no-run
    uv run python benchmarks/bench_privacy_mnist.py --out FILE --no-run --step-timing 64

FILE keeps one row per cell (a later invocation replaces its cells' rows and keeps
the others): cell, kind, epsilon, delta, accuracy, rounds run, wall_time_s, and the
cell's settings; ``targets`` compares the best rows with the issue's thresholds.
``--plot`` draws accuracy against ε for the rows, with the tutorial's figures;
``--step-timing`` adds ``step_timing`` (seconds per step of the tutorial CNN without
DP, with tensorflow-privacy's ``DPModel`` — the default implementation — and with
its ``DPKerasSGDOptimizer`` and vectorized sibling).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_only, bench_parser, simulate, write_json  # noqa: E402

from fl_app.core.results import read_rows  # noqa: E402

# tensorflow-privacy tutorials/README.md (centralized DP-SGD, batch 256, δ = 1e-5,
# accuracy averaged over 10 runs): (noise, clip, epochs, lr, ε, accuracy)
TUTORIAL = [
    (None, None, 20, 0.1, None, 0.990),
    (1.3, 1.5, 15, 0.25, 1.19, 0.950),
    (1.1, 1.0, 60, 0.15, 3.01, 0.966),
    (0.7, 1.5, 45, 0.25, 7.10, 0.970),
]
PLAIN = {  # plain FedAvg: no update defences, MNIST's own test set, no validation
    "save-model": False,
    "evaluate-clients-per-round": 0,
    "dataset": "mnist",
    "partition": "iid",
    "partition-shuffle": True,
    "dataset-val-fraction": 0.0,
    "robust-norm-bound": 0.0,
    "robust-max-examples": 0.0,
    "client-optimizer": "sgd",
}
RECORD = {
    **PLAIN,
    "model": "dp_cnn",
    "num-clients": 10,
    "clients-per-round": 10,
    "client-batch-size": 256,
    "client-local-epochs": 1,
    "client-learning-rate": 0.25,
    "num-rounds": 15,
}


def _dpsgd(
    noise: float, clip: float, budget: float, lr: float = 0.25, rounds: int = 15
) -> dict:
    return {
        **RECORD,
        "client-learning-rate": lr,
        "num-rounds": rounds,
        "dpsgd": "sgd",
        "dpsgd-noise-multiplier": noise,
        "dpsgd-l2-norm-clip": clip,
        "dpsgd-delta": 1e-5,
        "dpsgd-epsilon-budget": budget,
    }


def _client_level(n: int, rounds: int, mode: str, noise: float, **more) -> dict:
    config = {
        **PLAIN,
        "model": "mlp",
        "num-clients": n,
        "clients-per-round": 100,
        "client-batch-size": min(10, 60_000 // n),
        "client-learning-rate": 0.1,
        "num-rounds": rounds,
        **more,
    }
    if mode != "none":
        config.update(
            {
                "clientdp": mode,
                "clientdp-noise-multiplier": noise,
                "clientdp-delta": 1 / (10 * n),
            }
        )
    return config


CLIP = {"clientdp-clipping-norm": 0.5}
E5 = {"client-local-epochs": 5}
# Settings: rounds of one local epoch each (epochs per client = rounds) and the
# noise that keeps each client's ε under its target at q = 256 / 6,000; the first
# three at the tutorial's rate 0.25, the ``_lr*`` ones search the rate, the
# ``_e30``/``_e60`` ones more epochs at a larger noise (BENCHMARKS.md: how they were
# chosen, what was not searched).
CELLS: dict[str, tuple[str, dict]] = {
    "dpsgd_non_dp": ("non-dp", {**RECORD}),
    "dpsgd_eps1": ("dp-sgd", _dpsgd(3.45, 1.5, 1.2)),
    "dpsgd_eps3": ("dp-sgd", _dpsgd(1.5, 1.0, 3.0)),
    "dpsgd_eps8": ("dp-sgd", _dpsgd(0.88, 1.5, 8.0)),
    "dpsgd_eps3_lr1": ("dp-sgd", _dpsgd(1.5, 1.0, 3.0, lr=1.0)),
    "dpsgd_eps3_lr2": ("dp-sgd", _dpsgd(1.5, 1.0, 3.0, lr=2.0)),
    "dpsgd_eps3_lr4": ("dp-sgd", _dpsgd(1.5, 1.0, 3.0, lr=4.0)),
    # the best rate (2.0), clip 1.0; 30 epochs at the noise that keeps ε in budget
    "dpsgd_eps1_lr2": ("dp-sgd", _dpsgd(3.45, 1.0, 1.2, lr=2.0)),
    "dpsgd_eps3_lr2_e30": ("dp-sgd", _dpsgd(1.916, 1.0, 3.0, lr=2.0, rounds=30)),
    "dpsgd_eps8_lr2_e30": ("dp-sgd", _dpsgd(1.026, 1.0, 8.0, lr=2.0, rounds=30)),
    "dpsgd_eps8_lr4_e30": ("dp-sgd", _dpsgd(1.026, 1.0, 8.0, lr=4.0, rounds=30)),
    "clientdp_1000_non_dp": ("non-dp", _client_level(1000, 50, "none", 0.0)),
    "clientdp_1000_fixed": (
        "client-dp",
        _client_level(1000, 50, "server-fixed", 0.8, **{"clientdp-clipping-norm": 0.5}),
    ),
    "clientdp_1000_adaptive": (
        "client-dp",
        _client_level(
            1000, 50, "server-adaptive", 0.8, **{"clientdp-clipping-norm": 0.5}
        ),
    ),
    # 6 rows a client: 5 local epochs (5 steps of the whole 6 rows) a round
    "clientdp_10000_non_dp": ("non-dp", _client_level(10000, 50, "none", 0.0, **E5)),
    "clientdp_10000_fixed_eps8": (
        "client-dp",
        _client_level(10000, 50, "server-fixed", 0.48, **E5, **CLIP),
    ),
    "clientdp_10000_fixed_eps8_m09": (
        "client-dp",
        _client_level(
            10000,
            50,
            "server-fixed",
            0.48,
            **E5,
            **CLIP,
            **{"clientdp-server-momentum": 0.9},
        ),
    ),
    "clientdp_10000_fixed_eps3": (
        "client-dp",
        _client_level(10000, 50, "server-fixed", 0.69, **E5, **CLIP),
    ),
}
TARGETS = {  # figure: (cells it takes the best of, largest ε, least accuracy)
    "dpsgd_mnist_accuracy_eps1": ("dpsgd_", 1.2, None),
    "dpsgd_mnist_accuracy_eps3": ("dpsgd_", 3.0, 0.95),
    "dpsgd_mnist_accuracy_eps8": ("dpsgd_", 8.0, 0.97),
    "client_dp_mnist_accuracy_1000": ("clientdp_1000_", 8.0, 0.90),
    "client_dp_mnist_accuracy_10000": ("clientdp_10000_", 8.0, 0.95),
    "client_dp_mnist_accuracy_10000_eps3": ("clientdp_10000_", 3.0, None),
}


def run_cell(name: str, workdir: Path) -> dict:
    """Run one cell; return its row (ε from the run's own summary)."""
    kind, config = CELLS[name]
    started = time.perf_counter()
    outcome = simulate(name, config, workdir, config["num-clients"])
    summary = outcome.summary
    per_round = [r["central_accuracy"] for r in read_rows(outcome.output_dir)]
    epsilon = (
        summary.get("epsilon_client_level")
        if kind == "client-dp"
        else summary.get("epsilon_sample_level_max")
    )
    delta = config.get("clientdp-delta", config.get("dpsgd-delta"))
    return {
        "cell": name,
        "kind": kind,
        "epsilon": epsilon,
        "delta": delta if kind != "non-dp" else None,
        "accuracy": summary["final_accuracy"],
        "rounds": config["num-rounds"],
        "accuracy_per_round": [round(a, 4) for a in per_round],
        "wall_time_s": time.perf_counter() - started,
        "config": config,
    }


def summarize(rows: list[dict]) -> dict:
    """Return FILE's contents: the rows and the figures of the targets."""
    targets = {}
    for figure, (prefix, most_eps, least) in TARGETS.items():
        within = [
            r
            for r in rows
            if r["cell"].startswith(prefix)
            and r["kind"] != "non-dp"
            and r["epsilon"] is not None
            and r["epsilon"] <= most_eps
        ]
        best = max(within, key=lambda r: r["accuracy"], default=None)
        targets[figure] = {
            "value": best["accuracy"] if best else None,
            "cell": best["cell"] if best else None,
            "epsilon": best["epsilon"] if best else None,
            "target": least,
            "met": None if best is None or least is None else best["accuracy"] >= least,
        }
    return {"rows": rows, "targets": targets, "tutorial": TUTORIAL}


def plot(rows: list[dict], path: Path) -> None:
    """Draw accuracy against ε: our DP rows, our non-DP lines, the tutorial's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [t[4] for t in TUTORIAL if t[4]],
        [t[5] for t in TUTORIAL if t[4]],
        "k^--",
        label="tensorflow-privacy tutorial (centralized)",
    )
    for prefix, style, label in (
        ("dpsgd_", "o", "record-level DP-SGD, 10 clients (every cell)"),
        ("clientdp_1000_", "s", "client-level DP, N=1,000"),
        ("clientdp_10000_", "d", "client-level DP, N=10,000"),
    ):
        dp = sorted(
            (r for r in rows if r["cell"].startswith(prefix) and r["kind"] != "non-dp"),
            key=lambda r: r["epsilon"],
        )
        if dp:
            line = ax.plot(
                [r["epsilon"] for r in dp],
                [r["accuracy"] for r in dp],
                style,
                label=label,
            )[0]
            for r in rows:
                if r["cell"].startswith(prefix) and r["kind"] == "non-dp":
                    ax.axhline(r["accuracy"], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("ε (δ = 1e-5 record-level; 1/(10N) client-level)")
    ax.set_ylabel("central test accuracy")
    ax.set_title("MNIST: accuracy against ε (dotted: non-DP)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def time_steps(batch: int, steps: int = 4) -> dict:
    """Seconds per training step of ``dp_cnn``: no DP, and each DP-SGD implementation.

    Each through the clients' compiled batch step (``batch_step``), on the same fixed
    batch of random images every step; the first step (tracing) is reported apart,
    the figure is the median of the next ``steps``. ``model``: tensorflow-privacy's
    ``DPModel`` (``dpsgd-implementation=model``, the default); ``plain`` and
    ``vectorized``: its DP Keras optimizers (``implementation=optimizer``).
    """
    import statistics
    from dataclasses import replace

    import numpy as np

    from fl_app.core.config import parse_run_config
    from fl_app.features.privacy.settings import DpSgdConfig
    from fl_app.ml.training import batch_step, get_compiled_model, model_key

    rng = np.random.default_rng(0)
    x = rng.random((batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    cfg = parse_run_config(
        {"model": "dp_cnn", "client-optimizer": "sgd", "client-learning-rate": 0.1}
    )
    key = model_key(cfg, (28, 28, 1), 10)
    out = {}
    for name, dp in (
        ("non_dp", None),
        ("model", DpSgdConfig("sgd")),
        ("plain", DpSgdConfig("sgd", implementation="optimizer")),
        ("vectorized", DpSgdConfig("sgd", vectorized=True, implementation="optimizer")),
    ):
        techniques = key.techniques if dp is None else (*key.techniques, ("dpsgd", dp))
        model = get_compiled_model(replace(key, techniques=techniques))
        step = batch_step(model, "train", x, y)
        times = []
        for _ in range(steps + 1):
            started = time.perf_counter()
            float(step(x, y)["loss"])
            times.append(time.perf_counter() - started)
        out[name] = {"first_step_s": times[0], "step_s": statistics.median(times[1:])}
        print(f"{name:10s} batch {batch}: {out[name]['step_s']:.3f} s/step", flush=True)
    return {"batch": batch, **out}


def main() -> None:
    parser = bench_parser(__doc__, rounds=None)
    add_only(parser, list(CELLS))
    parser.add_argument("--plot", type=Path, help="PNG to draw accuracy against ε in")
    parser.add_argument(
        "--no-run", action="store_true", help="run nothing (re-summarize, plot)"
    )
    parser.add_argument(
        "--step-timing",
        type=int,
        metavar="BATCH",
        help="also time dp_cnn's steps at this batch size (no DP, model, optimizers)",
    )
    args = parser.parse_args()
    rows: list[dict] = []
    timing = None
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        rows, timing = previous["rows"], previous.get("step_timing")
    if args.step_timing:
        timing = time_steps(args.step_timing)
    names = [] if args.no_run else args.only or list(CELLS)
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        for name in names:
            row = run_cell(name, Path(tmp))
            rows = [r for r in rows if r["cell"] != name] + [row]
            print(
                f"{name:28s} eps {row['epsilon']} acc {row['accuracy']:.4f} "
                f"{row['wall_time_s']:.0f} s",
                flush=True,
            )
            write_json(args.out, {**summarize(rows), "step_timing": timing})
    write_json(args.out, {**summarize(rows), "step_timing": timing})
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
