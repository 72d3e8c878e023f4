"""The robust strategies' builders, and the refusal of attacks outside simulation.

Settings and their checks: :mod:`fl_app.robust`; the rules themselves:
:mod:`strategies.robust` (Flower's own functions).
"""

from __future__ import annotations

from typing import Any

from fl_app.config import STRATEGY_SPECS, ConfigError, RunConfig
from fl_app.server_app import ServerRun, register_phase, register_strategy
from fl_app.training import keras
from strategies.fedavg import FedAvg
from strategies.robust import RULES, RobustFedAvg


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
