"""Compressed downloads: each client is sent what changed since its own copy.

Pure numpy (no TensorFlow, no Flower). The server keeps a *public model* ``P``: the
model every client's copy is a version of. After each aggregation it moves ``P``
towards the true global model ``G`` by the ``fraction`` largest entries of
``G - P`` in each kernel (every changed entry of 1-D arrays such as biases), their
new values rounded to ``values`` (``float32`` or ``float16``). What it leaves out
stays in ``G - P`` and is sent in a later round (error feedback on the server, as in
Tang et al. 2019, "DoubleSqueeze"): clients train from ``P`` and upload deltas, and
the server adds the mean delta to ``G``, not to ``P``.

``P`` is versioned by the round that produced it; for each version the server keeps
which entries changed (``max_age`` versions back). A client whose copy is at version
``v`` is sent the entries changed after ``v`` as gap-coded indices
(:func:`~fl_app.features.compression.codecs.encode_gaps`) and their current values:
absolute values, not increments, so a copy newer than ``v`` is updated correctly too.
A client with no copy, or one older than ``max_age`` versions, or one for which the
changed entries would cost more than the whole model, is sent the whole model.

Version 1 is the initial model, which every client can build itself from the run's
seed. With ``share_origin``, a client the server has not heard from yet is sent the
changes since version 1 and the initial model's digest (:data:`ORIGIN`); the client
takes its own seeded initial model as its copy if the digest matches, and fails the
message otherwise (then it is sent the whole model next time).

The server learns a client's version only from a reply (:meth:`ModelCopies.delivered`),
so what it assumes is never newer than the client's copy; a client that replies with
an error is assumed to have none (:meth:`ModelCopies.forget`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from fl_app.features.compression.codecs import (
    CodecError,
    decode_gaps,
    encode_gaps,
    top_magnitudes,
)

NDArrays = list[np.ndarray]
VALUES = {"float32": np.float32, "float16": np.float16}
BASE = "download_base"  # config key: the version the payload applies to (-1: whole)
VERSION = "download_version"  # config key: the version the payload brings the copy to
ORIGIN = "download_origin"  # config key: the digest of version 1 (the initial model)


class ModelCopies:
    """The server's public model, its change history and each client's version.

    Parameters
    ----------
    fraction : float
        Fraction of each kernel's entries (ndim >= 2) moved towards the global model
        per round, the largest differences (1.0: every changed entry).
    values : str
        ``float32`` or ``float16``: the precision of the public model's new values.
    max_age : int
        Versions of change history kept: an older copy is sent the whole model.
    share_origin : bool
        Whether clients the server has not heard from hold version 1 (the seeded
        initial model), checked by its digest.
    """

    def __init__(
        self,
        fraction: float = 1.0,
        values: str = "float32",
        max_age: int = 20,
        share_origin: bool = False,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if values not in VALUES:
            raise ValueError(f"values must be one of {sorted(VALUES)}, got {values!r}")
        if max_age < 1:
            raise ValueError(f"max_age must be >= 1, got {max_age}")
        self.fraction = fraction
        self.values = values
        self.max_age = max_age
        self.share_origin = share_origin
        self.origin: str | None = None  # digest of version 1, when shared
        self.version = 0
        self.public: NDArrays | None = None
        self.changed: dict[int, list[np.ndarray]] = {}  # version -> flat indices
        # client -> version of its copy (None: it may have none, send it whole)
        self.copies: dict[Hashable, int | None] = {}
        self._target: NDArrays | None = None  # the global model of the last advance
        self._target_digest: str | None = None  # its digest, after a restore

    def advance(self, target: Sequence[np.ndarray]) -> NDArrays:
        """Move the public model towards ``target``; return it.

        A new version, unless ``target`` equals the last target (the same global
        model sent again, e.g. for federated evaluation after training).
        """
        target = [np.asarray(t) for t in target]
        if (
            self._target is None
            and self._target_digest is not None
            and self._target_digest == _digest(target)
        ):
            self._target = [t.copy() for t in target]  # resumed: already advanced
        if (
            self._target is not None
            and self.public is not None
            and len(target) == len(self._target)
            and all(
                t.shape == o.shape and np.array_equal(t, o)
                for t, o in zip(target, self._target, strict=True)
            )
        ):
            return self.public
        self._target = [t.copy() for t in target]
        self.version += 1
        if self.public is None or [p.shape for p in self.public] != [
            t.shape for t in target
        ]:  # the first model (or another architecture): everyone needs it whole
            self.public = [t.astype(np.float32, copy=True) for t in target]
            self.changed.clear()
            self.copies.clear()
            first = self.version == 1 and self.share_origin
            self.origin = _digest(self.public) if first else None
            return self.public
        dtype = VALUES[self.values]
        changed = []
        for p, t in zip(self.public, target, strict=True):
            flat, diff = p.reshape(-1), (t.astype(np.float32) - p).reshape(-1)
            # the largest differences of a kernel; every changed entry of a 1-D array
            moved = top_magnitudes(diff, self.fraction) if p.ndim >= 2 else diff
            index = np.flatnonzero(moved)
            flat[index] = (flat[index] + diff[index]).astype(dtype).astype(np.float32)
            changed.append(index.astype(np.int32 if flat.size < 2**31 else np.int64))
        self.changed[self.version] = changed
        for old in [v for v in self.changed if v <= self.version - self.max_age]:
            del self.changed[old]
        return self.public

    def payload(self, client: Hashable) -> tuple[NDArrays, dict[str, int]]:
        """Return ``(arrays, config)`` that bring ``client``'s copy to the public model.

        ``config``: :data:`BASE` (the version the arrays apply to; -1: the whole
        model, dense float32) and :data:`VERSION` (the public model's).
        """
        if self.public is None:
            raise RuntimeError("no public model yet: call advance() first")
        whole = (list(self.public), {BASE: -1, VERSION: self.version})
        extra: dict[str, Any] = {}
        if client in self.copies:
            base = self.copies[client]
        elif self.origin is not None:  # its own seeded initial model
            base, extra = 1, {ORIGIN: self.origin}
        else:
            base = None
        if base is None or base > self.version:
            return whole
        versions = range(base + 1, self.version + 1)
        if any(v not in self.changed for v in versions):  # too old, or forgotten
            return whole
        arrays: NDArrays = []
        for i, p in enumerate(self.public):
            parts = [self.changed[v][i] for v in versions]
            index = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int32)
            arrays.append(encode_gaps(index))
            arrays.append(p.reshape(-1)[index].astype(VALUES[self.values]))
        if sum(a.nbytes for a in arrays) >= sum(p.nbytes for p in self.public):
            return whole
        return arrays, {BASE: base, VERSION: self.version, **extra}

    def delivered(self, client: Hashable, version: int) -> None:
        """``client`` replied to a message that brought its copy to ``version``."""
        self.copies[client] = version

    def forget(self, client: Hashable) -> None:
        """``client`` may have no usable copy: send it the whole model next time."""
        self.copies[client] = None

    # -- checkpoints ------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], NDArrays]:
        """Return ``(JSON, arrays)`` that :meth:`restore` continues from."""
        if self.public is None:
            return {"version": self.version}, []
        versions = sorted(self.changed)
        json = {
            "version": self.version,
            "arrays": len(self.public),
            "changed_versions": versions,
            "copies": [[k, v] for k, v in self.copies.items()],
            "target_digest": None if self._target is None else _digest(self._target),
            "origin": self.origin,
        }
        changed = [i for v in versions for i in self.changed[v]]
        return json, [*self.public, *changed]

    def restore(self, state: dict[str, Any], arrays: Sequence[np.ndarray]) -> None:
        """Continue from :meth:`state`'s output."""
        self.version = int(state["version"])
        self._target, self._target_digest = None, state.get("target_digest")
        self.origin = state.get("origin")
        count = int(state.get("arrays", 0))
        if not count:
            self.public, self.changed, self.copies = None, {}, {}
            return
        self.public = [np.array(a, np.float32) for a in arrays[:count]]
        rest = list(arrays[count:])
        versions = [int(v) for v in state["changed_versions"]]
        self.changed = {
            v: [np.asarray(a) for a in rest[k * count : (k + 1) * count]]
            for k, v in enumerate(versions)
        }
        self.copies = {k: None if v is None else int(v) for k, v in state["copies"]}


def _digest(arrays: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(str(a.shape).encode())
        digest.update(np.ascontiguousarray(a, np.float32).tobytes())
    return digest.hexdigest()


def apply_download(
    copy: NDArrays | None,
    copy_version: int | None,
    arrays: Sequence[np.ndarray],
    config: dict[str, Any],
    shapes: Sequence[tuple[int, ...]],
    origin: Sequence[np.ndarray] | None = None,
) -> NDArrays:
    """Return the client's copy brought to the version the server sent.

    ``origin``: the client's own seeded initial model, taken as version 1 when it
    has no copy and the payload's :data:`ORIGIN` digest matches it.

    Raises
    ------
    CodecError
        When the payload applies to a version the client's copy does not have, or
        does not decode for ``shapes``.
    """
    base = int(config[BASE])
    if base < 0:  # the whole model
        if len(arrays) != len(shapes) or any(
            np.shape(a) != tuple(s) for a, s in zip(arrays, shapes, strict=True)
        ):
            raise CodecError(f"a whole-model download must be {len(shapes)} arrays")
        out = [np.asarray(a, np.float32) for a in arrays]
        if not all(np.isfinite(a).all() for a in out):
            raise CodecError("a whole-model download holds non-finite values")
        return [a.copy() for a in out]
    if copy is None and ORIGIN in config and base == 1:
        if origin is None or _digest(origin) != config[ORIGIN]:
            raise CodecError(
                "the server sent the changes since the initial model, but this "
                "client's seeded initial model differs from the server's (or it has "
                "none); the server sends the whole model next time"
            )
        copy, copy_version = [np.asarray(a, np.float32) for a in origin], 1
    if copy is None or copy_version is None or copy_version < base:
        raise CodecError(
            f"the server sent the changes since model version {base}, but this "
            f"client's copy is at {copy_version} (none kept, or lost)"
        )
    if len(arrays) != 2 * len(shapes):
        raise CodecError(
            f"a delta download must be {2 * len(shapes)} arrays, got {len(arrays)}"
        )
    out = []
    for i, (old, shape) in enumerate(zip(copy, shapes, strict=True)):
        size = int(np.prod(shape, dtype=np.int64))
        index = decode_gaps(arrays[2 * i], size)
        values = np.asarray(arrays[2 * i + 1])
        if values.dtype not in (np.float32, np.float16) or values.shape != index.shape:
            raise CodecError(
                f"array {i}: {index.size} indices need as many float values, got "
                f"{values.dtype} {values.shape}"
            )
        if not np.isfinite(values).all():
            raise CodecError(f"array {i}: non-finite values")
        if old.shape != tuple(shape):
            raise CodecError(f"array {i}: the copy is {old.shape}, expected {shape}")
        new = np.array(old, np.float32).reshape(-1)
        new[index] = values.astype(np.float32)
        out.append(new.reshape(shape))
    return out
