"""Compiled Keras models cached per process, and the local train/evaluate steps.

Building and compiling a Keras model and tracing its ``tf.function`` costs far more
than a training step of a small model, so each worker process keeps one compiled
model per graph-changing key and reuses it for every client it serves. Nothing may
leak between those clients: weights are always set from the message, the optimizer
state is zeroed before every local training, and shuffling uses a generator seeded
per (run seed, round, client), never global state.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf

from fl_app.config import ClientConfig, ModelConfig
from fl_app.data import ArrayDataset
from fl_app.models import build_model

log = logging.getLogger(__name__)
keras = tf.keras


@functools.cache
def configure_tensorflow() -> None:
    """Make TensorFlow deterministic; done once per process."""
    tf.config.experimental.enable_op_determinism()


def make_optimizer(cfg: ClientConfig) -> keras.optimizers.Optimizer:
    """Return the configured Keras optimizer."""
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.learning_rate)
    return keras.optimizers.Adam(learning_rate=cfg.learning_rate)


@dataclass(frozen=True)
class ModelKey:
    """Everything that changes the compiled graph; the model cache's key."""

    model: ModelConfig
    client: ClientConfig
    input_shape: tuple[int, ...]
    num_classes: int
    width: float


_MODEL_CACHE: dict[ModelKey, keras.Model] = {}


def get_compiled_model(key: ModelKey, seed: int = 0) -> keras.Model:
    """Return this process's compiled model for ``key``, building it on first use.

    ``seed`` only fixes the initial weights of a newly built model; callers that
    train set the weights they were sent first.
    """
    model = _MODEL_CACHE.get(key)
    if model is None:
        configure_tensorflow()
        keras.utils.set_random_seed(seed)
        model = build_model(key.model, key.input_shape, key.num_classes, key.width)
        model.compile(
            optimizer=make_optimizer(key.client),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        _MODEL_CACHE[key] = model
        log.debug("built and compiled %s (width %s)", key.model.name, key.width)
    return model


def clear_model_cache() -> None:
    """Drop every cached model (used by tests and benchmarks)."""
    _MODEL_CACHE.clear()
    keras.backend.clear_session()


def reset_optimizer(model: keras.Model) -> None:
    """Zero the optimizer's state (step count, moments) so no client inherits it."""
    for variable in model.optimizer.variables:
        variable.assign(tf.zeros_like(variable))


def train_local(
    model: keras.Model,
    data: ArrayDataset,
    cfg: ClientConfig,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Train ``model`` in place on ``data`` for ``cfg.local_epochs`` epochs.

    Each epoch visits the rows in an order drawn from ``rng``. Returns the loss and
    accuracy of the last epoch.
    """
    reset_optimizer(model)
    loss = accuracy = float("nan")
    for _ in range(cfg.local_epochs):
        order = rng.permutation(len(data))
        history = model.fit(
            data.x[order],
            data.y[order],
            batch_size=cfg.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        loss = float(history.history["loss"][-1])
        accuracy = float(history.history["accuracy"][-1])
    return {"train_loss": loss, "train_accuracy": accuracy}


def evaluate_model(
    model: keras.Model, data: ArrayDataset, batch_size: int = 256
) -> tuple[float, float]:
    """Return ``(loss, accuracy)`` of ``model`` on ``data``."""
    loss, accuracy = model.evaluate(data.x, data.y, batch_size=batch_size, verbose=0)
    return float(loss), float(accuracy)
