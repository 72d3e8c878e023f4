"""Defences every strategy applies to a round's updates (``FedAvg.defence``).

An update-norm bound (fixed, or a multiple of the round's median delta norm; a
longer update is clipped to it or rejected) and a cap on the example count a client
may claim (fixed, or a multiple of the round's median claim), or equal client
weights. A *delta* is an update minus the model the client was sent (its
reference); arrays that are empty in an update (a personalized client's local
layers) take no part. Pure numpy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.common import NDArrays


def delta_pairs(reference: NDArrays, update: NDArrays) -> list[tuple[int, np.ndarray]]:
    """Index and float64 delta of every array the update carries (non-empty)."""
    return [
        (i, np.asarray(u, np.float64) - np.asarray(r, np.float64))
        for i, (r, u) in enumerate(zip(reference, update, strict=True))
        if u.size and u.shape == r.shape
    ]


def delta_norm(reference: NDArrays, update: NDArrays) -> float:
    """L2 norm of ``update - reference`` over all the arrays the update carries."""
    return math.sqrt(
        sum(float(np.sum(d * d)) for _, d in delta_pairs(reference, update))
    )


def with_delta(
    reference: NDArrays, update: NDArrays, transform: Callable[[np.ndarray], Any]
) -> NDArrays:
    """Return ``reference + transform(delta)`` array by array (empty arrays kept)."""
    out = list(update)
    for i, delta in delta_pairs(reference, update):
        out[i] = (np.asarray(reference[i], np.float64) + transform(delta)).astype(
            update[i].dtype
        )
    return out


@dataclass(frozen=True)
class Defence:
    """Bounds on what one client can do to a round's aggregate.

    ``norm_bound``: 0 off; else the largest delta norm accepted, in absolute terms
    (``norm_mode="fixed"``) or as a multiple of the round's median delta norm
    (``"median"``). ``norm_action``: ``"clip"`` scales a longer delta down to the
    bound, ``"reject"`` drops the update. ``max_examples``: 0 off; else the largest
    example count a client may claim, absolute or a multiple of the median claim
    (``examples_mode``). ``equal_weights``: average clients with equal weights.
    """

    norm_bound: float = 0.0
    norm_mode: str = "median"
    norm_action: str = "clip"
    max_examples: float = 0.0
    examples_mode: str = "median"
    equal_weights: bool = False

    def norm_threshold(self, norms: Sequence[float]) -> float | None:
        """Return the round's delta-norm bound, or None when the bound is off."""
        return _bound(self.norm_bound, self.norm_mode, norms)

    def examples_cap(self, counts: Sequence[int]) -> float | None:
        """Return the largest example count a client may claim this round, or None."""
        return _bound(self.max_examples, self.examples_mode, counts)


def _bound(limit: float, mode: str, values: Sequence[float]) -> float | None:
    """``limit`` itself (``fixed``) or times the median of ``values``; None when off."""
    if limit <= 0 or not values:
        return None
    if mode == "fixed":
        return limit
    return limit * statistics.median(values)


@dataclass
class Verdict:
    """What the defence did to one update."""

    update: NDArrays | None  # None: rejected
    num_examples: int
    reasons: list[str] = field(default_factory=list)
    clipped: bool = False
    capped: bool = False


def defend(
    defence: Defence,
    references: Sequence[NDArrays],
    updates: Sequence[NDArrays],
    counts: Sequence[int],
) -> list[Verdict]:
    """Apply ``defence`` to a round's accepted updates (each with its reference).

    Norms and claims are judged against the round's median over these updates, so
    one attacker cannot move the bound far (the median of ten is set by the middle).
    """
    norms = [delta_norm(r, u) for r, u in zip(references, updates, strict=True)]
    bound = defence.norm_threshold(norms)
    cap = defence.examples_cap(counts)
    verdicts = []
    for reference, update, n, norm in zip(
        references, updates, counts, norms, strict=True
    ):
        verdict = Verdict(update, 1 if defence.equal_weights else n)
        if bound is not None and norm > bound:
            if defence.norm_action == "reject":
                verdict.update = None
                verdict.reasons.append(
                    f"update norm {norm:.4g} exceeds the bound {bound:.4g}"
                )
            else:
                verdict.update = with_delta(
                    reference, update, lambda d, s=bound / norm: d * s
                )
                verdict.clipped = True
                verdict.reasons.append(
                    f"update norm {norm:.4g} clipped to the bound {bound:.4g}"
                )
        if cap is not None and verdict.num_examples > cap:
            verdict.reasons.append(
                f"claimed {verdict.num_examples} examples, capped at {int(cap)}"
            )
            verdict.num_examples = max(1, int(cap))
            verdict.capped = True
        verdicts.append(verdict)
    return verdicts
