import numpy as np
from flwr.common import (
    EvaluateRes,
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from strategies.fedavg import FedAvg, parameters_size
from tests.proxies import OK, FakeProxy, fit_res


def global_model():
    return [np.zeros((2, 2), np.float32), np.zeros(2, np.float32)]


def client_fit(weights, n, pid):
    """Partition ``pid``'s result: ``n`` examples, a train loss of ``pid``."""
    return fit_res(weights, n, {"partition_id": pid, "train_loss": float(pid)})


def make_strategy(evaluate_fn=None):
    return FedAvg(
        num_clients=3,
        clients_per_round=3,
        evaluate_clients_per_round=3,
        initial_parameters=ndarrays_to_parameters(global_model()),
        evaluate_fn=evaluate_fn,
    )


def test_fedavg_aggregates_weighted_and_records_bytes():
    # Prepare: clients with all-ones (1 example) and all-fives (3 examples).
    strategy = make_strategy()
    ones = [np.ones((2, 2), np.float32), np.ones(2, np.float32)]
    fives = [np.full((2, 2), 5.0, np.float32), np.full(2, 5.0, np.float32)]
    results = [
        (FakeProxy(7), client_fit(fives, 3, 1)),
        (FakeProxy(9), client_fit(ones, 1, 0)),
    ]
    # Execute
    params, metrics = strategy.aggregate_fit(1, results, [])
    # Assert: (1*1 + 3*5) / 4 = 4; train_loss (1*0 + 3*1) / 4 = 0.75
    kernel, bias = parameters_to_ndarrays(params)
    np.testing.assert_array_equal(kernel, np.full((2, 2), 4.0))
    np.testing.assert_array_equal(bias, np.full(2, 4.0))
    assert metrics["train_loss"] == 0.75
    record = strategy.pop_round_record(1)
    expected_up = sum(parameters_size(res.parameters) for _, res in results)
    assert record["bytes_up"] == expected_up > 0
    assert [c["partition_id"] for c in record["clients"]] == [0, 1]


def test_fedavg_rejects_bad_shape_and_nan_and_keeps_global():
    # Prepare: one good update, one with a wrong shape, one with NaN.
    strategy = make_strategy()
    good = [np.full((2, 2), 2.0, np.float32), np.full(2, 2.0, np.float32)]
    wrong = [np.ones((3, 2), np.float32), np.ones(2, np.float32)]
    nan = [np.full((2, 2), np.nan, np.float32), np.ones(2, np.float32)]
    results = [
        (FakeProxy(1), client_fit(wrong, 50, 1)),
        (FakeProxy(2), client_fit(good, 10, 0)),
        (FakeProxy(3), client_fit(nan, 50, 2)),
    ]
    # Execute
    params, metrics = strategy.aggregate_fit(1, results, [])
    # Assert: only the good update counts, despite the others' larger weights
    kernel, _ = parameters_to_ndarrays(params)
    np.testing.assert_array_equal(kernel, np.full((2, 2), 2.0))
    assert metrics["num_rejected"] == 2 and metrics["num_accepted"] == 1
    record = strategy.pop_round_record(1)
    rejected = {c["partition_id"]: c.get("rejected") for c in record["clients"]}
    assert "shape" in rejected[1] and "NaN" in rejected[2] and rejected[0] is None


def test_fedavg_all_rejected_leaves_global_unchanged():
    strategy = make_strategy()
    nan = [np.full((2, 2), np.inf, np.float32), np.ones(2, np.float32)]
    params, metrics = strategy.aggregate_fit(
        1, [(FakeProxy(1), client_fit(nan, 5, 0))], []
    )
    assert params is None
    assert metrics["num_rejected"] == 1
    np.testing.assert_array_equal(strategy.global_parameters[0], np.zeros((2, 2)))


def test_fedavg_fixed_order_gives_identical_result_for_shuffled_arrival():
    rng = np.random.default_rng(3)
    updates = [
        [
            rng.normal(size=(2, 2)).astype(np.float32),
            rng.normal(size=2).astype(np.float32),
        ]
        for _ in range(3)
    ]
    results = [
        (FakeProxy(10 + i), client_fit(u, 7 + i, i)) for i, u in enumerate(updates)
    ]
    a, _ = make_strategy().aggregate_fit(1, results, [])
    b, _ = make_strategy().aggregate_fit(1, results[::-1], [])
    for x, y in zip(parameters_to_ndarrays(a), parameters_to_ndarrays(b)):
        assert x.tobytes() == y.tobytes()


def test_fedavg_records_central_and_federated_evaluation():
    import time

    def evaluate_fn(r, w, c):
        time.sleep(0.05)  # the central evaluation's cost is recorded
        return 0.5, {"accuracy": 0.9}

    strategy = make_strategy(evaluate_fn=evaluate_fn)
    strategy.evaluate(1, ndarrays_to_parameters(global_model()))
    evals = [
        (FakeProxy(1), EvaluateRes(OK, 1.0, 10, {"accuracy": 0.4, "partition_id": 0})),
        (FakeProxy(2), EvaluateRes(OK, 2.0, 30, {"accuracy": 0.8, "partition_id": 1})),
    ]
    loss, metrics = strategy.aggregate_evaluate(1, evals, [RuntimeError("gone")])
    # (10*1 + 30*2) / 40 = 1.75 ; (10*0.4 + 30*0.8) / 40 = 0.7
    assert loss == 1.75 and abs(metrics["accuracy"] - 0.7) < 1e-12
    record = strategy.pop_round_record(1)
    assert record["central_accuracy"] == 0.9 and record["central_loss"] == 0.5
    assert 0.05 <= record["central_eval_s"] < 1
    assert record["federated_loss"] == 1.75 and record["num_failures"] == 1
    assert record["clients"][1]["val_accuracy"] == 0.8


def test_parameters_size_counts_serialized_bytes():
    params = Parameters(tensors=[b"abc", b"defgh"], tensor_type="numpy.ndarray")
    assert parameters_size(params) == 8


def test_fedavg_all_clients_failed_stops_the_run_with_their_error():
    import pytest

    strategy = make_strategy()
    with pytest.raises(RuntimeError, match="all 2 sampled clients failed.*boom"):
        strategy.aggregate_fit(1, [], [RuntimeError("boom"), RuntimeError("bang")])


def test_fedavg_some_failures_are_counted_not_fatal():
    strategy = make_strategy()
    ones = [np.ones((2, 2), np.float32), np.ones(2, np.float32)]
    params, _ = strategy.aggregate_fit(
        1, [(FakeProxy(1), client_fit(ones, 4, 0))], [RuntimeError("gone")]
    )
    assert params is not None
    assert strategy.pop_round_record(1)["num_failures"] == 1


def test_personalized_fedavg_averages_shared_keeps_local():
    from strategies.personalized import PersonalizedFedAvg

    # Prepare: kernel shared, bias local to clients (sent empty).
    strategy = PersonalizedFedAvg(
        local_mask=[False, True],
        num_clients=3,
        clients_per_round=3,
        evaluate_clients_per_round=3,
        initial_parameters=ndarrays_to_parameters(global_model()),
    )
    a = [np.full((2, 2), 1.0, np.float32), np.empty(0, np.float32)]
    b = [np.full((2, 2), 3.0, np.float32), np.empty(0, np.float32)]
    leak = [np.full((2, 2), 9.0, np.float32), np.ones(2, np.float32)]
    results = [
        (FakeProxy(1), client_fit(a, 1, 0)),
        (FakeProxy(2), client_fit(b, 1, 1)),
        (FakeProxy(3), client_fit(leak, 100, 2)),
    ]
    # Execute
    params, metrics = strategy.aggregate_fit(1, results, [])
    # Assert: kernel (1 + 3) / 2 = 2; the bias keeps its global zeros; the client
    # that sent its local layer is rejected
    kernel, bias = parameters_to_ndarrays(params)
    np.testing.assert_array_equal(kernel, np.full((2, 2), 2.0))
    np.testing.assert_array_equal(bias, np.zeros(2))
    assert metrics["num_rejected"] == 1
    # bytes up count what was really sent: the empty local arrays are smaller
    record = strategy.pop_round_record(1)
    sizes = {c["partition_id"]: c["bytes_up"] for c in record["clients"]}
    assert sizes[0] == sizes[1] < sizes[2]


def test_sampling_goes_on_with_the_nodes_left():
    strategy = FedAvg(
        num_clients=10,
        clients_per_round=7,
        evaluate_clients_per_round=3,
        initial_parameters=ndarrays_to_parameters(global_model()),
    )
    # all nodes up: exactly the configured counts (no float truncation: 10 * 0.7)
    assert strategy.num_fit_clients(10) == (7, 1)
    assert strategy.num_evaluation_clients(10) == (3, 1)
    # two nodes died: the same fraction of those left, never waiting for all ten
    assert strategy.num_fit_clients(8) == (6, 1)
    assert strategy.num_evaluation_clients(1) == (1, 1)


def test_a_restored_strategy_prunes_with_the_mask_it_had():
    # The server's mask after round 1 (sparsity 0.5 of the kernel), checkpointed,
    # restored into a fresh strategy: round 2 (no new sparsity) keeps that mask.
    from strategies.transport import ServerPruner

    def strategy():
        return FedAvg(
            num_clients=1,
            clients_per_round=1,
            evaluate_clients_per_round=0,
            initial_parameters=ndarrays_to_parameters(
                [
                    np.array([[4.0, -1.0], [3.0, 0.5]], np.float32),
                    np.ones(2, np.float32),
                ]
            ),
            pruner=ServerPruner(prunable=[True, False], sparsity_by_round={1: 0.5}),
        )

    saved = strategy()
    state, arrays = saved.checkpoint_state()
    assert state == {"pruning_masked_arrays": [0]}
    restored = strategy()
    restored.pruner.masks = {}  # a new process: no mask yet
    update = [np.full((2, 2), 9.0, np.float32), np.ones(2, np.float32)]
    restored.restore_checkpoint_state(update, state, arrays)
    assert restored.global_parameters[0].tolist() == [[9.0, 9.0], [9.0, 9.0]]
    params, _ = restored.aggregate_fit(
        1, [(FakeProxy(1), client_fit(update, 1, 0))], []
    )
    # the mask kept the largest magnitudes of the initial kernel: 4 and 3
    assert parameters_to_ndarrays(params)[0].tolist() == [[9.0, 0.0], [9.0, 0.0]]
