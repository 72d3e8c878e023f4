"""Split training: one Keras model cut at a named layer into an edge and a cloud part.

:func:`split_model` cuts a model built by :mod:`fl_app.ml.models` after layer ``cut``:
the client part (edge) maps the input to the cut activations, the server part (cloud)
maps them to the class probabilities. Both parts reuse the full model's layer objects,
so their weights *are* the full model's (client part first, in the full model's
order) and the joined model is evaluated and saved as any other.

The training steps here are the numerical core of the three modes of
``split=...``; the message flow around them is :mod:`fl_app.features.split.client`
(edge) and
:mod:`fl_app.features.split.server` (cloud):

- :class:`ClientPart` runs the client part forward, and backward from the gradient
  the server returns at the cut (``splitfed_v1`` / ``splitfed_v2``), or trains it
  with a small auxiliary head on its own labels (``local_loss``);
- :class:`ServerPart` trains the server part on cut activations and labels, and
  returns the gradient of the loss at the cut.

The loss is the batch mean of the cross-entropy, as in whole-model training, so one
split step (client forward, server step, client backward with SGD) equals one
whole-model SGD step on the same batch (a unit test checks it).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.core.config import MODEL_LAYERS
from fl_app.features.split.settings import SplitConfig
from fl_app.ml.models import build_model
from fl_app.ml.training import (
    ModelKey,
    configure_tensorflow,
    make_optimizer,
    optimizer_variables,
    reset_optimizer,
)

keras = tf.keras

# The split messages (fl_app.features.split.client answers them,
# fl_app.features.split.server sends
# them; partition ids are asked with fl_app.core.exchange's query.node_info)
FORWARD = "train.split_forward"
BACKWARD = "train.split_backward"
LOCAL = "train.split_local"
EVALUATE = "query.split_evaluate"
SPLIT_TYPES = frozenset({FORWARD, BACKWARD, LOCAL, EVALUATE})


def cut_layer(cfg: SplitConfig, model_name: str) -> str:
    """Return the configured cut layer (``auto``: the model's default cut).

    The default cut is after the model's first weighted layer (``MODEL_LAYERS``):
    the first convolution of the CNNs, the first hidden layer of the MLP (the
    softmax model has nothing to cut; its config is refused).
    """
    if cfg.cut_layer != "auto":
        return cfg.cut_layer
    return MODEL_LAYERS[model_name][0]


def split_model(model: keras.Model, cut: str) -> tuple[keras.Model, keras.Model]:
    """Cut a linear-chain functional model after layer ``cut``.

    Returns ``(client_part, server_part)``; both share the layer objects (and so the
    weights) of ``model``. ``model.get_weights()`` equals the client part's weights
    followed by the server part's.
    """
    names = [layer.name for layer in model.layers]
    if cut not in names:
        raise ValueError(f"model '{model.name}' has no layer {cut!r}: {names}")
    index = names.index(cut)
    if index == len(names) - 1:
        raise ValueError(f"cutting after {cut!r} leaves nothing for the server")
    client = keras.Model(model.input, model.layers[index].output, name="client_part")
    inputs = x = keras.Input(
        shape=model.layers[index].output.shape[1:], name="cut_activations"
    )
    for layer in model.layers[index + 1 :]:
        x = layer(x)
    server = keras.Model(inputs, x, name="server_part")
    return client, server


def forward_flops(model: keras.Model) -> int:
    """Multiply-adds ×2 of one example's forward pass through Conv2D/Dense layers."""
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kh, kw, cin, cout = layer.kernel.shape
            flops += 2 * height * width * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            flops += 2 * cin * cout
    return int(flops)


def aux_head_params(cut_shape: tuple[int, ...], num_classes: int) -> int:
    """Weights of ``local_loss``'s auxiliary head on activations of ``cut_shape``.

    One dense softmax layer on the flattened activations.
    """
    return (int(np.prod(cut_shape)) + 1) * num_classes


def client_shares(model: keras.Model, cut: str) -> dict[str, float]:
    """Return the client part's share of the parameters and of the forward FLOPs."""
    client, _ = split_model(model, cut)
    return {
        "client_params": client.count_params(),
        "client_param_share": client.count_params() / model.count_params(),
        "client_flops_share": forward_flops(client) / forward_flops(model),
        "cut_activation_floats": int(np.prod(client.output.shape[1:])),
    }


def _correct(probs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    hits = tf.equal(tf.argmax(probs, axis=1), tf.cast(y, tf.int64))
    return tf.reduce_sum(tf.cast(hits, tf.float32))


class _TrainedPart:
    """Weights and optimizer state of one part, read and written as numpy arrays.

    Subclasses set ``variables`` (what the optimizer trains) and ``optimizer``.
    """

    variables: list[tf.Variable]
    optimizer: keras.optimizers.Optimizer

    def get_weights(self) -> list[np.ndarray]:
        """Return the part's weights."""
        return [v.numpy() for v in self.variables]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Set the part's weights."""
        for variable, value in zip(self.variables, weights, strict=True):
            variable.assign(value)

    def optimizer_state(self) -> list[np.ndarray]:
        """Return the optimizer's variables (step count, moments)."""
        return [np.asarray(v.numpy()) for v in optimizer_variables(self.optimizer)]

    def set_optimizer_state(self, values: list[np.ndarray] | None, rate: float) -> None:
        """Restore the optimizer's variables (``None``: zero them) and its rate."""
        if values is None:
            reset_optimizer(self.optimizer, rate)
            return
        variables = optimizer_variables(self.optimizer)
        if len(values) != len(variables):
            raise ValueError(
                f"{len(values)} optimizer arrays, expected {len(variables)}"
            )
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
        self.optimizer.learning_rate = rate


class ClientPart(_TrainedPart):
    """The edge's part of the model, its optimizer and traced steps, per process.

    Everything a client owns (weights, optimizer state) is set from its node state
    before each step and read back after it, so one object serves every client of
    a worker process.
    """

    def __init__(self, key: ModelKey, cut: str, local_loss: bool) -> None:
        configure_tensorflow()
        full = build_model(key.model, key.input_shape, key.num_classes, key.width)
        self.model, _ = split_model(full, cut)
        self.variables = list(self.model.trainable_variables)
        self.aux = None
        if local_loss:  # Han et al.: a small classifier on the cut activations
            # one dense softmax layer on the flattened activations (BENCHMARKS.md:
            # pooling feature maps per channel first keeps the head at 330 weights
            # after conv1 but cost 2.2 points of central accuracy)
            self.aux = keras.Sequential(
                [
                    keras.layers.Flatten(name="aux_flatten"),
                    keras.layers.Dense(
                        key.num_classes, activation="softmax", name="aux_classifier"
                    ),
                ],
                name="aux_head",
            )
            self.aux.build((None, *self.model.output.shape[1:]))
            self.variables += list(self.aux.trainable_variables)
        self.optimizer = make_optimizer(key.client)
        self.optimizer.build(self.variables)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy()
        self._forward = tf.function(self.model.__call__)
        self._grads = tf.function(self._grads_step)
        self._aux_step = tf.function(self._aux_train_step)

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Set the client part's weights, and the auxiliary head's if given."""
        part = len(self.model.trainable_variables)
        if len(weights) not in (part, len(self.variables)):
            raise ValueError(
                f"{len(weights)} client-part arrays, expected {len(self.variables)}"
            )
        for variable, value in zip(self.variables, weights, strict=False):
            if variable.shape != value.shape:
                raise ValueError(
                    f"client-part array of shape {value.shape}, expected "
                    f"{tuple(variable.shape)}"
                )
            variable.assign(value)

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """Return the cut activations of ``x`` (``training``: Keras' layer mode)."""
        return self._forward(tf.constant(x), training=training).numpy()

    def _grads_step(self, x: tf.Tensor, cut_grad: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            acts = self.model(x, training=True)
        return tape.gradient(acts, self.model.trainable_variables, cut_grad)

    def backward(self, xs: list[np.ndarray], cut_grads: list[np.ndarray]) -> None:
        """Finish backprop for the batches ``xs`` from the server's cut gradients.

        Every batch's parameter gradient is taken at the current weights (those its
        activations were computed with, recomputed from the inputs rather than kept
        in a tape), then the steps are applied in order.
        """
        grads = [
            self._grads(tf.constant(x), tf.constant(g))
            for x, g in zip(xs, cut_grads, strict=True)
        ]
        for step in grads:
            self.optimizer.apply_gradients(
                zip(step, self.model.trainable_variables, strict=True)
            )

    def _aux_train_step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            probs = self.aux(self.model(x, training=True), training=True)
            loss = self.loss_fn(y, probs)
        grads = tape.gradient(loss, self.variables)
        self.optimizer.apply_gradients(zip(grads, self.variables, strict=True))
        return loss, _correct(probs, y)

    def aux_train(
        self, x: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int
    ) -> tuple[float, float]:
        """One epoch of local-loss training in ``order``; return its loss, accuracy."""
        loss_sum = correct = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss, hits = self._aux_step(tf.constant(x[idx]), tf.constant(y[idx]))
            loss_sum += float(loss) * len(idx)
            correct += float(hits)
        return loss_sum / len(order), correct / len(order)


@functools.cache
def get_client_part(key: ModelKey, cut: str, local_loss: bool) -> ClientPart:
    """Return this process's client part for a model, cut and mode."""
    return ClientPart(key, cut, local_loss)


class ServerPart(_TrainedPart):
    """The cloud's part of the model: a training step on cut activations.

    ``full`` is a whole model whose layers the server part shares, so the server
    part's weights are the tail of ``full.get_weights()``.
    """

    def __init__(self, key: ModelKey, cut: str) -> None:
        configure_tensorflow()
        self.full = build_model(key.model, key.input_shape, key.num_classes, key.width)
        client, self.model = split_model(self.full, cut)
        self.num_client_arrays = len(client.weights)
        self.variables = list(self.model.trainable_variables)
        self.optimizer = make_optimizer(key.client)
        self.optimizer.build(self.variables)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy()
        self._step = tf.function(self._train_step)
        self._eval = tf.function(self._eval_step)

    def _train_step(self, acts: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            tape.watch(acts)
            probs = self.model(acts, training=True)
            loss = self.loss_fn(y, probs)
        grads = tape.gradient(loss, [*self.variables, acts])
        self.optimizer.apply_gradients(zip(grads[:-1], self.variables, strict=True))
        return loss, _correct(probs, y), grads[-1]

    def step(self, acts: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
        """Train on one batch; return its loss, correct count and the cut gradient."""
        loss, hits, cut_grad = self._step(tf.constant(acts), tf.constant(y))
        return float(loss), float(hits), cut_grad.numpy()

    def _eval_step(self, acts: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, ...]:
        probs = self.model(acts, training=False)
        return self.loss_fn(y, probs), _correct(probs, y)

    def evaluate(self, acts: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Return the mean loss and the correct count on ``acts``."""
        loss, hits = self._eval(tf.constant(acts), tf.constant(y))
        return float(loss), float(hits)
