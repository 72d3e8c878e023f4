"""The cached compiled model is shared by clients; nothing may leak between them."""

import numpy as np
import pytest

from fl_app.client.keras_client import KerasClient
from fl_app.client.node_data import check_partition
from fl_app.core.config import ConfigError, parse_run_config
from fl_app.ml.training import get_compiled_model

CFG = parse_run_config(
    {"num-clients": 4, "clients-per-round": 4, "evaluate-clients-per-round": 4}
)


def test_client_fit_returns_weights_count_and_metrics():
    client = KerasClient(CFG, 0)
    weights = client.get_parameters({})
    new, n, metrics = client.fit(weights, {"server_round": 1})
    assert n == len(client.data.train)
    assert [w.shape for w in new] == [w.shape for w in weights]
    assert metrics["partition_id"] == 0 and np.isfinite(metrics["train_loss"])
    assert any(not np.array_equal(a, b) for a, b in zip(new, weights))


def test_clients_share_one_compiled_model():
    a, b = KerasClient(CFG, 0), KerasClient(CFG, 1)
    assert get_compiled_model(a.key) is get_compiled_model(b.key)


def test_client_result_independent_of_previous_client_on_same_worker():
    # Prepare: the global weights, and client 1's result on a fresh process cache.
    weights = KerasClient(CFG, 1).get_parameters({})
    alone, _, _ = KerasClient(CFG, 1).fit(weights, {"server_round": 3})
    # Execute: client 0 trains first on the same cached model (moving its optimizer
    # state and weights), then client 1 trains from the same global weights.
    KerasClient(CFG, 0).fit(weights, {"server_round": 3})
    after, _, _ = KerasClient(CFG, 1).fit(weights, {"server_round": 3})
    # Assert: bit-identical, so no optimizer slot, step count or RNG state leaked.
    for x, y in zip(alone, after):
        assert x.tobytes() == y.tobytes()


def test_client_optimizer_state_reset_before_training():
    client = KerasClient(CFG, 0)
    weights = client.get_parameters({})
    client.fit(weights, {"server_round": 1})
    model = get_compiled_model(client.key)
    iterations_after_one_fit = int(model.optimizer.iterations.numpy())
    client.fit(weights, {"server_round": 1})
    assert int(model.optimizer.iterations.numpy()) == iterations_after_one_fit


@pytest.mark.parametrize("dpsgd", ["none", "sgd"])
def test_client_trains_at_the_decayed_learning_rate_of_the_round(dpsgd):
    # Plain SGD (Keras) or DP-SGD without noise (tensorflow-privacy's legacy
    # optimizer), one full-batch step per round: the step from the same weights
    # scales with the round's rate, 0.1 * 0.5**(r - 1).
    cfg = parse_run_config(
        {
            "num-clients": 4,
            "clients-per-round": 4,
            "evaluate-clients-per-round": 4,
            "model": "softmax",
            "client-optimizer": "sgd",
            "client-learning-rate": 0.1,
            "client-learning-rate-decay": 0.5,
            "client-batch-size": 1000,
            "dpsgd": dpsgd,
            "dpsgd-noise-multiplier": 1e-9,
            "dpsgd-l2-norm-clip": 1e3,
        }
    )
    client = KerasClient(cfg, 0)
    weights = client.get_parameters({})

    def step(server_round):
        new, _, _ = client.fit(weights, {"server_round": server_round})
        return np.concatenate([(a - b).ravel() for a, b in zip(new, weights)])

    first, third, first_again = step(1), step(3), step(1)
    model = get_compiled_model(client.key)
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(0.1)
    assert np.abs(first).max() > 0
    np.testing.assert_allclose(third, first / 4, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(first_again, first, rtol=1e-3, atol=1e-7)


def scored_by_hand(weights, rows, width=1.0):
    """``(loss, accuracy)`` of a freshly built model with ``weights`` on ``rows``."""
    from fl_app.core.config import ModelConfig
    from fl_app.ml.models import build_model

    model = build_model(ModelConfig(CFG.model.name, width), (8, 8, 1), 10)
    model.set_weights(weights)
    p = model(rows.x, training=False).numpy()
    loss = -np.log(np.clip(p[np.arange(len(rows.y)), rows.y], 1e-7, 1.0)).mean()
    return loss, (p.argmax(axis=1) == rows.y).mean()


def test_client_evaluate_on_validation_rows():
    # Prepare: the shared model holds other weights (a fit) than those evaluated.
    client = KerasClient(CFG, 2)
    weights = client.get_parameters({})
    client.fit(weights, {"server_round": 1})
    # Execute
    loss, n, metrics = client.evaluate(weights, {})
    # Assert: the weights sent, scored on the validation rows (not the training rows)
    by_hand = scored_by_hand(weights, client.data.val)
    assert n == len(client.data.val) and metrics["partition_id"] == 2
    assert loss == pytest.approx(by_hand[0], rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(by_hand[1])
    assert loss != pytest.approx(scored_by_hand(weights, client.data.train)[0])


def test_client_rejects_wrong_shapes_clearly():
    client = KerasClient(CFG, 0)
    bad = [np.zeros((2, 2), np.float32)] * 8
    # the message names the layer's shape and the shape received
    with pytest.raises(
        ValueError,
        match=r"weight shape \(3, 3, 1, 32\) is not compatible with provided "
        r"weight shape \(2, 2\)",
    ):
        client.fit(bad, {"server_round": 1})
    short = client.get_parameters({})[:-1]
    with pytest.raises(ValueError, match="list of length 7, but .* expecting 8"):
        client.fit(short, {"server_round": 1})


def test_check_partition_mismatch_is_clear():
    with pytest.raises(ConfigError, match="num-partitions=2.*'num-clients' is 4"):
        check_partition(CFG, 0, 2)
    with pytest.raises(ConfigError, match="partition-id=4"):
        check_partition(CFG, 4, 4)


def test_client_trains_the_width_it_is_sent():
    from fl_app.core.config import ModelConfig
    from fl_app.ml.models import build_model

    # Prepare
    client = KerasClient(CFG, 0, capacity=0.5)
    assert client.get_properties({})["capacity"] == 0.5
    narrow = build_model(ModelConfig("cnn", 0.5), (8, 8, 1), 10).get_weights()
    # Execute
    new, _, metrics = client.fit(narrow, {"server_round": 1, "width": 0.5})
    loss, n, eval_metrics = client.evaluate(narrow, {"width": 0.5})
    # Assert: the half-width model was trained and sent back at its shapes ...
    assert [w.shape for w in new] == [w.shape for w in narrow]
    assert any(not np.array_equal(a, b) for a, b in zip(new, narrow))
    assert metrics["width"] == 0.5
    # ... and evaluation scores the half-width weights it was sent (not the ones the
    # shared model holds after the fit) on the validation rows
    by_hand = scored_by_hand(narrow, client.data.val, width=0.5)
    assert n == len(client.data.val)
    assert loss == pytest.approx(by_hand[0], rel=1e-4)
    assert eval_metrics["accuracy"] == pytest.approx(by_hand[1])
