"""Settings of personalized blending (APFL, FedPer).

``strategy-*`` of strategies that keep a personal model
(``StrategySpec.personal_state``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fl_app.core.config import MODEL_LAYERS, names_of, non_negative, strategy_has
from fl_app.core.schema import fail, register_section, setting

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig

PERSONAL_MODES = ("fixed", "apfl", "fedper")


@dataclass(frozen=True)
class PersonalizationConfig:
    """Personalized blending ``alpha * local + (1 - alpha) * global``.

    ``fixed``: APFL with a fixed ``alpha``; ``apfl``: ``alpha`` learned per client
    (Deng et al., 2020); ``fedper``: the layers in ``local_layers`` are purely local
    (``alpha = 1``) and never leave the client, the others purely global.
    ``local_layers`` is empty except in ``fedper`` mode.
    """

    mode: str = setting("apfl", choices=PERSONAL_MODES)
    alpha: float = setting(0.5, "0 <= value <= 1", lambda v: 0 <= v <= 1)
    alpha_lr: float = setting(0.1, ">= 0", non_negative)
    local_layers: tuple[str, ...] = setting("classifier", parse=names_of)

    def resolved(self) -> PersonalizationConfig:
        """Drop ``local_layers`` outside fedper mode."""
        return self if self.mode == "fedper" else replace(self, local_layers=())

    def validate(self, run: RunConfig) -> None:
        """FedPer's local layers must be some, not all, of the model's layers."""
        if self.mode != "fedper":
            return
        known = MODEL_LAYERS[run.model.name]
        text = ",".join(self.local_layers)
        if not self.local_layers or any(n not in known for n in self.local_layers):
            raise fail(
                "strategy-local-layers",
                text,
                f"comma-separated layer names of model '{run.model.name}': "
                f"{', '.join(known)}",
            )
        if set(self.local_layers) == set(known):
            raise fail(
                "strategy-local-layers",
                text,
                "a proper subset of the layers (something must be shared)",
            )


register_section(
    "personalization",
    PersonalizationConfig,
    "strategy",
    strategy_has("personal_state"),
)
