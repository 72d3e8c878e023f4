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
import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.core.config import ClientConfig, ModelConfig, RunConfig
from fl_app.core.techniques import (
    ClientTechnique,
    active_techniques,
    make_techniques,
    state_for,
)
from fl_app.data import ArrayDataset
from fl_app.ml.models import build_model

log = logging.getLogger(__name__)
keras = tf.keras

# A transform of each training batch (client techniques' ``batch_transform``).
Augmenter = Callable[[np.ndarray], Any]


@functools.cache
def configure_tensorflow() -> None:
    """Make TensorFlow deterministic, share GPUs, size its thread pools; once.

    Ray sets ``OMP_NUM_THREADS`` to the CPUs reserved for an actor. TensorFlow's own
    pools ignore it and default to every core, so two one-CPU workers on two cores
    would run four busy threads; follow the reservation instead.
    """
    tf.config.experimental.enable_op_determinism()
    # Several simulated clients may share a GPU (client_num_gpus < 1): each process
    # takes GPU memory as it needs it, not the whole device at its first op.
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as err:  # TensorFlow initialised the GPU already
            log.warning("could not set GPU memory growth: %s", err)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError as err:  # TensorFlow ran an op before this call
            log.warning("could not size TensorFlow's thread pools: %s", err)


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
    scaler: bool = False  # HeteroFL's training-time scaler (narrow hetero clients)
    # (name, config) of the client techniques that are on (fl_app.core.techniques):
    # they may wrap the model (pruning) or replace its optimizer (DP-SGD)
    techniques: tuple[tuple[str, Any], ...] = ()


def model_key(
    cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int
) -> ModelKey:
    """Return the compiled-model cache key of a run's global model."""
    return ModelKey(
        model=cfg.model,
        client=cfg.client,
        input_shape=input_shape,
        num_classes=num_classes,
        width=cfg.model.width,
        techniques=active_techniques(cfg.extras),
    )


_MODEL_CACHE: dict[ModelKey, keras.Model] = {}
# The client techniques hooked into each compiled model's optimizer.
_TECHNIQUES: weakref.WeakKeyDictionary[keras.Model, list[ClientTechnique]] = (
    weakref.WeakKeyDictionary()
)


def hook_techniques(
    key: ModelKey, optimizer: keras.optimizers.Optimizer, variables: list
) -> tuple[keras.optimizers.Optimizer, list[ClientTechnique]]:
    """Let each technique of ``key`` wrap the optimizer that trains ``variables``."""
    techniques = make_techniques(key.techniques)
    for technique in techniques:
        optimizer = technique.wrap_optimizer(optimizer, variables)
    return optimizer, techniques


def techniques_of(model: keras.Model) -> list[ClientTechnique]:
    """Return the client techniques hooked into a compiled model (none: [])."""
    return _TECHNIQUES.get(model, [])


def technique_optimizer(
    techniques: list[ClientTechnique], client: ClientConfig
) -> keras.optimizers.Optimizer:
    """Return the optimizer a technique puts in place of the configured one, if any."""
    chosen = [(t, o) for t in techniques if (o := t.optimizer(client)) is not None]
    if len(chosen) > 1:
        raise ValueError(
            "two client techniques replace the optimizer: "
            f"{', '.join(t.name for t, _ in chosen)}; turn one off"
        )
    return chosen[0][1] if chosen else make_optimizer(client)


def begin_techniques(
    techniques: list[ClientTechnique], variables: list, labels: np.ndarray | None = None
) -> None:
    """Start a local training for each technique (weights as the server sent).

    Each gets its state of the client training now (``client_state``) and, where
    the trainer gives them, the training ``labels``.
    """
    for technique in techniques:
        technique.begin(variables, state_for(technique.name))
        if labels is not None:
            technique.set_labels(labels)


def end_techniques(
    techniques: list[ClientTechnique], variables: list
) -> Mapping[str, float]:
    """Finish a local training; return the techniques' metrics."""
    metrics: dict[str, float] = {}
    for technique in techniques:
        metrics.update(technique.end(variables, state_for(technique.name)))
        technique.set_labels(None)
    return metrics


class LabelMaskedLoss:
    """Cross-entropy of the softmax restricted to the classes in ``mask``.

    HeteroFL's masking trick for non-IID labels (Diao et al., 2021): a client scores
    only the classes its data holds, so it does not push the other classes' outputs
    down. The mask is a variable the training step reads;
    :func:`train_local` sets it per client and restores all ones afterwards, so
    evaluation scores every class.
    """

    def __init__(self, num_classes: int) -> None:
        self.mask = tf.Variable(
            tf.ones(num_classes), trainable=False, name="label_mask"
        )
        self.__name__ = "label_masked_crossentropy"

    def __call__(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """Return the per-example masked cross-entropy.

        Works on the classifier's logits (the input of its softmax, as Keras' own
        cross-entropy does), with absent classes' logits replaced by a constant, so
        their weights get exactly zero gradient; renormalizing the probabilities
        instead leaves float rounding noise that Adam would turn into full steps.
        """
        logits = softmax_logits(y_pred)
        masked = tf.where(self.mask > 0, logits, tf.constant(-1e9, logits.dtype))
        return keras.losses.sparse_categorical_crossentropy(
            y_true, masked, from_logits=True
        )

    def set_classes(self, labels: np.ndarray | None) -> None:
        """Keep the classes in ``labels`` (``None``: every class)."""
        if labels is None:
            self.mask.assign(tf.ones_like(self.mask))
            return
        present = np.zeros(self.mask.shape, np.float32)
        present[np.unique(labels)] = 1.0
        self.mask.assign(present)


class LogitAdjustedLoss:
    """Cross-entropy of the softmax of adjusted logits: ``scale * z - shift``.

    ``scale`` and ``shift`` are per-class variables the training step reads, set per
    client before its local training and back to 1 and 0 after it (the techniques
    FedRS and FedLC set them from the client's labels). ``shift`` of 1e9 removes a
    class from the softmax.
    """

    def __init__(self, num_classes: int, name: str) -> None:
        self.scale = tf.Variable(tf.ones(num_classes), trainable=False, name="scale")
        self.shift = tf.Variable(tf.zeros(num_classes), trainable=False, name="shift")
        self.__name__ = name

    def __call__(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """Return the per-example cross-entropy of the adjusted logits."""
        logits = softmax_logits(y_pred)
        adjusted = logits * tf.cast(self.scale, logits.dtype) - tf.cast(
            self.shift, logits.dtype
        )
        return keras.losses.sparse_categorical_crossentropy(
            y_true, adjusted, from_logits=True
        )

    def set(self, scale: np.ndarray | None, shift: np.ndarray | None) -> None:
        """Set the adjustment (``None``: none, the plain cross-entropy)."""
        ones = np.ones(self.scale.shape, np.float32)
        self.scale.assign(ones if scale is None else np.asarray(scale, np.float32))
        self.shift.assign(0 * ones if shift is None else np.asarray(shift, np.float32))


class PerExampleLoss(keras.losses.Loss):
    """A loss function left unreduced, as tensorflow-privacy's optimizers need."""

    def __init__(self, fn) -> None:
        super().__init__(reduction=keras.losses.Reduction.NONE, name="per_example")
        self.fn = fn

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """Return the per-example losses."""
        return self.fn(y_true, y_pred)


def label_mask_of(model: keras.Model) -> LabelMaskedLoss | None:
    """Return the model's label-masked loss, if it was compiled with one."""
    loss = getattr(model.loss, "fn", model.loss)
    return loss if isinstance(loss, LabelMaskedLoss) else None


def softmax_logits(probs: tf.Tensor) -> tf.Tensor:
    """Return the logits a softmax output was computed from (log-probs if unknown)."""
    logits = getattr(probs, "_keras_logits", None)
    if logits is not None:
        return logits
    if not tf.executing_eagerly() and getattr(probs, "op", None) is not None:
        if probs.op.type == "Softmax":
            return probs.op.inputs[0]
    return tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0))


def get_compiled_model(key: ModelKey, seed: int = 0) -> keras.Model:
    """Return this process's compiled model for ``key``, building it on first use.

    ``seed`` only fixes the initial weights of a newly built model; callers that
    train set the weights they were sent first. With ``client.model_cache`` off,
    every call clears the Keras session and builds and compiles a new model, the way
    Flower's quickstart-tensorflow client does (kept to measure the difference).
    """
    model = _MODEL_CACHE.get(key)
    if model is None:
        configure_tensorflow()
        if not key.client.model_cache:
            keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        model = build_model(
            key.model, key.input_shape, key.num_classes, key.width, key.scaler
        )
        techniques = make_techniques(key.techniques)
        # e.g. pruning wraps the layers; DP-SGD's DPModel last (a class, which a
        # rebuild of the layers would drop)
        for technique in sorted(techniques, key=lambda t: t.wraps_last):
            model = technique.wrap_model(model)
        loss = (
            LabelMaskedLoss(key.num_classes)
            if key.client.label_mask
            else keras.losses.sparse_categorical_crossentropy
        )
        for technique in techniques:  # e.g. FedRS, FedLC: calibrated logits
            loss = technique.wrap_loss(loss, key.num_classes)
        if any(technique.per_example_loss for technique in techniques):
            loss = PerExampleLoss(loss)  # DP optimizers clip per-example losses
        optimizer = technique_optimizer(techniques, key.client)
        for technique in techniques:
            optimizer = technique.wrap_optimizer(optimizer, model.trainable_variables)
        _TECHNIQUES[model] = techniques
        model.compile(
            optimizer=optimizer,
            loss=loss,
            metrics=["accuracy"],
        )
        if key.client.model_cache:
            _MODEL_CACHE[key] = model
        # the seeded initial model, before any training (compressed downloads)
        _INITIAL[key] = [np.array(w) for w in get_model_weights(model, key)]
        log.debug("built and compiled %s (width %s)", key.model.name, key.width)
    return model


def set_model_weights(model: keras.Model, key: ModelKey, weights: list) -> None:
    """Set plain arrays into ``model`` (a technique's own way where it has one)."""
    for technique in techniques_of(model):
        if technique.set_weights(model, weights):
            return
    model.set_weights(weights)


def get_model_weights(model: keras.Model, key: ModelKey) -> list[np.ndarray]:
    """Return the plain arrays of ``model`` (a technique's own way where it has one)."""
    for technique in techniques_of(model):
        weights = technique.get_weights(model)
        if weights is not None:
            return weights
    return model.get_weights()


_SHAPES: dict[ModelKey, list[tuple[int, ...]]] = {}
_INITIAL: dict[ModelKey, list[np.ndarray]] = {}


def initial_weights(key: ModelKey) -> list[np.ndarray] | None:
    """Return the plain arrays ``key``'s model had when this process built it.

    The model is built right after seeding (:func:`get_compiled_model`), so these
    are the run's seeded initial model, whatever training did to it since.
    """
    return _INITIAL.get(key)


def weight_shapes(model: keras.Model, key: ModelKey) -> list[tuple[int, ...]]:
    """Return the shapes of ``model``'s plain arrays, worked out once per key."""
    shapes = _SHAPES.get(key)
    if shapes is None:
        shapes = _SHAPES[key] = [w.shape for w in get_model_weights(model, key)]
    return shapes


def clear_model_cache() -> None:
    """Drop every cached model (used by tests and benchmarks)."""
    _MODEL_CACHE.clear()
    _SHAPES.clear()
    _INITIAL.clear()
    keras.backend.clear_session()


def reset_optimizer(
    optimizer: keras.optimizers.Optimizer, learning_rate: float | None = None
) -> None:
    """Zero an optimizer's state (step count, moments) so no client inherits it.

    ``learning_rate``, if given, becomes the optimizer's rate (a variable the compiled
    step reads, in Keras and in the legacy optimizers alike, so nothing retraces).
    """
    for variable in optimizer_variables(optimizer):
        variable.assign(tf.zeros_like(variable))
    if learning_rate is not None:
        optimizer.learning_rate = learning_rate


def optimizer_variables(optimizer: keras.optimizers.Optimizer) -> list:
    """Return an optimizer's state variables (step count, moments)."""
    variables = optimizer.variables
    if callable(variables):  # legacy optimizers (tensorflow-privacy's DP ones)
        variables = variables()
    return list(variables)


def train_local(
    model: keras.Model,
    data: ArrayDataset,
    cfg: ClientConfig,
    rng: np.random.Generator,
    augment: Augmenter | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on ``data`` for ``cfg.local_epochs`` epochs.

    Each epoch visits the rows in an order drawn from ``rng``; ``augment``, if given,
    transforms each training batch. With ``cfg.label_mask`` the loss covers only the
    classes in ``data``. Returns the loss and accuracy of the last epoch.
    """
    reset_optimizer(model.optimizer, cfg.learning_rate)
    techniques = techniques_of(model)
    begin_techniques(techniques, model.trainable_variables, data.y)
    mask = label_mask_of(model)
    if mask is not None:
        mask.set_classes(data.y)
    logs: dict[str, float] = {}
    try:
        for _ in range(cfg.local_epochs):
            order = rng.permutation(len(data))
            logs = run_batches(
                "train", model, data.take(order), cfg.batch_size, augment
            )
    finally:
        if mask is not None:
            mask.set_classes(None)
    return {
        "train_loss": logs["loss"],
        "train_accuracy": logs["accuracy"],
        **end_techniques(techniques, model.trainable_variables),
    }


def run_batches(
    kind: str,
    model: keras.Model,
    data: ArrayDataset,
    batch_size: int,
    augment: Augmenter | None = None,
) -> dict:
    """Run ``model``'s ``kind`` step (``"train"`` or ``"test"``) over ``data`` in order.

    The compiled metrics accumulate over the batches (weighted by batch size), so the
    result is the epoch's mean, as ``fit``/``evaluate`` report it. Each batch goes
    through :func:`batch_step` (the model's own ``train_step``/``test_step``, compiled
    once): no data adapter and callbacks per call as in ``fit``/``evaluate``, which
    cost more than the steps of a small model, and no per-batch dataset and
    synchronisation as in ``train_on_batch``, which cost a third of a step of the
    MNIST CNN.
    """
    model.reset_metrics()
    step = batch_step(model, kind, data.x, data.y)
    logs: dict = {}
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size]
        y = data.y[start : start + batch_size]
        logs = step(x if augment is None else augment(x), y)
    return {key: float(value) for key, value in logs.items()}


# model -> {(kind, shapes, dtypes): its compiled step}; weak, so models can go
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def batch_step(model: keras.Model, kind: str, x: np.ndarray, y: np.ndarray):
    """Return the compiled ``train_step``/``test_step`` of ``model`` for these rows.

    One ``tf.function`` per model, step kind and row shape, with the batch dimension
    left open, so batches of any size (a last partial batch, Poisson-sampled DP-SGD
    batches) reuse one trace. It calls the very step ``train_on_batch`` and
    ``test_on_batch`` call, with the compiled loss, optimizer and metrics; it returns
    the metrics' running results as tensors (read them once, at the end).
    """
    steps = _STEPS.setdefault(model, {})
    key = (kind, x.shape[1:], x.dtype.str, y.shape[1:], y.dtype.str)
    step = steps.get(key)
    if step is None:
        ref = weakref.ref(model)  # the step must not keep the model alive

        def run(bx, by):
            m = ref()
            return (m.train_step if kind == "train" else m.test_step)((bx, by))

        step = steps[key] = tf.function(
            run,
            input_signature=[
                tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype)),
                tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype)),
            ],
        )
    return step


def evaluate_model(
    model: keras.Model, data: ArrayDataset, batch_size: int = 1024
) -> tuple[float, float]:
    """Return ``(loss, accuracy)`` of ``model`` on ``data``."""
    logs = run_batches("test", model, data, batch_size)
    return logs["loss"], logs["accuracy"]
