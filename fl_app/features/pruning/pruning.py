"""Magnitude pruning with tensorflow-model-optimization, under the server's mask.

The server owns the mask (``strategies.transport.ServerPruner``): after each
aggregation it keeps the largest magnitudes of every Conv2D/Dense kernel at the
sparsity the schedule gives for the next round, so the model it sends is sparse.
Clients train that model through tfmot's ``prune_low_magnitude`` wrappers, whose
masks are set from the received kernels' nonzero entries, so every client trains
under the same mask and its upload is as sparse as the download. The wrappers use
:class:`HoldMask`, a schedule that never recomputes a mask: clients that pruned on
their own local weights would pick different masks, and their average would be
dense again.

The schedule itself is tfmot's ``PolynomialDecay`` or ``ConstantSparsity``, with
steps counted in server rounds (:func:`sparsity_by_round`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
    PruneLowMagnitude,  # not exported by tfmot's public API
)

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.features.pruning.settings import PruningConfig

keras = tf.keras
sparsity_api = tfmot.sparsity.keras
PRUNABLE_LAYERS = (keras.layers.Conv2D, keras.layers.Dense)


class HoldMask(sparsity_api.PruningSchedule):
    """A pruning schedule that never updates the mask (it is set from outside)."""

    def __call__(self, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Never prune; the sparsity value is unused."""
        return tf.constant(False), tf.constant(0.0, tf.float32)

    def get_config(self) -> dict:
        """Return the schedule config (for saving)."""
        return {"class_name": type(self).__name__, "config": {}}


def tfmot_schedule(cfg: PruningConfig) -> sparsity_api.PruningSchedule:
    """Return the tfmot schedule of ``cfg``, counting server rounds as steps."""
    if cfg.schedule == "polynomial":
        return sparsity_api.PolynomialDecay(
            initial_sparsity=cfg.initial_sparsity,
            final_sparsity=cfg.final_sparsity,
            begin_step=cfg.begin_round,
            end_step=cfg.end_round,
            frequency=cfg.frequency,
        )
    return sparsity_api.ConstantSparsity(
        cfg.final_sparsity, begin_step=cfg.begin_round, frequency=cfg.frequency
    )


def sparsity_by_round(cfg: PruningConfig, num_rounds: int) -> dict[int, float]:
    """Return ``{round: sparsity}`` for the rounds the schedule prunes before.

    Round ``r``'s entry is what the server prunes the model to before sending it for
    round ``r`` (round 1: the initial model).
    """
    schedule = tfmot_schedule(cfg)
    result = {}
    for server_round in range(1, num_rounds + 1):
        should_prune, sparsity = schedule(tf.constant(server_round, tf.int64))
        if bool(should_prune):
            result[server_round] = round(float(sparsity), 6)
    return result


def prunable_arrays(model: keras.Model, layers: str = "all") -> list[bool]:
    """For each array of a plain model's weights, whether the server prunes it.

    ``layers``: ``"all"`` Conv2D/Dense kernels, ``"auto"`` all but the first and the
    last such layer (small layers that pruning hurts most: measured in
    docs/architecture.md), or comma-separated layer names.
    """
    candidates = [
        layer.name for layer in model.layers if isinstance(layer, PRUNABLE_LAYERS)
    ]
    if layers == "all":
        chosen = set(candidates)
    elif layers == "auto":
        chosen = set(candidates[1:-1])
    else:
        chosen = {name.strip() for name in layers.split(",") if name.strip()}
        unknown = chosen - set(candidates)
        if unknown:
            raise ValueError(
                f"cannot prune {sorted(unknown)}: the Conv2D/Dense layers of "
                f"{model.name} are {candidates}"
            )
    if not chosen:
        raise ValueError(f"pruning-layers={layers!r} selects no layer of {model.name}")
    owner = {id(w): layer for layer in model.layers for w in layer.weights}
    return [owner[id(w)].name in chosen and _is_kernel(w) for w in model.weights]


def _is_kernel(weight: tf.Variable) -> bool:
    return weight.name.split("/")[-1].startswith("kernel")


def wrap_for_pruning(model: keras.Model) -> keras.Model:
    """Return a copy of ``model`` whose Conv2D/Dense layers are pruning wrappers.

    The copy holds the same layer names and, through :func:`get_plain_weights`, the
    same array layout as ``model``.
    """

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        fresh = type(layer).from_config(layer.get_config())
        if isinstance(layer, PRUNABLE_LAYERS):
            return sparsity_api.prune_low_magnitude(fresh, pruning_schedule=HoldMask())
        return fresh

    wrapped = keras.models.clone_model(model, clone_function=clone)
    plain = model.get_weights()
    set_plain_weights(wrapped, plain)
    if [w.shape for w in get_plain_weights(wrapped)] != [w.shape for w in plain]:
        raise ValueError(f"cannot wrap {model.name} for pruning: its arrays reorder")
    return wrapped


def _is_wrapper(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, PruneLowMagnitude)


def set_plain_weights(model: keras.Model, weights: list[np.ndarray]) -> None:
    """Set a wrapped model from plain arrays; masks keep the nonzero kernel entries.

    Also sets each wrapper's step counter to 1, which tfmot's wrapper requires to be
    positive in training (its ``UpdatePruningStep`` callback does it under ``fit``).
    """
    pos = 0
    for layer in model.layers:
        inner = layer.layer if _is_wrapper(layer) else layer
        count = len(inner.weights)
        inner.set_weights(weights[pos : pos + count])
        pos += count
        if _is_wrapper(layer):
            for weight, mask, _threshold in layer.pruning_vars:
                mask.assign(tf.cast(tf.not_equal(weight, 0), mask.dtype))
            layer.pruning_step.assign(1)
    if pos != len(weights):
        raise ValueError(f"model has {pos} arrays, received {len(weights)}")


def get_plain_weights(model: keras.Model) -> list[np.ndarray]:
    """Return the stripped arrays: each wrapped kernel times its mask.

    tfmot masks a kernel before each forward pass, but the optimizer step after it
    moves masked entries too; multiplying by the mask gives what ``strip_pruning``
    would after a final masking, without cloning the model.
    """
    out: list[np.ndarray] = []
    for layer in model.layers:
        if not _is_wrapper(layer):
            out.extend(layer.get_weights())
            continue
        masks = {id(w): m for w, m, _ in layer.pruning_vars}
        for weight in layer.layer.weights:
            value = weight.numpy()
            mask = masks.get(id(weight))
            out.append(value if mask is None else value * mask.numpy())
    return out


def mask_agreement(
    model: keras.Model, weights: list[np.ndarray], flags: list[bool]
) -> bool:
    """Whether the wrappers' masks equal the nonzero pattern of ``weights``' kernels.

    ``flags`` marks the prunable arrays of ``weights`` (:func:`prunable_arrays`).
    """
    kernels = [w for w, f in zip(weights, flags, strict=True) if f]
    masks = [
        m.numpy()
        for layer in model.layers
        if _is_wrapper(layer)
        for _, m, _ in layer.pruning_vars
    ]
    return len(kernels) == len(masks) and all(
        np.array_equal(m != 0, k != 0) for m, k in zip(masks, kernels, strict=True)
    )
