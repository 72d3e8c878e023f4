"""FedLC, logit calibration (Zhang et al., ICML 2022).

"Federated Learning with Label Distribution Skew via Logits Calibration", Jie Zhang,
Zhiqi Li, Bo Li, Jianghe Xu, Shuang Wu, Shouhong Ding, Chao Wu, ICML 2022.

Each client trains on calibrated logits ``z_c - tau * n_c ** (-1/4)``, ``n_c`` its
count of rows of class c: the rarer a class on the client, the more its logit is
lowered in the loss, so the client's gradient pushes it up more and the skew of its
labels biases the classifier less. A class the client has no rows of gets an
infinite shift (``n ** (-1/4)`` at 0), as in the authors' formula and the public
implementations, so it leaves the softmax. Evaluation and the uploaded model are
untouched; tau = 0 is plain FedAvg.

Refused, as FedRS (and for its reason), with DP-SGD: the counts make every
example's loss depend on the other records. Also refused with ``client.label_mask``
and FedRS, personalized strategies and split training.

Settings: ``client.fedlc_tau`` (Hydra; ``conf/client/fedlc.yaml``), the flat key
``client-fedlc-tau``; 0 (the default) leaves it off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fl_app.core.schema import setting
from fl_app.core.techniques import ClientTechnique, register_client_technique
from fl_app.features.fedrs.technique import refuse_with_own_losses

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig

ABSENT = 1e9  # the shift that takes a class out of the softmax


def calibration_shift(labels: np.ndarray, num_classes: int, tau: float) -> np.ndarray:
    """Return ``tau * n_c ** (-1/4)`` per class (:data:`ABSENT` where ``n_c`` is 0)."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    counts = counts[:num_classes].astype(np.float64)
    with np.errstate(divide="ignore"):
        shift = np.where(counts > 0, tau * counts**-0.25, ABSENT)
    return shift.astype(np.float32)


@dataclass(frozen=True)
class FedLCConfig:
    """FedLC's calibration strength tau."""

    tau: float = setting(
        0.0,
        ">= 0 (0: off)",
        lambda v: v >= 0,
        help="FedLC: the logit calibration tau * n_c^(-1/4) (n_c: the client's "
        "rows of class c)",
    )

    def validate(self, run: RunConfig) -> None:
        """Refuse DP-SGD, the label mask, personalized strategies, split training."""
        refuse_with_own_losses("client-fedlc-tau", self.tau, run)


@register_client_technique
class FedLC(ClientTechnique):
    """Shift each class's logit by tau * n_c^(-1/4) in the training loss."""

    name = "fedlc"
    prefix = "client-fedlc"
    Config = FedLCConfig

    @classmethod
    def enabled(cls, config: FedLCConfig) -> bool:
        """On for tau > 0."""
        return config.tau > 0

    def wrap_loss(self, loss: Callable, num_classes: int) -> Callable:
        """Return the calibrated cross-entropy (``loss`` is the plain one)."""
        from fl_app.ml.training import LogitAdjustedLoss

        self.num_classes = num_classes
        self.loss = LogitAdjustedLoss(num_classes, "fedlc_crossentropy")
        return self.loss

    def set_labels(self, labels: np.ndarray | None) -> None:
        """Calibrate to the client's class counts (None: no calibration)."""
        shift = None
        if labels is not None:
            shift = calibration_shift(labels, self.num_classes, self.config.tau)
        self.loss.set(None, shift)
