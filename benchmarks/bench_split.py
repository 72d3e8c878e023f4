"""Split training (SplitFed v1, v2, local loss) against FedAvg on the same task.

One invocation runs, each through Flower's simulation runtime (digits, Dirichlet
0.5, 10 clients, CNN, 20 rounds, every client every round, default cut after
``conv1``, federated evaluation off so bytes are the training traffic):

- ``fedavg``: whole-model training on every client;
- ``splitfed_v1``, ``splitfed_v2``, ``local_loss``: ``split=<mode>``;

then one local deployment (SuperLink + 2 SuperNodes, 3 rounds) of ``fedavg`` and of
``splitfed_v1``, for a deployment round time of each.

    uv run python benchmarks/bench_split.py --out benchmarks/results/split.json

FILE keys, per mode: ``accuracy_ratio_vs_fedavg`` (central accuracy after the last
round ÷ FedAvg's), ``client_param_share`` and ``client_flops_share`` (the client
part's share of the parameters and of one example's forward FLOPs),
``bytes_per_round`` (up + down, mean over rounds; FedAvg's beside it), the bytes by
kind, ``messages_per_round``, ``steady_round_s`` (median of rounds 2-20) and
``server_compute_s_per_round``; ``deployment``: steady round time (median of rounds
2-3) of FedAvg and SplitFed v1 over a local deployment.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, progress_echo, simulate, write_json  # noqa: E402

from fl_app.core.results import read_rows  # noqa: E402
from fl_app.deploy.deployment import LocalDeployment  # noqa: E402
from fl_app.deploy.launcher import run_app  # noqa: E402

BASE = {
    "partition": "dirichlet",
    "partition-alpha": 0.5,
    "evaluate-clients-per-round": 0,
    "save-model": False,
}
MODES = ("splitfed_v1", "splitfed_v2", "local_loss")
KINDS = (
    "bytes_activations",
    "bytes_labels",
    "bytes_gradients",
    "bytes_weights_up",
    "bytes_weights_down",
)


def figures(output_dir: Path, summary: dict) -> dict:
    rows = read_rows(output_dir)
    times = [row["wall_time_s"] for row in rows]
    result = {
        "central_accuracy": summary["final_accuracy"],
        "bytes_per_round": statistics.mean(
            r["bytes_up"] + r["bytes_down"] for r in rows
        ),
        "bytes_up_per_round": statistics.mean(r["bytes_up"] for r in rows),
        "bytes_down_per_round": statistics.mean(r["bytes_down"] for r in rows),
        "first_round_s": times[0],
        "steady_round_s": statistics.median(times[1:]),
    }
    if summary.get("split_mode"):
        result.update(
            {
                key: summary[key]
                for key in (
                    "client_params",
                    "client_param_share",
                    "client_flops_share",
                    "cut_activation_floats",
                    "messages_per_round",
                    "server_compute_s_per_round",
                )
            }
        )
        result.update({k: statistics.mean(r[k] for r in rows) for k in KINDS})
        for key in ("client_aux_params", "client_param_share_with_aux"):
            if key in summary:  # local_loss: the client also trains an aux head
                result[key] = summary[key]
    return result


def deployment_round(name: str, extra: dict, tmp: Path) -> dict:
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    config = {
        "num-rounds": 3,
        "num-clients": 2,
        "clients-per-round": 2,
        "evaluate-clients-per-round": 0,
        "save-model": False,
        **extra,
    }
    with LocalDeployment(nodes) as deployment:
        outcome = run_app(
            deployment.link,
            config,
            output_dir=tmp / f"deploy_{name}",
            echo=progress_echo(f"deploy {name}"),
            timeout_s=900,
        )
    return figures(outcome.output_dir, outcome.summary)


def main() -> None:
    parser = bench_parser(__doc__, rounds=20)
    parser.add_argument(
        "--no-deployment", action="store_true", help="skip the deployment rounds"
    )
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        tmp = Path(tmp)
        for name in ("fedavg", *MODES):
            extra = {} if name == "fedavg" else {"split": name}
            outcome = simulate(name, {"num-rounds": args.rounds, **BASE, **extra}, tmp)
            runs[name] = figures(outcome.output_dir, outcome.summary)
        deployment = {}
        if not args.no_deployment:
            for name, extra in (
                ("fedavg", {}),
                ("splitfed_v1", {"split": "splitfed_v1"}),
            ):
                deployment[name] = deployment_round(name, extra, tmp)
    fedavg = runs["fedavg"]
    result = {
        "rounds": args.rounds,
        "fedavg_bytes_per_round": fedavg["bytes_per_round"],
        "fedavg_steady_round_s": fedavg["steady_round_s"],
        "modes": {
            mode: {
                "accuracy_ratio_vs_fedavg": runs[mode]["central_accuracy"]
                / fedavg["central_accuracy"],
                "bytes_ratio_vs_fedavg": runs[mode]["bytes_per_round"]
                / fedavg["bytes_per_round"],
                "round_time_ratio_vs_fedavg": runs[mode]["steady_round_s"]
                / fedavg["steady_round_s"],
                **runs[mode],
            }
            for mode in MODES
        },
        "fedavg": fedavg,
        "deployment": {
            name: {
                k: r[k] for k in ("first_round_s", "steady_round_s", "central_accuracy")
            }
            for name, r in deployment.items()
        },
    }
    write_json(args.out, result)
    print(
        f"fedavg       acc {fedavg['central_accuracy']:.4f}  "
        f"{fedavg['bytes_per_round'] / 1e6:7.2f} MB/round  "
        f"steady {fedavg['steady_round_s']:.2f}s"
    )
    for mode, r in result["modes"].items():
        print(
            f"{mode:12s} acc {r['central_accuracy']:.4f} "
            f"(x{r['accuracy_ratio_vs_fedavg']:.3f})  "
            f"{r['bytes_per_round'] / 1e6:7.2f} MB/round  steady "
            f"{r['steady_round_s']:.2f}s  params {r['client_param_share']:.4f}  "
            f"flops {r['client_flops_share']:.4f}"
        )
    for name, r in result["deployment"].items():
        print(f"deployment {name:12s} steady {r['steady_round_s']:.2f}s")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
