"""Privacy's server part: client-level DP, SecAgg+, and the run's ε.

- client-level DP: Flower's DP-FedAvg wrappers around the run's strategy, and
  every dense strategy weights its clients equally (a plain mean of clipped
  updates, what the wrappers' noise is calibrated to);
- SecAgg+: Flower's ``SecAggPlusWorkflow`` as the fit step, and the strategy's
  arrays cast to float (what SecAgg+ quantizes and sums);
- ε: each round's record gets the clients' largest DP-SGD ε and the client-level
  ε; the summary the run's.
"""

from __future__ import annotations

from typing import Any

from flwr.common import NDArrays
from flwr.server.strategy import Strategy

from fl_app.core.config import RunConfig
from fl_app.features.privacy.dpsgd import epsilon
from fl_app.features.privacy.server_optimizer import ServerMomentum
from fl_app.server.registry import (
    register_fit_workflow,
    register_round_row,
    register_strategy_options,
    register_strategy_wrapper,
    register_summary_part,
)
from fl_app.server.run import ServerRun
from strategies.transport import Transport


@register_strategy_options(dense_only=True)
def equal_weights_and_float_arrays(cfg: RunConfig, model: Any) -> dict[str, Any]:
    """Client-level DP: equal client weights; SecAgg+: arrays cast to float."""
    options: dict[str, Any] = {}
    if cfg.client_dp is not None:
        options["uniform"] = True
    if cfg.secagg is not None:  # refused with compression by the config
        options["transport"] = Transport(cast_floats=True)
    return options


@register_strategy_wrapper
def wrap_client_dp(cfg: RunConfig, strategy: Strategy) -> Strategy:
    """Wrap ``strategy`` in Flower's client-level DP wrapper the config names.

    A server learning rate other than 1 or a momentum steps the server on the
    wrapper's output (:class:`ServerMomentum`; post-processing, same ε).
    """
    dp = cfg.client_dp
    if dp is None:
        return strategy
    wrapped = _dp_wrapper(cfg, strategy)
    if dp.server_learning_rate == 1.0 and dp.server_momentum == 0.0:
        return wrapped
    return ServerMomentum(wrapped, dp.server_learning_rate, dp.server_momentum)


def _dp_wrapper(cfg: RunConfig, strategy: Strategy) -> Strategy:
    from flwr.server.strategy import (
        DifferentialPrivacyClientSideAdaptiveClipping,
        DifferentialPrivacyClientSideFixedClipping,
        DifferentialPrivacyServerSideAdaptiveClipping,
        DifferentialPrivacyServerSideFixedClipping,
    )

    dp = cfg.client_dp
    assert dp is not None
    sampled = cfg.clients_per_round
    if dp.adaptive:
        cls = (
            DifferentialPrivacyClientSideAdaptiveClipping
            if dp.client_side
            else DifferentialPrivacyServerSideAdaptiveClipping
        )
        return cls(
            strategy,
            noise_multiplier=dp.noise_multiplier,
            num_sampled_clients=sampled,
            initial_clipping_norm=dp.clipping_norm,
            clipped_count_stddev=dp.clipped_count_stddev or None,
        )
    cls = (
        DifferentialPrivacyClientSideFixedClipping
        if dp.client_side
        else DifferentialPrivacyServerSideFixedClipping
    )
    return cls(
        strategy,
        noise_multiplier=dp.noise_multiplier,
        clipping_norm=dp.clipping_norm,
        num_sampled_clients=sampled,
    )


def client_level_epsilon(cfg: RunConfig, rounds: int) -> float | None:
    """ε of client-level DP after ``rounds`` rounds (RDP, sampling = m / n per round).

    Flower's DP wrappers add Gaussian noise of ``noise_multiplier × clip / m`` to an
    unweighted mean of ``m`` clipped updates: one Gaussian mechanism per round on a
    ``m / n`` sample of clients. Flower samples a fixed-size subset; the accountant
    treats it as Poisson sampling with the same rate, the usual approximation.
    """
    dp = cfg.client_dp
    if dp is None:
        return None
    q = cfg.clients_per_round / cfg.num_clients
    return epsilon(rounds, q, dp.noise_multiplier, dp.delta)


@register_round_row
def privacy_row(cfg: RunConfig, row: dict[str, Any]) -> dict[str, Any]:
    """Add a round's ε figures: the clients' largest DP-SGD ε, client-level ε."""
    reported = [c["epsilon"] for c in row.get("clients", []) if "epsilon" in c]
    if cfg.dpsgd is not None:
        row["epsilon_sample_level_max"] = max(reported) if reported else None
    if cfg.client_dp is not None:
        row["epsilon_client_level"] = client_level_epsilon(cfg, row["round"])
    return row


@register_fit_workflow
def secagg_workflow(cfg: RunConfig) -> Any:
    """Flower's SecAgg+ fit workflow when ``secagg`` is on, else None."""
    if cfg.secagg is None:
        return None
    from flwr.server.workflow import SecAggPlusWorkflow

    sa = cfg.secagg
    return SecAggPlusWorkflow(
        num_shares=sa.num_shares,
        reconstruction_threshold=sa.reconstruction_threshold,
        max_weight=sa.max_weight,
        clipping_range=sa.clipping_range,
        quantization_range=sa.quantization_range,
    )


@register_summary_part
def privacy_summary(run: ServerRun, weights: NDArrays) -> dict[str, Any]:
    """Report the largest sample-level ε any client reported; the client-level ε."""
    rows = run.recorder.rows
    return {
        "epsilon_sample_level_max": max(
            (
                row["epsilon_sample_level_max"]
                for row in rows
                if row.get("epsilon_sample_level_max") is not None
            ),
            default=None,
        ),
        "epsilon_client_level": client_level_epsilon(run.cfg, len(rows)),
    }
