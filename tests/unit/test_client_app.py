import pytest
from flwr.app import Context, RecordDict

from fl_app.client_app import node_capacity
from fl_app.config import ConfigError, default_run_config, parse_run_config
from fl_app.slicing import assign_capacities


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


def test_node_capacity_full_without_slicing():
    assert node_capacity(parse_run_config({}), context({}), 0) == 1.0


@pytest.mark.parametrize("bad", [0, 1.5, "half"])
def test_node_capacity_invalid_is_clear(bad):
    with pytest.raises(ConfigError, match="node config capacity"):
        node_capacity(parse_run_config({}), context({"capacity": bad}), 0)
