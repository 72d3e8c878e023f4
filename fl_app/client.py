"""The Flower NumPyClient that trains a Keras model on one client's partition."""

from __future__ import annotations

import logging

import numpy as np
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar

from fl_app.config import ConfigError, RunConfig
from fl_app.data import load_federated_data
from fl_app.training import ModelKey, evaluate_model, get_compiled_model, train_local

log = logging.getLogger(__name__)


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
    )


def check_partition(cfg: RunConfig, partition_id: int, num_partitions: int) -> None:
    """Fail clearly when a node's partition settings disagree with the run config."""
    if num_partitions != cfg.num_clients:
        raise ConfigError(
            f"node config num-partitions={num_partitions} but run config key "
            f"'num-clients' is {cfg.num_clients}; start the federation with "
            f"num-supernodes={cfg.num_clients} (simulation) or set num-clients to the "
            f"number of SuperNodes"
        )
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"node config partition-id={partition_id}, allowed: "
            f"0 <= partition-id < {num_partitions}"
        )


class KerasClient(NumPyClient):
    """Train and evaluate the global model on one client's data.

    The compiled model comes from the per-process cache and is shared with the other
    clients this process serves; everything client-specific (weights, optimizer
    state, shuffling) is set per call, so nothing leaks between clients.
    """

    def __init__(self, cfg: RunConfig, partition_id: int) -> None:
        data = load_federated_data(cfg)
        self.cfg = cfg
        self.partition_id = partition_id
        self.data = data.clients[partition_id]
        self.key = model_key(cfg, data.input_shape, data.num_classes)

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        """Return the weights of a freshly initialised model (seeded by the run)."""
        return get_compiled_model(self.key, self.cfg.seed).get_weights()

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train the received global model locally and return the new weights."""
        server_round = int(config.get("server_round", 0))
        model = get_compiled_model(self.key, self.cfg.seed)
        model.set_weights(parameters)
        rng = np.random.default_rng([self.cfg.seed, server_round, self.partition_id])
        metrics = train_local(model, self.data.train, self.cfg.client, rng)
        return (
            model.get_weights(),
            len(self.data.train),
            {"partition_id": self.partition_id, **metrics},
        )

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        """Evaluate the received global model on this client's validation rows."""
        model = get_compiled_model(self.key, self.cfg.seed)
        model.set_weights(parameters)
        loss, accuracy = evaluate_model(model, self.data.val)
        return (
            loss,
            len(self.data.val),
            {
                "accuracy": accuracy,
                "partition_id": self.partition_id,
            },
        )
