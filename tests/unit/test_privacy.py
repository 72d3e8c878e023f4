"""DP-SGD on clients and the ε accountant."""

import math
import re
from dataclasses import replace

import dp_accounting
import numpy as np
import pytest

from fl_app.client.keras_client import KerasClient
from fl_app.core.config import ConfigError, parse_run_config
from fl_app.features.privacy.client import train_local_dp
from fl_app.features.privacy.dpsgd import dp_sgd_steps, epsilon
from fl_app.features.privacy.settings import DpSgdConfig
from fl_app.ml.training import (
    get_compiled_model,
    model_key,
)
from tests.by_hand import clipped_softmax_grads, softmax_grads


def test_accountant_matches_tf_privacy_mnist_tutorial_setting():
    # N = 60000, batch 256, sigma 1.1, 60 epochs, delta 1e-5, Poisson sampling
    steps = dp_sgd_steps(60000, 256, 60)
    assert steps == math.ceil(60 / (256 / 60000))
    eps = epsilon(steps, 256 / 60000, 1.1, 1e-5)
    assert eps == pytest.approx(2.597, abs=0.01)
    import sys

    sys.skip_tf_privacy_import = True
    from tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy_lib import (
        compute_dp_sgd_privacy_statement,
    )

    statement = compute_dp_sgd_privacy_statement(
        number_of_examples=60000,
        batch_size=256,
        num_epochs=60,
        noise_multiplier=1.1,
        delta=1e-5,
        used_microbatching=False,
    )
    poisson = re.search(r"Poisson sampling \(\*\):\s+([0-9.]+)", statement)
    assert float(poisson.group(1)) == pytest.approx(eps, abs=1e-3)


def test_epsilon_equals_dp_accounting_called_directly():
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.3)),
        70,
    )
    direct = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
    assert epsilon(70, 0.1, 1.3, 1e-5) == pytest.approx(direct, rel=1e-12)
    # microbatches of several examples double the sensitivity: sigma / 2
    halved = epsilon(70, 0.1, 0.65, 1e-5)
    assert epsilon(70, 0.1, 1.3, 1e-5, microbatched=True) == halved
    assert epsilon(0, 0.1, 1.3, 1e-5) == 0.0


def dp_model(noise, clip=0.01, optimizer="sgd", lr=1.0):
    cfg = parse_run_config(
        {"model": "softmax", "client-optimizer": "sgd", "client-learning-rate": lr}
    )
    dp = DpSgdConfig(optimizer, clip, noise, 0, 1e-5, 0.0)
    key = model_key(cfg, (8, 8, 1), 10)
    key = replace(key, techniques=(*key.techniques, ("dpsgd", dp)))
    return get_compiled_model(key), cfg, dp


def test_per_example_gradients_are_clipped():
    # Prepare: SGD at lr 1, no noise, clip 0.01; 16 examples whose gradients all
    # exceed the clip and point different ways.
    model, _, _ = dp_model(noise=0.0, clip=0.01, lr=1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype(np.float32) * 5
    y = rng.integers(0, 10, 16)
    kernel, bias = model.get_weights()
    flat = x.reshape(16, 64)
    # Execute
    model.train_on_batch(x, y)
    # Assert: the step is the mean of the per-example gradients, each clipped to
    # 0.01 first (by hand) ...
    g_k, g_b, norms = clipped_softmax_grads(kernel, bias, flat, y, 0.01)
    assert norms.min() > 0.01
    new_kernel, new_bias = model.get_weights()
    np.testing.assert_allclose(new_kernel, kernel - g_k, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new_bias, bias - g_b, rtol=1e-5, atol=1e-7)
    # ... which is shorter than the clip: the clipped gradients point different
    # ways. Clipping the batch's mean gradient instead would step exactly 0.01
    # (its norm exceeds the clip), and in the mean gradient's direction.
    step = np.sqrt(((new_kernel - kernel) ** 2).sum() + ((new_bias - bias) ** 2).sum())
    assert step < 0.9 * 0.01
    m_k, m_b = softmax_grads(kernel, bias, flat, y)
    assert np.sqrt((m_k**2).sum() + (m_b**2).sum()) > 0.01


def test_noise_is_added_and_differs_between_runs():
    model, cfg, dp = dp_model(noise=1.0, clip=1.0, lr=0.1)
    rng = np.random.default_rng(1)
    from fl_app.data import ArrayDataset

    data = ArrayDataset(
        rng.normal(size=(64, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 64)
    )
    start = model.get_weights()
    results = []
    for _ in range(2):
        model.set_weights(start)
        train_local_dp(model, data, cfg.client, dp, np.random.default_rng(7))
        results.append(model.get_weights())
    # same data, same batches: only the Gaussian noise differs
    assert any(not np.array_equal(a, b) for a, b in zip(*results, strict=True))


def test_budget_exhaustion_stops_a_client():
    base = {"num-clients": 4, "clients-per-round": 4, "evaluate-clients-per-round": 4}
    cfg = parse_run_config({**base, "dpsgd": "sgd", "dpsgd-noise-multiplier": 1.0})
    client = KerasClient(cfg, 0)
    q = cfg.client.batch_size / len(client.data.train)
    steps = dp_sgd_steps(len(client.data.train), cfg.client.batch_size, 1)
    one, two = (epsilon(k * steps, q, 1.0, 1e-5) for k in (1, 2))
    budget = (one + two) / 2
    cfg = parse_run_config(
        {
            **base,
            "dpsgd": "sgd",
            "dpsgd-noise-multiplier": 1.0,
            "dpsgd-epsilon-budget": budget,
        }
    )
    client = KerasClient(cfg, 0)  # a fresh node state
    weights = client.get_parameters({})
    _, n, metrics = client.fit(weights, {"server_round": 1})
    assert n == len(client.data.train) and metrics["epsilon"] == pytest.approx(one)
    returned, n, metrics = client.fit(weights, {"server_round": 2})
    assert n == 0 and "declines to train" in metrics["declined"]
    assert metrics["epsilon"] == pytest.approx(one)  # nothing more was spent
    assert all(np.array_equal(a, b) for a, b in zip(returned, weights, strict=True))


def test_privacy_combinations_that_cannot_work_fail_clearly():
    with pytest.raises(ConfigError, match="SecAgg"):
        parse_run_config({"secagg": True, "strategy": "hetero"})
    with pytest.raises(ConfigError, match="sparse, quantized or delta"):
        parse_run_config({"secagg": True, "compression": "sparse"})
    with pytest.raises(ConfigError, match="server-side"):
        parse_run_config({"secagg": True, "clientdp": "server-fixed"})
    with pytest.raises(ConfigError, match="dense full-model"):
        parse_run_config({"clientdp": "server-fixed", "compression": "int8"})
    with pytest.raises(ConfigError, match="personalized"):
        parse_run_config({"dpsgd": "adam", "strategy": "personalized"})
    assert parse_run_config({"secagg": True, "clientdp": "client-fixed"}).secagg
