"""The import boundaries between the client side, the server side and strategies/."""

import json
import subprocess
import sys

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


def test_client_app_pulls_in_nothing_from_strategies():
    # the modules a message runs (load_features), not only the thin app module
    loaded = modules_after_import(
        "fl_app.client_app; fl_app.client_app.load_features()"
    )
    assert "fl_app.client" in loaded  # the check would see a real import
    assert not {m for m in loaded if m.split(".")[0] == "strategies"}


def test_the_clientapp_module_imports_no_tensorflow():
    # a deployment starts a process per message: the app it loads stays thin and
    # hands the message to the node's warm worker (fl_app.warm_worker)
    loaded = modules_after_import("fl_app.client_app")
    assert "flwr.clientapp" in loaded and "fl_app.node_state" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("tensorflow", "sklearn")}


def test_server_app_does_not_import_the_client_module():
    loaded = modules_after_import("fl_app.server_app")
    assert "strategies.fedavg" in loaded
    assert "fl_app.client" not in loaded
