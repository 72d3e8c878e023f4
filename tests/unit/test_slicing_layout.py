import numpy as np
import pytest

from fl_app.core.config import ConfigError, ModelConfig, parse_run_config
from fl_app.features.hetero.capacities import assign_capacities
from fl_app.features.hetero.settings import HeteroConfig
from fl_app.features.hetero.slicing import SlicingError, model_layout, sizes_by_width
from fl_app.ml.models import build_model
from fl_app.ml.training import keras
from strategies.hetero_slicing import AxisMap, make_windows, slice_weights


@pytest.mark.parametrize("width", [0.5, 0.25])
def test_cnn_slice_has_the_shapes_of_the_narrow_model(width):
    full = build_model(ModelConfig("cnn", 1.0), (8, 8, 1), 10)
    narrow = build_model(ModelConfig("cnn", width), (8, 8, 1), 10)
    layout, full_sizes = model_layout(full)
    assert full_sizes == {"conv1": 32, "conv2": 64, "fc1": 128}
    assert layout[4] == (
        AxisMap("conv2", 16),
        AxisMap("fc1"),
    )  # fc1 kernel after flatten
    windows = make_windows(full_sizes, sizes_by_width(full_sizes, [width])[width])
    sub = slice_weights(full.get_weights(), layout, full_sizes, windows)
    assert [w.shape for w in sub] == [w.shape for w in narrow.get_weights()]


def test_sliced_cnn_computes_the_sub_network():
    # A width-0.5 model given the slice must equal the full model with the other
    # units' outgoing weights zeroed: check on the first conv layer's output.
    full = build_model(ModelConfig("cnn", 1.0), (8, 8, 1), 10)
    narrow = build_model(ModelConfig("cnn", 0.5), (8, 8, 1), 10)
    layout, full_sizes = model_layout(full)
    windows = make_windows(full_sizes, sizes_by_width(full_sizes, [0.5])[0.5])
    narrow.set_weights(slice_weights(full.get_weights(), layout, full_sizes, windows))
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
    conv1_full = keras.Model(full.input, full.get_layer("conv1").output)(x).numpy()
    conv1_narrow = keras.Model(narrow.input, narrow.get_layer("conv1").output)(
        x
    ).numpy()
    np.testing.assert_allclose(conv1_narrow, conv1_full[..., :16], rtol=1e-6)


def test_layer_the_slicer_cannot_handle_is_named():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, name="fc1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="classifier")(x))
    with pytest.raises(SlicingError, match="'bn' \\(BatchNormalization\\)"):
        model_layout(model)


def test_assign_capacities_equal_shares_deterministic():
    cfg = HeteroConfig(((1.0, 1 / 3), (0.5, 1 / 3), (0.25, 1 / 3)), False, True)
    a = assign_capacities(cfg, 10, seed=1)
    assert a == assign_capacities(cfg, 10, seed=1)
    assert sorted(a).count(1.0) + sorted(a).count(0.5) + sorted(a).count(0.25) == 10
    assert {a.count(w) for w in (1.0, 0.5, 0.25)} == {3, 4}  # 10 over 3 shares


def test_hetero_config_validation():
    assert parse_run_config({"strategy": "hetero"}).hetero.widths == [1.0, 0.5, 0.25]
    with pytest.raises(ConfigError, match="'model-width'.*strategy=hetero"):
        parse_run_config({"strategy": "hetero", "model-width": 0.5})
    with pytest.raises(ConfigError, match="'strategy-capacities'.*'1.0:1,0.0:1'"):
        parse_run_config({"strategy": "hetero", "strategy-capacities": "1.0:1,0.0:1"})
