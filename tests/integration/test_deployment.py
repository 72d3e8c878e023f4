"""A real deployment on localhost: SuperLink + SuperNodes, TLS, node authentication."""

import json
import threading

import numpy as np
import pytest

from fl_app.deployment import LocalDeployment, make_credentials
from fl_app.launcher import run_app
from fl_app.results import read_rows
from tests.data_files import client_file_arrays
from tests.integration.conftest import run_entry

pytestmark = pytest.mark.slow


def test_tls_authenticated_deployment_runs_and_refuses_unregistered_node(
    tmp_path, no_leftover_processes
):
    creds = make_credentials(tmp_path / "certs", 3)
    # node 1 brings its own file instead of a partition of the run's dataset
    own = tmp_path / "node1.npz"
    np.savez(own, **client_file_arrays(n_train=40, n_test=10))
    nodes = [
        {"partition-id": 0, "num-partitions": 2},
        {"data-path": str(own)},
        {"partition-id": 1, "num-partitions": 2},  # never registered
    ]
    with LocalDeployment(
        nodes, credentials=creds, authenticate=True, register=[True, True, False]
    ) as deployment:
        # the Hydra entry submits to the deployment over TLS (while the unregistered
        # SuperNode retries: its refusal is checked after the run)
        result = run_entry(
            [
                "simulation=deployment",
                f"simulation.address={deployment.link.address}",
                f"simulation.root_certificates={creds.ca_cert}",
                "num_clients=2",
                "clients_per_round=2",
                "evaluate_clients_per_round=0",
                "num_rounds=2",
            ],
            tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # the unregistered SuperNode is refused and gives up; the other two serve
        refused = deployment.nodes[2]
        assert refused.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in deployment.node_log(2).read_text()
        assert deployment.online_nodes() == 2
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out)
    assert summary["rounds"] == 2 and 0 < summary["final_accuracy"] <= 1
    assert [len(row["clients"]) for row in rows] == [2, 2]
    # the file node trained on its 40 rows
    assert sorted(c["num_examples"] for c in rows[0]["clients"])[0] == 40
    assert (out / "accuracy_loss.png").stat().st_size > 0


def test_killed_supernode_does_not_stop_the_run(tmp_path, no_leftover_processes):
    nodes = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
    with LocalDeployment(nodes) as deployment:
        killed = threading.Event()

        def echo(line: str) -> None:
            if "fl-dnn: round 1/2" in line and not killed.is_set():
                killed.set()  # kill node 2 a few seconds into round 2 (the last)
                threading.Timer(5.0, deployment.kill_node, args=(2,)).start()

        outcome = run_app(
            deployment.link,
            {
                "num-rounds": 2,
                "num-clients": 3,
                "clients-per-round": 3,
                "evaluate-clients-per-round": 0,
                "save-model": False,
                "round-timeout": 120.0,
            },
            output_dir=tmp_path / "out",
            echo=echo,
            timeout_s=540,
        )
    rows = read_rows(outcome.output_dir)
    assert killed.is_set() and outcome.summary["rounds"] == 2
    assert rows[0]["num_failures"] == 0 and len(rows[0]["clients"]) == 3
    # the round the node died in finished with the others; the failure is counted
    assert rows[1]["num_failures"] == 1 == outcome.summary["client_failures"]
    assert [c["partition_id"] for c in rows[1]["clients"]] == [0, 1]
