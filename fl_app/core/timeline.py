"""Timestamps of a message's way through a node, for breaking a round down.

Off unless ``FL_DNN_TIMELINE`` names a file: then :func:`mark` appends one JSON line
per event (``{"t": <unix time>, "event": ..., "pid": ..., **fields}``) to it, from
whichever process calls it (the ServerApp, a ClientApp, a warm worker).
``benchmarks/bench_deployment.py`` sets it and joins the marks with the SuperNodes'
own DEBUG log lines into the breakdown of a round.
"""

from __future__ import annotations

import json
import os
import time

ENV_VAR = "FL_DNN_TIMELINE"


def enabled() -> bool:
    """Whether marks are recorded in this process."""
    return bool(os.environ.get(ENV_VAR))


def mark(event: str, **fields: object) -> None:
    """Append ``event`` with the time now (and ``fields``) to the timeline file."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return
    line = json.dumps({"t": time.time(), "event": event, "pid": os.getpid(), **fields})
    # one write with O_APPEND: lines from concurrent processes do not interleave
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def process_start_time(pid: int | None = None) -> float | None:
    """Return when process ``pid`` (default: this one) started, as unix time.

    Read from ``/proc`` (Linux); ``None`` elsewhere.
    """
    try:
        with open(f"/proc/{pid or os.getpid()}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        now = time.time()
    except (OSError, IndexError, ValueError):
        return None
    # field 22 of stat (index 19 after the command name): start, in clock ticks
    # since boot; /proc/uptime keeps it to 10 ms (/proc/stat's btime is whole seconds)
    return now - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
