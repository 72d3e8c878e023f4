"""Personalized blending on the client: ``alpha * local + (1 - alpha) * global``.

One mechanism serves three modes (:class:`fl_app.core.config.PersonalizationConfig`):

- ``fixed`` / ``apfl`` (Deng et al., "Adaptive Personalized Federated Learning",
  2020, https://arxiv.org/abs/2003.13461): each step trains the global copy ``w`` on
  the local loss, then the local model ``v`` on the loss of the blend
  ``alpha * v + (1 - alpha) * w`` (gradient ``alpha * g``); ``apfl`` also moves
  ``alpha`` down its gradient ``<g, v - w>`` and clips it to [0, 1].
- ``fedper`` (Arivazhagan et al., 2019): ``alpha`` is 1 on the chosen layers and 0
  elsewhere, so the blend is the global body with a purely local head; one step trains
  the blend, the body's gradient updating ``w`` and the head's updating ``v``. The
  local layers never leave the client: their slots in the reply are empty arrays.

The local model and ``alpha`` live in the node's state (``context.state``), so they
persist across rounds and stay with their client, in simulation and in deployment.
The blending arithmetic is the pure numpy :func:`blend`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common import NDArrays

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.core.config import ClientConfig
from fl_app.data import ArrayDataset
from fl_app.features.personalization.settings import PersonalizationConfig
from fl_app.ml.models import build_model
from fl_app.ml.training import (
    Augmenter,
    ModelKey,
    begin_techniques,
    configure_tensorflow,
    end_techniques,
    hook_techniques,
    make_optimizer,
    reset_optimizer,
)

keras = tf.keras

STATE_LOCAL = "fl-dnn.personal.local"
STATE_CONFIG = "fl-dnn.personal"


def blend(local: NDArrays, global_: NDArrays, alphas: Sequence[float]) -> NDArrays:
    """Return ``alpha_i * local_i + (1 - alpha_i) * global_i`` for each array ``i``."""
    return [
        (a * v + (1.0 - a) * w).astype(w.dtype)
        for v, w, a in zip(local, global_, alphas, strict=True)
    ]


def local_weight_mask(model: keras.Model, local_layers: Sequence[str]) -> list[bool]:
    """Return, per array of ``model.get_weights()``, whether a local layer owns it."""
    mask = [layer.name in local_layers for layer in model.layers for _ in layer.weights]
    if len(mask) != len(model.weights):
        raise ValueError("model weights are not owned by its top-level layers")
    return mask


def weight_alphas(
    cfg: PersonalizationConfig, mask: Sequence[bool], alpha: float | tf.Variable
) -> list[float | tf.Variable]:
    """Return each array's blending weight: 0/1 by layer for fedper, else ``alpha``."""
    if cfg.mode == "fedper":
        return [1.0 if local else 0.0 for local in mask]
    return [alpha] * len(mask)


def strip_local(weights: NDArrays, mask: Sequence[bool]) -> NDArrays:
    """Replace the local-only arrays by empty ones, so they never leave the client."""
    return [
        np.empty(0, w.dtype) if local else w
        for w, local in zip(weights, mask, strict=True)
    ]


class PersonalState:
    """A client's local model and alpha in its node state (a Flower ``RecordDict``)."""

    def __init__(self, records: RecordDict) -> None:
        self.records = records

    def load(self) -> tuple[NDArrays | None, float | None]:
        """Return ``(local weights, alpha)``; ``(None, None)`` before the first fit."""
        if STATE_LOCAL not in self.records.array_records:
            return None, None
        local = self.records.array_records[STATE_LOCAL].to_numpy_ndarrays()
        alpha = float(self.records.config_records[STATE_CONFIG]["alpha"])
        return local, alpha

    def save(self, local: NDArrays, alpha: float) -> None:
        """Store the local weights and alpha for the next round."""
        self.records.array_records[STATE_LOCAL] = ArrayRecord(numpy_ndarrays=local)
        self.records.config_records[STATE_CONFIG] = ConfigRecord(
            {"alpha": float(alpha)}
        )


@dataclass
class PersonalResult:
    """What one personalized local training produced."""

    global_weights: NDArrays
    local_weights: NDArrays
    alpha: float
    loss: float
    accuracy: float
    metrics: dict[str, float] = field(default_factory=dict)  # client techniques'


class PersonalTrainer:
    """Blended training of a global copy ``w`` and a local model ``v``, per process.

    Holds three models of one architecture (``w``, ``v``, and the blend used for the
    forward pass), their optimizers and ``alpha`` as TensorFlow variables, and one
    traced training step. Every call of :meth:`train` sets all of them from its
    arguments and zeroes the optimizers, so nothing carries over between clients.
    """

    def __init__(self, key: ModelKey, cfg: PersonalizationConfig) -> None:
        configure_tensorflow()
        self.cfg = cfg

        def build() -> keras.Model:
            return build_model(key.model, key.input_shape, key.num_classes, key.width)

        self.global_model, self.local_model, self.mixed_model = (
            build(),
            build(),
            build(),
        )
        self.mask = local_weight_mask(self.global_model, cfg.local_layers)
        self.alpha = tf.Variable(cfg.alpha, dtype=tf.float32, trainable=False)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy()
        w_vars, v_vars = self.global_model.weights, self.local_model.weights
        fedper = cfg.mode == "fedper"
        # Which arrays each optimizer updates: fedper trains the body through w and the
        # head through v; fixed/apfl train all of w (own loss) and all of v (blend).
        self.w_update = (
            [not local for local in self.mask] if fedper else [True] * len(self.mask)
        )
        self.v_update = list(self.mask) if fedper else [True] * len(self.mask)
        # client techniques (FedProx ...) act on the global copy's training
        self.w_optimizer, self.techniques = hook_techniques(
            key, make_optimizer(key.client), w_vars
        )
        self.v_optimizer = make_optimizer(key.client)
        self.w_optimizer.build(
            [v for v, u in zip(w_vars, self.w_update, strict=True) if u]
        )
        self.v_optimizer.build(
            [v for v, u in zip(v_vars, self.v_update, strict=True) if u]
        )
        self._step = tf.function(self._train_step)

    def _train_step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        w_vars = self.global_model.weights
        v_vars = self.local_model.weights
        m_vars = self.mixed_model.weights
        if self.cfg.mode != "fedper":  # APFL: w learns from its own loss first
            with tf.GradientTape() as tape:
                loss_w = self.loss_fn(y, self.global_model(x, training=True))
            grads = tape.gradient(loss_w, w_vars)
            self.w_optimizer.apply_gradients(zip(grads, w_vars, strict=True))
        alphas = weight_alphas(self.cfg, self.mask, self.alpha)
        for m, v, w, a in zip(m_vars, v_vars, w_vars, alphas, strict=True):
            m.assign(a * v + (1.0 - a) * w)
        with tf.GradientTape() as tape:
            pred = self.mixed_model(x, training=True)
            loss = self.loss_fn(y, pred)
        grads = tape.gradient(loss, m_vars)
        if self.cfg.mode == "apfl":
            grad_alpha = tf.add_n(
                [
                    tf.reduce_sum(g * (v - w))
                    for g, v, w in zip(grads, v_vars, w_vars, strict=True)
                ]
            )
        self.v_optimizer.apply_gradients(
            [
                (a * g, v)
                for g, v, a, u in zip(grads, v_vars, alphas, self.v_update, strict=True)
                if u
            ]
        )
        if self.cfg.mode == "fedper":
            self.w_optimizer.apply_gradients(
                [
                    (g, w)
                    for g, w, u in zip(grads, w_vars, self.w_update, strict=True)
                    if u
                ]
            )
        if self.cfg.mode == "apfl":
            self.alpha.assign(
                tf.clip_by_value(self.alpha - self.cfg.alpha_lr * grad_alpha, 0.0, 1.0)
            )
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(pred, axis=1), tf.cast(y, tf.int64)), tf.float32)
        )
        return loss, correct

    def train(
        self,
        global_weights: NDArrays,
        local_weights: NDArrays,
        alpha: float,
        data: ArrayDataset,
        cfg: ClientConfig,
        rng: np.random.Generator,
        augment: Augmenter | None = None,
    ) -> PersonalResult:
        """Train ``w`` and ``v`` for ``cfg.local_epochs`` epochs; return both and alpha.

        The loss and accuracy are those of the personalized blend over the last epoch.
        """
        self.global_model.set_weights(global_weights)
        self.local_model.set_weights(local_weights)
        self.alpha.assign(alpha)
        reset_optimizer(self.w_optimizer, cfg.learning_rate)
        reset_optimizer(self.v_optimizer, cfg.learning_rate)
        begin_techniques(self.techniques, self.global_model.weights)
        loss_sum = correct = 0.0
        for _ in range(cfg.local_epochs):
            order = rng.permutation(len(data))
            loss_sum = correct = 0.0
            for start in range(0, len(data), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                x = data.x[idx] if augment is None else augment(data.x[idx])
                loss, hits = self._step(x, data.y[idx])
                loss_sum += float(loss) * len(idx)
                correct += float(hits)
        return PersonalResult(
            global_weights=self.global_model.get_weights(),
            local_weights=self.local_model.get_weights(),
            alpha=float(self.alpha.numpy()),
            loss=loss_sum / len(data),
            accuracy=correct / len(data),
            metrics=dict(end_techniques(self.techniques, self.global_model.weights)),
        )


@functools.cache
def get_personal_trainer(key: ModelKey, cfg: PersonalizationConfig) -> PersonalTrainer:
    """Return this process's trainer for a model and personalization setting."""
    return PersonalTrainer(key, cfg)
