"""Settings of robust aggregation, update defences and attack simulation.

Three sections of the run config, registered here so that the core config knows
nothing of them (``schema.register_section``):

- ``robust-*`` (on by default): the update-norm bound and the example-count cap
  every strategy applies (``strategies.defences``), off with a log line where the
  server cannot or must not judge one client's update
  (:meth:`DefenceConfig.off_reason`);
- ``strategy-num-malicious``, ``strategy-trim-beta``, ``strategy-to-keep`` for the
  robust strategies ``median``, ``trimmed_mean``, ``krum``, ``multikrum``,
  ``bulyan`` (``strategies.robust``, Flower's own functions), registered here as
  strategy specs and built in ``fl_app.features.robust.server``;
- ``attack`` and ``attack-*``: simulated attackers, for research; refused in a
  deployment (``fl_app.features.robust.server``).

Imports neither TensorFlow nor Flower's server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fl_app.core.config import STRATEGY_SPECS, StrategySpec, register_strategy_spec
from fl_app.core.schema import fail, register_section, setting

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig

# The names and client-count conditions of the robust rules and the attacks, as the
# config (which every ClientApp reads) needs them; the server side's own tables
# (strategies.robust.RULES, strategies.attacks.ATTACKS) must agree, which a unit
# test checks. Kept here so a ClientApp never imports strategies/.
RULE_MIN_CLIENTS = {
    "median": (lambda f: 1, "n >= 1"),
    "trimmed_mean": (lambda f: 1, "n >= 1 (beta < 0.5)"),
    "krum": (lambda f: 2 * f + 3, "n >= 2f + 3"),
    "multikrum": (lambda f: 2 * f + 3, "n >= 2f + 3"),
    "bulyan": (lambda f: 4 * f + 3, "n >= 4f + 3"),
}
ATTACKS = ("scaled", "sign_flip", "gaussian", "alie", "label_flip", "examples")


def _refuse_with(run: RunConfig, key: str, value: Any, what: str) -> None:
    """Refuse ``key`` with SecAgg+ and split training, which hide or skip updates."""
    if run.secagg is not None:
        raise fail(
            key,
            value,
            f"{what} off with secagg: SecAgg+ gives the server only the sum of the "
            "updates, never one client's",
        )
    if run.split is not None:
        raise fail(key, value, f"{what} off with split training (its own flow)")


@dataclass(frozen=True)
class DefenceConfig:
    """The update-norm bound and example-count cap (``robust-*``); on by default.

    By default an update whose delta is longer than 3 x the round's median delta
    norm is rejected and a claim above 2 x the round's median claim is capped,
    both widened to the round's own spread and judged only in rounds of at least
    ``min-clients`` updates (``strategies.defences``). Where the server cannot see
    one client's update (SecAgg+, split training) or must not judge it (client-level
    DP: its noise is calibrated to a plain mean of clipped updates), the defaults
    are off and the run says why once (:meth:`off_reason`); asking for a defence
    there explicitly is refused (SecAgg+, split) as before.
    """

    norm_bound: float = setting(
        3.0,
        ">= 0 (0: off)",
        lambda v: v >= 0,
        help="largest delta norm accepted: absolute, or times the round's median",
    )
    norm_mode: str = setting("median", choices=("median", "fixed"))
    norm_action: str = setting("reject", choices=("clip", "reject"))
    max_examples: float = setting(
        2.0,
        ">= 0 (0: off)",
        lambda v: v >= 0,
        help="largest example count a client may claim: absolute, or times the "
        "round's median claim",
    )
    examples_mode: str = setting("median", choices=("median", "fixed"))
    equal_weights: bool = setting(False, help="average clients with equal weights")
    spread: float = setting(
        3.0,
        ">= 0 (0: never widen)",
        lambda v: v >= 0,
        help="a median bound widens to exp(spread x the robust std of the round's "
        "log values) times the median, when that is wider",
    )
    min_clients: int = setting(
        5,
        ">= 1",
        lambda v: v >= 1,
        help="median bounds judge only rounds with at least this many updates",
    )

    @property
    def active(self) -> bool:
        """Whether any defence is on."""
        return self.norm_bound > 0 or self.max_examples > 0 or self.equal_weights

    @property
    def explicit(self) -> bool:
        """Whether the user changed any ``robust-*`` setting from its default."""
        return self != DefenceConfig()

    def off_reason(self, run: RunConfig) -> str | None:
        """Why the defaults are off in ``run`` (None: they apply)."""
        if not self.active:
            return "robust-norm-bound and robust-max-examples are 0"
        if run.secagg is not None:
            return "SecAgg+ gives the server only the sum of the updates"
        if run.split is not None:
            return "split training exchanges activations, not updates"
        if run.client_dp is not None and not self.explicit:
            return (
                "client-level DP clips every update and calibrates its noise to a "
                "plain mean of them; a median-relative rejection would make one "
                "client's presence decide another's"
            )
        return None

    def validate(self, run: RunConfig) -> None:
        """Refuse an explicit defence where updates are hidden; a bound below 1."""
        if not self.active:
            return
        if self.explicit:
            key, value = (
                ("robust-norm-bound", self.norm_bound)
                if self.norm_bound
                else ("robust-max-examples", self.max_examples)
                if self.max_examples
                else ("robust-equal-weights", True)
            )
            _refuse_with(
                run,
                key,
                value,
                "the update defences (robust-norm-bound=0 robust-max-examples=0)",
            )
        if self.norm_bound and self.norm_mode == "median" and self.norm_bound < 1:
            raise fail(
                "robust-norm-bound",
                self.norm_bound,
                ">= 1 with robust-norm-mode=median (below 1, half the honest "
                "clients would be clipped or rejected every round)",
            )


@dataclass(frozen=True)
class RobustRuleConfig:
    """``f`` (Krum, Multi-Krum, Bulyan), ``beta`` (trimmed mean), ``m`` (Multi-Krum)."""

    num_malicious: int = setting(
        1, ">= 0", lambda v: v >= 0, help="f: how many malicious clients to tolerate"
    )
    trim_beta: float = setting(
        0.1,
        "0 <= value < 0.5",
        lambda v: 0 <= v < 0.5,
        help="fraction cut from each end, per coordinate (trimmed mean)",
    )
    to_keep: int = setting(
        0,
        ">= 0 (0: n - f)",
        lambda v: v >= 0,
        help="m: the best-scored updates Multi-Krum averages",
    )

    def keep(self, clients: int) -> int:
        """Multi-Krum's m for ``clients`` updates (0 means ``n - f``)."""
        return self.to_keep or max(1, clients - self.num_malicious)

    def validate(self, run: RunConfig) -> None:
        """Refuse an f the sampled clients cannot support, and hidden updates."""
        min_clients, needs = RULE_MIN_CLIENTS[run.strategy]
        n, f = run.clients_per_round, self.num_malicious
        if n < min_clients(f):
            fits = [g for g in range(n) if min_clients(g) <= n]
            raise fail(
                "strategy-num-malicious",
                f,
                f"{run.strategy} needs {needs}; with clients-per-round={n}, "
                + (f"f <= {max(fits)}" if fits else "no f at all (sample more)"),
            )
        if run.strategy == "multikrum" and self.to_keep > n - f:
            raise fail(
                "strategy-to-keep",
                self.to_keep,
                f"<= clients-per-round - f ({n - f})",
            )
        _refuse_with(run, "strategy", run.strategy, "a robust aggregator")
        if run.client_dp is not None:
            raise fail(
                "clientdp",
                run.client_dp.mode,
                f"none with strategy={run.strategy}: Flower's client-level DP "
                "wrappers calibrate their noise to a mean of clipped updates",
            )


@dataclass(frozen=True)
class AttackConfig:
    """Simulated attackers (research, simulation only)."""

    kind: str = setting("none", key="attack", choices=("none", *ATTACKS))
    clients: str = setting(
        "0", help="comma-separated partition ids of the attacking clients"
    )
    fraction: float = setting(
        0.0,
        "0 <= value < 1 (0: attack-clients)",
        lambda v: 0 <= v < 1,
        help="the attackers' share of the clients, drawn from the seed",
    )
    scale: float = setting(
        1.0, "> 0", lambda v: v > 0, help="λ (scaled, sign_flip); std (gaussian)"
    )
    num_examples: int = setting(
        1000000000, ">= 1", lambda v: v >= 1, help="the claim of attack=examples"
    )
    z: float = setting(
        0.0, ">= 0 (0: Baruch et al.'s z)", lambda v: v >= 0, help="alie's shift"
    )

    def attackers(self, run: RunConfig) -> frozenset[int]:
        """Return the attackers: ``clients``, or a seeded draw of ``fraction``."""
        if self.fraction > 0:
            count = max(1, math.ceil(self.fraction * run.num_clients))
            rng = np.random.default_rng([run.seed, 0xA77AC])
            return frozenset(int(p) for p in rng.permutation(run.num_clients)[:count])
        return frozenset(int(p) for p in self.clients.split(",") if p.strip())

    def validate(self, run: RunConfig) -> None:
        """Partition ids in range; the server must see each update."""
        if self.fraction == 0:
            try:
                pids = self.attackers(run)
            except ValueError:
                raise fail(
                    "attack-clients", self.clients, "comma-separated partition ids"
                ) from None
            if not pids or any(not 0 <= p < run.num_clients for p in pids):
                raise fail(
                    "attack-clients",
                    self.clients,
                    f"partition ids in 0..{run.num_clients - 1}",
                )
        _refuse_with(run, "attack", self.kind, "attack simulation")
        if self.kind == "alie" and STRATEGY_SPECS[run.strategy].width_slicing:
            raise fail(
                "attack",
                self.kind,
                "another attack with width slicing: alie averages the attackers' "
                "updates, whose shapes differ there",
            )


for _rule in RULE_MIN_CLIENTS:
    register_strategy_spec(StrategySpec(_rule))
register_section(
    "defence",
    DefenceConfig,
    "robust",
    lambda flat: (
        flat["robust-norm-bound"] > 0
        or flat["robust-max-examples"] > 0
        or flat["robust-equal-weights"]
    ),
)
register_section(
    "robust_rule",
    RobustRuleConfig,
    "strategy",
    lambda flat: flat["strategy"] in RULE_MIN_CLIENTS,
)
register_section(
    "attack", AttackConfig, "attack", lambda flat: flat["attack"] != "none"
)
