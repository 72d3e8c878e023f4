"""A real deployment on localhost: SuperLink + SuperNodes, TLS, node authentication.

One deployment, everything a secure deployment must survive at once: TLS on every
connection, SuperNodes and the ``flwr`` user reaching the SuperLink by a host name
(``localhost``, as nodes on other hosts dial its name) and by its IP address
(``127.0.0.1``), an unregistered SuperNode refused, a node that brings its own data
file, split training (many messages per round, each a fresh ClientApp process), then a
run in which a node's warm worker is killed while it trains and a node dies in the
middle of a round. One deployment for both runs keeps the suite's time: the split
run starts the nodes' warm workers, which the second run finds warm.
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

from fl_app.core.results import read_rows
from fl_app.deploy.deployment import LocalDeployment, make_credentials
from tests.data_files import client_file_arrays
from tests.integration.conftest import run_entry

pytestmark = pytest.mark.slow

KILLED, REFUSED = 2, 3
# the name each node dials the SuperLink by: the file node its IP address, the
# others a host name that the server certificate holds
HOSTS = ["localhost", "127.0.0.1", "localhost", "localhost"]


def worker_killer(
    timeline: Path, partition: int, nth: int, since: float, killed: list
) -> None:
    """Kill the warm worker serving ``partition`` as it starts its ``nth`` message
    after time ``since``.

    A worker marks ``client_ready`` (with its pid) before it trains.
    """
    while not killed:
        text = timeline.read_text() if timeline.exists() else ""
        marks = [
            mark
            for mark in map(json.loads, text.splitlines())
            if mark["event"] == "client_ready"
            and mark.get("partition") == partition
            and mark["t"] >= since
        ]
        if len(marks) == nth:
            os.kill(marks[-1]["pid"], signal.SIGKILL)
            killed.append(marks[-1]["pid"])
        time.sleep(0.02)


def test_tls_authenticated_deployment_split_training_and_killed_nodes_and_workers(
    tmp_path, request, monkeypatch, no_leftover_processes
):
    from tests.inprocess import run_in_process

    creds = make_credentials(tmp_path / "certs", 4)
    # node 1 brings its own file instead of a partition of the run's dataset
    own = tmp_path / "node1.npz"
    np.savez(own, **client_file_arrays(n_train=40, n_test=10))
    nodes = [
        {"partition-id": 0, "num-partitions": 3},  # its warm worker dies in round 2
        {"data-path": str(own), "partition-id": 1},
        {"partition-id": 2, "num-partitions": 3},  # killed in round 3
        {"partition-id": 1, "num-partitions": 3},  # never registered
    ]
    connect = [
        "simulation=deployment",
        "num_clients=3",
        "clients_per_round=3",
        "evaluate_clients_per_round=0",
    ]
    overrides = [
        *connect[1:],
        "num_rounds=3",
        # five epochs keep a worker busy for about a second: time to kill it
        "client.local_epochs=5",
        # the killed node's reply is waited for at most this long (Flower itself
        # notices a dead node only after up to 60 s of heartbeats)
        "round_timeout=20",
    ]
    timeline = tmp_path / "timeline.jsonl"
    # the nodes' warm workers listen here (short: a socket path has <= 107 bytes)
    workers = Path(tempfile.mkdtemp(prefix="fl-dnn-"))
    request.addfinalizer(lambda: shutil.rmtree(workers, ignore_errors=True))
    # the SuperLink and SuperNodes take these from the environment
    monkeypatch.setenv("FL_DNN_TIMELINE", str(timeline))
    monkeypatch.setenv("FL_DNN_WORKER_DIR", str(workers))
    with LocalDeployment(
        nodes,
        credentials=creds,
        authenticate=True,
        register=[True, True, True, False],
        superlink_host=HOSTS,
    ) as deployment:
        port = deployment.link.port
        dialed = [
            node.args[node.args.index("--superlink") + 1] for node in deployment.nodes
        ]
        assert dialed == [f"{host}:{port}" for host in HOSTS]
        certificates = f"simulation.root_certificates={creds.ca_cert}"
        # the split run is submitted to 127.0.0.1, the second run to localhost
        address = [f"simulation.address=127.0.0.1:{port}", certificates]
        # 1. split training: each message a fresh ClientApp process handing it to
        # the node's worker; the round's client part, optimizer and batch order
        # cross between messages in the node state only
        split = run_entry(
            [
                *connect,
                *address,
                "num_rounds=1",
                "split=splitfed_v1",
                "split.chunk=32",
                "save_model=false",
                f"hydra.run.dir={tmp_path / 'split'}",
            ],
            tmp_path,
        )
        assert split.returncode == 0, split.stdout
        assert "activations reveal information about the inputs" in split.stdout

        # 2. node 0's worker dies in round 2, node 2's SuperNode in round 3
        since = time.time()
        workers_killed: list[int] = []
        threading.Thread(
            target=worker_killer,
            args=(timeline, 0, 2, since, workers_killed),
            daemon=True,
        ).start()
        killed = threading.Event()

        def on_line(line: str) -> None:
            if "fl-dnn: round 2/3" in line and not killed.is_set():
                killed.set()  # round 3 (the last) has started: node 2 dies in it
                threading.Timer(1.0, deployment.kill_node, args=(KILLED,)).start()

        # the Hydra entry submits to the deployment over TLS (while the unregistered
        # SuperNode retries: its refusal is checked after the run)
        by_name = [f"simulation.address=localhost:{port}", certificates]
        result = run_entry(
            [connect[0], *by_name, *overrides], tmp_path, on_line=on_line
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

    (row,) = read_rows(tmp_path / "split")
    assert row["num_failures"] == 0 and row["num_rejected"] == 0
    assert {c["partition_id"] for c in row["clients"]} == {0, 1, 2}
    assert row["bytes_gradients"] > 0 and row["bytes_weights_up"] > 0
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["final_accuracy"] > summary["initial_accuracy"]

    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out)
    assert killed.is_set() and summary["rounds"] == 3
    assert rows[0]["num_failures"] == 0 and len(rows[0]["clients"]) == 3
    # the file node trained on its 40 rows
    assert sorted(c["num_examples"] for c in rows[0]["clients"])[0] == 40
    # round 2: node 0's worker was killed while it trained: that reply is a failure
    assert rows[1]["num_failures"] == 1 and rows[1]["num_timeouts"] == 0
    assert [c["partition_id"] for c in rows[1]["clients"]] == [1, 2]
    # round 3: node 0 is back, served by a new worker; the round node 2 died in
    # finished with the others: its missing reply is counted, as a timeout (or as a
    # failure, if Flower noticed the dead node first)
    assert [c["partition_id"] for c in rows[2]["clients"]] == [0, 1]
    assert rows[2]["num_failures"] + rows[2]["num_timeouts"] == 1
    assert summary["client_failures"] + summary["client_timeouts"] == 2
    marks = [json.loads(line) for line in timeline.read_text().splitlines()]
    ready = [m for m in marks if m["event"] == "client_ready" and m["t"] >= since]
    node0 = [m["pid"] for m in ready if m["partition"] == 0]
    assert workers_killed == [node0[1]] and len(node0) == 3 and node0[2] != node0[1]
    # the workers kept only the current run's models: the second run cleared them
    logs = [f.read_text(errors="replace") for f in workers.glob("*.log")]
    assert any("dropping the cached models" in text for text in logs)
    # every message of both runs ran in a warm worker, none in its ClientApp process
    called = {m["pid"] for m in marks if m["event"] == "clientapp_called"}
    served = {m["pid"] for m in marks if m["event"] == "worker_received"}
    assert called and served and called.isdisjoint(served)
    assert called.isdisjoint(m["pid"] for m in ready)
    # round 1 is the simulation's round 1 of the same seed (the same apps on
    # simulated nodes, in this process)
    run_in_process([*overrides, "num_rounds=1"], tmp_path / "sim", nodes[:3])
    (simulated,) = read_rows(tmp_path / "sim")
    assert rows[0]["central_accuracy"] == simulated["central_accuracy"]
    assert rows[0]["central_loss"] == pytest.approx(simulated["central_loss"], 1e-5)
    assert (out / "accuracy_loss.png").stat().st_size > 0
