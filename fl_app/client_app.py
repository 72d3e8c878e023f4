"""Flower ClientApp: one KerasClient per message, configured from the run config.

Importing this module is cheap (Flower and the run config, no TensorFlow): in a
deployment every message starts a fresh ClientApp process, and with ``warm-worker``
on, :func:`warm_worker_mod` hands the message to the node's long-lived worker
(:mod:`fl_app.deploy.warm_worker`), which runs :data:`local_app` with everything loaded.
Without a worker (simulation, where Ray's workers stay warm anyway; a run with
``warm-worker=false``; a node where none can start) the message runs here, and the
first one imports the client's modules (:func:`load_features`).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message
from flwr.client import Client
from flwr.client.mod import adaptiveclipping_mod, fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.client.node_state import node_state_mod
from fl_app.core import timeline
from fl_app.core.config import ConfigError, RunConfig, parse_run_config
from fl_app.core.exchange import handlers_mod, riding_evaluation_mod
from fl_app.features.hetero.capacities import partition_capacity

log = logging.getLogger(__name__)


def load_features() -> None:
    """Import the client and the modules whose handlers ``handlers_mod`` routes to.

    They import TensorFlow; importing them registers their message handlers
    (``fl_app.core.exchange.register_handler``).
    """
    import fl_app.client.keras_client  # noqa: F401
    from fl_app import features

    features.load("client")


def client_fn(context: Context) -> Client:
    """Build the client for the node's data from the run and node configs.

    The node config names either a partition of the run's dataset
    (``partition-id``, ``num-partitions``) or a file (``data-path``).
    """
    from fl_app.client.keras_client import KerasClient
    from fl_app.client.node_data import node_partition

    cfg = parse_run_config(context.run_config)
    partition_id, data_path = node_partition(cfg, context.node_config, context.node_id)
    return KerasClient(
        cfg,
        partition_id,
        context.state,
        node_capacity(cfg, context, partition_id),
        data_path=data_path,
    ).to_client()


def node_capacity(
    cfg: RunConfig, context: Context, partition_id: int
) -> float | Callable[[int], float]:
    """Return the node's width for heterogeneous slicing.

    ``capacity`` in the node config (deployment) wins; else the partition's share of
    ``strategy-capacities`` (simulation; with ``strategy-dynamic`` a function of the
    round: the client draws it per round); else 1.
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
        return functools.partial(partition_capacity, cfg, partition_id)
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


def features_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Answer the workflows' own messages, else apply the run's privacy mods.

    ``handlers_mod`` answers split training, the synthetic GAN phase and
    ``query.node_info`` and passes the rest on, through :func:`privacy_mods`.
    """
    load_features()
    return handlers_mod(msg, context, lambda m, c: privacy_mods(m, c, call_next))


def in_clientapp_process() -> bool:
    """Whether this process is Flower's per-message ``flwr-clientapp`` process."""
    return Path(sys.argv[0]).name == "flwr-clientapp"


def warm_worker_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """In a ``flwr-clientapp`` process, have the node's warm worker run the message.

    With ``warm-worker`` off, outside such a process, or where no worker can be
    started or reached, the message runs here (logged).
    """
    cfg = parse_run_config(context.run_config)
    if timeline.enabled():
        timeline.mark(
            "clientapp_called",
            node=context.node_id,
            process_start=timeline.process_start_time(),
            warm=cfg.warm_worker,
        )
    reply = None
    if cfg.warm_worker and in_clientapp_process():
        from fl_app.client import warm_link

        try:
            path = warm_link.socket_path(context.node_id)
            reply = warm_link.call(path, msg, context, cfg.warm_worker_idle_s)
        except warm_link.WorkerUnavailable as err:
            log.warning(
                "no warm worker (%s): this message runs in the ClientApp process", err
            )
    if reply is None:
        reply = call_next(msg, context)
    timeline.mark("clientapp_replied", node=context.node_id)
    return reply


# node_state_mod keeps the node's state on disk for resumed runs. The worker runs
# local_app; a ClientApp process runs app, which hands the message to the worker.
# riding_evaluation_mod, outermost, splits a training message that carries an
# evaluation into the two, each through the other mods.
_MODS = [riding_evaluation_mod, node_state_mod, features_mod]
local_app = ClientApp(client_fn=client_fn, mods=_MODS)
app = ClientApp(client_fn=client_fn, mods=[warm_worker_mod, *_MODS])
