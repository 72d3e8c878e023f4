import numpy as np
import pytest

from fl_app.core.config import AugmentationConfig, ConfigError, parse_run_config
from fl_app.data import ArrayDataset
from fl_app.features.augmentation.augmenter import check_image_input, make_augmenter
from fl_app.ml.training import (
    clear_model_cache,
    evaluate_model,
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


def test_augmentation_runs_in_training_only():
    # Prepare: a spy augmenter that counts the batches it sees.
    clear_model_cache()
    cfg = parse_run_config({})
    model = get_compiled_model(model_key(cfg, (8, 8, 1), 10))
    data = ArrayDataset(images(40), np.arange(40) % 10)
    seen = []

    def spy(batch):
        seen.append(len(batch))
        return batch

    # Execute / Assert: training passes every batch through it (32 + 8 rows) ...
    train_local(model, data, cfg.client, np.random.default_rng(0), spy)
    assert seen == [32, 8]
    # ... while the model has no augmentation layers and evaluation is unchanged by it
    assert not any("random" in layer.name for layer in model.layers)
    before = evaluate_model(model, data)
    assert evaluate_model(model, data) == before
    clear_model_cache()


def test_image_augmentation_on_vectors_fails_clearly():
    with pytest.raises(ValueError, match="transforms images.*\\(60,\\)"):
        check_image_input(LIGHT, (60,))
    check_image_input(NONE, (60,))
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
