"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).

Each client minimizes its loss plus ``mu/2 * ||w - w_global||^2``, where ``w_global``
is the model the server sent this round; the term keeps local training near the
global model when clients' data differ. Its gradient ``mu * (w - w_global)`` is added
to every gradient the client's optimizer applies, so it works unchanged with SGD and
Adam, the plain, DP-SGD and personalized trainers (on the global copy there), width
slices and pruned models. With DP-SGD the term is added after clipping and noise: it
depends only on the current weights and the global model, so the privacy guarantee
is untouched (post-processing) and the ε accounting stays as it is.

Settings: ``client.proximal_mu`` (Hydra; ``conf/client/fedprox.yaml``), the flat key
``client-proximal-mu``; 0 (the default) leaves it off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fl_app.core.schema import fail, setting
from fl_app.core.techniques import (
    ClientTechnique,
    TechniqueState,
    register_client_technique,
)

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig


@dataclass(frozen=True)
class ProximalConfig:
    """FedProx's proximal term weight ``mu``."""

    mu: float = setting(
        0.0,
        ">= 0 (0: off)",
        lambda v: v >= 0,
        help="weight of FedProx's proximal term mu/2 * ||w - w_global||^2",
    )

    def validate(self, run: RunConfig) -> None:
        """Refuse a plain-SGD step that would overshoot the global model."""
        optimizer = run.dpsgd.optimizer if run.dpsgd else run.client.optimizer
        rate = run.client.learning_rate
        if optimizer == "sgd" and self.mu * rate >= 1:
            raise fail(
                "client-proximal-mu",
                self.mu,
                f"< 1 / client-learning-rate ({1 / rate:g}) with SGD: a step of "
                "learning_rate * mu >= 1 jumps past the global model instead of "
                "pulling towards it",
            )


@register_client_technique
class FedProx(ClientTechnique):
    """Add ``mu * (w - w_global)`` to each gradient the optimizer applies."""

    name = "fedprox"
    prefix = "client-proximal"
    Config = ProximalConfig

    @classmethod
    def enabled(cls, config: ProximalConfig) -> bool:
        """On for ``mu > 0``."""
        return config.mu > 0

    def wrap_optimizer(self, optimizer: Any, variables: Sequence[Any]) -> Any:
        """Route the optimizer's updates through the proximal gradient."""
        import tensorflow as tf

        self.anchors = {
            v.ref(): tf.Variable(tf.zeros_like(v), trainable=False, name="prox_anchor")
            for v in variables
        }
        mu, anchors, apply = self.config.mu, self.anchors, optimizer.apply_gradients

        def apply_gradients(grads_and_vars, *args, **kwargs):
            proximal = [
                (g + mu * (v - anchors[v.ref()]), v)
                if g is not None and v.ref() in anchors
                else (g, v)
                for g, v in grads_and_vars
            ]
            return apply(proximal, *args, **kwargs)

        # Keras' and tensorflow-privacy's minimize() both end in
        # self.apply_gradients(grads_and_vars): the instance attribute takes it.
        optimizer.apply_gradients = apply_gradients
        return optimizer

    def begin(self, variables: Sequence[Any], state: TechniqueState) -> None:
        """Remember the weights the server sent: the centre of the proximal term."""
        for v in variables:
            self.anchors[v.ref()].assign(v)

    def end(
        self, variables: Sequence[Any], state: TechniqueState
    ) -> Mapping[str, float]:
        """Report how far local training moved: ``||w - w_global||``."""
        import tensorflow as tf

        squares = [
            tf.reduce_sum(tf.square(v - self.anchors[v.ref()])) for v in variables
        ]
        return {"proximal_distance": float(tf.sqrt(tf.add_n(squares)))}
