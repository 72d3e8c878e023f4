"""End to end through Flower's simulation runtime; each test has its own SuperLink."""

import json

import pytest

from fl_app.launcher import LocalSuperLink
from tests.integration.conftest import ROOT, TINY, run_entry

pytestmark = pytest.mark.slow

SUMMARY_KEYS = {"final_accuracy", "rounds", "wall_time_s", "bytes_up", "bytes_down"}


def dense_model_bytes():
    """Serialized float32 size of the default CNN on digits (what FedAvg sends)."""
    from flwr.common import ndarrays_to_parameters

    from fl_app.client import model_key
    from fl_app.config import parse_run_config
    from fl_app.training import get_compiled_model
    from strategies.fedavg import parameters_size

    key = model_key(parse_run_config({}), (8, 8, 1), 10)
    weights = get_compiled_model(key).get_weights()
    return parameters_size(ndarrays_to_parameters(weights))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_results(out, rounds, clients):
    rows = read_jsonl(out / "metrics.jsonl")
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


def test_run_simulation_two_rounds_then_same_seed_same_metrics(
    tmp_path, no_leftover_processes
):
    runs = []
    for name in ("a", "b"):
        result = run_entry(
            [*TINY, "num_rounds=2", f"hydra.run.dir={tmp_path / name}"], tmp_path
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "round 2/2" in result.stdout  # per-round progress is shown
        runs.append(read_jsonl(tmp_path / name / "metrics.jsonl"))
    summary = check_results(tmp_path / "a", rounds=2, clients=2)
    assert summary["final_accuracy"] > summary["initial_accuracy"]
    keys = ("central_loss", "central_accuracy", "train_loss", "federated_loss")
    first, second = ([[row[k] for k in keys] for row in rows] for rows in runs)
    assert first == second  # exactly equal, not approximately


def test_flwr_run_same_app_with_run_config_overrides(tmp_path, no_leftover_processes):
    out = tmp_path / "flwr"
    with LocalSuperLink() as link:
        streamed = link.cli(
            "run",
            str(ROOT),
            "fl-dnn",
            "--run-config",
            f"num-rounds=2 num-clients=2 clients-per-round=2 "
            f"evaluate-clients-per-round=2 output-dir='{out}'",
            "--federation-config",
            "num-supernodes=2 client-resources-num-cpus=1",
            "--stream",
            timeout=600,
        )
        assert streamed.returncode == 0, streamed.stdout + streamed.stderr
        listing = json.loads(link.cli("ls", "--format", "json").stdout)
    (run,) = listing["runs"]
    assert run["status"] == "finished:completed"
    check_results(out, rounds=2, clients=2)


def test_invalid_config_fails_before_training(tmp_path, no_leftover_processes):
    result = run_entry(["partition.alpha=-1"], tmp_path, timeout=120)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "partition-alpha" in output and "-1" in output and "> 0" in output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_failed_flower_run_exits_nonzero_with_flowers_error(
    tmp_path, no_leftover_processes
):
    # mnist comes from the hub; offline, the ServerApp fails while loading it.
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    result = run_entry([*TINY, "num_rounds=1", "dataset=mnist"], tmp_path, env=env)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "DatasetUnavailableError" in output and "finished:failed" in output


def test_hydra_sweep_one_run_per_job(tmp_path, no_leftover_processes):
    sweep = tmp_path / "sweep"
    result = run_entry(
        [
            "-m",
            *TINY,
            "num_rounds=1",
            "partition.alpha=0.3,1.0",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for job in ("0", "1"):
        check_results(sweep / job, rounds=1, clients=2)
    alphas = [
        json.loads((sweep / j / "summary.json").read_text())["run_config"][
            "partition-alpha"
        ]
        for j in ("0", "1")
    ]
    assert alphas == [0.3, 1.0]
    table = (sweep / "comparison.md").read_text().splitlines()
    assert (
        len(table) == 4
        and "partition.alpha=0.3" in table[2]
        and "partition.alpha=1.0" in table[3]
    )


def test_hydra_sweep_over_personal_alpha_with_augmentation(
    tmp_path, no_leftover_processes
):
    sweep = tmp_path / "sweep"
    result = run_entry(
        [
            "-m",
            *TINY,
            "num_rounds=2",
            "partition=pathological",
            "strategy=apfl",
            "strategy.mode=fixed",
            "strategy.alpha=0.25,1.0",
            "client/augmentation=light",  # in Ray workers, where OMP_NUM_THREADS is set
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summaries = [json.loads((sweep / j / "summary.json").read_text()) for j in "01"]
    assert [s["run_config"]["strategy-alpha"] for s in summaries] == [0.25, 1.0]
    for job, summary in zip("01", summaries):
        rows = read_jsonl(sweep / job / "metrics.jsonl")
        assert (
            summary["final_personalized_accuracy"]
            == rows[-1]["federated_personalized_accuracy"]
        )
        assert 0.0 <= summary["final_personalized_accuracy"] <= 1.0
        # fixed alpha: every client reports the configured alpha, unchanged
        alphas = {c["alpha"] for row in rows for c in row["clients"]}
        assert alphas == {summary["run_config"]["strategy-alpha"]}
        assert summary["run_config"]["client-augmentation"] == "light"
        assert summary["client_failures"] == 0


def test_hetero_slicing_end_to_end(tmp_path, no_leftover_processes):
    result = run_entry(
        [*TINY, "num_rounds=1", "strategy=hetero", 'strategy.capacities="1.0:1,0.5:1"'],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy_by_width"]) == {"1.0", "0.5"}
    assert summary["accuracy_by_width"]["1.0"] == summary["final_accuracy"]
    (row,) = read_jsonl(out / "metrics.jsonl")
    sizes = {c["width"]: c["bytes_up"] for c in row["clients"]}
    assert set(sizes) == {1.0, 0.5} and sizes[0.5] < sizes[1.0]
    assert row["num_rejected"] == 0 and summary["bytes_up"] == sum(sizes.values())


def test_pruning_with_sparse_int8_uploads_end_to_end(tmp_path, no_leftover_processes):
    result = run_entry(
        [
            *TINY,
            "num_rounds=2",
            "pruning=constant",
            "pruning.final_sparsity=0.9",
            "compression=sparse_int8",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "run"
    rows = read_jsonl(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    # the global model holds the scheduled sparsity over the pruned layers
    assert [row["sparsity"] for row in rows] == [pytest.approx(0.9, abs=1e-3)] * 2
    assert all(row["num_rejected"] == 0 for row in rows)
    # per-client bytes each way add up to the totals; uploads far below float32
    clients = [c for row in rows for c in row["clients"]]
    assert summary["bytes_up"] == sum(c["bytes_up"] for c in clients)
    assert summary["bytes_down"] == sum(c["bytes_down"] for c in clients)
    dense_bytes = dense_model_bytes()
    assert max(c["bytes_up"] for c in clients) < dense_bytes / 10
    assert (out / "accuracy_vs_bytes.png").stat().st_size > 0


def final_weights(out):
    import numpy as np
    import tf_keras

    model = tf_keras.models.load_model(out / "final_model.keras")
    return np.concatenate([w.ravel() for w in model.get_weights()])


def test_secagg_plus_gives_fedavgs_aggregate_within_quantization_error(
    tmp_path, no_leftover_processes
):
    import numpy as np

    three = ["num_clients=3", "clients_per_round=3", "evaluate_clients_per_round=0"]
    outs = {}
    for name, extra in (("plain", []), ("secagg", ["secagg=enabled"])):
        result = run_entry(
            [*three, "num_rounds=1", *extra, f"hydra.run.dir={tmp_path / name}"],
            tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        outs[name] = tmp_path / name
    (row,) = read_jsonl(outs["secagg"] / "metrics.jsonl")
    assert row["num_rejected"] == 0
    # SecAgg+ (defaults: clipping range 8, quantization range 2**22, max weight
    # 10000) quantizes each client's value times n_i / max_weight with a step of
    # 16 / (2**22 - 1); the sum of three is divided by sum(n_i) / max_weight.
    step = 2 * 8.0 / (2**22 - 1)
    total_ratio = sum(c["num_examples"] for c in row["clients"]) / 10000.0
    bound = 3 * step / total_ratio
    diff = np.abs(final_weights(outs["plain"]) - final_weights(outs["secagg"]))
    assert 0 < diff.max() <= bound


def test_dp_sgd_and_client_side_dp_under_secagg_report_epsilon(
    tmp_path, no_leftover_processes
):
    result = run_entry(
        [
            "num_clients=3",
            "clients_per_round=3",
            "evaluate_clients_per_round=0",
            "num_rounds=2",
            "secagg=enabled",
            "dpsgd=sgd",
            "client.learning_rate=0.1",
            "clientdp=client_fixed",
            "clientdp.noise_multiplier=0.1",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "run"
    rows = read_jsonl(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    sample = [row["epsilon_sample_level_max"] for row in rows]
    client = [row["epsilon_client_level"] for row in rows]
    assert 0 < sample[0] < sample[1]  # each client accumulates over its rounds
    assert 0 < client[0] < client[1]
    assert summary["epsilon_sample_level_max"] == sample[1]
    assert summary["epsilon_client_level"] == client[1]
    assert all(c["epsilon"] > 0 for row in rows for c in row["clients"])
    assert (out / "accuracy_vs_epsilon.png").stat().st_size > 0
