"""Magnitude pruning as a client technique: the model's layers wrapped by tfmot.

On for ``pruning`` other than ``none``. The client's model keeps the server's mask
(:func:`fl_app.features.pruning.pruning.set_plain_weights` takes it from the zeros
of the weights it receives) and sends plain, masked arrays back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fl_app.core.techniques import ClientTechnique, register_client_technique
from fl_app.features.pruning.settings import PruningConfig


@register_client_technique
class Pruning(ClientTechnique):
    """Wrap Conv2D/Dense layers for pruning; exchange plain, masked arrays."""

    name = "pruning"
    prefix = "pruning"
    Config = PruningConfig

    @classmethod
    def enabled(cls, config: PruningConfig) -> bool:
        """On for a schedule other than ``none``."""
        return config.schedule != "none"

    def wrap_model(self, model: Any) -> Any:
        """Wrap the prunable layers (imports tfmot)."""
        from fl_app.features.pruning.pruning import wrap_for_pruning

        return wrap_for_pruning(model)

    def set_weights(self, model: Any, weights: Sequence[np.ndarray]) -> bool:
        """Set plain arrays; each wrapper's mask from the nonzeros."""
        from fl_app.features.pruning.pruning import set_plain_weights

        set_plain_weights(model, list(weights))
        return True

    def get_weights(self, model: Any) -> list[np.ndarray]:
        """Return the stripped, masked plain arrays."""
        from fl_app.features.pruning.pruning import get_plain_weights

        return get_plain_weights(model)
