"""Messages beyond Flower's train/evaluate rounds: both ends of the exchange.

Workflows with their own message flow (split training, the synthetic-data GAN
phase) send typed messages through the ``Grid`` and answer them on the nodes:

- server side, :class:`NodeExchange`: send one message per node and collect the
  replies within the round's deadline, counting bytes per kind and per node
  (:class:`RoundTally`); ask every node once for its partition id
  (``query.node_info``); sample nodes by partition id from the run's seed, so the
  seed reproduces which clients take part whatever the node ids are;
- node side, :func:`handlers_mod`: a ``ClientApp`` built with ``client_fn`` only
  answers ``train``, ``evaluate`` and ``query``, but its mods see every message; this
  mod answers the message types registered with :func:`register_handler` and passes
  everything else on.

Imports neither TensorFlow nor the client modules (the ServerApp imports it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fl_app.core.schema import ConfigError

log = logging.getLogger(__name__)

INFO = "query.node_info"  # the node's partition id and row counts


def arrays(record: RecordDict, name: str) -> list[np.ndarray]:
    """Return the arrays of ``record[name]``, failing clearly when it is missing."""
    if name not in record.array_records:
        raise ValueError(f"message without '{name}' arrays")
    return record.array_records[name].to_numpy_ndarrays()


def record_bytes(content: RecordDict) -> dict[str, int]:
    """Return the serialized array bytes of a message's content, per record name."""
    return {
        name: sum(len(array.data) for array in record.values())
        for name, record in content.array_records.items()
    }


@dataclass
class RoundTally:
    """What one round exchanged: bytes by kind and per node, messages, failures.

    ``kinds`` maps a record name to the byte-count key it is accounted under; other
    records count as ``bytes_weights_up`` / ``bytes_weights_down``.
    """

    kinds: Mapping[str, str] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)
    down: dict[int, int] = field(default_factory=dict)
    messages: int = 0
    failures: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    server_compute_s: float = 0.0
    # time.monotonic() by which the round's exchanges must be answered (None: wait)
    deadline: float | None = None

    @classmethod
    def for_round(
        cls, round_timeout: float, kinds: Mapping[str, str] | None = None
    ) -> RoundTally:
        """Return a tally whose exchanges must be answered in ``round_timeout`` s.

        ``round_timeout`` 0 waits for every reply.
        """
        deadline = time.monotonic() + round_timeout if round_timeout else None
        return cls(kinds=dict(kinds or {}), deadline=deadline)

    def check_not_all_failed(self, what: str, sampled: int) -> None:
        """Fail the run when every one of the ``sampled`` clients failed.

        Nothing can be aggregated then, and the first client's error is the reason.
        """
        if sampled and len(self.failures) == sampled:
            raise RuntimeError(
                f"{what}: every sampled client failed: "
                f"{next(iter(self.failures.values()))}"
            )

    def count(self, node: int, content: RecordDict, direction: str) -> None:
        """Account one message's arrays (``direction``: ``up`` or ``down``)."""
        for name, size in record_bytes(content).items():
            key = self.kinds.get(name, f"bytes_weights_{direction}")
            self.totals[key] = self.totals.get(key, 0) + size
            per_node = self.up if direction == "up" else self.down
            per_node[node] = per_node.get(node, 0) + size


DISCOVER_BATCH = 256  # nodes asked for their partition id at once


class NodeExchange:
    """Typed messages to the run's nodes through ``run.grid``, by partition id.

    ``name`` prefixes log lines and errors (``split``, ``synthetic``).
    """

    name = "exchange"

    def __init__(self, run: Any) -> None:
        self.run = run
        self.cfg = run.cfg
        self.partitions: dict[int, int] = {}  # node id -> partition id

    def exchange(
        self,
        contents: Mapping[int, RecordDict],
        message_type: str,
        server_round: int,
        tally: RoundTally,
    ) -> dict[int, RecordDict]:
        """Send one message per node and return the replies that came back."""
        if not contents:
            return {}
        messages = []
        for node, content in contents.items():
            tally.count(node, content, "down")
            messages.append(
                Message(content, node, message_type, group_id=str(server_round))
            )
        timeout = None
        if tally.deadline is not None:  # what is left of the round's round_timeout
            timeout = max(tally.deadline - time.monotonic(), 0.001)
        replies: dict[int, RecordDict] = {}
        tally.messages += len(messages)
        for reply in self.run.grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            tally.messages += 1
            if reply.has_error():
                reason = reply.error.reason
                log.warning(
                    "%s %s: node %s failed: %s", self.name, message_type, node, reason
                )
                tally.failures[node] = reason
                continue
            tally.count(node, reply.content, "up")
            replies[node] = reply.content
        for node in set(contents) - set(replies) - set(tally.failures):
            tally.failures[node] = (
                f"no reply to {message_type} within the round's "
                f"round-timeout ({self.cfg.round_timeout:g} s)"
            )
            log.warning("%s %s: node %s did not reply", self.name, message_type, node)
        return replies

    def discover(self, needed: int) -> None:
        """Ask every node for its partition id (sampling is by partition id).

        In batches of :data:`DISCOVER_BATCH` nodes: a grid's wait for replies scans
        every message still pending at each poll, which made one exchange with
        10,000 nodes quadratic (Flower's ``InMemoryLinkState.get_message_res``).
        """
        tally = RoundTally()
        nodes = list(self.run.grid.get_node_ids())
        replies: dict[int, RecordDict] = {}
        for start in range(0, len(nodes), DISCOVER_BATCH):
            batch = nodes[start : start + DISCOVER_BATCH]
            replies |= self.exchange(
                {node: RecordDict() for node in batch}, INFO, 0, tally
            )
        for node, content in replies.items():
            try:
                self.partitions[node] = int(
                    content.config_records["info"]["partition_id"]
                )
            except (KeyError, TypeError, ValueError):
                tally.failures[node] = f"no partition id in its {INFO} reply"
                log.warning(
                    "%s: node %s sent no partition id; not sampled", self.name, node
                )
        if len(self.partitions) < needed:
            raise RuntimeError(
                f"{self.name}: {len(self.partitions)} node(s) answered {INFO}, "
                f"{needed} needed; failures: {tally.failures}"
            )

    def by_partition(self, nodes: Iterable[int]) -> list[int]:
        """Return ``nodes`` in partition-id order."""
        return sorted(nodes, key=self.partitions.__getitem__)

    def sample(self, server_round: int, count: int, stream: int) -> list[int]:
        """Return ``count`` node ids drawn by partition id from the run's seed."""
        by_pid = self.by_partition(self.partitions)
        rng = np.random.default_rng([self.cfg.seed, server_round, stream])
        chosen = rng.choice(len(by_pid), size=count, replace=False)
        return self.by_partition(by_pid[i] for i in chosen)


# -- node side ----------------------------------------------------------------------

Handler = Callable[[Message, Context], RecordDict]
"""``handler(message, context) -> reply content`` for one registered message type."""

HANDLERS: dict[str, Handler] = {}


def register_handler(message_types: Iterable[str], handler: Handler) -> None:
    """Make :func:`handlers_mod` answer ``message_types`` with ``handler``."""
    for message_type in message_types:
        HANDLERS[message_type] = handler


def handlers_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Answer the registered message types; pass every other message on."""
    handler = HANDLERS.get(msg.metadata.message_type)
    if handler is None:
        return call_next(msg, context)
    return Message(handler(msg, context), reply_to=msg)


def require_feature(config: Any, key: str, message_type: str) -> None:
    """Fail clearly when a node gets a feature's message but the feature is off."""
    if config is None:
        raise ConfigError(
            f"received a '{message_type}' message but run config key '{key}' is 'none'"
        )


def info_reply(partition_id: int, **counts: int) -> RecordDict:
    """Return the reply to ``query.node_info``: partition id and row counts."""
    return RecordDict({"info": ConfigRecord({"partition_id": partition_id, **counts})})


def accept_replies(
    replies: Mapping[int, RecordDict],
    order: Iterable[int],
    read: Callable[[RecordDict], tuple[Any, int]],
    check: Callable[[Any], str | None],
    tally: RoundTally,
    what: str,
    malformed: str,
) -> list[tuple[int, Any, int]]:
    """Return ``(node, payload, examples)`` for every reply that is whole and sound.

    ``read(content) -> (payload, examples)`` parses a reply (a ``KeyError``,
    ``TypeError`` or ``ValueError`` marks it malformed); ``check(payload)`` says why a
    parsed payload cannot be used (None: it can); a reply with no examples is
    refused too. Refused replies are recorded in ``tally.rejected`` with the reason
    (``malformed`` for one that does not parse) and logged under ``what`` (e.g.
    ``"split"``). ``order``: the nodes in the order to aggregate them (by partition
    id).
    """
    accepted = []
    for node in order:
        try:
            payload, examples = read(replies[node])
        except (KeyError, TypeError, ValueError) as err:
            reason = malformed
            log.debug("%s: node %s's reply: %r", what, node, err)
        else:
            reason = check(payload)
            if reason is None and examples <= 0:
                reason = f"{examples} examples"
        if reason is not None:
            tally.rejected[node] = reason
            log.warning("%s: rejected node %s's reply: %s", what, node, reason)
            continue
        accepted.append((node, payload, examples))
    return accepted


# -- an evaluation riding on a training message ------------------------------------
# In a deployment, round r's evaluation is pushed with round r+1's training
# (``server.grids.PollingGrid.push_ahead``). Where a node gets both and both carry
# the same arrays (round r's model), the evaluation's config rides in the training
# message, so the node runs one ClientApp process for the two; the node evaluates
# first, then trains, and its reply carries both results.
FIT_PARAMS = "fitins.parameters"  # Flower's legacy record names
EVAL_PARAMS = "evaluateins.parameters"
EVAL_CONFIG = "evaluateins.config"
EVAL_RESULT = "evaluateres."  # the prefix of an evaluation reply's records
EVAL_ERROR = "evaluate-riding.error"  # the riding evaluation failed: why


def attach_evaluation(fit: Message, evaluation: Message) -> bool:
    """Let ``evaluation`` ride in training message ``fit`` when it can.

    Both must go to the same node with the same arrays (the model sent); ``fit``
    then carries ``evaluation``'s config, and the node evaluates before training.
    """
    fc, ec = fit.content, evaluation.content
    if (
        fit.metadata.dst_node_id != evaluation.metadata.dst_node_id
        or FIT_PARAMS not in fc.array_records
        or EVAL_PARAMS not in ec.array_records
        or EVAL_CONFIG not in ec.config_records
        or EVAL_CONFIG in fc.config_records
    ):
        return False
    fit_arrays = fc.array_records[FIT_PARAMS]
    eval_arrays = ec.array_records[EVAL_PARAMS]
    if list(fit_arrays) != list(eval_arrays) or any(
        fit_arrays[k].data != eval_arrays[k].data for k in fit_arrays
    ):
        return False
    fc.config_records[EVAL_CONFIG] = ec.config_records[EVAL_CONFIG]
    return True


def detach_evaluation(reply: Message, evaluation: Message) -> Message:
    """Return the reply to ``evaluation`` that rode in training reply ``reply``.

    The evaluation's records leave ``reply``; a failed training message fails its
    riding evaluation with the same error.
    """
    from flwr.app import Error
    from flwr.common.constant import ErrorCode

    if not reply.has_content():
        return Message(reply.error, reply_to=evaluation)
    content = reply.content
    names = [n for n in content if n.startswith(EVAL_RESULT) or n == EVAL_ERROR]
    records = RecordDict({n: content[n] for n in names})
    for name in names:
        del content[name]
    if EVAL_ERROR in records.config_records or not names:
        reason = str(
            records.config_records[EVAL_ERROR]["reason"]
            if EVAL_ERROR in records.config_records
            else "the node's reply carried no evaluation"
        )
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
        return Message(error, reply_to=evaluation)
    return Message(records, reply_to=evaluation)


def riding_evaluation_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """On a node: evaluate, then train, for a training message carrying an evaluation.

    The evaluation runs as the evaluation message it replaces would (same arrays,
    its own config, through the same mods); its result (or why it failed) is added
    to the training reply. Other messages pass through.
    """
    import copy

    from flwr.app import MessageType

    content = msg.content if msg.has_content() else None
    if (
        content is None
        or msg.metadata.message_type != MessageType.TRAIN
        or EVAL_CONFIG not in content.config_records
    ):
        return call_next(msg, context)
    metadata = copy.deepcopy(msg.metadata)
    metadata.message_type = MessageType.EVALUATE
    evaluation = Message(
        content=RecordDict(
            {
                EVAL_PARAMS: content.array_records[FIT_PARAMS],
                EVAL_CONFIG: content.config_records[EVAL_CONFIG],
            }
        ),
        metadata=metadata,
    )
    del content[EVAL_CONFIG]
    try:
        evaluated = call_next(evaluation, context)
        error = None if evaluated.has_content() else evaluated.error.reason
    except Exception as err:  # noqa: BLE001  (reported with the training reply)
        log.exception("the evaluation riding on a training message failed")
        evaluated, error = None, f"{type(err).__name__}: {err}"
    reply = call_next(msg, context)
    if reply.has_content():
        if error is None and evaluated is not None:
            for name in evaluated.content:
                reply.content[name] = evaluated.content[name]
        else:
            reply.content.config_records[EVAL_ERROR] = ConfigRecord({"reason": error})
    return reply
