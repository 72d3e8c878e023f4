"""Personalization's client part: the blended local training (APFL, FedPer).

Registers :class:`PersonalizedTraining` for strategies that keep a personal model:
each client trains its global copy and its personal model
(:mod:`fl_app.features.personalization.training`), keeps the personal one in its
node state, uploads the global copy without the local layers and reports the
personalized blend's accuracy.
"""

from __future__ import annotations

import numpy as np
from flwr.common import NDArrays, Scalar

from fl_app.client.keras_client import (
    KerasClient,
    LocalTraining,
    register_local_training,
)
from fl_app.core.config import ClientConfig
from fl_app.features.personalization.training import (
    PersonalState,
    blend,
    get_personal_trainer,
    local_weight_mask,
    strip_local,
    weight_alphas,
)
from fl_app.ml.training import Augmenter, ModelKey, evaluate_model, keras


class PersonalizedTraining(LocalTraining):
    """Blended training of the global copy and the client's personal model."""

    def __init__(self, client: KerasClient) -> None:
        super().__init__(client)
        self.personal = PersonalState(client.state)

    def train(
        self,
        model: keras.Model,
        key: ModelKey,
        received: NDArrays,
        train_cfg: ClientConfig,
        rng: np.random.Generator,
        augment: Augmenter | None,
    ) -> tuple[NDArrays, dict[str, Scalar]]:
        """Train both models; upload the global copy without the local layers."""
        pcfg = self.cfg.personalization
        client = self.client
        trainer = get_personal_trainer(client.key, pcfg)
        local, alpha = self.personal.load()
        if local is None:  # first round: the local model starts as the global one
            local, alpha = [w.copy() for w in received], pcfg.alpha
        result = trainer.train(
            received, local, alpha, client.data.train, train_cfg, rng, augment
        )
        self.personal.save(result.local_weights, result.alpha)
        metrics: dict[str, Scalar] = {
            "train_loss": result.loss,
            "train_accuracy": result.accuracy,
            **result.metrics,
        }
        if pcfg.mode != "fedper":
            metrics["alpha"] = result.alpha
        return strip_local(result.global_weights, trainer.mask), metrics

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


# before DP-SGD's (the config refuses the pair; the order makes it certain)
register_local_training(
    lambda cfg: cfg.personalization is not None, PersonalizedTraining, priority=1
)
