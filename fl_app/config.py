"""The typed run configuration, parsed and validated from Flower's flat ``run_config``.

Flower hands every app a flat mapping of kebab-case keys (defaults in
``[tool.flwr.app.config]`` of ``pyproject.toml``, overridden by ``flwr run
--run-config`` or by the Hydra entry point). :func:`parse_run_config` turns it into
frozen dataclasses and rejects every invalid value before any training starts, with
an error that names the key, the value received and what is allowed.

This module imports neither TensorFlow nor Flower so that the Hydra entry point can
validate a configuration in milliseconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

DATASETS = ("digits", "synthetic", "mnist", "cifar10")
HUB_DATASETS = ("mnist", "cifar10")
PARTITIONS = ("iid", "dirichlet", "pathological", "natural")
MODELS = ("cnn", "mlp", "softmax")
PERSONAL_MODES = ("fixed", "apfl", "fedper")
FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")
# Named layers of each builder in fl_app/models.py (a unit test keeps them equal).
MODEL_LAYERS = {
    "cnn": ("conv1", "conv2", "fc1", "classifier"),
    "mlp": ("fc1", "fc2", "classifier"),
    "softmax": ("classifier",),
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


class ConfigError(ValueError):
    """An invalid run configuration value."""


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
    """

    name: str
    dense_updates: bool = True
    why_not_dense: str = ""
    dp_sgd: bool = True
    why_not_dp_sgd: str = ""
    personal_state: bool = False
    width_slicing: bool = False


STRATEGY_SPECS: dict[str, StrategySpec] = {}


def register_strategy_spec(spec: StrategySpec) -> StrategySpec:
    """Make ``spec.name`` a valid ``strategy`` value, with its capabilities."""
    STRATEGY_SPECS[spec.name] = spec
    return spec


register_strategy_spec(StrategySpec("fedavg"))
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


@dataclass(frozen=True)
class DatasetConfig:
    """Which data to load and how to hold out central test and client validation."""

    name: str
    test_fraction: float
    val_fraction: float
    # Synthetic(alpha, beta) of Li et al. (FedProx, 2020); ignored by other datasets.
    alpha: float
    beta: float
    iid: bool
    samples_per_client: int
    dim: int
    num_classes: int


@dataclass(frozen=True)
class PartitionConfig:
    """How the training pool is split over the clients."""

    name: str
    alpha: float
    classes_per_client: int
    min_size: int


@dataclass(frozen=True)
class ModelConfig:
    """Which Keras builder to use and its width multiplier."""

    name: str
    width: float


@dataclass(frozen=True)
class AugmentationConfig:
    """Random image transformations applied to training batches only.

    Factors follow the Keras preprocessing layers: ``rotation`` as a fraction of a
    full turn, ``translation`` and ``zoom`` as fractions of the image size,
    ``contrast`` as the contrast factor; 0 (or ``flip="none"``) disables one.
    """

    name: str
    rotation: float
    translation: float
    zoom: float
    flip: str
    contrast: float

    @property
    def active(self) -> bool:
        """Whether any transformation is switched on."""
        return (
            max(self.rotation, self.translation, self.zoom, self.contrast) > 0
            or self.flip != "none"
        )


@dataclass(frozen=True)
class PersonalizationConfig:
    """Personalized blending ``alpha * local + (1 - alpha) * global``.

    ``fixed``: APFL with a fixed ``alpha``; ``apfl``: ``alpha`` learned per client
    (Deng et al., 2020); ``fedper``: the layers in ``local_layers`` are purely local
    (``alpha = 1``) and never leave the client, the others purely global.
    ``local_layers`` is empty except in ``fedper`` mode.
    """

    mode: str
    alpha: float
    alpha_lr: float
    local_layers: tuple[str, ...]


@dataclass(frozen=True)
class HeteroConfig:
    """Heterogeneous width slicing (HeteroFL; FedRolex when ``rolling``).

    ``capacities`` holds ``(width, share)`` pairs: the fraction ``share`` of the
    clients trains the slice of width ``width`` (shares sum to 1).
    """

    capacities: tuple[tuple[float, float], ...]
    rolling: bool
    scaler: bool  # HeteroFL's training-time 1/width scaler on narrow clients
    # HeteroFL's "dynamic" setting: the assignment of capacities to clients is drawn
    # anew every round (same shares), as for devices whose free compute varies.
    dynamic: bool = False

    @property
    def widths(self) -> list[float]:
        """The configured widths, largest first."""
        return sorted((w for w, _ in self.capacities), reverse=True)


@dataclass(frozen=True)
class ClientConfig:
    """Local training on each client."""

    local_epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    # False rebuilds and recompiles the model on every call, as Flower's
    # quickstart-tensorflow client does; kept for comparison benchmarks.
    model_cache: bool
    augmentation: AugmentationConfig
    # HeteroFL's masking trick: the training loss is the cross-entropy of the softmax
    # restricted to the classes present in the client's data.
    label_mask: bool = False
    # Round r trains at learning_rate * learning_rate_decay ** (r - 1).
    learning_rate_decay: float = 1.0

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

    schedule: str  # polynomial | constant
    initial_sparsity: float
    final_sparsity: float
    begin_round: int
    end_round: int
    frequency: int
    # names of the Conv2D/Dense layers to prune; "auto": all but the model's first
    # and last (its class layer), "all": every one
    layers: str = "auto"


@dataclass(frozen=True)
class CompressionConfig:
    """How model arrays travel: codec specs (see :mod:`fl_app.compression`)."""

    upload: str
    download: str
    delta: bool  # clients send their update minus the model they received
    error_feedback: bool  # carry each client's coding error into its next update
    topk: float = 1.0  # fraction of each kernel's update entries sent (largest)

    @property
    def active(self) -> bool:
        """Whether anything differs from dense float32 full models."""
        return (
            self.upload != "none"
            or self.download != "none"
            or self.delta
            or self.topk < 1.0
        )


@dataclass(frozen=True)
class DpSgdConfig:
    """Sample-level DP-SGD on every client (tensorflow-privacy optimizers)."""

    optimizer: str  # sgd | adam
    l2_norm_clip: float
    noise_multiplier: float
    microbatches: int  # 0: clip every example's gradient
    delta: float
    epsilon_budget: float  # 0: no budget


@dataclass(frozen=True)
class ClientDpConfig:
    """Client-level DP through Flower's strategy wrappers (and client mods)."""

    mode: str  # server-fixed | server-adaptive | client-fixed | client-adaptive
    noise_multiplier: float
    clipping_norm: float  # the initial norm for the adaptive modes
    delta: float
    clipped_count_stddev: float = 0.0  # adaptive: 0 takes Flower's default m / 20

    @property
    def client_side(self) -> bool:
        """Whether clients clip their own updates (a client mod)."""
        return self.mode.startswith("client-")

    @property
    def adaptive(self) -> bool:
        """Whether the clipping norm adapts (Andrew et al., 2021)."""
        return self.mode.endswith("-adaptive")


@dataclass(frozen=True)
class SecAggConfig:
    """Flower's SecAgg+ protocol for the fit step."""

    num_shares: int
    reconstruction_threshold: int
    clipping_range: float
    quantization_range: int
    max_weight: float


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs, validated."""

    seed: int
    num_rounds: int
    num_clients: int
    clients_per_round: int
    evaluate_clients_per_round: int
    strategy: str
    personalization: PersonalizationConfig | None
    hetero: HeteroConfig | None
    output_dir: str
    save_model: bool
    round_timeout: float
    dataset: DatasetConfig
    partition: PartitionConfig
    model: ModelConfig
    client: ClientConfig
    pruning: PruningConfig | None = None
    compression: CompressionConfig = CompressionConfig("none", "none", False, False)
    dpsgd: DpSgdConfig | None = None
    client_dp: ClientDpConfig | None = None
    secagg: SecAggConfig | None = None


@dataclass(frozen=True)
class _Field:
    kind: type
    default: Any
    rule: str = ""
    check: Callable[[Any], bool] | None = None
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None


def _positive(value: float) -> bool:
    return value > 0


def _fraction(value: float) -> bool:
    return 0 < value < 1


def _non_negative(value: float) -> bool:
    return value >= 0


def _codec(spec: str) -> bool:
    from fl_app.compression import Codec  # numpy only

    try:
        Codec.parse(spec)
    except ValueError:
        return False
    return True


# The one schema of the flat run config: key -> type, default and rule. The defaults
# here and in pyproject.toml's [tool.flwr.app.config] are kept equal by a unit test.
FIELDS: dict[str, _Field] = {
    "seed": _Field(int, 42, ">= 0", _non_negative),
    "num-rounds": _Field(int, 20, ">= 1", _positive),
    "num-clients": _Field(int, 10, ">= 1", _positive),
    "clients-per-round": _Field(int, 10, "1 <= value <= num-clients", _positive),
    "evaluate-clients-per-round": _Field(
        int, 10, "0 (no federated evaluation) <= value <= num-clients", _non_negative
    ),
    "strategy": _Field(str, "fedavg", choices=lambda: tuple(STRATEGY_SPECS)),
    "strategy-mode": _Field(str, "apfl", choices=PERSONAL_MODES),
    "strategy-alpha": _Field(float, 0.5, "0 <= value <= 1", lambda v: 0 <= v <= 1),
    "strategy-alpha-lr": _Field(float, 0.1, ">= 0", _non_negative),
    "strategy-local-layers": _Field(str, "classifier"),
    "strategy-capacities": _Field(str, "1.0:1,0.5:1,0.25:1"),
    "strategy-rolling": _Field(bool, False),
    "strategy-scaler": _Field(bool, True),
    "strategy-dynamic": _Field(bool, False),
    "round-timeout": _Field(
        float, 0.0, ">= 0 seconds (0: wait for every sampled client)", _non_negative
    ),
    "output-dir": _Field(str, ""),
    "save-model": _Field(bool, True),
    "dataset": _Field(str, "digits", choices=DATASETS),
    "dataset-test-fraction": _Field(float, 0.2, "0 < value < 1", _fraction),
    "dataset-val-fraction": _Field(float, 0.1, "0 < value < 1", _fraction),
    "dataset-alpha": _Field(float, 1.0, ">= 0", _non_negative),
    "dataset-beta": _Field(float, 1.0, ">= 0", _non_negative),
    "dataset-iid": _Field(bool, False),
    "dataset-samples-per-client": _Field(
        int, 0, ">= 0 (0 draws sizes from a log-normal as in FedProx)", _non_negative
    ),
    "dataset-dim": _Field(int, 60, ">= 1", _positive),
    "dataset-num-classes": _Field(int, 10, ">= 2", lambda v: v >= 2),
    "partition": _Field(str, "dirichlet", choices=PARTITIONS),
    "partition-alpha": _Field(float, 0.5, "> 0", _positive),
    "partition-classes-per-client": _Field(int, 2, ">= 1", _positive),
    "partition-min-size": _Field(int, 10, ">= 1", _positive),
    "model": _Field(str, "cnn", choices=MODELS),
    "model-width": _Field(float, 1.0, "0 < value <= 1", lambda v: 0 < v <= 1),
    "client-local-epochs": _Field(int, 1, ">= 1", _positive),
    "client-batch-size": _Field(int, 32, ">= 1", _positive),
    "client-learning-rate": _Field(float, 0.005, "> 0", _positive),
    "client-learning-rate-decay": _Field(
        float, 1.0, "0 < value <= 1", lambda v: 0 < v <= 1
    ),
    "client-optimizer": _Field(str, "adam", choices=OPTIMIZERS),
    "client-model-cache": _Field(bool, True),
    "client-label-mask": _Field(bool, False),
    "client-augmentation": _Field(str, "none"),
    "client-augmentation-rotation": _Field(
        float, 0.0, "0 <= value < 1", lambda v: 0 <= v < 1
    ),
    "client-augmentation-translation": _Field(
        float, 0.0, "0 <= value < 1", lambda v: 0 <= v < 1
    ),
    "client-augmentation-zoom": _Field(
        float, 0.0, "0 <= value < 1", lambda v: 0 <= v < 1
    ),
    "client-augmentation-flip": _Field(str, "none", choices=FLIP_MODES),
    "client-augmentation-contrast": _Field(
        float, 0.0, "0 <= value < 1", lambda v: 0 <= v < 1
    ),
    "pruning": _Field(str, "none", choices=PRUNING_SCHEDULES),
    "pruning-initial-sparsity": _Field(
        float, 0.0, "0 <= value < 1", lambda v: 0 <= v < 1
    ),
    "pruning-final-sparsity": _Field(
        float, 0.9, "0 <= value < 1", lambda v: 0 <= v < 1
    ),
    "pruning-begin-round": _Field(int, 1, ">= 1", _positive),
    "pruning-end-round": _Field(int, 10, ">= 1", _positive),
    "pruning-frequency": _Field(int, 1, ">= 1", _positive),
    "pruning-layers": _Field(str, "auto"),
    "compression": _Field(str, "none", "'none' or a '+'-joined codec spec", _codec),
    "compression-download": _Field(
        str, "none", "'none' or a '+'-joined codec spec", _codec
    ),
    "compression-delta": _Field(bool, False),
    "compression-error-feedback": _Field(bool, False),
    "compression-topk": _Field(float, 1.0, "0 < value <= 1", lambda v: 0 < v <= 1),
    "dpsgd": _Field(str, "none", choices=DPSGD_OPTIMIZERS),
    "dpsgd-l2-norm-clip": _Field(float, 1.0, "> 0", _positive),
    "dpsgd-noise-multiplier": _Field(float, 1.1, "> 0", _positive),
    "dpsgd-microbatches": _Field(
        int, 0, ">= 0 (0 clips every example's gradient)", _non_negative
    ),
    "dpsgd-delta": _Field(float, 1e-5, "0 < value < 1", _fraction),
    "dpsgd-epsilon-budget": _Field(float, 0.0, ">= 0 (0: no budget)", _non_negative),
    "clientdp": _Field(str, "none", choices=CLIENT_DP_MODES),
    "clientdp-noise-multiplier": _Field(float, 1.0, "> 0", _positive),
    "clientdp-clipping-norm": _Field(float, 1.0, "> 0", _positive),
    "clientdp-delta": _Field(float, 1e-5, "0 < value < 1", _fraction),
    "clientdp-clipped-count-stddev": _Field(
        float, 0.0, ">= 0 (0: Flower's default, clients per round / 20)", _non_negative
    ),
    "secagg": _Field(bool, False),
    "secagg-num-shares": _Field(int, 3, ">= 3", lambda v: v >= 3),
    "secagg-reconstruction-threshold": _Field(int, 2, ">= 2", lambda v: v >= 2),
    "secagg-clipping-range": _Field(float, 8.0, "> 0", _positive),
    "secagg-quantization-range": _Field(int, 4194304, ">= 2", lambda v: v >= 2),
    "secagg-max-weight": _Field(float, 10000.0, "> 0", _positive),
}


def default_run_config() -> dict[str, Any]:
    """Return the flat default run config (the values pyproject.toml must declare)."""
    return {key: field.default for key, field in FIELDS.items()}


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
    return "".join(f"{key} = {toml_value(f.default)}\n" for key, f in FIELDS.items())


def _coerce(key: str, value: Any, field: _Field) -> Any:
    """Check the type of one value, accepting an int where a float belongs."""
    kind = field.kind
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(
            f"run config key '{key}': expected {kind.__name__}, "
            f"received {value!r} ({type(value).__name__})"
        )
    choices = field.choices() if callable(field.choices) else field.choices
    if choices is not None and value not in choices:
        raise ConfigError(
            f"run config key '{key}': received {value!r}, allowed: {', '.join(choices)}"
        )
    if field.check is not None and not field.check(value):
        raise ConfigError(
            f"run config key '{key}': received {value!r}, allowed: {field.rule}"
        )
    return value


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(
        f"run config key '{key}': received {value!r}, allowed: {allowed}"
    )


def parse_run_config(flat: Mapping[str, Any]) -> RunConfig:
    """Validate Flower's flat run config and return the typed :class:`RunConfig`.

    Parameters
    ----------
    flat : Mapping[str, Any]
        Kebab-case keys as in ``[tool.flwr.app.config]``; missing keys take the
        defaults of :data:`FIELDS`.

    Raises
    ------
    ConfigError
        For an unknown key, a value of the wrong type, a value out of range or an
        impossible combination; the message names the key, the value and what is
        allowed.
    """
    unknown = sorted(set(flat) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown run config key(s): {', '.join(unknown)}; "
            f"known keys: {', '.join(FIELDS)}"
        )
    v = {key: _coerce(key, flat.get(key, f.default), f) for key, f in FIELDS.items()}

    if v["clients-per-round"] > v["num-clients"]:
        raise _fail(
            "clients-per-round",
            v["clients-per-round"],
            f"1 <= value <= num-clients ({v['num-clients']})",
        )
    if v["evaluate-clients-per-round"] > v["num-clients"]:
        raise _fail(
            "evaluate-clients-per-round",
            v["evaluate-clients-per-round"],
            f"0 <= value <= num-clients ({v['num-clients']})",
        )
    if v["dataset-test-fraction"] + v["dataset-val-fraction"] >= 1:
        raise _fail(
            "dataset-val-fraction",
            v["dataset-val-fraction"],
            f"dataset-test-fraction + value < 1 "
            f"(dataset-test-fraction is {v['dataset-test-fraction']})",
        )
    synthetic = v["dataset"] == "synthetic"
    if synthetic != (v["partition"] == "natural"):
        raise _fail(
            "partition",
            v["partition"],
            "'natural' exactly when dataset=synthetic (its generator makes each "
            "client's data itself); iid, dirichlet or pathological otherwise",
        )
    if v["model"] == "cnn" and synthetic:
        raise _fail(
            "model", v["model"], "mlp or softmax for dataset=synthetic (vectors)"
        )
    augmentation = AugmentationConfig(
        name=v["client-augmentation"],
        rotation=v["client-augmentation-rotation"],
        translation=v["client-augmentation-translation"],
        zoom=v["client-augmentation-zoom"],
        flip=v["client-augmentation-flip"],
        contrast=v["client-augmentation-contrast"],
    )
    if augmentation.active and synthetic:
        raise _fail(
            "client-augmentation",
            v["client-augmentation"],
            "'none' (all factors 0) for dataset=synthetic: image augmentation needs "
            "image data",
        )
    local_layers = tuple(
        name.strip() for name in v["strategy-local-layers"].split(",") if name.strip()
    )
    known_layers = MODEL_LAYERS[v["model"]]
    spec = STRATEGY_SPECS[v["strategy"]]
    if spec.personal_state and v["strategy-mode"] == "fedper":
        if not local_layers or any(n not in known_layers for n in local_layers):
            raise _fail(
                "strategy-local-layers",
                v["strategy-local-layers"],
                f"comma-separated layer names of model '{v['model']}': "
                f"{', '.join(known_layers)}",
            )
        if set(local_layers) == set(known_layers):
            raise _fail(
                "strategy-local-layers",
                v["strategy-local-layers"],
                "a proper subset of the layers (something must be shared)",
            )

    hetero = None
    if spec.width_slicing:
        hetero = HeteroConfig(
            _parse_capacities(v["strategy-capacities"]),
            v["strategy-rolling"],
            v["strategy-scaler"],
            v["strategy-dynamic"],
        )
        if v["model-width"] != 1.0:
            raise _fail(
                "model-width",
                v["model-width"],
                f"1.0 with strategy={spec.name} (the capacities give the client "
                "widths)",
            )
    pruning = _pruning(v)
    compression = CompressionConfig(
        upload=v["compression"],
        download=v["compression-download"],
        delta=v["compression-delta"],
        error_feedback=v["compression-error-feedback"],
        topk=v["compression-topk"],
    )
    if compression.error_feedback and not compression.delta:
        raise _fail(
            "compression-error-feedback",
            True,
            "false unless compression-delta=true (the coding error of an update is "
            "carried into the client's next update)",
        )
    if compression.topk < 1.0 and not (
        compression.delta and "sparse" in v["compression"]
    ):
        raise _fail(
            "compression-topk",
            compression.topk,
            "1.0 unless compression-delta=true and compression includes 'sparse' "
            "(top-k keeps the largest entries of an update, sent sparse)",
        )
    dpsgd, client_dp, secagg = _privacy(v, spec, compression)
    if (pruning is not None or compression.active) and not spec.dense_updates:
        raise _fail(
            "strategy",
            v["strategy"],
            f"{_dense_strategies()} when pruning or compression is on (the codecs "
            f"and the server's mask work on dense updates; {spec.why_not_dense})",
        )
    return RunConfig(
        seed=v["seed"],
        num_rounds=v["num-rounds"],
        num_clients=v["num-clients"],
        clients_per_round=v["clients-per-round"],
        evaluate_clients_per_round=v["evaluate-clients-per-round"],
        strategy=v["strategy"],
        personalization=PersonalizationConfig(
            mode=v["strategy-mode"],
            alpha=v["strategy-alpha"],
            alpha_lr=v["strategy-alpha-lr"],
            local_layers=local_layers if v["strategy-mode"] == "fedper" else (),
        )
        if spec.personal_state
        else None,
        hetero=hetero,
        output_dir=v["output-dir"],
        round_timeout=v["round-timeout"],
        save_model=v["save-model"],
        dataset=DatasetConfig(
            name=v["dataset"],
            test_fraction=v["dataset-test-fraction"],
            val_fraction=v["dataset-val-fraction"],
            alpha=v["dataset-alpha"],
            beta=v["dataset-beta"],
            iid=v["dataset-iid"],
            samples_per_client=v["dataset-samples-per-client"],
            dim=v["dataset-dim"],
            num_classes=v["dataset-num-classes"],
        ),
        partition=PartitionConfig(
            name=v["partition"],
            alpha=v["partition-alpha"],
            classes_per_client=v["partition-classes-per-client"],
            min_size=v["partition-min-size"],
        ),
        model=ModelConfig(name=v["model"], width=v["model-width"]),
        client=ClientConfig(
            local_epochs=v["client-local-epochs"],
            batch_size=v["client-batch-size"],
            learning_rate=v["client-learning-rate"],
            learning_rate_decay=v["client-learning-rate-decay"],
            optimizer=v["client-optimizer"],
            model_cache=v["client-model-cache"],
            augmentation=augmentation,
            label_mask=v["client-label-mask"],
        ),
        pruning=pruning,
        compression=compression,
        dpsgd=dpsgd,
        client_dp=client_dp,
        secagg=secagg,
    )


def _privacy(
    v: Mapping[str, Any], spec: StrategySpec, compression: CompressionConfig
) -> tuple[DpSgdConfig | None, ClientDpConfig | None, SecAggConfig | None]:
    """Parse DP-SGD, client-level DP and SecAgg+, refusing what cannot combine."""
    dpsgd = None
    if v["dpsgd"] != "none":
        if not spec.dp_sgd:
            raise _fail(
                "dpsgd",
                v["dpsgd"],
                f"'none' with strategy={spec.name} ({spec.why_not_dp_sgd})",
            )
        dpsgd = DpSgdConfig(
            optimizer=v["dpsgd"],
            l2_norm_clip=v["dpsgd-l2-norm-clip"],
            noise_multiplier=v["dpsgd-noise-multiplier"],
            microbatches=v["dpsgd-microbatches"],
            delta=v["dpsgd-delta"],
            epsilon_budget=v["dpsgd-epsilon-budget"],
        )
    client_dp = None
    if v["clientdp"] != "none":
        if not spec.dense_updates or compression.active:
            raise _fail(
                "clientdp",
                v["clientdp"],
                f"'none' unless the strategy sends dense updates "
                f"({_dense_strategies()}) and compression is off (Flower's DP "
                "wrappers clip and noise dense full-model updates)",
            )
        client_dp = ClientDpConfig(
            mode=v["clientdp"],
            noise_multiplier=v["clientdp-noise-multiplier"],
            clipping_norm=v["clientdp-clipping-norm"],
            delta=v["clientdp-delta"],
            clipped_count_stddev=v["clientdp-clipped-count-stddev"],
        )
    secagg = None
    if v["secagg"]:
        if not spec.dense_updates:
            raise _fail(
                "secagg",
                True,
                f"false with strategy={spec.name}: {spec.why_not_dense}, and SecAgg+ "
                "sums equal-shaped dense vectors",
            )
        if v["compression"] != "none" or compression.delta or compression.topk < 1:
            raise _fail(
                "secagg",
                True,
                "false with upload compression (sparse, quantized or delta "
                f"payloads, here compression={v['compression']!r}): SecAgg+ "
                "quantizes and sums dense float arrays itself",
            )
        if client_dp is not None and not client_dp.client_side:
            raise _fail(
                "clientdp",
                v["clientdp"],
                "client-fixed or client-adaptive with secagg=true (server-side "
                "clipping needs each client's update, which SecAgg+ hides)",
            )
        if v["secagg-reconstruction-threshold"] > v["clients-per-round"]:
            raise _fail(
                "secagg-reconstruction-threshold",
                v["secagg-reconstruction-threshold"],
                f"<= clients-per-round ({v['clients-per-round']})",
            )
        secagg = SecAggConfig(
            num_shares=v["secagg-num-shares"],
            reconstruction_threshold=v["secagg-reconstruction-threshold"],
            clipping_range=v["secagg-clipping-range"],
            quantization_range=v["secagg-quantization-range"],
            max_weight=v["secagg-max-weight"],
        )
    return dpsgd, client_dp, secagg


def _pruning(v: Mapping[str, Any]) -> PruningConfig | None:
    """Return the pruning settings, checking the schedule's rounds and sparsities."""
    if v["pruning"] == "none":
        return None
    if v["pruning"] == "polynomial":
        if v["pruning-end-round"] <= v["pruning-begin-round"]:
            raise _fail(
                "pruning-end-round",
                v["pruning-end-round"],
                f"> pruning-begin-round ({v['pruning-begin-round']}) for the "
                "polynomial schedule",
            )
        if v["pruning-initial-sparsity"] > v["pruning-final-sparsity"]:
            raise _fail(
                "pruning-initial-sparsity",
                v["pruning-initial-sparsity"],
                f"<= pruning-final-sparsity ({v['pruning-final-sparsity']})",
            )
    layers = v["pruning-layers"]
    known = MODEL_LAYERS[v["model"]]
    names = [n.strip() for n in layers.split(",") if n.strip()]
    if layers not in ("auto", "all") and (
        not names or any(n not in known for n in names)
    ):
        raise _fail(
            "pruning-layers",
            layers,
            f"'auto', 'all', or comma-separated layer names of model "
            f"'{v['model']}': {', '.join(known)}",
        )
    if layers == "auto" and len(known) <= 2:
        raise _fail(
            "pruning-layers",
            layers,
            f"layer names or 'all' for model '{v['model']}' ('auto' skips the first "
            "and the class layer, which leaves nothing to prune)",
        )
    return PruningConfig(
        schedule=v["pruning"],
        initial_sparsity=v["pruning-initial-sparsity"],
        final_sparsity=v["pruning-final-sparsity"],
        begin_round=v["pruning-begin-round"],
        end_round=v["pruning-end-round"],
        frequency=v["pruning-frequency"],
        layers=v["pruning-layers"],
    )


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
        raise _fail("strategy-capacities", text, allowed) from None
    widths = [w for w, _ in pairs]
    if (
        not pairs
        or len(set(widths)) != len(widths)
        or any(not (0 < w <= 1 and share > 0) for w, share in pairs)
        or not all(math.isfinite(x) for pair in pairs for x in pair)
    ):
        raise _fail("strategy-capacities", text, allowed)
    total = sum(share for _, share in pairs)
    return tuple((w, share / total) for w, share in pairs)


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
