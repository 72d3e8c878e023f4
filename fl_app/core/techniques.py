"""Client techniques: changes to how clients train, one class (and module) each.

A technique declares its settings as a config dataclass
(:func:`fl_app.core.schema.setting` fields, combination rules in ``validate(run)``),
says when it is on, and hooks into local training where it needs to.
:func:`register_client_technique` adds its settings to the run config (under
``RunConfig.extras``) and makes every client use it when it is on. A technique lives
in its feature folder, whose ``__init__.py`` imports it (``fl_app/features/``);
:mod:`fl_app.features.fedprox.technique` is the worked example.

The hooks run on the client, inside the local training of the plain, DP-SGD and
personalized trainers alike (:mod:`fl_app.ml.training`,
:mod:`fl_app.features.personalization.training`):

- :meth:`ClientTechnique.wrap_model` once, when the model is built (pruning wraps
  its layers; ``wraps_last`` techniques after the others: DP-SGD's model class);
  :meth:`ClientTechnique.optimizer` may replace the configured optimizer
  (DP-SGD's), and ``per_example_loss`` asks for an unreduced loss;
- :meth:`ClientTechnique.wrap_optimizer` once, when a compiled model (or a
  personalized trainer's copy of the global model) gets its optimizer;
- :meth:`ClientTechnique.set_weights` / :meth:`ClientTechnique.get_weights` where
  the technique's model holds more than the plain arrays that travel;
- :meth:`ClientTechnique.begin` before each local training, once the weights the
  server sent are set;
- :meth:`ClientTechnique.end` after it, returning metrics for the fit reply;
- :meth:`ClientTechnique.batch_transform` (a class method, from the settings alone)
  transforms each training batch (augmentation), and
  :meth:`ClientTechnique.check_input` refuses data it cannot handle.

One technique object belongs to a compiled model, which every client a worker
process serves shares: it must keep nothing of one client for the next. What a
technique keeps per client across rounds goes in the :class:`TechniqueState` that
``begin`` and ``end`` receive: that client's own, kept in its node's
``context.state`` (so in simulation and in a deployment alike, and on disk for a
resumed run when checkpoints are on).

This module imports neither TensorFlow nor Flower: a technique imports TensorFlow
inside its hooks, so validating a config stays fast.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from fl_app.core.schema import build, register_section


class TechniqueState:
    """One client's state for one technique, kept in the node's ``context.state``.

    Arrays (:meth:`load`, :meth:`save`) and scalars (:meth:`get`, :meth:`set`:
    ``int``, ``float``, ``str``, ``bool``) under keys of the technique's own; they
    are stored as records named ``technique.<name>`` and
    ``technique.<name>.<key>``, so two techniques never share a key.
    """

    def __init__(self, records: Any, name: str) -> None:
        self.records = records  # the node's RecordDict (context.state)
        self.name = name

    def _key(self, key: str) -> str:
        if not key or "." in key:
            raise ValueError(f"technique state key {key!r}: a non-empty name, no '.'")
        return f"technique.{self.name}.{key}"

    def load(self, key: str) -> list[np.ndarray] | None:
        """Return the arrays saved under ``key`` (copies), or None."""
        record = self.records.array_records.get(self._key(key))
        return None if record is None else record.to_numpy_ndarrays()

    def save(self, key: str, arrays: Sequence[np.ndarray]) -> None:
        """Keep ``arrays`` under ``key`` for this client's next rounds."""
        from flwr.app import ArrayRecord

        self.records.array_records[self._key(key)] = ArrayRecord(
            [np.asarray(a) for a in arrays]
        )

    def get(self, key: str, default: Any = None) -> Any:
        """Return the scalar saved under ``key``, or ``default``."""
        record = self.records.config_records.get(f"technique.{self.name}")
        return default if record is None else record.get(self._key(key), default)

    def set(self, key: str, value: int | float | str | bool) -> None:
        """Keep a scalar under ``key`` for this client's next rounds."""
        from flwr.app import ConfigRecord

        name = f"technique.{self.name}"
        record = self.records.config_records.get(name) or ConfigRecord()
        record[self._key(key)] = value
        self.records.config_records[name] = record


_CLIENT_STATE: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "fl_dnn_client_state", default=None
)


@contextlib.contextmanager
def client_state(records: Any) -> Iterator[None]:
    """Hand ``records`` (a client's ``context.state``) to the techniques' hooks."""
    token = _CLIENT_STATE.set(records)
    try:
        yield
    finally:
        _CLIENT_STATE.reset(token)


def state_for(name: str) -> TechniqueState:
    """Return technique ``name``'s state of the client training now.

    Outside a client (a server-side training, a unit test) the state is a fresh
    one that nothing keeps.
    """
    records = _CLIENT_STATE.get()
    if records is None:
        from flwr.app import RecordDict

        records = RecordDict()
    return TechniqueState(records, name)


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
    # True: the training loss is left per example (unreduced), as DP optimizers need
    per_example_loss: ClassVar[bool] = False
    # True: wrap_model after every other technique's; DP-SGD's DPModel is a model
    # class, which a technique that rebuilds the layers (pruning clones them) drops
    wraps_last: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def enabled(cls, config: Any) -> bool:
        """Whether the technique is on for these settings (default: always)."""
        return True

    @classmethod
    def batch_transform(
        cls, config: Any, seed: int
    ) -> Callable[[np.ndarray], np.ndarray] | None:
        """Return a transform of training batches for one local training, or None.

        ``seed`` is drawn per client and round; the transform must take its
        randomness from it alone.
        """
        return None

    @classmethod
    def check_input(cls, config: Any, input_shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if the technique cannot train on this input shape."""

    def wrap_model(self, model: Any) -> Any:
        """Return the model to compile in place of ``model`` (default: unchanged)."""
        return model

    def optimizer(self, client: Any) -> Any | None:
        """Return an optimizer that replaces the configured one, or None (default).

        ``client`` is the run's ``ClientConfig``; at most one active technique may
        replace the optimizer.
        """
        return None

    def set_weights(self, model: Any, weights: Sequence[np.ndarray]) -> bool:
        """Set the plain arrays ``weights`` into ``model``; False: not handled here."""
        return False

    def get_weights(self, model: Any) -> list[np.ndarray] | None:
        """Return ``model``'s plain arrays, or None where the technique adds none."""
        return None

    def wrap_optimizer(self, optimizer: Any, variables: Sequence[Any]) -> Any:
        """Return the optimizer that will train ``variables`` (default: unchanged)."""
        return optimizer

    def wrap_loss(
        self, loss: Callable[[Any, Any], Any], num_classes: int
    ) -> Callable[[Any, Any], Any]:
        """Return the training loss to compile in place of ``loss`` (default: it).

        ``loss(y_true, y_pred)`` returns one value per example (the model's softmax
        output over ``num_classes`` classes in ``y_pred``); so must the returned one.
        """
        return loss

    def set_labels(self, labels: np.ndarray | None) -> None:
        """Receive the training labels of the local training about to run.

        Called before each local training of the plain and DP-SGD trainers, and
        with ``None`` after it (default: ignored).
        """

    def begin(self, variables: Sequence[Any], state: TechniqueState) -> None:
        """Prepare a local training; ``variables`` hold the weights the server sent.

        ``state``: this client's own state for this technique (kept across rounds).
        """

    def end(
        self, variables: Sequence[Any], state: TechniqueState
    ) -> Mapping[str, float]:
        """Finish a local training; return metrics for the reply (default: none)."""
        return {}


CLIENT_TECHNIQUES: dict[str, type[ClientTechnique]] = {}


def register_client_technique(cls: type[ClientTechnique]) -> type[ClientTechnique]:
    """Register a technique and its settings; usable as a class decorator.

    A name registered already is refused: it would silently replace a technique.
    """
    for attribute in ("name", "prefix", "Config"):
        if not hasattr(cls, attribute):
            raise TypeError(
                f"client technique {cls.__qualname__} has no {attribute!r}: set the "
                "class attributes name, prefix and Config (ClientTechnique's docstring)"
            )
    if cls.name in CLIENT_TECHNIQUES:
        known = CLIENT_TECHNIQUES[cls.name]
        raise ValueError(
            f"two client techniques are named {cls.name!r}: "
            f"{known.__module__}.{known.__qualname__} and "
            f"{cls.__module__}.{cls.__qualname__}; give the new one another name"
        )
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


def batch_transform(
    active: Sequence[tuple[str, Any]], seed: int
) -> Callable[[np.ndarray], np.ndarray] | None:
    """Return the active techniques' batch transforms, composed (None: there is none).

    ``seed`` is drawn once per local training, whether or not a technique uses it.
    """
    transforms = [
        f
        for name, config in active
        if (f := CLIENT_TECHNIQUES[name].batch_transform(config, seed)) is not None
    ]
    if not transforms:
        return None
    if len(transforms) == 1:
        return transforms[0]

    def composed(x: np.ndarray) -> np.ndarray:
        for transform in transforms:
            x = transform(x)
        return x

    return composed


def check_input(
    active: Sequence[tuple[str, Any]], input_shape: tuple[int, ...]
) -> None:
    """Let every active technique refuse an input shape it cannot train on."""
    for name, config in active:
        CLIENT_TECHNIQUES[name].check_input(config, input_shape)
