"""The real ServerApp against the real ClientApp in this process: no Ray, no SuperLink.

:class:`InProcessGrid` is a Flower ``Grid`` that hands each message to the ClientApp
of its destination node right away, one node after another, and keeps the reply until
the server pulls it. Each node has its own ``Context`` (node config
``partition-id``/``num-partitions``, a persistent ``state``), as a simulated SuperNode
does. Messages cross by deep copy both ways, as they cross Ray by pickling, so neither
side can change what the other holds. A ClientApp that raises gives an error reply, as
Flower's simulation engine gives one.

What it does not exercise (the end-to-end tests do): Flower's processes, Ray workers,
log streaming, and several clients per round training at once.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import traceback
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


class InProcessGrid(Grid):
    """A grid whose SuperNodes are ClientApp calls in this process."""

    simulation = True  # simulated nodes: attack simulation is allowed

    def __init__(
        self,
        client_app: Any,
        run_config: Mapping[str, Any],
        node_configs: Iterable[Mapping[str, Any]],
        run_id: int = 1,
    ) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.contexts = {
            1000 + index: Context(
                run_id=run_id,
                node_id=1000 + index,
                node_config=dict(node),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for index, node in enumerate(node_configs)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run_id: int) -> None:  # noqa: D102
        self._run = Run.create_empty(run_id)

    @property
    def run(self) -> Run:  # noqa: D102
        return self._run

    def create_message(  # noqa: D102
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:  # noqa: D102
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver each message to its node's ClientApp now; keep the replies."""
        ids = []
        for message in messages:
            message_id = uuid4().hex
            metadata = message.metadata.__dict__
            metadata["_message_id"] = message_id
            metadata["_run_id"] = self._run.run_id
            metadata["_src_node_id"] = SUPERLINK_NODE_ID
            delivered = copy.deepcopy(message)
            context = self.contexts[message.metadata.dst_node_id]
            try:
                reply = copy.deepcopy(self.client_app(delivered, context))
            except Exception as err:  # noqa: BLE001  (a failed client, as in Flower)
                log.error("ClientApp raised: %s", traceback.format_exc())
                reply = Message(
                    Error(
                        code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                        reason=f"{type(err)}:<'{err}'>",
                    ),
                    reply_to=delivered,
                )
            reply.metadata.__dict__["_message_id"] = uuid4().hex
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Return (once) the replies to ``message_ids`` that are there."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))


class AheadGrid(InProcessGrid):
    """An in-process grid that can push evaluation ahead, as a deployment's does.

    ``exchanges``: per ``send_and_receive``, the ``(message type, round)`` of every
    message it carried, those pushed ahead of it included; ``pushed``: every message
    that went to a node, as ``(message type, round, whether an evaluation rode in
    it)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from fl_app.server.grids import PollingGrid

        self.polling = PollingGrid(_Pushing(self), 0.0)
        self.exchanges: list[list[tuple[str, str]]] = []
        self.pushed: list[tuple[str, str, bool]] = []
        self._carried: list[tuple[str, str]] = []

    def push_ahead(self, messages: list[Message], on_replies: Any) -> None:  # noqa: D102
        self._carried += [
            (m.metadata.message_type, m.metadata.group_id) for m in messages
        ]
        self.polling.push_ahead(messages, on_replies)

    def flush_ahead(self, timeout: float | None = None) -> None:  # noqa: D102
        self.polling.flush_ahead(timeout)

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        messages = list(messages)
        carried = self._carried + [
            (m.metadata.message_type, m.metadata.group_id) for m in messages
        ]
        self._carried = []
        self.exchanges.append(carried)
        return self.polling.send_and_receive(messages, timeout=timeout)


class _Pushing:
    """The push and pull of an in-process grid, for a wrapping grid."""

    def __init__(self, grid: InProcessGrid) -> None:
        self.grid = grid

    def push_messages(self, messages: Iterable[Message]) -> list[str]:  # noqa: D102
        from fl_app.core.exchange import EVAL_CONFIG

        messages = list(messages)
        self.grid.pushed += [
            (
                m.metadata.message_type,
                m.metadata.group_id,
                m.metadata.message_type == "train"
                and EVAL_CONFIG in m.content.config_records,
            )
            for m in messages
        ]
        return InProcessGrid.push_messages(self.grid, messages)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:  # noqa: D102
        return InProcessGrid.pull_messages(self.grid, message_ids)


def compose_flat(overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The flat run config ``run_simulation.py`` submits for Hydra ``overrides``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fl_app.core.config import flatten_nested

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return flatten_nested(OmegaConf.to_container(cfg, resolve=True))


def compose_run_config(overrides: Iterable[str]) -> dict[str, Any]:
    """The run config a Flower run gets for Hydra ``overrides``.

    Flower fills any key the submission leaves out from ``[tool.flwr.app.config]``
    (equal to the schema's defaults, which a unit test checks).
    """
    from fl_app.core.config import default_run_config

    return {**default_run_config(), **compose_flat(overrides)}


def run_in_process(
    overrides: Iterable[str],
    output_dir: Path,
    node_configs: Iterable[Mapping[str, Any]] | None = None,
    grid_class: type[InProcessGrid] = InProcessGrid,
    submitted: Iterable[str] | None = None,
) -> InProcessGrid:
    """Run the app's ServerApp for Hydra ``overrides`` over in-process nodes.

    Nodes default to partitions ``0 .. num-clients - 1``. Results land in
    ``output_dir`` as in a Flower run; returns the grid (its nodes' ids and
    contexts). ``grid_class``: an ``InProcessGrid`` subclass (a test's stragglers).
    ``submitted``: the flat keys the run's submitter gave (the run's
    ``override_config``, as ``flwr run --run-config`` leaves it); default every key,
    as ``run_simulation.py`` submits them.
    """
    from fl_app.client_app import app as client_app
    from fl_app.ml.training import clear_model_cache
    from fl_app.server_app import app as server_app

    # A Flower run's ServerApp starts in a new process: its first model (the initial
    # global weights) is built fresh from the seed, not taken from an earlier run.
    clear_model_cache()

    run_config = {**compose_run_config(overrides), "output-dir": str(output_dir)}
    if node_configs is None:
        n = int(run_config["num-clients"])
        node_configs = [{"partition-id": i, "num-partitions": n} for i in range(n)]
    grid = grid_class(client_app, run_config, node_configs)
    keys = run_config.keys() if submitted is None else set(submitted)
    grid.run.override_config = {k: v for k, v in run_config.items() if k in keys}
    context = Context(
        run_id=grid.run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=dict(run_config),
    )
    with server_identity(grid.run.run_id):
        server_app(grid, context)
    return grid


@contextlib.contextmanager
def server_identity(run_id: int) -> Iterator[None]:
    """Let this process create messages as a run's ServerApp does.

    Messages take their run id from the task identity of the process, as in the
    simulation process Flower starts for a run.
    """
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id = 1, run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = saved
