"""What features register with the server run: strategies, options, workflows, ...

Strategies and their builders, what every strategy's builder gets (options), the
round workflows, a strategy wrapper (client-level DP), the fit step (SecAgg+), the
phases before the rounds, what each round's record and the summary add, and what
makes a run unresumable.

The registries live here, below the features that fill them; the ServerApp entry
module (``fl_app.server_app``) imports every feature's server part, which registers
itself. Registering a name twice is refused (:class:`RegistrationError` names both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fl_app.core.config import RunConfig, StrategySpec, register_strategy_spec

if TYPE_CHECKING:
    from flwr.common import NDArrays
    from flwr.server.strategy import Strategy

    from fl_app.server.run import ServerRun
    from strategies.fedavg import FedAvg


class RegistrationError(ValueError):
    """A registration that would replace another (a name registered twice)."""


def _name_of(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"


StrategyBuilder = Callable[..., "FedAvg"]
"""``build(cfg, model, **common) -> strategy``. ``common`` holds what every strategy
takes (``strategies.fedavg.FedAvg``'s keywords): ``num_clients``,
``clients_per_round``, ``evaluate_clients_per_round``, ``initial_parameters``,
``evaluate_fn``, ``defence`` (update-norm bound, example cap) and ``attack``
(simulated attackers); and for a strategy with dense updates also ``transport``
(upload and download codecs), ``pruner`` (the server's pruning mask) and ``uniform``
(equal client weights, for client-level DP), so every such strategy gets those
features."""

STRATEGY_BUILDERS: dict[str, StrategyBuilder] = {}


def register_strategy(spec: StrategySpec, build: StrategyBuilder) -> None:
    """Make ``spec.name`` a ``strategy`` value: its capabilities and its builder.

    The spec is what the config validator checks (``fl_app.core.config``, which the
    clients read too); the builder is what the ServerApp calls. A strategy subclasses
    :class:`strategies.fedavg.FedAvg`, whose update validation and round records the
    ServerApp relies on.
    """
    if spec.name in STRATEGY_BUILDERS:
        raise RegistrationError(
            f"two builders for strategy {spec.name!r}: "
            f"{_name_of(STRATEGY_BUILDERS[spec.name])} and {_name_of(build)}; give "
            "the new strategy another name"
        )
    register_strategy_spec(spec)
    STRATEGY_BUILDERS[spec.name] = build


StrategyOptions = Callable[["RunConfig", Any], dict[str, Any]]
"""``options(cfg, model) -> keywords``: what a feature gives every strategy's
builder (``FedAvg``'s keywords: the robust feature's ``defence`` and ``attack``,
compression's ``transport``, pruning's ``pruner``); ``model`` is the server's
compiled global model."""

# (options, dense_only)
STRATEGY_OPTIONS: list[tuple[StrategyOptions, bool]] = []


def register_strategy_options(
    options: StrategyOptions | None = None, *, dense_only: bool = False
) -> Any:
    """Pass ``options(cfg, model)`` to every strategy's builder; a decorator.

    ``dense_only``: only to strategies whose spec has ``dense_updates`` (the codecs,
    the pruning mask and client-level DP work on dense updates). A keyword two
    features both give is refused when a run builds its strategy.
    """

    def register(fn: StrategyOptions) -> StrategyOptions:
        STRATEGY_OPTIONS.append((fn, dense_only))
        return fn

    return register if options is None else register(options)


RoundWorkflow = Callable[["ServerRun"], "NDArrays"]
"""``workflow(run) -> final global weights``: drives the run's rounds through
``run.grid``, writes each round's record with ``run.recorder`` and evaluates
centrally through ``run.strategy`` (whose ``evaluate_fn`` is ``run.central``). The
returned weights are what the summary's final accuracy describes and what is saved;
they are evaluated again only if they are not the weights evaluated last."""

WORKFLOWS: dict[str, RoundWorkflow] = {}


# (when, name): a feature whose run has its own message flow (split training)
WORKFLOW_OVERRIDES: list[tuple[Callable[[RunConfig], bool], str]] = []


def register_workflow(
    name: str,
    workflow: RoundWorkflow,
    when: Callable[[RunConfig], bool] | None = None,
) -> None:
    """Make ``name`` a workflow that ``StrategySpec.workflow`` can name.

    ``when``: the workflow also takes over every run for which ``when(cfg)`` holds,
    whatever its strategy names (a feature with its own message flow).
    """
    if name in WORKFLOWS:
        raise RegistrationError(
            f"two workflows named {name!r}: {_name_of(WORKFLOWS[name])} and "
            f"{_name_of(workflow)}; give the new one another name"
        )
    WORKFLOWS[name] = workflow
    if when is not None:
        WORKFLOW_OVERRIDES.append((when, name))


StrategyWrapper = Callable[["RunConfig", "Strategy"], "Strategy"]
"""``wrap(cfg, strategy) -> strategy``: a Flower strategy wrapped around the built
one for the rounds (client-level DP); returns ``strategy`` itself when off."""

STRATEGY_WRAPPERS: list[StrategyWrapper] = []


def register_strategy_wrapper(wrap: StrategyWrapper) -> StrategyWrapper:
    """Wrap every run's strategy with ``wrap``, in registration order; a decorator."""
    STRATEGY_WRAPPERS.append(wrap)
    return wrap


FitWorkflow = Callable[["RunConfig"], Any]
"""``fit_workflow(cfg) -> workflow or None``: Flower's fit step to use instead of
the default one (SecAgg+); None when off."""

FIT_WORKFLOWS: list[FitWorkflow] = []


def register_fit_workflow(workflow: FitWorkflow) -> FitWorkflow:
    """Offer a fit step; the first that returns one is used; a decorator."""
    FIT_WORKFLOWS.append(workflow)
    return workflow


RoundRow = Callable[["RunConfig", dict[str, Any]], dict[str, Any]]
"""``row(cfg, record) -> record``: adds fields to each round's record (ε)."""

ROUND_ROWS: list[RoundRow] = []


def register_round_row(row: RoundRow) -> RoundRow:
    """Let ``row`` add to every round's record before it is written; a decorator."""
    ROUND_ROWS.append(row)
    return row


Unresumable = Callable[["RunConfig"], "str | None"]
"""``why(cfg) -> reason or None``: a run that cannot be resumed writes no
checkpoints, and the run says why once (the GAN phase, split training)."""

UNRESUMABLE: list[Unresumable] = []


def register_unresumable(why: Unresumable) -> Unresumable:
    """Declare runs that cannot be resumed (no checkpoints); a decorator."""
    UNRESUMABLE.append(why)
    return why


Phase = Callable[["ServerRun"], None]
"""``phase(run)``: work before the round workflow (e.g. the synthetic-data GAN
phase), in registration order. A phase checks the run config itself and returns at
once when its feature is off; it may write its own records
(``run.recorder.write_phase_round``) and leave results in ``run.phases``."""

PHASES: list[Phase] = []


def register_phase(phase: Phase) -> Phase:
    """Run ``phase`` before every run's round workflow; usable as a decorator."""
    PHASES.append(phase)
    return phase


SummaryPart = Callable[["ServerRun", "NDArrays"], dict[str, Any]]
"""``part(run, final_weights) -> summary fields``, after the last round."""

SUMMARY_PARTS: list[SummaryPart] = []


def register_summary_part(part: SummaryPart) -> SummaryPart:
    """Add fields to every run's ``summary.json``; usable as a decorator."""
    SUMMARY_PARTS.append(part)
    return part
