"""The privacy feature's MNIST parts: tutorial CNN, server momentum, DP-SGD paths."""

import numpy as np
import pytest

from fl_app.core.config import ModelConfig, parse_run_config
from fl_app.features.privacy.server import wrap_client_dp
from fl_app.features.privacy.server_optimizer import ServerMomentum, momentum_step


def test_dp_cnn_has_the_tutorial_layers_and_parameter_count():
    from fl_app.ml.models import build_model

    # Prepare
    model = build_model(ModelConfig("dp_cnn", 1.0), (28, 28, 1), 10)
    shapes = {
        layer.name: [w.shape for w in layer.get_weights()] for layer in model.layers
    }

    # Assert: 8x8x1x16 + 16 = 1,040; 'same' 28 -> 14, pool(2, 1) -> 13;
    # 4x4x16x32 + 32 = 8,224; 'valid' stride 2: 13 -> 5, pool -> 4;
    # 4*4*32 x 32 + 32 = 16,416; 32 x 10 + 10 = 330; sum 26,010
    assert shapes["conv1"] == [(8, 8, 1, 16), (16,)]
    assert shapes["conv2"] == [(4, 4, 16, 32), (32,)]
    assert shapes["fc1"] == [(4 * 4 * 32, 32), (32,)]
    assert shapes["classifier"] == [(32, 10), (10,)]
    assert model.count_params() == 26_010


def test_momentum_step_worked_by_hand():
    # Prepare: current 1, proposed 3 (Δ = 2), velocity 4, lr 0.5, momentum 0.9
    current = [np.array([1.0], dtype=np.float32)]
    proposed = [np.array([3.0], dtype=np.float32)]
    velocity = [np.array([4.0], dtype=np.float32)]

    # Execute
    weights, new_velocity = momentum_step(current, proposed, velocity, 0.5, 0.9)
    first, first_velocity = momentum_step(current, proposed, None, 0.5, 0.9)

    # Assert: v = 0.9 * 4 + 2 = 5.6, x = 1 + 0.5 * 5.6 = 3.8; first step v = Δ
    np.testing.assert_allclose(new_velocity[0], [5.6], rtol=1e-6)
    np.testing.assert_allclose(weights[0], [3.8], rtol=1e-6)
    assert weights[0].dtype == np.float32
    np.testing.assert_allclose(first_velocity[0], [2.0])
    np.testing.assert_allclose(first[0], [2.0])


def test_server_momentum_wraps_client_dp_only_when_set():
    from flwr.server.strategy import (
        DifferentialPrivacyServerSideFixedClipping,
        FedAvg,
    )

    base = {"clientdp": "server-fixed", "clientdp-clipping-norm": 0.5}
    plain = wrap_client_dp(parse_run_config(base), FedAvg())
    stepped = wrap_client_dp(
        parse_run_config(
            {
                **base,
                "clientdp-server-learning-rate": 0.5,
                "clientdp-server-momentum": 0.9,
            }
        ),
        FedAvg(),
    )

    assert isinstance(plain, DifferentialPrivacyServerSideFixedClipping)
    assert isinstance(stepped, ServerMomentum)
    assert (stepped.learning_rate, stepped.momentum) == (0.5, 0.9)
    assert isinstance(stepped.strategy, DifferentialPrivacyServerSideFixedClipping)
    assert stepped.clipping_norm == 0.5  # what the checkpoint reads


def test_vectorized_setting_selects_tf_privacy_vectorized_optimizer():
    from fl_app.features.privacy.dpsgd import dp_optimizer
    from fl_app.features.privacy.settings import DpSgdConfig

    plain = dp_optimizer(DpSgdConfig("sgd"), 0.1)
    vectorized = dp_optimizer(DpSgdConfig("sgd", vectorized=True), 0.1)

    assert type(plain).__module__.endswith("dp_optimizer_keras")
    assert type(vectorized).__module__.endswith("dp_optimizer_keras_vectorized")


def test_server_momentum_must_be_below_one():
    from fl_app.core.config import ConfigError

    with pytest.raises(ConfigError, match="clientdp-server-momentum"):
        parse_run_config({"clientdp": "server-fixed", "clientdp-server-momentum": 1.0})


def _dp_cnn_step(implementation: str, microbatches: int, x, y, start):
    """One DP-SGD step (no noise) of dp_cnn from ``start``; return the new weights."""
    from dataclasses import replace

    from fl_app.features.privacy.settings import DpSgdConfig
    from fl_app.ml.training import batch_step, get_compiled_model, model_key

    cfg = parse_run_config(
        {"model": "dp_cnn", "client-optimizer": "sgd", "client-learning-rate": 0.5}
    )
    dp = DpSgdConfig("sgd", 0.05, 0.0, microbatches, implementation=implementation)
    key = model_key(cfg, (28, 28, 1), 10)
    key = replace(key, techniques=(*key.techniques, ("dpsgd", dp)))
    model = get_compiled_model(key)
    model.set_weights(start)
    batch_step(model, "train", x, y)(x, y)
    return model, model.get_weights()


@pytest.mark.parametrize("microbatches", [0, 4])
def test_dp_model_takes_the_same_step_as_the_dp_optimizer(microbatches):
    from fl_app.ml.models import build_model

    # Prepare: 8 images, a clip (0.05) every example's gradient exceeds, no noise
    rng = np.random.default_rng(0)
    x = rng.random((8, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    start = build_model(ModelConfig("dp_cnn", 1.0), (28, 28, 1), 10).get_weights()

    # Execute: tensorflow-privacy's DPModel, then its DP Keras optimizer
    model, by_model = _dp_cnn_step("model", microbatches, x, y, start)
    other, by_optimizer = _dp_cnn_step("optimizer", microbatches, x, y, start)

    # Assert: the model path is the DPModel class with a plain optimizer, the other
    # the DP optimizer; both take the same clipped, averaged step
    from fl_app.features.privacy.dpsgd import _dp_model_class

    assert isinstance(model, _dp_model_class())
    assert type(model.optimizer).__module__.startswith("tf_keras.src.optimizers")
    assert type(other.optimizer).__module__.endswith("dp_optimizer_keras")
    assert not isinstance(other, _dp_model_class())
    moved = sum(float(np.abs(a - b).sum()) for a, b in zip(by_model, start))
    assert moved > 1e-3
    for a, b in zip(by_model, by_optimizer, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # each of the 8 (or 4 microbatch) gradients clipped to 0.05: the step, lr 0.5
    # times their mean, is at most 0.025 long
    step = np.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(by_model, start)))
    assert step <= 0.5 * 0.05 + 1e-6


def test_vectorized_needs_the_optimizer_implementation():
    from fl_app.core.config import ConfigError

    with pytest.raises(ConfigError, match="dpsgd-vectorized.*implementation=optimizer"):
        parse_run_config({"dpsgd": "sgd", "dpsgd-vectorized": True})
    cfg = parse_run_config(
        {"dpsgd": "sgd", "dpsgd-vectorized": True, "dpsgd-implementation": "optimizer"}
    )
    assert cfg.dpsgd.vectorized and cfg.dpsgd.implementation == "optimizer"


def test_dp_sgd_stays_on_when_pruning_rebuilds_the_layers():
    from fl_app.features.privacy.dpsgd import _dp_model_class
    from fl_app.ml.training import (
        batch_step,
        get_compiled_model,
        get_model_weights,
        model_key,
    )

    # Prepare: pruning (which clones the layers) and DP-SGD with a tiny clip,
    # practically no noise, learning rate 1
    cfg = parse_run_config(
        {
            "model": "softmax",
            "pruning": "constant",
            "pruning-layers": "all",
            "dpsgd": "sgd",
            "dpsgd-l2-norm-clip": 0.01,
            "dpsgd-noise-multiplier": 1e-9,
            "client-optimizer": "sgd",
            "client-learning-rate": 1.0,
        }
    )
    key = model_key(cfg, (8, 8, 1), 10)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype(np.float32) * 5
    y = rng.integers(0, 10, 16)

    # Execute
    model = get_compiled_model(key)
    before = get_model_weights(model, key)
    batch_step(model, "train", x, y)(x, y)
    after = get_model_weights(model, key)

    # Assert: still a DPModel after pruning's rebuild, and the step is a mean of
    # gradients clipped to 0.01 (an unclipped step on these rows is far longer)
    assert isinstance(model, _dp_model_class())
    step = np.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(after, before)))
    assert 0 < step <= 0.01 + 1e-6
