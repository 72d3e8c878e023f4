"""Read IDX files, the format MNIST and Fashion-MNIST are published in.

An IDX file (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS") is a 4-byte magic
number -- two zero bytes, a type code, the number of dimensions -- then each
dimension's size as a big-endian 32-bit integer, then the values in C order,
big-endian. Files ending in ``.gz`` are read through gzip, as published.

Written by hand: the format is a dozen lines of ``struct`` and ``numpy``, and the
packages that read it (``idx2numpy``, ``python-mnist``, ``tensorflow_datasets``)
would be a dependency for those lines or download the data themselves.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# type code -> big-endian numpy dtype
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """A file is not a well-formed IDX file."""


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Return the array an IDX file's bytes hold (native byte order).

    Raises
    ------
    IdxFormatError
        Naming ``name`` and what is wrong: the magic number, the type code, or a
        length that does not match the dimensions.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxFormatError(
            f"{name}: not an IDX file (magic number starts {data[:4].hex() or 'empty'},"
            " expected 0000 then a type code and the number of dimensions)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_TYPES)
        raise IdxFormatError(f"{name}: unknown IDX type code 0x{code:02x} ({known})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{name}: truncated header ({ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IdxFormatError(
            f"{name}: {len(data) - header} bytes of values, dimensions {shape} of "
            f"{dtype} need {expected}"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed when its name ends in ``.gz``)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except gzip.BadGzipFile as err:
        raise IdxFormatError(f"{path}: not a gzip file ({err})") from err
    return parse_idx(data, str(path))
