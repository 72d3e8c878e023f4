import tomllib
from pathlib import Path

import pytest

from fl_app.core.config import (
    ConfigError,
    app_config_toml,
    default_run_config,
    flatten_nested,
    parse_run_config,
)
from tests.inprocess import compose_flat

ROOT = Path(__file__).resolve().parents[2]


def pyproject_run_config():
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["tool"]["flwr"]["app"]["config"]


def test_config_defaults_equal_pyproject():
    assert pyproject_run_config() == default_run_config(), (
        "pyproject.toml's [tool.flwr.app.config] differs from the schema's defaults: "
        "run `uv run python scripts/write_app_config.py`"
    )


def test_every_strategy_the_config_accepts_has_a_server_side_builder():
    # a spec registered in a feature's __init__.py whose server.py never calls
    # register_strategy would fail only once a run's ServerApp started
    from fl_app import features
    from fl_app.core.config import STRATEGY_SPECS
    from fl_app.server.registry import STRATEGY_BUILDERS

    features.load("server")
    missing = sorted(set(STRATEGY_SPECS) - set(STRATEGY_BUILDERS))
    assert not missing, (
        f"strategy spec(s) {missing} have no builder: call "
        "fl_app.server.registry.register_strategy in the feature's server.py"
    )


def test_pyproject_app_config_is_written_from_the_schema():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "write_app_config", ROOT / "scripts" / "write_app_config.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _, body, _ = script.split_table((ROOT / "pyproject.toml").read_text())
    assert body == app_config_toml(), (
        "pyproject.toml's [tool.flwr.app.config] differs from the settings the schema "
        "declares: run `uv run python scripts/write_app_config.py`"
    )


def test_config_defaults_parse():
    cfg = parse_run_config({})
    assert cfg.dataset.name == "digits" and cfg.partition.alpha == 0.5
    assert cfg.num_clients == 10 and cfg.model.name == "cnn"


def test_config_hydra_default_equals_pyproject_defaults():
    flat = compose_flat()
    defaults = default_run_config()
    assert set(flat) <= set(defaults)
    for key, value in flat.items():
        assert defaults[key] == value, key


# Every option of every conf/ group and every experiment preset is composed and
# parsed in tests/unit/test_conf.py.


@pytest.mark.parametrize(
    ("overrides", "mode"),
    [
        (["strategy=apfl"], "apfl"),
        (["strategy=fedper"], "fedper"),
        (["strategy=apfl", "strategy.mode=fixed", "strategy.alpha=0.25"], "fixed"),
    ],
)
def test_config_strategy_presets_parse(overrides, mode):
    cfg = parse_run_config(compose_flat(overrides))
    assert cfg.strategy == "personalized" and cfg.personalization.mode == mode
    if mode == "fedper":
        assert cfg.personalization.local_layers == ("classifier",)
    else:
        assert cfg.personalization.local_layers == ()
    if mode == "fixed":
        assert cfg.personalization.alpha == 0.25


def test_config_model_layers_match_builders():
    from fl_app.core.config import IMAGE_MODELS, MODEL_LAYERS
    from fl_app.ml.models import BUILDERS

    for name, builder in BUILDERS.items():
        shape = (8, 8, 1) if name in IMAGE_MODELS else (60,)
        model = builder(shape, 10)
        named = tuple(layer.name for layer in model.layers if layer.weights)
        assert named == MODEL_LAYERS[name]


def test_config_experiment_synthetic_iid_is_valid():
    cfg = parse_run_config(compose_flat(["+experiment=synthetic_iid"]))
    assert cfg.dataset.name == "synthetic" and cfg.dataset.iid
    assert cfg.partition.name == "natural"


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"dataset": "imagenet"}, ["'dataset'", "'imagenet'", "digits, synthetic"]),
        ({"strategy": "fedmagic"}, ["'strategy'", "'fedmagic'", "fedavg"]),
        ({"partition": "zipf"}, ["'partition'", "'zipf'", "dirichlet"]),
        ({"partition-alpha": 0}, ["'partition-alpha'", "0", "> 0"]),
        ({"partition-alpha": -1.5}, ["'partition-alpha'", "-1.5"]),
        ({"clients-per-round": 11}, ["'clients-per-round'", "11", "num-clients (10)"]),
        ({"num-rounds": "ten"}, ["'num-rounds'", "'ten'", "expected int"]),
        ({"num-rounds": 2.5}, ["'num-rounds'", "2.5", "expected int"]),
        (
            {"client-learning-rate": "fast"},
            ["'client-learning-rate'", "expected float"],
        ),
        ({"save-model": 1}, ["'save-model'", "expected bool"]),
        (
            {"client-learning-rate-decay": 0},
            ["'client-learning-rate-decay'", "0 < value <= 1"],
        ),
        ({"client-learning-rate-decay": 1.2}, ["'client-learning-rate-decay'", "1.2"]),
        ({"model-width": 1.5}, ["'model-width'", "1.5", "0 < value <= 1"]),
        ({"dataset-val-fraction": 0.9}, ["'dataset-val-fraction'", "0.9"]),
        ({"dataset": "synthetic"}, ["'partition'", "natural"]),
        ({"partition": "natural"}, ["'partition'", "natural"]),
        ({"no-such-key": 1}, ["unknown run config key", "no-such-key"]),
        ({"partition-alpha": float("nan")}, ["'partition-alpha'", "nan"]),
        ({"strategy-alpha": 1.5}, ["'strategy-alpha'", "1.5", "0 <= value <= 1"]),
        ({"strategy-mode": "ditto"}, ["'strategy-mode'", "'ditto'", "apfl"]),
        (
            {
                "strategy": "personalized",
                "strategy-mode": "fedper",
                "strategy-local-layers": "head",
            },
            ["'strategy-local-layers'", "'head'", "conv1, conv2, fc1, classifier"],
        ),
        (
            {
                "strategy": "personalized",
                "strategy-mode": "fedper",
                "strategy-local-layers": "conv1,conv2,fc1,classifier",
            },
            ["'strategy-local-layers'", "proper subset"],
        ),
        (
            {"client-augmentation-flip": "diagonal"},
            ["'client-augmentation-flip'", "horizontal"],
        ),
        (
            {"client-augmentation-zoom": 1.5},
            ["'client-augmentation-zoom'", "0 <= value < 1"],
        ),
    ],
)
def test_config_invalid_value_names_key_value_and_allowed(overrides, fragments):
    with pytest.raises(ConfigError) as info:
        parse_run_config(overrides)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_client_learning_rate_decays_per_round():
    client = parse_run_config(
        {"client-learning-rate": 0.2, "client-learning-rate-decay": 0.5}
    ).client
    assert client.at_round(1).learning_rate == 0.2
    assert client.at_round(3).learning_rate == pytest.approx(0.05)  # 0.2 * 0.5**2
    assert client.at_round(0).learning_rate == 0.2  # no round sent: the first
    assert client.at_round(3).local_epochs == client.local_epochs
    constant = parse_run_config({}).client
    assert constant.at_round(7) is constant


def test_config_int_accepted_for_float():
    assert parse_run_config({"partition-alpha": 1}).partition.alpha == 1.0


def test_flatten_nested_rule():
    flat = flatten_nested(
        {
            "num_rounds": 3,
            "partition": {"name": "iid", "min_size": 5},
            "simulation": {"x": 1},
        }
    )
    assert flat == {"num-rounds": 3, "partition": "iid", "partition-min-size": 5}


def test_config_hetero_capacities_override_with_quotes():
    flat = compose_flat(
        ["strategy=fedrolex", 'strategy.capacities="1.0:0.3,0.5:0.4,0.25:0.3"']
    )
    cfg = parse_run_config(flat)
    assert cfg.hetero.rolling and cfg.hetero.scaler
    assert cfg.hetero.capacities == ((1.0, 0.3), (0.5, 0.4), (0.25, 0.3))


def test_config_rules_read_a_strategys_capabilities_not_its_name(monkeypatch):
    from fl_app.core.config import STRATEGY_SPECS, StrategySpec

    # Prepare: two strategies the validator has never heard of
    monkeypatch.setitem(STRATEGY_SPECS, "dense-new", StrategySpec("dense-new"))
    monkeypatch.setitem(
        STRATEGY_SPECS,
        "shaped-new",
        StrategySpec("shaped-new", dense_updates=False, why_not_dense="own shapes"),
    )
    # Execute / Assert: a dense strategy takes what FedAvg takes ...
    cfg = parse_run_config(
        {"strategy": "dense-new", "compression": "int8", "secagg": False}
    )
    assert cfg.strategy == "dense-new" and cfg.compression.active
    # ... but client-level DP and SecAgg+ only if it declares a mean aggregate
    for extra in ({"secagg": True}, {"clientdp": "server-fixed"}):
        with pytest.raises(ConfigError, match="does not declare.*mean_aggregate"):
            parse_run_config({"strategy": "dense-new", **extra})
    monkeypatch.setitem(
        STRATEGY_SPECS, "mean-new", StrategySpec("mean-new", mean_aggregate=True)
    )
    assert parse_run_config({"strategy": "mean-new", "secagg": True}).secagg
    # ... a non-dense one is refused what needs dense updates, with its reason
    for extra in (
        {"compression": "int8"},
        {"secagg": True},
        {"clientdp": "server-fixed"},
    ):
        with pytest.raises(ConfigError) as info:
            parse_run_config({"strategy": "shaped-new", **extra})
        assert "dense" in str(info.value)
    with pytest.raises(ConfigError, match="own shapes"):
        parse_run_config({"strategy": "shaped-new", "secagg": True})
    # and the strategy key names every registered strategy when it refuses one
    with pytest.raises(ConfigError, match="dense-new, shaped-new, mean-new"):
        parse_run_config({"strategy": "unknown"})


def test_config_settings_of_an_absent_section_are_not_parsed():
    # capacities belong to width slicing: FedAvg ignores them, hetero parses them
    assert parse_run_config({"strategy-capacities": "not pairs"}).hetero is None
    with pytest.raises(ConfigError, match="strategy-capacities.*width:share"):
        parse_run_config({"strategy": "hetero", "strategy-capacities": "not pairs"})


def test_config_a_registered_section_adds_keys_and_a_duplicate_key_is_refused(
    monkeypatch,
):
    from dataclasses import dataclass

    from fl_app.core import schema

    @dataclass(frozen=True)
    class Extra:
        level: int = schema.setting(0, ">= 0", lambda v: v >= 0, help="how much")

    monkeypatch.setattr(schema, "EXTRA_SECTIONS", dict(schema.EXTRA_SECTIONS))
    schema.register_section(
        "extra", Extra, "client-extra", lambda f: f["client-extra-level"] > 0
    )
    assert default_run_config()["client-extra-level"] == 0
    assert parse_run_config({}).extra("extra") is None
    assert parse_run_config({"client-extra-level": 3}).extra("extra") == Extra(3)
    with pytest.raises(ConfigError, match=r"client-extra-level.*-1.*>= 0 \(how much\)"):
        parse_run_config({"client-extra-level": -1})
    # a second section whose key collides with FedProx's
    schema.register_section("clash", _mu_section(), "client-proximal")
    with pytest.raises(ConfigError, match="client-proximal-mu' is declared twice"):
        parse_run_config({})


def _mu_section():
    from dataclasses import dataclass

    from fl_app.core import schema

    @dataclass(frozen=True)
    class Mu:
        mu: float = schema.setting(0.0)

    return Mu


def test_a_text_setting_takes_a_number_or_a_list_as_hydra_reads_them():
    assert parse_run_config({"attack": "scaled", "attack-clients": 3}).extra(
        "attack"
    ).attackers(parse_run_config({})) == frozenset({3})
    cfg = parse_run_config({"attack": "scaled", "attack-clients": [0, 2]})
    assert cfg.extra("attack").clients == "0,2"
    with pytest.raises(ConfigError, match="'attack-clients': expected str"):
        parse_run_config({"attack": "scaled", "attack-clients": True})
