import numpy as np
import pytest
from flwr.app import RecordDict

from fl_app.client.keras_client import KerasClient
from fl_app.core.config import parse_run_config
from fl_app.features.personalization.settings import PersonalizationConfig
from fl_app.features.personalization.training import (
    PersonalState,
    blend,
    get_personal_trainer,
    local_weight_mask,
    strip_local,
    weight_alphas,
)
from fl_app.ml.training import get_compiled_model

BASE = {"num-clients": 4, "clients-per-round": 4, "evaluate-clients-per-round": 4}


def cfg(**kw):
    return parse_run_config({**BASE, "strategy": "personalized", **kw})


@pytest.fixture(autouse=True)
def fresh_personal_trainers():
    get_personal_trainer.cache_clear()
    yield
    get_personal_trainer.cache_clear()


def test_blend_hand_computed():
    # Prepare: alpha 0.25 on the first array, 1 on the second (a local-only layer).
    local = [np.array([4.0, 8.0], np.float32), np.array([1.0], np.float32)]
    global_ = [np.array([0.0, 4.0], np.float32), np.array([9.0], np.float32)]
    # Execute
    first, second = blend(local, global_, [0.25, 1.0])
    # Assert: 0.25*4 + 0.75*0 = 1; 0.25*8 + 0.75*4 = 5; alpha 1 keeps the local 1
    np.testing.assert_array_equal(first, [1.0, 5.0])
    np.testing.assert_array_equal(second, [1.0])
    assert first.dtype == np.float32


def test_local_weight_mask_and_alphas_for_cnn_head():
    c = KerasClient(cfg(**{"strategy-mode": "fedper"}), 0)
    model = get_compiled_model(c.key)
    mask = local_weight_mask(model, ("classifier",))
    # conv1 (kernel, bias), conv2 (2), fc1 (2), classifier (2): only the last two
    assert mask == [False] * 6 + [True] * 2
    fedper = PersonalizationConfig("fedper", 0.5, 0.0, ("classifier",))
    apfl = PersonalizationConfig("apfl", 0.5, 0.0, ())
    assert weight_alphas(fedper, mask, 0.3) == [0.0] * 6 + [1.0] * 2
    assert weight_alphas(apfl, [False] * 8, 0.3) == [0.3] * 8


def test_strip_local_sends_empty_arrays():
    weights = [np.ones((2, 2), np.float32), np.ones(3, np.float32)]
    kept, dropped = strip_local(weights, [False, True])
    assert (
        kept.shape == (2, 2) and dropped.shape == (0,) and dropped.dtype == np.float32
    )


def test_personal_state_round_trip():
    state = PersonalState(RecordDict())
    assert state.load() == (None, None)
    state.save([np.arange(3, dtype=np.float32)], 0.75)
    local, alpha = state.load()
    np.testing.assert_array_equal(local[0], [0, 1, 2])
    assert alpha == 0.75


@pytest.mark.parametrize(("alpha", "lr"), [(0.9, 1e6), (0.1, -0.0)])
def test_apfl_alpha_stays_in_unit_interval(alpha, lr):
    run = cfg(
        **{
            "strategy-mode": "apfl",
            "strategy-alpha": alpha,
            "strategy-alpha-lr": abs(lr),
        }
    )
    state = RecordDict()
    client = KerasClient(run, 0, state)
    weights = client.get_parameters({})
    for server_round in (1, 2):
        _, _, metrics = client.fit(weights, {"server_round": server_round})
        assert 0.0 <= metrics["alpha"] <= 1.0
    if lr:  # a huge step drives alpha to a bound of [0, 1], never past it
        assert metrics["alpha"] in (0.0, 1.0)
    else:
        assert metrics["alpha"] == pytest.approx(alpha)
    assert PersonalState(state).load()[1] == metrics["alpha"]


def test_fixed_alpha_is_not_learned():
    run = cfg(
        **{"strategy-mode": "fixed", "strategy-alpha": 0.3, "strategy-alpha-lr": 1.0}
    )
    client = KerasClient(run, 1, RecordDict())
    _, _, metrics = client.fit(client.get_parameters({}), {"server_round": 1})
    assert metrics["alpha"] == pytest.approx(0.3)


def test_state_persists_across_rounds_and_is_not_shared():
    run = cfg(**{"strategy-mode": "apfl"})
    state_a, state_b = RecordDict(), RecordDict()
    weights = KerasClient(run, 0, state_a).get_parameters({})
    # Round 1 for both clients on the same worker (same cached trainer).
    KerasClient(run, 0, state_a).fit(weights, {"server_round": 1})
    local_a1, _ = PersonalState(state_a).load()
    KerasClient(run, 1, state_b).fit(weights, {"server_round": 1})
    local_b1, _ = PersonalState(state_b).load()
    # Each client's local model is its own, and client B training did not touch A's.
    assert any(not np.array_equal(a, b) for a, b in zip(local_a1, local_b1))
    np.testing.assert_array_equal(PersonalState(state_a).load()[0][0], local_a1[0])
    # Round 2 starts from the stored local model: it differs from round 1's result.
    KerasClient(run, 0, state_a).fit(weights, {"server_round": 2})
    local_a2, _ = PersonalState(state_a).load()
    assert any(not np.array_equal(a, b) for a, b in zip(local_a1, local_a2))


def test_personal_result_independent_of_other_clients_on_worker():
    run = cfg(**{"strategy-mode": "apfl"})
    weights = KerasClient(run, 0, RecordDict()).get_parameters({})
    alone_state = RecordDict()
    alone, _, _ = KerasClient(run, 2, alone_state).fit(weights, {"server_round": 1})
    KerasClient(run, 3, RecordDict()).fit(weights, {"server_round": 1})
    again_state = RecordDict()
    again, _, _ = KerasClient(run, 2, again_state).fit(weights, {"server_round": 1})
    for x, y in zip(alone, again):
        assert x.tobytes() == y.tobytes()
    for x, y in zip(
        PersonalState(alone_state).load()[0], PersonalState(again_state).load()[0]
    ):
        assert x.tobytes() == y.tobytes()


def test_fedper_head_never_leaves_and_body_trains():
    run = cfg(**{"strategy-mode": "fedper", "strategy-local-layers": "classifier"})
    state = RecordDict()
    client = KerasClient(run, 0, state)
    weights = client.get_parameters({})
    reply, _, metrics = client.fit(weights, {"server_round": 1})
    assert [w.size for w in reply[-2:]] == [0, 0]  # classifier kernel and bias
    assert not np.array_equal(reply[0], weights[0])  # the shared body was trained
    local, _ = PersonalState(state).load()
    assert not np.array_equal(local[-2], weights[-2])  # the local head was trained
    np.testing.assert_array_equal(local[0], weights[0])  # v's body is unused (alpha 0)
    assert "alpha" not in metrics


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_evaluate_reports_global_and_personalized(alpha):
    from fl_app.ml.training import evaluate_model

    # Prepare: one round of training leaves a local model in the node state.
    run = cfg(**{"strategy-mode": "fixed", "strategy-alpha": alpha})
    state = RecordDict()
    client = KerasClient(run, 0, state)
    weights = client.get_parameters({})
    client.fit(weights, {"server_round": 1})
    local, _ = PersonalState(state).load()
    # Execute
    loss, n, metrics = client.evaluate(weights, {})
    # Assert: the global model is the weights sent; the personalized one is
    # alpha * local + (1 - alpha) * global (alpha 1: the local model exactly), both
    # on the validation rows.
    model = get_compiled_model(client.key)
    model.set_weights(weights)
    assert n == len(client.data.val)
    assert (loss, metrics["accuracy"]) == evaluate_model(model, client.data.val)
    model.set_weights(blend(local, weights, [alpha] * len(weights)))
    assert (
        metrics["personalized_loss"],
        metrics["personalized_accuracy"],
    ) == evaluate_model(model, client.data.val)
    assert metrics["alpha"] == pytest.approx(alpha)
    # the personal model learned the client's data: it beats the untrained global
    # model on the client's own validation rows
    assert metrics["personalized_loss"] < 0.9 * loss
