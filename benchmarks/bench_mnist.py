"""McMahan et al. (2017) on MNIST: FedAvg's rounds to a target accuracy, reproduced.

Each cell is a preset of ``conf/experiment/`` (100 clients of 600 rows, 10 a round,
plain SGD, central evaluation on MNIST's 10,000 test images after every round),
run through Flower's simulation runtime:

=============  ===================================  ======  =====================
cell           setting                              target  paper's rounds
=============  ===================================  ======  =====================
2nn_iid        2NN, IID, E=1, B=10 (Table 1)        97 %    87
2nn_shards     2NN, non-IID shards, E=1, B=10       97 %    664
cnn_iid_e5     CNN, IID, E=5, B=10 (Table 2)        99 %    20
cnn_iid_e1     CNN, IID, E=1, B=10 (Table 2)        99 %    34
=============  ===================================  ======  =====================

The run cannot stop itself at a target, so a cell runs in chunks: first half the
paper's rounds, then a tenth of them at a time, each chunk resuming the last one's
checkpoint (``resume``, the same run continued); after each chunk the per-round
central accuracy is read from ``metrics.jsonl`` and the cell stops at the first
round at or above the target, or at the preset's ``num_rounds`` (the cap).

Two more parts: ``overhead`` (a CNN cell's steady round time against plain Keras
doing the same example passes in one process on the same cores, the way
``bench_overhead.py`` measures it, with ``bench_overhead.py``'s digits figure
measured beside it) and ``load`` (MNIST loaded from the data cache in fresh
processes).

    uv run python benchmarks/bench_mnist.py --out benchmarks/results/mnist.json
    uv run python benchmarks/bench_mnist.py --out benchmarks/results/mnist.json \\
        --only cnn_iid_e5 --merge                 # one cell, into the file
    uv run python benchmarks/bench_mnist.py --out /tmp/probe.json --only 2nn_iid \\
        --rounds 20 --lr 0.05 --no-stop            # a learning-rate probe

FILE keys: ``cells`` (per cell: ``rounds_to_target``, ``paper_rounds``,
``rounds_ratio_vs_paper``, ``final_accuracy``, ``wall_s``, the settings, the
accuracy of every round, the chunks run and the invocation that ran it),
``overhead_ratio`` (MNIST CNN round / Keras ``fit`` + ``evaluate`` of the same
passes), ``overhead_ratio_same_steps`` (the same, against the clients' own batch loop
in one process: what Flower, Ray and the rest of our code add),
``overhead_ratio_digits``, ``mnist_load_s``.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import add_only, bench_parser, progress_echo, write_json  # noqa: E402

from fl_app.core.config import flatten_nested, parse_run_config  # noqa: E402
from fl_app.core.results import read_rows  # noqa: E402
from fl_app.deploy.launcher import run_simulation  # noqa: E402
from fl_app.deploy.processes import FlowerRunError  # noqa: E402


@dataclass(frozen=True)
class Cell:
    """One cell of the paper's tables."""

    preset: str  # conf/experiment/<preset>.yaml
    source: str
    target: float
    paper_rounds: int


CELLS = {
    "2nn_iid": Cell("fedavg_mnist_2nn_iid", "Table 1, 2NN, IID, B=10, E=1", 0.97, 87),
    "2nn_shards": Cell(
        "fedavg_mnist_2nn_shards", "Table 1, 2NN, non-IID, B=10, E=1", 0.97, 664
    ),
    "cnn_iid_e5": Cell(
        "fedavg_mnist_cnn_iid_e5", "Table 2, CNN, IID, B=10, E=5", 0.99, 20
    ),
    "cnn_iid_e1": Cell(
        "fedavg_mnist_cnn_iid", "Table 2, CNN, IID, B=10, E=1", 0.99, 34
    ),
}
PARTS = ("overhead", "load")
SETTINGS = (
    "model",
    "dataset",
    "partition",
    "partition-shuffle",
    "partition-shards-per-client",
    "num-clients",
    "clients-per-round",
    "client-local-epochs",
    "client-batch-size",
    "client-optimizer",
    "client-learning-rate",
    "client-learning-rate-decay",
    "dataset-val-fraction",
    "evaluate-clients-per-round",
    "robust-norm-bound",
    "robust-max-examples",
    "seed",
)


def preset_config(preset: str) -> dict[str, Any]:
    """Compose ``+experiment=<preset>`` as ``run_simulation.py`` does; flatten it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}"])
    return flatten_nested(OmegaConf.to_container(cfg, resolve=True))


def cell_config(cell: Cell, args) -> dict[str, Any]:
    """The preset's flat run config with this invocation's overrides."""
    config = {**preset_config(cell.preset), "save-model": False}
    if args.lr is not None:
        config["client-learning-rate"] = args.lr
    if args.rounds is not None:
        config["num-rounds"] = args.rounds
    return config


def chunk_ends(paper_rounds: int, cap: int, first: float, step: float) -> list[int]:
    """The rounds after which a cell checks its target: ``first`` x the paper's
    rounds, then every ``step`` x them, up to ``cap``."""
    ends, end = [], max(1, math.ceil(first * paper_rounds))
    while end < cap:
        ends.append(end)
        end += max(1, math.ceil(step * paper_rounds))
    return [*ends, cap]


def rounds_to(rows: list[dict], target: float) -> int | None:
    """The first round whose central accuracy is at least ``target``."""
    for row in rows:
        if row["central_accuracy"] >= target:
            return int(row["round"])
    return None


# Every process this benchmark starts (Flower's, Ray's) inherits this marker, so
# the benchmark can wait for its own processes of one run to end before the next.
MARKER = "FL_DNN_BENCH_MNIST"
os.environ[MARKER] = f"{os.getpid()}-{time.time_ns()}"
RAY_DAEMONS = ("raylet", "gcs_server", "flwr-simulation", "flower-superlink")


def own_leftovers() -> list[int]:
    """Live Ray/Flower daemons started by this benchmark (``/proc``, read only)."""
    mark = f"{MARKER}={os.environ[MARKER]}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(") ", 1)[1].split()[0]
            marked = mark in (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if marked and state != "Z" and any(d.encode() in cmdline for d in RAY_DAEMONS):
            found.append(int(entry.name))
    return found


def wait_for_leftovers(timeout_s: float = 60.0) -> None:
    """Wait until the last run's daemons are gone: a new run's Ray must not meet
    the last one's shutting down."""
    deadline = time.monotonic() + timeout_s
    while own_leftovers() and time.monotonic() < deadline:
        time.sleep(1.0)


def simulate_chunk(name, config, output_dir, retries: list, attempts: int = 3):
    """Run one chunk; on a failed run, resume from its last checkpoint (or start
    again) up to ``attempts`` times in all. Other sessions share this machine, and a
    Ray node of theirs or ours going down fails a run that is otherwise fine."""
    for attempt in range(attempts):
        wait_for_leftovers()
        checkpoints = sorted((output_dir / "checkpoints").glob("round-*.npz"))
        resume = {"resume": str(output_dir.resolve())} if checkpoints else {}
        try:
            return run_simulation(
                {**config, **resume},
                output_dir=output_dir,
                num_supernodes=int(config["num-clients"]),
                echo=progress_echo(name),
            )
        except FlowerRunError as err:
            if attempt == attempts - 1:
                raise
            retries.append(
                {"num_rounds": config["num-rounds"], "error": str(err)[:400]}
            )
            print(f"[{name}] run failed, retrying: {str(err)[:200]}", flush=True)
            time.sleep(10)
    raise AssertionError("unreachable")


def run_cell(name: str, cell: Cell, args, workdir: Path) -> dict[str, Any]:
    config = cell_config(cell, args)
    cap = int(config["num-rounds"])
    output_dir = workdir / name
    ends = [cap] if args.no_stop else chunk_ends(cell.paper_rounds, cap, *args.chunks)
    chunks, rows, reached, retries = [], [], None, []
    # with --workdir, a cell whose earlier invocation was killed resumes its rounds
    earlier = max(
        (int(p.stem.split("-")[1]) for p in output_dir.glob("checkpoints/round-*.npz")),
        default=0,
    )
    started = time.perf_counter()
    for end in ends:
        chunk_start = time.perf_counter()
        outcome = simulate_chunk(
            name, {**config, "num-rounds": end}, output_dir, retries
        )
        rows = read_rows(outcome.output_dir)
        chunks.append({"to_round": end, "wall_s": time.perf_counter() - chunk_start})
        reached = rounds_to(rows, cell.target)
        accuracy = [r["central_accuracy"] for r in rows]
        print(
            f"[{name}] {end} rounds: central accuracy {accuracy[-1]:.4f}, best "
            f"{max(accuracy):.4f}; target {cell.target} reached at round {reached} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        if reached is not None and not args.no_stop:
            break
    accuracy = [round(r["central_accuracy"], 5) for r in rows]
    round_times = [r["wall_time_s"] for r in rows]
    parsed = parse_run_config(config)
    return {
        "source": cell.source,
        "preset": cell.preset,
        "target": cell.target,
        "paper_rounds": cell.paper_rounds,
        "rounds_to_target": reached,
        "rounds_ratio_vs_paper": reached / cell.paper_rounds if reached else None,
        "reached": reached is not None,
        "rounds_run": len(rows),
        "cap": cap,
        "final_accuracy": accuracy[-1],
        "best_accuracy": max(accuracy),
        "accuracy_at_target_round": None if reached is None else accuracy[reached - 1],
        "wall_s": time.perf_counter() - started,
        "rounds_wall_s": sum(round_times),
        "steady_round_s": statistics.median(round_times[1:] or round_times),
        "settings": {key: config.get(key) for key in SETTINGS}
        | {"num_rounds_cap": cap, "client_num_cpus": 1}
        | {"model_params": _params(parsed)},
        "chunks": chunks,
        "retries": retries,
        # rounds an earlier, killed invocation ran (not in wall_s; in round_wall_s)
        "resumed_from_earlier_invocation_at_round": earlier,
        "accuracy_per_round": accuracy,
        "round_wall_s": [round(t, 3) for t in round_times],
    }


def _params(cfg) -> int:
    from fl_app.ml.models import build_model

    return build_model(cfg.model, (28, 28, 1), 10).count_params()


# The centralized baselines train at this rate: the cells' 0.2 diverges (to NaN)
# over 600 consecutive steps without averaging. Their times are what counts.
CENTRAL_LR = 0.05


def centralized_round_time(
    config: dict, rounds: int, warmup: int, steps: bool = False
) -> dict:
    """Plain Keras in this process doing one FL round's example passes per "round":
    ``fit`` for E epochs over ``clients-per-round`` clients' rows (batch B), then
    ``evaluate`` on the central test set (these cells have no federated evaluation).

    ``steps``: instead of ``fit``/``evaluate``, the clients' own batch loop
    (``fl_app.ml.training.run_batches``: the model's compiled ``train_step`` per
    batch) and the server's evaluation (``evaluate_model``), so the difference to a
    federated round is Flower, Ray and the rest of our code only.
    """
    import numpy as np

    from fl_app.data import load_federated_data
    from fl_app.ml.training import (
        ArrayDataset,
        evaluate_model,
        get_compiled_model,
        model_key,
        run_batches,
    )

    cfg = parse_run_config({**config, "client-learning-rate": CENTRAL_LR})
    data = load_federated_data(cfg)
    clients = data.clients[: cfg.clients_per_round]
    x = np.concatenate([c.train.x for c in clients])
    y = np.concatenate([c.train.y for c in clients])
    model = get_compiled_model(
        model_key(cfg, data.input_shape, data.num_classes), cfg.seed
    )
    times, fit_times, accuracy = [], [], 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        if steps:
            for _ in range(cfg.client.local_epochs):
                run_batches("train", model, ArrayDataset(x, y), cfg.client.batch_size)
        else:
            model.fit(
                x,
                y,
                batch_size=cfg.client.batch_size,
                epochs=cfg.client.local_epochs,
                verbose=0,
            )
        fit_times.append(time.perf_counter() - start)
        if steps:
            _, accuracy = evaluate_model(model, data.test)
        else:
            _, accuracy = model.evaluate(data.test.x, data.test.y, verbose=0)
        times.append(time.perf_counter() - start)
    return {
        "steady_round_s": statistics.median(times[warmup:]),
        "steady_fit_s": statistics.median(fit_times[warmup:]),
        "steady_evaluate_s": statistics.median(
            t - f for t, f in list(zip(times, fit_times, strict=True))[warmup:]
        ),
        "round_times_s": times,
        "final_accuracy": float(accuracy),
        "examples_per_round": int(len(y) * cfg.client.local_epochs + len(data.test)),
        "learning_rate": CENTRAL_LR,
        "loop": "run_batches + evaluate_model" if steps else "keras fit + evaluate",
    }


def measure_overhead(args, workdir: Path) -> dict[str, Any]:
    """The MNIST CNN cell's steady round vs centralized Keras, and digits' beside it."""
    from bench_overhead import centralized_round_time as digits_centralized
    from bench_overhead import fl_round_time

    cell = CELLS[args.overhead_cell]
    config = {
        **preset_config(cell.preset),
        "save-model": False,
        "num-rounds": args.overhead_rounds,
        "checkpoint-every": 0,
    }
    fl = fl_round_time(config, workdir, "overhead_mnist", args.warmup)
    rows = read_rows(workdir / "overhead_mnist")[args.warmup :]
    for part in ("fit_s", "central_eval_s"):  # where the FL round's time goes
        fl[f"steady_{part}"] = statistics.median(row[part] for row in rows)
    central = centralized_round_time(config, args.overhead_rounds, args.warmup)
    same_steps = centralized_round_time(
        config, args.overhead_rounds, args.warmup, steps=True
    )
    digits_base = {  # bench_overhead.py's setup
        "num-rounds": 10,
        "num-clients": 10,
        "clients-per-round": 10,
        "evaluate-clients-per-round": 10,
        "save-model": False,
    }
    digits_fl = fl_round_time(digits_base, workdir, "overhead_digits", 2)
    digits_central = digits_centralized(digits_base, 10, 2)
    return {
        "overhead_ratio": fl["steady_round_s"] / central["steady_round_s"],
        "overhead_ratio_same_steps": fl["steady_round_s"]
        / same_steps["steady_round_s"],
        "overhead_ratio_digits": digits_fl["steady_round_s"]
        / digits_central["steady_round_s"],
        "overhead": {
            "cell": args.overhead_cell,
            "rounds": args.overhead_rounds,
            "warmup_rounds_excluded": args.warmup,
            "fl": fl,
            "centralized": central,
            "centralized_same_steps": same_steps,
            "digits": {
                "setup": "bench_overhead.py's: 10 digits clients, all every round, "
                "federated + central evaluation, 10 rounds, 2 excluded",
                "fl": digits_fl,
                "centralized": digits_central,
            },
        },
    }


LOAD = """
import json, time
start = time.perf_counter()
from fl_app.data.packaged import load_packaged
imported = time.perf_counter()
train, test = load_packaged("mnist")
loaded = time.perf_counter()
print(json.dumps({"import_s": imported - start, "load_s": loaded - imported,
                  "total_s": loaded - start, "rows": [len(train), len(test)]}))
"""


def measure_load(repeats: int = 3) -> dict[str, Any]:
    """Load MNIST in fresh processes: once with an empty cache (parses the CSV and
    writes the cache), then ``repeats`` times from the cache."""

    def fresh(cache: str) -> dict:
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", LOAD],
            env={**os.environ, "FL_DNN_DATA_CACHE": cache},
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        return figures | {"process_s": time.perf_counter() - started}

    with tempfile.TemporaryDirectory(prefix="fl-dnn-load-") as cache:
        cold = fresh(cache)
        warm = [fresh(cache) for _ in range(repeats)]
    return {
        "mnist_load_s": statistics.median(w["total_s"] for w in warm),
        "load": {
            "measured": "in a fresh Python process: importing fl_app.data.packaged "
            "and load_packaged('mnist') (60,000 + 10,000 float32 images)",
            "from_cache": warm,
            "cold_parse_and_cache": cold,
        },
    }


def main() -> None:
    parser = bench_parser(__doc__, rounds=None)
    add_only(parser, [*CELLS, *PARTS])
    parser.add_argument("--merge", action="store_true", help="update FILE in place")
    parser.add_argument("--rounds", type=int, help="cap instead of the preset's")
    parser.add_argument("--lr", type=float, help="instead of the preset's rate")
    parser.add_argument(
        "--no-stop", action="store_true", help="run to the cap, whatever the accuracy"
    )
    parser.add_argument(
        "--chunks",
        type=float,
        nargs=2,
        default=(0.5, 0.1),
        metavar=("FIRST", "STEP"),
        help="check the target after FIRST x the paper's rounds, then every STEP x",
    )
    parser.add_argument("--overhead-cell", default="cnn_iid_e1", choices=list(CELLS))
    parser.add_argument("--overhead-rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep the runs' outputs here")
    args = parser.parse_args()
    wanted = args.only or [*CELLS, *PARTS]

    result: dict[str, Any] = {}
    if args.merge and args.out.exists():
        result = json.loads(args.out.read_text())
    result.setdefault("cells", {})
    invocation = shlex.join(["uv", "run", "python", *sys.argv])
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        for name in wanted:
            stamp = {
                "invocation": invocation,
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                # other work on the machine slows every wall time: the 1-minute
                # load average when the part started and ended (2 cores here)
                "loadavg_1min_start": os.getloadavg()[0],
            }
            if name in CELLS:
                result["cells"][name] = run_cell(name, CELLS[name], args, workdir)
                part = result["cells"][name]
            elif name == "overhead":
                result |= measure_overhead(args, workdir)
                part = result["overhead_run"] = {}
            else:
                result |= measure_load()
                part = result["load_run"] = {}
            part |= stamp | {
                "loadavg_1min_end": os.getloadavg()[0],
                "cpu_count": os.cpu_count(),
            }
            write_json(args.out, result)  # after every part: a long run keeps its cells
    ran = result["cells"].values()
    result["every_cell_reached_its_target"] = all(c["reached"] for c in ran)
    write_json(args.out, result)
    for name, cell in result["cells"].items():
        print(
            f"{name}: {cell['rounds_to_target']} rounds to {cell['target']:.0%} "
            f"(paper {cell['paper_rounds']}, ratio {cell['rounds_ratio_vs_paper']}), "
            f"final {cell['final_accuracy']:.4f}, {cell['wall_s']:.0f} s"
        )
    for key in (
        "overhead_ratio",
        "overhead_ratio_same_steps",
        "overhead_ratio_digits",
        "mnist_load_s",
    ):
        if key in result:
            print(f"{key} {result[key]:.3f}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
