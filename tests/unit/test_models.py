import numpy as np
import pytest

from fl_app.core.config import ModelConfig
from fl_app.ml.models import build_model, scale_units


@pytest.mark.parametrize(
    ("width", "conv1", "conv2", "fc1"),
    [(1.0, 32, 64, 128), (0.5, 16, 32, 64), (0.25, 8, 16, 32)],
)
def test_cnn_shapes_per_width(width, conv1, conv2, fc1):
    model = build_model(ModelConfig("cnn", width), (8, 8, 1), 10)
    shapes = {
        layer.name: [w.shape for w in layer.get_weights()] for layer in model.layers
    }
    assert shapes["conv1"] == [(3, 3, 1, conv1), (conv1,)]
    assert shapes["conv2"] == [(3, 3, conv1, conv2), (conv2,)]
    # 8x8 pooled to 4x4: flatten gives 16 * conv2 inputs
    assert shapes["fc1"] == [(16 * conv2, fc1), (fc1,)]
    assert shapes["classifier"] == [(fc1, 10), (10,)]
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("width", [1.0, 0.5, 0.25])
def test_mlp_shapes_per_width(width):
    model = build_model(ModelConfig("mlp", width), (60,), 10)
    hidden = scale_units(200, width)
    assert [w.shape for w in model.get_weights()] == [
        (60, hidden),
        (hidden,),
        (hidden, hidden),
        (hidden,),
        (hidden, 10),
        (10,),
    ]


def test_softmax_is_one_dense_layer_on_flattened_input():
    model = build_model(ModelConfig("softmax", 1.0), (8, 8, 1), 10)
    assert [w.shape for w in model.get_weights()] == [(64, 10), (10,)]
    out = model(np.zeros((2, 8, 8, 1), np.float32)).numpy()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_cnn_rejects_vector_input_clearly():
    with pytest.raises(ValueError, match="image input"):
        build_model(ModelConfig("cnn", 1.0), (60,), 10)


def test_scale_units_bounds():
    assert scale_units(3, 0.1) == 1
    with pytest.raises(ValueError, match="width multiplier"):
        scale_units(10, 0.0)


def test_scaler_divides_by_width_in_training_only():
    model = build_model(ModelConfig("mlp", 0.5), (6,), 3, scaler=True)
    assert [layer.name for layer in model.layers if "scaler" in layer.name] == [
        "fc1_scaler",
        "fc2_scaler",
    ]
    x = np.random.default_rng(0).random((2, 6)).astype(np.float32)
    from fl_app.ml.training import keras

    fc1 = keras.Model(model.input, model.get_layer("fc1").output)
    scaled = keras.Model(model.input, model.get_layer("fc1_scaler").output)
    np.testing.assert_allclose(scaled(x, training=True), fc1(x) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(scaled(x, training=False), fc1(x), rtol=1e-6)
    # the scaler has no weights: the same arrays as the plain narrow model
    plain = build_model(ModelConfig("mlp", 0.5), (6,), 3)
    assert [w.shape for w in model.get_weights()] == [
        w.shape for w in plain.get_weights()
    ]
    # and a full-width model never gets one
    full = build_model(ModelConfig("mlp", 1.0), (6,), 3, scaler=True)
    assert not any("scaler" in layer.name for layer in full.layers)
