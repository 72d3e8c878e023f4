"""Defences every strategy applies to a round's updates (:class:`DefenceStage`).

An update-norm bound (fixed, or a multiple of the round's median delta norm; a
longer update is clipped to it or rejected) and a cap on the example count a client
may claim (fixed, or a multiple of the round's median claim), or equal client
weights. A *delta* is an update minus the model the client was sent (its
reference); arrays that are empty in an update (a personalized client's local
layers) take no part. Pure numpy.

Median-relative bounds guard against honest outliers three ways:

- ``min_clients``: a round with fewer updates is not judged against its median (a
  median of two or three says little about what an honest update looks like);
- ``spread``: the bound is widened to ``exp(spread * s)`` times the median when that
  is wider, with ``s`` the robust standard deviation (1.4826 x the median absolute
  deviation) of the values' logarithms, so a federation whose honest clients differ
  widely (log-normal data sizes, say) is judged by its own spread, while one
  client far from a tight crowd is still caught;
- updates of different sizes (width slices) are compared by their root mean square
  delta, so a full-width client is not judged against the median of narrow ones;
- a client that claims more rows than the median (capped) may move further, by the
  square root of its share (:func:`work_allowance`): more rows, more local steps.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.common import NDArrays

from strategies.stages import Update


def delta_pairs(reference: NDArrays, update: NDArrays) -> list[tuple[int, np.ndarray]]:
    """Index and float64 delta of every array the update carries (non-empty)."""
    return [
        (i, np.asarray(u, np.float64) - np.asarray(r, np.float64))
        for i, (r, u) in enumerate(zip(reference, update, strict=True))
        if u.size and u.shape == r.shape
    ]


def delta_norm(reference: NDArrays, update: NDArrays) -> float:
    """L2 norm of ``update - reference`` over all the arrays the update carries."""
    return delta_norm_and_size(reference, update)[0]


def delta_norm_and_size(reference: NDArrays, update: NDArrays) -> tuple[float, int]:
    """:func:`delta_norm`, and how many entries the update carries, in one pass."""
    pairs = delta_pairs(reference, update)
    norm = math.sqrt(sum(float(np.sum(d * d)) for _, d in pairs))
    return norm, sum(d.size for _, d in pairs)


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
    ``spread`` and ``min_clients``: how a median bound spares honest outliers (the
    module's docstring).
    """

    norm_bound: float = 0.0
    norm_mode: str = "median"
    norm_action: str = "clip"
    max_examples: float = 0.0
    examples_mode: str = "median"
    equal_weights: bool = False
    spread: float = 0.0  # 0: the median bounds are never widened
    min_clients: int = 1  # median bounds judge rounds of at least this many updates

    def norm_threshold(self, norms: Sequence[float]) -> float | None:
        """Return the round's delta-norm bound, or None when the bound is off."""
        return self._bound(self.norm_bound, self.norm_mode, norms)

    def examples_cap(self, counts: Sequence[int]) -> float | None:
        """Return the largest example count a client may claim this round, or None."""
        return self._bound(self.max_examples, self.examples_mode, counts)

    def _bound(self, limit: float, mode: str, values: Sequence[float]) -> float | None:
        """Return ``limit`` (fixed) or the median bound widened to the spread.

        None when off, or when a median bound has too few values (or a median of
        0) to judge by.
        """
        if limit <= 0 or not values:
            return None
        if mode == "fixed":
            return limit
        median = statistics.median(values)
        if len(values) < self.min_clients or median <= 0:
            return None
        return median * max(limit, spread_factor(values, self.spread))


def spread_factor(values: Sequence[float], z: float) -> float:
    """``exp(z * s)``: ``s`` the robust standard deviation of ``log(values)``.

    ``s = 1.4826 * median(|log v - median(log v)|)`` over the positive values (the
    constant makes it the standard deviation for log-normal values); 0 when ``z``
    is 0 or fewer than two values are positive.
    """
    logs = [math.log(v) for v in values if v > 0]
    if z <= 0 or len(logs) < 2:
        return 0.0
    centre = statistics.median(logs)
    mad = statistics.median(abs(v - centre) for v in logs)
    return math.exp(z * 1.4826 * mad)


def work_allowance(
    counts: Sequence[int], cap: float | None, spread: float
) -> list[float]:
    """How much longer than the median bound each client's delta may be.

    A client with more rows takes more local steps and moves further: its bound
    grows by ``sqrt(claim / median claim)`` (at least 1), the claim first capped —
    at the example cap when it is on, else at the cap the default would set (2 x
    the median, widened to the spread) — so an inflated claim buys at most
    ``sqrt(cap / median)``.
    """
    if not counts:
        return []
    median = statistics.median(counts)
    if median <= 0:
        return [1.0] * len(counts)
    ceiling = (
        cap if cap is not None else median * max(2.0, spread_factor(counts, spread))
    )
    return [math.sqrt(max(1.0, min(n, ceiling) / median)) for n in counts]


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
    measured = [
        delta_norm_and_size(r, u) for r, u in zip(references, updates, strict=True)
    ]
    norms = [norm for norm, _ in measured]
    # a relative bound compares updates of different sizes (width slices) by their
    # root mean square delta: scale[i] turns that bound back into update i's norm
    sizes = [size for _, size in measured]
    scale = [1.0] * len(sizes)
    judged = norms
    if defence.norm_mode != "fixed" and len(set(sizes)) > 1:
        scale = [math.sqrt(max(n, 1)) for n in sizes]
        judged = [norm / s for norm, s in zip(norms, scale, strict=True)]
    threshold = defence.norm_threshold(judged)
    cap = defence.examples_cap(counts)
    if threshold is not None and defence.norm_mode != "fixed":
        allowance = work_allowance(counts, cap, defence.spread)
        scale = [u * a for u, a in zip(scale, allowance, strict=True)]
    verdicts = []
    for reference, update, n, norm, unit in zip(
        references, updates, counts, norms, scale, strict=True
    ):
        verdict = Verdict(update, 1 if defence.equal_weights else n)
        bound = None if threshold is None else threshold * unit
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


@dataclass(frozen=True)
class DefenceStage:
    """Apply a :class:`Defence` to a round's updates (a FedAvg stage)."""

    defence: Defence

    def apply(
        self, server_round: int, updates: list[Update], record: dict[str, Any]
    ) -> None:
        """Clip or reject by norm, cap claims, or weigh equally, per the defence."""
        live = [u for u in updates if u.weights is not None]
        verdicts = defend(
            self.defence,
            [u.reference for u in live],
            [u.weights for u in live],
            [u.num_examples for u in live],
        )
        for update, verdict in zip(live, verdicts, strict=True):
            update.weights, update.num_examples = verdict.update, verdict.num_examples
            update.reasons += verdict.reasons
            update.clipped |= verdict.clipped
            update.capped |= verdict.capped
