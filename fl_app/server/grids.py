"""The grid the server run talks through: waiting for nodes, polling, deadlines.

:func:`wait_for_nodes` waits until the federation is there (or says what to do);
:func:`tune_grid` polls Flower's grids faster than their own loop; a
:class:`DeadlineGrid` closes each exchange at ``round_timeout``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fl_app.core import timeline
from fl_app.core.exchange import attach_evaluation, detach_evaluation

log = logging.getLogger(__name__)


NODE_WAIT_S = 60.0
SIMULATION_SETTLE_S = 2.0


def wait_for_nodes(grid: Grid, needed: int, timeout_s: float = NODE_WAIT_S) -> None:
    """Wait until ``needed`` SuperNodes are connected, else fail with a clear error.

    Flower's strategies wait forever for ``min_available_clients``; a federation
    smaller than ``num-clients`` would hang the run without a word. In simulation the
    count must match exactly: each simulated node holds partition ``i`` of
    ``num-supernodes``, so a larger federation would partition the data differently.
    Flower's simulation registers its nodes as the app starts (5,938 of 10,000 were
    there when the ServerApp began, in one measured run), so there the wait ends as
    soon as the count is right, or fails once it has stopped growing for
    ``SIMULATION_SETTLE_S`` (a mismatched ``num-supernodes`` fails in seconds).
    """
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    simulation = isinstance(grid, InMemoryGrid)
    deadline = time.monotonic() + timeout_s
    last, settled = -1, time.monotonic()
    while True:
        connected = len(grid.get_node_ids())
        if connected == needed or (connected > needed and not simulation):
            return
        if simulation:
            if connected != last:
                last, settled = connected, time.monotonic()
            if connected > needed or time.monotonic() - settled >= SIMULATION_SETTLE_S:
                deadline = 0.0  # it will not change any more
        if time.monotonic() >= deadline:
            waited = "" if simulation else f" within {timeout_s:.0f}s"
            raise RuntimeError(
                f"run config key 'num-clients' is {needed} but {connected} "
                f"SuperNode(s) connected{waited}; in simulation pass "
                f'--federation-config "num-supernodes={needed}", in a deployment '
                f"start {needed} SuperNodes"
            )
        time.sleep(0.2 if simulation else 1.0)


SIMULATION_PULL_INTERVAL_S = 0.005
DEPLOYMENT_PULL_INTERVAL_S = 0.1


def tune_grid(grid: Grid) -> Grid:
    """Return ``grid`` polling for replies sooner than Flower's own loops do.

    ``InMemoryGrid.send_and_receive`` (simulation) sleeps ``pull_interval`` (100 ms)
    between polls of its in-memory state: 5 ms here. A deployment's grid sleeps a
    fixed 3 s between pulls (``HttpGrid.send_and_receive``), which rounds every
    exchange up to a multiple of 3 s once the nodes answer in about a second (warm
    workers): it is wrapped in :class:`PollingGrid`, which pulls every 100 ms
    through the grid's public ``push_messages``/``pull_messages``.
    """
    from flwr.superlink.grid.http_grid import HttpGrid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    if isinstance(grid, InMemoryGrid):
        grid.pull_interval = SIMULATION_PULL_INTERVAL_S
    elif isinstance(grid, HttpGrid):
        return PollingGrid(grid, DEPLOYMENT_PULL_INTERVAL_S)
    return grid


# on_replies(replies, late node ids) of messages pushed ahead (PollingGrid.push_ahead)
AheadCallback = Callable[[list[Message], list[int]], None]


@dataclass
class _Ahead:
    """Messages pushed ahead of the next exchange, and what to do with the replies."""

    messages: list[Message]  # held until the next exchange
    on_replies: AheadCallback
    # message id -> destination node id, once pushed (a riding evaluation: the id
    # of the training message it rides in)
    destinations: dict[str, int] = field(default_factory=dict)
    replies: list[Message] = field(default_factory=list)


class PollingGrid:
    """A ``Grid`` whose ``send_and_receive`` pulls replies every ``interval_s``.

    It can also push messages *ahead* of the next exchange (:meth:`push_ahead`):
    they travel with that exchange's messages, so a SuperNode finds both pending
    and pays Flower's idle sleep between pulls once, not twice. An evaluation for a
    node that the exchange sends a training message with the same arrays rides in
    that message (``fl_app.core.exchange.attach_evaluation``): one message, one
    ClientApp process on the node, one reply carrying both results. Replies are
    handed to the ahead batch's callback before the next exchange returns.
    """

    def __init__(self, grid: Grid, interval_s: float) -> None:
        self.grid = grid
        self.interval_s = interval_s
        self.ahead: list[_Ahead] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def push_ahead(self, messages: list[Message], on_replies: AheadCallback) -> None:
        """Send ``messages`` with the next exchange, which collects their replies.

        ``on_replies(replies, late)`` runs once every reply is in, or at that
        exchange's deadline (``late``: the nodes that did not answer), before the
        exchange returns; :meth:`flush_ahead` sends and collects them without an
        exchange of their own.
        """
        self.ahead.append(_Ahead(list(messages), on_replies))

    @staticmethod
    def _board(
        messages: list[Message], batches: list[_Ahead]
    ) -> dict[int, tuple[_Ahead, Message]]:
        """Let each held evaluation ride in a training message to its node."""
        riders: dict[int, tuple[_Ahead, Message]] = {}
        by_node = {
            m.metadata.dst_node_id: i
            for i, m in enumerate(messages)
            if m.metadata.message_type == MessageType.TRAIN
        }
        for batch in batches:
            for evaluation in batch.messages:
                index = by_node.get(evaluation.metadata.dst_node_id)
                if (
                    index is not None
                    and index not in riders
                    and attach_evaluation(messages[index], evaluation)
                ):
                    riders[index] = (batch, evaluation)
        return riders

    def flush_ahead(self, timeout: float | None = None) -> None:
        """Collect the replies of every batch pushed ahead (no exchange of its own)."""
        self.send_and_receive([], timeout=timeout)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        """Push ``messages``; return the replies that arrive within ``timeout``.

        Replies to messages pushed ahead are collected too and handed to their
        callbacks before this returns.
        """
        messages = list(messages)
        batches, self.ahead = self.ahead, []
        riders = self._board(messages, batches)  # index in messages -> (batch, eval)
        boarded = {id(evaluation) for _, evaluation in riders.values()}
        for batch in batches:  # the evaluations that cannot ride: pushed now
            alone = [m for m in batch.messages if id(m) not in boarded]
            if alone:
                ids = list(self.grid.push_messages(alone))
                timeline.mark("server_pushed", messages=len(ids), ahead=True)
                batch.destinations.update(
                    {i: m.metadata.dst_node_id for i, m in zip(ids, alone, strict=True)}
                )
        ids = list(self.grid.push_messages(messages)) if messages else []
        if messages:
            timeline.mark("server_pushed", messages=len(ids), riding=len(riders))
        pending = set(ids)
        riding: dict[str, tuple[_Ahead, Message]] = {}
        for index, (batch, evaluation) in riders.items():
            riding[ids[index]] = (batch, evaluation)
            batch.destinations[ids[index]] = evaluation.metadata.dst_node_id
        owner = {
            m: batch for batch in batches for m in batch.destinations if m not in riding
        }
        waiting = pending | set(owner)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            for reply in self.grid.pull_messages(waiting):
                answered = reply.metadata.reply_to_message_id
                waiting.discard(answered)
                if answered in riding:  # a training reply with an evaluation in it
                    batch, evaluation = riding[answered]
                    batch.replies.append(detach_evaluation(reply, evaluation))
                if answered in owner:
                    owner[answered].replies.append(reply)
                else:
                    replies.append(reply)
                timeline.mark("server_pulled", node=reply.metadata.src_node_id)
            for batch in list(batches):  # a batch complete: its callback, now
                if not waiting & set(batch.destinations):
                    batches.remove(batch)
                    batch.on_replies(batch.replies, [])
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.interval_s)
        for batch in batches:  # the deadline passed: going on without the late
            late = [n for m, n in batch.destinations.items() if m in waiting]
            batch.on_replies(batch.replies, late)
        return replies


class DeadlineGrid:
    """A ``Grid`` whose every exchange waits at most ``timeout_s`` (``round_timeout``).

    Flower's ``DefaultWorkflow`` calls ``send_and_receive`` without a timeout (its
    ``ServerConfig.round_timeout`` is read only by the legacy ``Server`` loop), so a
    straggler held the whole round. Replies that miss the deadline are dropped
    (never pulled) and counted per destination node; everything else is the wrapped
    grid's.
    """

    def __init__(self, grid: Grid, timeout_s: float) -> None:
        self.grid = grid
        self.timeout_s = timeout_s
        self.timeouts: list[int] = []  # node ids whose reply missed a deadline

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        """Send, and return the replies that arrived within the deadline."""
        messages = list(messages)
        replies = list(
            self.grid.send_and_receive(
                messages, timeout=self.timeout_s if timeout is None else timeout
            )
        )
        # by message: the SuperLink's own error replies (a node it found
        # unavailable) come from the SuperLink's node id, not the destination's
        answered = {reply.metadata.reply_to_message_id for reply in replies}
        late = [
            m.metadata.dst_node_id
            for m in messages
            if m.metadata.message_id not in answered
        ]
        if late:
            log.warning(
                "node(s) %s did not reply within round-timeout %g s; going on "
                "without them",
                late,
                self.timeout_s,
            )
        self.timeouts += late
        return replies

    def pop_timeouts(self) -> int:
        """Return how many replies missed their deadline since the last call."""
        count, self.timeouts = len(self.timeouts), []
        return count
