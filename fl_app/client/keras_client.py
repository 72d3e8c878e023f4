"""The Flower NumPyClient that trains a Keras model on one client's partition.

A client is composed of parts, each chosen from the run config:

- the data source (:func:`fl_app.client.node_data.client_data`): a partition of the
run's dataset, or the
  SuperNode's own file;
- the transport (:class:`Transport`): how arrays cross the wire (download decoding,
  upload delta, error feedback and codec);
- the local training (:class:`LocalTraining`): plain, DP-SGD or personalized,
  picked by :func:`local_training_for`. Client techniques such as FedProx
  (:mod:`fl_app.core.techniques`) hook into whichever of these runs, so they need no
  class of their own here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar

from fl_app.client.node_data import client_data, node_partition
from fl_app.core import timeline
from fl_app.core.config import ClientConfig, RunConfig, parse_run_config
from fl_app.core.exchange import INFO, info_reply, register_handler
from fl_app.core.techniques import client_state
from fl_app.features.augmentation.augmenter import (
    Augmenter,
    check_image_input,
    make_augmenter,
)
from fl_app.features.compression.codecs import ClientCodecs
from fl_app.features.hetero.capacities import partition_capacity
from fl_app.features.personalization.training import (
    PersonalState,
    blend,
    get_personal_trainer,
    local_weight_mask,
    strip_local,
    weight_alphas,
)
from fl_app.ml.training import (
    ModelKey,
    configure_tensorflow,
    evaluate_model,
    get_compiled_model,
    get_model_weights,
    keras,
    model_key,
    set_model_weights,
    train_local,
    train_local_dp,
    weight_shapes,
)

log = logging.getLogger(__name__)
STATE_RESIDUAL = "compression-residual"
STATE_PRIVACY = "privacy"  # config record: DP-SGD steps taken so far


def node_info(msg: Message, context: Context) -> RecordDict:
    """Answer ``query.node_info``: the node's partition id and row counts."""
    cfg = parse_run_config(context.run_config)
    partition_id, data_path = node_partition(cfg, context.node_config, context.node_id)
    data, _, _ = client_data(cfg, partition_id, data_path)
    return info_reply(partition_id, num_train=len(data.train), num_val=len(data.val))


register_handler([INFO], node_info)


class Transport:
    """How one client's arrays cross the wire: download decoding, upload encoding.

    Without compression both ways are the identity. With it, downloads are decoded
    into the model and uploads become codec payloads of the weights or of their
    delta; error feedback keeps the coding residual in the node state.
    """

    def __init__(self, cfg: RunConfig, state: RecordDict) -> None:
        comp = cfg.compression
        self.state = state
        self.pruning = cfg.pruning is not None
        self.codecs = (
            ClientCodecs.from_specs(
                comp.upload, comp.download, comp.delta, comp.error_feedback, comp.topk
            )
            if comp.active
            else None
        )

    def receive(
        self, model: keras.Model, key: ModelKey, parameters: NDArrays
    ) -> NDArrays:
        """Decode what the server sent (if coded), set it into ``model``, return it."""
        if self.codecs is not None:
            parameters = self.codecs.decode_download(
                parameters, weight_shapes(model, key)
            )
        set_model_weights(model, key, parameters)
        return parameters

    def send(self, weights: NDArrays, received: NDArrays) -> NDArrays:
        """Encode the trained weights for upload (delta, error feedback, codec)."""
        if self.codecs is None:
            return weights
        keep = None
        if self.pruning:  # stay inside the server's mask
            keep = [w != 0 if w.ndim >= 2 else None for w in received]
        residual = None
        if STATE_RESIDUAL in self.state.array_records:
            residual = self.state.array_records[STATE_RESIDUAL].to_numpy_ndarrays()
        payload, residual = self.codecs.encode_upload(weights, received, residual, keep)
        if residual is not None:
            self.state.array_records[STATE_RESIDUAL] = ArrayRecord(
                numpy_ndarrays=residual
            )
        return payload

    def unchanged(self, received: NDArrays) -> NDArrays:
        """Encode "no update" (a declined round) without touching the carried error."""
        if self.codecs is None:
            return received
        if self.codecs.delta:
            return self.codecs.upload.encode([np.zeros_like(w) for w in received])
        return self.codecs.upload.encode(received)


FitReturn = tuple[NDArrays, int, dict[str, Scalar]]


class LocalTraining:
    """How a client trains what the server sent: the plain trainer.

    Subclasses change :meth:`train` (the local steps on the received model),
    :meth:`declined` (whether to sit a round out) or :meth:`fit` as a whole;
    :meth:`evaluate_more` adds evaluation metrics.
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
        received = client.transport.receive(model, key, parameters)
        timeline.mark("model_ready", partition=client.partition_id)
        declined = self.declined()
        if declined is not None:  # reply "no update", counted as no examples
            return client.transport.unchanged(received), 0, declined
        metrics = self.train(model, train_cfg, rng, augment)
        timeline.mark("trained", partition=client.partition_id)
        if "width" in config:
            metrics["width"] = float(config["width"])
        return (
            client.transport.send(get_model_weights(model, key), received),
            client.num_real,
            {"partition_id": client.partition_id, **client.row_counts(), **metrics},
        )

    def train(
        self,
        model: keras.Model,
        train_cfg: ClientConfig,
        rng: np.random.Generator,
        augment: Augmenter | None,
    ) -> dict[str, Scalar]:
        """Train ``model`` in place; return the training metrics."""
        return dict(train_local(model, self.client.data.train, train_cfg, rng, augment))

    def declined(self) -> dict[str, Scalar] | None:
        """Return the reply metrics of a round this client declines (default: none)."""
        return None

    def evaluate_more(
        self, model: keras.Model, parameters: NDArrays
    ) -> dict[str, Scalar]:
        """Return metrics beyond the global model's (none here)."""
        return {}


class DpSgdTraining(LocalTraining):
    """DP-SGD local training with per-client ε accounting in the node state."""

    def train(
        self,
        model: keras.Model,
        train_cfg: ClientConfig,
        rng: np.random.Generator,
        augment: Augmenter | None,
    ) -> dict[str, Scalar]:
        """Train with DP-SGD; account the steps in the node state, report ε."""
        client = self.client
        metrics: dict[str, Scalar] = dict(
            train_local_dp(
                model, client.data.train, train_cfg, self.cfg.dpsgd, rng, augment
            )
        )
        from fl_app.features.privacy.dpsgd import add_steps

        steps = add_steps(client.state, STATE_PRIVACY, self._steps_per_round())
        metrics["epsilon"] = self._epsilon(steps)
        return metrics

    def _steps_per_round(self) -> int:
        from fl_app.features.privacy.dpsgd import dp_sgd_steps

        return dp_sgd_steps(
            len(self.client.data.train),
            self.cfg.client.batch_size,
            self.cfg.client.local_epochs,
        )

    def _steps_taken(self) -> int:
        from fl_app.features.privacy.dpsgd import steps_taken

        return steps_taken(self.client.state, STATE_PRIVACY)

    def _epsilon(self, steps: int) -> float:
        from fl_app.features.privacy.dpsgd import epsilon

        dp = self.cfg.dpsgd
        q = min(self.cfg.client.batch_size / len(self.client.data.train), 1.0)
        return epsilon(steps, q, dp.noise_multiplier, dp.delta, dp.microbatches > 0)

    def declined(self) -> dict[str, Scalar] | None:
        """Decline (and say why) when this round would exceed the ε budget."""
        dp = self.cfg.dpsgd
        if dp.epsilon_budget <= 0:
            return None
        taken = self._steps_taken()
        after = self._epsilon(taken + self._steps_per_round())
        if after <= dp.epsilon_budget:
            return None
        pid = self.client.partition_id
        message = (
            f"client {pid} declines to train: its privacy budget "
            f"epsilon={dp.epsilon_budget:g} (delta={dp.delta:g}) would be exceeded "
            f"(spent {self._epsilon(taken):.3f}, {after:.3f} after this round)"
        )
        log.warning("%s", message)
        return {
            "partition_id": pid,
            "declined": message,
            "epsilon": self._epsilon(taken),
        }


class PersonalizedTraining(LocalTraining):
    """Blended training of the global copy and the client's personal model."""

    def __init__(self, client: KerasClient) -> None:
        super().__init__(client)
        self.personal = PersonalState(client.state)

    def fit(
        self,
        parameters: NDArrays,
        config: dict[str, Scalar],
        train_cfg: ClientConfig,
        rng: np.random.Generator,
        augment: Augmenter | None,
    ) -> FitReturn:
        """Train both models; upload the global copy without the local layers."""
        pcfg = self.cfg.personalization
        client = self.client
        trainer = get_personal_trainer(client.key, pcfg)
        local, alpha = self.personal.load()
        if local is None:  # first round: the local model starts as the global one
            local, alpha = [w.copy() for w in parameters], pcfg.alpha
        result = trainer.train(
            parameters, local, alpha, client.data.train, train_cfg, rng, augment
        )
        self.personal.save(result.local_weights, result.alpha)
        metrics: dict[str, Scalar] = {
            "partition_id": client.partition_id,
            **client.row_counts(),
            "train_loss": result.loss,
            "train_accuracy": result.accuracy,
            **result.metrics,
        }
        if pcfg.mode != "fedper":
            metrics["alpha"] = result.alpha
        return (
            strip_local(result.global_weights, trainer.mask),
            client.num_real,
            metrics,
        )

    def evaluate_more(
        self, model: keras.Model, parameters: NDArrays
    ) -> dict[str, Scalar]:
        """Evaluate the personalized blend on the validation rows."""
        pcfg = self.cfg.personalization
        local, alpha = self.personal.load()
        if local is None:  # not trained yet: personalized = global
            local, alpha = parameters, pcfg.alpha
        mask = local_weight_mask(model, pcfg.local_layers)
        model.set_weights(blend(local, parameters, weight_alphas(pcfg, mask, alpha)))
        p_loss, p_accuracy = evaluate_model(model, self.client.data.val)
        metrics: dict[str, Scalar] = {
            "personalized_accuracy": p_accuracy,
            "personalized_loss": p_loss,
        }
        if pcfg.mode != "fedper":
            metrics["alpha"] = alpha
        return metrics


# (applies to the run config?, trainer): the first that applies trains the client.
LOCAL_TRAININGS: list[tuple[Callable[[RunConfig], bool], type[LocalTraining]]] = [
    (lambda cfg: cfg.personalization is not None, PersonalizedTraining),
    (lambda cfg: cfg.dpsgd is not None, DpSgdTraining),
]


def local_training_for(cfg: RunConfig) -> type[LocalTraining]:
    """Return the local training a run's clients use (plain when none applies)."""
    for applies, training in LOCAL_TRAININGS:
        if applies(cfg):
            return training
    return LocalTraining


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
    capacity : float | None
        The width this client can train (heterogeneous slicing), reported to the
        server through ``get_properties``; ``None``: the partition's share of
        ``strategy-capacities`` in the round the server names (``strategy-dynamic``).
    data_path : str | None
        A SuperNode's own ``.npz`` data instead of partition ``partition_id``.
    """

    def __init__(
        self,
        cfg: RunConfig,
        partition_id: int,
        state: RecordDict | None = None,
        capacity: float | None = 1.0,
        data_path: str | None = None,
    ) -> None:
        configure_tensorflow()  # before any TensorFlow op of this process
        self.cfg = cfg
        self.partition_id = partition_id
        self.data, input_shape, num_classes = client_data(cfg, partition_id, data_path)
        attack = cfg.extra("attack")
        if attack is not None and attack.kind == "label_flip":
            from fl_app.features.robust.client import flip_labels

            if partition_id in attack.attackers(cfg):  # simulated attacker
                self.data = flip_labels(self.data, num_classes)
        self.key = model_key(cfg, input_shape, num_classes)
        self.capacity = capacity
        check_image_input(cfg.client.augmentation, input_shape)
        self.state = state if state is not None else RecordDict()
        # the rows the client's update is weighted by: its real ones
        self.num_real = len(self.data.train)
        self.num_synthetic = 0
        if cfg.synthetic is not None:  # training rows only, never validation rows
            from fl_app.features.synthetic.client import with_synthetic_rows

            self.data, self.num_synthetic = with_synthetic_rows(
                cfg, self.data, self.state, partition_id, num_classes
            )
        self.transport = Transport(cfg, self.state)
        self.training = local_training_for(cfg)(self)
        timeline.mark("client_ready", partition=partition_id)

    def row_counts(self) -> dict[str, Scalar]:
        """Real and generated training rows (``synthetic=gan``; else nothing)."""
        if self.cfg.synthetic is None:
            return {}
        return {"num_real": self.num_real, "num_synthetic": self.num_synthetic}

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Report this client's capacity (in round ``server_round``) and partition."""
        capacity = self.capacity
        if capacity is None:
            server_round = int(config.get("server_round", 0))
            capacity = partition_capacity(self.cfg, self.partition_id, server_round)
        return {"capacity": capacity, "partition_id": self.partition_id}

    def model(self, config: dict[str, Scalar]) -> tuple[keras.Model, ModelKey]:
        """Return the cached model at the width the server sliced (default: full)."""
        width = float(config.get("width", self.key.width))
        scaler = self.cfg.hetero is not None and self.cfg.hetero.scaler
        key = replace(self.key, width=width, scaler=scaler)
        return get_compiled_model(key, self.cfg.seed), key

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        """Return the weights of a freshly initialised model (seeded by the run)."""
        return get_model_weights(get_compiled_model(self.key, self.cfg.seed), self.key)

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> FitReturn:
        """Train the received global model locally and return the new weights."""
        server_round = int(config.get("server_round", 0))
        rng = np.random.default_rng([self.cfg.seed, server_round, self.partition_id])
        augment = make_augmenter(
            self.cfg.client.augmentation, int(rng.integers(2**31 - 1))
        )
        train_cfg = self.cfg.client.at_round(server_round)
        with client_state(self.state):  # client techniques keep their state there
            return self.training.fit(parameters, config, train_cfg, rng, augment)

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        """Evaluate the global (and any personalized) model on the validation rows."""
        model, key = self.model(config)
        parameters = self.transport.receive(model, key, parameters)
        loss, accuracy = evaluate_model(model, self.data.val)
        metrics: dict[str, Scalar] = {
            "accuracy": accuracy,
            "partition_id": self.partition_id,
            **self.training.evaluate_more(model, parameters),
        }
        return loss, len(self.data.val), metrics
