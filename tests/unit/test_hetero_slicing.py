from dataclasses import dataclass

import numpy as np
import pytest
from flwr.common import (
    GetPropertiesRes,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from strategies.hetero_slicing import (
    AxisMap,
    HeteroSlicingFedAvg,
    aggregate_sliced,
    make_windows,
    slice_weights,
    slice_window,
)
from tests.proxies import OK, FakeProxy, fit_res

H = AxisMap("h")
# A 2-layer MLP: kernel1 (3 inputs, 4 hidden), bias1 (4,), kernel2 (4 hidden, 2 classes)
LAYOUT = [(None, H), (H,), (H, None)]
FULL = {"h": 4}


def mlp():
    k1 = np.arange(12, dtype=np.float32).reshape(3, 4)
    b1 = np.array([10, 11, 12, 13], np.float32)
    k2 = np.arange(8, dtype=np.float32).reshape(4, 2) * 10
    return [k1, b1, k2]


def test_slice_window_wraps_around():
    np.testing.assert_array_equal(slice_window(4, 2), [0, 1])
    np.testing.assert_array_equal(slice_window(4, 2, offset=3), [3, 0])
    np.testing.assert_array_equal(slice_window(4, 3, offset=6), [2, 3, 0])
    with pytest.raises(ValueError, match="1..4"):
        slice_window(4, 5)


def test_make_windows_static_vs_rolling():
    static = make_windows({"h": 4}, {"h": 2}, server_round=3, rolling=False)
    rolled = make_windows({"h": 4}, {"h": 2}, server_round=3, rolling=True)
    np.testing.assert_array_equal(static["h"], [0, 1])
    np.testing.assert_array_equal(rolled["h"], [3, 0])


def test_slice_weights_hand_computed():
    # Hidden units 0 and 1: kernel1 keeps all inputs and its first two columns,
    # bias1 its first two entries, kernel2 its first two rows and both classes.
    k1, b1, k2 = slice_weights(mlp(), LAYOUT, FULL, {"h": np.array([0, 1])})
    np.testing.assert_array_equal(k1, [[0, 1], [4, 5], [8, 9]])
    np.testing.assert_array_equal(b1, [10, 11])
    np.testing.assert_array_equal(k2, [[0, 10], [20, 30]])


def test_slice_weights_flattened_repeat_channels_fastest():
    # A flattened 2-position feature map of 3 channels: index = position * 3 + channel.
    layout = [(AxisMap("c", repeat=2), None)]
    kernel = np.arange(6, dtype=np.float32).reshape(6, 1)
    (sub,) = slice_weights([kernel], layout, {"c": 3}, {"c": np.array([0, 2])})
    # positions 0 and 1, channels 0 and 2 -> rows 0, 2, 3, 5
    np.testing.assert_array_equal(sub[:, 0], [0, 2, 3, 5])


def test_slice_then_scatter_round_trip():
    weights = mlp()
    windows = {"h": np.array([3, 0])}
    sub = slice_weights(weights, LAYOUT, FULL, windows)
    merged, coverage = aggregate_sliced(
        [np.zeros_like(w) for w in weights], [(sub, 5, windows)], LAYOUT, FULL
    )
    # Covered elements come back exactly; the rest keep the (zero) global value.
    np.testing.assert_array_equal(merged[1], [10, 0, 0, 13])
    np.testing.assert_array_equal(merged[0][:, [0, 3]], weights[0][:, [0, 3]])
    assert not merged[0][:, [1, 2]].any()
    np.testing.assert_array_equal(coverage[1], [5, 0, 0, 5])


def test_aggregate_sliced_weighted_by_coverage():
    # Prepare: global bias1 is all 100. Client A (full width, 1 example) sends 1s,
    # client B (half width, units 0-1, 3 examples) sends 5s.
    global_ = [np.zeros((3, 4)), np.full(4, 100.0), np.zeros((4, 2))]
    a = [np.ones((3, 4)), np.ones(4), np.ones((4, 2))]
    b = [np.full((3, 2), 5.0), np.full(2, 5.0), np.full((2, 2), 5.0)]
    wa, wb = {"h": np.arange(4)}, {"h": np.array([0, 1])}
    # Execute
    merged, coverage = aggregate_sliced(global_, [(a, 1, wa), (b, 3, wb)], LAYOUT, FULL)
    # Assert: units 0-1 -> (1*1 + 3*5) / 4 = 4 ; units 2-3 -> only A covers them: 1
    np.testing.assert_array_equal(merged[1], [4.0, 4.0, 1.0, 1.0])
    np.testing.assert_array_equal(coverage[1], [4, 4, 1, 1])
    np.testing.assert_array_equal(merged[2][:, 0], [4.0, 4.0, 1.0, 1.0])


def test_aggregate_sliced_uncovered_keep_global():
    global_ = [np.full((3, 4), 7.0), np.full(4, 7.0), np.full((4, 2), 7.0)]
    sub = [np.zeros((3, 1)), np.zeros(1), np.zeros((1, 2))]
    merged, _ = aggregate_sliced(
        global_, [(sub, 2, {"h": np.array([2])})], LAYOUT, FULL
    )
    np.testing.assert_array_equal(merged[1], [7, 7, 0, 7])


def test_rolling_windows_cover_every_unit_over_rounds():
    seen = np.zeros(4)
    for server_round in range(1, 5):
        seen[make_windows(FULL, {"h": 1}, server_round, rolling=True)["h"]] += 1
    np.testing.assert_array_equal(seen, [1, 1, 1, 1])


@dataclass
class CapacityProxy(FakeProxy):
    """A node that reports its capacity when asked (and counts the asks)."""

    capacity: float
    asked: int = 0

    def get_properties(self, ins, timeout, group_id):
        self.asked += 1
        return GetPropertiesRes(OK, {"capacity": self.capacity})


class RoundProxy(CapacityProxy):
    """A node whose capacity depends on the round it is asked about."""

    def get_properties(self, ins, timeout, group_id):
        self.asked += 1
        width = 1.0 if ins.config["server_round"] % 2 else 0.5
        return GetPropertiesRes(OK, {"capacity": width})


class FakeManager:
    def __init__(self, proxies):
        self.proxies = proxies

    def num_available(self):
        return len(self.proxies)

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        return self.proxies[:num_clients]


def make_strategy(rolling=False, dynamic=False):
    return HeteroSlicingFedAvg(
        layout=LAYOUT,
        full_sizes=FULL,
        sizes_by_width={1.0: {"h": 4}, 0.5: {"h": 2}},
        rolling=rolling,
        dynamic=dynamic,
        num_clients=2,
        clients_per_round=2,
        evaluate_clients_per_round=0,
        initial_parameters=ndarrays_to_parameters(mlp()),
    )


def test_strategy_sends_each_client_its_slice_and_scatters_back():
    strategy = make_strategy()
    proxies = [CapacityProxy(1, 1.0), CapacityProxy(2, 0.5)]
    instructions = strategy.configure_fit(
        1, ndarrays_to_parameters(mlp()), FakeManager(proxies)
    )
    shapes = {
        p.node_id: [a.shape for a in parameters_to_ndarrays(i.parameters)]
        for p, i in instructions
    }
    assert shapes == {1: [(3, 4), (4,), (4, 2)], 2: [(3, 2), (2,), (2, 2)]}
    assert {p.node_id: i.config["width"] for p, i in instructions} == {1: 1.0, 2: 0.5}
    # bytes down count the slices actually sent
    sent = sum(len(t) for _, i in instructions for t in i.parameters.tensors)
    assert strategy.pop_round_record(1)["bytes_down"] == sent

    strategy.configure_fit(1, ndarrays_to_parameters(mlp()), FakeManager(proxies))
    full = [
        np.zeros((3, 4), np.float32),
        np.zeros(4, np.float32),
        np.zeros((4, 2), np.float32),
    ]
    half = [
        np.ones((3, 2), np.float32),
        np.ones(2, np.float32),
        np.ones((2, 2), np.float32),
    ]
    results = [
        (proxies[0], fit_res(full, 1, {"partition_id": 0})),
        (proxies[1], fit_res(half, 1, {"partition_id": 1})),
    ]
    params, metrics = strategy.aggregate_fit(1, results, [])
    _, bias, _ = parameters_to_ndarrays(params)
    # units 0-1 averaged over both clients (0 and 1 -> 0.5); units 2-3 only client 1
    np.testing.assert_array_equal(bias, [0.5, 0.5, 0.0, 0.0])
    assert metrics["num_rejected"] == 0


@pytest.mark.parametrize("dynamic", [False, True])
def test_strategy_asks_capacity_once_or_every_round(dynamic):
    strategy = make_strategy(dynamic=dynamic)
    proxies = [RoundProxy(1, 0.0), RoundProxy(2, 0.0)]
    widths = []
    for server_round in (1, 2, 3):
        for _ in range(2):  # fit and evaluation in one round: asked at most once
            instructions = strategy.configure_fit(
                server_round, ndarrays_to_parameters(mlp()), FakeManager(proxies)
            )
        widths.append(instructions[0][1].config["width"])
    assert widths == ([1.0, 0.5, 1.0] if dynamic else [1.0, 1.0, 1.0])
    assert [p.asked for p in proxies] == ([3, 3] if dynamic else [1, 1])


def test_strategy_rejects_update_with_wrong_slice_shape():
    strategy = make_strategy()
    proxies = [CapacityProxy(1, 1.0), CapacityProxy(2, 0.5)]
    strategy.configure_fit(1, ndarrays_to_parameters(mlp()), FakeManager(proxies))
    wrong = mlp()  # full width from the half-width client
    ok = mlp()
    results = [
        (proxies[0], fit_res(ok, 1, {"partition_id": 0})),
        (proxies[1], fit_res(wrong, 9, {"partition_id": 1})),
    ]
    _, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics["num_rejected"] == 1


def test_strategy_unknown_capacity_is_clear():
    strategy = make_strategy()
    with pytest.raises(ValueError, match="capacity 0.3"):
        strategy.configure_fit(
            1,
            ndarrays_to_parameters(mlp()),
            FakeManager([CapacityProxy(1, 0.3), CapacityProxy(2, 1.0)]),
        )


def test_strategy_without_full_width_clients():
    # every client narrow (no 1.0 in the capacities): the full model still aggregates
    strategy = HeteroSlicingFedAvg(
        layout=LAYOUT,
        full_sizes=FULL,
        sizes_by_width={0.5: {"h": 2}},
        num_clients=1,
        clients_per_round=1,
        evaluate_clients_per_round=0,
        initial_parameters=ndarrays_to_parameters(mlp()),
    )
    proxy = CapacityProxy(1, 0.5)
    (ins,) = [
        i
        for _, i in strategy.configure_fit(
            1, ndarrays_to_parameters(mlp()), FakeManager([proxy])
        )
    ]
    sub = parameters_to_ndarrays(ins.parameters)
    res = fit_res([a + 1 for a in sub], 2, {"partition_id": 0})
    params, _ = strategy.aggregate_fit(1, [(proxy, res)], [])
    _, bias, _ = parameters_to_ndarrays(params)
    np.testing.assert_array_equal(bias, [11, 12, 12, 13])


def test_strategy_layout_mismatch_fails_at_construction():
    with pytest.raises(ValueError, match="cannot be 1 x 5 units"):
        HeteroSlicingFedAvg(
            layout=LAYOUT,
            full_sizes={"h": 5},
            sizes_by_width={1.0: {"h": 5}},
            num_clients=1,
            clients_per_round=1,
            evaluate_clients_per_round=0,
            initial_parameters=ndarrays_to_parameters(mlp()),
        )
