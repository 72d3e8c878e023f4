"""A server learning rate and momentum on top of client-level DP (DP-FedAvgM).

Flower's DP-FedAvg wrappers return ``x + mean(clipped updates) + noise``: a server
step of learning rate 1 without momentum. McMahan et al. (2018) and Andrew et al.
(2021) step the server with momentum on that noised mean: ``v <- β v + Δ`` and
``x <- x + η v``. It only post-processes the wrapper's output, so the privacy
guarantee and the accountant are unchanged.

Learning Differentially Private Recurrent Language Models, ICLR 2018,
https://arxiv.org/abs/1710.06963
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy


def momentum_step(
    current: NDArrays,
    proposed: NDArrays,
    velocity: NDArrays | None,
    learning_rate: float,
    momentum: float,
) -> tuple[NDArrays, NDArrays]:
    """Return the new weights and velocity of one server momentum step.

    ``Δ = proposed - current``; ``v = momentum · v + Δ``; ``x = current + lr · v``.
    """
    delta = [p - c for p, c in zip(proposed, current, strict=True)]
    if velocity is None:
        velocity = delta
    else:
        velocity = [momentum * v + d for v, d in zip(velocity, delta, strict=True)]
    weights = [
        (c + learning_rate * v).astype(c.dtype)
        for c, v in zip(current, velocity, strict=True)
    ]
    return weights, velocity


class ServerMomentum(Strategy):
    """Step the server with a learning rate and momentum on ``strategy``'s result."""

    def __init__(self, strategy: Strategy, learning_rate: float, momentum: float):
        super().__init__()
        self.strategy = strategy
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.velocity: NDArrays | None = None
        self._current: NDArrays | None = None

    def __repr__(self) -> str:
        """Name the step and the wrapped strategy."""
        return (
            f"ServerMomentum(lr={self.learning_rate}, momentum={self.momentum}, "
            f"{self.strategy!r})"
        )

    @property
    def clipping_norm(self) -> float | None:
        """The wrapped DP wrapper's clipping norm (checkpointed when adaptive)."""
        return getattr(self.strategy, "clipping_norm", None)

    @clipping_norm.setter
    def clipping_norm(self, value: float) -> None:
        self.strategy.clipping_norm = value  # type: ignore[attr-defined]

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Delegate to the wrapped strategy."""
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Remember the round's global weights; delegate."""
        self._current = parameters_to_ndarrays(parameters)
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Take the wrapped strategy's weights as a proposal; step towards them."""
        proposed, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        if proposed is None or self._current is None:
            return proposed, metrics
        weights, self.velocity = momentum_step(
            self._current,
            [np.asarray(a) for a in parameters_to_ndarrays(proposed)],
            self.velocity,
            self.learning_rate,
            self.momentum,
        )
        return ndarrays_to_parameters(weights), metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Delegate to the wrapped strategy."""
        return self.strategy.configure_evaluate(
            server_round, parameters, client_manager
        )

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Delegate to the wrapped strategy."""
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Any]] | None:
        """Delegate to the wrapped strategy."""
        return self.strategy.evaluate(server_round, parameters)
