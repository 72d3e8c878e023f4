"""Sample-level DP-SGD as a client technique: tensorflow-privacy's optimizer.

On for ``dpsgd`` other than ``none``. The compiled model trains with the DP Keras
optimizer on per-example losses; the Poisson-sampled local training and the ε
accounting are the privacy feature's client part (``fl_app.features.privacy.client``).
"""

from __future__ import annotations

from typing import Any

from fl_app.core.techniques import ClientTechnique, register_client_technique
from fl_app.features.privacy.settings import DpSgdConfig


@register_client_technique
class DpSgd(ClientTechnique):
    """Train with tensorflow-privacy's DP optimizer (clipped, noised gradients)."""

    name = "dpsgd"
    prefix = "dpsgd"
    Config = DpSgdConfig
    per_example_loss = True  # DP optimizers clip per-example (microbatch) losses

    @classmethod
    def enabled(cls, config: DpSgdConfig) -> bool:
        """On for an optimizer other than ``none``."""
        return config.optimizer != "none"

    def optimizer(self, client: Any) -> Any:
        """Return the DP Keras optimizer at the client's learning rate."""
        from fl_app.features.privacy.dpsgd import dp_optimizer

        return dp_optimizer(self.config, client.learning_rate)
