"""Differential privacy: the one tensorflow-privacy adapter, and ε accounting.

Sample-level DP-SGD runs on the clients with tensorflow-privacy, in one of two ways
(``dpsgd-implementation``), the same clipping, noise and ε:

- ``model`` (default): its ``DPModel`` (:func:`dp_model`), whose ``train_step`` takes
  each example's gradient with ``tf.vectorized_map`` over the examples (one forward
  and backward pass per example, vectorized), clips, sums, noises and averages them,
  then hands them to a plain Keras optimizer;
- ``optimizer``: its DP Keras optimizers (``DPKerasSGDOptimizer``,
  ``DPKerasAdamOptimizer``, :func:`dp_optimizer`), which take the Jacobian of the
  batch's per-example losses: ``pfor`` over the B losses, each differentiated through
  the whole batch's graph, so a step costs about B backward passes of the batch
  rather than of one example (4.97 s against 0.065 s a step of the tutorial CNN at
  batch 256 on one thread; BENCHMARKS.md "Privacy on MNIST").

Its package ``__init__`` imports TensorFlow 1 estimator code that fails on
TensorFlow 2.21; setting ``sys.skip_tf_privacy_import`` before the first import skips
that, and only this module imports it.

Batches are drawn by Poisson sampling (each example joins a step's batch with
probability q = batch size / examples), so the accountant's
``PoissonSampledDpEvent`` describes the sampling actually used. Accounting uses
dp-accounting's RDP accountant, as tensorflow-privacy's own
``compute_dp_sgd_privacy_statement`` does; the same function serves client-level DP
(one step per round, q = clients per round / clients).

This module imports TensorFlow only inside :func:`dp_optimizer` and :func:`dp_model`,
so the server and the accountant tests do not pay for it.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import dp_accounting
import numpy as np

from fl_app.client.node_state import LEDGER_MARK
from fl_app.features.privacy.settings import DpSgdConfig


@functools.cache
def _dp_optimizers() -> dict[str, type]:
    sys.skip_tf_privacy_import = True  # type: ignore[attr-defined]
    try:
        from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import (
            DPKerasAdamOptimizer,
            DPKerasSGDOptimizer,
        )
        from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras_vectorized import (  # noqa: E501
            VectorizedDPKerasAdamOptimizer,
            VectorizedDPKerasSGDOptimizer,
        )
    except ImportError as err:  # an install outside uv.lock (stale pins)
        raise ImportError(
            "tensorflow-privacy could not be imported with this TensorFlow; install "
            "the project with `uv sync` (its lock file pins a working combination): "
            f"{err}"
        ) from err
    return {
        "sgd": DPKerasSGDOptimizer,
        "adam": DPKerasAdamOptimizer,
        "vectorized-sgd": VectorizedDPKerasSGDOptimizer,
        "vectorized-adam": VectorizedDPKerasAdamOptimizer,
    }


@functools.cache
def _dp_model_class() -> type:
    sys.skip_tf_privacy_import = True  # type: ignore[attr-defined]
    from tensorflow_privacy.privacy.keras_models.dp_keras_model import DPModel

    return DPModel


def dp_model(model, cfg: DpSgdConfig):
    """Return ``model``'s layers as tensorflow-privacy's ``DPModel`` (same weights).

    Its ``train_step`` clips each example's gradient (each microbatch's, with
    ``microbatches`` > 0) to ``l2_norm_clip``, adds Gaussian noise of standard
    deviation ``noise_multiplier * l2_norm_clip`` to their sum and divides by their
    number, as the DP optimizers do; compile it with a plain optimizer and a
    reduced loss (the mean over a microbatch, as the optimizers clip it). Not
    XLA-compiled: Poisson batches change size every step, and XLA compiles once per
    shape.
    """
    return _dp_model_class()(
        l2_norm_clip=cfg.l2_norm_clip,
        noise_multiplier=cfg.noise_multiplier,
        num_microbatches=cfg.microbatches or None,
        use_xla=False,
        inputs=model.inputs,
        outputs=model.outputs,
        name=model.name,
    )


def dp_optimizer(cfg: DpSgdConfig, learning_rate: float):
    """Return tensorflow-privacy's DP Keras optimizer for ``cfg``.

    ``microbatches=0`` clips every example's gradient (``num_microbatches=None``);
    ``vectorized`` takes the ``Vectorized*`` class (the same clipping and noise).
    """
    name = f"vectorized-{cfg.optimizer}" if cfg.vectorized else cfg.optimizer
    cls = _dp_optimizers()[name]
    return cls(
        l2_norm_clip=cfg.l2_norm_clip,
        noise_multiplier=cfg.noise_multiplier,
        num_microbatches=cfg.microbatches or None,
        learning_rate=learning_rate,
    )


def poisson_batches(
    num_examples: int, sampling_probability: float, steps: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Return ``steps`` batches of indices; each example joins each independently."""
    return [
        np.flatnonzero(rng.random(num_examples) < sampling_probability)
        for _ in range(steps)
    ]


def dp_sgd_steps(num_examples: int, batch_size: int, local_epochs: int) -> int:
    """Return the steps of one local training: ``epochs / q``, ``q = batch / n``."""
    q = min(batch_size / num_examples, 1.0)
    return int(math.ceil(local_epochs / q))


def steps_taken(state: Any, key: str) -> int:
    """Return the DP steps a node has accounted under config record ``key`` (0 if none).

    ``state`` is the node's ``context.state``; the count only ever grows
    (:func:`add_steps`), so ε never goes back.
    """
    records = state.config_records
    return int(records[key]["steps"]) if key in records else 0


def add_steps(state: Any, key: str, steps: int) -> int:
    """Account ``steps`` more DP steps in the node state; return the new total."""
    from flwr.app import ConfigRecord

    total = steps_taken(state, key) + steps
    state.config_records[key] = ConfigRecord({"steps": total, LEDGER_MARK: True})
    return total


def epsilon(
    steps: int,
    sampling_probability: float,
    noise_multiplier: float,
    delta: float,
    microbatched: bool = False,
) -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian steps (RDP accountant).

    ``microbatched``: clipping per microbatch of more than one example doubles the
    sensitivity under add-or-remove adjacency, as tensorflow-privacy accounts it.
    """
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    sigma = noise_multiplier / 2 if microbatched else noise_multiplier
    event = dp_accounting.GaussianDpEvent(sigma)
    if sampling_probability < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_probability, event)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))
