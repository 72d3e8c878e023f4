"""conf/: every option composes to a run config the schema accepts; no setting is
written twice.

A group's options inherit the settings they share from a base in the group (a file
named ``_*.yaml``, e.g. ``conf/split/_base.yaml``: not an option) or from another
option (``client/fedprox`` from ``client/default``) through their ``defaults`` list,
and write only their name and what differs. A base holds the schema's defaults, so a
default is written in one file: these tests keep it so.
"""

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from fl_app.core.config import (
    NON_APP_GROUPS,
    ConfigError,
    default_run_config,
    flatten_nested,
    parse_run_config,
)

# one pytest-xdist worker runs these (--dist loadgroup); the fixture is
# session-scoped, so tests of other files in between do not rebuild it
pytestmark = pytest.mark.xdist_group("conf")

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
PRESETS = "experiment"  # `+experiment=<name>`: presets over several groups


def is_base(path: Path) -> bool:
    return path.stem.startswith("_")


def group_of(path: Path) -> str:
    return path.parent.relative_to(CONF).as_posix()


# Every folder of conf/ with options, nested ones (client/augmentation) included.
GROUPS = sorted(
    {group_of(p) for p in CONF.rglob("*.yaml") if p.parent != CONF}
    - {PRESETS, *NON_APP_GROUPS}
)
# Options that compose to a valid run config only with other groups' options.
SYNTHETIC = ["dataset=synthetic", "partition=natural", "model=softmax"]
COMPANIONS = {("dataset", "synthetic"): SYNTHETIC, ("partition", "natural"): SYNTHETIC}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not is_base(p))


def app_files() -> list[Path]:
    """Every yaml file of conf/ that writes app settings (not the runtime's)."""
    return sorted(
        p
        for p in CONF.rglob("*.yaml")
        if p.parent == CONF or group_of(p).split("/")[0] not in NON_APP_GROUPS
    )


def test_groups_are_found():
    assert {"dataset", "split", "client", "client/augmentation"} <= set(GROUPS)
    assert all(group_options(group) for group in GROUPS)


@pytest.fixture(scope="session")
def every_option():
    """The flat run config of every option of every group and of every preset.

    One composition each (``group=option``, with the companions it needs),
    in one Hydra session, as ``run_simulation.py`` composes and flattens them.
    """
    from hydra import compose, initialize_config_dir

    runs = {
        (group, option): list(
            dict.fromkeys([f"{group}={option}", *COMPANIONS.get((group, option), [])])
        )
        for group in GROUPS
        for option in group_options(group)
    }
    runs.update(
        {(PRESETS, name): [f"+{PRESETS}={name}"] for name in group_options(PRESETS)}
    )
    composed = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for run, overrides in runs.items():
            cfg = compose("config", overrides=overrides)
            composed[run] = flatten_nested(OmegaConf.to_container(cfg, resolve=True))
    return composed


def test_every_option_and_preset_is_a_run_config_the_schema_accepts(every_option):
    # parse_run_config refuses unknown keys and checks every value's type and range,
    # then the rules across settings
    assert {group for group, _ in every_option} == {*GROUPS, PRESETS}
    refused = []
    for run, flat in every_option.items():
        try:
            parse_run_config(flat)
        except ConfigError as err:
            refused.append(f"{'='.join(run)}: {err}")
    assert not refused, "\n".join(refused)


def test_every_run_config_key_is_in_some_option(every_option):
    covered = set().union(*every_option.values())
    missing = set(default_run_config()) - covered - {"output-dir"}
    assert not missing, (
        f"setting(s) {sorted(missing)} are declared but no conf/ option file writes "
        "them, so Hydra cannot set them (`Key ... is not in struct`): add each to its "
        "group's base or option file (docs/extending.md)"
    )


def written(path: Path) -> dict[str, Any]:
    """The flat settings a yaml file writes itself (not those of its defaults list)."""
    text = path.read_text()
    body = OmegaConf.to_container(OmegaConf.load(path))
    body.pop("defaults", None)
    if path.parent == CONF or "# @package _global_" in text:
        return flatten_nested(body)
    assert "@package" not in text, f"{path}: a package this test does not read"
    return flatten_nested(body, group_of(path).replace("/", "-"))


def inherited(path: Path) -> dict[str, Any]:
    """The flat settings a group file takes from the configs its defaults list names.

    Entries naming another group's option (``- augmentation: none``) and overrides
    are left out: they set other keys.
    """
    entries = OmegaConf.to_container(OmegaConf.load(path)).get("defaults", [])
    found: dict[str, Any] = {}
    for entry in entries:
        if not isinstance(entry, str) or entry == "_self_":
            continue
        assert "@" not in entry and "/" not in entry, f"{path}: {entry!r} not read"
        base = path.parent / f"{entry}.yaml"
        found.update(inherited(base))
        found.update(written(base))
    return found


def same(value: Any, default: Any) -> bool:
    """Equal as settings: 1 is 1.0, but True is not 1."""
    return value == default and isinstance(value, bool) == isinstance(default, bool)


def test_a_base_holds_the_schemas_defaults():
    defaults = default_run_config()
    bases = [p for p in app_files() if is_base(p)]
    assert bases
    for path in bases:
        for key, value in written(path).items():
            if value == "???":  # name: ??? -- each option names itself
                continue
            assert key in defaults, f"{path.relative_to(ROOT)}: unknown key {key}"
            assert value == defaults[key] and type(value) is type(defaults[key]), (
                f"{path.relative_to(ROOT)}: {key} = {value!r}, but the schema's "
                f"default is {defaults[key]!r}"
            )


def test_a_default_is_written_in_one_file():
    defaults = default_run_config()
    writers: dict[str, list[str]] = {}
    for path in app_files():
        for key, value in written(path).items():
            if key in defaults and same(value, defaults[key]):
                writers.setdefault(key, []).append(str(path.relative_to(CONF)))
    repeated = {key: files for key, files in writers.items() if len(files) > 1}
    assert not repeated, (
        "a default written in more than one conf file (write it once, in the "
        f"group's base, and let the options inherit it): {repeated}"
    )


def test_an_option_writes_only_what_differs_from_what_it_inherits():
    checked = 0
    for path in sorted(CONF.rglob("*.yaml")):
        if path.parent == CONF or group_of(path) == PRESETS:
            continue
        base = inherited(path)
        checked += bool(base)
        restated = {
            key: value
            for key, value in written(path).items()
            if key in base and same(value, base[key])
        }
        assert not restated, (
            f"{path.relative_to(ROOT)} repeats what it inherits: {restated}"
        )
    assert checked
