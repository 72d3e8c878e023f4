"""How model arrays travel between the server and the clients, and the server mask.

:class:`Transport` encodes what the server sends with a download codec, decodes what
clients upload with an upload codec, and turns uploaded deltas back into models.
:class:`ServerPruner` keeps the global model sparse: on the rounds a pruning schedule
names, it keeps the largest magnitudes of each prunable kernel at the scheduled
sparsity, and between them it re-applies the mask it holds, so whatever a client
sends outside the mask never enters the global model.

Codecs are injected (any object with ``encode(weights) -> arrays`` and
``decode(arrays, shapes) -> weights`` raising ``ValueError`` on a bad payload), so
this module needs numpy only; the project's codecs live in
``fl_app.features.compression.codecs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.common import NDArrays

from strategies.aggregation import magnitude_mask


class Codec(Protocol):
    """Encodes float arrays to arrays and back."""

    def encode(self, weights: Sequence[np.ndarray]) -> NDArrays:
        """Return the encoded arrays."""

    def decode(
        self, arrays: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]
    ) -> NDArrays:
        """Return float32 arrays of ``shapes``; raise ``ValueError`` if malformed."""


class ModelCopies(Protocol):
    """Per-client downloads: what changed since each client's copy of the model.

    The project's implementation is ``fl_app.features.compression.download``.
    """

    version: int

    def advance(self, target: Sequence[np.ndarray]) -> NDArrays:
        """Move the public model towards the global ``target``; return it."""

    def payload(self, client: str) -> tuple[NDArrays, dict[str, int]]:
        """Return ``(arrays, config)`` that bring ``client``'s copy up to date."""

    def delivered(self, client: str, version: int) -> None:
        """``client`` replied to a message that brought its copy to ``version``."""

    def forget(self, client: str) -> None:
        """``client`` may have no usable copy (it failed): send it the whole model."""

    def state(self) -> tuple[dict, NDArrays]:
        """Return ``(JSON, arrays)`` for a checkpoint."""

    def restore(self, state: dict, arrays: Sequence[np.ndarray]) -> None:
        """Continue from :meth:`state`'s output."""


@dataclass(frozen=True)
class Transport:
    """Download/upload codecs (``None``: dense arrays) and delta uploads.

    ``cast_floats`` casts floating uploads to the model's dtypes before they are
    checked: Flower's SecAgg+ workflow hands the strategy its dequantized sum as
    float64 arrays.

    ``copies`` (with delta uploads) sends each client what changed since its own
    copy (:meth:`FedAvg._instruct` asks it per client); the clients' deltas are then
    added to the server's own global model, not to the public model they trained
    from, so what the download left out is sent in a later round.
    """

    upload: Codec | None = None
    download: Codec | None = None
    delta: bool = False
    cast_floats: bool = False
    copies: ModelCopies | None = None

    def send(self, weights: NDArrays) -> tuple[NDArrays, NDArrays]:
        """Return ``(payload, model the uploads' deltas are added to)``."""
        if self.copies is not None:  # per-client payloads: FedAvg._instruct
            self.copies.advance(weights)
            return weights, weights
        if self.download is None:
            return weights, weights
        payload = self.download.encode(weights)
        return payload, self.download.decode(payload, [w.shape for w in weights])

    def receive(self, payload: NDArrays, reference: NDArrays) -> NDArrays:
        """Return the client model an upload stands for.

        ``reference`` is the model the client decoded from its download; a delta
        upload is added to it.

        Raises
        ------
        ValueError
            When the payload does not decode under the upload codec.
        """
        if self.upload is None:
            update = payload
        else:
            update = self.upload.decode(payload, [w.shape for w in reference])
        if self.cast_floats and len(update) == len(reference):
            update = [
                u.astype(r.dtype)
                if np.issubdtype(u.dtype, np.floating) and u.dtype != r.dtype
                else u
                for u, r in zip(update, reference, strict=True)
            ]
        if not self.delta:
            return update
        if len(update) != len(reference) or any(
            u.shape != r.shape for u, r in zip(update, reference, strict=False)
        ):
            raise ValueError(
                f"a delta must match the model's {len(reference)} arrays and shapes"
            )
        return [(r + u).astype(r.dtype) for r, u in zip(reference, update, strict=True)]


@dataclass
class ServerPruner:
    """The server's pruning mask over the prunable arrays of the global model.

    Parameters
    ----------
    prunable : Sequence[bool]
        For each array of the model, whether it is a prunable kernel.
    sparsity_by_round : Mapping[int, float]
        The sparsity to prune to before each round that prunes (round 1 prunes the
        initial model); other rounds keep the current mask.
    """

    prunable: Sequence[bool]
    sparsity_by_round: Mapping[int, float]
    masks: dict[int, np.ndarray] = field(default_factory=dict)

    def apply(self, weights: NDArrays, next_round: int) -> NDArrays:
        """Prune ``weights`` for ``next_round`` (new mask or the held one)."""
        if len(weights) != len(self.prunable):
            raise ValueError(
                f"model has {len(weights)} arrays, prunable mask {len(self.prunable)}"
            )
        sparsity = self.sparsity_by_round.get(next_round)
        out = []
        for i, (w, prune) in enumerate(zip(weights, self.prunable, strict=True)):
            if prune and sparsity is not None:
                self.masks[i] = magnitude_mask(w, sparsity)
            mask = self.masks.get(i)
            out.append(w if mask is None else np.where(mask, w, 0).astype(w.dtype))
        return out

    def sparsity(self, weights: NDArrays) -> float:
        """Fraction of zeros over the prunable arrays of ``weights``."""
        kernels = [w for w, p in zip(weights, self.prunable, strict=True) if p]
        zeros = sum(int(np.sum(w == 0)) for w in kernels)
        return zeros / max(sum(w.size for w in kernels), 1)
