"""Overhead of federated simulation vs centralized Keras, and of a per-call model build.

One invocation measures, side by side on this machine:

(a) the steady-state round time of the default FL simulation (10 digits clients,
    Dirichlet 0.5, one local epoch each, central + federated evaluation every round)
    vs centralized Keras in one process doing the same sample passes per "round"
    (``model.fit`` for one epoch over the union of the clients' training rows, then
    ``model.evaluate`` on the central test set and on the union of the clients'
    validation rows: the sample passes of one FL round, written as plain Keras);
(b) the same FL run with a client written the way Flower's quickstart-tensorflow
    example writes it (``clear_session`` + build + compile on every call, here
    ``client-model-cache=false``) vs ours (one compiled model per worker process).

    uv run python benchmarks/bench_overhead.py --out overhead.json

Writes JSON with ``overhead_ratio`` (a: FL round / centralized round) and
``speedup_vs_quickstart`` (b: quickstart-style round / ours), plus the raw figures.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, progress_echo, write_json  # noqa: E402

from fl_app.core.config import parse_run_config  # noqa: E402
from fl_app.core.results import read_rows  # noqa: E402
from fl_app.deploy.launcher import run_simulation  # noqa: E402


def steady_round_s(output_dir: Path, warmup: int) -> tuple[float, list[float]]:
    times = [row["wall_time_s"] for row in read_rows(output_dir)]
    return statistics.median(times[warmup:]), times


def fl_round_time(run_config: dict, workdir: Path, name: str, warmup: int) -> dict:
    started = time.perf_counter()
    outcome = run_simulation(
        run_config,
        output_dir=workdir / name,
        num_supernodes=run_config["num-clients"],
        echo=progress_echo(),
    )
    median, times = steady_round_s(outcome.output_dir, warmup)
    return {
        "steady_round_s": median,
        "round_times_s": times,
        "final_accuracy": outcome.summary["final_accuracy"],
        "total_s": time.perf_counter() - started,
    }


def centralized_round_time(run_config: dict, rounds: int, warmup: int) -> dict:
    """Plain Keras in this process: per round, one epoch over every client's training
    rows (``model.fit``), then ``model.evaluate`` on the central test set and on the
    union of the clients' validation rows -- the sample passes of one FL round."""
    import numpy as np

    from fl_app.data import load_federated_data
    from fl_app.ml.training import get_compiled_model, model_key

    cfg = parse_run_config(run_config)
    data = load_federated_data(cfg)
    x_train = np.concatenate([c.train.x for c in data.clients])
    y_train = np.concatenate([c.train.y for c in data.clients])
    x_val = np.concatenate([c.val.x for c in data.clients])
    y_val = np.concatenate([c.val.y for c in data.clients])
    model = get_compiled_model(
        model_key(cfg, data.input_shape, data.num_classes), cfg.seed
    )
    times, accuracy = [], 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        model.fit(
            x_train, y_train, batch_size=cfg.client.batch_size, epochs=1, verbose=0
        )
        _, accuracy = model.evaluate(data.test.x, data.test.y, verbose=0)
        model.evaluate(x_val, y_val, verbose=0)
        times.append(time.perf_counter() - start)
    return {
        "steady_round_s": statistics.median(times[warmup:]),
        "round_times_s": times,
        "final_accuracy": float(accuracy),
    }


def sequential_clients_round_time(run_config: dict, rounds: int, warmup: int) -> dict:
    """The FL round's work without Flower: in this process, each client in turn trains
    the global model (our KerasClient, same code path), then FedAvg aggregation,
    central evaluation and every client's evaluation. Isolates the runtime's cost."""
    from flwr.common import ndarrays_to_parameters

    from fl_app.client.keras_client import KerasClient
    from fl_app.data import load_federated_data
    from fl_app.ml.training import evaluate_model, get_compiled_model, model_key
    from strategies.aggregation import aggregate_weighted

    cfg = parse_run_config(run_config)
    data = load_federated_data(cfg)
    clients = [KerasClient(cfg, pid) for pid in range(cfg.num_clients)]
    model = get_compiled_model(
        model_key(cfg, data.input_shape, data.num_classes), cfg.seed
    )
    weights = model.get_weights()
    times, accuracy = [], 0.0
    for server_round in range(1, rounds + 1):
        start = time.perf_counter()
        results = [c.fit(weights, {"server_round": server_round})[:2] for c in clients]
        weights = aggregate_weighted(results)
        ndarrays_to_parameters(weights)
        model.set_weights(weights)
        _, accuracy = evaluate_model(model, data.test)
        for c in clients:
            c.evaluate(weights, {})
        times.append(time.perf_counter() - start)
    return {
        "steady_round_s": statistics.median(times[warmup:]),
        "round_times_s": times,
        "final_accuracy": accuracy,
    }


def main() -> None:
    parser = bench_parser(__doc__, rounds=10)
    parser.add_argument(
        "--warmup", type=int, default=2, help="rounds left out of the median"
    )
    args = parser.parse_args()

    base = {
        "num-rounds": args.rounds,
        "num-clients": 10,
        "clients-per-round": 10,
        "evaluate-clients-per-round": 10,
        "save-model": False,
    }
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        workdir = Path(tmp)
        ours = fl_round_time(base, workdir, "cached", args.warmup)
        quickstart = fl_round_time(
            {**base, "client-model-cache": False}, workdir, "quickstart", args.warmup
        )
    centralized = centralized_round_time(base, args.rounds, args.warmup)
    sequential = sequential_clients_round_time(base, args.rounds, args.warmup)

    result = {
        "overhead_ratio": ours["steady_round_s"] / centralized["steady_round_s"],
        "speedup_vs_quickstart": quickstart["steady_round_s"] / ours["steady_round_s"],
        "overhead_ratio_vs_sequential_clients": ours["steady_round_s"]
        / sequential["steady_round_s"],
        "fl_cached": ours,
        "fl_quickstart_style": quickstart,
        "centralized": centralized,
        "sequential_clients_no_flower": sequential,
        "setup": {
            **base,
            "dataset": "digits",
            "partition": "dirichlet(0.5)",
            "client_num_cpus": 1,
            "warmup_rounds_excluded": args.warmup,
        },
    }
    write_json(args.out, result)
    print(
        f"steady round: FL (cached model) {ours['steady_round_s']:.3f}s, "
        f"FL (quickstart-style) {quickstart['steady_round_s']:.3f}s, "
        f"centralized {centralized['steady_round_s']:.3f}s, "
        f"same client work without Flower {sequential['steady_round_s']:.3f}s"
    )
    print(
        f"overhead_ratio {result['overhead_ratio']:.2f}  "
        f"speedup_vs_quickstart {result['speedup_vs_quickstart']:.2f}  -> {args.out}"
    )


if __name__ == "__main__":
    main()
