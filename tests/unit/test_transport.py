"""Server side of compression: magnitude masks, the pruner, deltas through FedAvg."""

import numpy as np
import pytest
from flwr.common import (
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from fl_app.features.compression.codecs import Codec
from strategies.aggregation import magnitude_mask
from strategies.fedavg import FedAvg, parameters_size
from strategies.transport import ServerPruner, Transport
from tests.proxies import FakeProxy, fit_res


def test_magnitude_mask_by_hand():
    w = np.array([[0.1, -3.0], [2.0, -0.5]], np.float32)
    np.testing.assert_array_equal(
        magnitude_mask(w, 0.5), [[False, True], [True, False]]
    )
    # 4 * (1 - 0.6) = 1.6 rounds to 2; at least one entry is always kept
    assert magnitude_mask(w, 0.6).sum() == 2
    assert magnitude_mask(w, 0.99).sum() == 1
    # ties keep the lower flat index: exactly k entries
    np.testing.assert_array_equal(
        magnitude_mask(np.ones(4, np.float32), 0.5), [True, True, False, False]
    )
    with pytest.raises(ValueError):
        magnitude_mask(w, 1.0)


def test_pruner_prunes_on_scheduled_rounds_and_holds_mask_between():
    pruner = ServerPruner(prunable=[True, False], sparsity_by_round={1: 0.5, 3: 0.75})
    kernel = np.array([1.0, -4.0, 3.0, 2.0], np.float32)
    bias = np.array([0.0, 0.1], np.float32)
    first = pruner.apply([kernel, bias], 1)
    np.testing.assert_array_equal(first[0], [0, -4, 3, 0])
    np.testing.assert_array_equal(first[1], bias)  # not prunable
    # round 2 holds the mask: a value outside it is zeroed again
    held = pruner.apply([np.array([9.0, 1.0, 1.0, 9.0], np.float32), bias], 2)
    np.testing.assert_array_equal(held[0], [0, 1, 1, 0])
    # round 3 prunes to 75 %: one entry of four
    third = pruner.apply([np.array([0.0, -5.0, 1.0, 0.0], np.float32), bias], 3)
    np.testing.assert_array_equal(third[0], [0, -5, 0, 0])
    assert pruner.sparsity(third) == 0.75


def make_strategy(transport=None, pruner=None, initial=None):
    initial = initial or [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    return FedAvg(
        num_clients=2,
        clients_per_round=2,
        evaluate_clients_per_round=0,
        initial_parameters=ndarrays_to_parameters(initial),
        transport=transport,
        pruner=pruner,
    )


def test_fedavg_adds_decoded_deltas_to_the_model_sent():
    start = [np.ones((2, 3), np.float32), np.ones(3, np.float32)]
    codec = Codec.parse("sparse")
    strategy = make_strategy(Transport(upload=codec, delta=True), initial=start)
    strategy._reference = start  # what configure_fit sent
    d1 = [np.zeros((2, 3), np.float32), np.full(3, 2.0, np.float32)]
    d1[0][0, 0] = 4.0
    d2 = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    results = [
        (FakeProxy(1), fit_res(codec.encode(d1), 1)),
        (FakeProxy(2), fit_res(codec.encode(d2), 3)),
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    kernel, bias = parameters_to_ndarrays(params)
    # (1 * (1 + 4) + 3 * 1) / 4 = 2 at [0, 0]; bias (1 * 3 + 3 * 1) / 4 = 1.5
    assert kernel[0, 0] == 2.0 and kernel[1, 2] == 1.0
    np.testing.assert_array_equal(bias, [1.5, 1.5, 1.5])
    record = strategy.pop_round_record(1)
    assert record["bytes_up"] == sum(parameters_size(r.parameters) for _, r in results)


def test_fedavg_rejects_undecodable_payload_and_keeps_global():
    codec = Codec.parse("sparse+int8")
    strategy = make_strategy(Transport(upload=codec, delta=True))
    good = codec.encode([np.ones((2, 3), np.float32), np.ones(3, np.float32)])
    bad = list(good)
    bad[2] = np.array([np.nan], np.float32)  # the kernel's int8 scale
    results = [
        (FakeProxy(1), fit_res(bad, 5)),
        (FakeProxy(2), fit_res(good[:2], 5)),
    ]
    params, metrics = strategy.aggregate_fit(1, results, [])
    assert params is None and metrics["num_rejected"] == 2
    record = strategy.pop_round_record(1)
    assert all("does not decode" in c["rejected"] for c in record["clients"])
    np.testing.assert_array_equal(strategy.global_parameters[0], np.zeros((2, 3)))


def test_fedavg_prunes_initial_and_aggregated_model_and_sends_sparse():
    initial = [
        np.array([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]], np.float32),
        np.ones(3, np.float32),
    ]
    pruner = ServerPruner(prunable=[True, False], sparsity_by_round={1: 0.5})
    codec = Codec.parse("sparse")
    strategy = make_strategy(Transport(download=codec), pruner, initial)
    kernel = parameters_to_ndarrays(strategy.initialize_parameters(None))[0]
    np.testing.assert_array_equal(kernel, [[0, 0, 0], [-4, 5, -6]])
    # a client that moved a pruned entry: the server's mask zeroes it again
    update = [kernel.copy(), np.ones(3, np.float32)]
    update[0][0, 0] = 7.0
    results = [(FakeProxy(1), fit_res(update, 1))]
    params, _ = strategy.aggregate_fit(1, results, [])
    np.testing.assert_array_equal(parameters_to_ndarrays(params)[0], kernel)
    assert strategy.pop_round_record(1)["sparsity"] == 0.5
    # what is sent: three kept values and their gap bytes, not six floats
    payload, received = strategy.transport.send(parameters_to_ndarrays(params))
    assert payload[0].nbytes == 3 and payload[1].nbytes == 12
    np.testing.assert_array_equal(received[0], kernel)
