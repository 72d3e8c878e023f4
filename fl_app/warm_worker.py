"""A long-lived worker per SuperNode: TensorFlow, the data and the models stay warm.

In a deployment Flower starts a fresh ``flwr-clientapp`` process for every message.
Importing TensorFlow and the app, loading the node's data and building and tracing
the model cost most of a round there (``BENCHMARKS.md``, "Deployment"). With the
run-config key ``warm-worker`` on (the default), the ClientApp process stays thin: it
imports Flower and this module only, and hands the message and its ``Context`` to
the node's worker, which runs the app (:data:`fl_app.client_app.local_app`) in a
process that keeps its imports and caches between messages, and sends back the
reply and the updated ``context.state``. The node's state still lives in
``context.state`` (and on disk through :mod:`fl_app.node_state`): the worker keeps
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
import fcntl
import hashlib
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message

from fl_app import timeline

log = logging.getLogger(__name__)

DIR_ENV = "FL_DNN_WORKER_DIR"  # overrides the socket directory (tests)
START_TIMEOUT_S = 180.0  # a worker's start-up: TensorFlow's import on a busy machine
_HEADER = struct.Struct("!Q")
_MAX_FRAME = 1 << 34  # 16 GiB: a bound on what a peer may announce
OK, ERROR = b"ok", b"error"


class WorkerUnavailable(RuntimeError):
    """No worker could be started or reached; the message was not sent."""


class WorkerLost(RuntimeError):
    """The worker went away while it handled a message (the message failed)."""


class WorkerRefused(RuntimeError):
    """The worker refused the request or the app raised inside it."""


def socket_dir() -> Path:
    """Return the owner-only directory of this user's worker sockets (created 0700).

    Raises
    ------
    WorkerUnavailable
        When the directory belongs to another user or others may enter it.
    """
    override = os.environ.get(DIR_ENV)
    if override:
        path = Path(override)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "fl-dnn"
    else:
        path = Path(tempfile.gettempdir()) / f"fl-dnn-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as err:
        raise WorkerUnavailable(f"socket directory {path}: {err}") from err
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise WorkerUnavailable(
            f"socket directory {path} is not a directory owned by this user"
        )
    if info.st_mode & 0o077:
        raise WorkerUnavailable(
            f"socket directory {path} has mode {stat.S_IMODE(info.st_mode):o}; "
            "it must be 700 (owner only)"
        )
    return path


def code_digest() -> str:
    """Digest of the app's code, so a worker never serves a different version."""
    from fl_app.checkpoint import code_version

    return hashlib.sha256(code_version().encode()).hexdigest()[:12]


def socket_path(node_id: int) -> Path:
    """Return the socket of the worker of node ``node_id`` for this code version."""
    return socket_dir() / f"node-{node_id}-{code_digest()}.sock"


# --- framing: 8-byte big-endian length, then the bytes --------------------------


def send_frames(conn: socket.socket, *frames: bytes) -> None:
    """Send each frame with its length."""
    for frame in frames:
        conn.sendall(_HEADER.pack(len(frame)))
        conn.sendall(frame)


def recv_frame(conn: socket.socket) -> bytes:
    """Receive one frame; ``EOFError`` when the peer closes before it is whole."""
    (size,) = _HEADER.unpack(_recv_exact(conn, _HEADER.size))
    if size > _MAX_FRAME:
        raise ValueError(f"frame of {size} bytes announced")
    return _recv_exact(conn, size)


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = conn.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError("connection closed")
        got += n
    return bytes(buffer)


def encode(message: Message, context: Context) -> tuple[bytes, bytes]:
    """Serialize a message and a context with Flower's own protobuf serde."""
    from flwr.common.serde import context_to_proto, message_to_proto

    return (
        message_to_proto(message).SerializeToString(),
        context_to_proto(context).SerializeToString(),
    )


def decode(message: bytes, context: bytes) -> tuple[Message, Context]:
    """Inverse of :func:`encode`."""
    from flwr.common.serde import context_from_proto, message_from_proto
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    proto_message, proto_context = ProtoMessage(), ProtoContext()
    proto_message.ParseFromString(message)
    proto_context.ParseFromString(context)
    return message_from_proto(proto_message), context_from_proto(proto_context)


# --- the ClientApp side ----------------------------------------------------------


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    except OSError as err:
        conn.close()
        raise WorkerUnavailable(f"cannot connect to {path}: {err}") from err
    return conn


def connect_or_start(path: Path, idle_s: float) -> socket.socket:
    """Connect to the worker at ``path``, starting it first if there is none.

    Raises
    ------
    WorkerUnavailable
        When the worker cannot be started or exits before it listens.
    """
    conn = _connect(path)
    if conn is not None:
        return conn
    # one starter at a time per socket; the others wait on the lock, then connect
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(path)
        if conn is not None:
            return conn
        path.unlink(missing_ok=True)  # a dead worker's socket
        process = start_worker(path, idle_s)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            conn = _connect(path)
            if conn is not None:
                return conn
            if process.poll() is not None:
                raise WorkerUnavailable(
                    f"the worker exited at start-up (code {process.returncode}); "
                    f"see {path.with_suffix('.log')}"
                )
            time.sleep(0.05)
        process.kill()
        raise WorkerUnavailable(f"the worker did not listen within {START_TIMEOUT_S}s")


def start_worker(path: Path, idle_s: float) -> subprocess.Popen[bytes]:
    """Start ``python -m fl_app.warm_worker`` for ``path``, importing this code."""
    import fl_app

    code_root = str(Path(fl_app.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (code_root, env.get("PYTHONPATH", "")) if p
    )
    command = [
        sys.executable,
        "-m",
        "fl_app.warm_worker",
        "--socket",
        str(path),
        "--idle-s",
        str(idle_s),
        "--watch-pid",
        str(os.getppid()),
    ]
    with open(path.with_suffix(".log"), "ab") as out:
        return subprocess.Popen(
            command,
            env=env,
            cwd=code_root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def call(path: Path, message: Message, context: Context, idle_s: float) -> Message:
    """Have the worker at ``path`` handle ``message``; update ``context.state``.

    Raises
    ------
    WorkerUnavailable
        Before anything was sent (the caller may run the message itself).
    WorkerLost
        The connection broke after the message was sent.
    WorkerRefused
        The worker answered with an error (the app raised; the text says what).
    """
    frames = encode(message, context)
    conn = connect_or_start(path, idle_s)
    with conn:
        try:
            send_frames(conn, *frames)
            status = recv_frame(conn)
            if status == ERROR:
                raise WorkerRefused(recv_frame(conn).decode(errors="replace"))
            reply, new_context = decode(recv_frame(conn), recv_frame(conn))
        except (OSError, EOFError) as err:
            raise WorkerLost(
                f"the node's warm worker went away while it handled this message "
                f"({type(err).__name__}: {err}); it is restarted by the next message"
            ) from err
    context.state = new_context.state
    return reply


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
        from fl_app.training import clear_model_cache

        load_features()
        app, on_new_run = local_app, RunScope(clear_model_cache)
        # a stop signal (the SuperNode's process group) leaves through the finally
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)
    old_mask = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old_mask)
    inode = path.stat().st_ino
    server.listen(8)
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
    """``python -m fl_app.warm_worker --socket PATH [--idle-s S] [--watch-pid P]``."""
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
