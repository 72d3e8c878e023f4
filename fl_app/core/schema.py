"""Declare run-config settings once, on the dataclasses that hold them.

A config dataclass declares each of its fields with :func:`setting` (flat default,
rule, check, choices, help) and each nested config with :func:`section` (the flat-key
prefix of its settings, and when it is present). Everything else derives from those
declarations: the flat keys and their defaults (:func:`flat_settings`, and through it
``[tool.flwr.app.config]``), type and range checks with their error messages
(:func:`coerce`), and building the typed config from Flower's flat mapping
(:func:`build`). A section whose settings depend on other sections checks them in its
``validate(run)`` method, which :func:`validate_all` calls once the whole config is
built.

A feature that lives in its own module (a client technique, say) adds its settings
without editing the core dataclasses: :func:`register_section` makes them part of the
schema, and the built value is found under the section's name in ``RunConfig.extras``.

Flat keys: a setting ``f`` of a section with prefix ``p`` is ``p-f`` (underscores
become hyphens), a setting called ``name`` is ``p`` itself, and a setting may name its
key outright (``key=``). This is the same mapping
:func:`fl_app.core.config.flatten_nested`
applies to the Hydra groups, so ``client.augmentation.zoom`` is
``client-augmentation-zoom`` on both sides.

Imports neither TensorFlow nor Flower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any


class ConfigError(ValueError):
    """An invalid run configuration value."""


def fail(key: str, value: Any, allowed: str) -> ConfigError:
    """Return the error for flat key ``key``: what it received, what is allowed."""
    return ConfigError(
        f"run config key '{key}': received {value!r}, allowed: {allowed}"
    )


@dataclass(frozen=True)
class Setting:
    """One flat run-config key: its type, default and what values it accepts."""

    default: Any
    rule: str = ""
    check: Callable[[Any], bool] | None = None
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    help: str = ""  # what the setting does; quoted in its error messages
    key: str | None = None
    # flat value -> the dataclass field's value (e.g. "a,b" -> ("a", "b")); it may
    # raise ConfigError for values the type check cannot judge
    parse: Callable[[Any], Any] | None = None

    @property
    def kind(self) -> type:
        """The flat value's type: that of the default."""
        return type(self.default)

    def allowed(self) -> tuple[str, ...] | None:
        """Return the allowed values, if the setting has a fixed list."""
        return self.choices() if callable(self.choices) else self.choices


@dataclass(frozen=True)
class Section:
    """A nested config: its class, flat-key prefix and when it is present."""

    cls: type
    prefix: str
    # coerced flat values -> present?; None: always present. Read before the
    # section is built, so an absent section's settings are never parsed.
    when: Callable[[Mapping[str, Any]], bool] | None = None


def setting(
    default: Any,
    rule: str = "",
    check: Callable[[Any], bool] | None = None,
    *,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    help: str = "",  # noqa: A002 (the word users know from argparse)
    key: str | None = None,
    parse: Callable[[Any], Any] | None = None,
) -> Any:
    """Declare a dataclass field as a run-config setting (use as its default)."""
    spec = Setting(default, rule, check, choices, help, key, parse)
    value = parse(default) if parse is not None else default
    return field(default=value, metadata={"setting": spec})


def section(
    cls: type,
    prefix: str,
    when: Callable[[Mapping[str, Any]], bool] | None = None,
) -> Any:
    """Declare a dataclass field as a nested config (use as its default).

    Always-present sections default to ``cls()``; optional ones (``when`` given) to
    ``None``.
    """
    spec = Section(cls, prefix, when)
    if when is None:
        return field(default_factory=cls, metadata={"section": spec})
    return field(default=None, metadata={"section": spec})


def flat_key(prefix: str, name: str, spec: Setting) -> str:
    """Return the flat key of setting ``name`` in a section with ``prefix``."""
    if spec.key is not None:
        return spec.key
    if prefix and name == "name":
        return prefix
    name = name.replace("_", "-")
    return f"{prefix}-{name}" if prefix else name


# Sections registered by feature modules: name -> Section. Built into RunConfig.extras.
EXTRA_SECTIONS: dict[str, Section] = {}


def register_section(
    name: str,
    cls: type,
    prefix: str,
    when: Callable[[Mapping[str, Any]], bool] | None = None,
) -> Section:
    """Add a feature's own settings to the run config, under ``extras[name]``.

    ``cls`` is a dataclass whose fields are declared with :func:`setting`; ``when``
    decides, from the flat values, whether the feature is on (off: it is left out
    of ``RunConfig.extras``). Its flat keys must not collide with any other
    setting's (``fl_app.core.config.run_config_fields`` refuses duplicates).
    """
    spec = Section(cls, prefix, when)
    EXTRA_SECTIONS[name] = spec
    return spec


def flat_settings(cls: type, prefix: str = "") -> Iterator[tuple[str, str, Setting]]:
    """Yield ``(flat key, field path, setting)`` for every setting under ``cls``.

    Sections are walked depth first in field order, then the registered extra
    sections (for the root class only), so the order is stable.
    """
    for f in fields(cls):
        if "setting" in f.metadata:
            yield (
                flat_key(prefix, f.name, f.metadata["setting"]),
                f.name,
                f.metadata["setting"],
            )
        elif "section" in f.metadata:
            sub: Section = f.metadata["section"]
            for key, path, spec in flat_settings(sub.cls, sub.prefix):
                yield key, f"{f.name}.{path}", spec
    if not prefix:
        for name, sub in EXTRA_SECTIONS.items():
            for key, path, spec in flat_settings(sub.cls, sub.prefix):
                yield key, f"extras[{name}].{path}", spec


def coerce(key: str, value: Any, spec: Setting) -> Any:
    """Check one flat value's type, choices and rule.

    An int is accepted for a float, and for a text setting (as its digits: Hydra
    and TOML read ``attack.clients=0`` as a number), as is a list of numbers or
    names for a text setting (comma-joined: ``attack.clients=[0,1]``).
    """
    kind = spec.kind
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
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        elif isinstance(value, list | tuple) and all(
            isinstance(v, int | str) and not isinstance(v, bool) for v in value
        ):
            value = ",".join(str(v) for v in value)
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(
            f"run config key '{key}': expected {kind.__name__}, "
            f"received {value!r} ({type(value).__name__})"
            + (f"; {spec.help}" if spec.help else "")
        )
    about = f" ({spec.help})" if spec.help else ""
    choices = spec.allowed()
    if choices is not None and value not in choices:
        raise fail(key, value, ", ".join(choices) + about)
    if spec.check is not None and not spec.check(value):
        raise fail(key, value, spec.rule + about)
    return value


def build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """Build ``cls`` from coerced flat ``values`` (keys as :func:`flat_settings`).

    Optional sections whose ``when`` is false become ``None``; a built section with a
    ``resolved()`` method is replaced by what it returns (normalizing fields that
    depend on each other).
    """
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if "setting" in f.metadata:
            spec: Setting = f.metadata["setting"]
            value = values[flat_key(prefix, f.name, spec)]
            kwargs[f.name] = spec.parse(value) if spec.parse is not None else value
        elif "section" in f.metadata:
            kwargs[f.name] = _build_section(f.metadata["section"], values)
    if not prefix and EXTRA_SECTIONS and "extras" in {f.name for f in fields(cls)}:
        extras = []
        for name, sub in EXTRA_SECTIONS.items():
            built = _build_section(sub, values)
            if built is not None:
                extras.append((name, built))
        kwargs["extras"] = tuple(extras)
    return cls(**kwargs)


def _build_section(sub: Section, values: Mapping[str, Any]) -> Any:
    if sub.when is not None and not sub.when(values):
        return None
    built = build(sub.cls, values, sub.prefix)
    resolved = getattr(built, "resolved", None)
    return resolved() if callable(resolved) else built


def validate_all(obj: Any, run: Any) -> None:
    """Call ``validate(run)`` on ``obj``, then on every section under it, in order."""
    check = getattr(obj, "validate", None)
    if callable(check):
        check(run)
    for f in fields(obj):
        if "section" in f.metadata:
            child = getattr(obj, f.name)
            if child is not None:
                validate_all(child, run)
    for _, extra in getattr(obj, "extras", ()):
        validate_all(extra, run)
