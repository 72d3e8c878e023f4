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
    loaded = modules_after_import("fl_app.client_app")
    assert "fl_app.client" in loaded  # the check would see a real import
    assert not {m for m in loaded if m.split(".")[0] == "strategies"}


def test_server_app_does_not_import_the_client_module():
    loaded = modules_after_import("fl_app.server_app")
    assert "strategies.fedavg" in loaded
    assert "fl_app.client" not in loaded
