"""The conditional GAN's networks, local step and balancing counts (synthetic.gan)."""

import numpy as np
import pytest

from fl_app.features.synthetic.gan import (
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
