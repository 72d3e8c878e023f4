import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOWER_PROCESS_MARKERS = (
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-clientapp",
    "flwr-simulation",
    "flwr-serverapp",
    "raylet",
    "gcs_server",
    "ray::",
    "fl_app.deploy.warm_worker",
)


# Every process the tests start inherits this marker (orphans too), so Flower
# processes of anything else on the machine, a benchmark say, are not counted.
TEST_MARKER = f"FL_DNN_TEST_SESSION={uuid.uuid4().hex}"
os.environ["FL_DNN_TEST_SESSION"] = TEST_MARKER.split("=", 1)[1]


def flower_processes() -> dict[int, str]:
    """Live (non-zombie) Flower or Ray processes started by these tests, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (
                (entry / "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
            state = (entry / "stat").read_text().split(") ", 1)[1].split()[0]
            ours = TEST_MARKER.encode() in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            ours
            and state != "Z"
            and any(marker in cmdline for marker in FLOWER_PROCESS_MARKERS)
        ):
            found[int(entry.name)] = cmdline.strip()
    return found


@pytest.fixture
def no_leftover_processes():
    """Fail if the test leaves a Flower or Ray process behind."""
    before = set(flower_processes())
    yield
    deadline = time.monotonic() + 15
    while True:
        left = {
            pid: cmd for pid, cmd in flower_processes().items() if pid not in before
        }
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, f"processes left running: {left}"


def run_entry(args, tmp_path, env=None, timeout=600, on_line=None):
    """Run run_simulation.py with Hydra's output under tmp_path.

    ``on_line``, if given, receives each line of the entry's output (stdout and
    stderr together) as it is printed.
    """
    command = [sys.executable, str(ROOT / "run_simulation.py"), *args]
    if not any(a.startswith(("-m", "hydra.run.dir=")) for a in args):
        command.append(f"hydra.run.dir={tmp_path / 'run'}")
    if on_line is not None:
        return _stream_entry(command, {**os.environ, **(env or {})}, timeout, on_line)
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _stream_entry(command, env, timeout, on_line):
    deadline = time.monotonic() + timeout
    lines = []
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            for line in process.stdout:
                lines.append(line)
                on_line(line)
        finally:
            timer.cancel()
    if time.monotonic() > deadline:
        raise subprocess.TimeoutExpired(command, timeout)
    return subprocess.CompletedProcess(command, process.returncode, "".join(lines), "")


TINY = [
    "num_clients=2",
    "clients_per_round=2",
    "evaluate_clients_per_round=2",
]
