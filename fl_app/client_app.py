"""Flower ClientApp: one KerasClient per message, configured from the run config."""

from __future__ import annotations

from flwr.app import Context
from flwr.client import Client
from flwr.clientapp import ClientApp

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.client import KerasClient, check_partition
from fl_app.config import parse_run_config


def client_fn(context: Context) -> Client:
    """Build the client for the node's partition from the run and node configs."""
    cfg = parse_run_config(context.run_config)
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    check_partition(cfg, partition_id, num_partitions)
    return KerasClient(cfg, partition_id, context.state).to_client()


app = ClientApp(client_fn=client_fn)
