"""Byzantine-robust aggregation rules, each Flower's own function.

Coordinate-wise median, trimmed mean (Yin et al., ICML 2018,
https://arxiv.org/abs/1803.01498), Krum and Multi-Krum (Blanchard et al., NeurIPS
2017, https://arxiv.org/abs/1703.02757) and Bulyan (El Mhamdi et al., ICML 2018,
https://arxiv.org/abs/1802.07927) from ``flwr.server.strategy.aggregate``;
:class:`RobustFedAvg` aggregates with one of them and keeps everything else of
:class:`strategies.fedavg.FedAvg` (validation, defences, records).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common import NDArrays
from flwr.server.strategy.aggregate import (
    aggregate_bulyan,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)

from strategies.fedavg import FedAvg


@dataclass(frozen=True)
class Rule:
    """A robust aggregation rule: its function and the fewest updates it needs."""

    aggregate: Callable[[list[tuple[NDArrays, int]], int, float, int], NDArrays]
    min_clients: Callable[[int], int]  # f -> n
    needs: str  # the condition, in words


def _median(results, f, beta, m):
    return aggregate_median(results)


def _trimmed(results, f, beta, m):
    return aggregate_trimmed_avg(results, beta)


def _krum(results, f, beta, m):
    return aggregate_krum(results, f, to_keep=0)


def _multikrum(results, f, beta, m):
    return aggregate_krum(results, f, to_keep=m)


def _bulyan(results, f, beta, m):
    return aggregate_bulyan(list(results), f, aggregate_krum, to_keep=0)


RULES: dict[str, Rule] = {
    "median": Rule(_median, lambda f: 1, "n >= 1"),
    "trimmed_mean": Rule(_trimmed, lambda f: 1, "n >= 1 (beta < 0.5)"),
    # Krum's score sums the n - f - 2 nearest distances: it needs n > 2f + 2
    "krum": Rule(_krum, lambda f: 2 * f + 3, "n >= 2f + 3"),
    "multikrum": Rule(_multikrum, lambda f: 2 * f + 3, "n >= 2f + 3"),
    "bulyan": Rule(_bulyan, lambda f: 4 * f + 3, "n >= 4f + 3"),
}


def robust_aggregate(
    rule: str,
    results: Sequence[tuple[NDArrays, int]],
    num_malicious: int = 0,
    trim_beta: float = 0.1,
    to_keep: int = 0,
) -> NDArrays:
    """Aggregate ``(weights, examples)`` with Flower's function for ``rule``.

    Each array comes back in the dtype of the first update's.

    Raises
    ------
    ValueError
        When there are fewer updates than the rule needs for ``num_malicious``.
    """
    spec = RULES[rule]
    if len(results) < spec.min_clients(num_malicious):
        raise ValueError(
            f"{rule} with f={num_malicious} needs {spec.needs}; {len(results)} "
            "update(s) this round"
        )
    merged = spec.aggregate(list(results), num_malicious, trim_beta, to_keep)
    first = results[0][0]
    return [np.asarray(m).astype(f.dtype) for m, f in zip(merged, first, strict=True)]


class RobustFedAvg(FedAvg):
    """FedAvg whose aggregate is a Byzantine-robust rule (:data:`RULES`).

    A round whose accepted updates are too few for the rule keeps the global model
    (logged and recorded as ``robust_skipped``) rather than averaging them.
    """

    def __init__(
        self,
        *,
        rule: str,
        num_malicious: int = 0,
        trim_beta: float = 0.1,
        to_keep: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; known: {', '.join(RULES)}")
        self.rule = rule
        self.num_malicious = num_malicious
        self.trim_beta = trim_beta
        self.to_keep = to_keep

    def __repr__(self) -> str:
        return f"RobustFedAvg({self.rule}, f={self.num_malicious})"

    def aggregate_layers(self, accepted: list[tuple[int, NDArrays, int]]) -> NDArrays:
        """Aggregate with the robust rule; keep the global model if it cannot."""
        results = [(w, 1 if self.uniform else n) for _, w, n in accepted]
        try:
            return robust_aggregate(
                self.rule, results, self.num_malicious, self.trim_beta, self.to_keep
            )
        except ValueError as err:
            self.note_round("robust_skipped", str(err))
            return self.global_parameters
