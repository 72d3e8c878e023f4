"""The launcher's wait for a run: a straggler of a closed round does not hold it."""

import os
import sys
import time
from types import SimpleNamespace

import pytest

from fl_app.deploy.launcher import FlowerRunError, _stream

# What `flwr run --stream` prints for a run whose ServerApp has finished, then (the
# simulation engine still joining a ClientApp of a round closed at round-timeout)
# nothing for a long time.
RUN = (
    "import sys, time\n"
    "print('Successfully started run 7', flush=True)\n"
    "print('INFO     fl-dnn: finished 8 rounds: final central accuracy 0.95', "
    "flush=True)\n"
    "time.sleep(float(sys.argv[1]))\n"
)
STOPPED = []  # the runs the launcher asked Flower to stop
LINK = SimpleNamespace(
    env=dict(os.environ), cli=lambda *args, **_: STOPPED.append(args)
)


def test_a_run_is_left_once_its_serverapp_is_done_and_the_grace_has_passed():
    # Prepare
    streamed = []
    started = time.monotonic()
    # Execute: the run would stream for 60 s more; the grace is 0.5 s
    run_id, cut_short = _stream(
        [sys.executable, "-c", RUN, "60"], LINK, streamed, lambda _: None, 30, 0.5
    )
    # Assert
    assert (run_id, cut_short) == (7, True)
    assert time.monotonic() - started < 10
    assert "finished 8 rounds" in streamed[-1]


def test_a_run_that_ends_within_the_grace_is_not_cut_and_without_one_waits():
    streamed = []
    command = [sys.executable, "-c", RUN, "0.2"]
    assert _stream(command, LINK, streamed, lambda _: None, 30, 5.0) == (7, False)
    # without a grace (a deployment: the SuperLink is not ours) the timeout holds
    with pytest.raises(FlowerRunError, match="did not finish within 2s"):
        _stream([sys.executable, "-c", RUN, "60"], LINK, [], lambda _: None, 2, None)
    assert STOPPED[-1][:2] == ("stop", "7")


def test_a_key_missing_from_the_app_config_is_named_with_the_fix(tmp_path):
    from fl_app.deploy.launcher import check_app_config

    (tmp_path / "pyproject.toml").write_text(
        "[tool.flwr.app.config]\nnum-rounds = 20\nseed = 42\n"
    )
    check_app_config(tmp_path, {"num-rounds": 3})  # known keys pass
    with pytest.raises(FlowerRunError, match="strategy-server-lr.*write_app_config"):
        check_app_config(tmp_path, {"num-rounds": 3, "strategy-server-lr": 0.1})
