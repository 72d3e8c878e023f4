"""The architecture's import contracts, checked by import-linter, and one runtime check.

The contracts (layers, feature independence, the client side never importing the
server side, ``strategies`` free of TensorFlow and of ``fl_app``, no import cycle)
are declared in ``pyproject.toml``'s ``[tool.importlinter]``; ``lint-imports``
checks them on the static import graph (grimp). What a graph cannot see is what a
process loads at run time: the fresh-interpreter check below keeps the ClientApp
module free of TensorFlow.
"""

import json
import subprocess
import sys
from pathlib import Path

from tests.inprocess import ROOT


def modules_after_import(module):
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_the_clientapp_module_imports_no_tensorflow():
    # a deployment starts a process per message: the app it loads stays thin and
    # hands the message to the node's warm worker (fl_app.deploy.warm_worker)
    loaded = modules_after_import("fl_app.client_app")
    assert "flwr.clientapp" in loaded and "fl_app.client.node_state" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("tensorflow", "sklearn")}


def test_a_client_process_loads_nothing_from_strategies():
    # what a message runs (load_features), not only the thin app module
    loaded = modules_after_import(
        "fl_app.client_app; fl_app.client_app.load_features()"
    )
    assert "fl_app.client.keras_client" in loaded  # the check sees a real import
    assert "fl_app.features.split.client" in loaded  # and the features' parts
    assert not {m for m in loaded if m.split(".")[0] == "strategies"}
