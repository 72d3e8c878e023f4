"""Which data a node trains on: its partition of the run's dataset, or its own file.

Read by the Keras client and by every feature's client part that answers messages
of its own (split training, the GAN phase), so that a node reads its rows one way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fl_app.core.config import ConfigError, RunConfig
from fl_app.data import (
    ClientData,
    load_central_data,
    load_client_data,
    load_client_file,
)


def check_partition(cfg: RunConfig, partition_id: int, num_partitions: int) -> None:
    """Fail clearly when a node's partition settings disagree with the run config."""
    if num_partitions != cfg.num_clients:
        raise ConfigError(
            f"node config num-partitions={num_partitions} but run config key "
            f"'num-clients' is {cfg.num_clients}; start the federation with "
            f"num-supernodes={cfg.num_clients} (simulation) or set num-clients to the "
            f"number of SuperNodes"
        )
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"node config partition-id={partition_id}, allowed: "
            f"0 <= partition-id < {num_partitions}"
        )


def client_data(
    cfg: RunConfig, partition_id: int, data_path: str | None
) -> tuple[ClientData, tuple[int, ...], int]:
    """Return the client's rows and the run's input shape and class count.

    ``data_path``: a SuperNode's own ``.npz`` (see :func:`fl_app.data.load_client_file`)
    instead of partition ``partition_id`` of the run's dataset.
    """
    if not data_path:
        return load_client_data(cfg, partition_id)
    data = load_central_data(cfg)
    rows = load_client_file(data_path, data.input_shape, data.num_classes)
    return rows, data.input_shape, data.num_classes


def node_partition(
    cfg: RunConfig, node_config: Mapping[str, Any], node_id: int
) -> tuple[int, str | None]:
    """Return the node's partition id and data file from its node config.

    The node config names either a partition of the run's dataset
    (``partition-id``, ``num-partitions``) or a file (``data-path``; the partition id,
    if given, still orders and seeds the client, else one is derived from the node id).
    """
    data_path = node_config.get("data-path")
    if data_path is not None:
        if not isinstance(data_path, str) or not data_path:
            raise ConfigError(f"node config data-path={data_path!r}: expected a path")
        return int(node_config.get("partition-id", node_id % 2**31)), data_path
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise ConfigError(
            "node config needs partition-id and num-partitions, or data-path; "
            f"got {dict(node_config)}"
        )
    partition_id = int(node_config["partition-id"])
    check_partition(cfg, partition_id, int(node_config["num-partitions"]))
    return partition_id, None
