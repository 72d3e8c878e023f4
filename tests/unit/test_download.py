"""Compressed downloads: the public model, per-client payloads, the client's copy.

Every expectation below is worked out by hand from ``ModelCopies``' rule: each round
the public model moves by the ``fraction`` largest entries of each kernel's
difference to the global model (every changed entry of 1-D arrays), and a client is
sent the entries changed since its copy's version, gap-coded, with their values.
"""

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

from fl_app.core.config import parse_run_config
from fl_app.core.schema import ConfigError
from fl_app.features.compression.codecs import Codec, CodecError
from fl_app.features.compression.download import (
    BASE,
    ORIGIN,
    VERSION,
    ModelCopies,
    apply_download,
)
from strategies.fedavg import FedAvg, parameters_size
from strategies.transport import Transport
from tests.proxies import FakeProxy, fit_res

F32 = np.float32
SHAPES = [(3,), (2, 2)]


def model(bias, kernel):
    return [np.array(bias, F32), np.array(kernel, F32)]


def test_a_client_is_sent_what_changed_since_its_copy_by_hand():
    copies = ModelCopies(fraction=0.5)
    start = model([0, 0, 0], [[0, 0], [0, 0]])
    copies.advance(start)
    arrays, config = copies.payload("a")  # no copy yet: the whole model
    assert config == {BASE: -1, VERSION: 1}
    copy = apply_download(None, None, arrays, config, SHAPES)
    copies.delivered("a", 1)

    # kernel: 2 of its 4 entries move, the largest differences (4 and -3); the bias
    # moves wholly (its one changed entry)
    copies.advance(model([0, 1, 0], [[4, -3], [1, 0.5]]))
    arrays, config = copies.payload("a")
    assert config == {BASE: 1, VERSION: 2}
    assert [a.tolist() for a in arrays] == [[1], [1.0], [0, 1], [4.0, -3.0]]
    assert [a.dtype for a in arrays] == [np.uint8, F32, np.uint8, F32]
    copy = apply_download(copy, 1, arrays, config, SHAPES)
    np.testing.assert_array_equal(copy[1], [[4, -3], [0, 0]])
    np.testing.assert_array_equal(copy[0], [0, 1, 0])

    # the same global model again (federated evaluation): no new version
    copies.advance(model([0, 1, 0], [[4, -3], [1, 0.5]]))
    assert copies.version == 2
    # the entries left out last round go now: [1, 0] and [1, 1]
    copies.advance(model([0, 1, 0], [[4, -3], [1, 0.6]]))
    arrays, config = copies.payload("a")  # still at version 1: the union of both
    assert config == {BASE: 1, VERSION: 3}
    assert arrays[2].tolist() == [0, 1, 1, 1]
    np.testing.assert_array_equal(arrays[3], np.array([4, -3, 1, 0.6], F32))
    # bytes: 1 + 4 (bias) + 4 + 16 (kernel) = 25 < 28 for the whole model
    assert sum(a.nbytes for a in arrays) == 25
    copy = apply_download(copy, 2, arrays, config, SHAPES)  # a newer copy works too
    np.testing.assert_array_equal(copy[1], np.array([[4, -3], [1, 0.6]], F32))

    copies.delivered("a", 3)
    arrays, config = copies.payload("a")  # up to date: nothing to send
    assert config == {BASE: 3, VERSION: 3} and sum(a.size for a in arrays) == 0


def test_one_dimensional_arrays_move_wholly_whatever_the_fraction():
    copies = ModelCopies(fraction=0.25)
    copies.advance(model([0, 0, 0], [[0, 0], [0, 0]]))
    public = copies.advance(model([1, 2, 3], [[1, 2], [3, 4]]))
    np.testing.assert_array_equal(public[0], [1, 2, 3])
    np.testing.assert_array_equal(public[1], [[0, 0], [0, 4]])


def test_float16_values_keep_the_public_model_on_float16_values():
    copies = ModelCopies(values="float16")
    copies.advance(model([0, 0, 0], [[0, 0], [0, 0]]))
    copies.delivered("a", 1)
    copies.advance(model([0.1, 0, 0], [[0, 0], [0, 0]]))
    arrays, config = copies.payload("a")
    assert arrays[1].dtype == np.float16
    # the public model holds float16(0.1) exactly as the client does
    assert copies.public[0][0] == F32(np.float16(0.1)) != F32(0.1)
    copy = apply_download(model([0, 0, 0], [[0, 0], [0, 0]]), 1, arrays, config, SHAPES)
    np.testing.assert_array_equal(copy[0], copies.public[0])
    # the rounding error stays on the server: the next round sends the rest
    copies.advance(model([0.1, 0, 0], [[0, 0], [0, 1]]))
    assert copies.public[0][0] == F32(np.float16(0.1))  # float16(0.1) is the best
    assert copies.public[1][1, 1] == 1


def test_a_copy_too_old_forgotten_or_costlier_than_the_model_gets_it_whole():
    copies = ModelCopies(max_age=1)
    copies.advance(model([0, 0, 0], [[0, 0], [0, 0]]))
    copies.delivered("old", 1)
    copies.delivered("gone", 1)
    copies.advance(model([1, 0, 0], [[0, 0], [0, 0]]))
    assert copies.payload("old")[1][BASE] == 1  # one version behind: a delta
    copies.advance(model([2, 0, 0], [[0, 0], [0, 0]]))
    assert copies.payload("old")[1][BASE] == -1  # two behind, history of one
    copies.delivered("gone", 2)
    copies.forget("gone")  # it failed: it may have no copy
    assert copies.payload("gone")[1][BASE] == -1
    # every entry changed: indices + values cost more than the dense model
    copies.delivered("all", 3)
    copies.advance(model([3, 3, 3], [[3, 3], [3, 3]]))
    arrays, config = copies.payload("all")
    assert config[BASE] == -1 and [a.dtype for a in arrays] == [F32, F32]


def test_a_new_client_starts_from_its_own_seeded_initial_model():
    start = model([0, 0, 0], [[0, 0], [0, 0]])
    copies = ModelCopies(fraction=0.25, share_origin=True)
    copies.advance(start)
    arrays, config = copies.payload("new")  # nothing changed since version 1
    assert config[BASE] == 1 and sum(a.size for a in arrays) == 0
    copies.advance(model([5, 0, 0], [[0, 0], [0, 7]]))
    arrays, config = copies.payload("new")
    assert config[BASE] == 1 and config[ORIGIN] == copies.origin
    copy = apply_download(None, None, arrays, config, SHAPES, origin=start)
    np.testing.assert_array_equal(copy[0], [5, 0, 0])
    np.testing.assert_array_equal(copy[1], [[0, 0], [0, 7]])
    other = model([0, 0, 0], [[0, 0], [0, 1e-7]])  # another seed's initial model
    with pytest.raises(CodecError, match="seeded initial model differs"):
        apply_download(None, None, arrays, config, SHAPES, origin=other)
    with pytest.raises(CodecError, match="seeded initial model differs"):
        apply_download(None, None, arrays, config, SHAPES, origin=None)
    copies.forget("new")  # it failed: the whole model next time, not the origin
    assert copies.payload("new")[1] == {BASE: -1, VERSION: 2}
    # the origin's digest survives a checkpoint
    restored = ModelCopies(fraction=0.25, share_origin=True)
    restored.restore(*copies.state())
    assert restored.payload("another")[1] == config


def test_the_client_refuses_a_delta_its_copy_cannot_take():
    delta = [np.array([1], np.uint8), np.array([5.0], F32)] + [
        np.zeros(0, np.uint8),
        np.zeros(0, F32),
    ]
    config = {BASE: 4, VERSION: 5}
    with pytest.raises(CodecError, match="copy is at None"):
        apply_download(None, None, delta, config, SHAPES)
    copy = model([0, 0, 0], [[0, 0], [0, 0]])
    with pytest.raises(CodecError, match="copy is at 3"):
        apply_download(copy, 3, delta, config, SHAPES)
    with pytest.raises(CodecError, match="4 arrays"):
        apply_download(copy, 4, delta[:3], config, SHAPES)
    bad = list(delta)
    bad[1] = np.array([np.inf], F32)
    with pytest.raises(CodecError, match="non-finite"):
        apply_download(copy, 4, bad, config, SHAPES)
    bad[0] = np.array([7], np.uint8)  # index 7 of a 3-entry bias
    with pytest.raises(CodecError, match="out of range"):
        apply_download(copy, 4, bad, config, SHAPES)
    whole = {BASE: -1, VERSION: 5}
    with pytest.raises(CodecError, match="whole-model download"):
        apply_download(None, None, [np.zeros(3, F32)], whole, SHAPES)
    assert apply_download(copy, 4, delta, config, SHAPES)[0][1] == 5


def test_the_state_restores_the_same_payloads_and_versions():
    copies = ModelCopies(fraction=0.5, values="float16")
    rng = np.random.default_rng(0)
    for version in range(1, 5):
        copies.advance(model(rng.normal(size=3), rng.normal(size=(2, 2))))
        copies.delivered(f"c{version}", version)
    state, arrays = copies.state()
    restored = ModelCopies(fraction=0.5, values="float16")
    restored.restore(state, arrays)
    for client in ("c1", "c2", "c3", "c4", "new"):
        (a, ca), (b, cb) = copies.payload(client), restored.payload(client)
        assert ca == cb and all(np.array_equal(x, y) for x, y in zip(a, b))
    # the last global model again after a resume: no new version there either
    last = copies._target
    assert restored.advance(last) is restored.public and restored.version == 4
    nxt = model(rng.normal(size=3), rng.normal(size=(2, 2)))
    for x, y in zip(copies.advance(nxt), restored.advance(nxt)):
        np.testing.assert_array_equal(x, y)


def test_fedavg_sends_each_client_its_delta_and_adds_uploads_to_its_own_model():
    start = model([0, 0, 0], [[0, 0], [0, 0]])
    transport = Transport(upload=Codec(), delta=True, copies=ModelCopies(0.25))
    strategy = FedAvg(
        num_clients=2,
        clients_per_round=2,
        evaluate_clients_per_round=0,
        initial_parameters=ndarrays_to_parameters(start),
        transport=transport,
    )
    from flwr.common import FitIns

    def send(server_round, weights):
        strategy._encode_download(ndarrays_to_parameters(weights), weights)
        sampled = [(FakeProxy(n), FitIns(None, {})) for n in (1, 2)]
        return strategy._instruct(server_round, None, sampled, FitIns, "_fit_sent")

    first = send(1, start)
    assert [ins.config[BASE] for _, ins in first] == [-1, -1]
    # both clients trained: +8 and +4 on kernel [0, 0], +2 on the bias
    up = [model([2, 0, 0], [[8, 0], [0, 0]]), model([2, 0, 0], [[4, 0], [0, 2]])]
    results = [(FakeProxy(n), fit_res(u, 1)) for n, u in zip((1, 2), up)]
    params, _ = strategy.aggregate_fit(1, results, [])
    new = parameters_to_ndarrays(params)
    np.testing.assert_array_equal(new[1], [[6, 0], [0, 1]])
    second = send(2, new)
    # both clients have version 1: they are sent the largest kernel change (6 of
    # [[6, 0], [0, 1]]: 1 entry of 4) and the bias
    for _, ins in second:
        assert ins.config[BASE] == 1 and ins.config[VERSION] == 2
    sent = parameters_to_ndarrays(second[0][1].parameters)
    np.testing.assert_array_equal(sent[3], [6])
    np.testing.assert_array_equal(transport.copies.public[1], [[6, 0], [0, 0]])
    record = strategy._record(2)
    assert record["bytes_down"] == sum(
        parameters_size(ins.parameters) for _, ins in second
    )
    # the server's model is its own plus the deltas, not the public model plus
    # them: client 1 (the only reply) sends a zero delta, and the 1 at [1, 1] the
    # public model left out is still in the server's model
    results = [(FakeProxy(1), fit_res(model([0, 0, 0], [[0, 0], [0, 0]]), 1))]
    params, _ = strategy.aggregate_fit(2, results, [])
    np.testing.assert_array_equal(parameters_to_ndarrays(params)[1], new[1])
    third = send(3, new)  # same model: no new version; node 2 failed: whole model
    assert [ins.config[BASE] for _, ins in third] == [2, -1]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"compression-download-delta": True}, "compression-download-delta"),
        (
            {
                "compression-download-delta": True,
                "compression-delta": True,
                "compression-download": "int8",
            },
            "compression-download",
        ),
        ({"compression-download-topk": 0.1}, "compression-download-topk"),
        ({"compression-topk-warmup-rounds": 3}, "compression-topk-warmup-rounds"),
    ],
)
def test_download_settings_that_cannot_work_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key):
        parse_run_config(overrides)


def test_the_top_k_warm_up_falls_exponentially_to_the_fraction():
    cfg = parse_run_config(
        {
            "compression": "sparse+int8",
            "compression-delta": True,
            "compression-topk": 0.01,
            "compression-topk-warmup-rounds": 3,
        }
    ).compression
    # 0.01 ** (r / 4): 0.316, 0.1, 0.0316, then 0.01
    assert [round(cfg.topk_at(r), 4) for r in (1, 2, 3, 4, 9)] == [
        0.3162,
        0.1,
        0.0316,
        0.01,
        0.01,
    ]
