"""McMahan et al.'s shard partition, the pool shuffle, and clients without
validation rows, on hand-sized labels."""

from dataclasses import replace

import numpy as np
import pytest

from fl_app.core.config import ConfigError, PartitionConfig, parse_run_config
from fl_app.data.datasets import ArrayDataset
from fl_app.data.federated import split_rows
from fl_app.data.partitioning import PartitionError, partition_indices

SHARDS = PartitionConfig(name="shards", shards_per_client=2)
# 8 classes of 3 rows, interleaved as a dataset stores them: 0 1 ... 7 0 1 ... 7 ...
LABELS = np.tile(np.arange(8), 3)


def test_shards_sort_by_label_cut_equal_shards_and_deal_two_per_client():
    # Prepare: 24 rows over 4 clients x 2 shards = 8 shards of 3 rows; sorted by
    # label, shard k holds exactly the 3 rows of class k
    # Execute
    parts = partition_indices(LABELS, SHARDS, 4, seed=0)
    # Assert: every row dealt once, 6 rows a client, made of two whole shards
    assert sorted(np.concatenate(parts).tolist()) == list(range(24))
    held = [sorted(set(LABELS[part].tolist())) for part in parts]
    assert all(np.bincount(LABELS[p]).max() == 3 for p in parts)
    assert [len(classes) for classes in held] == [2, 2, 2, 2]
    # dealt at random, not as blocks of the sorted pool (which would give every
    # client two neighbouring classes, as one shard of 6 rows would)
    assert any(b - a != 1 for a, b in held), held


def test_shards_are_dealt_by_the_seed():
    same = partition_indices(LABELS, SHARDS, 4, seed=0)
    again = partition_indices(LABELS, SHARDS, 4, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(same, again, strict=True))
    dealt = {
        tuple(
            tuple(sorted(p.tolist())) for p in partition_indices(LABELS, SHARDS, 4, s)
        )
        for s in range(6)
    }
    assert len(dealt) > 1


def test_shards_are_not_the_pathological_partition():
    # pathological gives every client exactly 2 classes, each class split among the
    # clients holding it; shards deal label-sorted blocks, so a client dealt two
    # blocks of one label holds one class only (as in the paper)
    labels = np.repeat(np.arange(10), 30)  # 10 blocks of 3 rows per label
    pathological = PartitionConfig(name="pathological", classes_per_client=2)
    counts = {
        name: [len(np.unique(labels[p])) for p in partition_indices(labels, cfg, 50, 3)]
        for name, cfg in (("shards", SHARDS), ("pathological", pathological))
    }
    assert set(counts["pathological"]) == {2}
    assert set(counts["shards"]) == {1, 2}


def test_shards_refuse_more_shards_than_rows():
    with pytest.raises(PartitionError, match="partition-shards-per-client"):
        partition_indices(LABELS, replace(SHARDS, shards_per_client=7), 4, seed=0)


def test_shuffle_makes_iid_deal_random_rows_instead_of_blocks():
    labels = np.arange(40) % 4
    iid = PartitionConfig(name="iid")
    blocks = partition_indices(labels, iid, 4, seed=0)
    shuffled = partition_indices(labels, replace(iid, shuffle=True), 4, seed=0)
    assert [sorted(p.tolist()) for p in blocks] == [
        list(range(k, k + 10)) for k in range(0, 40, 10)
    ]
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(40))
    assert [len(p) for p in shuffled] == [10] * 4
    assert any(
        sorted(p.tolist()) != list(range(p.min(), p.min() + 10)) for p in shuffled
    )


def test_val_fraction_zero_holds_nothing_out_and_needs_no_federated_evaluation():
    rows = ArrayDataset(np.zeros((10, 2), np.float32), np.arange(10))
    train, val = split_rows(rows, 0.0, np.random.default_rng(0))
    assert len(train) == 10 and len(val) == 0
    assert len(split_rows(rows, 0.01, np.random.default_rng(0))[1]) == 1  # as before
    flat = {"dataset-val-fraction": 0.0, "evaluate-clients-per-round": 0}
    assert parse_run_config(flat).dataset.val_fraction == 0.0
    with pytest.raises(ConfigError, match="evaluate-clients-per-round=0"):
        parse_run_config({**flat, "evaluate-clients-per-round": 3})
