"""A client technique keeps per-client state across rounds, in ``context.state``.

One technique object belongs to a compiled model that every client of a process
shares (in-process here: all three clients share one model); what it keeps per
client goes in the ``TechniqueState`` its hooks receive. The technique below counts
each client's local trainings and remembers the weights it was last sent: if the
state leaked between clients, or were lost between rounds or across a resume, the
counts reported in the fit replies would not be 1, 2, 3 for every client.
"""

from dataclasses import dataclass

import numpy as np
import pytest

from fl_app.core.results import read_rows
from fl_app.core.schema import EXTRA_SECTIONS, setting
from fl_app.core.techniques import (
    CLIENT_TECHNIQUES,
    ClientTechnique,
    register_client_technique,
)
from tests.inprocess import run_in_process
from tests.integration.test_resume import Killed, killed_in_round

pytestmark = pytest.mark.slow

RUN = [
    "model=softmax",
    "num_clients=3",
    "clients_per_round=3",
    "evaluate_clients_per_round=0",
    "num_rounds=3",
    "save_model=false",
    "+client.counting=true",
]


@dataclass(frozen=True)
class CountingConfig:
    on: bool = setting(False, key="client-counting", help="count local trainings")


class Counting(ClientTechnique):
    """Count each client's trainings; report how far the sent model moved."""

    name = "counting"
    prefix = "client-counting"
    Config = CountingConfig

    @classmethod
    def enabled(cls, config):
        return config.on

    def begin(self, variables, state):
        sent = [np.asarray(v) for v in variables]
        before = state.load("sent")
        moved = 0.0 if before is None else float(np.abs(sent[0] - before[0]).sum())
        state.save("sent", sent)
        state.set("count", state.get("count", 0) + 1)
        state.set("moved", moved)

    def end(self, variables, state):
        return {"count": state.get("count"), "moved": state.get("moved")}


@pytest.fixture
def counting():
    register_client_technique(Counting)
    yield
    del CLIENT_TECHNIQUES["counting"], EXTRA_SECTIONS["counting"]


def counts(out):
    return [
        sorted((c["partition_id"], c["count"]) for c in row["clients"])
        for row in read_rows(out)
    ]


def test_a_technique_keeps_each_clients_state_across_rounds_and_a_resume(
    tmp_path, counting
):
    # every client counts its own trainings, though all share one technique object
    run_in_process(RUN, tmp_path / "whole")
    expected = [[(pid, r) for pid in range(3)] for r in (1, 2, 3)]
    assert counts(tmp_path / "whole") == expected
    rows = read_rows(tmp_path / "whole")
    # from round 2 each client compares the model it is sent with its own last one
    assert all(c["moved"] == 0 for c in rows[0]["clients"])
    assert all(c["moved"] > 0 for row in rows[1:] for c in row["clients"])
    # killed after round 2 (between rounds), resumed: the state came back from disk
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run_in_process(RUN, out, grid_class=killed_in_round(3, False))
    run_in_process([*RUN, f"resume={out}"], out)
    assert counts(out) == expected


def test_registering_a_technique_twice_or_half_declared_is_refused(counting):
    with pytest.raises(ValueError, match="two client techniques are named 'counting'"):
        register_client_technique(Counting)

    class Nameless(ClientTechnique):
        Config = CountingConfig

    with pytest.raises(TypeError, match="has no 'name'"):
        register_client_technique(Nameless)
