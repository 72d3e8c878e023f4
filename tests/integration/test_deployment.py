"""A real deployment on localhost: SuperLink + SuperNodes, TLS, node authentication.

One deployment, one run, everything a secure deployment must survive at once: TLS on
every connection, an unregistered SuperNode refused, a node that brings its own data
file, and a node that dies in the middle of a round.
"""

import json
import threading

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
