"""The edge's side of split training: handlers for the split messages.

:func:`split_handler` answers the split steps (registered with
:func:`fl_app.core.exchange.register_handler`, so the ClientApp's ``handlers_mod``
routes them here); the node's partition id is asked with ``query.node_info``:

- ``train.split_forward``: the round's client part arrives; the client draws the
  round's batch order, zeroes its optimizer and replies with the cut activations
  (and labels) of the first ``split-chunk`` mini-batches;
- ``train.split_backward``: the server's gradients at the cut for those batches;
  the client finishes backprop for them and replies with the next chunk's
  activations, or, after the last batch, with its trained client part;
- ``train.split_local`` (``local_loss``): the client trains its part with its
  auxiliary head for the round's epochs and replies with the cut activations of its
  rows after each epoch, its labels and its trained part, in one reply;
- ``query.split_evaluate``: the cut activations of its validation rows.

Nothing survives between messages but ``context.state``: the client part, the
optimizer's variables, the batch order and the position in it. The backward step
recomputes the forward pass from the stored batch indices instead of keeping a tape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fl_app.client.node_data import client_data, node_partition
from fl_app.core.config import RunConfig, parse_run_config
from fl_app.core.exchange import arrays, register_handler, require_feature
from fl_app.features.split.model import (
    BACKWARD,
    EVALUATE,
    FORWARD,
    LOCAL,
    SPLIT_TYPES,
    cut_layer,
    get_client_part,
)
from fl_app.ml.training import configure_tensorflow, model_key

log = logging.getLogger(__name__)

STATE_WEIGHTS = "fl-dnn.split.weights"
STATE_OPTIMIZER = "fl-dnn.split.optimizer"
STATE_ORDER = "fl-dnn.split.order"
STATE_POSITION = "fl-dnn.split"
EVAL_BATCH = 512


def batch_indices(order: np.ndarray, rows: int, batch_size: int, b: int) -> np.ndarray:
    """Return the rows of global batch ``b`` (epochs concatenated in ``order``)."""
    per_epoch = -(-rows // batch_size)
    epoch, i = divmod(b, per_epoch)
    start = epoch * rows + i * batch_size
    return order[start : min(start + batch_size, (epoch + 1) * rows)]


class SplitNode:
    """One node's split-training handlers over its data and node state."""

    def __init__(self, cfg: RunConfig, context: Context) -> None:
        configure_tensorflow()
        self.cfg = cfg
        self.partition_id, data_path = node_partition(
            cfg, context.node_config, context.node_id
        )
        self.data, input_shape, num_classes = client_data(
            cfg, self.partition_id, data_path
        )
        key = model_key(cfg, input_shape, num_classes)
        self.local_loss = cfg.split.mode == "local_loss"
        self.part = get_client_part(
            key, cut_layer(cfg.split, cfg.model.name), self.local_loss
        )
        self.state = context.state

    # -- node state ---------------------------------------------------------------

    def _save(self, server_round: int, position: int, num_batches: int) -> None:
        records = self.state
        records.array_records[STATE_WEIGHTS] = ArrayRecord(
            numpy_ndarrays=self.part.get_weights()
        )
        records.array_records[STATE_OPTIMIZER] = ArrayRecord(
            numpy_ndarrays=self.part.optimizer_state()
        )
        records.config_records[STATE_POSITION] = ConfigRecord(
            {"round": server_round, "position": position, "batches": num_batches}
        )

    def _restore(self, server_round: int) -> tuple[int, int, np.ndarray]:
        records = self.state
        if STATE_POSITION not in records.config_records:
            raise ValueError("split backward step without a forward step first")
        saved = records.config_records[STATE_POSITION]
        if int(saved["round"]) != server_round:
            raise ValueError(
                f"split backward step for round {server_round}, but this node's "
                f"state is from round {saved['round']}"
            )
        self.part.set_weights(arrays(records, STATE_WEIGHTS))
        self.part.set_optimizer_state(
            arrays(records, STATE_OPTIMIZER), self._rate(server_round)
        )
        order = arrays(records, STATE_ORDER)[0]
        return int(saved["position"]), int(saved["batches"]), order

    def _clear(self) -> None:
        for name in (STATE_WEIGHTS, STATE_OPTIMIZER, STATE_ORDER):
            self.state.array_records.pop(name, None)
        self.state.config_records.pop(STATE_POSITION, None)

    def _rate(self, server_round: int) -> float:
        return self.cfg.client.at_round(server_round).learning_rate

    def _rng(self, server_round: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, server_round, self.partition_id])

    # -- handlers -----------------------------------------------------------------

    def forward(self, content: RecordDict) -> RecordDict:
        """Start the round: set the client part, draw the batches, send a chunk."""
        server_round = int(content.config_records["config"]["server_round"])
        self.part.set_weights(arrays(content, "weights"))
        self.part.set_optimizer_state(None, self._rate(server_round))
        rows, rng = len(self.data.train), self._rng(server_round)
        epochs = self.cfg.client.local_epochs
        order = np.concatenate([rng.permutation(rows) for _ in range(epochs)])
        num_batches = epochs * -(-rows // self.cfg.client.batch_size)
        self.state.array_records[STATE_ORDER] = ArrayRecord(numpy_ndarrays=[order])
        self._save(server_round, 0, num_batches)
        return self._chunk(order, 0, num_batches)

    def backward(self, content: RecordDict) -> RecordDict:
        """Finish backprop for the last chunk; send the next one or the client part."""
        server_round = int(content.config_records["config"]["server_round"])
        position, num_batches, order = self._restore(server_round)
        grads = arrays(content, "grads")
        if not grads or position + len(grads) > num_batches:
            raise ValueError(
                f"{len(grads)} cut gradients at batch {position} of {num_batches}"
            )
        rows, size = len(self.data.train), self.cfg.client.batch_size
        xs = [
            self.data.train.x[batch_indices(order, rows, size, b)]
            for b in range(position, position + len(grads))
        ]
        cut = tuple(self.part.model.output.shape[1:])
        for b, (x, grad) in enumerate(zip(xs, grads, strict=True), start=position):
            if grad.shape != (len(x), *cut) or grad.dtype != np.float32:
                raise ValueError(
                    f"cut gradient for batch {b} of shape {grad.shape} and dtype "
                    f"{grad.dtype}, expected {(len(x), *cut)} float32"
                )
        self.part.backward(xs, grads)
        position += len(grads)
        if position < num_batches:
            self._save(server_round, position, num_batches)
            return self._chunk(order, position, num_batches)
        weights = self.part.get_weights()
        self._clear()
        return RecordDict(
            {
                "weights": ArrayRecord(numpy_ndarrays=weights),
                "result": ConfigRecord(
                    {"partition_id": self.partition_id, "num_examples": rows}
                ),
            }
        )

    def _chunk(self, order: np.ndarray, position: int, num_batches: int) -> RecordDict:
        rows, size = len(self.data.train), self.cfg.client.batch_size
        stop = min(position + self.cfg.split.chunk, num_batches)
        batches = [batch_indices(order, rows, size, b) for b in range(position, stop)]
        return RecordDict(
            {
                "acts": ArrayRecord(
                    numpy_ndarrays=[
                        self.part.forward(self.data.train.x[i]) for i in batches
                    ]
                ),
                "labels": ArrayRecord(
                    numpy_ndarrays=[self.data.train.y[i] for i in batches]
                ),
                "result": ConfigRecord(
                    {"partition_id": self.partition_id, "position": position}
                ),
            }
        )

    def _all_acts(self, x: np.ndarray) -> np.ndarray:
        """Inference-mode activations of every row of ``x``, in batches."""
        return np.concatenate(
            [
                self.part.forward(x[i : i + EVAL_BATCH], training=False)
                for i in range(0, len(x), EVAL_BATCH)
            ]
        )

    def local(self, content: RecordDict) -> RecordDict:
        """Local-loss round: train with the auxiliary head, send each epoch's acts."""
        server_round = int(content.config_records["config"]["server_round"])
        self.part.set_weights(arrays(content, "weights"))
        self.part.set_optimizer_state(None, self._rate(server_round))
        train, rng = self.data.train, self._rng(server_round)
        acts, loss, accuracy = [], float("nan"), float("nan")
        for _ in range(self.cfg.client.local_epochs):
            order = rng.permutation(len(train))
            loss, accuracy = self.part.aux_train(
                train.x, train.y, order, self.cfg.client.batch_size
            )
            acts.append(self._all_acts(train.x))
        return RecordDict(
            {
                "weights": ArrayRecord(numpy_ndarrays=self.part.get_weights()),
                "acts": ArrayRecord(numpy_ndarrays=acts),
                "labels": ArrayRecord(numpy_ndarrays=[train.y]),
                "result": ConfigRecord(
                    {
                        "partition_id": self.partition_id,
                        "num_examples": len(train),
                        "aux_loss": loss,
                        "aux_accuracy": accuracy,
                    }
                ),
            }
        )

    def evaluate(self, content: RecordDict) -> RecordDict:
        """Send the cut activations of the validation rows (no state changes)."""
        self.part.set_weights(arrays(content, "weights"))
        val = self.data.val
        return RecordDict(
            {
                "acts": ArrayRecord(numpy_ndarrays=[self._all_acts(val.x)]),
                "labels": ArrayRecord(numpy_ndarrays=[val.y]),
                "result": ConfigRecord({"partition_id": self.partition_id}),
            }
        )


HANDLERS: dict[str, Callable[[SplitNode, RecordDict], RecordDict]] = {
    FORWARD: SplitNode.forward,
    BACKWARD: SplitNode.backward,
    LOCAL: SplitNode.local,
    EVALUATE: SplitNode.evaluate,
}


def split_handler(msg: Message, context: Context) -> RecordDict:
    """Answer one split-training message from this node's data and state."""
    message_type = msg.metadata.message_type
    cfg = parse_run_config(context.run_config)
    require_feature(cfg.split, "split", message_type)
    return HANDLERS[message_type](SplitNode(cfg, context), msg.content)


register_handler(SPLIT_TYPES, split_handler)
