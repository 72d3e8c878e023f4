"""Flower ClientApp: one KerasClient per message, configured from the run config."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.client import Client
from flwr.client.mod import adaptiveclipping_mod, fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.capacities import partition_capacity
from fl_app.client import KerasClient, node_partition
from fl_app.config import ConfigError, RunConfig, parse_run_config
from fl_app.exchange import handlers_mod
from fl_app.node_state import node_state_mod


def client_fn(context: Context) -> Client:
    """Build the client for the node's data from the run and node configs.

    The node config names either a partition of the run's dataset
    (``partition-id``, ``num-partitions``) or a file (``data-path``).
    """
    cfg = parse_run_config(context.run_config)
    partition_id, data_path = node_partition(cfg, context.node_config, context.node_id)
    return KerasClient(
        cfg,
        partition_id,
        context.state,
        node_capacity(cfg, context, partition_id),
        data_path=data_path,
    ).to_client()


def node_capacity(cfg: RunConfig, context: Context, partition_id: int) -> float | None:
    """Return the node's width for heterogeneous slicing.

    ``capacity`` in the node config (deployment) wins; else the partition's share of
    ``strategy-capacities`` (simulation; ``None`` with ``strategy-dynamic``: the client
    draws it per round); else 1.
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
    if cfg.hetero.dynamic:
        return None
    return partition_capacity(cfg, partition_id, 0)


def privacy_mods(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Apply the run's client-side mods: DP clipping, then SecAgg+ masking.

    A ``ClientApp``'s mods are fixed when it is built, before any run config is
    known; this one mod reads the run config of each message and chains Flower's
    own mods accordingly. Clipping runs inside SecAgg+, so what gets masked and
    summed is the clipped update.
    """
    cfg = parse_run_config(context.run_config)
    handler = call_next
    if cfg.client_dp is not None and cfg.client_dp.client_side:
        clip = adaptiveclipping_mod if cfg.client_dp.adaptive else fixedclipping_mod
        inner = handler

        def handler(m: Message, c: Context) -> Message:
            return clip(m, c, inner)

    if cfg.secagg is not None:
        clipped = handler

        def handler(m: Message, c: Context) -> Message:
            return secaggplus_mod(m, c, clipped)

    return handler(msg, context)


# The modules whose message handlers handlers_mod routes to (register_handler).
from fl_app import split_client, synthetic  # noqa: E402, F401

# node_state_mod keeps the node's state on disk for resumed runs; handlers_mod
# answers the workflows' own messages (split training, the synthetic GAN phase,
# query.node_info) and passes the rest on.
app = ClientApp(client_fn=client_fn, mods=[node_state_mod, handlers_mod, privacy_mods])
