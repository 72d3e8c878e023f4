"""The same run on the private local Ray and on a two-node Ray cluster.

The default experiment (digits, 10 clients, the default CNN) for ``--rounds``
rounds, run twice in one invocation: on the private Ray the launcher starts (this
machine's cores) and on a Ray cluster of two nodes with one CPU each
(``ray.cluster_utils.Cluster``: two raylets on this machine, the layout of two
hosts). Per run: the steady round (median of rounds 2 on), the final accuracy,
the nodes that served clients, and the peak resident memory of each node (its
raylet and every process under it: the Ray workers that run the ClientApps),
sampled every 0.5 s (only raylets this benchmark started count). A GPU run is not
part of it: this machine has none (``--gpu`` adds one with ``client_num_gpus``
where a GPU exists).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import bench_parser, progress_echo, rss_bytes, write_json

from fl_app.core.results import read_rows

CONFIG = {"save-model": False, "checkpoint-every": 0}


def children() -> dict[int, list[int]]:
    """Map each pid to the pids of its children (``/proc``)."""
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().split(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        found.setdefault(parent, []).append(int(entry.name))
    return found


def raylets(kids: dict[int, list[int]]) -> list[int]:
    """The pids of the raylets this benchmark started (its descendants)."""
    pids, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            if b"raylet" in Path(f"/proc/{pid}/comm").read_bytes():
                pids.append(pid)
        except OSError:
            pass
        todo.extend(kids.get(pid, []))
    return pids


def tree_rss(root: int, kids: dict[int, list[int]]) -> int:
    """Resident bytes of ``root`` and all its descendants."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += rss_bytes(pid)
        except OSError:
            continue
        todo.extend(kids.get(pid, []))
    return total


class NodeMemory:
    """Sample each raylet's process tree every 0.5 s; keep the peak per raylet."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            kids = children()
            for raylet in raylets(kids):
                rss = tree_rss(raylet, kids)
                self.peaks[raylet] = max(self.peaks.get(raylet, 0), rss)
            self.stop.wait(0.5)

    def __enter__(self) -> NodeMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def figures(outcome, memory: NodeMemory) -> dict:
    rows = read_rows(outcome.output_dir)
    times = [row["wall_time_s"] for row in rows]
    served = sorted({c.get("ray_node", "?") for row in rows for c in row["clients"]})
    return {
        "steady_round_s": statistics.median(times[1:]),
        "first_round_s": times[0],
        "final_accuracy": outcome.summary["final_accuracy"],
        "nodes_serving_clients": len(served),
        "peak_rss_mb_per_node": sorted(
            round(v / 2**20, 1) for v in memory.peaks.values()
        ),
    }


def run(name: str, rounds: int, tmp: Path, **launch) -> dict:
    from fl_app.deploy.launcher import run_simulation

    with NodeMemory() as memory:
        started = time.perf_counter()
        outcome = run_simulation(
            {**CONFIG, "num-rounds": rounds},
            output_dir=tmp / name,
            num_supernodes=10,
            echo=progress_echo(name),
            **launch,
        )
        wall = time.perf_counter() - started
    return {**figures(outcome, memory), "wall_s": wall}


def main() -> None:
    parser = bench_parser(__doc__, rounds=10)
    parser.add_argument("--gpu", action="store_true", help="add a run on a GPU")
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        runs["local"] = run("local", args.rounds, Path(tmp))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        try:
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            runs["cluster_2_nodes"] = run(
                "cluster", args.rounds, Path(tmp), ray_address=cluster.address
            )
        finally:
            cluster.shutdown()
        if args.gpu:
            runs["gpu"] = run("gpu", args.rounds, Path(tmp), client_num_gpus=0.25)
    local, remote = runs["local"], runs["cluster_2_nodes"]
    result = {
        "rounds": args.rounds,
        "runs": runs,
        "cluster_over_local_steady_round": remote["steady_round_s"]
        / local["steady_round_s"],
        "same_final_accuracy": remote["final_accuracy"] == local["final_accuracy"],
    }
    write_json(args.out, result)
    for name, figures_ in runs.items():
        print(name, figures_)
    print(
        f"cluster / local steady round: {result['cluster_over_local_steady_round']:.2f}"
    )


if __name__ == "__main__":
    main()
