"""Stages around aggregation: what happens to accepted updates before averaging.

Simulated attacks and update defences, kept out of the strategy. A stage sees the
round's accepted updates as :class:`Update` records, in the fixed client order,
and may replace one's weights or claim, mark it, or reject it (``weights = None``
with a reason). Stages run in the order given
(``FedAvg(stages=[...])``: an attack before the defence that should catch it); the
strategy then checks every update a stage changed like any update, rejects, counts
and logs, and aggregates what is left. Every strategy built on
:class:`strategies.fedavg.FedAvg` gets them. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.common import NDArrays


@dataclass
class Update:
    """One accepted client update as the stages see and change it."""

    node: int
    partition_id: Any
    reference: NDArrays  # the model the node was sent (its delta is to this)
    weights: NDArrays | None  # None: rejected by a stage
    num_examples: int
    reasons: list[str] = field(default_factory=list)  # why it was changed
    clipped: bool = False
    capped: bool = False
    attacked: str | None = None  # the simulated attack that replaced it


class Stage(Protocol):
    """Changes a round's accepted updates in place."""

    def apply(
        self, server_round: int, updates: list[Update], record: dict[str, Any]
    ) -> None:
        """Change ``updates``; ``record`` is the round's record (for its own keys)."""
