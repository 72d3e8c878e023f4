"""Keras model builders with a width multiplier and explicitly named layers.

Hidden widths scale with ``width`` (``units = max(1, int(round(units * width)))``,
as Keras' MobileNet scales filters with ``alpha``); the input and the class layer keep
their size, so a width-r model is a slice of the width-1 model. Layer names are
stable across widths so masks and slices can be keyed by name.
"""

from __future__ import annotations

import tensorflow as tf

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.core.config import MODEL_LAYERS, ModelConfig

keras = tf.keras


def scale_units(units: int, width: float) -> int:
    """Return the hidden width of a layer of ``units`` at width multiplier ``width``."""
    if not 0 < width <= 1:
        raise ValueError(f"width multiplier must be in (0, 1], received {width!r}")
    return max(1, int(round(units * width)))


class Scaler(keras.layers.Layer):
    """HeteroFL's scaler: divide activations by the width, in training only.

    A width-r sub-network sums about r times fewer inputs into each unit than the full
    network; scaling its hidden activations by 1/r while it trains keeps the shared
    weights calibrated for the full model (Diao et al., 2021). Inference is unscaled.
    """

    def __init__(self, rate: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Scale by ``1 / rate`` when training."""
        return inputs / self.rate if training else inputs

    def get_config(self) -> dict:
        """Return the layer config (for saving)."""
        return {**super().get_config(), "rate": self.rate}


def _hidden(x: tf.Tensor, layer: keras.layers.Layer, width: float, scaler: bool):
    x = layer(x)
    if scaler and width < 1:
        x = Scaler(width, name=f"{layer.name}_scaler")(x)
    return x


def build_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: float = 1.0,
    scaler: bool = False,
) -> keras.Model:
    """Small CNN for images: two 3x3 convolutions, max pooling, one dense layer.

    ``scaler`` adds a :class:`Scaler` after each hidden layer of a narrow model.
    """
    if len(input_shape) != 3:
        raise ValueError(
            f"build_cnn needs image input (h, w, c), received {input_shape}"
        )
    conv1, conv2, fc1, classifier = MODEL_LAYERS["cnn"]
    inputs = keras.Input(shape=input_shape, name="input")
    conv = keras.layers.Conv2D
    x = _hidden(
        inputs,
        conv(scale_units(32, width), 3, padding="same", activation="relu", name=conv1),
        width,
        scaler,
    )
    x = _hidden(
        x,
        conv(scale_units(64, width), 3, padding="same", activation="relu", name=conv2),
        width,
        scaler,
    )
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = _hidden(
        x,
        keras.layers.Dense(scale_units(128, width), activation="relu", name=fc1),
        width,
        scaler,
    )
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=classifier)(x)
    return keras.Model(inputs, outputs, name="cnn")


def build_fedavg_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: float = 1.0,
    scaler: bool = False,
) -> keras.Model:
    """Build the MNIST CNN of McMahan et al. (2017), section 3 ("CNN").

    A 5x5 convolution with 32 channels, 2x2 max pooling, a 5x5 convolution with 64
    channels, 2x2 max pooling, a fully connected layer of 512 ReLU units and a
    softmax layer. Convolutions pad ``same`` (the paper does not say; it is the
    reading that gives its 1,663,370 parameters on 28x28 images: 7x7x64 inputs to
    the dense layer). Widths at 1: 32, 64, 512; ``scaler`` as in :func:`build_cnn`.

    Communication-Efficient Learning of Deep Networks from Decentralized Data,
    AISTATS 2017, https://arxiv.org/abs/1602.05629
    """
    if len(input_shape) != 3:
        raise ValueError(
            f"build_fedavg_cnn needs image input (h, w, c), received {input_shape}"
        )
    conv1, conv2, fc1, classifier = MODEL_LAYERS["fedavg_cnn"]
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for index, (name, filters) in enumerate(((conv1, 32), (conv2, 64)), start=1):
        conv = keras.layers.Conv2D(
            scale_units(filters, width), 5, padding="same", activation="relu", name=name
        )
        x = _hidden(x, conv, width, scaler)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{index}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = _hidden(
        x,
        keras.layers.Dense(scale_units(512, width), activation="relu", name=fc1),
        width,
        scaler,
    )
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=classifier)(x)
    return keras.Model(inputs, outputs, name="fedavg_cnn")


def build_dp_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: float = 1.0,
    scaler: bool = False,
) -> keras.Model:
    """Build the small CNN of tensorflow-privacy's MNIST DP-SGD tutorial.

    An 8x8 convolution with 16 channels, stride 2, padding ``same``; 2x2 max pooling
    with stride 1; a 4x4 convolution with 32 channels, stride 2, padding ``valid``;
    2x2 max pooling with stride 1; a dense layer of 32 ReLU units and the class layer
    (26,010 parameters on 28x28x1 images), as in ``tutorials/
    mnist_dpsgd_tutorial_keras.py`` of https://github.com/tensorflow/privacy (that
    model ends in logits; this one ends in a softmax like every builder here).
    Widths at 1: 16, 32, 32; ``scaler`` as in :func:`build_cnn`. On images too small
    for the second convolution unpadded (``digits``' 8x8) it pads ``same``.
    """
    if len(input_shape) != 3:
        raise ValueError(
            f"build_dp_cnn needs image input (h, w, c), received {input_shape}"
        )
    conv1, conv2, fc1, classifier = MODEL_LAYERS["dp_cnn"]
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    convs = ((conv1, 16, 8, "same"), (conv2, 32, 4, "valid"))
    for index, (name, filters, size, padding) in enumerate(convs, start=1):
        if padding == "valid" and min(x.shape[1:3]) < size:
            padding = "same"  # too small for a valid convolution (8x8 digits)
        conv = keras.layers.Conv2D(
            scale_units(filters, width),
            size,
            strides=2,
            padding=padding,
            activation="relu",
            name=name,
        )
        x = _hidden(x, conv, width, scaler)
        x = keras.layers.MaxPooling2D(2, strides=1, name=f"pool{index}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = _hidden(
        x,
        keras.layers.Dense(scale_units(32, width), activation="relu", name=fc1),
        width,
        scaler,
    )
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=classifier)(x)
    return keras.Model(inputs, outputs, name="dp_cnn")


def build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: float = 1.0,
    scaler: bool = False,
) -> keras.Model:
    """Two hidden ReLU layers (200 units at width 1) on flattened input.

    On 28x28 images this is the "2NN" of McMahan et al. (2017): 784-200-200-10,
    199,210 parameters.
    """
    *hidden, classifier = MODEL_LAYERS["mlp"]
    inputs = keras.Input(shape=input_shape, name="input")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for name in hidden:
        dense = keras.layers.Dense(
            scale_units(200, width), activation="relu", name=name
        )
        x = _hidden(x, dense, width, scaler)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=classifier)(x)
    return keras.Model(inputs, outputs, name="mlp")


def build_softmax(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: float = 1.0,
    scaler: bool = False,
) -> keras.Model:
    """Multinomial logistic regression (no hidden layer: no width, no scaler)."""
    del width, scaler
    (classifier,) = MODEL_LAYERS["softmax"]
    inputs = keras.Input(shape=input_shape, name="input")
    x = keras.layers.Flatten(name="flatten")(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=classifier)(x)
    return keras.Model(inputs, outputs, name="softmax")


# one builder per model the config knows (MODEL_LAYERS: its weighted layers' names)
BUILDERS = {
    "cnn": build_cnn,
    "mlp": build_mlp,
    "softmax": build_softmax,
    "fedavg_cnn": build_fedavg_cnn,
    "dp_cnn": build_dp_cnn,
}
if set(BUILDERS) != set(MODEL_LAYERS):
    raise ImportError(
        f"fl_app.ml.models builds {sorted(BUILDERS)} but fl_app.core.config."
        f"MODEL_LAYERS names {sorted(MODEL_LAYERS)}: declare a new model in both"
    )


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    width: float | None = None,
    scaler: bool = False,
) -> keras.Model:
    """Build (not compile) the configured model; ``width`` overrides ``cfg.width``."""
    return BUILDERS[cfg.name](
        input_shape, num_classes, cfg.width if width is None else width, scaler
    )
