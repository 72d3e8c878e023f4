"""The warm worker's socket, wire format, lifecycle and refusals (no Flower run)."""

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fl_app import client_app
from fl_app.client import warm_link
from fl_app.core.config import default_run_config
from fl_app.deploy import warm_worker
from tests.inprocess import server_identity

NOBODY = 65534


def message_and_context(run_config=None):
    with server_identity(7):
        message = Message(
            RecordDict({"arrays": ArrayRecord([np.arange(6, dtype=np.float32)])}),
            dst_node_id=11,
            message_type="train",
            group_id="1",
        )
    message.metadata.__dict__["_message_id"] = message.object_id
    context = Context(
        run_id=7,
        node_id=11,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict({"seen": ConfigRecord({"count": 1})}),
        run_config=dict(run_config or default_run_config()),
    )
    return message, context


def counting_app() -> ClientApp:
    """A ClientApp that doubles the arrays and counts its calls in the node state."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if msg.content.config_records.get("fail"):
            raise ValueError("the app failed")
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        context.state["seen"]["count"] = int(context.state["seen"]["count"]) + 1
        return Message(
            RecordDict({"arrays": ArrayRecord([2 * a for a in arrays])}), reply_to=msg
        )

    return app


@pytest.fixture
def worker_dir(tmp_path, monkeypatch):
    path = tmp_path / "workers"
    path.mkdir(mode=0o700)
    monkeypatch.setenv(warm_link.DIR_ENV, str(path))
    return path


def serve_in_thread(path, app, idle_s=0.0, watch_pid=None, on_new_run=None):
    thread = threading.Thread(
        target=warm_worker.serve,
        args=(path, idle_s, watch_pid, app, on_new_run),
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, "the worker did not listen"
        time.sleep(0.01)
    return thread


def stop(path, thread):
    path.unlink()  # a worker whose socket is gone exits within its 1 s accept timeout
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_frames_carry_flowers_records_both_ways():
    message, context = message_and_context()
    left, right = socket.socketpair()
    with left, right:
        warm_link.send_frames(left, *warm_link.encode(message, context))
        got, got_context = warm_link.decode(
            warm_link.recv_frame(right), warm_link.recv_frame(right)
        )
    assert got.metadata.message_id == message.metadata.message_id
    assert got.metadata.message_type == "train" and got.metadata.group_id == "1"
    np.testing.assert_array_equal(
        got.content["arrays"].to_numpy_ndarrays()[0], np.arange(6)
    )
    assert got_context.state["seen"]["count"] == 1
    assert got_context.node_config == context.node_config
    assert got_context.run_config == context.run_config


def test_a_frame_cut_short_is_an_error_not_a_short_read():
    left, right = socket.socketpair()
    with right:
        left.sendall(warm_link._HEADER.pack(100) + b"x" * 10)
        left.close()
        with pytest.raises(EOFError):
            warm_link.recv_frame(right)


def test_the_worker_answers_and_the_state_comes_back(worker_dir):
    path = worker_dir / "node.sock"
    thread = serve_in_thread(path, counting_app())
    try:
        for expected in (2, 3):  # the state goes through the worker and back
            message, context = message_and_context()
            context.state["seen"]["count"] = expected - 1
            reply = warm_link.call(path, message, context, idle_s=0)
            assert context.state["seen"]["count"] == expected
            assert reply.metadata.reply_to_message_id == message.metadata.message_id
            np.testing.assert_array_equal(
                reply.content["arrays"].to_numpy_ndarrays()[0], 2 * np.arange(6)
            )
        # the app's own failure comes back as the message's error, state untouched
        message, context = message_and_context()
        message.content["fail"] = ConfigRecord({"yes": True})
        with pytest.raises(warm_link.WorkerRefused, match="the app failed"):
            warm_link.call(path, message, context, idle_s=0)
        assert context.state["seen"]["count"] == 1
        # the socket is the owner's only
        assert (path.stat().st_mode & 0o777) == 0o600
    finally:
        stop(path, thread)


def test_the_worker_drops_its_cached_models_when_another_run_begins(worker_dir):
    path = worker_dir / "node.sock"
    cleared = []
    scope = warm_worker.RunScope(lambda: cleared.append(scope.run_id))
    thread = serve_in_thread(path, counting_app(), on_new_run=scope)
    try:
        for run_id in (7, 7, 8, 8, 7):
            message, context = message_and_context()
            context.run_id = run_id
            warm_link.call(path, message, context, idle_s=0)
        # cleared as run 8 began (after run 7) and as run 7 came back
        assert cleared == [7, 8] and scope.run_id == 7
    finally:
        stop(path, thread)


def test_a_worker_gone_mid_message_fails_that_message(worker_dir):
    path = worker_dir / "node.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def die_after_reading():  # like a worker killed while it trains
        conn, _ = listener.accept()
        warm_link.recv_frame(conn)
        conn.close()

    threading.Thread(target=die_after_reading, daemon=True).start()
    message, context = message_and_context()
    with pytest.raises(warm_link.WorkerLost, match="restarted by the next message"):
        warm_link.call(path, message, context, idle_s=0)
    assert context.state["seen"]["count"] == 1
    listener.close()


def test_the_worker_exits_when_idle_or_when_its_supernode_is_gone(worker_dir):
    idle = serve_in_thread(worker_dir / "idle.sock", counting_app(), idle_s=0.3)
    idle.join(timeout=5)
    assert not idle.is_alive() and not (worker_dir / "idle.sock").exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = threading.Thread(
        target=warm_worker.serve,
        args=(worker_dir / "orphan.sock", 0, gone.pid, counting_app()),
        daemon=True,
    )
    orphan.start()
    orphan.join(timeout=5)
    assert not orphan.is_alive() and not (worker_dir / "orphan.sock").exists()


def test_a_socket_directory_others_may_enter_is_refused(tmp_path, monkeypatch):
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    monkeypatch.setenv(warm_link.DIR_ENV, str(loose))
    with pytest.raises(warm_link.WorkerUnavailable, match="mode 755"):
        warm_link.socket_dir()


def test_the_clientapp_runs_the_message_itself_without_a_worker(
    tmp_path, monkeypatch, caplog
):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    monkeypatch.setenv(warm_link.DIR_ENV, str(loose))
    monkeypatch.setattr(client_app, "in_clientapp_process", lambda: True)
    message, context = message_and_context()
    ran = []

    def call_next(msg, ctx):
        ran.append(msg)
        return Message(RecordDict(), reply_to=msg)

    with caplog.at_level(logging.WARNING, logger="fl_app.client_app"):
        client_app.warm_worker_mod(message, context, call_next)
    assert ran == [message]
    assert "runs in the ClientApp process" in caplog.text
    # and with the worker switched off it never tries one
    caplog.clear()
    context.run_config["warm-worker"] = False
    client_app.warm_worker_mod(message, context, call_next)
    assert len(ran) == 2 and not caplog.text


OTHER_PYTHON = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")


@pytest.mark.skipif(
    os.getuid() != 0 or OTHER_PYTHON is None,
    reason="needs root (to act as another user) and a python3 another user may run",
)
def test_another_users_process_is_refused(monkeypatch):
    # a directory of its own under /tmp: pytest's own is closed to other users
    worker_dir = Path(tempfile.mkdtemp(prefix="fl-dnn-test-"))
    monkeypatch.setenv(warm_link.DIR_ENV, str(worker_dir))
    path = worker_dir / "node.sock"
    thread = serve_in_thread(path, counting_app())
    connect = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except PermissionError:\n"
        "    print('no entry'); sys.exit()\n"
        "s.settimeout(5)\n"
        "data = b''\n"
        "while chunk := s.recv(64):  # a stream: the header and frame may split\n"
        "    data += chunk\n"
        "print(data[8:])\n"
    )

    def as_nobody():
        return subprocess.run(
            [OTHER_PYTHON, "-c", connect, str(path)],
            user=NOBODY,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout

    try:
        # the owner-only directory keeps another user out
        assert as_nobody().strip() == "no entry"
        # and where the modes let one in, the worker checks the peer and refuses
        worker_dir.chmod(0o711)
        path.chmod(0o777)
        assert "refused: another user" in as_nobody()
        # the owner is still served
        message, context = message_and_context()
        warm_link.call(path, message, context, idle_s=0)
        assert context.state["seen"]["count"] == 2
    finally:
        worker_dir.chmod(0o700)
        stop(path, thread)
        shutil.rmtree(worker_dir, ignore_errors=True)


def test_the_idle_timeout_setting_reaches_the_worker_it_starts(worker_dir, monkeypatch):
    started = []

    class Exited:
        returncode = 3

        def __init__(self, command, **kwargs):
            started.append((command, kwargs))

        def poll(self):
            return self.returncode

    monkeypatch.setattr(warm_link.subprocess, "Popen", Exited)
    message, context = message_and_context(
        {**default_run_config(), "warm-worker-idle-s": 42.0}
    )
    monkeypatch.setattr(client_app, "in_clientapp_process", lambda: True)
    ran = []

    def call_next(msg, ctx):
        ran.append(msg)
        return Message(RecordDict(), reply_to=msg)

    client_app.warm_worker_mod(message, context, call_next)
    ((command, kwargs),) = started
    assert command[command.index("--idle-s") + 1] == "42.0"
    assert command[command.index("--watch-pid") + 1] == str(os.getppid())
    assert kwargs["stdin"] == subprocess.DEVNULL
    # the worker exited at start-up: the ClientApp ran the message itself
    assert ran == [message]
