"""Sample-level DP-SGD as a client technique: tensorflow-privacy's model or optimizer.

On for ``dpsgd`` other than ``none``. With ``dpsgd-implementation=model`` (default)
the model becomes tensorflow-privacy's ``DPModel`` (its train step clips and noises
per-example gradients) and trains with a plain SGD or Adam; with ``optimizer`` it
keeps its class and trains with the DP Keras optimizer on per-example losses. The
Poisson-sampled local training and the ε accounting are the privacy feature's client
part (``fl_app.features.privacy.client``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fl_app.core.techniques import ClientTechnique, register_client_technique
from fl_app.features.privacy.settings import DpSgdConfig


@register_client_technique
class DpSgd(ClientTechnique):
    """Train with clipped, noised per-example gradients (tensorflow-privacy)."""

    name = "dpsgd"
    prefix = "dpsgd"
    Config = DpSgdConfig
    wraps_last = True  # DPModel is a class: pruning's rebuild of the layers drops it

    @property
    def per_example_loss(self) -> bool:  # type: ignore[override]
        """DP optimizers clip per-example losses; ``DPModel`` takes a reduced one."""
        return self.config.implementation == "optimizer"

    @classmethod
    def enabled(cls, config: DpSgdConfig) -> bool:
        """On for an optimizer other than ``none``."""
        return config.optimizer != "none"

    def wrap_model(self, model: Any) -> Any:
        """Return the model as a ``DPModel`` (``implementation=model``)."""
        if self.config.implementation != "model":
            return model
        from fl_app.features.privacy.dpsgd import dp_model

        return dp_model(model, self.config)

    def optimizer(self, client: Any) -> Any:
        """Return the optimizer (``dpsgd``'s choice) at the client's learning rate.

        A plain one for ``DPModel``, which privatizes the gradients it applies; a DP
        Keras optimizer otherwise.
        """
        if self.config.implementation == "model":
            from fl_app.ml.training import make_optimizer

            return make_optimizer(replace(client, optimizer=self.config.optimizer))
        from fl_app.features.privacy.dpsgd import dp_optimizer

        return dp_optimizer(self.config, client.learning_rate)
