"""The pruning feature's server part: the server's pruning mask.

Gives every dense strategy a :class:`strategies.transport.ServerPruner` that prunes
the global model to each round's sparsity (the schedule counts server rounds); the
clients keep the mask (:mod:`fl_app.features.pruning.technique`).
"""

from __future__ import annotations

from typing import Any

from fl_app.core.config import RunConfig
from fl_app.server.registry import register_strategy_options
from strategies.transport import ServerPruner


@register_strategy_options(dense_only=True)
def server_pruner(cfg: RunConfig, model: Any) -> dict[str, Any]:
    """Give the strategy ``model``'s pruning mask (nothing while pruning is off)."""
    if cfg.pruning is None:
        return {}
    from fl_app.features.pruning.pruning import prunable_arrays, sparsity_by_round

    return {
        "pruner": ServerPruner(
            prunable=prunable_arrays(model, cfg.pruning.layers),
            sparsity_by_round=sparsity_by_round(cfg.pruning, cfg.num_rounds),
        )
    }
