"""The watchdog finds a launch's processes by token and descent, and stops them."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fl_app.deploy.watchdog import MARKER, marked_processes, stop_all

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="needs procfs"
)

# A marked process that starts a child the way Ray starts its daemons: a session of
# its own and an environment without the token (as after Ray's setproctitle zeroed
# it). The child ignores SIGTERM. Prints the child's pid, then waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c",
     "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
     "print('ready', flush=True); time.sleep(120)"],
    env={}, start_new_session=True, stdout=subprocess.PIPE, text=True,
)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_unmarked_descendant_in_its_own_session_that_ignores_sigterm_is_stopped():
    token = uuid.uuid4().hex
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        env={**os.environ, MARKER: token},
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    try:
        assert MARKER.encode() not in Path(f"/proc/{child}/environ").read_bytes()
        assert set(marked_processes(token)) == {parent.pid, child}

        started = time.monotonic()
        # the parent dies on SIGTERM and its child is orphaned; the child is still
        # remembered from the first sweep and killed in the SIGKILL phase
        stop_all(parent.pid, token, grace_s=1.0)
        assert time.monotonic() - started < 10
        parent.wait(timeout=5)
        assert parent.returncode == -signal.SIGTERM
        assert not _running(child)
        assert marked_processes(token) == {}
    finally:
        for pid in (parent.pid, child):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        parent.stdout.close()


def test_a_process_of_another_launch_is_left_alone():
    mine, theirs = uuid.uuid4().hex, uuid.uuid4().hex
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={**os.environ, MARKER: theirs},
        start_new_session=True,
    )
    try:
        assert set(marked_processes(theirs)) == {other.pid}
        stop_all(os.getpid() + 10**7, mine, grace_s=0.2)  # no such group
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
