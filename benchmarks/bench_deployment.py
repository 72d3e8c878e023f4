"""Round time of a real deployment (SuperLink + SuperNodes on this machine).

One invocation runs the default task (digits, CNN) with 2 clients for 4 rounds:

- ``deployment``: an insecure local SuperLink and 2 SuperNodes, federated evaluation
  off (the server evaluates centrally);
- ``deployment_fed_eval``: the same with federated evaluation on every client, which
  costs each round a second ClientApp process per node;
- ``deployment_tls_auth``: TLS and SuperNode authentication, federated evaluation off;
- ``simulation``: the same run in Flower's simulation runtime.

    uv run python benchmarks/bench_deployment.py --out deployment.json

A deployment SuperNode starts a fresh ClientApp process for every message, which
imports TensorFlow and builds the model again; rounds after the first are reported
(``steady_round_s``: the median of rounds 2-4), and the ratio to simulation.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, progress_echo, write_json  # noqa: E402

from fl_app.deployment import LocalDeployment, make_credentials  # noqa: E402
from fl_app.launcher import run_app, run_simulation  # noqa: E402
from fl_app.results import read_rows  # noqa: E402

CONFIG = {
    "num-rounds": 4,
    "num-clients": 2,
    "clients-per-round": 2,
    "evaluate-clients-per-round": 0,
    "save-model": False,
}
NODES = [{"partition-id": i, "num-partitions": 2} for i in range(2)]


def figures(output_dir: Path, summary: dict) -> dict:
    rows = read_rows(output_dir)
    times = [row["wall_time_s"] for row in rows]
    return {
        "round_s": times,
        "first_round_s": times[0],
        "steady_round_s": statistics.median(times[1:]),
        "final_accuracy": summary["final_accuracy"],
    }


def main() -> None:
    """Run the four variants and write the figures."""
    parser = bench_parser(__doc__, rounds=None)
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        tmp = Path(tmp)
        variants = {
            "deployment": ({}, None),
            "deployment_fed_eval": ({"evaluate-clients-per-round": 2}, None),
            "deployment_tls_auth": ({}, make_credentials(tmp / "certs", 2)),
        }
        for name, (extra, creds) in variants.items():
            with LocalDeployment(
                NODES, credentials=creds, authenticate=creds is not None
            ) as deployment:
                outcome = run_app(
                    deployment.link,
                    {**CONFIG, **extra},
                    output_dir=tmp / name,
                    echo=progress_echo(name),
                    timeout_s=900,
                )
            runs[name] = figures(outcome.output_dir, outcome.summary)
        outcome = run_simulation(
            CONFIG,
            output_dir=tmp / "simulation",
            num_supernodes=2,
            echo=progress_echo("sim"),
        )
        runs["simulation"] = figures(outcome.output_dir, outcome.summary)
    result = {
        "steady_round_s": runs["deployment"]["steady_round_s"],
        "ratio_vs_simulation": runs["deployment"]["steady_round_s"]
        / runs["simulation"]["steady_round_s"],
        "federated_evaluation_extra_s": runs["deployment_fed_eval"]["steady_round_s"]
        - runs["deployment"]["steady_round_s"],
        "runs": runs,
    }
    write_json(args.out, result)
    for name, r in runs.items():
        print(
            f"{name:22s} first {r['first_round_s']:6.2f}s  steady "
            f"{r['steady_round_s']:6.2f}s  acc {r['final_accuracy']:.4f}"
        )
    print(f"ratio_vs_simulation {result['ratio_vs_simulation']:.1f} -> {args.out}")


if __name__ == "__main__":
    main()
