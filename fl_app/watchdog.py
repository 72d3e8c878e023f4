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


def _read_proc(entry: Path, token_needle: bytes) -> tuple[int, str, bool] | None:
    """``(ppid, start time, marked)`` of one /proc entry, or None if it is gone."""
    try:
        # the command name in parentheses may itself hold ") "
        fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        environ = (entry / "environ").read_bytes()
    except (OSError, IndexError):  # gone, or not ours
        return None
    return int(fields[1]), fields[19], token_needle in environ.split(b"\0")


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
    table: dict[int, tuple[int, str, bool]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            row = _read_proc(entry, needle)
            if row is not None:
                table[int(entry.name)] = row
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    stack = [pid for pid, (_, _, marked) in table.items() if marked]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            stack.extend(children.get(pid, ()))
    return found


def _alive(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process that started at ``started``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[19] == started and fields[0] != "Z"


def stop_all(
    pgid: int, token: str, grace_s: float = GRACE_S, kill_s: float = 5.0
) -> None:
    """Stop group ``pgid`` and every marked process: SIGTERM, then SIGKILL.

    Every process seen in a sweep is remembered (with its start time, so a reused
    pid is never signalled), so one whose parent died in between is still stopped.
    SIGKILL sweeps repeat until nothing is left or ``kill_s`` has passed: a process
    may start a child between a sweep's scan and its signal.
    """
    seen: dict[int, str] = {}

    def sweep(sig: signal.Signals) -> bool:
        # scan first: a signalled process's environment soon reads empty, and its
        # children are handed to init, out of reach of the descent
        seen.update(marked_processes(token))
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        left = False
        for pid, started in list(seen.items()):
            if not _alive(pid, started):
                del seen[pid]
                continue
            left = True
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return left

    deadline = time.monotonic() + grace_s
    if sweep(signal.SIGTERM):
        while time.monotonic() < deadline:
            seen.update(marked_processes(token))
            if not any(_alive(pid, started) for pid, started in seen.items()):
                break
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
