"""FedRS, the restricted softmax (Li & Zhan, KDD 2021).

"Federated Learning with Restricted Softmax for Label Distribution Non-IID Data",
Xin-Chun Li and De-Chuan Zhan, KDD 2021.

A client whose data lack some classes pushes their outputs down in every step, which
drags the global classifier away from them. FedRS multiplies the logits of the
classes the client has no rows of by ``alpha`` in [0, 1) inside its training loss
(the softmax's other classes unchanged), so those classes are suppressed less;
evaluation and the uploaded model are untouched. alpha = 1 is plain FedAvg.

Refused with DP-SGD: which classes a client has depends on its records, so removing
one record (the only one of its class) changes every other example's loss, and the
sum of clipped per-example gradients then moves by more than the one clipped
gradient DP-SGD's noise is calibrated to. Refused with ``client.label_mask`` and
FedLC (each rewrites the same logits), with personalized strategies and split
training (they train with losses of their own, which this would not reach).

Settings: ``client.fedrs_alpha`` (Hydra; ``conf/client/fedrs.yaml``), the flat key
``client-fedrs-alpha``; 1 (the default) leaves it off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fl_app.core.schema import fail, setting
from fl_app.core.techniques import ClientTechnique, register_client_technique

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig


def refuse_with_own_losses(key: str, value: Any, run: RunConfig) -> None:
    """Refuse what conflicts with a technique that rewrites the loss's logits.

    ``key``/``value``: the technique's setting, named in the error.

    The label mask rewrites the same logits; personalized strategies and split
    training train with losses of their own (the technique would not reach them);
    DP-SGD's noise covers one clipped per-example gradient, and a loss that reads
    the client's labels as a whole makes one record change every example's loss.
    """
    from fl_app.core.config import strategy_spec

    if run.client.label_mask:
        raise fail(key, value, "off with client-label-mask (both rewrite the logits)")
    if strategy_spec(run).personal_state:
        raise fail(
            key,
            value,
            f"off with strategy {run.strategy!r} (a personalized strategy trains with "
            "a loss of its own)",
        )
    if run.split is not None:
        raise fail(key, value, "off with split training (its own loss, split)")
    if run.dpsgd is not None:
        raise fail(
            key,
            value,
            "off with DP-SGD (the adjustment reads the client's labels as a whole: "
            "one record can change every example's loss, beyond the one clipped "
            "gradient the noise covers)",
        )


def restricted_scale(labels: np.ndarray, num_classes: int, alpha: float) -> np.ndarray:
    """Return the per-class logit scale: 1 for the classes in ``labels``, else alpha."""
    present = np.bincount(np.asarray(labels, np.int64), minlength=num_classes) > 0
    return np.where(present[:num_classes], 1.0, alpha).astype(np.float32)


@dataclass(frozen=True)
class FedRSConfig:
    """FedRS's scale of the absent classes' logits."""

    alpha: float = setting(
        1.0,
        "0 <= value <= 1 (1: off)",
        lambda v: 0 <= v <= 1,
        help="FedRS: the scale of the logits of classes a client has no rows of",
    )

    def validate(self, run: RunConfig) -> None:
        """Refuse FedLC, the label mask, personalized strategies, split training."""
        refuse_with_own_losses("client-fedrs-alpha", self.alpha, run)
        if run.fedlc is not None:
            raise fail(
                "client-fedrs-alpha",
                self.alpha,
                "1 with client-fedlc-tau > 0 (FedRS and FedLC rewrite the same "
                "logits: pick one)",
            )


@register_client_technique
class FedRS(ClientTechnique):
    """Scale the absent classes' logits by alpha in the training loss."""

    name = "fedrs"
    prefix = "client-fedrs"
    Config = FedRSConfig

    @classmethod
    def enabled(cls, config: FedRSConfig) -> bool:
        """On for alpha < 1."""
        return config.alpha < 1

    def wrap_loss(self, loss: Callable, num_classes: int) -> Callable:
        """Return the restricted-softmax cross-entropy (``loss`` is the plain one)."""
        from fl_app.ml.training import LogitAdjustedLoss

        self.num_classes = num_classes
        self.loss = LogitAdjustedLoss(num_classes, "fedrs_crossentropy")
        return self.loss

    def set_labels(self, labels: np.ndarray | None) -> None:
        """Restrict the softmax to the client's classes (None: no restriction)."""
        scale = None
        if labels is not None:
            scale = restricted_scale(labels, self.num_classes, self.config.alpha)
        self.loss.set(scale, None)
