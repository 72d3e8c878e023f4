"""Start-up of the default run: launch to the end of round 1, stage by stage.

Runs ``run_simulation.py`` (the README's main command, without ``uv run``) as a
subprocess with Flower's whole log (``simulation.verbose=true``), stamps every line
as it arrives, and reads the stages off the log:

    superlink_ready   ``flwr run`` prints "Using SuperLink" (our SuperLink answers)
    run_submitted     "Successfully started run"
    simulation_start  Flower's simulation process is up ("Starting Flower Simulation")
    serverapp_start   our ServerApp's first line ("writes results to")
    first_fit_sent    round 1's fit messages are out ("configure_fit")
    fit_replies       every round-1 reply is in ("aggregate_fit")
    round1_end        our "round 1/N" line (central + federated evaluation done)

Flower streams the run's log every 0.5 s (uploads at most every 0.2 s), so a stage
is known to about 0.7 s. ``steady_round_s`` is the median ``wall_time_s`` of rounds
2..N from ``metrics.jsonl``.

    uv run python benchmarks/bench_startup.py --out startup.json
    uv run python benchmarks/bench_startup.py --out before.json --root ../old-checkout

``--root`` measures another checkout with its own ``.venv`` (the same command, side
by side). The first run starts with an empty data cache (``FL_DNN_DATA_CACHE``, a
fresh directory), as on a new machine: its figures are ``startup_s`` and
``total_s``. ``--repeat N`` adds N - 1 runs that find the cache filled (a user's
every later run), reported as ``warm``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fl_app.core.results import read_rows  # noqa: E402

STAGES = (
    ("superlink_ready", "Using SuperLink"),
    ("run_submitted", "Successfully started run"),
    ("simulation_start", "Starting Flower Simulation"),
    ("serverapp_start", "writes results to"),
    ("first_fit_sent", "configure_fit"),
    ("fit_replies", "aggregate_fit"),
    ("round1_end", "fl-dnn: round 1/"),
)


def run_once(root: Path, overrides: list[str], workdir: Path, cache: Path) -> dict:
    """Run the entry once and return the stage times (s since launch)."""
    python = root / ".venv" / "bin" / "python"
    command = [
        str(python if python.exists() else sys.executable),
        str(root / "run_simulation.py"),
        "simulation.verbose=true",
        f"hydra.run.dir={workdir}",
        *overrides,
    ]
    stages: dict[str, float] = {}
    launched = time.perf_counter()
    with subprocess.Popen(
        command,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "FL_DNN_DATA_CACHE": str(cache)},
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            now = time.perf_counter() - launched
            for name, marker in STAGES:
                if name not in stages and marker in line:
                    stages[name] = round(now, 2)
    total = time.perf_counter() - launched
    if process.returncode != 0:
        raise RuntimeError(f"{command} exited with {process.returncode}")
    missing = [name for name, _ in STAGES if name not in stages]
    if missing:
        raise RuntimeError(f"stages not seen in the log: {missing}")
    rounds = [row["wall_time_s"] for row in read_rows(workdir)]
    return {
        "startup_s": stages["round1_end"],
        "steady_round_s": statistics.median(rounds[1:]) if len(rounds) > 1 else None,
        "total_s": round(total, 2),
        "stages_s": stages,
        "round_times_s": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to measure")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides (default: the default run)"
    )
    args = parser.parse_args()
    root = args.root.resolve()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for index in range(args.repeat):
            cache = Path(tmp) / "data-cache"
            run = run_once(root, args.overrides, Path(tmp) / str(index), cache)
            print(json.dumps(run), flush=True)
            runs.append(run)
    cold, warm = runs[0], runs[1:]
    result = {
        "root": str(root),
        "overrides": args.overrides,
        "startup_s": cold["startup_s"],
        "steady_round_s": cold["steady_round_s"],
        "total_s": cold["total_s"],
        "stages_s": cold["stages_s"],
        "warm": {
            "startup_s": statistics.median(r["startup_s"] for r in warm),
            "steady_round_s": statistics.median(r["steady_round_s"] for r in warm),
            "total_s": statistics.median(r["total_s"] for r in warm),
            "stages_s": {
                name: statistics.median(r["stages_s"][name] for r in warm)
                for name, _ in STAGES
            },
        }
        if warm
        else None,
        "runs": runs,
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({k: result[k] for k in ("startup_s", "steady_round_s", "total_s")})
    )


if __name__ == "__main__":
    main()
