"""The conditional GAN's networks, local step and balancing counts (synthetic.gan)."""

import numpy as np
import pytest

from fl_app.features.synthetic.gan import (
    GanDp,
    GanTrainer,
    build_discriminator,
    build_generator,
    fill_counts,
)


@pytest.mark.parametrize("shape", [(8, 8, 1), (60,), (28, 28, 1), (32, 32, 3)], ids=str)
def test_gan_networks_fit_each_datasets_rows(shape):
    generator = build_generator(shape, 10, latent_dim=8)
    discriminator = build_discriminator(shape, 10)
    noise = np.zeros((3, 8), np.float32)
    labels = np.array([0, 4, 9], np.int32)
    rows = generator([noise, labels]).numpy()
    assert rows.shape == (3, *shape)
    if len(shape) == 3:  # images in [0, 1]
        assert rows.min() >= 0 and rows.max() <= 1
    assert discriminator([rows, labels]).shape == (3, 11)  # real logit, 10 classes


def test_gan_step_teaches_the_discriminator_to_tell_real_from_generated():
    rng = np.random.default_rng(0)
    trainer = GanTrainer((6,), 2, latent_dim=4, learning_rate=1e-3, seed=0)
    # real rows: class 0 near +2, class 1 near -2 in every coordinate
    y = rng.integers(0, 2, 64)
    x = np.where(y[:, None] == 0, 2.0, -2.0) + 0.1 * rng.standard_normal((64, 6))
    x = x.astype(np.float32)
    first, _ = trainer.step(x, y, rng)
    for _ in range(30):
        d_loss, g_loss = trainer.step(x, y, rng)
    assert d_loss < first and np.isfinite(g_loss)
    samples = trainer.sample(np.array([0, 1, 1]), rng)
    assert samples.shape == (3, 6) and np.all(np.isfinite(samples))


def test_generator_labels_are_the_batchs_own_or_uniform_over_every_class():
    # Prepare: a batch of 64 rows of classes 2 and 5 only, the step's inputs spied
    rng = np.random.default_rng(0)
    y = np.repeat([2, 5], 32)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    seen = {}
    for mode in ("local", "uniform"):
        trainer = GanTrainer((6,), 10, latent_dim=4, seed=0, generator_labels=mode)

        def spy(*args, mode=mode):
            seen[mode] = args  # (x, y, noise, generator labels, generator noise)
            return 0.0, 0.0

        trainer._step = spy
        trainer.step(x, y, rng)
    # local: the batch's labels, shuffled; uniform: classes the batch lacks as well
    local = seen["local"][3].numpy()
    assert sorted(local) == sorted(y) and not np.array_equal(local, y)
    assert set(seen["uniform"][3].numpy()) - {2, 5}
    with pytest.raises(ValueError, match="outside DP-SGD"):
        GanTrainer((6,), 10, dp=GanDp(1.0, 1.0), generator_labels="local")


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1)], ids=str)
def test_dp_discriminator_gradients_match_tf_privacy(shape):
    import tensorflow as tf

    from fl_app.features.privacy.dpsgd import _dp_optimizers

    # Prepare: 8 real rows and 8 generated ones, a clip (0.05) every row's
    # gradient exceeds, no noise
    rng = np.random.default_rng(0)
    trainer = GanTrainer(shape, 10, latent_dim=8, seed=0, dp=GanDp(0.05, 1.0))
    x = tf.constant(rng.random((8, *shape), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, 8).astype(np.int32))
    noise = rng.standard_normal((8, 8)).astype(np.float32)
    fake = trainer.generator([noise, y])
    d_vars = trainer.discriminator.trainable_variables
    optimizer = _dp_optimizers()["adam"](
        l2_norm_clip=0.05, noise_multiplier=0.0, num_microbatches=None
    )

    # Execute: ours (vectorized_map over rows), tensorflow-privacy's (Jacobian)
    ours = trainer.dp_gradients(x, y, fake, noise=False)
    with tf.GradientTape(persistent=True) as tape:
        per_row = trainer._row_loss(x, y, fake)
    theirs = [g for g, _ in optimizer._compute_gradients(per_row, d_vars, tape=tape)]

    # Assert: the same clipped mean, shorter than the clip
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(
            tf.convert_to_tensor(a).numpy(),
            tf.convert_to_tensor(b).numpy(),
            rtol=1e-4,
            atol=1e-7,
        )
    assert 0 < tf.linalg.global_norm(ours).numpy() <= 0.05 + 1e-6
    unclipped = tf.GradientTape()
    with unclipped:
        mean = tf.reduce_mean(trainer._row_loss(x, y, fake))
    assert tf.linalg.global_norm(unclipped.gradient(mean, d_vars)).numpy() > 0.05


def test_dp_step_adds_noise():
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, 16)
    runs = []
    for noise_multiplier in (1e-9, 1.0):
        trainer = GanTrainer((8, 8, 1), 10, seed=0, dp=GanDp(1.0, noise_multiplier))
        start = trainer.discriminator.get_weights()
        trainer.step(x, y, np.random.default_rng(1))
        moved = [a - b for a, b in zip(trainer.discriminator.get_weights(), start)]
        runs.append(moved)
    # same seed, rows and latent draws: only the noise differs
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(*runs))


def test_fill_counts_by_hand():
    labels = np.array([0, 0, 0, 2, 2, 3])  # classes 1 and 4 missing
    np.testing.assert_array_equal(fill_counts(labels, 5, "largest"), [0, 3, 1, 2, 3])
    np.testing.assert_array_equal(fill_counts(labels, 5, 2), [0, 2, 0, 1, 2])
    np.testing.assert_array_equal(fill_counts(labels, 5, 0), [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(
        fill_counts(np.array([], int), 3, "largest"), [0, 0, 0]
    )
    with pytest.raises(ValueError, match="'largest' or a count"):
        fill_counts(labels, 5, -1)
