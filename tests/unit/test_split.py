"""Split training's numerical core (split.model) and the edge's message handlers."""

import re

import numpy as np
import pytest
import tensorflow as tf
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from fl_app.core.config import ConfigError, parse_run_config
from fl_app.features.split.client import SplitNode, batch_indices
from fl_app.features.split.model import (
    ClientPart,
    ServerPart,
    aux_head_params,
    client_shares,
    cut_layer,
    forward_flops,
    split_model,
)
from fl_app.ml.training import get_compiled_model, model_key

SGD = {"client-optimizer": "sgd", "client-learning-rate": 0.1}


def test_split_parts_share_the_full_models_weights_and_outputs():
    cfg = parse_run_config({"split": "splitfed_v1"})
    model = get_compiled_model(model_key(cfg, (8, 8, 1), 10))
    client, server = split_model(model, cut_layer(cfg.split, "cnn"))
    assert [w.shape for w in client.get_weights()] == [(3, 3, 1, 32), (32,)]
    joined = client.get_weights() + server.get_weights()
    for a, b in zip(joined, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
    np.testing.assert_allclose(server(client(x)), model(x), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="leaves nothing"):
        split_model(model, "classifier")
    with pytest.raises(ValueError, match="no layer 'conv9'"):
        split_model(model, "conv9")


def test_split_flops_and_parameter_shares_by_hand():
    cfg = parse_run_config(
        {
            "model": "mlp",
            "split": "splitfed_v1",
            "dataset": "synthetic",
            "partition": "natural",
        }
    )
    model = get_compiled_model(model_key(cfg, (6,), 3))
    # Dense layers: 2 * in * out multiply-adds per example
    assert forward_flops(model) == 2 * (6 * 200 + 200 * 200 + 200 * 3)
    shares = client_shares(model, "fc1")
    assert shares["client_flops_share"] == pytest.approx(
        6 * 200 / (6 * 200 + 200 * 200 + 200 * 3)
    )
    params = 6 * 200 + 200 + 200 * 200 + 200 + 200 * 3 + 3
    assert shares["client_param_share"] == pytest.approx((6 * 200 + 200) / params)
    assert shares["cut_activation_floats"] == 200
    # the CNN's default cut keeps the edge under a quarter of both
    cnn = get_compiled_model(model_key(parse_run_config({}), (8, 8, 1), 10))
    cnn_shares = client_shares(cnn, "conv1")
    assert cnn_shares["client_param_share"] < 0.25
    assert cnn_shares["client_flops_share"] < 0.25


def test_one_split_sgd_step_equals_one_whole_model_step():
    cfg = parse_run_config({**SGD, "split": "splitfed_v1"})
    key = model_key(cfg, (8, 8, 1), 10)
    cut = cut_layer(cfg.split, "cnn")
    rng = np.random.default_rng(1)
    x = rng.random((16, 8, 8, 1), np.float32)
    y = rng.integers(0, 10, 16)
    whole = get_compiled_model(key)
    start = whole.get_weights()
    # whole model: loss = mean cross-entropy, w <- w - lr * grad
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(
            tf.keras.losses.sparse_categorical_crossentropy(y, whole(x, training=True))
        )
    grads = tape.gradient(loss, whole.trainable_variables)
    expected = [w - 0.1 * g.numpy() for w, g in zip(start, grads, strict=True)]
    # split: client forward, server step, client backward from the cut gradient
    client, server = ClientPart(key, cut, False), ServerPart(key, cut)
    n = server.num_client_arrays
    client.set_weights(start[:n])
    server.set_weights(start[n:])
    client.set_optimizer_state(None, 0.1)
    server.set_optimizer_state(None, 0.1)
    split_loss, _, cut_grad = server.step(client.forward(x), y)
    client.backward([x], [cut_grad])
    assert split_loss == pytest.approx(float(loss), rel=1e-5)
    for got, want in zip(
        client.get_weights() + server.get_weights(), expected, strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_batch_indices_walk_each_epochs_order():
    order = np.array([2, 0, 1, 4, 3, 3, 4, 0, 2, 1])  # two epochs of 5 rows
    assert batch_indices(order, 5, 2, 0).tolist() == [2, 0]
    assert batch_indices(order, 5, 2, 2).tolist() == [3]  # last, short batch
    assert batch_indices(order, 5, 2, 3).tolist() == [3, 4]  # epoch 2 starts
    assert batch_indices(order, 5, 2, 5).tolist() == [1]


def node(cfg_flat, pid=0):
    cfg = {
        **cfg_flat,
        "num-clients": 3,
        "clients-per-round": 3,
        "evaluate-clients-per-round": 3,
    }
    context = Context(
        run_id=1,
        node_id=100 + pid,
        node_config={"partition-id": pid, "num-partitions": 3},
        state=RecordDict(),
        run_config=cfg,
    )
    return SplitNode(parse_run_config(cfg), context), context


def message(server_round, **records):
    return RecordDict(
        {
            **{k: ArrayRecord(numpy_ndarrays=v) for k, v in records.items()},
            "config": ConfigRecord({"server_round": server_round}),
        }
    )


def test_split_node_runs_a_round_in_chunks_from_its_node_state_alone():
    flat = {**SGD, "split": "splitfed_v1", "split-chunk": 2, "client-batch-size": 16}
    edge, context = node(flat)
    rows = len(edge.data.train)
    batches = -(-rows // 16)
    server = ServerPart(model_key(edge.cfg, (8, 8, 1), 10), "conv1")
    start = edge.part.get_weights()
    reply = edge.forward(message(1, weights=start))
    sent = 0
    while "weights" not in reply.array_records:
        acts = reply.array_records["acts"].to_numpy_ndarrays()
        labels = reply.array_records["labels"].to_numpy_ndarrays()
        assert len(acts) <= 2 and all(a.shape[1:] == (8, 8, 32) for a in acts)
        sent += len(acts)
        grads = [server.step(a, y)[2] for a, y in zip(acts, labels, strict=True)]
        # a fresh handler object each message: only context.state carries over
        edge = SplitNode(edge.cfg, context)
        reply = edge.backward(message(1, grads=grads))
    assert sent == batches
    assert int(reply.config_records["result"]["num_examples"]) == rows
    trained = reply.array_records["weights"].to_numpy_ndarrays()
    assert not np.array_equal(trained[0], start[0])
    assert not context.state.array_records  # the round's state is dropped
    with pytest.raises(ValueError, match="without a forward step"):
        edge.backward(message(1, grads=grads))


def test_split_node_refuses_a_backward_step_of_another_round():
    edge, _ = node({"split": "splitfed_v2"})
    edge.forward(message(3, weights=edge.part.get_weights()))
    with pytest.raises(
        ValueError, match="round 4, but this node's state is from round 3"
    ):
        edge.backward(message(4, grads=[np.zeros((32, 8, 8, 32), np.float32)]))


def test_local_loss_node_trains_its_part_and_sends_activations_once():
    edge, context = node({"split": "local_loss", "client-local-epochs": 2})
    start = edge.part.get_weights()
    # conv1's kernel and bias, then the auxiliary head's: flattened -> softmax
    assert [w.shape for w in start] == [(3, 3, 1, 32), (32,), (2048, 10), (10,)]
    assert sum(w.size for w in start[2:]) == aux_head_params((8, 8, 32), 10)
    reply = edge.local(message(1, weights=start))
    acts = reply.array_records["acts"].to_numpy_ndarrays()
    (labels,) = reply.array_records["labels"].to_numpy_ndarrays()
    assert len(acts) == 2 and all(a.shape == (len(labels), 8, 8, 32) for a in acts)
    np.testing.assert_array_equal(labels, edge.data.train.y)
    assert not np.array_equal(acts[0], acts[1])  # each epoch's own activations
    assert 0 <= float(reply.config_records["result"]["aux_accuracy"]) <= 1
    assert not context.state.array_records


def test_split_config_refuses_what_cannot_combine():
    with pytest.raises(ConfigError, match="split-cut-layer.*conv1, conv2, fc1"):
        parse_run_config({"split": "splitfed_v1", "split-cut-layer": "classifier"})
    with pytest.raises(ConfigError, match="'model'.*nothing to cut"):
        parse_run_config({"split": "splitfed_v1", "model": "softmax"})
    for extra, key in (
        ({"secagg": True}, "secagg"),
        ({"strategy": "hetero"}, "strategy"),
        ({"strategy": "personalized"}, "strategy"),
        ({"compression": "int8"}, "compression"),
        ({"clientdp": "server-fixed"}, "clientdp"),
        ({"dpsgd": "sgd"}, "dpsgd"),
    ):
        with pytest.raises(ConfigError, match=f"'{key}'.*split=splitfed_v2"):
            parse_run_config({"split": "splitfed_v2", **extra})
    with pytest.raises(ConfigError, match="turn off fedprox"):
        parse_run_config({"split": "local_loss", "client-proximal-mu": 0.1})


def test_split_server_rejects_malformed_chunks_and_client_parts():
    from types import SimpleNamespace

    from fl_app.features.split.server import RoundTally, SplitServer

    cfg = parse_run_config(
        {
            "split": "splitfed_v1",
            "num-clients": 2,
            "clients-per-round": 2,
            "evaluate-clients-per-round": 0,
        }
    )
    key = model_key(cfg, (8, 8, 1), 10)
    model = get_compiled_model(key)
    run = SimpleNamespace(
        cfg=cfg, key=key, model=model, data=SimpleNamespace(num_classes=10)
    )
    server = SplitServer(run)
    good = np.zeros((4, 8, 8, 32), np.float32)

    def chunk(acts, labels):
        return RecordDict(
            {
                "acts": ArrayRecord(numpy_ndarrays=acts),
                "labels": ArrayRecord(numpy_ndarrays=labels),
            }
        )

    # a well-formed chunk comes back as its arrays, untouched
    acts, labels = server._check_chunk(chunk([good, good + 1], [np.arange(4)] * 2))
    assert [a.tobytes() for a in acts] == [good.tobytes(), (good + 1).tobytes()]
    assert [y.tolist() for y in labels] == [[0, 1, 2, 3]] * 2
    # local loss: one label array serves each epoch's activations
    acts, labels = server._check_chunk(
        chunk([good, good], [np.arange(4)]), shared_labels=True
    )
    assert len(acts) == len(labels) == 2 and labels[1].tolist() == [0, 1, 2, 3]
    # each malformed chunk is refused for its own reason
    nan = np.full((4, 8, 8, 32), np.nan, np.float32)
    bad = [
        (RecordDict({"acts": ArrayRecord(numpy_ndarrays=[good])}), "without labels"),
        (chunk([], []), "0 activation and 0 label arrays"),
        (chunk([good, good], [np.arange(4)]), "2 activation and 1 label arrays"),
        (
            chunk([np.zeros((4, 8, 8, 16), np.float32)], [np.arange(4)]),
            r"shape \(4, 8, 8, 16\) for 4 labels, expected \(n, 8, 8, 32\)",
        ),
        (chunk([nan], [np.arange(4)]), "activations that are not finite float32"),
        (chunk([good.astype(np.float64)], [np.arange(4)]), "not finite float32"),
        (
            chunk([good], [np.arange(4.0)]),
            r"labels of shape \(4,\) and dtype float64, expected \(n,\) ints",
        ),
        (chunk([good], [np.array([0, 1, 2, 10])]), "labels outside the dataset's"),
        (chunk([good], [np.arange(3)]), r"shape \(4, 8, 8, 32\) for 3 labels"),
        (chunk([good[:0]], [np.arange(0)]), r"shape \(0, 8, 8, 32\) for 0 labels"),
    ]
    for content, reason in bad:
        assert re.search(reason, server._check_chunk(content)), reason
    two_label_arrays = chunk([good], [np.arange(4)] * 2)
    refused = server._check_chunk(two_label_arrays, shared_labels=True)
    assert refused == "2 label arrays, expected 1"
    # returned client parts: only the well-formed one with examples is accepted, as
    # sent; each other is refused for its own reason
    server.partitions = {7: 0, 8: 1, 9: 2, 10: 3, 11: 4}
    part = server.client_weights

    def reply(weights, examples):
        records = {"weights": ArrayRecord(numpy_ndarrays=weights)}
        if examples is not None:
            records["result"] = ConfigRecord({"num_examples": examples})
        return RecordDict(records)

    narrow = [np.zeros((3, 3, 1, 16), np.float32), np.zeros(16, np.float32)]
    tally = RoundTally()
    accepted = server._accept(
        {
            11: reply(part, 0),
            10: reply(narrow, 10),
            9: reply(part, None),
            8: reply([np.full_like(w, np.nan) for w in part], 10),
            7: reply(part, 10),
        },
        tally,
    )
    ((node_id, weights, examples),) = accepted
    assert node_id == 7 and examples == 10
    assert [w.tobytes() for w in weights] == [w.tobytes() for w in part]
    assert tally.rejected == {
        8: "layer 0 contains NaN or Inf",
        9: "a reply without its client part or example count",
        10: "layer 0 has shape (3, 3, 1, 16), expected (3, 3, 1, 32)",
        11: "0 examples",
    }


def test_split_node_names_a_malformed_cut_gradient():
    edge, _ = node({"split": "splitfed_v1", "client-batch-size": 16})
    reply = edge.forward(message(1, weights=edge.part.get_weights()))
    acts = reply.array_records["acts"].to_numpy_ndarrays()
    wrong_dtype = [np.zeros_like(a, np.float64) for a in acts]
    with pytest.raises(ValueError, match="batch 0 .* dtype float64, expected"):
        edge.backward(message(1, grads=wrong_dtype))
    wrong_shape = [np.zeros((a.shape[0] + 1, *a.shape[1:]), np.float32) for a in acts]
    with pytest.raises(ValueError, match=r"batch 0 of shape \(17, 8, 8, 32\)"):
        edge.backward(message(1, grads=wrong_shape))


@pytest.mark.parametrize("name", ["cnn", "mlp", "fedavg_cnn", "dp_cnn"])
def test_the_auto_cut_of_every_model_with_a_hidden_layer_splits_it(name):
    # `auto` is the model's first weighted layer; it once knew cnn and mlp only
    from fl_app.core.config import MODEL_LAYERS
    from fl_app.features.split.model import cut_layer, split_model
    from fl_app.ml.models import build_model

    cfg = parse_run_config({"model": name, "split": "splitfed_v1"})
    cut = cut_layer(cfg.split, name)
    assert cut == MODEL_LAYERS[name][0]
    model = build_model(cfg.model, (28, 28, 1), 10)
    client, server = split_model(model, cut)
    assert client.layers[-1].name == cut
    assert server.output.shape[-1] == 10
