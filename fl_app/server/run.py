"""The server side of a run: strategy and workflow built from the run config.

:func:`run_server` composes the parts of a run (:class:`ServerRun`: config, data, global
model, strategy, results recorder), hands them to the round workflow the strategy's
spec names (:data:`WORKFLOWS`; ``rounds``: Flower's ``DefaultWorkflow`` with a
``LegacyContext``, SecAgg+ as its fit step when configured), and writes the summary
the registered summary parts (:data:`SUMMARY_PARTS`) contribute. Results go to the
absolute ``output-dir`` of the run config, because Flower discards the final Context.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.common import NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import (
    default_centralized_evaluation_workflow,
    default_evaluate_workflow,
    default_fit_workflow,
    default_init_params_workflow,
)
from flwr.serverapp import Grid

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.client.node_state import LINEAGE, RESUMED_FROM
from fl_app.core.checkpoint import (
    Checkpoint,
    check_resumable,
    code_version,
    flatten_arrays,
    latest_checkpoint,
    list_checkpoints,
    restore_rng_state,
    resumed_rounds,
    rng_state,
    run_output_dir,
    save_checkpoint,
)
from fl_app.core.config import STRATEGY_SPECS, ConfigError, RunConfig
from fl_app.core.exchange import NodeExchange
from fl_app.core.results import MODEL_FILE, RunRecorder
from fl_app.data import ArrayDataset, CentralData, load_central_data
from fl_app.ml.training import (
    ModelKey,
    evaluate_model,
    get_compiled_model,
    keras,
    model_key,
)
from fl_app.server.grids import DeadlineGrid, tune_grid, wait_for_nodes
from fl_app.server.registry import (
    FIT_WORKFLOWS,
    PHASES,
    ROUND_ROWS,
    STRATEGY_BUILDERS,
    STRATEGY_OPTIONS,
    STRATEGY_WRAPPERS,
    SUMMARY_PARTS,
    UNRESUMABLE,
    WORKFLOW_OVERRIDES,
    WORKFLOWS,
    RegistrationError,
    RoundWorkflow,
    register_strategy,
    register_summary_part,
    register_workflow,
)
from strategies.fedavg import FedAvg

log = logging.getLogger(__name__)


def resolve_output_dir(cfg: RunConfig, run_id: int) -> Path:
    """Return ``resume`` or ``output-dir``, else ``outputs/flwr-run-<run id>``."""
    return run_output_dir(cfg.checkpoint.resume or cfg.output_dir, run_id)


def log_to_console() -> None:
    """Show the project's INFO logs (per-round progress) in the run's log stream."""
    for name in ("fl_app", "strategies"):
        logger = logging.getLogger(name)
        if not any(getattr(h, "_fl_dnn", False) for h in logger.handlers):
            handler = logging.StreamHandler()
            handler.setFormatter(
                logging.Formatter("%(levelname)-8s fl-dnn: %(message)s")
            )
            handler._fl_dnn = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _build_fedavg(cfg: RunConfig, model: keras.Model, **common: Any) -> FedAvg:
    return FedAvg(**common)


register_strategy(STRATEGY_SPECS["fedavg"], _build_fedavg)


def build_strategy(cfg: RunConfig, model: keras.Model, **common: Any) -> FedAvg:
    """Return the strategy registered under ``cfg.strategy``, built for ``model``."""
    build = STRATEGY_BUILDERS.get(cfg.strategy)
    if build is None:
        raise ConfigError(
            f"run config key 'strategy': {cfg.strategy!r} has a config spec but no "
            f"server-side builder (register_strategy); built: "
            f"{', '.join(STRATEGY_BUILDERS)}"
        )
    dense = STRATEGY_SPECS[cfg.strategy].dense_updates
    # what features give every strategy (defences, attack, codecs, pruning mask)
    given: dict[str, str] = {}
    for options, dense_only in STRATEGY_OPTIONS:
        if dense_only and not dense:
            continue
        for keyword, value in options(cfg, model).items():
            if keyword in given:
                raise RegistrationError(
                    f"two strategy options give {keyword!r}: {given[keyword]} and "
                    f"{options.__module__}.{options.__qualname__}"
                )
            given[keyword] = f"{options.__module__}.{options.__qualname__}"
            common[keyword] = value
    return build(cfg, model, **common)


def wrap_strategy(cfg: RunConfig, strategy: Strategy) -> Strategy:
    """Return ``strategy`` wrapped by the features that wrap it (client-level DP)."""
    for wrap in STRATEGY_WRAPPERS:
        strategy = wrap(cfg, strategy)
    return strategy


def fit_workflow(cfg: RunConfig):
    """Return the fit step a feature asks for (SecAgg+), else None (the default)."""
    for offer in FIT_WORKFLOWS:
        workflow = offer(cfg)
        if workflow is not None:
            return workflow
    return None


def round_row(cfg: RunConfig, row: dict[str, Any]) -> dict[str, Any]:
    """Return a round's record with what features add to it (ε)."""
    for add in ROUND_ROWS:
        row = add(cfg, row)
    return row


def unresumable(cfg: RunConfig) -> str | None:
    """Return why a run cannot be resumed (it writes no checkpoints), else None."""
    for why in UNRESUMABLE:
        reason = why(cfg)
        if reason:
            return reason
    return None


class CentralEvaluation:
    """Evaluate global weights on the central test set; keep every round's figures.

    Passed to the strategy as its ``evaluate_fn``; ``results`` maps a round to
    ``(loss, accuracy)`` (round 0: the initial model).
    """

    def __init__(self, model: keras.Model, test: ArrayDataset) -> None:
        self.model = model
        self.test = test
        self.results: dict[int, tuple[float, float]] = {}
        self.last: NDArrays | None = None  # the weights evaluated last

    def evaluated_last(self, weights: NDArrays) -> bool:
        """Whether ``weights`` are (equal to) the weights evaluated last."""
        return self.last is not None and all(
            np.array_equal(a, b) for a, b in zip(self.last, weights, strict=True)
        )

    def __call__(
        self, server_round: int, weights: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]]:
        """Evaluate ``weights``; return the loss and ``{"accuracy": ...}``."""
        self.model.set_weights(weights)
        loss, accuracy = evaluate_model(self.model, self.test)
        self.results[server_round] = (loss, accuracy)
        self.last = [np.array(w, copy=True) for w in weights]
        return loss, {"accuracy": accuracy}


@dataclass
class ServerRun:
    """The parts of one run that workflows and summary parts read."""

    cfg: RunConfig
    context: Context
    grid: Grid
    data: CentralData
    key: ModelKey  # the global model's (plain, never pruning-wrapped)
    model: keras.Model
    strategy: FedAvg
    recorder: RunRecorder
    central: CentralEvaluation
    # what phases before the rounds leave for summary parts (register_phase)
    phases: dict[str, Any] = field(default_factory=dict)
    resumed: Checkpoint | None = None  # the checkpoint this run continues from
    started: float = field(default_factory=time.perf_counter)
    elapsed_before_s: float = 0.0  # wall time of the run before it was resumed
    resumed_from: list[int] = field(default_factory=list)  # rounds, every resume
    # the run's id across its resumes (names the nodes' state on disk)
    lineage: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    checkpoint_time_s: float = 0.0  # spent writing checkpoints (this process)

    def elapsed_s(self) -> float:
        """Wall time of the whole run so far, across resumes."""
        return self.elapsed_before_s + time.perf_counter() - self.started


@dataclass(frozen=True)
class RunState:
    """What a checkpoint holds of the run, taken at one moment (:func:`run_state`)."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]


def run_state(run: ServerRun, wrapped: Strategy, weights: NDArrays) -> RunState:
    """Take the run's state now: the global model, the strategy's, the RNGs'."""
    state, strategy_arrays = run.strategy.checkpoint_state()
    rng_meta, rng_arrays = rng_state()
    meta = {
        "strategy": state,
        # the adaptive clipping norm of Flower's client-level DP wrappers
        "clipping_norm": getattr(wrapped, "clipping_norm", None),
        "central": {str(r): list(v) for r, v in run.central.results.items()},
        "rng": rng_meta,
    }
    arrays = flatten_arrays({"global": weights})
    arrays.update(
        flatten_arrays({f"strategy/{k}": v for k, v in strategy_arrays.items()})
    )
    arrays.update(rng_arrays)
    return RunState(meta, {k: np.array(v, copy=True) for k, v in arrays.items()})


def save_run_checkpoint(
    run: ServerRun,
    wrapped: Strategy,
    server_round: int,
    weights: NDArrays,
    taken: RunState | None = None,
) -> None:
    """Write the run's state after ``server_round`` (``fl_app.core.checkpoint``).

    ``taken``: the state as :func:`run_state` took it earlier (when the round's
    record completes only later); else it is taken now. The rows are the
    recorder's now.
    """
    started = time.perf_counter()
    if taken is None:
        taken = run_state(run, wrapped, weights)
    meta = {
        "run_config": dict(run.context.run_config),
        "lineage": run.lineage,
        "code_version": code_version(),
        **taken.meta,
        "rows": run.recorder.rows,
        "elapsed_s": run.elapsed_s(),
        "resumed_from": run.resumed_from,
    }
    save_checkpoint(
        run.recorder.output_dir,
        server_round,
        taken.arrays,
        meta,
        run.cfg.checkpoint.keep,
    )
    run.checkpoint_time_s += time.perf_counter() - started


def restore_run(run: ServerRun, wrapped: Strategy) -> NDArrays:
    """Put the strategy, its DP wrapper and the RNGs where the checkpoint left them."""
    checkpoint = cast(Checkpoint, run.resumed)
    weights = checkpoint.group("global")
    names = {n.split("/")[1] for n in checkpoint.arrays if n.startswith("strategy/")}
    run.strategy.restore_checkpoint_state(
        weights,
        checkpoint.meta["strategy"],
        {name: checkpoint.group(f"strategy/{name}") for name in names},
    )
    if checkpoint.meta.get("clipping_norm") is not None:
        wrapped.clipping_norm = checkpoint.meta["clipping_norm"]  # type: ignore[attr-defined]
    restore_rng_state(checkpoint)
    # every client learns which round the run resumed after, to restore its state
    run.strategy.round_config[RESUMED_FROM] = checkpoint.round
    return weights


def run_rounds(
    grid: Grid,
    legacy: LegacyContext,
    fit_step: Callable[[Grid, Context], None],
    evaluate_step: Callable[[Grid, Context], None],
    first_round: int = 1,
    weights: NDArrays | None = None,
) -> None:
    """Flower's ``DefaultWorkflow`` loop from ``first_round`` (fit, central, evaluate).

    ``DefaultWorkflow`` always starts at round 1 from the strategy's initial
    parameters; a resumed run starts after its checkpoint from ``weights``. The
    steps are Flower's own (its fit or SecAgg+ workflow, centralized evaluation,
    the evaluate step), as is the thread that keeps the client manager current.
    """
    from flwr.compat.common.recorddict_compat import parameters_to_arrayrecord
    from flwr.server.compat.app_utils import start_update_client_manager_thread

    thread, stop, registered = start_update_client_manager_thread(
        grid, legacy.client_manager
    )
    registered.wait()
    try:
        if weights is None:
            default_init_params_workflow(grid, legacy)
        else:
            legacy.state.array_records[MAIN_PARAMS_RECORD] = parameters_to_arrayrecord(
                ndarrays_to_parameters(weights), keep_input=True
            )
        config = ConfigRecord({Key.START_TIME: time.perf_counter()})
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = config
        flush_ahead = getattr(grid, "flush_ahead", None)
        for server_round in range(first_round, legacy.config.num_rounds + 1):
            config[Key.CURRENT_ROUND] = server_round
            fit_step(grid, legacy)
            if flush_ahead is not None:  # evaluation pushed ahead of a fit step
                flush_ahead()  # that sent nothing: its replies, in round order
            default_centralized_evaluation_workflow(grid, legacy)
            evaluate_step(grid, legacy)
    finally:
        stop.set()
        thread.join()


def evaluate_ahead(
    grid: Grid,
    legacy: LegacyContext,
    server_round: int,
    then: Callable[[RunState | None, int], None],
    take_state: Callable[[], RunState | None],
) -> bool:
    """Push round ``server_round``'s evaluation ahead of the next fit step.

    In a deployment (a grid with ``push_ahead``: :class:`fl_app.server.grids.
    PollingGrid`) the evaluation of round r's model and round r+1's training start
    from the same weights; sent together, each SuperNode finds both pending and
    pays Flower's idle sleep between pulls (3 s) once a round, not twice. The
    evaluation is configured here, in the order Flower's evaluate step would (the
    same clients sampled), the run's state is taken before round r+1 is configured
    (``take_state``: what round r's checkpoint holds), and when the replies are in
    (before round r+1's are aggregated) they are aggregated as Flower's evaluate
    step does and ``then(state, late)`` records the round. Returns False where it
    cannot push ahead (simulation: Flower's simulation may run two messages of one
    node at once, which would race on the node's state) or no client is sampled.
    """
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import Message, MessageType
    from flwr.common import Code, EvaluateRes

    push_ahead = getattr(grid, "push_ahead", None)
    if push_ahead is None:
        return False
    parameters = compat.arrayrecord_to_parameters(
        legacy.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
    )
    instructions = legacy.strategy.configure_evaluate(
        server_round=server_round,
        parameters=parameters,
        client_manager=legacy.client_manager,
    )
    if not instructions:
        return False
    proxies = {proxy.node_id: proxy for proxy, _ in instructions}
    messages = [
        Message(
            content=compat.evaluateins_to_recorddict(ins, True),
            dst_node_id=proxy.node_id,
            message_type=MessageType.EVALUATE,
            group_id=str(server_round),
        )
        for proxy, ins in instructions
    ]
    taken = take_state()

    def aggregate(replies: list[Message], late: list[int]) -> None:
        results: list[tuple[Any, EvaluateRes]] = []
        failures: list[Any] = []
        for reply in replies:
            if reply.has_content():
                proxy = proxies[reply.metadata.src_node_id]
                res = compat.recorddict_to_evaluateres(reply.content)
                (results if res.status.code == Code.OK else failures).append(
                    (proxy, res)
                )
            else:
                failures.append(Exception(reply.error))
        if late:
            log.warning(
                "node(s) %s did not reply to round %d's evaluation in time; going on "
                "without them",
                late,
                server_round,
            )
        legacy.strategy.aggregate_evaluate(server_round, results, failures)
        then(taken, len(late))

    push_ahead(messages, aggregate)
    return True


def rounds_workflow(run: ServerRun) -> NDArrays:
    """FedAvg-style rounds: Flower's fit and evaluate steps per round.

    The fit step is a feature's where one offers it (Flower's ``SecAggPlusWorkflow``
    with ``secagg``), else Flower's default. After each round's evaluate step, the
    strategy's round record is written, then the run's checkpoint
    (``checkpoint-every``; always after the last round). With ``round_timeout``,
    each exchange waits at most that long (:class:`DeadlineGrid`) and the round's
    record counts the replies dropped (``num_timeouts``).
    """
    cfg, strategy = run.cfg, run.strategy
    grid = DeadlineGrid(run.grid, cfg.round_timeout) if cfg.round_timeout else None
    wrapped = wrap_strategy(cfg, strategy)
    # a run that cannot be resumed (e.g. a phase before its rounds): no checkpoints
    every = cfg.checkpoint.every if unresumable(cfg) is None else 0

    def record(
        server_round: int,
        weights: NDArrays,
        taken: RunState | None = None,
        late: int = 0,
    ) -> None:
        row = strategy.pop_round_record(server_round)
        row["num_timeouts"] = (grid.pop_timeouts() if grid is not None else 0) + late
        run.recorder.write_round(round_row(cfg, row))
        if every and (server_round % every == 0 or server_round == cfg.num_rounds):
            save_run_checkpoint(run, wrapped, server_round, weights, taken)

    def evaluate_and_record(grid_: Grid, legacy: Context) -> None:
        server_round = cast(
            int, legacy.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND]
        )
        weights = legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
        if (
            cfg.evaluate_ahead
            and server_round < cfg.num_rounds
            and evaluate_ahead(
                grid_,
                legacy,
                server_round,
                lambda taken, late: record(server_round, weights, taken, late),
                lambda: run_state(run, wrapped, weights) if every else None,
            )
        ):
            return  # recorded when the next fit step has the replies
        default_evaluate_workflow(grid_, legacy)
        record(server_round, weights)

    legacy = LegacyContext(
        context=run.context,
        config=ServerConfig(
            num_rounds=cfg.num_rounds, round_timeout=cfg.round_timeout or None
        ),
        strategy=wrapped,
    )
    if (
        cfg.clients_per_round < cfg.num_clients
        or 0 < cfg.evaluate_clients_per_round < cfg.num_clients
    ):
        # partial participation: sample by partition id, from the seed and the round
        exchange = NodeExchange(run)
        asked = time.perf_counter()
        exchange.discover(cfg.clients_per_round)
        log.info(
            "partition ids of %d nodes in %.1f s",
            len(exchange.partitions),
            time.perf_counter() - asked,
        )
        strategy.partition_of = dict(exchange.partitions)
        strategy.sampling_seed = cfg.seed
    first_round, weights = 1, None
    if every or run.resumed is not None:
        # the nodes keep their state on disk under the run's lineage (node_state)
        strategy.round_config[LINEAGE] = run.lineage
    if run.resumed is not None:
        weights = restore_run(run, wrapped)
        first_round = run.resumed.round + 1
    run_rounds(
        grid if grid is not None else run.grid,
        legacy,
        fit_workflow(cfg) or default_fit_workflow,
        evaluate_and_record,
        first_round,
        weights,
    )
    return legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()


register_workflow("rounds", rounds_workflow)


@register_summary_part
def central_summary(run: ServerRun, weights: NDArrays) -> dict[str, Any]:
    """Report the final and initial central accuracy, and what ran."""
    final = run.central.results[run.cfg.num_rounds]
    return {
        "final_accuracy": final[1],
        "final_loss": final[0],
        "initial_accuracy": run.central.results.get(0, (None, None))[1],
        "central_test_rows": len(run.data.test),
        "dataset": run.cfg.dataset.name,
        "partition": run.cfg.partition.name,
        "strategy": run.cfg.strategy,
        "num_clients": run.cfg.num_clients,
        "run_config": dict(run.context.run_config),
    }


def build_workflow(cfg: RunConfig) -> RoundWorkflow:
    """Return the workflow the strategy's spec names."""
    # a feature with its own message flow (split training) takes the run over
    overrides = [name for when, name in WORKFLOW_OVERRIDES if when(cfg)]
    name = overrides[0] if overrides else STRATEGY_SPECS[cfg.strategy].workflow
    workflow = WORKFLOWS.get(name)
    if workflow is None:
        raise ConfigError(
            f"run config key 'strategy': {cfg.strategy!r} runs workflow {name!r}, "
            f"which is not registered (register_workflow); registered: "
            f"{', '.join(WORKFLOWS)}"
        )
    return workflow


def rounds_given(grid: Grid) -> bool:
    """Whether the run's submitter set ``num-rounds`` (``flwr run --run-config``).

    Flower fuses the overrides into ``[tool.flwr.app.config]``'s defaults; the run
    keeps the overrides alone (``Run.override_config``). A grid that cannot say is
    taken to have been given every key.
    """
    try:
        overrides = grid.run.override_config
    except Exception:  # a grid without a run (tests' in-process grids)
        return True
    return "num-rounds" in overrides


def resume_point(
    cfg: RunConfig, context: Context, output_dir: Path, given: bool = True
) -> Checkpoint | None:
    """Return the checkpoint a ``resume`` run continues from (checked), else None.

    Unless ``num-rounds`` was ``given``, ``context.run_config`` takes the
    checkpoint's own (the run goes on to the round count it was configured with).
    """
    if not cfg.checkpoint.resume:
        return None
    checkpoint = latest_checkpoint(output_dir)
    context.run_config.update(resumed_rounds(checkpoint, context.run_config, given))
    check_resumable(checkpoint, context.run_config)
    if checkpoint.meta["code_version"] != code_version():
        log.warning(
            "resume: the checkpoint was written by code %s, this is %s",
            checkpoint.meta["code_version"],
            code_version(),
        )
    log.info(
        "resuming the run in %s after round %d of %d",
        output_dir,
        checkpoint.round,
        context.run_config["num-rounds"],
    )
    return checkpoint


def clear_checkpoints(cfg: RunConfig, output_dir: Path) -> None:
    """Remove a former run's checkpoints from ``output_dir``; say when none are written.

    A fresh run in a directory that held another run must not leave that run's
    checkpoints for a later ``resume`` to pick up.
    """
    old = list_checkpoints(output_dir)
    if old:
        log.warning(
            "removing %d checkpoint(s) of a former run in %s", len(old), output_dir
        )
        for _, path in old:
            path.unlink(missing_ok=True)
    reason = unresumable(cfg)
    if cfg.checkpoint.active and reason:
        log.info("no checkpoints: %s cannot be resumed", reason)


def run_server(
    grid: Grid,
    context: Context,
    cfg: RunConfig,
    output_dir: Path,
    started: float,
    resumed: Checkpoint | None,
) -> None:
    """Train and write the results, holding the output directory's lock."""
    log.info("fl-dnn run %s writes results to %s", context.run_id, output_dir)
    if resumed is None:
        clear_checkpoints(cfg, output_dir)
    random.seed(cfg.seed)  # Flower samples clients with the `random` module
    np.random.seed(cfg.seed)  # Flower's DP wrappers draw noise from numpy's global RNG
    workflow = build_workflow(cfg)
    wait_for_nodes(grid, cfg.num_clients)
    log.info(
        "%d nodes connected %.1f s after the ServerApp started",
        cfg.num_clients,
        time.perf_counter() - started,
    )
    grid = tune_grid(grid)

    data = load_central_data(cfg)
    # The server evaluates plain models: client techniques (pruning wrappers, DP
    # optimizers, optimizer hooks) are a client's training aids.
    key = replace(model_key(cfg, data.input_shape, data.num_classes), techniques=())
    model = get_compiled_model(key, cfg.seed)
    central = CentralEvaluation(model, data.test)
    strategy = build_strategy(
        cfg,
        model,
        num_clients=cfg.num_clients,
        clients_per_round=cfg.clients_per_round,
        evaluate_clients_per_round=cfg.evaluate_clients_per_round,
        initial_parameters=ndarrays_to_parameters(model.get_weights()),
        evaluate_fn=central,
    )
    recorder = RunRecorder(
        output_dir, cfg.num_rounds, resumed.meta["rows"] if resumed else ()
    )
    run = ServerRun(
        cfg,
        context,
        grid,
        data,
        key,
        model,
        strategy,
        recorder,
        central,
        resumed=resumed,
        started=started,
    )
    if resumed is not None:
        central.results = {
            int(r): (v[0], v[1]) for r, v in resumed.meta["central"].items()
        }
        run.elapsed_before_s = resumed.meta["elapsed_s"]
        run.resumed_from = [*resumed.meta["resumed_from"], resumed.round]
        run.lineage = str(resumed.meta["lineage"])
    for phase in PHASES:
        phase(run)
    final_weights = workflow(run)

    if cfg.num_rounds not in central.results or not central.evaluated_last(
        final_weights
    ):
        central(cfg.num_rounds, final_weights, {})
    fields: dict[str, Any] = {}
    for part in SUMMARY_PARTS:
        fields.update(part(run, final_weights))
    model.set_weights(final_weights)
    if cfg.save_model:
        model.save(output_dir / MODEL_FILE)
    fields["wall_time_s"] = run.elapsed_s()
    fields["resumed_from"] = run.resumed_from
    fields["checkpoint_time_s"] = run.checkpoint_time_s
    summary = recorder.write_summary(fields)
    log.info(
        "finished %d rounds: final central accuracy %.4f, %d bytes up, %d bytes down",
        summary["rounds"],
        summary["final_accuracy"],
        summary["bytes_up"],
        summary["bytes_down"],
    )
