"""Client techniques: changes to how clients train, one class (and module) each.

A technique declares its settings as a config dataclass
(:func:`fl_app.core.schema.setting`
fields, combination rules in ``validate(run)``), says when it is on, and hooks into
local training where it needs to. :func:`register_client_technique` adds its settings
to the run config (under ``RunConfig.extras``) and makes every client use it when it
is on; every module in this package is imported, and so registered, with
:mod:`fl_app.core.config`. :mod:`fl_app.features.fedprox.technique` is the worked
example.

The hooks run on the client, inside the local training of the plain, DP-SGD and
personalized trainers alike (:mod:`fl_app.ml.training`,
:mod:`fl_app.features.personalization.training`):

- :meth:`ClientTechnique.wrap_optimizer` once, when a compiled model (or a
  personalized trainer's copy of the global model) gets its optimizer;
- :meth:`ClientTechnique.begin` before each local training, once the weights the
  server sent are set;
- :meth:`ClientTechnique.end` after it, returning metrics for the fit reply.

This package imports neither TensorFlow nor Flower: a technique imports TensorFlow
inside its hooks, so validating a config stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fl_app.core.schema import build, register_section


class ClientTechnique:
    """A change to local training; subclass, fill in the class attributes, register.

    Attributes
    ----------
    name : str
        The technique's name (its key in ``RunConfig.extras``).
    prefix : str
        The flat-key prefix of its settings (``client-proximal`` gives
        ``client-proximal-mu``; the Hydra key ``client.proximal_mu``).
    Config : type
        Its frozen config dataclass; fields declared with
        ``fl_app.core.schema.setting``.
    """

    name: ClassVar[str]
    prefix: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def enabled(cls, config: Any) -> bool:
        """Whether the technique is on for these settings (default: always)."""
        return True

    def wrap_optimizer(self, optimizer: Any, variables: Sequence[Any]) -> Any:
        """Return the optimizer that will train ``variables`` (default: unchanged)."""
        return optimizer

    def begin(self, variables: Sequence[Any]) -> None:
        """Prepare a local training; ``variables`` hold the weights the server sent."""

    def end(self, variables: Sequence[Any]) -> Mapping[str, float]:
        """Finish a local training; return metrics for the reply (default: none)."""
        return {}


CLIENT_TECHNIQUES: dict[str, type[ClientTechnique]] = {}


def register_client_technique(cls: type[ClientTechnique]) -> type[ClientTechnique]:
    """Register a technique and its settings; usable as a class decorator."""
    register_section(
        cls.name,
        cls.Config,
        cls.prefix,
        lambda flat: cls.enabled(build(cls.Config, flat, cls.prefix)),
    )
    CLIENT_TECHNIQUES[cls.name] = cls
    return cls


def active_techniques(extras: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """Return ``(name, config)`` of the registered techniques that are on."""
    return tuple((name, c) for name, c in extras if name in CLIENT_TECHNIQUES)


def make_techniques(active: Sequence[tuple[str, Any]]) -> list[ClientTechnique]:
    """Instantiate the techniques of :func:`active_techniques` (one set per model)."""
    return [CLIENT_TECHNIQUES[name](config) for name, config in active]
