"""Width slicing's server part: the ``hetero`` strategy and accuracy by width."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flwr.common import NDArrays

from fl_app.core.config import STRATEGY_SPECS, RunConfig
from fl_app.features.hetero.slicing import model_layout, sizes_by_width
from fl_app.ml.training import evaluate_model, get_compiled_model, keras
from fl_app.server.registry import register_strategy, register_summary_part
from fl_app.server.run import ServerRun
from strategies.fedavg import FedAvg
from strategies.hetero_slicing import HeteroSlicingFedAvg, make_windows, slice_weights


def _build_hetero(cfg: RunConfig, model: keras.Model, **common: Any) -> FedAvg:
    layout, full_sizes = model_layout(model)  # fails on layers it cannot slice
    return HeteroSlicingFedAvg(
        layout=layout,
        full_sizes=full_sizes,
        sizes_by_width=sizes_by_width(full_sizes, cfg.hetero.widths),
        rolling=cfg.hetero.rolling,
        dynamic=cfg.hetero.dynamic,
        **common,
    )


register_strategy(STRATEGY_SPECS["hetero"], _build_hetero)


@register_summary_part
def accuracy_by_width(run: ServerRun, weights: NDArrays) -> dict[str, Any]:
    """Central accuracy of the global model sliced to each width the strategy serves."""
    strategy = run.strategy
    if not isinstance(strategy, HeteroSlicingFedAvg):
        return {"accuracy_by_width": None}
    result = {}
    for width, sizes in sorted(strategy.sizes_by_width.items(), reverse=True):
        windows = make_windows(strategy.full_sizes, sizes)
        model = get_compiled_model(replace(run.key, width=width), run.cfg.seed)
        model.set_weights(
            slice_weights(weights, strategy.layout, strategy.full_sizes, windows)
        )
        result[str(width)] = evaluate_model(model, run.data.test)[1]
    return {"accuracy_by_width": result}
