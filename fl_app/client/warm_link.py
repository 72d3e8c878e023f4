"""The ClientApp's side of the warm worker: find or start it, and hand it a message.

The worker itself (its serve loop and ``python -m`` entry) is
``fl_app.deploy.warm_worker``, which describes the design; this module is what a
thin ``flwr-clientapp`` process imports: the socket's place and protocol
(length-prefixed frames of Flower's protobuf serialization), starting the worker
by module name, and :func:`call`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flwr.app import Context, Message

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
    from fl_app.core.checkpoint import code_version

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
    """Start the worker (``python -m fl_app.deploy.warm_worker``) for ``path``."""
    import fl_app

    code_root = str(Path(fl_app.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (code_root, env.get("PYTHONPATH", "")) if p
    )
    command = [
        sys.executable,
        "-m",
        "fl_app.deploy.warm_worker",
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
