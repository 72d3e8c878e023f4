import math

import numpy as np
import pytest

from fl_app.core.config import PartitionConfig, parse_run_config
from fl_app.data import PartitionError, load_federated_data, partition_indices
from fl_app.data.datasets import load_digits

LABELS = load_digits().y


def part(name, **kw):
    base = {"alpha": 0.5, "classes_per_client": 2, "min_size": 10}
    return PartitionConfig(name=name, **{**base, **kw})


@pytest.mark.parametrize("name", ["iid", "dirichlet", "pathological"])
def test_partition_covers_pool_without_overlap(name):
    parts = partition_indices(LABELS, part(name), 10, seed=1)
    joined = np.concatenate(parts)
    assert len(parts) == 10 and all(len(p) > 0 for p in parts)
    assert len(np.unique(joined)) == len(joined)
    if name != "pathological":  # pathological drops classes nobody holds
        assert len(joined) == len(LABELS)


@pytest.mark.parametrize("name", ["iid", "dirichlet", "pathological"])
def test_partition_deterministic_given_seed(name):
    a = partition_indices(LABELS, part(name), 10, seed=7)
    b = partition_indices(LABELS, part(name), 10, seed=7)
    c = partition_indices(LABELS, part(name), 10, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    if name != "iid":  # IidPartitioner splits in order; the seed drives the others
        assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_partition_iid_sizes_balanced():
    sizes = [len(p) for p in partition_indices(LABELS, part("iid"), 10, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def label_skew(parts):
    """Mean total-variation distance between client label histograms and the pool's."""
    pool = np.bincount(LABELS, minlength=10) / len(LABELS)
    tv = [
        0.5 * np.abs(np.bincount(LABELS[p], minlength=10) / len(p) - pool).sum()
        for p in parts
    ]
    return float(np.mean(tv))


def test_partition_dirichlet_skew_grows_as_alpha_shrinks():
    iid = label_skew(partition_indices(LABELS, part("iid"), 10, seed=0))
    mild = label_skew(
        partition_indices(LABELS, part("dirichlet", alpha=10.0), 10, seed=0)
    )
    strong = label_skew(
        partition_indices(LABELS, part("dirichlet", alpha=0.1), 10, seed=0)
    )
    # iid stays near the pool; alpha=0.1 puts most of a client's mass on few classes
    assert iid < 0.1 < strong
    assert mild < strong


def test_partition_pathological_exact_classes_per_client():
    parts = partition_indices(
        LABELS, part("pathological", classes_per_client=3), 10, seed=0
    )
    assert all(len(np.unique(LABELS[p])) == 3 for p in parts)


def test_partition_pathological_too_many_classes_is_clear():
    with pytest.raises(PartitionError, match="partition-classes-per-client.*11"):
        partition_indices(
            LABELS, part("pathological", classes_per_client=11), 10, seed=0
        )


def test_partition_too_many_clients_is_clear():
    with pytest.raises(PartitionError, match="num-clients"):
        partition_indices(LABELS[:5], part("iid"), 10, seed=0)


def test_federated_data_splits_and_cache():
    cfg = parse_run_config({})
    data = load_federated_data(cfg)
    assert load_federated_data(cfg) is data  # cached per process
    assert len(data.clients) == 10 and data.input_shape == (8, 8, 1)
    total = sum(len(c.train) + len(c.val) for c in data.clients) + len(data.test)
    assert total == len(LABELS)
    assert len(data.test) == math.ceil(0.2 * len(LABELS))  # sklearn rounds up
    for c in data.clients:
        assert 0 < len(c.val) < len(c.train)


def test_federated_data_synthetic_iid_and_sizes():
    cfg = parse_run_config(
        {
            "dataset": "synthetic",
            "partition": "natural",
            "model": "softmax",
            "dataset-iid": True,
            "dataset-samples-per-client": 200,
            "num-clients": 4,
            "clients-per-round": 4,
            "evaluate-clients-per-round": 4,
        }
    )
    data = load_federated_data(cfg)
    assert data.input_shape == (60,) and data.num_classes == 10
    assert all(len(c.train) + len(c.val) == 160 for c in data.clients)  # 200 - 20% test
    assert len(data.test) == 4 * 40


def synthetic_cfg(num_clients, iid=True, **extra):
    return parse_run_config(
        {
            "dataset": "synthetic",
            "partition": "natural",
            "model": "softmax",
            "dataset-iid": iid,
            "dataset-samples-per-client": 50,
            "num-clients": num_clients,
            "clients-per-round": 1,
            "evaluate-clients-per-round": 0,
            **extra,
        }
    )


@pytest.mark.parametrize("iid", [True, False])
def test_a_client_generates_only_its_own_rows_equal_to_the_whole_view(iid):
    from fl_app.data import federated

    cfg = synthetic_cfg(30, iid)
    whole = load_federated_data(cfg)
    federated._synthetic.cache_clear()
    rows, shape, classes = federated.load_client_data(cfg, 7)
    assert shape == (60,) and classes == 10
    np.testing.assert_array_equal(rows.train.x, whole.clients[7].train.x)
    np.testing.assert_array_equal(rows.val.y, whole.clients[7].val.y)
    # the stream was walked to client 7, no further, and nothing else is kept
    walked = federated._synthetic(cfg.dataset, 30, cfg.seed)
    assert len(walked._states) == 8


def test_a_pooled_client_reads_its_partition_of_the_whole_view():
    from fl_app.data import load_client_data

    cfg = parse_run_config({})
    rows, shape, classes = load_client_data(cfg, 3)
    assert rows is load_federated_data(cfg).clients[3]
    assert shape == (8, 8, 1) and classes == 10


def test_the_synthetic_central_test_set_does_not_grow_with_the_clients():
    from fl_app.data import federated, load_central_data

    few = load_central_data(synthetic_cfg(20))
    assert len(few.test) == 20 * 10  # every client's 20 % while there are fewer
    assert len(load_federated_data(synthetic_cfg(20)).test) == len(few.test)
    federated._synthetic.cache_clear()
    many = load_central_data(synthetic_cfg(5000, iid=False))
    assert len(many.test) == 100 * 10  # the first dataset-test-clients (100)
    # the server generated the test clients only
    walked = federated._synthetic(synthetic_cfg(5000, iid=False).dataset, 5000, 42)
    assert len(walked._states) == 100
    some = load_central_data(synthetic_cfg(5000, **{"dataset-test-clients": 7}))
    assert len(some.test) == 70
