"""Aggregation math as pure numpy functions.

FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629. The global model
is the average of the client models weighted by their number of training examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.common import NDArrays, Scalar


def aggregate_weighted(results: Sequence[tuple[NDArrays, int]]) -> NDArrays:
    """Average client models layer by layer, weighted by their example counts.

    Sums run in float64 in the given order, so equal inputs in equal order give
    bit-equal outputs; each layer is cast back to the first client's dtype.

    Parameters
    ----------
    results : Sequence[tuple[NDArrays, int]]
        ``(weights, num_examples)`` per client; all weights share one layout.

    Returns
    -------
    NDArrays
        ``sum_k n_k w_k / sum_k n_k`` for every layer.
    """
    if not results:
        raise ValueError("aggregate_weighted needs at least one result")
    total = sum(n for _, n in results)
    if total <= 0:
        raise ValueError(f"total number of examples must be positive, received {total}")
    first, _ = results[0]
    sums = [np.zeros(layer.shape, dtype=np.float64) for layer in first]
    for weights, n in results:
        for acc, layer in zip(sums, weights, strict=True):
            acc += np.asarray(layer, dtype=np.float64) * n
    return [
        (acc / total).astype(layer.dtype)
        for acc, layer in zip(sums, first, strict=True)
    ]


def aggregate_metrics(
    results: Sequence[tuple[int, Mapping[str, Scalar]]],
    exclude: frozenset[str] = frozenset({"partition_id"}),
) -> dict[str, float]:
    """Average each numeric metric over its reporting clients, weighted by examples.

    Parameters
    ----------
    results : Sequence[tuple[int, Mapping[str, Scalar]]]
        ``(num_examples, metrics)`` per client.
    exclude : frozenset[str]
        Keys that identify rather than measure (not averaged).
    """
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for n, metrics in results:
        for key, value in metrics.items():
            if key in exclude or isinstance(value, bool | str | bytes):
                continue
            sums[key] = sums.get(key, 0.0) + float(value) * n
            weights[key] = weights.get(key, 0) + n
    return {key: sums[key] / weights[key] for key in sums if weights[key] > 0}


def check_update(reference: NDArrays, update: NDArrays) -> str | None:
    """Return why ``update`` cannot be aggregated into ``reference``, or None if it can.

    An update is rejected when its number of layers, a layer's shape or dtype differs
    from the reference, or when it holds NaN or Inf.
    """
    if len(update) != len(reference):
        return f"{len(update)} layers, expected {len(reference)}"
    for i, (ref, layer) in enumerate(zip(reference, update, strict=True)):
        if layer.shape != ref.shape:
            return f"layer {i} has shape {layer.shape}, expected {ref.shape}"
        if layer.dtype != ref.dtype:
            return f"layer {i} has dtype {layer.dtype}, expected {ref.dtype}"
        if np.issubdtype(layer.dtype, np.inexact) and not np.all(np.isfinite(layer)):
            return f"layer {i} contains NaN or Inf"
    return None


def check_partial_update(
    reference: NDArrays, update: NDArrays, shared: Sequence[bool]
) -> str | None:
    """Like :func:`check_update` where only the ``shared`` layers travel.

    Layers that are not shared stay on the client: their slot in ``update`` must be
    an empty array.
    """
    if len(update) != len(reference):
        return f"{len(update)} layers, expected {len(reference)}"
    for i, (layer, is_shared) in enumerate(zip(update, shared, strict=True)):
        if not is_shared and layer.size != 0:
            return (
                f"layer {i} is local to the client and must be empty, has {layer.shape}"
            )
    kept = [i for i, is_shared in enumerate(shared) if is_shared]
    reason = check_update([reference[i] for i in kept], [update[i] for i in kept])
    if reason is not None and reason.startswith("layer "):
        index, rest = reason[len("layer ") :].split(" ", 1)
        return f"layer {kept[int(index)]} {rest}"
    return reason


def aggregate_partial(
    reference: NDArrays, results: Sequence[tuple[NDArrays, int]], shared: Sequence[bool]
) -> NDArrays:
    """Average the ``shared`` layers (FedAvg); the others keep their ``reference``."""
    averaged = iter(
        aggregate_weighted(
            [
                ([w for w, s in zip(weights, shared, strict=True) if s], n)
                for weights, n in results
            ]
        )
    )
    return [
        next(averaged) if s else ref for ref, s in zip(reference, shared, strict=True)
    ]


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """Return the boolean mask that keeps the largest magnitudes of ``weights``.

    Keeps ``k = max(round(size * (1 - sparsity)), 1)`` entries, the count
    tensorflow-model-optimization's magnitude pruning keeps; ties go to the lower
    flat index, so exactly ``k`` entries are kept.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), received {sparsity}")
    flat = np.abs(weights).reshape(-1)
    k = max(int(np.round(flat.size * (1.0 - sparsity))), 1)
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask.reshape(weights.shape)
