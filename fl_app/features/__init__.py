"""The features of fl-dnn, one folder each, found by convention.

A feature folder ``fl_app/features/<name>/`` holds everything of one feature:

- ``__init__.py`` — light (no TensorFlow, no Flower server): importing the package
  registers the feature's settings (``fl_app.core.schema.register_section``, or a
  client technique's ``register_client_technique``);
- ``client.py`` (optional) — its client part: message handlers
  (``fl_app.core.exchange.register_handler``) or other client registrations;
- ``server.py`` (optional) — its server part: strategies, workflows, phases and
  summary parts (``fl_app.server.registry``);
- its own model or math modules, and its docs line in ``docs/features.md``.

Nothing outside a feature's folder names it: importing this package imports every
feature package (their settings), and the app entry modules call :func:`load` for
the client or server parts. A new feature is a new folder here, its conf option
file and its tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

PARTS = ("client", "server")


def feature_names() -> list[str]:
    """Return the name of every feature folder, sorted (the load order)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def load(part: str) -> list[str]:
    """Import ``part`` (``client`` or ``server``) of every feature that has one.

    Returns the modules imported. A part that fails to import raises, naming the
    module: a feature never goes missing silently.
    """
    if part not in PARTS:
        raise ValueError(f"feature part {part!r}: expected one of {', '.join(PARTS)}")
    loaded = []
    for name in feature_names():
        module = f"{__name__}.{name}.{part}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
            loaded.append(module)
    return loaded


for _name in feature_names():  # every feature's settings
    importlib.import_module(f"{__name__}.{_name}")
