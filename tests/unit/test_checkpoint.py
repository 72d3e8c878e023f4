"""Server checkpoints (core.checkpoint) and node state on disk (client.node_state)."""

import random

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    RecordDict,
)

from fl_app.client.node_state import (
    LINEAGE,
    RESTORED,
    RESUMED_FROM,
    NodeStateStore,
    node_state_mod,
)
from fl_app.core.checkpoint import (
    CheckpointError,
    RunLock,
    check_resumable,
    config_differences,
    flatten_arrays,
    latest_checkpoint,
    list_checkpoints,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from fl_app.core.config import ConfigError, parse_run_config
from fl_app.features.privacy.dpsgd import add_steps, steps_taken
from tests.inprocess import server_identity

CONFIG = {"num-rounds": 5, "seed": 1, "output-dir": "/x", "resume": ""}


def save(out, server_round, weights, keep=2, **meta):
    return save_checkpoint(
        out,
        server_round,
        flatten_arrays({"global": weights}),
        {"run_config": CONFIG, **meta},
        keep,
    )


def test_a_checkpoint_reads_back_what_was_written_and_only_the_last_are_kept(
    tmp_path,
):
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7], np.int64)]
    for r in (1, 2, 3):
        save(tmp_path, r, [w + r for w in weights], keep=2, extra={"r": r})
    assert [r for r, _ in list_checkpoints(tmp_path)] == [2, 3]
    # no temporary file is left beside them
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "round-00002.npz",
        "round-00003.npz",
    ]
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.round == 3 and checkpoint.meta["extra"] == {"r": 3}
    restored = checkpoint.group("global")
    assert [w.dtype for w in restored] == [np.float32, np.int64]
    for got, want in zip(restored, weights, strict=True):
        np.testing.assert_array_equal(got, want + 3)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupted_checkpoint_is_a_clear_error(tmp_path, damage):
    path = save(tmp_path, 4, [np.zeros(1000, np.float32)])
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":  # inside the stored array: the zip CRC no longer matches
        data[200] ^= 0xFF
    else:
        data = bytearray(b"not a checkpoint")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="round-00004.npz.*corrupted"):
        latest_checkpoint(tmp_path)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        latest_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        latest_checkpoint(tmp_path)


def test_resuming_under_another_config_names_the_keys_that_differ(tmp_path):
    save(tmp_path, 2, [np.zeros(2)])
    checkpoint = latest_checkpoint(tmp_path)
    # the rounds, resume and output-dir may change
    check_resumable(checkpoint, {**CONFIG, "num-rounds": 9, "resume": str(tmp_path)})
    assert config_differences(CONFIG, {**CONFIG, "seed": 2, "new-key": 1}) == [
        "new-key",
        "seed",
    ]
    with pytest.raises(CheckpointError, match=r"seed: 1 -> 2.*only num-rounds"):
        check_resumable(checkpoint, {**CONFIG, "seed": 2})
    with pytest.raises(CheckpointError, match="finished 2 round.*num-rounds is 2"):
        check_resumable(checkpoint, {**CONFIG, "num-rounds": 2})


def test_a_second_writer_of_an_output_directory_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(CheckpointError, match="still writing"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # free again once released


def test_the_global_rngs_continue_where_the_checkpoint_left_them(tmp_path):
    random.seed(3)
    np.random.seed(3)
    meta, arrays = rng_state()
    expected = (random.random(), np.random.normal())
    save_checkpoint(
        tmp_path,
        1,
        {**flatten_arrays({"global": [np.zeros(1)]}), **arrays},
        {"run_config": CONFIG, "rng": meta},
        keep=2,
    )
    random.seed(99)
    np.random.seed(99)
    restore_rng_state(latest_checkpoint(tmp_path))
    assert (random.random(), np.random.normal()) == expected


def test_resume_is_refused_with_split_training_and_another_output_dir():
    with pytest.raises(ConfigError, match="'resume'.*split training"):
        parse_run_config({"resume": "/r", "split": "splitfed_v2"})
    with pytest.raises(ConfigError, match="'resume'.*continues in the directory"):
        parse_run_config({"resume": "/r", "output-dir": "/elsewhere"})
    cfg = parse_run_config({"resume": "/r", "output-dir": "/r"})
    assert cfg.checkpoint.resume == "/r" and cfg.checkpoint.every == 1


# -- node state ------------------------------------------------------------------------
def node_state(residual, steps=None):
    state = RecordDict()
    state.array_records["residual"] = ArrayRecord(
        numpy_ndarrays=[np.full(3, residual, np.float32)]
    )
    if steps is not None:
        add_steps(state, "privacy", steps)
    state.config_records["secaggplus_state"] = ConfigRecord({"stage": "setup"})
    return state


def residual_of(state):
    return float(state.array_records["residual"].to_numpy_ndarrays()[0][0])


def test_node_state_versions_restore_the_checkpoints_round_and_keep_the_dp_ledger(
    tmp_path,
):
    store = NodeStateStore(tmp_path)
    assert store.save(node_state(1.0, steps=10), 1, keep=2)
    assert not store.save(node_state(1.0, steps=10), 2, keep=2)  # unchanged: skipped
    store.save(node_state(3.0, steps=20), 3, keep=2)
    store.save(node_state(4.0, steps=30), 4, keep=2)  # the round in flight
    store.save(node_state(5.0, steps=40), 5, keep=2)
    # after round 5 with keep=2, checkpoints 4 and 3 may still be asked for: the
    # versions after round 3, and round 3's (the newest up to 3)
    assert [r for r, _ in store.versions()] == [3, 4, 5]

    state = RecordDict()
    state.config_records["secaggplus_state"] = ConfigRecord({"stage": "now"})
    assert store.restore(state, 3) == 3
    assert residual_of(state) == 3.0  # the state of the checkpoint's round
    assert steps_taken(state, "privacy") == 40  # the ledger never goes back
    # Flower's protocol state is never written or overwritten
    assert state.config_records["secaggplus_state"]["stage"] == "now"
    assert [r for r, _ in store.versions()] == [3]  # later versions are gone


def test_node_state_mod_restores_once_on_a_resumed_run_then_saves_each_round(
    tmp_path,
):
    run_config = {"output-dir": str(tmp_path), "resume": str(tmp_path)}
    context = Context(
        run_id=7,
        node_id=123,
        node_config={"partition-id": 2, "num-partitions": 3},
        state=RecordDict(),
        run_config=run_config,
    )
    folder = tmp_path / "client-state" / "run-abc" / "partition-2"
    NodeStateStore(folder).save(node_state(2.0, steps=5), 2, keep=2)

    def message(server_round, **config):
        content = RecordDict({"fitins.config": ConfigRecord(config)})
        with server_identity(7):
            return Message(content, 123, "train", group_id=str(server_round))

    seen = []

    def train(msg, ctx):
        seen.append(residual_of(ctx.state))
        ctx.state.array_records["residual"] = ArrayRecord(
            numpy_ndarrays=[np.full(3, seen[-1] + 1, np.float32)]
        )
        return msg

    node_state_mod(message(3, **{LINEAGE: "abc", RESUMED_FROM: 2}), context, train)
    node_state_mod(message(4, **{LINEAGE: "abc", RESUMED_FROM: 2}), context, train)
    assert seen == [2.0, 3.0]  # restored once, then the node's own state goes on
    assert context.state.config_records[RESTORED]["version"] == 2
    assert [r for r, _ in NodeStateStore(folder).versions()] == [2, 3, 4]
    assert steps_taken(context.state, "privacy") == 5
    # without a lineage (checkpoints off) nothing is written
    node_state_mod(message(5), context, train)
    assert [r for r, _ in NodeStateStore(folder).versions()] == [2, 3, 4]


def test_the_code_version_digests_the_project_sources():
    # a digest of no files (a wrong root after a move) would call every version the
    # same, and a resume would never warn that the code changed
    import hashlib

    from fl_app.core.checkpoint import code_version

    empty = hashlib.sha256().hexdigest()[:12]
    assert not code_version().endswith(empty)
