"""The ServerApp and the ClientApp together, in this process (:mod:`tests.inprocess`).

Each test runs the real apps through whole rounds (strategy, workflow, mods, client
training, results files) without Flower's processes or Ray, which
``test_simulation.py`` covers.
"""

import json
import math

import numpy as np
import pytest

from fl_app.core.results import read_rows
from tests.inprocess import InProcessGrid, run_in_process
from tests.integration.conftest import TINY

pytestmark = pytest.mark.slow

THREE = ["num_clients=3", "clients_per_round=3", "evaluate_clients_per_round=0"]


def summary_of(out):
    return json.loads((out / "summary.json").read_text())


def dense_model_bytes():
    """Serialized float32 size of the default CNN on digits (what FedAvg sends)."""
    from flwr.common import ndarrays_to_parameters

    from fl_app.core.config import parse_run_config
    from fl_app.ml.training import get_compiled_model, model_key
    from strategies.fedavg import parameters_size

    key = model_key(parse_run_config({}), (8, 8, 1), 10)
    weights = get_compiled_model(key).get_weights()
    return parameters_size(ndarrays_to_parameters(weights))


def final_weights(out):
    import tf_keras

    model = tf_keras.models.load_model(out / "final_model.keras")
    return np.concatenate([w.ravel() for w in model.get_weights()])


def test_hetero_slicing_end_to_end(tmp_path):
    out = tmp_path / "run"
    run_in_process(
        [*TINY, "num_rounds=1", "strategy=hetero", 'strategy.capacities="1.0:1,0.5:1"'],
        out,
    )
    summary = summary_of(out)
    assert set(summary["accuracy_by_width"]) == {"1.0", "0.5"}
    assert summary["accuracy_by_width"]["1.0"] == summary["final_accuracy"]
    (row,) = read_rows(out)
    sizes = {c["width"]: c["bytes_up"] for c in row["clients"]}
    assert set(sizes) == {1.0, 0.5} and sizes[0.5] < sizes[1.0]
    assert row["num_rejected"] == 0 and summary["bytes_up"] == sum(sizes.values())


def test_pruning_with_sparse_int8_uploads_end_to_end(tmp_path):
    out = tmp_path / "run"
    run_in_process(
        [
            *TINY,
            "num_rounds=2",
            "pruning=constant",
            "pruning.final_sparsity=0.9",
            "compression=sparse_int8",
        ],
        out,
    )
    rows = read_rows(out)
    summary = summary_of(out)
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


def test_secagg_plus_gives_fedavgs_aggregate_within_quantization_error(tmp_path):
    outs = {}
    for name, extra in (("plain", []), ("secagg", ["secagg=enabled"])):
        outs[name] = tmp_path / name
        run_in_process([*THREE, "num_rounds=1", *extra], outs[name])
    (row,) = read_rows(outs["secagg"])
    assert row["num_rejected"] == 0
    # SecAgg+ (defaults: clipping range 8, quantization range 2**22, max weight
    # 10000) quantizes each client's value times n_i / max_weight with a step of
    # 16 / (2**22 - 1); the sum of three is divided by sum(n_i) / max_weight.
    step = 2 * 8.0 / (2**22 - 1)
    total_ratio = sum(c["num_examples"] for c in row["clients"]) / 10000.0
    bound = 3 * step / total_ratio
    diff = np.abs(final_weights(outs["plain"]) - final_weights(outs["secagg"]))
    assert 0 < diff.max() <= bound


def test_dp_sgd_and_client_side_dp_under_secagg_report_epsilon(tmp_path):
    out = tmp_path / "run"
    run_in_process(
        [
            *THREE,
            "model=softmax",  # the accounting does not depend on the model
            "num_rounds=2",
            "secagg=enabled",
            "dpsgd=sgd",
            "client.learning_rate=0.1",
            "clientdp=client_fixed",
            "clientdp.noise_multiplier=0.1",
        ],
        out,
    )
    rows = read_rows(out)
    summary = summary_of(out)
    sample = [row["epsilon_sample_level_max"] for row in rows]
    client = [row["epsilon_client_level"] for row in rows]
    assert 0 < sample[0] < sample[1]  # each client accumulates over its rounds
    assert 0 < client[0] < client[1]
    assert summary["epsilon_sample_level_max"] == sample[1]
    assert summary["epsilon_client_level"] == client[1]
    assert all(c["epsilon"] > 0 for row in rows for c in row["clients"])
    assert (out / "accuracy_vs_epsilon.png").stat().st_size > 0


@pytest.mark.parametrize("alpha", [0.25, 1.0])
def test_personalized_fixed_alpha_with_augmentation(tmp_path, alpha):
    out = tmp_path / "run"
    run_in_process(
        [
            *TINY,
            "model=softmax",
            "num_rounds=2",
            "partition=pathological",
            "strategy=apfl",
            "strategy.mode=fixed",
            f"strategy.alpha={alpha}",
            "client/augmentation=light",
        ],
        out,
    )
    summary = summary_of(out)
    rows = read_rows(out)
    assert (
        summary["final_personalized_accuracy"]
        == rows[-1]["federated_personalized_accuracy"]
    )
    assert 0.0 <= summary["final_personalized_accuracy"] <= 1.0
    # fixed alpha: every client reports the configured alpha, unchanged
    assert {c["alpha"] for row in rows for c in row["clients"]} == {alpha}
    assert summary["client_failures"] == 0


def test_a_strategy_registered_in_a_test_runs_end_to_end(tmp_path, monkeypatch):
    from flwr.server.strategy.aggregate import aggregate_median

    from fl_app.core.config import STRATEGY_SPECS, StrategySpec
    from fl_app.server import run as server_app
    from strategies.fedavg import FedAvg

    # Prepare: a strategy written here, in one class, registered under a new name
    calls = []

    class CoordinateMedian(FedAvg):
        """Coordinate-wise median of the accepted updates (Flower's own function)."""

        def aggregate_layers(self, accepted):
            calls.append(sorted(node for node, _, _ in accepted))
            return aggregate_median([(w, n) for _, w, n in accepted])

    monkeypatch.setitem(STRATEGY_SPECS, "median", StrategySpec("median"))
    monkeypatch.setitem(
        server_app.STRATEGY_BUILDERS,
        "median",
        lambda cfg, model, **common: CoordinateMedian(**common),
    )
    out = tmp_path / "run"

    # Execute: the Hydra override names it like any strategy; a strategy with dense
    # updates gets the upload codecs without a line of its own
    grid = run_in_process(
        [
            *THREE,
            "num_rounds=2",
            "strategy.name=median",
            "save_model=false",
            "compression=int8",
        ],
        out,
    )

    # Assert: it aggregated every round over every node, and the run's records
    # are those of any strategy
    assert calls == [sorted(grid.get_node_ids())] * 2
    summary = summary_of(out)
    assert summary["strategy"] == "median" and summary["rounds"] == 2
    assert summary["final_accuracy"] > summary["initial_accuracy"]
    rows = read_rows(out)
    assert [len(row["clients"]) for row in rows] == [3, 3]
    assert summary["run_config"]["strategy"] == "median"
    # int8 uploads were decoded and accepted: about a quarter of float32
    assert all(row["num_rejected"] == 0 for row in rows)
    ups = {c["bytes_up"] for row in rows for c in row["clients"]}
    assert max(ups) < dense_model_bytes() / 3


def test_a_workflow_and_summary_part_registered_in_a_test_drive_the_run(
    tmp_path, monkeypatch
):
    from fl_app.core.config import STRATEGY_SPECS, StrategySpec
    from fl_app.server import run as server_app

    # Prepare: a strategy whose spec names its own workflow; the workflow runs the
    # usual rounds, then hands back the initial model instead of the trained one
    seen, initial = [], []

    def keep_initial(run):
        initial.extend(run.model.get_weights())
        server_app.rounds_workflow(run)
        seen.append(run.strategy)
        return initial

    monkeypatch.setitem(
        STRATEGY_SPECS, "kept", StrategySpec("kept", workflow="keep-initial")
    )
    monkeypatch.setitem(
        server_app.STRATEGY_BUILDERS, "kept", server_app.STRATEGY_BUILDERS["fedavg"]
    )
    monkeypatch.setitem(server_app.WORKFLOWS, "keep-initial", keep_initial)
    monkeypatch.setattr(
        server_app,
        "SUMMARY_PARTS",
        [*server_app.SUMMARY_PARTS, lambda run, weights: {"workflow_calls": len(seen)}],
    )
    out = tmp_path / "run"

    # Execute
    run_in_process([*THREE, "num_rounds=2", "strategy.name=kept"], out)

    # Assert: the ServerApp ran the spec's workflow once, evaluated and saved the
    # model it returned, and wrote the registered summary field
    summary = summary_of(out)
    assert summary["workflow_calls"] == 1 and summary["rounds"] == 2
    assert len(read_rows(out)) == 2
    assert summary["final_accuracy"] == summary["initial_accuracy"]
    np.testing.assert_array_equal(
        final_weights(out), np.concatenate([w.ravel() for w in initial])
    )


def test_fedprox_clients_report_their_distance_to_the_global_model(tmp_path):
    out = tmp_path / "run"
    run_in_process([*THREE, "num_rounds=2", "save_model=false", "client=fedprox"], out)
    rows = read_rows(out)
    distances = [c["proximal_distance"] for row in rows for c in row["clients"]]
    assert len(distances) == 6 and all(d > 0 for d in distances)
    assert summary_of(out)["run_config"]["client-proximal-mu"] == 0.01


@pytest.mark.parametrize("mode", ["splitfed_v1", "splitfed_v2", "local_loss"])
def test_split_training_end_to_end(tmp_path, mode):
    out = tmp_path / "run"
    run_in_process(
        [
            "num_clients=3",
            "clients_per_round=2",
            "evaluate_clients_per_round=2",
            "num_rounds=2",
            f"split={mode}",
            "split.chunk=2" if mode != "local_loss" else "client.local_epochs=2",
        ],
        out,
    )
    rows, summary = read_rows(out), summary_of(out)
    assert [row["round"] for row in rows] == [1, 2]
    for row in rows:
        assert len(row["clients"]) == 2 and row["num_failures"] == 0
        assert row["num_rejected"] == 0 and row["bytes_activations"] > 0
        assert row["bytes_weights_up"] > 0 and row["bytes_weights_down"] > 0
        # the round's bytes: the training clients' plus the evaluation exchange's
        for way in ("up", "down"):
            assert (
                row[f"bytes_{way}"]
                == sum(c[f"bytes_{way}"] for c in row["clients"])
                + row[f"bytes_evaluation_{way}"]
            )
        assert row["bytes_evaluation_up"] > 0 and row["evaluation_failures"] == 0
        assert 0 <= row["federated_accuracy"] <= 1
        if mode == "local_loss":  # one exchange per round, no gradient travels
            assert row["bytes_gradients"] == 0 and row["messages"] == 2 * 2
        else:  # per client: forward, then one backward per chunk of 2 batches
            exchanges = [
                1 + math.ceil(math.ceil(c["num_examples"] / 32) / 2)
                for c in row["clients"]
            ]
            assert row["bytes_gradients"] > 0
            assert row["messages"] == 2 * sum(exchanges)
    assert summary["final_accuracy"] > summary["initial_accuracy"]
    assert summary["split_mode"] == mode and summary["cut_layer"] == "conv1"
    assert summary["client_param_share"] < 0.25
    if mode == "local_loss":  # conv1 (320) + its flattened softmax head (20,490)
        assert summary["client_aux_params"] == 2048 * 10 + 10
        assert summary["client_param_share_with_aux"] == pytest.approx(
            (320 + 20_490) / 151_306
        )
    assert (out / "split_bytes.png").is_file()
    # the saved model is the whole CNN (3*3*32+32 + 3*3*32*64+64 + 1024*128+128
    # + 128*10+10 weights): the joined client and server parts
    assert final_weights(out).size == 151_306


def test_split_round_survives_a_client_failing_mid_round(tmp_path, monkeypatch):
    from fl_app.features.split import client as split_client

    # Prepare: partition 1 fails its first backward step in round 1
    backward = split_client.SplitNode.backward

    def flaky(node, content):
        if (
            node.partition_id == 1
            and content.config_records["config"]["server_round"] == 1
        ):
            raise RuntimeError("edge device lost power")
        return backward(node, content)

    monkeypatch.setattr(split_client.SplitNode, "backward", flaky)
    monkeypatch.setitem(split_client.HANDLERS, split_client.BACKWARD, flaky)
    out = tmp_path / "run"

    # Execute
    run_in_process(
        [*THREE, "num_rounds=2", "split=splitfed_v1", "save_model=false"], out
    )

    # Assert: round 1 aggregates the two clients that finished and counts the
    # failure; round 2 trains all three again (the failed node's state is reset)
    first, second = read_rows(out)
    assert first["num_failures"] == 1 and second["num_failures"] == 0
    trained = [c["partition_id"] for c in first["clients"] if c["num_examples"] > 0]
    assert sorted(trained) == [0, 2]
    assert all(c["num_examples"] > 0 for c in second["clients"])
    assert summary_of(out)["final_accuracy"] > summary_of(out)["initial_accuracy"]


class Straggler(InProcessGrid):
    """Node 1001 (partition 1) misses the deadline of round 2's exchanges."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        round_two = any(m.metadata.group_id == "2" for m in messages)
        if timeout is not None and round_two:  # late: past the deadline
            return [r for r in replies if r.metadata.src_node_id != 1001]
        return replies


def test_round_timeout_drops_a_straggler_and_the_run_goes_on(tmp_path):
    out = tmp_path / "run"
    run_in_process(
        [
            *THREE,
            "num_rounds=2",
            "round_timeout=5",
            "save_model=false",
        ],
        out,
        grid_class=Straggler,
    )
    rows = read_rows(out)
    # round 2: the straggler's update is dropped and counted; the others are used
    assert [r["num_timeouts"] for r in rows] == [0, 1]
    assert [len(r["clients"]) for r in rows] == [3, 2]
    assert {c["partition_id"] for c in rows[1]["clients"]} == {0, 2}
    assert all(r["num_failures"] == 0 for r in rows)
    assert summary_of(out)["client_timeouts"] == 1


def test_an_attacked_round_stays_near_the_clean_one_under_the_norm_bound(tmp_path):
    # One round, four clients; client 0 sends its update scaled by 10^6. Without a
    # defence the global model is thrown ~10^6 steps away; with the norm bound
    # (2 x the round's median delta norm, clipped) it stays within one clean
    # round's step of the clean aggregate.
    from fl_app.core.config import parse_run_config
    from fl_app.ml.training import get_compiled_model, model_key

    four = [
        "model=softmax",
        "num_clients=4",
        "clients_per_round=4",
        "evaluate_clients_per_round=0",
        "num_rounds=1",
    ]
    attack = ["attack=scaled", "attack.clients=0"]
    runs = {
        "clean": four,
        "attacked": [*four, *attack],
        # four clients: below the default robust.min_clients (5), judged on request
        "defended": [
            *four,
            *attack,
            "robust.norm_bound=2",
            "robust.norm_action=clip",
            "robust.min_clients=4",
        ],
    }
    for name, overrides in runs.items():
        run_in_process(overrides, tmp_path / name)
    key = model_key(parse_run_config({"model": "softmax"}), (8, 8, 1), 10)
    initial = np.concatenate(
        [w.ravel() for w in get_compiled_model(key, 42).get_weights()]
    )
    clean, attacked, defended = (final_weights(tmp_path / n) for n in runs)
    step = np.linalg.norm(clean - initial)
    assert np.linalg.norm(attacked - clean) > 1000 * step
    assert np.linalg.norm(defended - clean) <= step
    (row,) = read_rows(tmp_path / "defended")
    assert row["attackers"] == [0] and row["num_clipped"] == 1
    assert row["clients"][0]["attacked"] == "scaled"
    assert summary_of(tmp_path / "defended")["clipped_updates"] == 1


class OtherNodeIds(InProcessGrid):
    """The same nodes under other ids, listed in another order (a new Flower run)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        old = list(self.contexts.values())
        self.contexts = {}
        for index, context in enumerate(reversed(old)):
            context.node_id = 5000 + 2 * index  # partition 3 gets the lowest
            self.contexts[context.node_id] = context


def test_partial_participation_trains_the_same_partitions_whatever_the_node_ids(
    tmp_path,
):
    partial = [
        "model=softmax",
        "num_clients=4",
        "clients_per_round=2",
        "evaluate_clients_per_round=2",
        "num_rounds=3",
        "save_model=false",
    ]
    run_in_process(partial, tmp_path / "a")
    run_in_process(partial, tmp_path / "b", grid_class=OtherNodeIds)
    a, b = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    trained = [
        [c["partition_id"] for c in r["clients"] if "train_loss" in c] for r in a
    ]
    assert trained == [
        [c["partition_id"] for c in r["clients"] if "train_loss" in c] for r in b
    ]
    assert all(len(pids) == 2 for pids in trained) and len(set(map(tuple, trained))) > 1
    keys = ("central_accuracy", "central_loss", "train_loss", "federated_loss")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    # each round's time split: training, federated and central evaluation
    for r in a:
        parts = r["fit_s"] + r["federated_eval_s"] + r["central_eval_s"]
        assert min(r["fit_s"], r["federated_eval_s"], r["central_eval_s"]) > 0
        assert parts <= r["wall_time_s"]
