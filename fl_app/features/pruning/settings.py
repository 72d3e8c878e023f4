"""Settings of magnitude pruning (``pruning``, ``pruning-*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_app.core.config import (
    MODEL_LAYERS,
    names_of,
    positive,
    require_dense,
    unit_open,
)
from fl_app.core.schema import fail, setting

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig

PRUNING_SCHEDULES = ("none", "polynomial", "constant")


@dataclass(frozen=True)
class PruningConfig:
    """Magnitude pruning of Conv2D/Dense kernels; schedules count server rounds.

    Mirrors tensorflow-model-optimization's ``PolynomialDecay`` (``initial_sparsity``
    to ``final_sparsity`` between ``begin_round`` and ``end_round``) and
    ``ConstantSparsity`` (``final_sparsity`` from ``begin_round`` on).
    """

    schedule: str = setting("none", choices=PRUNING_SCHEDULES, key="pruning")
    initial_sparsity: float = setting(0.0, "0 <= value < 1", unit_open)
    final_sparsity: float = setting(0.9, "0 <= value < 1", unit_open)
    begin_round: int = setting(1, ">= 1", positive)
    end_round: int = setting(10, ">= 1", positive)
    frequency: int = setting(1, ">= 1", positive)
    # names of the Conv2D/Dense layers to prune; "auto": all but the model's first
    # and last (its class layer), "all": every one
    layers: str = setting("auto")

    def validate(self, run: RunConfig) -> None:
        """Check the schedule's rounds and sparsities, the layers, the strategy."""
        if self.schedule == "polynomial":
            if self.end_round <= self.begin_round:
                raise fail(
                    "pruning-end-round",
                    self.end_round,
                    f"> pruning-begin-round ({self.begin_round}) for the "
                    "polynomial schedule",
                )
            if self.initial_sparsity > self.final_sparsity:
                raise fail(
                    "pruning-initial-sparsity",
                    self.initial_sparsity,
                    f"<= pruning-final-sparsity ({self.final_sparsity})",
                )
        known = MODEL_LAYERS[run.model.name]
        names = names_of(self.layers)
        if self.layers not in ("auto", "all") and (
            not names or any(n not in known for n in names)
        ):
            raise fail(
                "pruning-layers",
                self.layers,
                f"'auto', 'all', or comma-separated layer names of model "
                f"'{run.model.name}': {', '.join(known)}",
            )
        if self.layers == "auto" and len(known) <= 2:
            raise fail(
                "pruning-layers",
                self.layers,
                f"layer names or 'all' for model '{run.model.name}' ('auto' skips "
                "the first and the class layer, which leaves nothing to prune)",
            )
        require_dense(run)
