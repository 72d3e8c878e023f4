"""Kill a run, resume it from its checkpoint, compare with a run that was not killed.

The crash is the server process dying: the grid raises in the middle of a round
(after the clients trained, their replies lost) or between rounds, and nothing the
server held in memory survives. The resumed run gets fresh node contexts, as a new
Flower run does; the nodes find their state on disk. A SIGKILL of the real
processes is in ``test_simulation.py``.
"""

import json

import pytest

from fl_app.core.results import read_rows
from tests.inprocess import AheadGrid, InProcessGrid, run_in_process

pytestmark = pytest.mark.slow

BASE = [
    "model=softmax",  # what is restored does not depend on the model; it is fast
    "num_clients=3",
    "clients_per_round=3",
    "evaluate_clients_per_round=3",
    "save_model=false",
]
FIGURES = (
    "central_accuracy",
    "central_loss",
    "train_loss",
    "federated_loss",
    "federated_accuracy",
    "federated_personalized_accuracy",
    "sparsity",
    "bytes_up",
    "bytes_down",
    "num_failures",
)


class Killed(Exception):
    """The server process died."""


def killed_in_round(server_round, in_flight=True):
    """A grid whose server dies in ``server_round``'s fit step.

    ``in_flight``: after the clients trained (their replies are lost); else before
    any message of that round is sent (between rounds).
    """

    class Grid(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            crash = any(
                m.metadata.group_id == str(server_round)
                and m.metadata.message_type == "train"
                for m in messages
            )
            if crash and not in_flight:
                raise Killed
            ids = self.push_messages(messages)
            if crash:
                raise Killed
            return self.pull_messages(ids)

    return Grid


def kill_and_resume(overrides, out, server_round, in_flight=True):
    # a former run's checkpoint in the same directory must not be resumed
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "round-00009.npz").write_bytes(b"a former run's")
    with pytest.raises(Killed):
        run_in_process(
            overrides, out, grid_class=killed_in_round(server_round, in_flight)
        )
    run_in_process([*overrides, f"resume={out}"], out)
    return read_rows(out)


def figures(rows):
    return [{k: row.get(k) for k in FIGURES} for row in rows]


def client_epsilons(rows):
    return [{c["partition_id"]: c["epsilon"] for c in row["clients"]} for row in rows]


@pytest.mark.parametrize(
    ("technique", "in_flight"),
    [
        # FedAvg with error-feedback top-k uploads (the residuals live in the node
        # state) and compressed downloads (each node's copy of the model in its
        # state; the server's public model in its checkpoint), killed after the
        # clients trained in round 3
        (["compression=topk_down"], True),
        # APFL (personal models and their alpha live in the node state), killed
        # between rounds 2 and 3
        (["strategy=apfl"], False),
        # Flower's server-side adaptive clipping: its clipping norm and the noise
        # it draws from numpy's global RNG continue from the checkpoint
        (
            [
                "clientdp=server_adaptive",
                "clientdp.noise_multiplier=0.1",
                "evaluate_clients_per_round=0",
            ],
            True,
        ),
    ],
    ids=["fedavg-error-feedback", "apfl", "client-level-dp-adaptive"],
)
def test_a_resumed_run_ends_bit_equal_to_one_never_killed(
    tmp_path, technique, in_flight
):
    overrides = [*BASE, "num_rounds=3", *technique]
    run_in_process(overrides, tmp_path / "whole")
    resumed = kill_and_resume(overrides, tmp_path / "killed", 3, in_flight)
    whole = read_rows(tmp_path / "whole")
    assert [r["round"] for r in resumed] == [1, 2, 3]
    assert figures(resumed) == figures(whole)  # exactly equal, every round
    assert all(row["num_failures"] == 0 for row in whole)
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["resumed_from"] == [2] and summary["rounds"] == 3
    assert summary["final_accuracy"] == whole[-1]["central_accuracy"]


def test_dp_sgd_epsilon_never_goes_back_and_a_spent_client_stays_declined(tmp_path):
    dp = [
        *BASE,
        "num_clients=2",
        "clients_per_round=2",
        "evaluate_clients_per_round=0",
        "partition=iid",
        "dpsgd=sgd",
        "num_rounds=3",
    ]
    run_in_process(dp, tmp_path / "whole")
    whole = client_epsilons(read_rows(tmp_path / "whole"))
    # A budget that admits two rounds: the run never killed trains in rounds 1
    # and 2 and declines in round 3. Killed after the clients trained in round 2,
    # their lost replies spent ε: the redone round 2 is declined (a node that had
    # forgotten would train again), and the final ε is the same.
    budget = (whole[1][0] + whole[2][0]) / 2
    rows = kill_and_resume([*dp, f"dpsgd.epsilon_budget={budget}"], tmp_path / "k", 2)
    assert client_epsilons(rows)[0] == whole[0]
    assert [r["num_declined"] for r in rows] == [0, 2, 2]
    assert client_epsilons(rows)[1] == client_epsilons(rows)[2] == whole[1]


def test_resume_alone_finishes_at_the_checkpoints_round_count(tmp_path):
    # A 4-round run killed between rounds 2 and 3, resumed as a Flower CLI user
    # does: flwr run --run-config 'resume="DIR"' submits resume alone, and the
    # rest of the run config is [tool.flwr.app.config]'s defaults (num-rounds 20).
    out = tmp_path / "killed"
    overrides = [*BASE, "num_rounds=4"]
    with pytest.raises(Killed):
        run_in_process(overrides, out, grid_class=killed_in_round(3, False))
    run_in_process([*BASE, f"resume={out}"], out, submitted={"resume", "output-dir"})
    assert [r["round"] for r in read_rows(out)] == [1, 2, 3, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 4 and summary["run_config"]["num-rounds"] == 4
    # num-rounds given beside resume extends the run
    run_in_process(
        [*BASE, "num_rounds=5", f"resume={out}"],
        out,
        submitted={"resume", "output-dir", "num-rounds"},
    )
    assert [r["round"] for r in read_rows(out)] == [1, 2, 3, 4, 5]


def without_times(rows):
    timing = ("_s", "_time")
    return [{k: v for k, v in row.items() if not k.endswith(timing)} for row in rows]


class KilledAhead(AheadGrid):
    """Pushes evaluation ahead; the server dies in round 3's fit exchange, after the
    clients trained (their replies are lost) and round 2's evaluation came back."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        crash = any(
            m.metadata.group_id == "3" and m.metadata.message_type == "train"
            for m in messages
        )
        replies = super().send_and_receive(messages, timeout=timeout)
        if crash:
            raise Killed
        return replies


def test_evaluation_pushed_ahead_changes_no_record_and_resumes_bit_equal(tmp_path):
    # Prepare: APFL (each client's personal model lives in its node state, and the
    # personalized evaluation reads it), once as in simulation (each evaluation its
    # own exchange), once as in a deployment, where round r's evaluation travels
    # with round r+1's training, and once killed in round 3 and resumed
    overrides = [*BASE, "num_rounds=3", "strategy=apfl"]
    separate = run_in_process(
        [*overrides, "evaluate_ahead=false"], tmp_path / "plain", grid_class=AheadGrid
    )
    grid = run_in_process(overrides, tmp_path / "ahead", grid_class=AheadGrid)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run_in_process(overrides, out, grid_class=KilledAhead)
    run_in_process([*overrides, f"resume={out}"], out, grid_class=AheadGrid)
    # Assert: the same records (every figure and count) ...
    plain, ahead = read_rows(tmp_path / "plain"), read_rows(tmp_path / "ahead")
    assert without_times(ahead) == without_times(plain)
    # ... each fit exchange after the first carried the previous round's evaluation
    carried = [sorted(set(e)) for e in grid.exchanges if ("train", "1") not in e]
    trains = [e for e in carried if any(kind == "train" for kind, _ in e)]
    assert trains == [
        [("evaluate", "1"), ("train", "2")],
        [("evaluate", "2"), ("train", "3")],
    ]
    assert [("evaluate", "3")] in carried  # the last round's, on its own
    # ... riding in the training messages: one message per node and round, each of
    # rounds 2 and 3's carrying the previous round's evaluation
    assert sorted(set(grid.pushed)) == [
        ("evaluate", "3", False),
        ("train", "1", False),
        ("train", "2", True),
        ("train", "3", True),
    ]
    assert len(grid.pushed) == 4 * 3  # 3 nodes
    # ... evaluate-ahead off: every evaluation in an exchange of its own
    alone = [sorted(set(e)) for e in separate.exchanges]
    assert [[("evaluate", str(r))] for r in (1, 2, 3)] == [
        e for e in alone if e and e[0][0] == "evaluate"
    ]
    # ... and the killed run resumed after round 2 (its checkpoint was written once
    # round 2's evaluation, carried by round 3's exchange, came back), bit-equal
    resumed = read_rows(out)
    assert [r["round"] for r in resumed] == [1, 2, 3]
    assert figures(resumed) == figures(ahead)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == [2]
