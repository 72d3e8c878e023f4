"""What features register with the server run: strategies, workflows, phases, summaries.

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


StrategyOptions = Callable[["RunConfig"], dict[str, Any]]
"""``options(cfg) -> keywords``: what a feature gives every strategy's builder
(``FedAvg``'s keywords: the robust feature's ``defence`` and ``attack``)."""

STRATEGY_OPTIONS: list[StrategyOptions] = []


def register_strategy_options(options: StrategyOptions) -> StrategyOptions:
    """Pass ``options(cfg)`` to every strategy's builder; usable as a decorator."""
    STRATEGY_OPTIONS.append(options)
    return options


RoundWorkflow = Callable[["ServerRun"], "NDArrays"]
"""``workflow(run) -> final global weights``: drives the run's rounds through
``run.grid``, writes each round's record with ``run.recorder`` and evaluates
centrally through ``run.strategy`` (whose ``evaluate_fn`` is ``run.central``). The
returned weights are what the summary's final accuracy describes and what is saved;
they are evaluated again only if they are not the weights evaluated last."""

WORKFLOWS: dict[str, RoundWorkflow] = {}


def register_workflow(name: str, workflow: RoundWorkflow) -> None:
    """Make ``name`` a workflow that ``StrategySpec.workflow`` can name."""
    if name in WORKFLOWS:
        raise RegistrationError(
            f"two workflows named {name!r}: {_name_of(WORKFLOWS[name])} and "
            f"{_name_of(workflow)}; give the new one another name"
        )
    WORKFLOWS[name] = workflow


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
