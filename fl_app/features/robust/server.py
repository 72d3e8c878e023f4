"""The robust feature's server part: defences, attacks, the robust strategies.

Every strategy's builder gets the update defences and (in simulation) the attack
(:func:`defences_and_attack`); the robust strategies are registered here, and a
phase refuses attacks outside simulation. Settings and their checks:
:mod:`fl_app.features.robust.settings`; the rules themselves:
:mod:`strategies.robust` (Flower's own functions).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from fl_app.core.config import STRATEGY_SPECS, ConfigError, RunConfig
from fl_app.features.robust.settings import AttackConfig, DefenceConfig
from fl_app.ml.training import keras
from fl_app.server.registry import (
    register_phase,
    register_strategy,
    register_strategy_options,
)
from fl_app.server.run import ServerRun
from strategies.attacks import Attack, AttackStage
from strategies.defences import Defence, DefenceStage
from strategies.fedavg import FedAvg
from strategies.robust import RULES, RobustFedAvg
from strategies.stages import Stage

log = logging.getLogger(__name__)


@register_strategy_options
def defences_and_attack(cfg: RunConfig, model: Any) -> dict[str, Any]:
    """Give every strategy the attack (simulation) and the defences, as stages.

    In this order, around its aggregation (``strategies.stages``).
    """
    defence, attack = cfg.extra("defence"), cfg.extra("attack")
    stages: list[Stage] = []
    if attack is not None:
        stages.append(AttackStage(attack_of(cfg, attack)))
    guard = defence_of(cfg, defence) if defence is not None else None
    if guard is not None:
        stages.append(DefenceStage(guard))
    return {"stages": stages}


def defence_of(cfg: RunConfig, defence: DefenceConfig) -> Defence | None:
    """Return the run's update defence; say once why it is off or limited."""
    reason = defence.off_reason(cfg)
    if reason is not None:
        log.info("update defences off: %s", reason)
        return None
    relative = (defence.norm_bound and defence.norm_mode == "median") or (
        defence.max_examples and defence.examples_mode == "median"
    )
    if relative and cfg.clients_per_round < defence.min_clients:
        log.info(
            "update defences: the median bounds judge rounds of at least %d updates "
            "(robust-min-clients); with clients-per-round=%d they never apply",
            defence.min_clients,
            cfg.clients_per_round,
        )
    return Defence(**asdict(defence))  # the same fields, by design


def attack_of(cfg: RunConfig, attack: AttackConfig) -> Attack:
    """Return the strategies' :class:`Attack` for the run's attack settings."""
    return Attack(
        attack.kind,
        attack.attackers(cfg),
        scale=attack.scale,
        num_examples=attack.num_examples,
        z=attack.z,
        seed=cfg.seed,
    )


def _build_robust(cfg: RunConfig, model: keras.Model, **common: Any) -> FedAvg:
    rule = cfg.extra("robust_rule")
    return RobustFedAvg(
        rule=cfg.strategy,
        num_malicious=rule.num_malicious,
        trim_beta=rule.trim_beta,
        to_keep=rule.keep(cfg.clients_per_round),
        **common,
    )


for _rule in RULES:
    register_strategy(STRATEGY_SPECS[_rule], _build_robust)


def is_simulation(grid: Any) -> bool:
    """Whether the run's nodes are simulated (Flower's simulation runtime, tests)."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return isinstance(grid, InMemoryGrid) or bool(getattr(grid, "simulation", False))


@register_phase
def refuse_attacks_outside_simulation(run: ServerRun) -> None:
    """Attack simulation is research on simulated clients, never on real ones."""
    attack = run.cfg.extra("attack")
    if attack is not None and not is_simulation(run.grid):
        raise ConfigError(
            f"run config key 'attack': received {attack.kind!r}, allowed: 'none' in a "
            "deployment (attack simulation runs only in Flower's simulation runtime)"
        )
