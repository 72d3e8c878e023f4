"""Take a launcher's Flower processes down with it, however the launcher dies.

``LocalSuperLink`` starts ``flower-superlink`` in a session of its own (so it can be
stopped as a group), which also means a SIGKILL of the launcher's process group
leaves the SuperLink running, and with it the run: ``flwr-simulation`` and Ray
workers go on training and writing to the run's output directory. Every process the
SuperLink starts inherits :data:`MARKER` in its environment, Ray's daemons included,
which start sessions of their own.

``python -m fl_app.watchdog PGID TOKEN`` runs beside the SuperLink, in a third
session, and blocks reading its stdin, a pipe whose write end only the launcher
holds. When the launcher exits for any reason the pipe closes; unless the launcher
said ``done`` first (a normal stop, which stops the processes itself), the watchdog
stops the SuperLink's group and every process carrying ``MARKER=TOKEN``: SIGTERM,
then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

MARKER = "FL_DNN_LAUNCH"
GRACE_S = 5.0


def marked_processes(token: str) -> list[int]:
    """Return the pids whose environment has ``MARKER=token`` (not this process)."""
    needle = f"{MARKER}={token}".encode()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs (not Linux): only the group is stopped
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def stop_all(pgid: int, token: str, grace_s: float = GRACE_S) -> None:
    """Stop group ``pgid`` and every marked process: SIGTERM, then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in marked_processes(token):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and marked_processes(token):
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    """Wait for the launcher's pipe to close; stop what it left unless told done."""
    pgid, token = int(argv[0]), argv[1]
    said = sys.stdin.buffer.read()  # returns at EOF: the launcher has exited
    if said.strip() != b"done":
        stop_all(pgid, token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
