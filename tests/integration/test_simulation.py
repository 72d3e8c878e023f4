"""End to end through Flower's simulation runtime; each run has its own SuperLink.

The app's features (slicing, pruning, SecAgg+, privacy, personalization) run in
process in ``test_app_in_process.py``; these tests cover what only Flower's own
processes show: the Hydra entry, ``flwr run``, Ray workers, exit codes.
"""

import json
import math

import numpy as np
import pytest

from fl_app.core.results import read_rows
from fl_app.deploy.launcher import LocalSuperLink
from tests.integration.conftest import ROOT, TINY, run_entry

pytestmark = pytest.mark.slow
# the tests that read the sweep run in one pytest-xdist worker (pyproject.toml:
# --dist loadgroup), and the sweep is session-scoped: a worker runs other files'
# tests in between, which would tear a module-scoped fixture down
SWEEP_GROUP = pytest.mark.xdist_group("sweep")

SUMMARY_KEYS = {"final_accuracy", "rounds", "wall_time_s", "bytes_up", "bytes_down"}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_results(out, rounds, clients):
    rows = read_rows(out)  # the classifier's rounds
    assert [row["round"] for row in rows] == list(range(1, rounds + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["rounds"] == rounds
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    assert summary["final_accuracy"] == rows[-1]["central_accuracy"]
    # bytes are the serialized parameters each client sent: the same model both ways
    per_client = {c["bytes_up"] for row in rows for c in row["clients"]}
    assert len(per_client) == 1
    (model_bytes,) = per_client
    assert summary["bytes_up"] == rounds * clients * model_bytes
    # down: the model to each training client and each evaluating client
    assert summary["bytes_down"] == rounds * 2 * clients * model_bytes
    assert (out / "final_model.keras").stat().st_size > 0
    assert (out / "accuracy_loss.png").stat().st_size > 0
    return summary


# One seeded configuration, run by the sweep test (as a one-job Hydra sweep) and by
# the kill-and-resume test, whose resumed run must end exactly where the sweep's did.
SEEDED = [*TINY, "num_rounds=3", "client/augmentation=light"]
FIGURES = ("central_loss", "central_accuracy", "train_loss", "federated_loss")


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """A Hydra sweep of ``SEEDED`` (one job, its own Flower run)."""
    root = tmp_path_factory.mktemp("sweep")
    result = run_entry(
        ["-m", *SEEDED, "save_model=true", f"hydra.sweep.dir={root / 'sweep'}"], root
    )
    return root / "sweep", result


@SWEEP_GROUP
def test_hydra_sweep_runs_each_job_in_flower(sweep):
    # Augmentation runs in the Ray workers (where Ray sets OMP_NUM_THREADS), seeded
    # per client and round; the kill-and-resume test below compares another run of
    # the same seed with this one, exactly.
    sweep, result = sweep
    assert result.returncode == 0, result.stdout + result.stderr
    assert "round 3/3" in result.stdout  # per-round progress is shown
    summary = check_results(sweep / "0", rounds=3, clients=2)
    assert summary["final_accuracy"] > summary["initial_accuracy"]
    config = summary["run_config"]  # the job's overrides reached its run
    assert config["save-model"] is True and config["client-augmentation"] == "light"
    table = (sweep / "comparison.md").read_text().splitlines()
    assert len(table) == 3 and "save_model=True" in table[2]


@SWEEP_GROUP
def test_a_run_killed_with_its_process_group_resumes_bit_equal(
    tmp_path, sweep, no_leftover_processes
):
    # SIGKILL of run_simulation.py's whole process group after round 1's checkpoint:
    # the SuperLink (own session), flwr-simulation and Ray go down with it (the
    # watchdog), and the resumed run ends exactly where the sweep's job did; only
    # save_model differs, and it acts after training.
    import os
    import signal
    import subprocess
    import sys
    import time

    from fl_app.core.checkpoint import CheckpointError, RunLock
    from tests.integration.conftest import flower_processes

    out = tmp_path / "run"
    before = set(flower_processes())
    with (tmp_path / "killed.log").open("w") as log:
        launcher = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "run_simulation.py"),
                *SEEDED,
                "save_model=false",
                f"hydra.run.dir={out}",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "round-00001.npz").exists():
            assert launcher.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint after round 1"
            time.sleep(0.02)
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    deadline = time.monotonic() + 30
    while set(flower_processes()) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(flower_processes()) - before, "processes outlived their launcher"
    # nobody writes there any more; a killed process's threads may still be exiting
    # (its main thread already a zombie) and release the lock a moment later
    deadline = time.monotonic() + 15
    while True:
        try:
            RunLock(out).acquire().release()
            break
        except CheckpointError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

    # resume=DIR alone (no num_rounds: Hydra's default is 20) finishes the run
    # as it was configured, 3 rounds
    unrounded = [o for o in SEEDED if not o.startswith("num_rounds=")]
    result = run_entry([*unrounded, "save_model=false", f"resume={out}"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] in ([1], [2])  # killed in round 2 or 3
    assert summary["rounds"] == 3 and not (out / "final_model.keras").exists()
    sweep, _ = sweep
    resumed, whole = (
        [[row[k] for k in FIGURES] for row in read_rows(d)] for d in (out, sweep / "0")
    )
    assert resumed == whole  # exactly equal, not approximately


def test_flwr_run_same_app_with_run_config_overrides(tmp_path, no_leftover_processes):
    # with the synthetic-data GAN phase, whose messages Ray workers answer from
    # node state alone, before the classifier's rounds
    out = tmp_path / "flwr"
    with LocalSuperLink() as link:
        streamed = link.cli(
            "run",
            str(ROOT),
            "fl-dnn",
            "--run-config",
            f"num-rounds=2 num-clients=2 clients-per-round=2 "
            f"evaluate-clients-per-round=2 output-dir='{out}' synthetic='gan' "
            f"synthetic-rounds=1 synthetic-local-steps=1 synthetic-tstr-rows=5 "
            f"synthetic-tstr-epochs=1",
            "--federation-config",
            "num-supernodes=2 client-resources-num-cpus=1",
            "--stream",
            timeout=600,
        )
        assert streamed.returncode == 0, streamed.stdout + streamed.stderr
        listing = json.loads(link.cli("ls", "--format", "json").stdout)
    (run,) = listing["runs"]
    assert run["status"] == "finished:completed"
    # check_results: the classifier's rounds and bytes as without the GAN phase
    summary = check_results(out, rounds=2, clients=2)
    gan_rows = read_rows(out, "gan")
    assert [r["round"] for r in gan_rows] == [1]
    for r in gan_rows:
        assert r["phase"] == "gan" and r["num_failures"] == r["num_rejected"] == 0
        assert math.isfinite(r["gan_d_loss"]) and math.isfinite(r["gan_g_loss"])
        assert r["bytes_up"] > 0 and r["epsilon_gan_max"] is None
    assert summary["gan_rounds"] == 1
    assert summary["gan_bytes_up"] == sum(r["bytes_up"] for r in gan_rows)
    counts = {c["partition_id"]: c for c in summary["synthetic_clients"]}
    assert sorted(counts) == [0, 1]
    for client in read_rows(out)[-1]["clients"]:
        mine = counts[client["partition_id"]]
        # trained on its real rows plus generated ones, weighted by the real ones
        assert client["num_real"] == mine["num_real"] == client["num_examples"]
        assert client["num_synthetic"] == mine["num_synthetic"]
        largest = max(mine["real_by_class"])
        filled = [
            r + g for r, g in zip(mine["real_by_class"], mine["synthetic_by_class"])
        ]
        assert filled == [largest] * 10  # every class up to the largest
    assert summary["synthetic_rows"] == sum(c["num_synthetic"] for c in counts.values())
    assert summary["synthetic_rows"] > 0 and 0 <= summary["tstr_accuracy"] <= 1
    import tf_keras

    generator = tf_keras.models.load_model(out / "generator.keras")
    sample = generator([np.zeros((2, 32), np.float32), np.array([3, 7])])
    assert tuple(sample.shape) == (2, 8, 8, 1)
    assert (out / "synthetic_samples.png").stat().st_size > 0


def test_invalid_config_fails_before_training(tmp_path, no_leftover_processes):
    result = run_entry(["partition.alpha=-1"], tmp_path, timeout=120)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "partition-alpha" in output and "-1" in output and "> 0" in output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_failed_flower_run_exits_nonzero_with_flowers_error(
    tmp_path, no_leftover_processes
):
    # mnist_hub comes from the hub; offline, the ServerApp fails while loading it.
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    result = run_entry([*TINY, "num_rounds=1", "dataset=mnist_hub"], tmp_path, env=env)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "DatasetUnavailableError" in output and "finished:failed" in output


def test_flwr_run_resume_alone_finishes_the_checkpointed_run(
    tmp_path, no_leftover_processes
):
    # A Flower CLI user: a 300-round run stopped (flwr stop) after round 1's
    # checkpoint (softmax rounds take about 0.1 s here and `flwr stop` lands seconds
    # later: 40 rounds once finished before it did), then
    # `flwr run --run-config "resume='DIR'"` with the keys the run was started with
    # but num-rounds: it ends at round 300, not at [tool.flwr.app.config]'s 20 (the
    # ServerApp reads which keys were submitted from the run's override_config).
    import re
    import time

    out = tmp_path / "run"
    rounds = 300
    given = (
        "num-clients=2 clients-per-round=2 evaluate-clients-per-round=0 "
        "model='softmax' save-model=false"
    )
    federation = ["--federation-config", "num-supernodes=2 client-resources-num-cpus=1"]
    with LocalSuperLink() as link:
        started = link.cli(
            "run",
            str(ROOT),
            "fl-dnn",
            "--run-config",
            f"{given} num-rounds={rounds} output-dir='{out}'",
            *federation,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = re.search(r"Successfully started run (\d+)", started.stdout).group(1)
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "round-00001.npz").exists():
            assert time.monotonic() < deadline, "no checkpoint after round 1"
            time.sleep(0.1)
        link.cli("stop", run_id)
        deadline = time.monotonic() + 60
        while (
            '"running"' in link.cli("ls", "--run-id", run_id, "--format", "json").stdout
        ):
            assert time.monotonic() < deadline, "the stopped run is still running"
            time.sleep(0.5)
        # the stopped run's processes may hold the output directory's lock a moment
        # after its status changed (slow to exit on a loaded machine)
        from fl_app.core.checkpoint import CheckpointError, RunLock

        while True:
            try:
                RunLock(out).acquire().release()
                break
            except CheckpointError:
                assert time.monotonic() < deadline, "the stopped run holds its lock"
                time.sleep(0.2)
        resumed = link.cli(
            "run",
            str(ROOT),
            "fl-dnn",
            "--run-config",
            f"{given} resume='{out}'",
            *federation,
            "--stream",
            timeout=600,
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        # flwr run --stream exits 0 even when the run fails: ask for its status
        runs = json.loads(link.cli("ls", "--format", "json").stdout)["runs"]
    statuses = {str(r["run-id"]): r["status"] for r in runs}
    assert statuses[run_id] != "finished:completed", "stopped too late to test"
    assert [s for i, s in statuses.items() if i != run_id] == ["finished:completed"], (
        resumed.stdout[-3000:]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == rounds
    assert summary["run_config"]["num-rounds"] == rounds
    assert summary["resumed_from"] and 1 <= summary["resumed_from"][-1] < rounds
    assert [r["round"] for r in read_rows(out)] == list(range(1, rounds + 1))


@SWEEP_GROUP
def test_a_two_node_ray_cluster_serves_the_clients_on_both_nodes(
    sweep, tmp_path, no_leftover_processes
):
    # Prepare: a Ray cluster of two nodes (two raylets, one CPU each) that this test
    # starts, so neither is the launcher's: the run must join it and leave it up.
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        node_ids = {node.node_id for node in cluster.list_all_nodes()}
        assert len(node_ids) == 2
        # Execute: the sweep's seeded run, on the cluster
        result = run_entry(
            [
                *SEEDED,
                "simulation=ray_cluster",
                f"simulation.ray_address={cluster.address}",
            ],
            tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # Assert: both nodes served clients (the node of each client's fit is in the
        # round records), and the figures are the single-node run's of this seed
        rows = read_rows(tmp_path / "run")
        served = {c["ray_node"] for row in rows for c in row["clients"]}
        assert served == node_ids
        alone = read_rows(sweep[0] / "0")
        for figure in FIGURES:
            assert [r[figure] for r in rows] == [r[figure] for r in alone], figure
        # the launcher stopped only what it started: the cluster is still alive
        assert all(
            node.remaining_processes_alive() for node in cluster.list_all_nodes()
        )
    finally:
        cluster.shutdown()
