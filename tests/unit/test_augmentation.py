import numpy as np
import pytest

from fl_app.core.config import ConfigError, parse_run_config
from fl_app.core.techniques import check_input
from fl_app.data import ArrayDataset
from fl_app.features.augmentation.augmenter import make_augmenter
from fl_app.features.augmentation.settings import AugmentationConfig
from fl_app.features.augmentation.technique import Augmentation
from fl_app.ml.models import build_model
from fl_app.ml.training import (
    get_compiled_model,
    model_key,
    train_local,
)

LIGHT = AugmentationConfig("light", 0.05, 0.1, 0.1, "none", 0.0)
NONE = AugmentationConfig("none", 0.0, 0.0, 0.0, "none", 0.0)


def images(n=8, seed=0):
    return np.random.default_rng(seed).random((n, 8, 8, 1)).astype(np.float32)


def test_augmenter_off_is_none():
    assert make_augmenter(NONE, seed=1) is None


def test_augmenter_changes_batch_and_is_seeded():
    x = images()
    a = make_augmenter(LIGHT, seed=1)(x).numpy()
    b = make_augmenter(LIGHT, seed=1)(x).numpy()
    c = make_augmenter(LIGHT, seed=2)(x).numpy()
    assert a.shape == x.shape and not np.allclose(a, x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


class InOrder:
    """A stand-in for the shuffling generator that keeps the rows in order."""

    def permutation(self, n):
        return np.arange(n)


def test_augmentation_runs_in_training_only():
    # Prepare: the real augmenter behind a spy that keeps what it gets and gives.
    cfg = parse_run_config({})
    model = get_compiled_model(model_key(cfg, (8, 8, 1), 10))
    start = model.get_weights()
    data = ArrayDataset(images(40), np.arange(40) % 10)
    augmenter = make_augmenter(LIGHT, seed=1)
    given, returned = [], []

    def spy(batch):
        given.append(np.array(batch))
        returned.append(augmenter(batch).numpy())
        return returned[-1]

    # Execute: one epoch with augmentation (batches of 32 + 8 rows) ...
    train_local(model, data, cfg.client, np.random.default_rng(0), spy)
    augmented = model.get_weights()
    # ... and one without, on the very rows the augmenter returned, in that order
    model.set_weights(start)
    order = np.random.default_rng(0).permutation(40)  # train_local's shuffle
    rows = ArrayDataset(np.concatenate(returned), data.y[order])
    train_local(model, rows, cfg.client, InOrder())
    by_hand = model.get_weights()

    # Assert: the augmenter got every training row once, in the epoch's order ...
    assert [len(b) for b in given] == [32, 8]
    np.testing.assert_array_equal(np.concatenate(given), data.x[order])
    # ... returned changed images of the same shape (labels are not its business)
    assert all(
        r.shape == g.shape and not np.allclose(r, g) for r, g in zip(returned, given)
    )
    # ... and the model trained on what it returned, each row with its own label
    for a, b in zip(augmented, by_hand, strict=True):
        assert a.tobytes() == b.tobytes()
    assert any(not np.array_equal(a, b) for a, b in zip(augmented, start))
    # The augmentation is not part of the model: evaluation and the weights sent
    # never see it (the compiled model has the plain model's layers only).
    plain = build_model(cfg.model, (8, 8, 1), 10)
    assert [layer.name for layer in model.layers] == [
        layer.name for layer in plain.layers
    ]


def test_augmented_training_is_reproducible_and_differs_from_plain_training():
    # Prepare
    cfg = parse_run_config({"model": "softmax"})
    model = get_compiled_model(model_key(cfg, (8, 8, 1), 10))
    start = model.get_weights()
    data = ArrayDataset(images(40), np.arange(40) % 10)

    def trained(augment):
        model.set_weights(start)
        train_local(model, data, cfg.client, np.random.default_rng(0), augment)
        return model.get_weights()

    # Execute
    first = trained(make_augmenter(LIGHT, seed=1))
    again = trained(make_augmenter(LIGHT, seed=1))
    other_seed = trained(make_augmenter(LIGHT, seed=2))
    plain = trained(None)
    # Assert: the same seed trains the same weights; another seed, or none, not
    for a, b in zip(first, again, strict=True):
        assert a.tobytes() == b.tobytes()
    assert any(not np.allclose(a, b) for a, b in zip(first, other_seed))
    assert any(not np.allclose(a, b) for a, b in zip(first, plain))


def test_image_augmentation_on_vectors_fails_clearly():
    with pytest.raises(ValueError, match="transforms images.*\\(60,\\)"):
        check_input([("augmentation", LIGHT)], (60,))
    check_input([], (60,))  # augmentation off: not an active technique
    assert not Augmentation.enabled(NONE) and Augmentation.enabled(LIGHT)
    with pytest.raises(ConfigError, match="client-augmentation.*synthetic"):
        parse_run_config(
            {
                "dataset": "synthetic",
                "partition": "natural",
                "model": "mlp",
                "client-augmentation": "light",
                "client-augmentation-zoom": 0.1,
            }
        )


def test_augmented_client_configures_tensorflow_before_first_op(monkeypatch):
    # Ray sets OMP_NUM_THREADS for an actor; the client must size TensorFlow's pools
    # before its augmentation layers run the first op (TensorFlow refuses after).
    from fl_app.client.keras_client import KerasClient
    from fl_app.ml.training import configure_tensorflow

    calls = []
    monkeypatch.setattr(
        "fl_app.client.keras_client.configure_tensorflow", lambda: calls.append(1)
    )
    cfg = parse_run_config(
        {"client-augmentation": "light", "client-augmentation-zoom": 0.1}
    )
    KerasClient(cfg, 0)
    assert calls == [1]
    # Called after TensorFlow has run ops (as here), it warns instead of failing.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    configure_tensorflow.cache_clear()
    configure_tensorflow()


def test_client_trains_on_augmented_batches_seeded_per_round():
    # Prepare: the same client and global weights with augmentation off and on.
    from fl_app.client.keras_client import KerasClient

    base = {
        "num-clients": 4,
        "clients-per-round": 4,
        "evaluate-clients-per-round": 4,
        "model": "softmax",
    }
    light = {"client-augmentation": "light", "client-augmentation-zoom": 0.1}
    plain = KerasClient(parse_run_config(base), 0)
    weights = plain.get_parameters({})
    augmented = KerasClient(parse_run_config({**base, **light}), 0)

    def fit(client, server_round):
        new, _, _ = client.fit(weights, {"server_round": server_round})
        return new

    # Execute
    without, first, again = fit(plain, 1), fit(augmented, 1), fit(augmented, 1)
    # Assert: augmentation changes what the client trains on; its seed comes from
    # (run seed, round, partition), so the same round again trains the same weights
    assert any(not np.allclose(a, b) for a, b in zip(first, without))
    for a, b in zip(first, again, strict=True):
        assert a.tobytes() == b.tobytes()
