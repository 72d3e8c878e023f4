"""A long-lived worker per SuperNode: TensorFlow, the data and the models stay warm.

In a deployment Flower starts a fresh ``flwr-clientapp`` process for every message.
Importing TensorFlow and the app, loading the node's data and building and tracing
the model cost most of a round there (``BENCHMARKS.md``, "Deployment"). With the
run-config key ``warm-worker`` on (the default), the ClientApp process stays thin: it
imports Flower and this module only, and hands the message and its ``Context`` to
the node's worker, which runs the app (:data:`fl_app.client_app.local_app`) in a
process that keeps its imports and caches between messages, and sends back the
reply and the updated ``context.state``. The node's state still lives in
``context.state`` (and on disk through :mod:`fl_app.client.node_state`): the worker
keeps
nothing of a message but process-wide caches (data partitions, compiled models),
the same caches a Ray worker keeps in simulation.

Lifecycle and security:

- The worker is started by the first message that finds none (the message waits
  for it) and listens on a Unix socket ``node-<node id>-<code digest>.sock`` in an
  owner-only directory (``$XDG_RUNTIME_DIR/fl-dnn`` or ``/tmp/fl-dnn-<uid>``, mode
  0700; a directory with another owner or looser modes is refused). It also checks
  every connection's peer user (``SO_PEERCRED``) and closes one from another user.
  Never a network port.
- Messages cross the socket as Flower's own protobuf serialization of ``Message``
  and ``Context`` (``flwr.common.serde``), never pickle.
- It exits when the process that started its ClientApp (the SuperNode's SuperExec,
  which exits with its SuperNode) is gone, or after ``warm-worker-idle-s`` without a
  message. It stays in the SuperNode's process group, so a signal to the group
  reaches it too.
- A worker that is gone (killed, crashed) is started again by the next message; a
  worker that dies while it handles a message fails that message (the reply is an
  error: one client's round), because the message may have trained or spent privacy
  budget and must not be run twice.
- Where no worker can be started or reached (no Unix sockets, a refused directory, a
  worker that exits at start-up), the ClientApp runs the message itself, as it did
  before, and logs why.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fl_app.client.warm_link import (
    ERROR,
    OK,
    decode,
    encode,
    recv_frame,
    send_frames,
)
from fl_app.core import timeline

log = logging.getLogger(__name__)


# --- the worker side --------------------------------------------------------------


def _peer_uid(conn: socket.socket) -> int | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None  # not Linux: the directory's mode is the only guard
    creds = conn.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    _, uid, _ = struct.unpack("3i", creds)
    return uid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_socket(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def handle(
    conn: socket.socket, app, on_new_run: Callable[[int], None] | None = None
) -> int | None:
    """Serve one request on ``conn`` with ``app`` (a ``ClientApp``).

    Returns the request's run id (``None`` for a refused connection), after calling
    ``on_new_run(run_id)`` first when given.
    """
    uid = _peer_uid(conn)
    if uid is not None and uid != os.getuid():
        log.warning(
            "refused a connection from uid %d (this worker is %d)", uid, os.getuid()
        )
        send_frames(conn, ERROR, b"refused: another user's process")
        return None
    message, context = decode(recv_frame(conn), recv_frame(conn))
    timeline.mark("worker_received", node=context.node_id)
    if on_new_run is not None:
        on_new_run(context.run_id)
    try:
        reply = app(message=message, context=context)
    except Exception as err:  # the app's own failure goes back as the message's error
        log.exception("the ClientApp raised")
        send_frames(conn, ERROR, f"{type(err).__name__}: {err}".encode())
        return context.run_id
    send_frames(conn, OK, *encode(reply, context))
    return context.run_id


class RunScope:
    """Drop the compiled models when messages of another run arrive.

    The model cache is keyed by everything that changes the graph, so it is never
    wrong across runs, but a long-lived worker serving run after run (a sweep over a
    deployment) would keep every run's models: it keeps the current run's only.
    """

    def __init__(self, clear: Callable[[], None]) -> None:
        self.clear = clear
        self.run_id: int | None = None

    def __call__(self, run_id: int) -> None:
        """Note the run of the message about to run; clear on a change."""
        if self.run_id is not None and run_id != self.run_id:
            log.info(
                "run %d after run %d: dropping the cached models", run_id, self.run_id
            )
            self.clear()
        self.run_id = run_id


def serve(
    path: Path,
    idle_s: float,
    watch_pid: int | None,
    app=None,
    on_new_run: Callable[[int], None] | None = None,
) -> None:
    """Listen on ``path``; run each message through ``app`` until told to stop.

    ``app`` defaults to :data:`fl_app.client_app.local_app`, with TensorFlow and the
    client's modules imported before the worker listens, and the compiled models
    kept for the current run only (:class:`RunScope`).
    """
    if app is None:
        from fl_app.client_app import load_features, local_app
        from fl_app.ml.training import clear_model_cache

        load_features()
        app, on_new_run = local_app, RunScope(clear_model_cache)
        # a stop signal (the SuperNode's process group) leaves through the finally
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bound and listening under another name first, then renamed into place: a
    # client that sees ``path`` can connect (between bind and listen it would be
    # refused, and a starter would take the socket for a dead worker's)
    pending = path.with_suffix(".new")
    pending.unlink(missing_ok=True)
    old_mask = os.umask(0o177)
    try:
        server.bind(str(pending))
    finally:
        os.umask(old_mask)
    server.listen(8)
    inode = pending.stat().st_ino
    os.replace(pending, path)  # the same inode, now at ``path`` (replacing a stale one)
    server.settimeout(1.0)
    pid_file = path.with_suffix(".pid")
    pid_file.write_text(str(os.getpid()))
    log.info("warm worker %d listening on %s", os.getpid(), path)
    last = time.monotonic()
    try:
        while True:
            if watch_pid is not None and not _alive(watch_pid):
                log.info("the SuperNode's process %d is gone: exiting", watch_pid)
                return
            if idle_s > 0 and time.monotonic() - last > idle_s:
                log.info("idle for %.0f s: exiting", idle_s)
                return
            if not _is_socket(path, inode):
                log.info("socket %s removed or replaced: exiting", path)
                return
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                try:
                    handle(conn, app, on_new_run)
                except (OSError, EOFError, ValueError) as err:
                    log.warning("dropped a request: %s", err)
            last = time.monotonic()
    finally:
        server.close()
        if _is_socket(path, inode):  # leave a newer worker's socket alone
            path.unlink(missing_ok=True)
            pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """Run ``python -m fl_app.deploy.warm_worker --socket PATH [--idle-s S]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--idle-s", type=float, default=600.0)
    parser.add_argument("--watch-pid", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s warm-worker: %(message)s"
    )
    serve(args.socket, args.idle_s, args.watch_pid)


if __name__ == "__main__":
    main()
