"""The Flower NumPyClient that trains a Keras model on one client's partition.

A client is composed of parts, each chosen from the run config:

- the data source (:func:`fl_app.client.node_data.client_data`): a partition of the
  run's dataset, or the SuperNode's own file; then the data hooks features register
  (:func:`register_client_data`: label-flipping attackers, synthetic rows);
- the transport (:class:`Transport`): how arrays cross the wire, as they are unless
  a feature registers another (:func:`register_transport`: compression's codecs);
- the local training (:class:`LocalTraining`): plain, or one a feature registers
  (:func:`register_local_training`: DP-SGD, personalized), picked by
  :func:`local_training_for`. Client techniques such as FedProx
  (:mod:`fl_app.core.techniques`) hook into whichever of these runs, so they need no
  class of their own here.

Features' client parts (``fl_app/features/<name>/client.py``) fill these registries;
:func:`load_client_parts` imports them by the index's name, never one feature.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar

from fl_app.client.node_data import client_data, node_partition
from fl_app.core import timeline
from fl_app.core.config import ClientConfig, RunConfig, parse_run_config
from fl_app.core.exchange import INFO, info_reply, register_handler
from fl_app.core.techniques import (
    batch_transform,
    check_input,
    client_state,
)
from fl_app.ml.training import (
    Augmenter,
    ModelKey,
    configure_tensorflow,
    evaluate_model,
    get_compiled_model,
    get_model_weights,
    keras,
    model_key,
    set_model_weights,
    train_local,
)

log = logging.getLogger(__name__)


def node_info(msg: Message, context: Context) -> RecordDict:
    """Answer ``query.node_info``: the node's partition id and row counts."""
    cfg = parse_run_config(context.run_config)
    partition_id, data_path = node_partition(cfg, context.node_config, context.node_id)
    data, _, _ = client_data(cfg, partition_id, data_path)
    return info_reply(partition_id, num_train=len(data.train), num_val=len(data.val))


register_handler([INFO], node_info)


class Transport:
    """How one client's arrays cross the wire: as they are.

    A feature that codes them (compression) registers a subclass
    (:func:`register_transport`); the first that applies to the run serves it.
    """

    def __init__(self, cfg: RunConfig, state: RecordDict) -> None:
        self.cfg = cfg
        self.state = state  # the node's state (e.g. a coding residual)

    def receive(
        self,
        model: keras.Model,
        key: ModelKey,
        parameters: NDArrays,
        config: dict[str, Scalar],
    ) -> NDArrays:
        """Set what the server sent into ``model``; return it as arrays.

        ``config``: the message's config (a transport may read it).
        """
        set_model_weights(model, key, parameters)
        return parameters

    def send(self, weights: NDArrays, received: NDArrays) -> NDArrays:
        """Return the upload of the trained ``weights`` (``received``: as sent)."""
        return weights

    def unchanged(self, received: NDArrays) -> NDArrays:
        """Return the upload that says "no update" (a declined round)."""
        return received


FitReturn = tuple[NDArrays, int, dict[str, Scalar]]


class LocalTraining:
    """How a client trains what the server sent: the plain trainer.

    :meth:`fit` sets what the server sent into the cached model, asks
    :meth:`declined` whether to sit the round out, runs :meth:`train` and sends what
    it returns. Subclasses change :meth:`train` (the local steps and the weights to
    upload), :meth:`declined`, and :meth:`evaluate_more` (evaluation metrics).
    """

    def __init__(self, client: KerasClient) -> None:
        self.client = client
        self.cfg = client.cfg

    def fit(
        self,
        parameters: NDArrays,
        config: dict[str, Scalar],
        train_cfg: ClientConfig,
        rng: np.random.Generator,
        augment: Augmenter | None,
    ) -> FitReturn:
        """Set the received model, train it, return the encoded upload."""
        client = self.client
        model, key = client.model(config)
        received = client.transport.receive(model, key, parameters, config)
        timeline.mark("model_ready", partition=client.partition_id)
        declined = self.declined()
        if declined is not None:  # reply "no update", counted as no examples
            return client.transport.unchanged(received), 0, declined
        weights, metrics = self.train(model, key, received, train_cfg, rng, augment)
        timeline.mark("trained", partition=client.partition_id)
        if "width" in config:
            metrics["width"] = float(config["width"])
        return (
            client.transport.send(weights, received),
            client.num_real,
            {"partition_id": client.partition_id, **client.row_counts(), **metrics},
        )

    def train(
        self,
        model: keras.Model,
        key: ModelKey,
        received: NDArrays,
        train_cfg: ClientConfig,
        rng: np.random.Generator,
        augment: Augmenter | None,
    ) -> tuple[NDArrays, dict[str, Scalar]]:
        """Train ``model`` (set to ``received``) in place.

        Returns the weights to upload and the training metrics.
        """
        metrics = train_local(model, self.client.data.train, train_cfg, rng, augment)
        return get_model_weights(model, key), dict(metrics)

    def declined(self) -> dict[str, Scalar] | None:
        """Return the reply metrics of a round this client declines (default: none)."""
        return None

    def evaluate_more(
        self, model: keras.Model, parameters: NDArrays
    ) -> dict[str, Scalar]:
        """Return metrics beyond the global model's (none here)."""
        return {}


Applies = Callable[[RunConfig], bool]
# (applies to the run config?, class), registered by features' client parts: the
# first that applies serves the client; the base class when none does.
LOCAL_TRAININGS: list[tuple[Applies, type[LocalTraining], int]] = []
TRANSPORTS: list[tuple[Applies, type[Transport]]] = []
# hook(client, num_classes): changes a client's data once it is loaded
ClientDataHook = Callable[["KerasClient", int], None]
CLIENT_DATA_HOOKS: list[ClientDataHook] = []


def register_local_training(
    applies: Applies, training: type[LocalTraining], priority: int = 0
) -> None:
    """Train a run's clients with ``training`` when ``applies(cfg)``.

    Where several apply, the highest ``priority`` wins (personalization's trainer
    over DP-SGD's: the config refuses the pair, the order makes it certain).
    """
    LOCAL_TRAININGS.append((applies, training, priority))
    LOCAL_TRAININGS.sort(key=lambda entry: -entry[2])


def register_transport(applies: Applies, transport: type[Transport]) -> None:
    """Carry a run's arrays with ``transport`` when ``applies(cfg)``."""
    TRANSPORTS.append((applies, transport))


def register_client_data(hook: ClientDataHook) -> ClientDataHook:
    """Call ``hook(client, num_classes)`` on every client's data; a decorator.

    Hooks run in registration order (the features' alphabetical order), after the
    client's rows are loaded and before its model is chosen.
    """
    CLIENT_DATA_HOOKS.append(hook)
    return hook


@functools.cache
def load_client_parts() -> list[str]:
    """Import every feature's client part (once): its trainings, transports, hooks.

    The index is reached by name, never one feature; the ClientApp loads the same
    parts, so a client built directly (a test, a benchmark) has them too.
    """
    return importlib.import_module("fl_app.features").load("client")


def local_training_for(cfg: RunConfig) -> type[LocalTraining]:
    """Return the local training a run's clients use (plain when none applies)."""
    load_client_parts()
    for applies, training, _ in LOCAL_TRAININGS:
        if applies(cfg):
            return training
    return LocalTraining


def transport_for(cfg: RunConfig) -> type[Transport]:
    """Return how a run's arrays travel (as they are when no feature codes them)."""
    load_client_parts()
    for applies, transport in TRANSPORTS:
        if applies(cfg):
            return transport
    return Transport


@functools.cache
def ray_node() -> dict[str, Scalar]:
    """Return the Ray node this process runs on (a simulated client), else nothing.

    Recorded with each client's fit metrics, so a run on a Ray cluster shows which
    node served which client.
    """
    ray = sys.modules.get("ray")  # never imported for this: deployments have none
    if ray is None or not ray.is_initialized():
        return {}
    return {"ray_node": ray.get_runtime_context().get_node_id()}


class KerasClient(NumPyClient):
    """Train and evaluate the global model on one client's data.

    The compiled model comes from the per-process cache and is shared with the other
    clients this process serves; everything client-specific (weights, optimizer
    state, shuffling, augmentation seeds, the personal model in ``state``) is set per
    call, so nothing leaks between clients.

    Parameters
    ----------
    cfg : RunConfig
        The validated run configuration.
    partition_id : int
        Which client partition this client holds.
    state : RecordDict | None
        The node's persistent state (``context.state``): personal models, DP-SGD
        steps, error-feedback residuals.
    capacity : float | Callable[[int], float]
        The width this client can train (heterogeneous slicing), reported to the
        server through ``get_properties``; a function of the round the server names
        where the width changes per round (``strategy-dynamic``).
    data_path : str | None
        A SuperNode's own ``.npz`` data instead of partition ``partition_id``.
    """

    def __init__(
        self,
        cfg: RunConfig,
        partition_id: int,
        state: RecordDict | None = None,
        capacity: float | Callable[[int], float] = 1.0,
        data_path: str | None = None,
    ) -> None:
        configure_tensorflow()  # before any TensorFlow op of this process
        self.cfg = cfg
        self.partition_id = partition_id
        self.data, input_shape, num_classes = client_data(cfg, partition_id, data_path)
        self.state = state if state is not None else RecordDict()
        self.capacity = capacity
        # the rows the client's update is weighted by: its real ones (a data hook
        # that adds rows keeps this count and says so in row_metrics)
        self.num_real = len(self.data.train)
        self.row_metrics: dict[str, Scalar] = {}
        load_client_parts()
        for hook in CLIENT_DATA_HOOKS:  # e.g. label flipping, synthetic rows
            hook(self, num_classes)
        self.key = model_key(cfg, input_shape, num_classes)
        check_input(self.key.techniques, input_shape)
        self.transport = transport_for(cfg)(cfg, self.state)
        self.training = local_training_for(cfg)(self)
        timeline.mark("client_ready", partition=partition_id)

    def row_counts(self) -> dict[str, Scalar]:
        """Return what data hooks report of the training rows (e.g. generated ones)."""
        return dict(self.row_metrics)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Report this client's capacity (in round ``server_round``) and partition."""
        capacity = self.capacity
        if callable(capacity):
            capacity = capacity(int(config.get("server_round", 0)))
        return {"capacity": capacity, "partition_id": self.partition_id}

    def model(self, config: dict[str, Scalar]) -> tuple[keras.Model, ModelKey]:
        """Return the cached model at the width the server sliced (default: full)."""
        width = float(config.get("width", self.key.width))
        scaler = self.cfg.hetero is not None and self.cfg.hetero.scaler
        key = replace(self.key, width=width, scaler=scaler)
        return get_compiled_model(key, self.cfg.seed), key

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        """Return the weights of this process's compiled model for this client.

        The run's seeded initial weights when the model is new in the process;
        afterwards whatever the last local training on it left. The server never
        asks (it initialises the global model itself); tests use it for a model's
        shapes and a seeded start.
        """
        return get_model_weights(get_compiled_model(self.key, self.cfg.seed), self.key)

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> FitReturn:
        """Train the received global model locally and return the new weights."""
        server_round = int(config.get("server_round", 0))
        rng = np.random.default_rng([self.cfg.seed, server_round, self.partition_id])
        augment = batch_transform(self.key.techniques, int(rng.integers(2**31 - 1)))
        train_cfg = self.cfg.client.at_round(server_round)
        with client_state(self.state):  # client techniques keep their state there
            weights, n, metrics = self.training.fit(
                parameters, config, train_cfg, rng, augment
            )
        return weights, n, {**metrics, **ray_node()}

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        """Evaluate the global (and any personalized) model on the validation rows."""
        model, key = self.model(config)
        parameters = self.transport.receive(model, key, parameters, config)
        loss, accuracy = evaluate_model(model, self.data.val)
        metrics: dict[str, Scalar] = {
            "accuracy": accuracy,
            "partition_id": self.partition_id,
            **self.training.evaluate_more(model, parameters),
        }
        return loss, len(self.data.val), metrics
