import numpy as np
import pytest

from strategies.aggregation import (
    aggregate_metrics,
    aggregate_partial,
    aggregate_weighted,
    check_partial_update,
    check_update,
)


def test_aggregate_weighted_hand_computed():
    # Prepare: two clients, one layer each of two values.
    # client A: [1, 2] with 1 example; client B: [4, 8] with 3 examples.
    results = [
        ([np.array([1.0, 2.0], dtype=np.float32)], 1),
        ([np.array([4.0, 8.0], dtype=np.float32)], 3),
    ]
    # Execute
    (layer,) = aggregate_weighted(results)
    # Assert: (1*1 + 3*4) / 4 = 3.25 and (1*2 + 3*8) / 4 = 6.5
    np.testing.assert_array_equal(layer, np.array([3.25, 6.5], dtype=np.float32))
    assert layer.dtype == np.float32


def test_aggregate_weighted_multiple_layers_keep_shapes():
    # Prepare: kernel (2, 2) and bias (2,), weights 2 and 2 -> plain mean.
    a = [np.ones((2, 2)), np.array([0.0, 10.0])]
    b = [np.full((2, 2), 3.0), np.array([2.0, 20.0])]
    # Execute
    kernel, bias = aggregate_weighted([(a, 2), (b, 2)])
    # Assert: mean of 1 and 3 is 2; mean of (0, 10) and (2, 20) is (1, 15)
    np.testing.assert_array_equal(kernel, np.full((2, 2), 2.0))
    np.testing.assert_array_equal(bias, [1.0, 15.0])


def test_aggregate_weighted_single_client_is_identity():
    weights = [np.array([0.1, -0.7], dtype=np.float32)]
    (layer,) = aggregate_weighted([(weights, 17)])
    np.testing.assert_array_equal(layer, weights[0])


def test_aggregate_weighted_empty_or_zero_examples_raises():
    with pytest.raises(ValueError, match="at least one"):
        aggregate_weighted([])
    with pytest.raises(ValueError, match="positive"):
        aggregate_weighted([([np.zeros(1)], 0)])


def test_aggregate_weighted_order_independent_up_to_rounding():
    rng = np.random.default_rng(0)
    results = [
        ([rng.normal(size=(3, 4)).astype(np.float32)], int(n)) for n in (5, 9, 2)
    ]
    forward = aggregate_weighted(results)[0]
    backward = aggregate_weighted(results[::-1])[0]
    np.testing.assert_allclose(forward, backward, rtol=1e-6)


def test_aggregate_metrics_weighted_by_examples():
    # Prepare: accuracy 0.5 on 10 examples and 1.0 on 30; loss only from the first.
    results = [
        (10, {"accuracy": 0.5, "loss": 2.0, "partition_id": 0}),
        (30, {"accuracy": 1.0, "partition_id": 1}),
    ]
    # Execute
    metrics = aggregate_metrics(results)
    # Assert: (10*0.5 + 30*1.0) / 40 = 0.875; loss averages over its one reporter
    assert metrics == {"accuracy": 0.875, "loss": 2.0}


def test_check_update_accepts_matching_update():
    ref = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    assert (
        check_update(ref, [np.ones((2, 3), np.float32), np.ones(3, np.float32)]) is None
    )


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ([np.zeros((2, 3), np.float32)], "1 layers, expected 2"),
        ([np.zeros((3, 2), np.float32), np.zeros(3, np.float32)], "shape (3, 2)"),
        ([np.zeros((2, 3), np.float64), np.zeros(3, np.float32)], "dtype float64"),
        ([np.full((2, 3), np.nan, np.float32), np.zeros(3, np.float32)], "NaN or Inf"),
        (
            [np.zeros((2, 3), np.float32), np.array([0, np.inf, 0], np.float32)],
            "layer 1",
        ),
    ],
)
def test_check_update_rejects_malformed(update, reason):
    ref = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    result = check_update(ref, update)
    assert result is not None and reason in result


def test_aggregate_partial_hand_computed():
    # Prepare: body array shared, head array local. Global head is 7.
    reference = [np.zeros(2, np.float32), np.full(1, 7.0, np.float32)]
    results = [
        ([np.array([2.0, 4.0], np.float32), np.empty(0, np.float32)], 1),
        ([np.array([6.0, 0.0], np.float32), np.empty(0, np.float32)], 3),
    ]
    # Execute
    body, head = aggregate_partial(reference, results, shared=[True, False])
    # Assert: (1*2 + 3*6)/4 = 5 and (1*4 + 3*0)/4 = 1; the head keeps 7
    np.testing.assert_array_equal(body, [5.0, 1.0])
    np.testing.assert_array_equal(head, [7.0])


def test_check_partial_update():
    reference = [np.zeros(2, np.float32), np.zeros(1, np.float32)]
    ok = [np.ones(2, np.float32), np.empty(0, np.float32)]
    assert check_partial_update(reference, ok, [True, False]) is None
    leaked = [np.ones(2, np.float32), np.ones(1, np.float32)]
    assert "local to the client" in check_partial_update(
        reference, leaked, [True, False]
    )
    bad = [np.ones(2, np.float32), np.empty(0, np.float32), np.ones(1)]
    assert "3 layers" in check_partial_update(reference, bad, [True, False])
    nan = [np.empty(0, np.float32), np.array([np.nan], np.float32)]
    reason = check_partial_update(reference, nan, [False, True])
    assert reason == "layer 1 contains NaN or Inf"
