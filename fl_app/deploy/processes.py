"""Processes the launcher and local deployments start: ports, tools, groups.

Shared by :mod:`fl_app.deploy.launcher` (a private SuperLink) and
:mod:`fl_app.deploy.deployment` (a SuperLink with SuperNodes on this machine).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


class FlowerRunError(RuntimeError):
    """The Flower run failed, or could not be started or completed."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flwr_tool(name: str) -> str:
    """Return the path of a Flower CLI next to this interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FlowerRunError(f"'{name}' was not found; is flwr installed (uv sync)?")
    return found


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Stop a process started with ``start_new_session=True`` and its whole group.

    The group id is the leader's pid, and the group outlives its leader: a SuperNode
    that already exited (refused by the SuperLink, say) can leave its SuperExec
    child behind, which must be stopped too.
    """
    pgid = process.pid
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            process.poll()  # reap the leader: a zombie still counts as a member
            if not _group_alive(pgid):
                return
            time.sleep(0.1)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.warning("flower-superlink (pid %d) did not exit", process.pid)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: ask the kernel, which counts zombies too
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # after "(command) ": state, ppid, pgrp, ...
            state, _, group = (
                (entry / "stat").read_text().rsplit(") ", 1)[1].split()[:3]
            )
        except (OSError, IndexError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False
