"""Sample-weighted FedAvg that rejects malformed updates and records every round.

FedAvg: McMahan et al., AISTATS 2017, https://arxiv.org/abs/1602.05629.

The strategy only samples, converts, validates and calls the numpy functions of
:mod:`strategies.aggregation`. It aggregates client results in a fixed order (by the
``partition_id`` each client reports), so a seeded run gives the same global model
run after run, and keeps a per-round record (bytes sent each way, client metrics,
central and federated evaluation) that the server app writes out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as FlowerFedAvg
from flwr.server.strategy.aggregate import weighted_loss_avg

from strategies.aggregation import aggregate_metrics, aggregate_weighted, check_update
from strategies.stages import Stage, Update
from strategies.transport import ServerPruner, Transport

log = logging.getLogger(__name__)

EvaluateFn = Callable[
    [int, NDArrays, dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None
]


def parameters_size(parameters: Parameters) -> int:
    """Return the bytes of a serialized ``Parameters`` message payload."""
    return sum(len(tensor) for tensor in parameters.tensors)


def _client_order(item: tuple[ClientProxy, FitRes | EvaluateRes]) -> tuple[int, int]:
    proxy, res = item
    pid = res.metrics.get("partition_id")
    return (int(pid) if isinstance(pid, int) else 1 << 62, proxy.node_id)


class FedAvg(FlowerFedAvg):
    """FedAvg over ``clients_per_round`` of ``num_clients`` clients.

    Parameters
    ----------
    num_clients : int
        Clients in the federation; the strategy waits until that many are connected.
    clients_per_round : int
        Clients sampled for training each round.
    evaluate_clients_per_round : int
        Clients sampled for federated evaluation each round (0 disables it).
    initial_parameters : Parameters
        The global model before round 1.
    evaluate_fn : EvaluateFn | None
        Central evaluation of the global model, called after every round.
    transport : Transport | None
        Codecs and delta uploads; ``None`` sends and receives dense full models.
    pruner : ServerPruner | None
        Keeps the global model sparse (the initial model is pruned for round 1).
    uniform : bool
        Average clients with equal weights instead of by examples (client-level DP:
        its noise is calibrated to one client's clipped share of an unweighted mean).
    stages : Sequence[Stage]
        What happens to the round's accepted updates before they are averaged, in
        order (``strategies.stages``): simulated attacks
        (``strategies.attacks.AttackStage``), update defences
        (``strategies.defences.DefenceStage``).
    """

    def __init__(
        self,
        *,
        num_clients: int,
        clients_per_round: int,
        evaluate_clients_per_round: int,
        initial_parameters: Parameters,
        evaluate_fn: EvaluateFn | None = None,
        transport: Transport | None = None,
        pruner: ServerPruner | None = None,
        uniform: bool = False,
        stages: Sequence[Stage] = (),
    ) -> None:
        if pruner is not None:
            initial_parameters = ndarrays_to_parameters(
                pruner.apply(parameters_to_ndarrays(initial_parameters), 1)
            )
        super().__init__(
            fraction_fit=clients_per_round / num_clients,
            fraction_evaluate=evaluate_clients_per_round / num_clients,
            min_fit_clients=clients_per_round,
            min_evaluate_clients=evaluate_clients_per_round,
            min_available_clients=num_clients,
            evaluate_fn=evaluate_fn,
            on_fit_config_fn=lambda r: {"server_round": r, **self.round_config},
            on_evaluate_config_fn=lambda r: {"server_round": r, **self.round_config},
            initial_parameters=initial_parameters,
        )
        self.evaluate_clients_per_round = evaluate_clients_per_round
        # sent to every client in each round's config (e.g. the round a run resumed)
        self.round_config: dict[str, Scalar] = {}
        self._global: NDArrays = parameters_to_ndarrays(initial_parameters)
        self._records: dict[int, dict[str, Any]] = {}
        self.transport = transport or Transport()
        self.pruner = pruner
        self.uniform = uniform
        self.stages = tuple(stages)
        # node id -> partition id: when set, clients are sampled by partition id
        # from (sampling_seed, round), whatever the node ids (:meth:`by_partition`)
        self.partition_of: dict[int, int] = {}
        self.sampling_seed = 0
        # the round being aggregated: aggregate_layers and note_round read it
        self.server_round = 0
        # The model clients decode from what they were last sent (deltas add to it).
        self._reference: NDArrays = self._global
        # (message kind, node id) -> the model version sent (transport.copies)
        self._copies_sent: dict[tuple[str, int], int] = {}

    def __repr__(self) -> str:
        return (
            f"FedAvg(fit {self.min_fit_clients}/{self.min_available_clients}, "
            f"evaluate {self.evaluate_clients_per_round})"
        )

    # -- sampling ----------------------------------------------------------------------
    def num_fit_clients(self, num_available_clients: int) -> tuple[int, int]:
        """Sample ``clients_per_round / num_clients`` of the nodes available now.

        Flower's FedAvg waits for ``min_available_clients`` before sampling, which
        hangs a deployment forever once a SuperNode dies; the server app checks the
        federation's size before the first round instead, and later rounds go on
        with the nodes that are left.
        """
        return _sample_size(num_available_clients, self.fraction_fit), 1

    def num_evaluation_clients(self, num_available_clients: int) -> tuple[int, int]:
        """Sample ``evaluate_clients_per_round / num_clients`` of the nodes left."""
        return _sample_size(num_available_clients, self.fraction_evaluate), 1

    def by_partition(
        self, client_manager: ClientManager, server_round: int, stream: int
    ) -> ClientManager:
        """Return ``client_manager``, sampling by partition id when ids are known.

        Flower samples with ``random`` over node ids, which are random per run, so
        the same seed trained different partitions in different runs. With
        :attr:`partition_of` set, the available nodes are ordered by partition id
        and ``count`` of them drawn with numpy's generator seeded by
        ``(sampling_seed, server_round, stream)`` (0: training, 1: evaluation).
        """
        if not self.partition_of:
            return client_manager
        return _PartitionSampler(client_manager, self, server_round, stream)

    def draw(
        self,
        available: dict[str, ClientProxy],
        count: int,
        server_round: int,
        stream: int,
    ) -> list[ClientProxy]:
        """Draw ``count`` of the ``available`` proxies by partition id (seeded)."""
        known = sorted(
            (self.partition_of[proxy.node_id], cid)
            for cid, proxy in available.items()
            if proxy.node_id in self.partition_of
        )
        rng = np.random.default_rng([self.sampling_seed, server_round, stream])
        chosen = rng.choice(len(known), size=min(count, len(known)), replace=False)
        return [available[known[i][1]] for i in sorted(chosen)]

    # -- per-round record -------------------------------------------------------------
    def _record(self, server_round: int) -> dict[str, Any]:
        return self._records.setdefault(
            server_round,
            {
                "round": server_round,
                "started": time.perf_counter(),
                # when the round began (its period: the next round's start minus
                # this; with evaluation pushed ahead a round's record closes only
                # in the next round's exchange, so its wall time overlaps the next)
                "started_unix_s": time.time(),
                "bytes_up": 0,
                "bytes_down": 0,
                "num_failures": 0,
                "num_rejected": 0,
                "num_declined": 0,
                "num_clipped": 0,
                "num_capped": 0,
                "clients": {},
                "bytes_down_by_node": {},
            },
        )

    def _client_record(
        self, server_round: int, pid: Any, node_id: int
    ) -> dict[str, Any]:
        key = str(pid) if pid is not None else f"node-{node_id}"
        return self._record(server_round)["clients"].setdefault(
            key, {"partition_id": pid}
        )

    @staticmethod
    def _count_failures(
        record: dict[str, Any], failures: list[Any], action: str
    ) -> None:
        record["num_failures"] += len(failures)
        for failure in failures:
            log.warning(
                "round %d: a client failed to %s: %s",
                record["round"],
                action,
                _describe(failure),
            )

    @staticmethod
    def _phase_time(record: dict[str, Any], mark: str, key: str) -> None:
        """Record the seconds since ``mark`` (instructions out) as ``key``."""
        if mark in record:
            record[key] = time.perf_counter() - record.pop(mark)

    def note_round(self, key: str, value: Any) -> None:
        """Add ``key`` to the record of the round being aggregated."""
        self._record(self.server_round)[key] = value

    def pop_round_record(self, server_round: int) -> dict[str, Any]:
        """Return and forget the record of a finished round.

        Keys: ``round``, ``wall_time_s``, ``fit_s`` and ``federated_eval_s`` (from
        the instructions going out to the replies being aggregated),
        ``central_eval_s``, ``bytes_up``, ``bytes_down``,
        ``num_failures``, ``num_rejected``, ``num_declined``, ``sparsity``
        (pruning), the aggregated fit metrics (``train_loss``, ``train_accuracy``),
        ``central_loss``/``central_accuracy``, ``federated_loss``/
        ``federated_accuracy`` where evaluated, and ``clients``
        (one dict per client, ordered by partition id).
        """
        self._record(server_round)  # a round may have produced nothing to record
        record = self._records.pop(server_round)
        del record["bytes_down_by_node"]
        for mark in ("_fit_sent", "_evaluate_sent"):  # a step that got no replies
            record.pop(mark, None)
        record["wall_time_s"] = time.perf_counter() - record.pop("started")
        record["clients"] = [
            record["clients"][k] for k in sorted(record["clients"], key=_natural)
        ]
        return record

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, NDArrays]]:
        """Return what a resumed run needs beyond the global model: (JSON, arrays).

        FedAvg keeps the pruning mask (its schedule step is the round) and the
        public model of compressed downloads (``transport.copies``); a subclass with
        more state extends both.
        """
        state: dict[str, Any] = {}
        arrays: dict[str, NDArrays] = {}
        if self.pruner is not None:
            masked = sorted(self.pruner.masks)
            state["pruning_masked_arrays"] = masked
            arrays["pruning_masks"] = [self.pruner.masks[i] for i in masked]
        if self.transport.copies is not None:
            state["download_copies"], arrays["download_copies"] = (
                self.transport.copies.state()
            )
        return state, arrays

    def restore_checkpoint_state(
        self, weights: NDArrays, state: dict[str, Any], arrays: dict[str, NDArrays]
    ) -> None:
        """Continue from a checkpoint: its global model and :meth:`checkpoint_state`."""
        self._global = self._reference = list(weights)
        if self.pruner is not None:
            masks = arrays.get("pruning_masks", [])
            masked = state.get("pruning_masked_arrays", [])
            self.pruner.masks = {
                int(i): np.asarray(m, dtype=bool)
                for i, m in zip(masked, masks, strict=True)
            }
        if self.transport.copies is not None and "download_copies" in state:
            self.transport.copies.restore(
                state["download_copies"], arrays.get("download_copies", [])
            )

    @property
    def global_parameters(self) -> NDArrays:
        """The current global model (after the latest accepted aggregation)."""
        return self._global

    # -- Flower Strategy --------------------------------------------------------------
    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample clients, send each its (encoded) model and count the bytes sent."""
        self._global = parameters_to_ndarrays(parameters)
        parameters = self._encode_download(parameters, self._global)
        sampled = super().configure_fit(
            server_round, parameters, self.by_partition(client_manager, server_round, 0)
        )
        return self._instruct(server_round, parameters, sampled, FitIns, "_fit_sent")

    def _instruct(
        self,
        server_round: int,
        parameters: Parameters,
        sampled: list[tuple[ClientProxy, Any]],
        kind: type,
        sent_at: str,
    ) -> list[tuple[ClientProxy, Any]]:
        """Give each sampled client its own parameters and config; count the bytes.

        ``kind``: ``FitIns`` or ``EvaluateIns``; ``sent_at``: the round record's key
        for when the instructions left (the phase's time is measured from it).
        """
        instructions = []
        copies = self.transport.copies
        for proxy, ins in sampled:
            sent, extra = self.client_parameters(server_round, parameters, proxy)
            if copies is not None:  # what changed since this client's copy
                arrays, download = copies.payload(self._copy_key(proxy.node_id))
                sent = ndarrays_to_parameters(arrays)
                extra = {**extra, **download}
                self._copies_sent[(kind.__name__, proxy.node_id)] = copies.version
            instructions.append((proxy, kind(sent, {**ins.config, **extra})))
        self._count_download(server_round, instructions)
        self._record(server_round)[sent_at] = time.perf_counter()
        return instructions

    def _encode_download(
        self, parameters: Parameters, weights: NDArrays | None = None
    ) -> Parameters:
        """Encode the global model for download; remember what clients decode.

        ``weights``: ``parameters`` already deserialized, if the caller has them.
        """
        if weights is None:
            weights = parameters_to_ndarrays(parameters)
        payload, self._reference = self.transport.send(weights)
        if self.transport.download is None:
            return parameters
        return ndarrays_to_parameters(payload)

    def _count_download(
        self, server_round: int, instructions: list[tuple[ClientProxy, Any]]
    ) -> None:
        record = self._record(server_round)
        for proxy, ins in instructions:
            size = parameters_size(ins.parameters)
            record["bytes_down"] += size
            by_node = record["bytes_down_by_node"]
            by_node[proxy.node_id] = by_node.get(proxy.node_id, 0) + size

    def _copy_key(self, node_id: int) -> str:
        """Return the key of a client's model copy.

        Its partition id where known (stable across resumed runs), else its node id.
        """
        pid = self.partition_of.get(node_id)
        return f"partition-{pid}" if pid is not None else f"node-{node_id}"

    def _copies_replied(self, kind: str, replied: Sequence[int]) -> None:
        """Record the copies after a phase.

        The nodes that replied hold the version they were sent; the others (failed,
        late) may hold none.
        """
        copies = self.transport.copies
        if copies is None:
            return
        replied = set(replied)
        for sent_kind, node in [k for k in self._copies_sent if k[0] == kind]:
            version = self._copies_sent.pop((sent_kind, node))
            if node in replied:
                copies.delivered(self._copy_key(node), version)
            else:
                copies.forget(self._copy_key(node))

    def client_parameters(
        self, server_round: int, parameters: Parameters, proxy: ClientProxy
    ) -> tuple[Parameters, dict[str, Scalar]]:
        """Return what one client is sent (here the global model) and extra config."""
        return parameters, {}

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Validate each update, then average the accepted ones weighted by examples."""
        self.server_round = server_round
        record = self._record(server_round)
        self._phase_time(record, "_fit_sent", "fit_s")
        self._count_failures(record, failures, "train")
        self._copies_replied("FitIns", [proxy.node_id for proxy, _ in results])
        if failures and not results:
            raise RuntimeError(
                f"round {server_round}: all {len(failures)} sampled clients failed to "
                f"train; first error: {_describe(failures[0])}"
            )
        accepted: list[tuple[int, NDArrays, int]] = []
        accepted_metrics: list[tuple[int, dict[str, Scalar]]] = []
        clients: list[dict[str, Any]] = []  # the accepted clients' records
        for proxy, res in sorted(results, key=_client_order):
            pid = res.metrics.get("partition_id")
            client = self._client_record(server_round, pid, proxy.node_id)
            size = parameters_size(res.parameters)
            record["bytes_up"] += size
            client.update(
                {k: v for k, v in res.metrics.items() if k != "partition_id"},
                num_examples=res.num_examples,
                bytes_up=size,
                bytes_down=record["bytes_down_by_node"].pop(proxy.node_id, 0),
            )
            if "declined" in res.metrics:  # e.g. its privacy budget is spent
                record["num_declined"] += 1
                log.warning(
                    "round %d: client %s declined: %s",
                    server_round,
                    pid,
                    res.metrics["declined"],
                )
                continue
            update, reason = self._decode_update(proxy.node_id, res)
            if update is None:
                self._reject(record, client, reason, proxy.node_id)
                continue
            accepted.append((proxy.node_id, update, res.num_examples))
            accepted_metrics.append((res.num_examples, res.metrics))
            clients.append(client)

        if self.stages:
            accepted, accepted_metrics = self._run_stages(
                server_round, record, accepted, accepted_metrics, clients
            )
        metrics: dict[str, Scalar] = {
            "bytes_up": record["bytes_up"],
            "num_accepted": len(accepted),
            "num_rejected": record["num_rejected"],
            "num_declined": record["num_declined"],
        }
        if not accepted:
            log.warning(
                "round %d: no update accepted; the global model is unchanged",
                server_round,
            )
            return None, metrics
        self._global = self.aggregate_layers(accepted)
        if self.pruner is not None:
            self._global = self.pruner.apply(self._global, server_round + 1)
            record["sparsity"] = self.pruner.sparsity(self._global)
        fit_metrics = aggregate_metrics(accepted_metrics)
        record.update(fit_metrics)
        metrics.update(fit_metrics)
        return ndarrays_to_parameters(self._global), metrics

    @staticmethod
    def _reject(
        record: dict[str, Any], client: dict[str, Any], reason: str | None, node: int
    ) -> None:
        """Count a rejected update in the round's record and say why, per client."""
        record["num_rejected"] += 1
        client["rejected"] = reason
        log.warning(
            "round %d: rejected the update of client %s (node %d): %s",
            record["round"],
            client["partition_id"],
            node,
            reason,
        )

    def reference_for(self, node_id: int) -> NDArrays:
        """Return the model node ``node_id`` was sent: its update's delta is to it."""
        return self._reference

    def _run_stages(
        self,
        server_round: int,
        record: dict[str, Any],
        accepted: list[tuple[int, NDArrays, int]],
        accepted_metrics: list[tuple[int, dict[str, Scalar]]],
        clients: list[dict[str, Any]],
    ) -> tuple[list[tuple[int, NDArrays, int]], list[tuple[int, dict[str, Scalar]]]]:
        """Run the stages over the accepted updates; check, record and keep the rest."""
        updates = [
            Update(node, client["partition_id"], self.reference_for(node), weights, n)
            for (node, weights, n), client in zip(accepted, clients, strict=True)
        ]
        for stage in self.stages:
            stage.apply(server_round, updates, record)
        kept, kept_metrics = [], []
        for update, client, (_, fit_metrics) in zip(
            updates, clients, accepted_metrics, strict=True
        ):
            if update.attacked is not None:
                client["attacked"] = update.attacked
            weights = update.weights
            reason = "; ".join(update.reasons) or None
            if weights is not None:  # what a stage put in is checked like any update
                invalid = self.check_layers(update.node, weights)
                if invalid is not None:
                    weights, reason = None, invalid
            if weights is None:
                self._reject(record, client, reason, update.node)
                continue
            if update.clipped or update.capped:
                record["num_clipped"] += update.clipped
                record["num_capped"] += update.capped
                client["defended"] = reason
                log.info(
                    "round %d: client %s: %s",
                    server_round,
                    client["partition_id"],
                    reason,
                )
            kept.append((update.node, weights, update.num_examples))
            kept_metrics.append((update.num_examples, fit_metrics))
        return kept, kept_metrics

    def _decode_update(
        self, node_id: int, res: FitRes
    ) -> tuple[NDArrays | None, str | None]:
        """Return ``(model, None)`` for a usable update, else ``(None, reason)``."""
        if res.num_examples <= 0:
            return None, f"num_examples is {res.num_examples}"
        try:
            payload = parameters_to_ndarrays(res.parameters)
        except Exception as err:  # a payload that does not deserialize
            return None, f"parameters do not deserialize: {err}"
        try:
            update = self.transport.receive(payload, self._reference)
        except ValueError as err:
            return None, f"payload does not decode: {err}"
        reason = self.check_layers(node_id, update)
        return (None, reason) if reason is not None else (update, None)

    def check_layers(self, node_id: int, update: NDArrays) -> str | None:
        """Return why node ``node_id``'s update cannot be aggregated, or None."""
        return check_update(self._global, update)

    def aggregate_layers(self, accepted: list[tuple[int, NDArrays, int]]) -> NDArrays:
        """Return the new global model from accepted ``(node, weights, examples)``.

        Override this to aggregate differently; ``self.server_round`` is the round
        being aggregated and ``self.global_parameters`` the model the round started
        from (a server optimizer's step is from there).
        """
        return aggregate_weighted(
            [(weights, 1 if self.uniform else n) for _, weights, n in accepted]
        )

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Evaluate the global model centrally; record the result and its cost."""
        started = time.perf_counter()
        result = super().evaluate(server_round, parameters)
        if result is not None and server_round > 0:
            loss, metrics = result
            record = self._record(server_round)
            record["central_loss"] = loss
            record.update({f"central_{k}": v for k, v in metrics.items()})
            record["central_eval_s"] = time.perf_counter() - started
        return result

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Sample clients for federated evaluation and count the bytes sent."""
        if self.evaluate_clients_per_round == 0:
            return []
        parameters = self._encode_download(parameters)
        sampled = super().configure_evaluate(
            server_round, parameters, self.by_partition(client_manager, server_round, 1)
        )
        return self._instruct(
            server_round, parameters, sampled, EvaluateIns, "_evaluate_sent"
        )

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Average client evaluation loss and metrics weighted by examples."""
        record = self._record(server_round)
        self._phase_time(record, "_evaluate_sent", "federated_eval_s")
        self._count_failures(record, failures, "evaluate")
        self._copies_replied("EvaluateIns", [proxy.node_id for proxy, _ in results])
        ordered = sorted(results, key=_client_order)
        for proxy, res in ordered:
            client = self._client_record(
                server_round, res.metrics.get("partition_id"), proxy.node_id
            )
            client["val_loss"] = res.loss
            client["bytes_down"] = client.get("bytes_down", 0) + record[
                "bytes_down_by_node"
            ].pop(proxy.node_id, 0)
            client.update(
                {f"val_{k}": v for k, v in res.metrics.items() if k != "partition_id"}
            )
        if not ordered:
            return None, {}
        loss = weighted_loss_avg([(res.num_examples, res.loss) for _, res in ordered])
        metrics = aggregate_metrics(
            [(res.num_examples, res.metrics) for _, res in ordered]
        )
        record["federated_loss"] = loss
        record.update({f"federated_{k}": v for k, v in metrics.items()})
        return loss, metrics


class _PartitionSampler:
    """A client manager whose ``sample`` draws by partition id (``FedAvg.draw``)."""

    def __init__(
        self, manager: ClientManager, strategy: FedAvg, server_round: int, stream: int
    ) -> None:
        self._manager = manager
        self._strategy = strategy
        self._round = server_round
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)

    def sample(
        self, num_clients: int, min_num_clients: int | None = None, criterion=None
    ) -> list[ClientProxy]:
        """Draw ``num_clients`` of the nodes available now by partition id."""
        return self._strategy.draw(
            self._manager.all(), num_clients, self._round, self._stream
        )


def _sample_size(available: int, fraction: float) -> int:
    return min(max(1, round(available * fraction)), max(available, 1))


def _describe(failure: tuple[ClientProxy, FitRes | EvaluateRes] | BaseException) -> str:
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}"
    proxy, res = failure
    return f"node {proxy.node_id}: {res.status.code.name} {res.status.message}"


def _natural(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else (1 << 62, key)
