"""A node's ``context.state`` on disk, versioned by round, for resumed runs.

Flower keeps a node's state (personal models and α, DP step ledgers, error-feedback
residuals) only for the life of one run. With checkpoints on, :func:`node_state_mod`
writes the state after every message of a round that changed it, as Flower's own
serialized ``RecordDict``, to ``round-<r>.rec`` in the node's directory (written to
a temporary file and renamed). The directory is keyed by the run's lineage (an id
the server draws when a run starts and keeps across its resumes, sent in every
round's config as ``run_lineage``) and by the node's partition id, because node ids
are random per run: ``<state-dir>/run-<lineage>/partition-<id>`` where the node
config names a ``state-dir`` (a deployment's SuperNode), else
``<output-dir>/client-state/run-<lineage>/partition-<id>`` (simulation). A node
without a partition id (its own ``data-path``) uses ``.../run-<lineage>/node``.
Messages without a lineage (checkpoints off) leave the disk alone.

A resumed run's round configs also carry ``resumed_from`` (the server checkpoint's
round ``k``). On its first such message the node restores its newest version from
round ``k`` or before, so the round in flight at the crash is redone from the same
state, and deletes the versions after ``k`` — except the DP step ledgers
(:data:`LEDGER_MARK`), which keep the largest count ever written: a reply that left
the node spent its privacy budget even if the server lost it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, RecordDict

from fl_app.core.checkpoint import run_output_dir, write_atomically
from fl_app.core.config import RunConfig, parse_run_config

log = logging.getLogger(__name__)

STATE_DIR_KEY = "state-dir"  # node config: where a SuperNode keeps its state
SIMULATION_DIR = "client-state"  # under the run's output directory
RESUMED_FROM = "resumed_from"  # round-config key: the server checkpoint's round
LINEAGE = "run_lineage"  # round-config key: the run's id across its resumes
LEDGER_MARK = "dp_ledger"  # marks a config record as a DP step ledger
RESTORED = "fl-dnn.node-state"  # config record: the round this node restored
# Flower's per-round protocol state (SecAgg+ keys and shares): never carried over.
NOT_PERSISTED = frozenset({"secaggplus_state"})
_SUFFIX = ".rec"


def node_state_dir(cfg: RunConfig, context: Context, lineage: str) -> Path:
    """Return the node's own state directory (see the module docstring)."""
    node = context.node_config
    base = node.get(STATE_DIR_KEY)
    if base:
        root = Path(str(base)).expanduser().resolve()
    else:
        output = run_output_dir(cfg.checkpoint.resume or cfg.output_dir, context.run_id)
        root = output / SIMULATION_DIR
    name = (
        f"partition-{int(node['partition-id'])}" if "partition-id" in node else "node"
    )
    return root / f"run-{lineage}" / name


def message_round(msg: Message) -> int | None:
    """Return the round a message belongs to (its group id), if it is one."""
    group = msg.metadata.group_id
    return int(group) if group.isdigit() and int(group) > 0 else None


def round_config_value(msg: Message, key: str) -> int | str | None:
    """Return ``key`` from the message's round config (any config record), if any."""
    if not msg.has_content():
        return None
    for record in msg.content.config_records.values():
        value = record.get(key)
        if isinstance(value, int | str) and not isinstance(value, bool):
            return value
    return None


def _serialize(state: RecordDict) -> bytes:
    from flwr.common.serde import recorddict_to_proto

    kept = RecordDict(
        {k: v for k, v in state.items() if k not in NOT_PERSISTED and k != RESTORED}
    )
    return recorddict_to_proto(kept).SerializeToString(deterministic=True)


def _deserialize(data: bytes, path: Path) -> RecordDict:
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    proto = ProtoRecordDict()
    try:
        proto.ParseFromString(data)
        return recorddict_from_proto(proto)
    except Exception as err:
        raise RuntimeError(f"node state {path} is corrupted: {err}") from err


class NodeStateStore:
    """The versions of one node's state in its directory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def versions(self) -> list[tuple[int, Path]]:
        """Return ``(round, path)`` of every saved version, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.glob(f"round-*{_SUFFIX}"):
            digits = path.name[len("round-") : -len(_SUFFIX)]
            if digits.isdigit():
                found.append((int(digits), path))
        return sorted(found)

    def save(self, state: RecordDict, server_round: int, keep: int) -> bool:
        """Write the state after ``server_round`` unless it equals the newest version.

        Keeps every version a server checkpoint among its last ``keep`` may ask
        for: those after ``server_round - keep`` and the newest one before.
        Returns whether a version was written.
        """
        data = _serialize(state)
        versions = self.versions()
        if not versions and not data:
            return False  # nothing to keep yet (a node with no state)
        if versions and versions[-1][0] <= server_round:
            if versions[-1][1].read_bytes() == data:
                return False
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"round-{server_round:05d}{_SUFFIX}"
        write_atomically(path, lambda handle: handle.write(data))
        floor = server_round - keep
        older = [p for r, p in self.versions() if r <= floor]
        for stale in older[:-1]:
            stale.unlink(missing_ok=True)
        return True

    def restore(self, state: RecordDict, checkpoint_round: int) -> int | None:
        """Load the newest version from ``checkpoint_round`` or before into ``state``.

        DP step ledgers keep the largest count of any version, later ones included;
        versions after ``checkpoint_round`` are then deleted. Returns the round of
        the version restored (None: the node had none, it starts afresh).
        """
        versions = self.versions()
        loaded = {r: _deserialize(p.read_bytes(), p) for r, p in versions}
        usable = [r for r in loaded if r <= checkpoint_round]
        restored = max(usable) if usable else None
        if restored is not None:
            for key, record in loaded[restored].items():
                state[key] = record
        for version in loaded.values():
            for key, record in version.config_records.items():
                if record.get(LEDGER_MARK):
                    current = state.config_records.get(key)
                    if current is None or int(current["steps"]) < int(record["steps"]):
                        state.config_records[key] = record
        for r, path in versions:
            if r > checkpoint_round:
                path.unlink(missing_ok=True)
        return restored


def node_state_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Restore the node's state on a resumed run; save it after each round's work."""
    lineage = round_config_value(msg, LINEAGE)
    if not isinstance(lineage, str) or not lineage.isalnum():
        return call_next(msg, context)
    cfg = parse_run_config(context.run_config)
    store = NodeStateStore(node_state_dir(cfg, context, lineage))
    resumed = round_config_value(msg, RESUMED_FROM)
    restored = RESTORED in context.state.config_records
    if isinstance(resumed, int) and not restored:
        from flwr.app import ConfigRecord

        version = store.restore(context.state, resumed)
        context.state.config_records[RESTORED] = ConfigRecord(
            {"checkpoint_round": resumed, "version": -1 if version is None else version}
        )
        log.info(
            "node state in %s: restored the version of round %s (resumed after %d)",
            store.folder,
            version,
            resumed,
        )
        restored = True
    reply = call_next(msg, context)
    server_round = message_round(msg)
    # a resumed run's node saves only once it holds its restored state
    if server_round is not None and (restored or not cfg.checkpoint.resume):
        store.save(context.state, server_round, cfg.checkpoint.keep)
    return reply
