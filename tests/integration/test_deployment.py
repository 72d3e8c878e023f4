"""A real deployment on localhost: SuperLink + SuperNodes, TLS, node authentication.

One deployment, one run, everything a secure deployment must survive at once: TLS on
every connection, an unregistered SuperNode refused, a node that brings its own data
file, and a node that dies in the middle of a round.
"""

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fl_app.deployment import LocalDeployment, make_credentials
from fl_app.results import read_rows
from tests.data_files import client_file_arrays
from tests.integration.conftest import run_entry

pytestmark = pytest.mark.slow

KILLED, REFUSED = 2, 3


def test_tls_authenticated_deployment_survives_a_killed_node_and_refuses_another(
    tmp_path, no_leftover_processes
):
    creds = make_credentials(tmp_path / "certs", 4)
    # node 1 brings its own file instead of a partition of the run's dataset
    own = tmp_path / "node1.npz"
    np.savez(own, **client_file_arrays(n_train=40, n_test=10))
    nodes = [
        {"partition-id": 0, "num-partitions": 3},
        {"data-path": str(own), "partition-id": 1},
        {"partition-id": 2, "num-partitions": 3},  # killed in round 2
        {"partition-id": 1, "num-partitions": 3},  # never registered
    ]
    with LocalDeployment(
        nodes, credentials=creds, authenticate=True, register=[True, True, True, False]
    ) as deployment:
        killed = threading.Event()

        def on_line(line: str) -> None:
            if "fl-dnn: round 1/2" in line and not killed.is_set():
                killed.set()  # round 2 (the last) has started: node 2 dies in it
                threading.Timer(1.0, deployment.kill_node, args=(KILLED,)).start()

        # the Hydra entry submits to the deployment over TLS (while the unregistered
        # SuperNode retries: its refusal is checked after the run)
        result = run_entry(
            [
                "simulation=deployment",
                f"simulation.address={deployment.link.address}",
                f"simulation.root_certificates={creds.ca_cert}",
                "num_clients=3",
                "clients_per_round=3",
                "evaluate_clients_per_round=0",
                "num_rounds=2",
                # the killed node's reply is waited for at most this long (Flower
                # itself notices a dead node only after up to 60 s of heartbeats)
                "round_timeout=30",
            ],
            tmp_path,
            on_line=on_line,
        )
        assert result.returncode == 0, result.stdout
        # the unregistered SuperNode is refused and gives up; the two left serve
        refused = deployment.nodes[REFUSED]
        assert refused.wait(timeout=120) != 0
        assert (
            "Failed to activate SuperNode" in deployment.node_log(REFUSED).read_text()
        )
        # the killed node is gone and the two left still serve (Flower itself may
        # count the killed one online for up to 60 s more: heartbeats)
        assert deployment.nodes[KILLED].poll() is not None
        assert all(deployment.nodes[i].poll() is None for i in (0, 1))
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out)
    assert killed.is_set() and summary["rounds"] == 2
    assert 0 < summary["final_accuracy"] <= 1
    assert rows[0]["num_failures"] == 0 and len(rows[0]["clients"]) == 3
    # the file node trained on its 40 rows
    assert sorted(c["num_examples"] for c in rows[0]["clients"])[0] == 40
    # the round the node died in finished with the others: its missing reply is
    # counted, as a timeout (or as a failure, if Flower noticed the dead node first)
    lost = rows[1]["num_failures"] + rows[1]["num_timeouts"]
    assert lost == 1 == summary["client_failures"] + summary["client_timeouts"]
    assert [c["partition_id"] for c in rows[1]["clients"]] == [0, 1]
    assert (out / "accuracy_loss.png").stat().st_size > 0


def test_split_training_over_a_tls_authenticated_deployment(
    tmp_path, no_leftover_processes
):
    creds = make_credentials(tmp_path / "certs", 2)
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    with LocalDeployment(nodes, credentials=creds, authenticate=True) as deployment:
        # each message starts a fresh ClientApp process: the round's client part,
        # optimizer and batch order cross between them in the node state only
        result = run_entry(
            [
                "simulation=deployment",
                f"simulation.address={deployment.link.address}",
                f"simulation.root_certificates={creds.ca_cert}",
                "num_clients=2",
                "clients_per_round=2",
                "evaluate_clients_per_round=0",
                "num_rounds=1",
                "split=splitfed_v1",
                "split.chunk=32",
                "save_model=false",
            ],
            tmp_path,
        )
        assert result.returncode == 0, result.stdout
        assert "activations reveal information about the inputs" in result.stdout
    (row,) = read_rows(tmp_path / "run")
    assert row["num_failures"] == 0 and row["num_rejected"] == 0
    assert {c["partition_id"] for c in row["clients"]} == {0, 1}
    assert row["bytes_gradients"] > 0 and row["bytes_weights_up"] > 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_accuracy"] > summary["initial_accuracy"]


def test_warm_workers_match_the_simulation_and_a_killed_worker_costs_one_round(
    tmp_path, monkeypatch, request, no_leftover_processes
):
    from fl_app.launcher import run_app
    from tests.inprocess import compose_run_config, run_in_process

    overrides = [
        "num_clients=2",
        "clients_per_round=2",
        "evaluate_clients_per_round=0",
        "num_rounds=3",
        # five epochs keep a worker busy for about a second: time to kill it
        "client.local_epochs=5",
        "save_model=false",
        "checkpoint.every=0",
    ]
    timeline = tmp_path / "timeline.jsonl"
    # a short path: a Unix socket's path has at most 107 bytes
    workers = Path(tempfile.mkdtemp(prefix="fl-dnn-"))
    request.addfinalizer(lambda: shutil.rmtree(workers, ignore_errors=True))
    monkeypatch.setenv("FL_DNN_TIMELINE", str(timeline))
    monkeypatch.setenv("FL_DNN_WORKER_DIR", str(workers))
    killed = []

    def kill_node0s_worker_in_round_2():
        # the worker marks "client_ready" (with its pid) before it trains
        while not killed:
            marks = [
                json.loads(line)
                for line in (
                    timeline.read_text() if timeline.exists() else ""
                ).splitlines()
                if '"client_ready"' in line and '"partition": 0' in line
            ]
            if len(marks) == 2:
                os.kill(marks[1]["pid"], signal.SIGKILL)
                killed.append(marks[1]["pid"])
            time.sleep(0.02)

    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    with LocalDeployment(nodes) as deployment:
        threading.Thread(target=kill_node0s_worker_in_round_2, daemon=True).start()
        run_app(
            deployment.link,
            compose_run_config(overrides),
            output_dir=tmp_path / "run",
            timeout_s=300,
            echo=lambda line: None,
        )
    rows = read_rows(tmp_path / "run")
    marks = [json.loads(line) for line in timeline.read_text().splitlines()]
    ready = [m for m in marks if m["event"] == "client_ready"]
    called = [m for m in marks if m["event"] == "clientapp_called"]
    # every message went through a worker, not the ClientApp process
    assert len(ready) == 6 and {m["pid"] for m in ready}.isdisjoint(
        m["pid"] for m in called
    )
    # round 1 is the simulation's round 1 of the same seed
    run_in_process([*overrides, "num_rounds=1"], tmp_path / "sim")
    (simulated,) = read_rows(tmp_path / "sim")
    assert rows[0]["central_accuracy"] == simulated["central_accuracy"]
    assert rows[0]["central_loss"] == pytest.approx(simulated["central_loss"], 1e-5)
    # the killed worker cost node 0 its round-2 reply; round 3 had both nodes again,
    # node 0 served by a new worker
    assert rows[1]["num_failures"] == 1
    assert [c["partition_id"] for c in rows[1]["clients"]] == [1]
    assert rows[2]["num_failures"] == 0
    assert sorted(c["partition_id"] for c in rows[2]["clients"]) == [0, 1]
    node0 = [m["pid"] for m in ready if m["partition"] == 0]
    assert killed == [node0[1]] and node0[2] != node0[1]
    assert rows[2]["central_accuracy"] > rows[0]["central_accuracy"]
