"""Many virtual clients on one machine: memory and round time as the federation grows.

One invocation runs ``+experiment=synthetic_iid`` (softmax regression on Synthetic
IID data, 500 rows per client) through Flower's simulation runtime with 10 clients
per round for training and for federated evaluation, 10 rounds, for each number of
clients in ``--clients`` (default 10, 1000, 10000): the same work per round whatever
the federation's size.

    uv run python benchmarks/bench_scale.py --out FILE [--clients 10,1000]

Per run: ``peak_rss_gb`` (the whole process tree: every process carrying the
launch's ``FL_DNN_LAUNCH`` marker, i.e. the SuperLink, ``flwr-simulation`` and
Ray, plus this process; sampled every 0.5 s), ``total_s`` (launch to results),
``outside_rounds_s`` (start-up and shut-down: ``total_s`` less every round),
``round1_s``, ``steady_round_s`` (median of rounds 2..N) and its split (medians):
``fit_s`` (training: instructions out to replies aggregated), ``federated_eval_s``,
``central_eval_s`` (on the central test set: the held-out rows of the first
``dataset-test-clients`` = 100 clients, ``central_test_rows``), ``overhead_s`` (the
median of each round's rest: Flower's simulation engine and the server's own work
between steps). Ratios against the 10-client run: ``rss_ratio_<n>_vs_10``,
``round_ratio_<n>_vs_10``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_parser, rss_bytes, simulate, write_json  # noqa: E402

from fl_app.core.results import read_rows  # noqa: E402
from fl_app.deploy.watchdog import MARKER  # noqa: E402

EXPERIMENT = {
    "dataset": "synthetic",
    "partition": "natural",
    "model": "softmax",
    "dataset-iid": True,
    "dataset-samples-per-client": 500,
    "clients-per-round": 10,
    "evaluate-clients-per-round": 10,
    "save-model": False,
}


def tree_rss_bytes() -> int:
    """RSS of this process and of every process carrying a launch marker."""
    total = 0
    me = str(Path("/proc/self").resolve().name)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if entry.name != me and f"{MARKER}=".encode() not in environ:
                continue
            total += rss_bytes(entry.name)
        except OSError:
            continue
    return total


class PeakRss:
    """Sample :func:`tree_rss_bytes` in a thread; keep the largest."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak = max(self.peak, tree_rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(clients: int, rounds: int, workdir: Path) -> dict:
    config = {**EXPERIMENT, "num-clients": clients, "num-rounds": rounds}
    started = time.perf_counter()
    with PeakRss() as rss:
        outcome = simulate(
            f"clients_{clients}", config, workdir, num_supernodes=clients
        )
    total = time.perf_counter() - started
    rows = read_rows(outcome.output_dir)
    steady = rows[1:] or rows

    def median(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in steady)

    parts = ("fit_s", "federated_eval_s", "central_eval_s")
    split = {k: median(k) for k in parts}
    round_s = median("wall_time_s")
    # the rest of each round, then its median (medians of the parts need not add up)
    overhead = statistics.median(
        r["wall_time_s"] - sum(r.get(k, 0.0) for k in parts) for r in steady
    )
    return {
        "clients": clients,
        "peak_rss_gb": rss.peak / 1e9,
        "total_s": total,
        "outside_rounds_s": total - sum(r["wall_time_s"] for r in rows),
        "central_test_rows": outcome.summary.get("central_test_rows"),
        "round1_s": rows[0]["wall_time_s"],
        "steady_round_s": round_s,
        **split,
        "overhead_s": overhead,
        "final_accuracy": outcome.summary["final_accuracy"],
    }


def main() -> None:
    parser = bench_parser(__doc__, rounds=10)
    parser.add_argument("--clients", default="10,1000,10000")
    args = parser.parse_args()
    sizes = [int(n) for n in args.clients.split(",")]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        for n in sizes:
            runs[str(n)] = found = run(n, args.rounds, Path(tmp))
            print(
                f"{n:6d} clients: peak RSS {found['peak_rss_gb']:.2f} GB, total "
                f"{found['total_s']:.1f} s (outside rounds "
                f"{found['outside_rounds_s']:.1f} s), round 1 "
                f"{found['round1_s']:.2f} s, steady "
                f"{found['steady_round_s']:.2f} s (fit {found['fit_s']:.2f}, fed eval "
                f"{found['federated_eval_s']:.2f}, central eval "
                f"{found['central_eval_s']:.2f}, rest {found['overhead_s']:.2f})",
                flush=True,
            )
    result: dict = {"rounds": args.rounds, "runs": runs}
    if "10" in runs:
        base = runs["10"]
        for n, found in runs.items():
            if n != "10":
                result[f"rss_ratio_{n}_vs_10"] = (
                    found["peak_rss_gb"] / base["peak_rss_gb"]
                )
                result[f"round_ratio_{n}_vs_10"] = (
                    found["steady_round_s"] / base["steady_round_s"]
                )
    write_json(args.out, result)
    for key, value in result.items():
        if key.startswith(("rss_ratio", "round_ratio")):
            print(f"{key}: {value:.2f}")


if __name__ == "__main__":
    main()
