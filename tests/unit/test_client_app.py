import pytest
from flwr.app import Context, RecordDict

from fl_app.client_app import node_capacity
from fl_app.core.config import ConfigError, default_run_config, parse_run_config
from fl_app.features.hetero.capacities import assign_capacities
from tests.data_files import client_file_arrays


def context(node_config):
    return Context(
        run_id=1,
        node_id=1,
        node_config=node_config,
        state=RecordDict(),
        run_config=default_run_config(),
    )


def test_node_capacity_from_node_config_wins():
    cfg = parse_run_config({"strategy": "hetero"})
    assert node_capacity(cfg, context({"capacity": 0.5}), 0) == 0.5


def test_node_capacity_from_configured_shares_in_simulation():
    cfg = parse_run_config({"strategy": "hetero"})
    expected = assign_capacities(cfg.hetero, cfg.num_clients, cfg.seed)[3]
    assert node_capacity(cfg, context({"partition-id": 3}), 3) == expected


def test_dynamic_capacities_move_between_rounds_in_equal_shares():
    from collections import Counter

    from fl_app.client.keras_client import KerasClient

    cfg = parse_run_config({"strategy": "hetero", "strategy-dynamic": True})
    assert callable(node_capacity(cfg, context({"partition-id": 3}), 3))
    # a node's own capacity stays fixed even in dynamic mode
    assert node_capacity(cfg, context({"capacity": 0.5}), 3) == 0.5
    clients = [
        KerasClient(cfg, pid, capacity=node_capacity(cfg, context({}), pid))
        for pid in range(10)
    ]
    by_round = [
        [c.get_properties({"server_round": r})["capacity"] for c in clients]
        for r in (1, 2, 3)
    ]
    for widths in by_round:  # 10 clients in thirds: 4/3/3 by largest remainder
        assert sorted(Counter(widths).values()) == [3, 3, 4]
    # every round its own assignment: 1 != 2, 2 != 3 and 1 != 3
    first, second, third = by_round
    assert first != second and second != third and first != third
    # seeded by (seed, round): asked again, the same answer
    assert clients[0].get_properties({"server_round": 2})["capacity"] == by_round[1][0]


def test_node_capacity_full_without_slicing():
    assert node_capacity(parse_run_config({}), context({}), 0) == 1.0


@pytest.mark.parametrize("bad", [0, 1.5, "half"])
def test_node_capacity_invalid_is_clear(bad):
    with pytest.raises(ConfigError, match="node config capacity"):
        node_capacity(parse_run_config({}), context({"capacity": bad}), 0)


def test_client_fn_needs_a_partition_or_a_data_file():
    from fl_app.client_app import client_fn

    with pytest.raises(ConfigError, match="partition-id and num-partitions, or data"):
        client_fn(context({"partition-id": 0}))


def test_client_fn_reads_a_nodes_own_data_file(tmp_path):
    import numpy as np

    from fl_app.client_app import client_fn
    from fl_app.data import DataFileError

    path = tmp_path / "site.npz"
    np.savez(path, **client_file_arrays(n_train=12, n_test=3))
    client = client_fn(context({"data-path": str(path)}))
    _, n, _ = client.numpy_client.fit(
        client.numpy_client.get_parameters({}), {"server_round": 1}
    )
    assert n == 12
    with pytest.raises(DataFileError, match="no such file"):
        client_fn(context({"data-path": str(tmp_path / "missing.npz")}))
