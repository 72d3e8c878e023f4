"""The cloud's side of split training: the ServerApp's ``split`` workflow.

With ``split`` set, the ServerApp runs :func:`split_workflow` instead of Flower's
``DefaultWorkflow``. It drives each round through the ``Grid`` with the messages of
:mod:`fl_app.features.split.client`:

- ``splitfed_v1`` / ``splitfed_v2``: send the client part (``train.split_forward``);
  for every chunk of cut activations that comes back, train the server part on it
  batch by batch and return the gradients at the cut (``train.split_backward``),
  until each client replies with its trained client part. ``v1`` trains one copy of
  the server part per client (averaged after the round, weighted like the client
  parts), ``v2`` one shared server part on the clients' chunks in turn (partition-id
  order).
- ``local_loss``: one exchange (``train.split_local``); the server part then trains
  on each client's per-epoch activations, in turn.

Client parts are combined with the strategy's own ``aggregate_layers`` (FedAvg's
sample-weighted mean by default) after the usual update checks; the joined weights
(client part + server part) are the global model, evaluated centrally every round
and saved as today. Federated evaluation sends the client part and scores the
validation rows' cut activations on the server part (``query.split_evaluate``).

Clients are sampled by partition id with ``numpy.random.default_rng([seed, round])``
(asked once with ``query.node_info``, :class:`fl_app.core.exchange.NodeExchange`), so
the
seed reproduces which clients train.
Every round's record adds the bytes by kind (activations, labels, cut gradients,
client-part weights each way), the messages exchanged and the server's compute time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fl_app.core.config import RunConfig
from fl_app.core.exchange import NodeExchange, RoundTally, accept_replies, arrays
from fl_app.core.results import _pyplot, _save
from fl_app.features.split.model import (
    BACKWARD,
    EVALUATE,
    FORWARD,
    LOCAL,
    ClientPart,
    ServerPart,
    aux_head_params,
    client_shares,
    cut_layer,
    split_model,
)
from fl_app.server.registry import (
    register_summary_part,
    register_unresumable,
    register_workflow,
)
from fl_app.server.run import ServerRun
from strategies.aggregation import check_update

log = logging.getLogger(__name__)

SPLIT_PLOT_FILE = "split_bytes.png"
# Message record name -> the byte-count key it is accounted under.
KINDS = {
    "acts": "bytes_activations",
    "labels": "bytes_labels",
    "grads": "bytes_gradients",
}


class SplitServer(NodeExchange):
    """The server side of one split run: its part, the exchanges, the rounds."""

    name = "split"

    def __init__(self, run: ServerRun) -> None:
        super().__init__(run)
        split = run.cfg.split
        self.mode = split.mode
        self.cut = cut_layer(split, run.cfg.model.name)
        self.server = ServerPart(run.key, self.cut)
        initial = run.model.get_weights()
        n = self.server.num_client_arrays
        self.client_weights, self.server_weights = initial[:n], initial[n:]
        if self.mode == "local_loss":  # the auxiliary head is federated too
            aux = ClientPart(run.key, self.cut, local_loss=True).get_weights()[n:]
            self.client_weights = self.client_weights + aux
        self.num_part_arrays = n
        self.act_shape = tuple(self.server.model.input.shape[1:])

    def _config(self, server_round: int) -> ConfigRecord:
        return ConfigRecord({"server_round": server_round})

    def _check_chunk(
        self, content: RecordDict, shared_labels: bool = False
    ) -> tuple[list, list] | str:
        """Return a chunk's activations and labels, or why they are refused.

        ``shared_labels``: one label array for every activation array (local loss
        sends each epoch's activations of the same rows).
        """
        missing = {"acts", "labels"} - set(content.array_records)
        if missing:
            return f"a reply without {', '.join(sorted(missing))}"
        acts, labels = arrays(content, "acts"), arrays(content, "labels")
        if shared_labels:
            if len(labels) != 1:
                return f"{len(labels)} label arrays, expected 1"
            labels = labels * len(acts)
        if not acts or len(acts) != len(labels):
            return f"{len(acts)} activation and {len(labels)} label arrays"
        for a, y in zip(acts, labels, strict=True):
            if a.ndim == 0 or a.shape[1:] != self.act_shape or not 0 < len(a) == len(y):
                return (
                    f"activations of shape {a.shape} for {len(y)} labels, expected "
                    f"(n, {', '.join(map(str, self.act_shape))})"
                )
            if a.dtype != np.float32 or not np.all(np.isfinite(a)):
                return "activations that are not finite float32"
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                return (
                    f"labels of shape {y.shape} and dtype {y.dtype}, expected (n,) ints"
                )
            if np.any((y < 0) | (y >= self.run.data.num_classes)):
                return "labels outside the dataset's classes"
        return acts, labels

    # -- rounds -------------------------------------------------------------------

    def rate(self, server_round: int) -> float:
        """Return the round's learning rate (``client-learning-rate-decay`` applies)."""
        return self.cfg.client.at_round(server_round).learning_rate

    def train_splitfed(self, nodes: list[int], server_round: int, tally: RoundTally):
        """One SplitFed round; return the clients' parts and the server part."""
        v1 = self.mode == "splitfed_v1"
        rate = self.rate(server_round)
        start = {"weights": ArrayRecord(numpy_ndarrays=self.client_weights)}
        replies = self.exchange(
            {
                n: RecordDict({**start, "config": self._config(server_round)})
                for n in nodes
            },
            FORWARD,
            server_round,
            tally,
        )
        copies = {n: (self.server_weights, None) for n in nodes}
        self.server.set_weights(self.server_weights)
        self.server.set_optimizer_state(None, rate)
        finished: dict[int, RecordDict] = {}
        losses: dict[int, list[tuple[float, int]]] = {n: [] for n in nodes}
        while replies:
            out: dict[int, RecordDict] = {}
            for node in sorted(replies, key=self.partitions.__getitem__):
                content = replies[node]
                if "weights" in content.array_records:
                    finished[node] = content
                    continue
                chunk = self._check_chunk(content)
                if isinstance(chunk, str):
                    tally.rejected[node] = chunk
                    log.warning("split: rejected node %s's chunk: %s", node, chunk)
                    continue
                started = time.perf_counter()
                if v1:
                    weights, state = copies[node]
                    self.server.set_weights(weights)
                    self.server.set_optimizer_state(state, rate)
                grads = []
                for acts, labels in zip(*chunk, strict=True):
                    loss, _, grad = self.server.step(acts, labels)
                    losses[node].append((loss, len(labels)))
                    grads.append(grad)
                if v1:
                    copies[node] = (
                        self.server.get_weights(),
                        self.server.optimizer_state(),
                    )
                tally.server_compute_s += time.perf_counter() - started
                out[node] = RecordDict(
                    {
                        "grads": ArrayRecord(numpy_ndarrays=grads),
                        "config": self._config(server_round),
                    }
                )
            replies = self.exchange(out, BACKWARD, server_round, tally)
        accepted = self._accept(finished, tally)
        if v1:
            server = [(n, copies[n][0], k) for n, _, k in accepted]
        else:  # the shared part keeps what a client that dropped out taught it
            server = [(0, self.server.get_weights(), 1)]
        # the training loss of the clients whose round counts
        return accepted, server, [x for n, _, _ in accepted for x in losses[n]]

    def train_local_loss(self, nodes: list[int], server_round: int, tally: RoundTally):
        """One local-loss round; return the clients' parts and the server part."""
        replies = self.exchange(
            {
                n: RecordDict(
                    {
                        "weights": ArrayRecord(numpy_ndarrays=self.client_weights),
                        "config": self._config(server_round),
                    }
                )
                for n in nodes
            },
            LOCAL,
            server_round,
            tally,
        )
        self.server.set_weights(self.server_weights)
        self.server.set_optimizer_state(None, self.rate(server_round))
        rng = np.random.default_rng([self.cfg.seed, server_round, 2])
        size, losses = self.cfg.client.batch_size, []
        accepted = self._accept(replies, tally)
        for node, _, _ in accepted:
            content = replies[node]
            chunk = self._check_chunk(content, shared_labels=True)
            if isinstance(chunk, str):
                tally.rejected[node] = chunk
                continue
            acts_by_epoch, (labels, *_) = chunk
            started = time.perf_counter()
            for acts in acts_by_epoch:
                order = rng.permutation(len(labels))
                for i in range(0, len(order), size):
                    idx = order[i : i + size]
                    loss, _, _ = self.server.step(acts[idx], labels[idx])
                    losses.append((loss, len(idx)))
            tally.server_compute_s += time.perf_counter() - started
        accepted = [a for a in accepted if a[0] not in tally.rejected]
        return accepted, [(0, self.server.get_weights(), 1)], losses

    def _accept(
        self, finished: Mapping[int, RecordDict], tally: RoundTally
    ) -> list[tuple[int, list[np.ndarray], int]]:
        """Check each returned client part; return ``(node, weights, examples)``."""

        def read(content: RecordDict) -> tuple[list[np.ndarray], int]:
            examples = int(content.config_records["result"]["num_examples"])
            return arrays(content, "weights"), examples

        return accept_replies(
            finished,
            sorted(finished, key=self.partitions.__getitem__),
            read,
            lambda weights: check_update(self.client_weights, weights),
            tally,
            "split: client part",
            "a reply without its client part or example count",
        )

    def evaluate_federated(self, server_round: int, tally: RoundTally) -> dict:
        """Score the clients' validation rows through the split model."""
        count = min(self.cfg.evaluate_clients_per_round, len(self.partitions))
        if count == 0:
            return {}
        nodes = self.sample(server_round, count, stream=1)
        part = ArrayRecord(numpy_ndarrays=self.client_weights[: self.num_part_arrays])
        replies = self.exchange(
            {n: RecordDict({"weights": part}) for n in nodes},
            EVALUATE,
            server_round,
            tally,
        )
        loss_sum = correct = total = 0.0
        for node, content in replies.items():
            chunk = self._check_chunk(content)
            if isinstance(chunk, str):
                tally.rejected[node] = chunk
                log.warning("split: rejected node %s's evaluation: %s", node, chunk)
                continue
            for acts, labels in zip(*chunk, strict=True):
                loss, hits = self.server.evaluate(acts, labels)
                loss_sum += loss * len(labels)
                correct += hits
                total += len(labels)
        result: dict[str, Any] = {
            "bytes_evaluation_up": sum(tally.up.values()),
            "bytes_evaluation_down": sum(tally.down.values()),
            "evaluation_failures": len(tally.failures),
            "evaluation_rejected": len(tally.rejected),
        }
        if total:
            result.update(
                federated_loss=loss_sum / total, federated_accuracy=correct / total
            )
        return result

    def run_round(self, server_round: int) -> dict[str, Any]:
        """Train, aggregate and evaluate one round; return its record.

        The record's per-kind bytes, ``messages`` and per-client bytes are the
        training exchanges'; federated evaluation's traffic is ``bytes_evaluation_*``
        (``bytes_up`` / ``bytes_down`` are the whole round's). ``round_timeout``
        bounds the training exchanges of a round together, and evaluation's.
        """
        started = time.perf_counter()
        tally = RoundTally.for_round(self.cfg.round_timeout, KINDS)
        nodes = self.sample(server_round, self.cfg.clients_per_round, stream=0)
        if self.mode == "local_loss":
            accepted, server, losses = self.train_local_loss(nodes, server_round, tally)
        else:
            accepted, server, losses = self.train_splitfed(nodes, server_round, tally)
        if not accepted:
            tally.check_not_all_failed(f"split round {server_round}", len(nodes))
        if accepted:
            strategy = self.run.strategy
            self.client_weights = strategy.aggregate_layers(accepted)
            self.server_weights = strategy.aggregate_layers(server)
        self.server.set_weights(self.server_weights)
        loss, metrics = self.run.central(server_round, self.global_weights(), {})
        row: dict[str, Any] = {
            "round": server_round,
            "central_loss": loss,
            "central_accuracy": metrics["accuracy"],
            "train_loss": sum(v * k for v, k in losses) / sum(k for _, k in losses)
            if losses
            else None,
        }
        evaluation = RoundTally.for_round(self.cfg.round_timeout, KINDS)
        row.update(self.evaluate_federated(server_round, evaluation))
        examples = {node: k for node, _, k in accepted}
        row.update(
            {
                "bytes_up": sum(tally.up.values()) + sum(evaluation.up.values()),
                "bytes_down": sum(tally.down.values()) + sum(evaluation.down.values()),
                **{key: tally.totals.get(key, 0) for key in self.byte_keys()},
                "messages": tally.messages,
                "server_compute_s": tally.server_compute_s,
                "num_failures": len(tally.failures),
                "num_rejected": len(tally.rejected),
                "rejected": [
                    {"partition_id": self.partitions.get(n), "reason": r}
                    for n, r in tally.rejected.items()
                ],
                "clients": [
                    {
                        "partition_id": self.partitions[n],
                        "num_examples": examples.get(n, 0),
                        "bytes_up": tally.up.get(n, 0),
                        "bytes_down": tally.down.get(n, 0),
                    }
                    for n in nodes
                ],
                "wall_time_s": time.perf_counter() - started,
            }
        )
        return row

    @staticmethod
    def byte_keys() -> tuple[str, ...]:
        """Return the per-kind byte counts every round records."""
        return (*KINDS.values(), "bytes_weights_up", "bytes_weights_down")

    def global_weights(self) -> list[np.ndarray]:
        """Return the joined model: client part (no auxiliary head), server part."""
        return [*self.client_weights[: self.num_part_arrays], *self.server_weights]


def split_workflow(run: ServerRun) -> list[np.ndarray]:
    """Run every round of split training; return the joined global weights."""
    cfg = run.cfg
    split = SplitServer(run)
    log.warning(
        "split=%s: clients send the server their cut-layer activations (after %s) "
        "and their labels; activations reveal information about the inputs",
        cfg.split.mode,
        split.cut,
    )
    run.central(0, split.global_weights(), {})
    split.discover(cfg.clients_per_round)
    for server_round in range(1, cfg.num_rounds + 1):
        run.recorder.write_round(split.run_round(server_round))
    return split.global_weights()


# split training has its own message flow: it runs every run with split on
register_workflow("split", split_workflow, when=lambda cfg: cfg.split is not None)


@register_unresumable
def split_unresumable(cfg: RunConfig) -> str | None:
    """Say why split training is not resumable: its flow is not checkpointed."""
    return "split training" if cfg.split is not None else None


@register_summary_part
def split_summary(run: ServerRun, weights: list[np.ndarray]) -> dict[str, Any]:
    """Report the client part's shares and the mean bytes and times per round."""
    if run.cfg.split is None:
        return {}
    rows = run.recorder.rows
    cut = cut_layer(run.cfg.split, run.cfg.model.name)
    summary: dict[str, Any] = {
        "split_mode": run.cfg.split.mode,
        "cut_layer": cut,
        **client_shares(run.model, cut),
    }
    if run.cfg.split.mode == "local_loss":  # the client also trains its aux head
        cut_shape = tuple(split_model(run.model, cut)[0].output.shape[1:])
        aux = aux_head_params(cut_shape, run.data.num_classes)
        summary["client_aux_params"] = aux
        summary["client_param_share_with_aux"] = (
            summary["client_params"] + aux
        ) / run.model.count_params()
    if rows:
        summary["bytes_per_round"] = float(
            np.mean([r["bytes_up"] + r["bytes_down"] for r in rows])
        )
        summary["server_compute_s_per_round"] = float(
            np.mean([r["server_compute_s"] for r in rows])
        )
        summary["messages_per_round"] = float(np.mean([r["messages"] for r in rows]))
        plot_split_bytes(rows, run.recorder.output_dir / SPLIT_PLOT_FILE)
    return summary


def plot_split_bytes(rows: list[Mapping[str, Any]], path) -> None:
    """Plot each round's bytes by kind (stacked) to a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = [row["round"] for row in rows]
    bottom = np.zeros(len(rows))
    for key in SplitServer.byte_keys():
        values = np.array([row.get(key, 0) for row in rows], dtype=float) / 1e6
        if values.any():
            ax.bar(rounds, values, bottom=bottom, label=key.removeprefix("bytes_"))
            bottom += values
    ax.set_xlabel("round")
    ax.set_ylabel("MB per round")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(plt, fig, path)
