"""Which width each client trains under heterogeneous slicing (HeteroFL, FedRolex).

Pure numpy on the run config: the ClientApp needs it (a partition's capacity) and
must not import the server's slicing code or TensorFlow to get it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fl_app.core.config import RunConfig
from fl_app.features.hetero.settings import HeteroConfig


def assign_capacities(
    cfg: HeteroConfig, num_clients: int, seed: int | Sequence[int]
) -> list[float]:
    """Give each partition a capacity: shares by largest remainder, seeded shuffle.

    >>> assign_capacities(HeteroConfig(((1.0, 0.5), (0.5, 0.5)), False, True), 4, 0)
    [0.5, 1.0, 1.0, 0.5]
    """
    shares = np.array([share for _, share in cfg.capacities]) * num_clients
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts), kind="stable")[
        : num_clients - counts.sum()
    ]:
        counts[i] += 1
    widths = np.repeat([w for w, _ in cfg.capacities], counts)
    return [float(w) for w in np.random.default_rng(seed).permutation(widths)]


def partition_capacity(cfg: RunConfig, partition_id: int, server_round: int) -> float:
    """Return a partition's share of ``strategy-capacities`` in ``server_round``.

    Fixed: one seeded assignment for the whole run. Dynamic (HeteroFL's setting for
    devices whose free compute varies): a new assignment each round, seeded by
    ``(seed, round)``, so every round still has the configured shares.
    """
    seed = [cfg.seed, server_round] if cfg.hetero.dynamic else cfg.seed
    shares = assign_capacities(cfg.hetero, cfg.num_clients, seed)
    return shares[partition_id % cfg.num_clients]
