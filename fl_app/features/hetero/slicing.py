"""Describe a Keras model for width slicing: the server's view of its layers.

:func:`model_layout` turns the model's layers into the framework-free
:data:`strategies.hetero_slicing.Layout` the server-side slicer works on; it accepts
only layer types whose width slicing it knows and names any other. Which width each
client trains is :mod:`fl_app.features.hetero.capacities` (the client side imports
that, not this).
"""

from __future__ import annotations

import math

import tensorflow as tf

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.ml.models import Scaler, scale_units
from strategies.hetero_slicing import AxisMap

keras = tf.keras

PASS_THROUGH = (
    keras.layers.InputLayer,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.Dropout,
    keras.layers.Activation,
    keras.layers.ReLU,
    Scaler,
)


class SlicingError(ValueError):
    """The model contains a layer the width slicer cannot handle."""


def model_layout(
    model: keras.Model,
) -> tuple[list[tuple[AxisMap | None, ...]], dict[str, int]]:
    """Return the slicing layout of ``model``'s weights and each hidden group's size.

    Dense kernels are ``(in, out)``, Conv2D kernels ``(kh, kw, in, out)``; a hidden
    layer's output units form a width group named after the layer. The input features
    and the last layer's outputs (the classes) keep their full size; a Flatten repeats
    the channels once per spatial position (channels fastest).
    """
    weighted = [layer for layer in model.layers if layer.weights]
    last = weighted[-1] if weighted else None
    layout: list[tuple[AxisMap | None, ...]] = []
    full_sizes: dict[str, int] = {}
    current: AxisMap | None = None  # what the activation's last axis indexes
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D):
            units = (
                layer.units if isinstance(layer, keras.layers.Dense) else layer.filters
            )
            out = None if layer is last else AxisMap(layer.name)
            if out is not None:
                full_sizes[layer.name] = units
            spatial = (None, None) if isinstance(layer, keras.layers.Conv2D) else ()
            layout.append((*spatial, current, out))
            if layer.use_bias:
                layout.append((out,))
            current = out
        elif isinstance(layer, keras.layers.Flatten):
            if current is not None:
                repeat = math.prod(layer.input_shape[1:-1])
                current = AxisMap(current.group, current.repeat * repeat)
        elif not isinstance(layer, PASS_THROUGH) or layer.weights:
            raise SlicingError(
                f"layer '{layer.name}' ({type(layer).__name__}) cannot be "
                f"width-sliced; supported: Dense, Conv2D, Flatten, pooling, dropout, "
                f"activations"
            )
    return layout, full_sizes


def sizes_by_width(
    full_sizes: dict[str, int], widths: list[float]
) -> dict[float, dict[str, int]]:
    """Return each group's size at every width, by the model builder's own rule."""
    return {w: {g: scale_units(n, w) for g, n in full_sizes.items()} for w in widths}
