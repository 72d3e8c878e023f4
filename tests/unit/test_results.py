"""Run records: metrics.jsonl phases, progress lines, TensorBoard scalars."""

import math

import pytest

from fl_app.core.results import RunRecorder, format_phase_round, read_rows, scalars


def tensorboard_scalars(log_dir):
    """Read back ``{tag: {step: value}}`` with TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )
    from tensorboard.util.tensor_util import make_ndarray

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        out[tag] = {
            e.step: float(make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)
        }
    return out


def test_scalars_keep_finite_numbers_and_leave_the_rest():
    row = {
        "round": 3,
        "central_accuracy": 0.5,
        "bytes_up": 10,
        "federated_loss": math.nan,
        "epsilon_client_level": None,
        "declined": "text",
        "secagg": True,
        "clients": [{"bytes_up": 5}],
    }
    assert scalars(row) == {"central_accuracy": 0.5, "bytes_up": 10.0}
    assert scalars({"round": 1, "gan_d_loss": 1.5}, "gan/") == {"gan/gan_d_loss": 1.5}


def test_every_round_goes_to_tensorboard_and_phases_stay_apart(tmp_path):
    recorder = RunRecorder(tmp_path, num_rounds=2)
    recorder.write_phase_round(
        {"phase": "gan", "round": 1, "gan_d_loss": 1.25, "wall_time_s": 0.5}, 1
    )
    for r, acc in ((1, 0.5), (2, 0.75)):
        recorder.write_round(
            {"round": r, "central_accuracy": acc, "bytes_up": 100 * r, "clients": []}
        )
    recorder.write_summary(
        {"final_accuracy": 0.75, "accuracy_by_width": {"1.0": 0.75, "0.5": 0.25}}
    )
    assert [r["round"] for r in read_rows(tmp_path)] == [1, 2]
    assert read_rows(tmp_path, "gan")[0]["gan_d_loss"] == 1.25
    found = tensorboard_scalars(tmp_path / "tensorboard")
    assert found["central_accuracy"] == {1: 0.5, 2: 0.75}
    assert found["bytes_up"] == {1: 100.0, 2: 200.0}
    assert found["gan/gan_d_loss"] == {1: 1.25}
    assert found["accuracy_by_width/0.5"] == {2: pytest.approx(0.25)}
    assert "gan/round" not in found and "round" not in found


def test_a_resumed_recorder_rewrites_the_kept_rounds_and_the_curves_go_on(tmp_path):
    killed = RunRecorder(tmp_path, num_rounds=4)
    for r in (1, 2, 3):  # round 3 was written after the last checkpoint (round 2)
        killed.write_round({"round": r, "central_accuracy": r / 10, "clients": []})
    kept = killed.rows[:2]
    resumed = RunRecorder(tmp_path, num_rounds=4, rows=kept)
    for r in (3, 4):
        resumed.write_round({"round": r, "central_accuracy": r / 5, "clients": []})
    assert [r["central_accuracy"] for r in read_rows(tmp_path)] == [0.1, 0.2, 0.6, 0.8]
    found = tensorboard_scalars(tmp_path / "tensorboard")
    assert found["central_accuracy"] == pytest.approx({1: 0.1, 2: 0.2, 3: 0.6, 4: 0.8})


def test_a_phase_round_progress_line():
    line = format_phase_round(
        {
            "phase": "gan",
            "round": 2,
            "gan_d_loss": 1.0,
            "gan_g_loss": 2.0,
            "epsilon_gan_max": 3.0,
            "wall_time_s": 1.5,
            "num_rejected": 1,
        },
        5,
    )
    assert line == (
        "gan round 2/5 | gan d loss 1.0000 | gan g loss 2.0000 | epsilon 3.00 | "
        "1.50s | rejected 1"
    )


def test_a_deadline_grid_drops_late_replies_and_counts_them():
    from types import SimpleNamespace

    from fl_app.server.grids import DeadlineGrid

    def message(dst):
        return SimpleNamespace(
            metadata=SimpleNamespace(dst_node_id=dst, message_id=f"m{dst}")
        )

    def reply(m, src):
        return SimpleNamespace(
            metadata=SimpleNamespace(
                src_node_id=src, reply_to_message_id=m.metadata.message_id
            )
        )

    class Slow:
        """Node 2 never answers in time; node 4 is answered for by the SuperLink."""

        def __init__(self):
            self.timeouts = []

        def get_node_ids(self):
            return [1, 2, 3]

        def send_and_receive(self, messages, *, timeout=None):
            self.timeouts.append(timeout)
            return [
                # the SuperLink's error reply for an unavailable node: from node 0
                reply(m, 0 if m.metadata.dst_node_id == 4 else m.metadata.dst_node_id)
                for m in messages
                if m.metadata.dst_node_id != 2
            ]

    inner = Slow()
    grid = DeadlineGrid(inner, 7.5)
    sent = [message(1), message(2), message(3), message(4)]
    replies = grid.send_and_receive(iter(sent))
    assert [r.metadata.src_node_id for r in replies] == [1, 3, 0]
    grid.send_and_receive([message(2)], timeout=1.0)  # an explicit timeout wins
    assert inner.timeouts == [7.5, 1.0]
    # node 2 twice; node 4 had its (error) reply in time
    assert grid.pop_timeouts() == 2 and grid.pop_timeouts() == 0
    assert grid.get_node_ids() == [1, 2, 3]  # everything else is the grid's


class RegisteringState:
    """A SuperLink state whose nodes register as they are counted.

    The i-th query sees ``counts[i]`` nodes (the last count from then on).
    """

    def __init__(self, counts):
        self.counts = counts
        self.calls = 0

    def get_run_info(self, run_ids):
        return [object() for _ in run_ids]

    def get_nodes(self, run_id):
        self.calls += 1
        return set(range(self.counts[min(self.calls, len(self.counts)) - 1]))


@pytest.mark.parametrize(
    ("counts", "calls", "error"),
    [
        ([3, 6, 6, 10], 4, None),  # Flower's simulation still registering its nodes
        ([5], None, r"is 10 but 5 SuperNode\(s\) connected;"),  # too few, settled
        ([12], 1, r"is 10 but 12 SuperNode\(s\) connected;"),  # too many: at once
    ],
    ids=["registering", "too-few", "too-many"],
)
def test_a_simulation_waits_for_its_nodes_while_they_register(
    monkeypatch, counts, calls, error
):
    # Prepare: Flower's own simulation grid over a state whose nodes register.
    from types import SimpleNamespace

    from flwr.supercore.run import Run
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from fl_app.server import grids

    monkeypatch.setattr(grids, "SIMULATION_SETTLE_S", 0.3)
    state = RegisteringState(counts)
    grid = InMemoryGrid(SimpleNamespace(state=lambda: state))
    grid.set_run(Run.create_empty(1))
    # Execute / Assert: the wait ends once the count is right; a wrong count that
    # stopped changing, or one too large, fails without waiting for the timeout
    # (a simulation's message names no timeout)
    if error is None:
        grids.wait_for_nodes(grid, 10, timeout_s=5)
    else:
        with pytest.raises(RuntimeError, match=error):
            grids.wait_for_nodes(grid, 10, timeout_s=5)
    if calls is not None:
        assert state.calls == calls


def test_a_deployment_takes_more_nodes_and_waits_for_too_few_until_the_timeout():
    # A deployment's grid (not Flower's simulation grid): extra SuperNodes are fine
    class Deployment:
        def __init__(self, count):
            self.count = count

        def get_node_ids(self):
            return list(range(self.count))

    from fl_app.server import grids

    grids.wait_for_nodes(Deployment(12), 10, timeout_s=0)
    with pytest.raises(
        RuntimeError, match=r"is 10 but 5 SuperNode\(s\) connected within 0s;"
    ):
        grids.wait_for_nodes(Deployment(5), 10, timeout_s=0)


def test_partition_ids_are_asked_in_batches_and_every_node_is_mapped():
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, Message, RecordDict

    from fl_app.core import exchange
    from fl_app.core.config import parse_run_config
    from tests.inprocess import server_identity

    class Grid:
        """600 nodes; node n holds partition 599 - n; each exchange is recorded."""

        def __init__(self):
            self.batches = []

        def get_node_ids(self):
            return list(range(1, 601))

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            self.batches.append(len(messages))
            replies = []
            for m in messages:
                info = ConfigRecord({"partition_id": 600 - m.metadata.dst_node_id})
                reply = Message(RecordDict({"info": info}), reply_to=m)
                reply.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
                replies.append(reply)
            return replies

    grid = Grid()
    run = SimpleNamespace(cfg=parse_run_config({}), grid=grid)
    with server_identity(3):
        found = exchange.NodeExchange(run)
        found.discover(600)
    assert grid.batches == [exchange.DISCOVER_BATCH] * 2 + [600 - 2 * 256]
    assert found.partitions == {n: 600 - n for n in range(1, 601)}
