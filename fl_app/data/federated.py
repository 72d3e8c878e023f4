"""The federated view of a dataset: per-client train/validation and a central test set.

A client needs only its own rows (:func:`load_client_data`) and the server only the
central test set (:func:`load_central_data`):

- ``synthetic`` data is generated per client on demand
  (:class:`fl_app.data.datasets.SyntheticClients`, one generator walk per process),
  so no process holds every client's rows; the central test set is the held-out
  rows of the first ``dataset.test_clients`` clients;
- a pooled dataset (``digits``, ``mnist``, ``fashion_mnist``, hub datasets) is
  split by a partitioner that needs every row's label, so its whole federated view
  is built, cached per process (a Ray worker serves every client from it) and, for
  the local datasets, on disk (:mod:`fl_app.data.cache`): the first process builds,
  the others and later runs memory-map the result and touch only the rows they read.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from fl_app.core.config import DatasetConfig, PartitionConfig, RunConfig
from fl_app.data.cache import cacheable, cached
from fl_app.data.datasets import (
    ArrayDataset,
    CentralData,
    ClientData,
    FederatedData,
    SyntheticClients,
    load_digits,
    load_hub,
)
from fl_app.data.packaged import PACKAGED, load_packaged
from fl_app.data.partitioning import partition_indices

log = logging.getLogger(__name__)


def split_rows(
    data: ArrayDataset, fraction: float, rng: np.random.Generator
) -> tuple[ArrayDataset, ArrayDataset]:
    """Split ``data`` at random into ``(rest, held_out)`` with ``fraction`` held out.

    At least one row is held out and at least one kept when ``data`` has two or more,
    unless ``fraction`` is 0: then nothing is held out.
    """
    order = rng.permutation(len(data))
    n_out = int(round(fraction * len(data)))
    n_out = min(max(n_out, 1), len(data) - 1) if len(data) > 1 else 0
    if fraction == 0:
        n_out = 0
    return data.take(np.sort(order[n_out:])), data.take(np.sort(order[:n_out]))


def _stratified_split(
    data: ArrayDataset, fraction: float, seed: int
) -> tuple[ArrayDataset, ArrayDataset]:
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(
        np.arange(len(data)), test_size=fraction, stratify=data.y, random_state=seed
    )
    return data.take(np.sort(train_idx)), data.take(np.sort(test_idx))


def _client_split(
    pool: ArrayDataset, val_fraction: float, seed: int, pid: int
) -> ClientData:
    train, val = split_rows(pool, val_fraction, np.random.default_rng([seed, pid]))
    return ClientData(train=train, val=val)


def _client_splits(
    pools: list[ArrayDataset], val_fraction: float, seed: int
) -> tuple[ClientData, ...]:
    return tuple(
        _client_split(pool, val_fraction, seed, pid) for pid, pool in enumerate(pools)
    )


@functools.lru_cache(maxsize=4)
def _synthetic(dataset: DatasetConfig, num_clients: int, seed: int) -> SyntheticClients:
    return SyntheticClients(dataset, num_clients, seed)


def _synthetic_rows(
    dataset: DatasetConfig, num_clients: int, seed: int, pid: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """Return synthetic client ``pid``'s ``(pool, held-out test rows)``."""
    data = _synthetic(dataset, num_clients, seed).client(pid)
    return split_rows(
        data, dataset.test_fraction, np.random.default_rng([seed, pid, 1])
    )


def _concat_rows(parts: list[ArrayDataset]) -> ArrayDataset:
    return ArrayDataset(
        np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])
    )


def _synthetic_test(
    dataset: DatasetConfig, num_clients: int, seed: int
) -> ArrayDataset:
    """Return the held-out rows of the first ``dataset.test_clients`` clients."""
    return _concat_rows(
        [
            _synthetic_rows(dataset, num_clients, seed, pid)[1]
            for pid in range(min(num_clients, dataset.test_clients))
        ]
    )


@functools.lru_cache(maxsize=4)
def _load(
    dataset: DatasetConfig, partition: PartitionConfig, num_clients: int, seed: int
) -> FederatedData:

    return cached(
        dataset,
        partition,
        num_clients,
        seed,
        lambda: _build(dataset, partition, num_clients, seed),
    )


def _build(
    dataset: DatasetConfig, partition: PartitionConfig, num_clients: int, seed: int
) -> FederatedData:
    if dataset.name == "synthetic":
        splits = [
            _synthetic_rows(dataset, num_clients, seed, pid)
            for pid in range(num_clients)
        ]
        pools = [pool for pool, _ in splits]
        # the test clients' rows, as _synthetic_test draws them, without drawing twice
        test = _concat_rows([held for _, held in splits[: dataset.test_clients]])
        num_classes = dataset.num_classes
    else:
        if dataset.name == "digits":
            train_pool, test = _stratified_split(
                load_digits(), dataset.test_fraction, seed
            )
        elif dataset.name in PACKAGED:  # keep their own test split
            train_pool, test = load_packaged(dataset.name)
        else:  # hub datasets keep their own test split
            train_pool, test = load_hub(dataset.name)
        parts = partition_indices(train_pool.y, partition, num_clients, seed)
        pools = [train_pool.take(idx) for idx in parts]
        num_classes = int(train_pool.y.max()) + 1
    clients = _client_splits(pools, dataset.val_fraction, seed)
    log.debug(
        "federated %s: %d clients, sizes %s, central test %d",
        dataset.name,
        num_clients,
        [len(c.train) for c in clients],
        len(test),
    )
    return FederatedData(
        clients=clients,
        test=test,
        input_shape=tuple(test.x.shape[1:]),
        num_classes=num_classes,
    )


def load_federated_data(cfg: RunConfig) -> FederatedData:
    """Return every client's data and the central test set (process-cached).

    For a view of every client at once (tests, benchmarks); a client process reads
    :func:`load_client_data`, the server :func:`load_central_data`.
    """
    return _load(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)


def load_client_data(
    cfg: RunConfig, partition_id: int
) -> tuple[ClientData, tuple[int, ...], int]:
    """Return partition ``partition_id``'s rows and the data's input shape and classes.

    Synthetic data generates only this client; a pooled dataset is partitioned
    whole (its partitioner needs every label) and cached per process.
    """
    ds = cfg.dataset
    if ds.name == "synthetic":
        pool, _ = _synthetic_rows(ds, cfg.num_clients, cfg.seed, partition_id)
        rows = _client_split(pool, ds.val_fraction, cfg.seed, partition_id)
        return rows, (ds.dim,), ds.num_classes
    data = load_federated_data(cfg)
    return data.clients[partition_id], data.input_shape, data.num_classes


@functools.lru_cache(maxsize=4)
def _central(
    dataset: DatasetConfig, partition: PartitionConfig, num_clients: int, seed: int
) -> CentralData:
    if dataset.name == "synthetic":
        test = _synthetic_test(dataset, num_clients, seed)
        return CentralData(test, (dataset.dim,), dataset.num_classes)
    data = _load(dataset, partition, num_clients, seed)
    return CentralData(data.test, data.input_shape, data.num_classes)


def load_central_data(cfg: RunConfig) -> CentralData:
    """Return the central test set and the data's shape (process-cached).

    Synthetic data generates only the test clients' held-out rows.
    """
    return _central(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)


def prepare_federated_data(cfg: RunConfig) -> bool:
    """Build a run's federated data into the on-disk cache, if it is cacheable.

    Keeps nothing in memory. Returns whether the cache now holds it (``False`` for
    hub and synthetic datasets and with the cache off, which this leaves alone).
    """
    if not cacheable(cfg.dataset):
        return False
    args = (cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    cached(*args, lambda: _build(*args))
    return True


class DataFileError(ValueError):
    """A SuperNode's ``data-path`` file is missing or malformed."""


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_client_file(
    path: str | Path, input_shape: tuple[int, ...], num_classes: int
) -> ClientData:
    """Load a SuperNode's own data from an ``.npz`` file, checked against the run.

    The file holds ``x_train``, ``y_train``, ``x_test``, ``y_test``; ``x_*`` of shape
    ``(n, *input_shape)`` (for ``(h, w, 1)`` images, ``(n, h, w)`` is accepted),
    ``y_*`` integer labels in ``[0, num_classes)``. ``x_test``/``y_test`` become the
    node's held-out rows for federated evaluation.

    Raises
    ------
    DataFileError
        Naming the file and what is wrong with it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataFileError(f"data-path {str(path)!r}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as err:  # zip/format errors come as many types
        raise DataFileError(
            f"data-path {str(path)!r}: not a readable .npz ({err})"
        ) from err
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise DataFileError(
            f"data-path {str(path)!r}: missing {', '.join(missing)} "
            f"(needs {', '.join(NPZ_KEYS)}; has {', '.join(sorted(arrays)) or 'none'})"
        )
    splits = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        where = f"data-path {str(path)!r}"
        if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(
            y.dtype, np.integer
        ):
            raise DataFileError(
                f"{where}: x_{split} must be numeric and y_{split} integer labels, "
                f"got {x.dtype} and {y.dtype}"
            )
        if x.shape[1:] != input_shape and x.shape[1:] + (1,) == input_shape:
            x = x[..., np.newaxis]
        if x.shape[1:] != input_shape:
            raise DataFileError(
                f"{where}: x_{split} has rows of shape {x.shape[1:]}, the run's model "
                f"takes {input_shape}"
            )
        if y.ndim != 1 or len(y) != len(x) or len(x) == 0:
            raise DataFileError(
                f"{where}: y_{split} must be 1-D with one label per row of "
                f"x_{split} ({len(x)} rows, at least one); got shape {y.shape}"
            )
        if y.min() < 0 or y.max() >= num_classes:
            raise DataFileError(
                f"{where}: y_{split} labels must be in [0, {num_classes}), got "
                f"{y.min()}..{y.max()}"
            )
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataFileError(f"{where}: x_{split} has NaN or infinite values")
        splits.append(ArrayDataset(x, y.astype(np.int64)))
    return ClientData(train=splits[0], val=splits[1])
