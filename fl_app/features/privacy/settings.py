"""Settings of differential privacy and secure aggregation.

``dpsgd-*``: sample-level DP-SGD on every client; ``clientdp-*``: client-level DP
through Flower's strategy wrappers; ``secagg-*``: Flower's SecAgg+ for the fit step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_app.core.config import (
    dense_strategies,
    fraction,
    non_negative,
    positive,
    require_mean,
    strategy_spec,
)
from fl_app.core.schema import fail, register_section, setting

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig

DPSGD_OPTIMIZERS = ("none", "sgd", "adam")
# model: tensorflow-privacy's DPModel (per-example gradients, vectorized_map over
# examples); optimizer: its DPKeras*Optimizer (the Jacobian of the batch's losses)
DPSGD_IMPLEMENTATIONS = ("model", "optimizer")
CLIENT_DP_MODES = (
    "none",
    "server-fixed",
    "server-adaptive",
    "client-fixed",
    "client-adaptive",
)


@dataclass(frozen=True)
class DpSgdConfig:
    """Sample-level DP-SGD on every client (tensorflow-privacy optimizers)."""

    optimizer: str = setting("none", choices=DPSGD_OPTIMIZERS, key="dpsgd")
    l2_norm_clip: float = setting(1.0, "> 0", positive)
    noise_multiplier: float = setting(1.1, "> 0", positive)
    microbatches: int = setting(
        0, ">= 0 (0 clips every example's gradient)", non_negative
    )
    delta: float = setting(1e-5, "0 < value < 1", fraction)
    epsilon_budget: float = setting(0.0, ">= 0 (0: no budget)", non_negative)
    # tensorflow-privacy's Vectorized* optimizers (clip a stacked Jacobian with
    # vectorized_map instead of a loop over microbatches); same mechanism and ε;
    # with implementation=optimizer only
    vectorized: bool = setting(False)
    implementation: str = setting(
        "model",
        choices=DPSGD_IMPLEMENTATIONS,
        help="model: tensorflow-privacy's DPModel, per-example gradients by "
        "vectorized_map (~77x faster on the tutorial CNN); optimizer: its DP Keras "
        "optimizers (the Jacobian of the batch's losses); same clipping, noise, "
        "epsilon",
    )

    def validate(self, run: RunConfig) -> None:
        """Refuse DP-SGD where the strategy's local training cannot use it."""
        spec = strategy_spec(run)
        if not spec.dp_sgd:
            raise fail(
                "dpsgd",
                self.optimizer,
                f"'none' with strategy={spec.name} ({spec.why_not_dp_sgd})",
            )
        if self.vectorized and self.implementation != "optimizer":
            raise fail(
                "dpsgd-vectorized",
                self.vectorized,
                "false with dpsgd-implementation=model (it picks tensorflow-privacy's "
                "Vectorized* optimizer class, used with "
                "dpsgd-implementation=optimizer; the model implementation vectorizes "
                "over examples already)",
            )


@dataclass(frozen=True)
class ClientDpConfig:
    """Client-level DP through Flower's strategy wrappers (and client mods)."""

    # server-fixed | server-adaptive | client-fixed | client-adaptive
    mode: str = setting("none", choices=CLIENT_DP_MODES, key="clientdp")
    noise_multiplier: float = setting(1.0, "> 0", positive)
    clipping_norm: float = setting(1.0, "> 0", positive)  # adaptive: initial norm
    delta: float = setting(1e-5, "0 < value < 1", fraction)
    clipped_count_stddev: float = setting(
        0.0, ">= 0 (0: Flower's default, clients per round / 20)", non_negative
    )
    # the server's step on the noised mean update (DP-FedAvgM; 1 and 0: Flower's)
    server_learning_rate: float = setting(1.0, "> 0", positive)
    server_momentum: float = setting(0.0, "0 <= value < 1", lambda v: 0 <= v < 1)

    @property
    def client_side(self) -> bool:
        """Whether clients clip their own updates (a client mod)."""
        return self.mode.startswith("client-")

    @property
    def adaptive(self) -> bool:
        """Whether the clipping norm adapts (Andrew et al., 2021)."""
        return self.mode.endswith("-adaptive")

    def validate(self, run: RunConfig) -> None:
        """Flower's DP wrappers clip and noise dense, uncompressed updates."""
        if not strategy_spec(run).dense_updates or run.compression.active:
            raise fail(
                "clientdp",
                self.mode,
                f"'none' unless the strategy sends dense updates "
                f"({dense_strategies()}) and compression is off (Flower's DP "
                "wrappers clip and noise dense full-model updates)",
            )
        require_mean(
            run,
            "clientdp",
            self.mode,
            "Flower's client-level DP "
            "calibrates its noise to a mean of clipped updates",
        )


@dataclass(frozen=True)
class SecAggConfig:
    """Flower's SecAgg+ protocol for the fit step."""

    enabled: bool = setting(False, key="secagg")
    num_shares: int = setting(3, ">= 3", lambda v: v >= 3)
    reconstruction_threshold: int = setting(2, ">= 2", lambda v: v >= 2)
    clipping_range: float = setting(8.0, "> 0", positive)
    quantization_range: int = setting(4194304, ">= 2", lambda v: v >= 2)
    max_weight: float = setting(10000.0, "> 0", positive)

    def validate(self, run: RunConfig) -> None:
        """SecAgg+ sums dense float vectors and hides each client's update."""
        spec = strategy_spec(run)
        if not spec.dense_updates:
            raise fail(
                "secagg",
                True,
                f"false with strategy={spec.name}: {spec.why_not_dense}, and SecAgg+ "
                "sums equal-shaped dense vectors",
            )
        require_mean(run, "secagg", True, "SecAgg+ gives the server only the sum")
        comp = run.compression
        if comp.upload != "none" or comp.delta or comp.topk < 1:
            raise fail(
                "secagg",
                True,
                "false with upload compression (sparse, quantized or delta "
                f"payloads, here compression={comp.upload!r}): SecAgg+ "
                "quantizes and sums dense float arrays itself",
            )
        if run.client_dp is not None and not run.client_dp.client_side:
            raise fail(
                "clientdp",
                run.client_dp.mode,
                "client-fixed or client-adaptive with secagg=true (server-side "
                "clipping needs each client's update, which SecAgg+ hides)",
            )
        if self.reconstruction_threshold > run.clients_per_round:
            raise fail(
                "secagg-reconstruction-threshold",
                self.reconstruction_threshold,
                f"<= clients-per-round ({run.clients_per_round})",
            )


register_section(
    "client_dp", ClientDpConfig, "clientdp", lambda flat: flat["clientdp"] != "none"
)
register_section("secagg", SecAggConfig, "secagg", lambda flat: flat["secagg"])
