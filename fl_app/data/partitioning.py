"""Split a labelled pool over clients: IID, Dirichlet, pathological, shards.

The splits come from flwr-datasets' partitioners, run on an in-memory
``datasets.Dataset`` that holds only the labels and the row index, so the features
never leave numpy.

``shards`` is the non-IID split of McMahan et al., "Communication-Efficient Learning
of Deep Networks from Decentralized Data" (AISTATS 2017,
https://arxiv.org/abs/1602.05629), section 3: the pool sorted by label, cut into
``num_clients * shards_per_client`` shards of equal size, each client dealt
``shards_per_client`` of them at random (flwr-datasets' ``ShardPartitioner``). It is
not ``pathological`` (``PathologicalPartitioner``), which gives each client a number
of classes and splits each class among the clients holding it.
"""

from __future__ import annotations

import warnings

import numpy as np

from fl_app.core.config import PartitionConfig


class PartitionError(ValueError):
    """The pool cannot be split as configured."""


def _make_partitioner(cfg: PartitionConfig, num_partitions: int, seed: int):
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    if cfg.name == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if cfg.name == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=cfg.alpha,
            min_partition_size=cfg.min_size,
            self_balancing=False,
            seed=seed,
        )
    if cfg.name == "pathological":
        # "first-deterministic" is the setting of Li et al. (NIID-Bench, 2021): client
        # i always holds class i mod C, so every class is held by someone.
        return PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=cfg.classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    if cfg.name == "shards":
        # shard size floor(rows / (num_partitions * shards_per_client)): MNIST's
        # 60,000 rows over 100 clients x 2 shards are 200 shards of 300, as published
        return ShardPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_shards_per_partition=cfg.shards_per_client,
            seed=seed,
        )
    raise PartitionError(f"partition '{cfg.name}' does not split a pooled dataset")


def partition_indices(
    labels: np.ndarray, cfg: PartitionConfig, num_partitions: int, seed: int
) -> list[np.ndarray]:
    """Return, for each partition, the indices into ``labels`` it holds.

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels of the pool, shape ``(n,)``.
    cfg : PartitionConfig
        The partitioning scheme and its parameters.
    num_partitions : int
        Number of clients.
    seed : int
        Equal seeds give equal partitions.

    Raises
    ------
    PartitionError
        When the scheme cannot produce the partitions (too many partitions for the
        pool, more classes per client than the pool has, Dirichlet minimum size not
        reachable, fewer rows than shards).

    With ``cfg.shuffle`` the pool's order is permuted (from ``seed``) first and the
    partitions mapped back to the original rows: ``iid`` then deals each client
    rows drawn at random instead of a contiguous block of the pool's stored order.
    """
    from datasets import Dataset

    num_classes = len(np.unique(labels))
    if num_partitions > len(labels):
        raise PartitionError(
            f"num-clients ({num_partitions}) exceeds the {len(labels)} training rows"
        )
    if cfg.name == "shards" and num_partitions * cfg.shards_per_client > len(labels):
        raise PartitionError(
            f"run config key 'partition-shards-per-client': received "
            f"{cfg.shards_per_client}, allowed: num-clients ({num_partitions}) x value "
            f"<= {len(labels)} (rows in the pool: a shard holds at least one)"
        )
    order = np.arange(len(labels))
    if cfg.shuffle:
        order = np.random.default_rng([seed, 1]).permutation(len(labels))
    if cfg.name == "pathological" and cfg.classes_per_client > num_classes:
        raise PartitionError(
            f"run config key 'partition-classes-per-client': received "
            f"{cfg.classes_per_client}, allowed: 1 <= value <= {num_classes} "
            f"(classes in the dataset)"
        )
    pool = Dataset.from_dict({"label": labels[order].tolist(), "idx": order})
    partitioner = _make_partitioner(cfg, num_partitions, seed)
    partitioner.dataset = pool
    try:
        with warnings.catch_warnings():  # pyarrow 25 on the sort datasets asks it for
            warnings.filterwarnings(
                "ignore", "Specifying null_placement", FutureWarning
            )
            parts = [
                np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)
                for i in range(num_partitions)
            ]
    except ValueError as err:
        raise PartitionError(
            f"partition '{cfg.name}' failed for {num_partitions} clients over "
            f"{len(labels)} rows: {err}"
        ) from err
    empty = [i for i, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise PartitionError(
            f"partition '{cfg.name}' left client(s) {empty} without data; use fewer "
            f"clients or another partition"
        )
    return parts
