"""Synthetic data from a federated conditional GAN: node handlers, the GAN round on
the server, balancing, refusals (fl_app.features.synthetic.client,
fl_app.features.synthetic.server)."""

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from fl_app.client.keras_client import KerasClient
from fl_app.core.config import ConfigError, default_run_config, parse_run_config
from fl_app.features.synthetic.client import (
    STATE_GENERATOR,
    STATE_PRIVACY,
    SyntheticNode,
    gan_epsilon,
    synthetic_handler,
    with_synthetic_rows,
)
from fl_app.features.synthetic.gan import GAN_FILL, GAN_TRAIN
from tests.inprocess import InProcessGrid, server_identity

TINY = {
    "num-clients": 3,
    "clients-per-round": 3,
    "evaluate-clients-per-round": 0,
    "partition": "pathological",
    "synthetic": "gan",
    "synthetic-local-steps": 2,
    "synthetic-batch-size": 16,
    "synthetic-latent-dim": 4,
}


def context(flat, pid=0):
    return Context(
        run_id=1,
        node_id=100 + pid,
        node_config={"partition-id": pid, "num-partitions": 3},
        state=RecordDict(),
        run_config={**TINY, **flat},
    )


def gan_message(node, server_round):
    generator, discriminator = node_networks(node)
    return RecordDict(
        {
            "generator": ArrayRecord(numpy_ndarrays=generator),
            "discriminator": ArrayRecord(numpy_ndarrays=discriminator),
            "config": ConfigRecord({"server_round": server_round}),
        }
    )


def node_networks(node):
    from fl_app.features.synthetic.client import get_trainer

    trainer = get_trainer(node.shape, node.num_classes, node.synthetic, 0)
    trainer.generator.set_weights(
        [np.full_like(w, 0.01) for w in trainer.generator.get_weights()]
    )
    return trainer.get_weights()


def test_a_gan_round_on_a_node_trains_both_networks_and_reports_its_rows():
    ctx = context({})
    node = SyntheticNode(parse_run_config(ctx.run_config), ctx)
    sent = gan_message(node, 1)
    reply = node.train(sent)
    result = reply.config_records["result"]
    assert result["num_examples"] == len(node.data.train)
    assert np.isfinite(result["d_loss"]) and np.isfinite(result["g_loss"])
    assert "epsilon" not in result  # no DP, no ε claimed
    for name in ("generator", "discriminator"):
        before = sent.array_records[name].to_numpy_ndarrays()
        after = reply.array_records[name].to_numpy_ndarrays()
        assert [w.shape for w in after] == [w.shape for w in before]
        assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))


def test_the_generator_trains_on_every_kth_batch_with_discriminator_steps(monkeypatch):
    # Prepare: 6 local batches, a generator step every 3rd; the trainer's step spied
    from fl_app.features.synthetic.gan import GanTrainer

    ctx = context({"synthetic-local-steps": 6, "synthetic-discriminator-steps": 3})
    node = SyntheticNode(parse_run_config(ctx.run_config), ctx)
    calls = []
    real_step = GanTrainer.step

    def spy(self, x, y, rng, train_generator=True):
        calls.append(train_generator)
        return real_step(self, x, y, rng, train_generator)

    monkeypatch.setattr(GanTrainer, "step", spy)
    sent = gan_message(node, 1)
    reply = node.train(sent)
    assert calls == [False, False, True, False, False, True]
    assert np.isfinite(reply.config_records["result"]["g_loss"])  # its 2 steps' mean


def test_a_discriminator_only_step_leaves_the_generator_unchanged():
    from fl_app.features.synthetic.gan import GanTrainer

    rng = np.random.default_rng(0)
    trainer = GanTrainer((6,), 2, latent_dim=4, seed=0)
    x = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 2, 16)
    generator, discriminator = trainer.get_weights()
    d_loss, g_loss = trainer.step(x, y, rng, train_generator=False)
    assert np.isfinite(d_loss) and np.isnan(g_loss)
    after_g, after_d = trainer.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(after_g, generator, strict=True))
    assert any(
        not np.array_equal(a, b) for a, b in zip(after_d, discriminator, strict=True)
    )


def test_dp_gan_steps_are_accounted_in_the_node_state_and_never_go_back():
    ctx = context({"synthetic-dp": True, "synthetic-dp-noise-multiplier": 1.5})
    node = SyntheticNode(parse_run_config(ctx.run_config), ctx)
    first = node.train(gan_message(node, 1)).config_records["result"]["epsilon"]
    assert int(ctx.state.config_records[STATE_PRIVACY]["steps"]) == 2
    node = SyntheticNode(parse_run_config(ctx.run_config), ctx)  # a later message
    second = node.train(gan_message(node, 2)).config_records["result"]["epsilon"]
    assert int(ctx.state.config_records[STATE_PRIVACY]["steps"]) == 4
    syn = parse_run_config(ctx.run_config).synthetic
    n = len(node.data.train)
    assert first == pytest.approx(gan_epsilon(syn, 2, n))
    assert second == pytest.approx(gan_epsilon(syn, 4, n)) and second > first
    # q = batch / rows, σ = the discriminator's noise multiplier, δ its delta
    from fl_app.features.privacy.dpsgd import epsilon

    assert second == pytest.approx(epsilon(4, 16 / n, 1.5, 1e-5))


def test_fill_keeps_the_generator_and_counts_each_class_by_hand():
    ctx = context({"synthetic-fill": "count", "synthetic-fill-count": 150})
    node = SyntheticNode(parse_run_config(ctx.run_config), ctx)
    generator, _ = node_networks(node)
    reply = node.fill(RecordDict({"generator": ArrayRecord(numpy_ndarrays=generator)}))
    result = reply.config_records["result"]
    real = np.bincount(node.data.train.y, minlength=10)
    expected = np.maximum(150 - real, 0)
    assert list(result["real_by_class"]) == real.tolist()
    assert list(result["synthetic_by_class"]) == expected.tolist()
    assert result["num_synthetic"] == expected.sum()
    stored = ctx.state.array_records[STATE_GENERATOR].to_numpy_ndarrays()
    assert all(np.array_equal(a, b) for a, b in zip(stored, generator, strict=True))
    with pytest.raises(ValueError, match="final generator of shapes"):
        node.fill(RecordDict({"generator": ArrayRecord(numpy_ndarrays=generator[1:])}))


def test_balancing_adds_generated_training_rows_and_never_touches_validation():
    ctx = context({})
    cfg = parse_run_config(ctx.run_config)
    node = SyntheticNode(cfg, ctx)
    generator, _ = node_networks(node)
    node.fill(RecordDict({"generator": ArrayRecord(numpy_ndarrays=generator)}))
    data, added = with_synthetic_rows(cfg, node.data, ctx.state, 0, 10)
    counts = np.bincount(data.train.y, minlength=10)
    largest = np.bincount(node.data.train.y, minlength=10).max()
    assert counts.tolist() == [largest] * 10  # every class up to the largest
    assert added == 10 * largest - len(node.data.train)
    np.testing.assert_array_equal(
        data.train.x[: len(node.data.train)], node.data.train.x
    )
    assert data.val is node.data.val
    again, _ = with_synthetic_rows(cfg, node.data, ctx.state, 0, 10)
    np.testing.assert_array_equal(again.train.x, data.train.x)  # same rows each time

    # the client trains on them, weighs its update by its real rows, and
    # evaluates on its validation rows only
    client = KerasClient(cfg, 0, ctx.state)
    assert len(client.data.train) == len(data.train)
    assert (
        client.num_real == len(node.data.train)
        and client.row_metrics["num_synthetic"] == added
    )
    seen = []
    import fl_app.client.keras_client as client_module

    original = client_module.evaluate_model

    def spy(model, rows):
        seen.append(rows)
        return original(model, rows)

    client_module.evaluate_model = spy
    try:
        weights = client.get_parameters({})
        loss, count, metrics = client.evaluate(weights, {})
    finally:
        client_module.evaluate_model = original
    assert count == len(node.data.val) and seen == [node.data.val]
    _, examples, fit_metrics = client.fit(weights, {"server_round": 1})
    assert examples == client.num_real
    assert fit_metrics["num_synthetic"] == added


def test_without_a_final_generator_a_client_trains_on_its_real_rows(caplog):
    # Prepare: a node that never got the final generator, and the same partition's
    # client in a run without synthetic data.
    ctx = context({})
    cfg = parse_run_config(ctx.run_config)
    client = KerasClient(cfg, 1, ctx.state)
    plain = KerasClient(parse_run_config({**TINY, "synthetic": "none"}), 1)
    weights = client.get_parameters({})
    # Execute
    trained, examples, metrics = client.fit(weights, {"server_round": 1})
    expected, plain_examples, _ = plain.fit(weights, {"server_round": 1})
    # Assert: its training rows are its real rows, and it trains exactly as a client
    # without synthetic data does (bit for bit), weighted by them
    assert client.row_metrics["num_synthetic"] == 0 and metrics["num_synthetic"] == 0
    np.testing.assert_array_equal(client.data.train.x, plain.data.train.x)
    np.testing.assert_array_equal(client.data.train.y, plain.data.train.y)
    assert examples == plain_examples == len(plain.data.train) == metrics["num_real"]
    for a, b in zip(trained, expected, strict=True):
        assert a.tobytes() == b.tobytes()
    assert "has no final generator in its node state" in caplog.text


def test_a_gan_message_to_a_run_without_synthetic_data_fails_clearly():
    ctx = context({"synthetic": "none"})
    for message_type in (GAN_TRAIN, GAN_FILL):
        msg = SimpleNamespace(
            metadata=SimpleNamespace(message_type=message_type), content=RecordDict()
        )
        with pytest.raises(ConfigError, match="'synthetic' is 'none'"):
            synthetic_handler(msg, ctx)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"split": "splitfed_v1"}, "'split': received 'splitfed_v1'"),
        ({"secagg": True}, "'secagg': received True.*not masked"),
        ({"clientdp": "server-fixed"}, "'clientdp'.*not clipped"),
        ({"dpsgd": "sgd"}, "'synthetic-dp': received False, allowed: true"),
        ({"synthetic-fill": "most"}, "'synthetic-fill': received 'most'"),
        ({"synthetic-rounds": 0}, "'synthetic-rounds': received 0"),
        (
            {"synthetic-local-steps": 2, "synthetic-discriminator-steps": 3},
            "'synthetic-discriminator-steps': received 3, allowed: at most",
        ),
        (
            {"synthetic-dp": True, "synthetic-generator-labels": "local"},
            "'synthetic-generator-labels': received 'local'.*outside DP-SGD",
        ),
    ],
)
def test_config_refuses_what_the_gan_phase_cannot_combine_with(extra, match):
    with pytest.raises(ConfigError, match=match):
        parse_run_config({**TINY, **extra})


def test_dp_sgd_combines_with_a_dp_discriminator():
    # Prepare: DP on the GAN (sigma 1.5) and DP-SGD on the classifier (sigma 1.1),
    # both accounted in the same node state.
    ctx = context(
        {
            "model": "softmax",
            "dpsgd": "sgd",
            "dpsgd-noise-multiplier": 1.1,
            "synthetic-dp": True,
            "synthetic-dp-noise-multiplier": 1.5,
        }
    )
    cfg = parse_run_config(ctx.run_config)
    node = SyntheticNode(cfg, ctx)
    n_real = len(node.data.train)
    # Execute: a GAN round (2 DP steps), the final generator, then a classifier fit
    gan = node.train(gan_message(node, 1)).config_records["result"]["epsilon"]
    generator, _ = node_networks(node)
    node.fill(RecordDict({"generator": ArrayRecord(numpy_ndarrays=generator)}))
    client = KerasClient(cfg, 0, ctx.state)
    _, examples, metrics = client.fit(client.get_parameters({}), {"server_round": 1})
    # Assert: the classifier trained with DP-SGD on real and generated rows, its
    # steps (epochs / q, q = batch / all its rows) and epsilon accounted apart from
    # the GAN's, which stay as the GAN phase left them (reported separately).
    from fl_app.features.privacy.client import STATE_PRIVACY as CLASSIFIER_PRIVACY
    from fl_app.features.privacy.dpsgd import dp_sgd_steps, epsilon

    rows = len(client.data.train)
    assert (
        client.row_metrics["num_synthetic"] > 0
        and rows == n_real + client.row_metrics["num_synthetic"]
    )
    assert examples == n_real
    steps = dp_sgd_steps(rows, cfg.client.batch_size, cfg.client.local_epochs)
    records = ctx.state.config_records
    assert int(records[CLASSIFIER_PRIVACY]["steps"]) == steps
    assert int(records[STATE_PRIVACY]["steps"]) == 2
    q = cfg.client.batch_size / rows
    assert metrics["epsilon"] == pytest.approx(epsilon(steps, q, 1.1, 1e-5))
    assert gan == pytest.approx(gan_epsilon(cfg.synthetic, 2, n_real))
    assert gan == pytest.approx(epsilon(2, 16 / n_real, 1.5, 1e-5))


class RecordingGrid(InProcessGrid):
    """The in-process grid over the real ClientApp, keeping every reply."""

    def send_and_receive(self, messages, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        self.replies = replies
        return replies


@pytest.fixture
def gan_server():
    from fl_app.client_app import app
    from fl_app.data import load_federated_data
    from fl_app.features.synthetic.server import GanServer

    cfg = parse_run_config(TINY)
    nodes = [{"partition-id": pid, "num-partitions": 3} for pid in range(3)]
    grid = RecordingGrid(app, {**default_run_config(), **TINY}, nodes)
    run = SimpleNamespace(cfg=cfg, grid=grid, data=load_federated_data(cfg))
    with server_identity(grid.run.run_id):
        server = GanServer(run)
        server.discover(3)
        yield server, grid


def test_a_federated_gan_round_averages_both_networks_by_row_count(gan_server):
    server, grid = gan_server
    row = server.run_round(1)
    replies = [r.content for r in grid.replies]
    rows = [r.config_records["result"]["num_examples"] for r in replies]
    assert len(replies) == 3 and len(set(rows)) > 1  # unequal weights
    for name, averaged in (
        ("generator", server.generator),
        ("discriminator", server.discriminator),
    ):
        nets = [r.array_records[name].to_numpy_ndarrays() for r in replies]
        for i, layer in enumerate(averaged):
            by_hand = sum(n * net[i].astype(np.float64) for n, net in zip(rows, nets))
            np.testing.assert_allclose(layer, by_hand / sum(rows), rtol=1e-6)
    assert row["phase"] == "gan" and row["round"] == 1 and row["num_rejected"] == 0
    assert [c["partition_id"] for c in row["clients"]] == [0, 1, 2]
    assert row["bytes_up"] > 0 and row["bytes_down"] > 0
    d = sum(c["d_loss"] * c["num_examples"] for c in row["clients"]) / sum(rows)
    assert row["gan_d_loss"] == pytest.approx(d)


def test_a_non_finite_gan_update_is_rejected_and_the_round_goes_on(
    monkeypatch, gan_server
):
    server, _ = gan_server
    import fl_app.features.synthetic.client as synthetic

    honest = synthetic.SyntheticNode.train

    def poisoned(self, content):
        reply = honest(self, content)
        if self.partition_id == 1:
            nets = reply.array_records["generator"].to_numpy_ndarrays()
            nets[0] = np.full_like(nets[0], np.nan)
            reply.array_records["generator"] = ArrayRecord(numpy_ndarrays=nets)
        return reply

    monkeypatch.setattr(synthetic.SyntheticNode, "train", poisoned)
    row = server.run_round(1)
    assert row["num_rejected"] == 1 and "NaN" in row["rejected"][0]["reason"]
    assert row["rejected"][0]["partition_id"] == 1
    assert all(np.all(np.isfinite(w)) for w in server.generator)
    assert [c["partition_id"] for c in row["clients"]] == [0, 2]


def test_a_round_whose_updates_are_all_rejected_keeps_both_networks(
    monkeypatch, gan_server
):
    server, _ = gan_server
    import fl_app.features.synthetic.client as synthetic

    honest = synthetic.SyntheticNode.train

    def lossless(self, content):  # no losses in the reply
        reply = honest(self, content)
        reply.config_records["result"] = ConfigRecord({"num_examples": 10})
        return reply

    monkeypatch.setattr(synthetic.SyntheticNode, "train", lossless)
    before = (
        [w.copy() for w in server.generator],
        [w.copy() for w in server.discriminator],
    )
    row = server.run_round(1)
    assert row["num_rejected"] == 3 and row["clients"] == []
    assert all("losses" in r["reason"] for r in row["rejected"])
    assert row["gan_d_loss"] is None
    for kept, was in zip((server.generator, server.discriminator), before):
        assert all(np.array_equal(a, b) for a, b in zip(kept, was, strict=True))
