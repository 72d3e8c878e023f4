"""Flower ClientApp: one KerasClient per message, configured from the run config."""

from __future__ import annotations

from flwr.app import Context
from flwr.client import Client
from flwr.clientapp import ClientApp

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.client import KerasClient, check_partition
from fl_app.config import ConfigError, RunConfig, parse_run_config
from fl_app.slicing import assign_capacities


def client_fn(context: Context) -> Client:
    """Build the client for the node's partition from the run and node configs."""
    cfg = parse_run_config(context.run_config)
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    check_partition(cfg, partition_id, num_partitions)
    return KerasClient(
        cfg, partition_id, context.state, node_capacity(cfg, context, partition_id)
    ).to_client()


def node_capacity(cfg: RunConfig, context: Context, partition_id: int) -> float:
    """Return the node's width for heterogeneous slicing.

    ``capacity`` in the node config (deployment) wins; else the partition's share of
    ``strategy-capacities`` (simulation); else 1.
    """
    if "capacity" in context.node_config:
        capacity = context.node_config["capacity"]
        if not isinstance(capacity, int | float) or not 0 < float(capacity) <= 1:
            raise ConfigError(
                f"node config capacity={capacity!r}, allowed: a number in (0, 1]"
            )
        return float(capacity)
    if cfg.hetero is None:
        return 1.0
    return assign_capacities(cfg.hetero, cfg.num_clients, cfg.seed)[partition_id]


app = ClientApp(client_fn=client_fn)
