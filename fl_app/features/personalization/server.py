"""Personalization's server part: the ``personalized`` strategy and its summary."""

from __future__ import annotations

from typing import Any

from flwr.common import NDArrays

from fl_app.core.config import STRATEGY_SPECS, RunConfig
from fl_app.features.personalization.training import local_weight_mask
from fl_app.ml.training import keras
from fl_app.server.registry import register_strategy, register_summary_part
from fl_app.server.run import ServerRun
from strategies.fedavg import FedAvg
from strategies.personalized import PersonalizedFedAvg


def _build_personalized(cfg: RunConfig, model: keras.Model, **common: Any) -> FedAvg:
    # the client-local arrays (FedPer's head) are marked so they are never averaged
    mask = local_weight_mask(model, cfg.personalization.local_layers)
    return PersonalizedFedAvg(local_mask=mask, **common)


register_strategy(STRATEGY_SPECS["personalized"], _build_personalized)


@register_summary_part
def personalized_summary(run: ServerRun, weights: NDArrays) -> dict[str, Any]:
    """Example-weighted mean personalized accuracy on the clients' rows, last round."""
    rows = run.recorder.rows
    return {
        "final_personalized_accuracy": rows[-1].get("federated_personalized_accuracy")
        if rows
        else None
    }
