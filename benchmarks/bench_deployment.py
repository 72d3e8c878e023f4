"""Round time of a real deployment (SuperLink + SuperNodes here), cold and warm.

One invocation runs the default task (digits, CNN) with 2 clients for 4 rounds, each
deployment variant twice — ``cold`` (``warm-worker=false``: every message runs in
its fresh ``flwr-clientapp`` process, importing TensorFlow and the app) and
``warm`` (the default: the ClientApp hands the message to the node's warm worker):

- ``deployment``: an insecure local SuperLink and 2 SuperNodes, federated evaluation
  off (the server evaluates centrally);
- ``deployment_fed_eval``: the same with federated evaluation on every client
  (round r's evaluation rides in round r+1's training message to each node);
- ``deployment_fed_eval_separate``: the same, each evaluation in an exchange of its
  own (``evaluate-ahead=false``);
- ``deployment_tls_auth``: TLS and SuperNode authentication;
- ``simulation``: the same run in Flower's simulation runtime.

    uv run python benchmarks/bench_deployment.py --out deployment.json

Rounds after the first are the steady ones (``steady_round_s``: the median period
between the starts of consecutive rounds from round 2 on: how often a round begins;
``steady_round_record_s``: the median of the round records' own wall times, which
overlap where a round's evaluation comes back in the next round's exchange);
``warm_speedup`` is a variant's cold steady round over its warm one,
``ratio_vs_simulation`` each path's steady round over the simulated one, and
``fed_eval_over_plain_warm`` the warm steady round with federated evaluation over
the one without.

The breakdown: every deployment runs with ``FL_DNN_TIMELINE`` (``fl_app.core.timeline``:
marks from the ServerApp, the ClientApp processes and the worker) and with
``FLWR_LOG_LEVEL=DEBUG`` (the SuperNodes' own timestamped "Receiving"/"Sending"
lines). ``breakdown`` gives, for node 0's fit messages in rounds 2-5 (median), the
seconds from the server pushing the message to the node pulling it, the ClientApp
process starting, its imports done (the app called), the client ready (data and
model code loaded), the model ready, training done, the reply handed back, the
reply pushed by the SuperNode and pulled by the ServerApp. ``worker_rss_mb`` is
each warm worker's resident memory at the end of the run.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402
    bench_parser,
    progress_echo,
    rss_bytes,
    write_json,
)

from fl_app.core.results import read_rows  # noqa: E402
from fl_app.deploy.deployment import LocalDeployment, make_credentials  # noqa: E402
from fl_app.deploy.launcher import run_app, run_simulation  # noqa: E402

CONFIG = {
    "num-rounds": 5,
    "num-clients": 2,
    "clients-per-round": 2,
    "evaluate-clients-per-round": 0,
    "save-model": False,
}
NODES = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
# (from, to) marks of one message's way, named by what happens between them
SEGMENTS = (
    ("server_pushed", "node_received", "wait for the SuperNode's pull"),
    ("node_received", "process_start", "SuperExec starts the ClientApp"),
    ("process_start", "clientapp_called", "Python + Flower imports, app loaded"),
    ("clientapp_called", "client_ready", "imports, data, client built"),
    ("client_ready", "model_ready", "model ready"),
    ("model_ready", "trained", "training"),
    ("trained", "clientapp_replied", "reply back in the ClientApp"),
    ("clientapp_replied", "node_sent", "SuperNode's poll for the reply, push"),
    ("node_sent", "server_pulled", "ServerApp pulls the reply"),
)
_LOG_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}).*?(Receiving|Sending): (\w+) message"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def environment(**values: str):
    """Set environment variables for the processes started inside the block."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def node_events(log_text: str) -> tuple[int | None, list[tuple[float, str, str]]]:
    """Return a SuperNode log's node id and its (time, Receiving|Sending, type)."""
    text = _ANSI.sub("", log_text)
    found = re.search(r"SuperNode ID: (\d+)", text)
    events = []
    for stamp, verb, kind in _LOG_LINE.findall(text):
        when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
        events.append((when.astimezone().timestamp(), verb, kind))
    return (int(found.group(1)) if found else None), events


def breakdown(timeline: Path, node_log: str, first_round: int = 2) -> dict:
    """Median seconds of each segment of node 0's messages in the steady rounds."""
    marks = [json.loads(line) for line in timeline.read_text().splitlines()]
    node_id, events = node_events(node_log)
    pushes = [m["t"] for m in marks if m["event"] == "server_pushed"]
    per_segment: dict[str, list[float]] = {name: [] for *_, name in SEGMENTS}
    per_message: list[float] = []
    # one exchange per push; the rounds' exchanges after the first round's
    per_round = len(pushes) // CONFIG["num-rounds"]
    for start, end in zip(
        pushes[(first_round - 1) * per_round :],
        pushes[(first_round - 1) * per_round + 1 :] + [float("inf")],
        strict=True,
    ):
        inside = [m for m in marks if start <= m["t"] < end]
        points = {"server_pushed": start}
        for m in inside:
            mine = m.get("node") == node_id or m.get("partition") == 0
            if m["event"] == "server_pulled" and m.get("node") == node_id:
                points.setdefault("server_pulled", m["t"])
            elif mine and m["event"] in {s[1] for s in SEGMENTS}:
                points.setdefault(m["event"], m["t"])
                if m["event"] == "clientapp_called" and m.get("process_start"):
                    points.setdefault("process_start", m["process_start"])
        for when, verb, _ in events:
            if start <= when < end:
                key = "node_received" if verb == "Receiving" else "node_sent"
                points.setdefault(key, when)
        if not all(s[0] in points and s[1] in points for s in SEGMENTS):
            continue  # a message the timeline does not cover whole (logged late)
        for first, second, name in SEGMENTS:
            per_segment[name].append(points[second] - points[first])
        per_message.append(points["server_pulled"] - start)
    return {
        "messages": len(per_message),
        "push_to_pull_s": statistics.median(per_message) if per_message else None,
        "segments_s": {
            name: statistics.median(values) if values else None
            for name, values in per_segment.items()
        },
    }


def worker_rss_mb(worker_dir: Path) -> list[float]:
    """Resident memory of each warm worker listed in ``worker_dir`` (MB)."""
    sizes = []
    for pid_file in sorted(worker_dir.glob("*.pid")):
        try:
            sizes.append(rss_bytes(int(pid_file.read_text())) / 2**20)
        except (OSError, ValueError):
            continue
    return sizes


def figures(output_dir: Path, summary: dict) -> dict:
    """A run's round times: ``steady_round_s`` is the median period between the
    starts of rounds 2, 3, ... (how often a round begins), ``round_s`` each round
    record's wall time (with evaluation pushed ahead, a round's record closes in
    the next round's exchange, so those overlap and double-count)."""
    rows = read_rows(output_dir)
    times = [row["wall_time_s"] for row in rows]
    starts = [row["started_unix_s"] for row in rows]
    periods = [later - earlier for earlier, later in itertools.pairwise(starts)]
    return {
        "round_s": times,
        "round_period_s": periods,
        "first_round_s": periods[0] if periods else times[0],
        "steady_round_s": statistics.median(periods[1:] or times[1:]),
        "steady_round_record_s": statistics.median(times[1:]),
        "final_accuracy": summary["final_accuracy"],
    }


# name -> (run config overrides, TLS and SuperNode authentication)
VARIANTS = {
    "deployment": ({}, False),
    "deployment_fed_eval": ({"evaluate-clients-per-round": 2}, False),
    # the same, each round's evaluation in an exchange of its own (as before
    # evaluate-ahead): two SuperNode waits a round
    "deployment_fed_eval_separate": (
        {"evaluate-clients-per-round": 2, "evaluate-ahead": False},
        False,
    ),
    "deployment_tls_auth": ({}, True),
}


def run_deployment(name: str, tmp: Path, extra: dict, credentials, warm: bool) -> dict:
    """One deployment run of a variant; its figures, breakdown and worker memory."""
    label = f"{name}_{'warm' if warm else 'cold'}"
    timeline = tmp / f"{label}.timeline.jsonl"
    worker_dir = tmp / f"{label}.workers"
    worker_dir.mkdir(mode=0o700)
    with environment(
        FL_DNN_TIMELINE=str(timeline),
        FLWR_LOG_LEVEL="DEBUG",
        FL_DNN_WORKER_DIR=str(worker_dir),
    ):
        with LocalDeployment(
            NODES, credentials=credentials, authenticate=credentials is not None
        ) as deployment:
            outcome = run_app(
                deployment.link,
                {**CONFIG, **extra, "warm-worker": warm},
                output_dir=tmp / label,
                echo=progress_echo(label),
                timeout_s=900,
            )
            rss = worker_rss_mb(worker_dir)
            node_log = deployment.node_log(0).read_text(errors="replace")
    result = figures(outcome.output_dir, outcome.summary)
    result["breakdown"] = breakdown(timeline, node_log)
    if warm:
        result["worker_rss_mb"] = rss
    return result


def main() -> None:
    """Run every variant cold and warm, then the simulation; write the figures."""
    parser = bench_parser(__doc__, rounds=None)
    parser.add_argument(
        "--only", default=",".join(VARIANTS), help="variants to run (comma list)"
    )
    parser.add_argument(
        "--paths", default="cold,warm", help="cold, warm or both (comma list)"
    )
    args = parser.parse_args()
    names, paths = args.only.split(","), args.paths.split(",")
    unknown = sorted(set(names) - set(VARIANTS)) + sorted(set(paths) - {"cold", "warm"})
    if unknown:
        parser.error(f"unknown variant(s) or path(s): {', '.join(unknown)}")
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fl-dnn-bench-") as tmp:
        tmp = Path(tmp)
        for name in names:
            extra, tls = VARIANTS[name]
            creds = make_credentials(tmp / "certs", 2) if tls else None
            runs[name] = {
                path: run_deployment(name, tmp, extra, creds, warm=path == "warm")
                for path in paths
            }
        outcome = run_simulation(
            CONFIG,
            output_dir=tmp / "simulation",
            num_supernodes=2,
            echo=progress_echo("sim"),
        )
        simulation = figures(outcome.output_dir, outcome.summary)
    sim_s = simulation["steady_round_s"]
    result: dict = {"variants": {}, "simulation": simulation}
    for name, by_path in runs.items():
        steady = {path: r["steady_round_s"] for path, r in by_path.items()}
        result["variants"][name] = {
            **(
                {"warm_speedup": steady["cold"] / steady["warm"]}
                if len(steady) == 2
                else {}
            ),
            "ratio_vs_simulation": {p: s / sim_s for p, s in steady.items()},
            **by_path,
        }
    result["warm_speedup"] = {
        name: v["warm_speedup"]
        for name, v in result["variants"].items()
        if "warm_speedup" in v
    }
    if {"deployment", "deployment_fed_eval"} <= set(runs) and "warm" in paths:
        # what federated evaluation adds to a warm round (evaluation pushed ahead)
        result["fed_eval_over_plain_warm"] = (
            runs["deployment_fed_eval"]["warm"]["steady_round_s"]
            / runs["deployment"]["warm"]["steady_round_s"]
        )
    write_json(args.out, result)
    print(f"simulation             steady {sim_s:6.2f}s")
    for name, v in result["variants"].items():
        for path in paths:
            r = v[path]
            print(
                f"{name:22s} {path}  first {r['first_round_s']:6.2f}s  steady "
                f"{r['steady_round_s']:6.2f}s  acc {r['final_accuracy']:.4f}  "
                f"x{v['ratio_vs_simulation'][path]:.1f} simulation"
            )
        if "warm_speedup" in v:
            print(f"{name:22s} warm_speedup {v['warm_speedup']:.2f}")
        for path in paths:
            segments = v[path]["breakdown"]["segments_s"]
            print(f"  {path} breakdown (node 0, median of steady messages):")
            for segment, seconds in segments.items():
                if seconds is not None:
                    print(f"    {seconds:6.3f}s  {segment}")
    if "fed_eval_over_plain_warm" in result:
        print(f"fed eval / plain, warm: {result['fed_eval_over_plain_warm']:.2f}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
