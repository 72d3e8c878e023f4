"""FedAvg for personalized clients: only the shared part of the model is aggregated.

Clients blend a local model with the global one (APFL, Deng et al. 2020,
https://arxiv.org/abs/2003.13461) or keep some layers purely local (FedPer,
Arivazhagan et al. 2019, https://arxiv.org/abs/1912.00818). Local models never leave
the clients: the server averages the global copies they send, and layers marked local
arrive as empty arrays and keep their global value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.common import NDArrays

from strategies.aggregation import aggregate_partial, check_partial_update
from strategies.fedavg import FedAvg


class PersonalizedFedAvg(FedAvg):
    """FedAvg over the shared layers; client-local layers are neither sent nor averaged.

    Parameters
    ----------
    local_mask : Sequence[bool]
        For each array of the global model, whether it is local to the clients
        (all False for APFL-style blending, where the whole global copy is shared).
    **kwargs
        As for :class:`strategies.fedavg.FedAvg`.
    """

    def __init__(self, *, local_mask: Sequence[bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(local_mask) != len(self.global_parameters):
            raise ValueError(
                f"local_mask has {len(local_mask)} entries, the model "
                f"{len(self.global_parameters)} arrays"
            )
        self.shared = [not local for local in local_mask]

    def __repr__(self) -> str:
        return (
            f"PersonalizedFedAvg(shared {sum(self.shared)}/{len(self.shared)} arrays)"
        )

    def check_layers(self, node_id: int, update: NDArrays) -> str | None:
        """Shared layers must match the global model; local ones must be empty."""
        return check_partial_update(self.global_parameters, update, self.shared)

    def aggregate_layers(self, accepted: list[tuple[int, NDArrays, int]]) -> NDArrays:
        """Average the shared layers; local layers keep their global value."""
        return aggregate_partial(
            self.global_parameters, [(w, n) for _, w, n in accepted], self.shared
        )
