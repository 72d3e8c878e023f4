"""What checkpoints cost: the default run with ``checkpoint-every=1`` against ``0``.

One invocation runs the default experiment (digits, Dirichlet 0.5, 10 clients, CNN,
FedAvg, 20 rounds) through Flower's simulation runtime, alternating the two settings
``--repeat`` times each (on, off, on, off, ...) so drift on a shared machine falls on
both alike:

    uv run python benchmarks/bench_checkpoint.py --out FILE

FILE keys: per setting the runs' ``wall_time_s`` (the ServerApp's, from
``summary.json``), their median, the median of the rounds' ``wall_time_s`` sum, and
for ``every_1`` the time spent writing checkpoints (``checkpoint_time_s``) and the
size of one checkpoint and of one node's state; ``overhead_pct``: the median wall
time with checkpoints over the one without, minus 1, in percent (target <= 5).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, simulate, write_json  # noqa: E402

from fl_app.core.checkpoint import list_checkpoints  # noqa: E402
from fl_app.core.results import read_rows  # noqa: E402

SETTINGS = {"every_1": 1, "every_0": 0}


def run(name: str, every: int, rounds: int, workdir: Path) -> dict:
    outcome = simulate(name, {"num-rounds": rounds, "checkpoint-every": every}, workdir)
    out = outcome.output_dir
    found = {
        "wall_time_s": outcome.summary["wall_time_s"],
        "rounds_time_s": sum(r["wall_time_s"] for r in read_rows(out)),
        "final_accuracy": outcome.summary["final_accuracy"],
        "checkpoint_time_s": outcome.summary.get("checkpoint_time_s"),
    }
    checkpoints = list_checkpoints(out)
    if checkpoints:
        found["checkpoint_bytes"] = checkpoints[-1][1].stat().st_size
        states = sorted((out / "client-state").rglob("*.rec"))
        found["node_state_files"] = len(states)
        found["node_state_bytes"] = states[-1].stat().st_size if states else 0
    return found


def main() -> None:
    parser = bench_parser(__doc__, rounds=20)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        for i in range(args.repeat):
            for name, every in SETTINGS.items():
                runs[name].append(run(f"{name}_{i}", every, args.rounds, Path(tmp)))
    result: dict = {"rounds": args.rounds, "repeat": args.repeat, "runs": runs}
    for name, found in runs.items():
        result[name] = {
            "median_wall_time_s": statistics.median(r["wall_time_s"] for r in found),
            "median_rounds_time_s": statistics.median(
                r["rounds_time_s"] for r in found
            ),
        }
    on, off = result["every_1"], result["every_0"]
    result["overhead_pct"] = 100 * (
        on["median_wall_time_s"] / off["median_wall_time_s"] - 1
    )
    write_json(args.out, result)
    for name in SETTINGS:
        print(
            f"{name}: wall {result[name]['median_wall_time_s']:.2f} s, rounds "
            f"{result[name]['median_rounds_time_s']:.2f} s "
            f"(runs: {[round(r['wall_time_s'], 2) for r in runs[name]]})"
        )
    first = runs["every_1"][0]
    print(
        f"checkpoint writes {first['checkpoint_time_s']:.3f} s per run, "
        f"{first['checkpoint_bytes']} B each; node state {first['node_state_bytes']} B"
    )
    print(f"overhead {result['overhead_pct']:+.2f} %")


if __name__ == "__main__":
    main()
