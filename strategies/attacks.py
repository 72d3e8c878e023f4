"""Attack simulation for research: what chosen clients send instead of their update.

Scaled (``λ·delta``), sign-flipped (``-λ·delta``), Gaussian noise, "a little is
enough" (Baruch et al., NeurIPS 2019, https://arxiv.org/abs/1902.06156) and an
inflated example count. The strategy puts them in place of the attackers' honest
updates before its defence (:class:`AttackStage`), in simulation only; label flipping
happens on the client's data (``fl_app.features.robust.settings``). Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from flwr.common import NDArrays

from strategies.defences import delta_pairs, with_delta
from strategies.stages import Update

ATTACKS = ("scaled", "sign_flip", "gaussian", "alie", "label_flip", "examples")


def alie_z(num_clients: int, num_attackers: int) -> float:
    """Baruch et al.'s z: the largest shift the median-based defences let through.

    ``s = floor(n / 2 + 1) - m`` honest clients must be won over; z is the standard
    normal quantile of ``(n - s) / n``.
    """
    s = math.floor(num_clients / 2 + 1) - num_attackers
    return NormalDist().inv_cdf((num_clients - s) / num_clients)


@dataclass(frozen=True)
class Attack:
    """What the attacking clients (by partition id) send instead.

    ``kind``: one of :data:`ATTACKS` (``label_flip`` acts on the client's data, so
    it leaves updates alone here). ``scale``: λ of ``scaled`` and ``sign_flip``,
    the noise std of ``gaussian``; ``num_examples``: the claim of ``examples``;
    ``z``: the shift of ``alie`` in standard deviations (0: Baruch et al.'s z for
    the round's clients and attackers).
    """

    kind: str
    attackers: frozenset[int]
    scale: float = 1.0
    num_examples: int = 10**9
    z: float = 0.0
    seed: int = 0

    def apply(
        self,
        server_round: int,
        pids: Sequence[Any],
        references: Sequence[NDArrays],
        updates: Sequence[NDArrays],
        counts: Sequence[int],
    ) -> tuple[list[NDArrays], list[int], list[int]]:
        """Return the round's updates and claims as sent, and the attackers' indices.

        ``alie`` sends every attacker ``mean - z * std`` of the attackers' honest
        deltas (coordinate-wise), so it needs no knowledge of the honest clients.
        """
        updates, counts = list(updates), list(counts)
        hit = [i for i, pid in enumerate(pids) if pid in self.attackers]
        if not hit or self.kind == "label_flip":
            return updates, counts, hit
        rng = np.random.default_rng([self.seed, server_round])
        if self.kind == "alie":
            deltas = [dict(delta_pairs(references[i], updates[i])) for i in hit]
            z = self.z or alie_z(len(updates), len(hit))
            shift = {
                k: np.mean([d[k] for d in deltas], axis=0)
                - z * np.std([d[k] for d in deltas], axis=0)
                for k in deltas[0]
            }
        for i in hit:
            ref, honest = references[i], updates[i]
            if self.kind == "scaled":
                updates[i] = with_delta(ref, honest, lambda d: self.scale * d)
            elif self.kind == "sign_flip":
                updates[i] = with_delta(ref, honest, lambda d: -self.scale * d)
            elif self.kind == "gaussian":
                updates[i] = with_delta(
                    ref, honest, lambda d: rng.normal(0.0, self.scale, d.shape)
                )
            elif self.kind == "alie":
                out = list(honest)
                for k, d in shift.items():
                    out[k] = (np.asarray(ref[k], np.float64) + d).astype(
                        honest[k].dtype
                    )
                updates[i] = out
            elif self.kind == "examples":
                counts[i] = self.num_examples
        return updates, counts, hit


@dataclass(frozen=True)
class AttackStage:
    """Put the simulated attackers' updates in place of theirs (a FedAvg stage)."""

    attack: Attack

    def apply(
        self, server_round: int, updates: list[Update], record: dict[str, Any]
    ) -> None:
        """Replace the attackers' weights or claims; record who attacked."""
        weights, counts, hit = self.attack.apply(
            server_round,
            [u.partition_id for u in updates],
            [u.reference for u in updates],
            [u.weights for u in updates],
            [u.num_examples for u in updates],
        )
        record["attackers"] = [updates[i].partition_id for i in hit]
        for i in hit:
            updates[i].weights, updates[i].num_examples = weights[i], counts[i]
            updates[i].attacked = self.attack.kind
