"""The privacy feature's client part: DP-SGD local training and its ε accounting.

Registers :class:`DpSgdTraining` for runs with ``dpsgd`` on. The compiled model
already trains with tensorflow-privacy's optimizer (the ``dpsgd`` client technique,
:mod:`fl_app.features.privacy.technique`); this part draws Poisson-sampled batches,
keeps each client's steps in its node state, reports its ε and declines a round
that would exceed its budget.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.common import NDArrays, Scalar

from fl_app.client.keras_client import LocalTraining, register_local_training
from fl_app.core.config import ClientConfig
from fl_app.data import ArrayDataset
from fl_app.features.privacy.dpsgd import (
    add_steps,
    dp_sgd_steps,
    epsilon,
    poisson_batches,
    steps_taken,
)
from fl_app.features.privacy.settings import DpSgdConfig
from fl_app.ml.training import (
    Augmenter,
    ModelKey,
    batch_step,
    begin_techniques,
    end_techniques,
    get_model_weights,
    keras,
    label_mask_of,
    reset_optimizer,
    techniques_of,
)

log = logging.getLogger(__name__)
STATE_PRIVACY = "privacy"  # config record: DP-SGD steps taken so far


def train_local_dp(
    model: keras.Model,
    data: ArrayDataset,
    cfg: ClientConfig,
    dpsgd: DpSgdConfig,
    rng: np.random.Generator,
    augment: Augmenter | None = None,
) -> dict[str, float]:
    """Train with DP-SGD on Poisson-sampled batches (``model`` has a DP optimizer).

    Runs :func:`~fl_app.features.privacy.dpsgd.dp_sgd_steps` steps; in each, every
    example joins the batch with probability ``batch_size / len(data)``, the
    sampling the accountant assumes. A step whose batch is empty is skipped (the
    accountant still counts it, which only overstates ε). With microbatches, a batch
    is cut to a multiple of their number (dropping examples at random only
    subsamples further).
    """
    reset_optimizer(model.optimizer, cfg.learning_rate)
    techniques = techniques_of(model)
    begin_techniques(techniques, model.trainable_variables, data.y)
    q = min(cfg.batch_size / len(data), 1.0)
    steps = dp_sgd_steps(len(data), cfg.batch_size, cfg.local_epochs)
    mask = label_mask_of(model)
    if mask is not None:
        mask.set_classes(data.y)
    model.reset_metrics()
    step = batch_step(model, "train", data.x, data.y)
    logs: dict = {}
    try:
        for batch in poisson_batches(len(data), q, steps, rng):
            if dpsgd.microbatches:
                keep = len(batch) - len(batch) % dpsgd.microbatches
                batch = rng.permutation(batch)[:keep]
            if len(batch) == 0:
                continue
            x, y = data.x[batch], data.y[batch]
            logs = step(x if augment is None else augment(x), y)
    finally:
        if mask is not None:
            mask.set_classes(None)
    return {
        "train_loss": float(logs.get("loss", np.nan)),
        "train_accuracy": float(logs.get("accuracy", np.nan)),
        **end_techniques(techniques, model.trainable_variables),
    }


class DpSgdTraining(LocalTraining):
    """DP-SGD local training with per-client ε accounting in the node state."""

    def train(
        self,
        model: keras.Model,
        key: ModelKey,
        received: NDArrays,
        train_cfg: ClientConfig,
        rng: np.random.Generator,
        augment: Augmenter | None,
    ) -> tuple[NDArrays, dict[str, Scalar]]:
        """Train with DP-SGD; account the steps in the node state, report ε."""
        client = self.client
        metrics: dict[str, Scalar] = dict(
            train_local_dp(
                model, client.data.train, train_cfg, self.cfg.dpsgd, rng, augment
            )
        )
        steps = add_steps(client.state, STATE_PRIVACY, self._steps_per_round())
        metrics["epsilon"] = self._epsilon(steps)
        return get_model_weights(model, key), metrics

    def _steps_per_round(self) -> int:
        return dp_sgd_steps(
            len(self.client.data.train),
            self.cfg.client.batch_size,
            self.cfg.client.local_epochs,
        )

    def _steps_taken(self) -> int:
        return steps_taken(self.client.state, STATE_PRIVACY)

    def _epsilon(self, steps: int) -> float:
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


register_local_training(lambda cfg: cfg.dpsgd is not None, DpSgdTraining)
