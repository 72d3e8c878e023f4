"""Take a launcher's Flower processes down with it, however the launcher dies.

``LocalSuperLink`` starts ``flower-superlink`` in a session of its own (so it can be
stopped as a group), which also means a SIGKILL of the launcher's process group
leaves the SuperLink running, and with it the run: ``flwr-simulation`` and Ray
workers go on training and writing to the run's output directory. Every process the
SuperLink starts inherits :data:`MARKER` in its environment, Ray's daemons included,
which start sessions of their own.

``python -m fl_app.deploy.watchdog PGID TOKEN`` runs beside the SuperLink, in a third
session, and blocks reading its stdin, a pipe whose write end only the launcher
holds. When the launcher exits for any reason the pipe closes; unless the launcher
said ``done`` first (a normal stop, which stops the processes itself), the watchdog
stops the SuperLink's group and every process carrying ``MARKER=TOKEN``: SIGTERM,
then SIGKILL after a grace period. Descendants of marked processes are stopped too
(see :func:`marked_processes`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

MARKER = "FL_DNN_LAUNCH"
GRACE_S = 5.0


def _stat(pid: int | str) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name, or None if gone.

    Index 0 is the state, 1 the parent's pid, 19 the start time (clock ticks).
    """
    try:
        # the command name in parentheses may itself hold ") "
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def marked_processes(token: str) -> dict[int, str]:
    """Return marked processes and their descendants (not this one): pid → start.

    A process is marked when its environment holds ``MARKER=token``. Descendants
    count too, because a process may overwrite its environment block: Ray's
    ``setproctitle`` zeroes it unless ``SPT_NOENV`` is set (the launcher sets it),
    which hid Ray's dashboard and runtime-env agents from a marker-only scan.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs (not Linux): only the group is stopped
        return {}
    needle = f"{MARKER}={token}".encode()
    starts: dict[int, str] = {}
    children: dict[int, list[int]] = {}
    stack: list[int] = []  # the marked ones, then their descendants
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        fields = _stat(entry.name)
        if fields is None:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        pid = int(entry.name)
        starts[pid] = fields[19]
        children.setdefault(int(fields[1]), []).append(pid)
        if needle in environ.split(b"\0"):
            stack.append(pid)
    found: dict[int, str] = {}
    while stack:
        pid = stack.pop()
        if pid not in found:
            found[pid] = starts[pid]
            stack.extend(children.get(pid, ()))
    return found


def _alive(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process that started at ``started``."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def stop_all(
    pgid: int, token: str, grace_s: float = GRACE_S, kill_s: float = 5.0
) -> None:
    """Stop group ``pgid`` and every marked process: SIGTERM, then SIGKILL.

    Every process seen in a scan is remembered (with its start time, so a reused
    pid is never signalled), so one whose parent died in between is still stopped.
    SIGKILL sweeps repeat until nothing is left or ``kill_s`` has passed: a process
    may start a child between a sweep's scan and its signal.
    """
    seen: dict[int, str] = {}

    def left() -> list[int]:
        seen.update(marked_processes(token))
        for pid, started in list(seen.items()):
            if not _alive(pid, started):
                del seen[pid]
        return list(seen)

    def sweep(sig: signal.Signals) -> bool:
        # scan first: a signalled process's environment soon reads empty, and its
        # children are handed to init, out of reach of the descent
        pids = left()
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return bool(pids)

    deadline = time.monotonic() + grace_s
    if sweep(signal.SIGTERM):
        while time.monotonic() < deadline and left():
            time.sleep(0.1)
    deadline = time.monotonic() + kill_s
    while sweep(signal.SIGKILL) and time.monotonic() < deadline:
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
