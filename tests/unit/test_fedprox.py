"""FedProx through the client-technique extension point (features/fedprox)."""

from dataclasses import replace

import numpy as np
import pytest

from fl_app.core.config import ConfigError, parse_run_config
from fl_app.data import ArrayDataset
from fl_app.features.privacy.client import train_local_dp
from fl_app.features.privacy.settings import DpSgdConfig
from fl_app.ml.training import (
    get_compiled_model,
    model_key,
    train_local,
)
from tests.by_hand import clipped_softmax_grads, softmax_grads
from tests.inprocess import compose_flat

SOFTMAX_SGD = {
    "model": "softmax",
    "dataset": "synthetic",
    "partition": "natural",
    "client-optimizer": "sgd",
    "client-learning-rate": 0.5,
    "client-batch-size": 8,
}


def test_fedprox_two_sgd_steps_equal_the_steps_worked_by_hand():
    mu, lr = 0.8, 0.5
    cfg = parse_run_config({**SOFTMAX_SGD, "client-proximal-mu": mu})
    key = model_key(cfg, (3,), 2)
    model = get_compiled_model(key)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    w0 = [rng.normal(size=(3, 2)).astype(np.float32), np.array([0.1, -0.2], np.float32)]
    model.set_weights(w0)
    # Two epochs of one full batch each (the order of rows does not matter).
    metrics = train_local(
        model,
        ArrayDataset(x, y),
        replace(cfg.client, local_epochs=2),
        rng,
    )
    # Step 1 starts at the global model: the proximal gradient is zero.
    g_k, g_b = softmax_grads(*w0, x, y)
    k1, b1 = w0[0] - lr * g_k, w0[1] - lr * g_b
    # Step 2: gradient + mu * (w - w_global).
    g_k, g_b = softmax_grads(k1, b1, x, y)
    k2 = k1 - lr * (g_k + mu * (k1 - w0[0]))
    b2 = b1 - lr * (g_b + mu * (b1 - w0[1]))
    kernel, bias = model.get_weights()
    np.testing.assert_allclose(kernel, k2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, b2, rtol=1e-5, atol=1e-6)
    distance = np.sqrt(((k2 - w0[0]) ** 2).sum() + ((b2 - w0[1]) ** 2).sum())
    assert metrics["proximal_distance"] == pytest.approx(distance, rel=1e-4)


def test_fedprox_pulls_local_training_towards_the_global_model():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    moved = {}
    for mu in (0.0, 1.0):
        cfg = parse_run_config(
            {**SOFTMAX_SGD, "client-proximal-mu": mu, "client-local-epochs": 5}
        )
        model = get_compiled_model(model_key(cfg, (3,), 2))
        start = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
        model.set_weights(start)
        train_local(model, ArrayDataset(x, y), cfg.client, np.random.default_rng(0))
        moved[mu] = sum(
            float(((w - s) ** 2).sum()) for w, s in zip(model.get_weights(), start)
        )
    assert 0 < moved[1.0] < 0.8 * moved[0.0]


def test_fedprox_trains_the_global_copy_of_personalized_clients():
    from fl_app.features.personalization.training import get_personal_trainer

    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = (x[:, 1] > 0).astype(int)
    results = {}
    for mu in (0.0, 1.5):
        cfg = parse_run_config(
            {
                **SOFTMAX_SGD,
                "strategy": "personalized",
                "strategy-mode": "fixed",
                "client-proximal-mu": mu,
                "client-local-epochs": 5,
            }
        )
        trainer = get_personal_trainer(model_key(cfg, (3,), 2), cfg.personalization)
        start = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
        results[mu] = trainer.train(
            start, start, 0.5, ArrayDataset(x, y), cfg.client, np.random.default_rng(0)
        )
    assert "proximal_distance" not in results[0.0].metrics
    distance = results[1.5].metrics["proximal_distance"]
    by_hand = np.sqrt(sum(float((w**2).sum()) for w in results[1.5].global_weights))
    assert distance == pytest.approx(by_hand, rel=1e-4)
    plain = np.sqrt(sum(float((w**2).sum()) for w in results[0.0].global_weights))
    assert distance < plain


def test_fedprox_with_dp_sgd_adds_the_term_to_the_clipped_gradient():
    # Prepare: DP-SGD (per-example clipping, no noise) with mu = 0.8, lr 0.5, on
    # 8 rows with batch 8: q = 1, so each of the 2 steps takes every row.
    mu, lr, clip = 0.8, 0.5, 0.005
    cfg = parse_run_config({**SOFTMAX_SGD, "client-proximal-mu": mu})
    dp = DpSgdConfig("sgd", clip, 0.0, 0, 1e-5, 0.0)
    key = model_key(cfg, (3,), 2)  # FedProx on, plus DP-SGD's optimizer
    model = get_compiled_model(
        replace(key, techniques=(*key.techniques, ("dpsgd", dp)))
    )
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 3)).astype(np.float32) * 3
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    w0 = [rng.normal(size=(3, 2)).astype(np.float32), np.array([0.1, -0.2], np.float32)]
    model.set_weights(w0)
    # Execute
    metrics = train_local_dp(
        model, ArrayDataset(x, y), replace(cfg.client, local_epochs=2), dp, rng
    )
    # Assert: step 1 starts at the global model (no proximal pull); step 2 adds
    # mu * (w1 - w0) to the clipped mean, unclipped (the term comes after DP-SGD's
    # clipping and noise, so it is not bounded by the clip).
    g_k, g_b, norms = clipped_softmax_grads(*w0, x, y, clip)
    assert norms.min() > 2 * clip  # every example is clipped: the clip matters
    k1, b1 = w0[0] - lr * g_k, w0[1] - lr * g_b
    g_k, g_b, _ = clipped_softmax_grads(k1, b1, x, y, clip)
    k2 = k1 - lr * (g_k + mu * (k1 - w0[0]))
    b2 = b1 - lr * (g_b + mu * (b1 - w0[1]))
    kernel, bias = model.get_weights()
    np.testing.assert_allclose(kernel, k2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, b2, rtol=1e-5, atol=1e-6)
    # without the term, step 2 would have ended elsewhere: the term acted
    k2_plain = k1 - lr * g_k
    assert np.abs(k2_plain - k2).max() > 100 * 1e-6
    distance = np.sqrt(((k2 - w0[0]) ** 2).sum() + ((b2 - w0[1]) ** 2).sum())
    assert metrics["proximal_distance"] == pytest.approx(distance, rel=1e-4)


def test_fedprox_config_from_hydra_and_refusals():
    cfg = parse_run_config(compose_flat(["client=fedprox"]))
    assert cfg.extra("fedprox").mu == 0.01
    cfg = parse_run_config(compose_flat(["client=fedprox", "client.proximal_mu=0"]))
    assert cfg.extra("fedprox") is None
    assert "fedprox" not in dict(cfg.extras)  # off: not among the sections
    with pytest.raises(ConfigError, match="client-proximal-mu.*-0.1.*>= 0"):
        parse_run_config({"client-proximal-mu": -0.1})
    with pytest.raises(
        ConfigError, match="client-proximal-mu.*< 1 / client-learning-rate"
    ):
        parse_run_config(
            {
                "client-optimizer": "sgd",
                "client-learning-rate": 0.5,
                "client-proximal-mu": 2.0,
            }
        )
    # Adam scales steps itself: the same mu is fine there
    assert parse_run_config(
        {"client-learning-rate": 0.5, "client-proximal-mu": 2.0}
    ).extra("fedprox")
