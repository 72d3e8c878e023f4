"""Update codecs: what a client uploads and the server sends, as plain ndarrays.

Pure numpy (no TensorFlow, no Flower), so the server-side strategy and the client use
the same code. A codec is a ``+``-joined spec: ``none`` (dense float32), ``float16``,
``int8`` (symmetric, one float32 scale per tensor), ``sign`` (one bit per value:
its sign, times one float32 scale per tensor, the mean magnitude, as in EF-SignSGD,
Karimireddy et al. 2019; meant for deltas with error feedback), ``sparse`` (the
nonzero entries of every kernel, ndim >= 2, as gap-coded indices + values; a kernel
too dense for that to pay is sent whole, with an empty index array) and combinations
such as ``sparse+int8``. Biases and other 1-D arrays are never sparse-coded: they
are small and dense.

Each tensor becomes a fixed number of arrays that depends only on the codec and the
tensor's rank, so the decoder, given the expected shapes, knows where each tensor's
arrays start, and every malformed payload (wrong count, dtype, size, index out of
range, non-finite scale) raises :class:`CodecError` instead of producing a model.

Indices are coded as gaps between successive nonzero positions, one ``uint8`` per gap
below 255; a gap of ``g >= 255`` is written as ``g // 255`` bytes of 255 followed by
``g % 255``. At the sparsities pruning reaches, that is about one byte per kept value,
against four for ``int32`` indices, and it decodes with one ``cumsum``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NDArrays = list[np.ndarray]
CODEC_PARTS = ("sparse", "float16", "int8", "sign")
VALUE_CODECS = ("float16", "int8", "sign")
_ESCAPE = 255


class CodecError(ValueError):
    """A payload does not decode under the configured codec."""


@dataclass(frozen=True)
class Codec:
    """A parsed codec spec; see the module docstring."""

    sparse: bool = False
    values: str = "float32"  # float32 | float16 | int8 | sign

    @classmethod
    def parse(cls, spec: str) -> Codec:
        """Parse ``"none"`` or a ``+``-joined subset of :data:`CODEC_PARTS`."""
        parts = [p.strip() for p in spec.split("+")] if spec != "none" else []
        unknown = [p for p in parts if p not in CODEC_PARTS]
        if unknown or len(set(parts)) != len(parts):
            raise ValueError(
                f"codec {spec!r}: expected 'none' or a '+'-joined subset of "
                f"{', '.join(CODEC_PARTS)}"
            )
        values = [p for p in parts if p in VALUE_CODECS]
        if len(values) > 1:
            raise ValueError(
                f"codec {spec!r}: {' and '.join(values)} exclude each other"
            )
        return cls(sparse="sparse" in parts, values=values[0] if values else "float32")

    @property
    def lossless(self) -> bool:
        """Whether decoding returns exactly the float32 arrays that were encoded."""
        return self.values == "float32"

    def __str__(self) -> str:
        parts = (["sparse"] if self.sparse else []) + (
            [self.values] if self.values != "float32" else []
        )
        return "+".join(parts) or "none"

    def _sparse(self, ndim: int) -> bool:
        return self.sparse and ndim >= 2

    def arrays_per_tensor(self, ndim: int) -> int:
        """How many arrays one tensor of rank ``ndim`` becomes."""
        return (2 if self._sparse(ndim) else 1) + (self.values in ("int8", "sign"))

    def encode(self, weights: Sequence[np.ndarray]) -> NDArrays:
        """Encode float arrays; see :meth:`decode` for the inverse."""
        out: NDArrays = []
        for w in weights:
            w = np.asarray(w, np.float32)
            if self._sparse(w.ndim):
                flat = w.reshape(-1)
                (index,) = np.nonzero(flat)
                gaps = encode_gaps(index)
                # sign coding has no zero: it may send a kernel whole only if full
                whole_ok = self.values != "sign" or index.size == flat.size
                if not whole_ok or gaps.size + index.size * self._value_bytes < (
                    flat.size * self._value_bytes
                ):
                    out.append(gaps)
                    out.extend(self._encode_values(flat[index]))
                else:  # denser than it pays to index: no indices, every value
                    out.append(np.zeros(0, np.uint8))
                    out.extend(self._encode_values(flat))
            else:
                out.extend(self._encode_values(w))
        return out

    @property
    def _value_bytes(self) -> int:
        return {"float32": 4, "float16": 2, "int8": 1, "sign": 1 / 8}[self.values]

    def _encode_values(self, values: np.ndarray) -> NDArrays:
        if self.values == "float16":
            return [values.astype(np.float16)]
        if self.values == "int8":
            q, scale = quantize_int8(values)
            return [q, scale]
        if self.values == "sign":
            scale = float(np.mean(np.abs(values))) if values.size else 0.0
            return [np.packbits(values < 0), np.array([scale], np.float32)]
        return [values]

    def decode(
        self, arrays: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]
    ) -> NDArrays:
        """Decode ``arrays`` into float32 tensors of ``shapes``.

        Raises
        ------
        CodecError
            When the payload does not match the codec and the shapes.
        """
        expected = sum(self.arrays_per_tensor(len(s)) for s in shapes)
        if len(arrays) != expected:
            raise CodecError(
                f"codec {self}: expected {expected} arrays for {len(shapes)} "
                f"tensors, received {len(arrays)}"
            )
        out: NDArrays = []
        pos = 0
        for shape in shapes:
            size = int(np.prod(shape, dtype=np.int64))
            if self._sparse(len(shape)):
                index = decode_gaps(arrays[pos], size)
                pos += 1
                # no indices but some values: the kernel was sent whole
                if index.size == 0 and np.asarray(arrays[pos]).size > 0:
                    values, pos = self._decode_values(arrays, pos, (size,))
                    out.append(values.reshape(shape))
                    continue
                values, pos = self._decode_values(arrays, pos, (len(index),))
                dense = np.zeros(size, np.float32)
                dense[index] = values
                out.append(dense.reshape(shape))
            else:
                values, pos = self._decode_values(arrays, pos, shape)
                out.append(values)
        return out

    def _decode_values(
        self, arrays: Sequence[np.ndarray], pos: int, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, int]:
        values = np.asarray(arrays[pos])
        if self.values == "sign":
            return _decode_sign(values, arrays[pos + 1], shape), pos + 2
        want = {"float32": np.float32, "float16": np.float16, "int8": np.int8}
        if values.dtype != want[self.values] or values.shape != tuple(shape):
            raise CodecError(
                f"codec {self}: expected {self.values} values of shape "
                f"{tuple(shape)}, received {values.dtype} {values.shape}"
            )
        if self.values == "int8":
            return dequantize_int8(values, arrays[pos + 1]), pos + 2
        decoded = values.astype(np.float32)
        if not np.isfinite(decoded).all():
            raise CodecError(f"codec {self}: non-finite values")
        return decoded, pos + 1


def encode_gaps(index: np.ndarray) -> np.ndarray:
    """Code sorted, distinct flat indices as ``uint8`` gaps (see module docstring)."""
    index = np.asarray(index, np.int64)
    if index.size == 0:
        return np.zeros(0, np.uint8)
    gaps = np.diff(index, prepend=0)  # the first gap is the first index itself
    escapes = gaps // _ESCAPE
    lengths = escapes + 1
    out = np.full(int(lengths.sum()), _ESCAPE, np.uint8)
    out[np.cumsum(lengths) - 1] = gaps % _ESCAPE
    return out


def decode_gaps(coded: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`encode_gaps`, checked against a tensor of ``size`` elements."""
    coded = np.asarray(coded)
    if coded.dtype != np.uint8 or coded.ndim != 1:
        raise CodecError(
            f"sparse indices must be a 1-D uint8 array, received {coded.dtype} "
            f"{coded.shape}"
        )
    positions = np.cumsum(coded, dtype=np.int64)[coded != _ESCAPE]
    if positions.size and (
        positions[-1] >= size or (positions.size > 1 and np.any(np.diff(positions) < 1))
    ):
        raise CodecError(
            f"sparse indices out of range or repeated for a tensor of {size} elements"
        )
    return positions


def _decode_sign(
    bits: np.ndarray, scale: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    size = int(np.prod(shape, dtype=np.int64))
    if bits.dtype != np.uint8 or bits.shape != ((size + 7) // 8,):
        raise CodecError(
            f"sign codec: expected {(size + 7) // 8} uint8 bytes for {size} values, "
            f"received {bits.dtype} {bits.shape}"
        )
    scale = np.asarray(scale)
    if scale.dtype != np.float32 or scale.shape != (1,) or not np.isfinite(scale[0]):
        raise CodecError(f"sign codec: scale must be one finite float32, got {scale}")
    negative = np.unpackbits(bits, count=size).astype(bool)
    return np.where(negative, -scale[0], scale[0]).astype(np.float32).reshape(shape)


def quantize_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(q, scale)`` with ``q = round(values / scale)`` in [-127, 127]."""
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    scale = np.float32(peak / 127.0 if peak > 0 else 1.0)
    q = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
    return q, np.array([scale], np.float32)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_int8` (up to half a quantization step)."""
    scale = np.asarray(scale)
    if scale.dtype != np.float32 or scale.shape != (1,):
        raise CodecError(
            f"int8 scale must be float32 of shape (1,), received {scale.dtype} "
            f"{scale.shape}"
        )
    if not np.isfinite(scale).all() or scale[0] <= 0:
        raise CodecError(f"int8 scale must be finite and > 0, received {scale[0]}")
    return q.astype(np.float32) * scale[0]


@dataclass(frozen=True)
class ClientCodecs:
    """A client's side of the transport: decode downloads, encode uploads.

    Parameters
    ----------
    upload, download : Codec
        The codecs of each direction (``Codec()`` is dense float32).
    delta : bool
        Upload the trained model minus the model received.
    error_feedback : bool
        Add the previous round's coding error to the update before encoding it and
        keep the new error (Seide et al. 2014; Karimireddy et al. 2019), so what
        quantization or top-k drops in one round is sent in a later one.
    topk : float
        Fraction of each kernel's update entries to send, the largest magnitudes
        (1.0: all). Meant for deltas with error feedback and a sparse codec.
    """

    upload: Codec = Codec()
    download: Codec = Codec()
    delta: bool = False
    error_feedback: bool = False
    topk: float = 1.0

    @classmethod
    def from_specs(
        cls,
        upload: str,
        download: str,
        delta: bool,
        error_feedback: bool,
        topk: float = 1.0,
    ) -> ClientCodecs:
        """Build from codec specs (see :meth:`Codec.parse`)."""
        return cls(
            Codec.parse(upload), Codec.parse(download), delta, error_feedback, topk
        )

    def decode_download(
        self, arrays: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]
    ) -> NDArrays:
        """Return the model the server sent."""
        return self.download.decode(arrays, shapes)

    def encode_upload(
        self,
        weights: NDArrays,
        received: NDArrays,
        residual: NDArrays | None = None,
        keep: Sequence[np.ndarray | None] | None = None,
    ) -> tuple[NDArrays, NDArrays | None]:
        """Return ``(payload, residual to keep)`` for the trained ``weights``.

        ``keep`` optionally masks each array of the update (pruned kernels: the
        entries the server's mask keeps), so a carried-over error never leaks
        outside the mask.
        """
        if self.delta:
            update = [w - r for w, r in zip(weights, received, strict=True)]
        else:
            update = [np.asarray(w, np.float32) for w in weights]
        if self.error_feedback and residual is not None:
            if [e.shape for e in residual] == [u.shape for u in update]:
                update = [u + e for u, e in zip(update, residual, strict=True)]
        if keep is not None:
            update = [
                u if k is None else np.where(k, u, 0).astype(np.float32)
                for u, k in zip(update, keep, strict=True)
            ]
        if self.topk < 1.0:
            update = [
                top_magnitudes(u, self.topk) if u.ndim >= 2 else u for u in update
            ]
        payload = self.upload.encode(update)
        if not self.error_feedback:
            return payload, None
        decoded = self.upload.decode(payload, [u.shape for u in update])
        return payload, [u - d for u, d in zip(update, decoded, strict=True)]


def top_magnitudes(values: np.ndarray, fraction: float) -> np.ndarray:
    """Zero all but the ``max(round(size * fraction), 1)`` largest magnitudes."""
    flat = values.reshape(-1)
    k = max(int(np.round(flat.size * fraction)), 1)
    if k >= flat.size:
        return values
    keep = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(values.shape)
