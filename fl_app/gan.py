"""A small class-conditional GAN per dataset, its local training step, balancing.

Groundwork for synthetic data from a federated conditional GAN: the generator and
discriminator fit for each dataset's rows (dense networks for 8×8 digits and
vectors, small convolutional ones for 28×28 and 32×32 images), one local training
step on a client's real rows (the discriminator on real against generated rows,
the generator through the discriminator), class-conditional sampling, and how many
rows of each class a client would add (:func:`fill_counts`, pure numpy).

The federated phase (the server averaging both networks over the clients, its own
rounds and records) and the balancing of client training data build on these and
are not wired into the apps yet.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)

keras = tf.keras

LABEL_EMBEDDING = 16


def _is_large_image(shape: tuple[int, ...]) -> bool:
    """Images big enough for the convolutional networks (28×28, 32×32)."""
    return len(shape) == 3 and shape[0] >= 16 and shape[0] % 4 == 0


def output_activation(shape: tuple[int, ...]) -> str:
    """Images lie in [0, 1] (sigmoid); vectors are unbounded (linear)."""
    return "sigmoid" if len(shape) == 3 else "linear"


def build_generator(
    shape: tuple[int, ...], num_classes: int, latent_dim: int
) -> keras.Model:
    """Map ``(noise, label)`` to one row of ``shape``."""
    noise = keras.Input((latent_dim,), name="noise")
    label = keras.Input((), dtype="int32", name="label")
    embedded = keras.layers.Embedding(num_classes, LABEL_EMBEDDING, name="g_embed")(
        label
    )
    x = keras.layers.Concatenate(name="g_concat")([noise, embedded])
    activation = output_activation(shape)
    if _is_large_image(shape):
        h, w, c = shape
        x = keras.layers.Dense((h // 4) * (w // 4) * 64, name="g_fc")(x)
        x = keras.layers.LeakyReLU(0.2)(x)
        x = keras.layers.Reshape((h // 4, w // 4, 64))(x)
        x = keras.layers.Conv2DTranspose(
            64, 4, strides=2, padding="same", name="g_up1"
        )(x)
        x = keras.layers.LeakyReLU(0.2)(x)
        out = keras.layers.Conv2DTranspose(
            c, 4, strides=2, padding="same", activation=activation, name="g_up2"
        )(x)
    else:
        for i, units in enumerate((128, 256), start=1):
            x = keras.layers.Dense(units, name=f"g_fc{i}")(x)
            x = keras.layers.LeakyReLU(0.2)(x)
        size = int(np.prod(shape))
        x = keras.layers.Dense(size, activation=activation, name="g_out")(x)
        out = keras.layers.Reshape(shape)(x)
    return keras.Model([noise, label], out, name="generator")


def build_discriminator(shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Map ``(row, label)`` to the logit of "real"."""
    row = keras.Input(shape, name="row")
    label = keras.Input((), dtype="int32", name="label")
    embedded = keras.layers.Embedding(num_classes, LABEL_EMBEDDING, name="d_embed")(
        label
    )
    if _is_large_image(shape):
        x = row
        for i, filters in enumerate((32, 64), start=1):
            x = keras.layers.Conv2D(
                filters, 4, strides=2, padding="same", name=f"d_conv{i}"
            )(x)
            x = keras.layers.LeakyReLU(0.2)(x)
        x = keras.layers.Flatten()(x)
    else:
        x = keras.layers.Flatten()(row)
    x = keras.layers.Concatenate(name="d_concat")([x, embedded])
    x = keras.layers.Dense(128, name="d_fc")(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    logit = keras.layers.Dense(1, name="d_out")(x)
    return keras.Model([row, label], logit, name="discriminator")


class GanTrainer:
    """A generator and discriminator of one shape, their optimizers, one step.

    The discriminator learns to score real rows of each class as real and generated
    rows (of the same labels) as fake; the generator learns to make the
    discriminator score its rows as real. Both use Adam and the logistic loss.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        num_classes: int,
        latent_dim: int = 32,
        learning_rate: float = 2e-4,
        seed: int = 0,
    ) -> None:
        keras.utils.set_random_seed(seed)
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.generator = build_generator(shape, num_classes, latent_dim)
        self.discriminator = build_discriminator(shape, num_classes)
        self.g_optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5)
        self.d_optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5)
        self.g_optimizer.build(self.generator.trainable_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.loss = keras.losses.BinaryCrossentropy(from_logits=True)
        self._step = tf.function(self._train_step)

    def _train_step(
        self, x: tf.Tensor, y: tf.Tensor, noise: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        g_vars = self.generator.trainable_variables
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            fake = self.generator([noise, y], training=True)
            real_logit = self.discriminator([x, y], training=True)
            fake_logit = self.discriminator([fake, y], training=True)
            d_loss = self.loss(tf.ones_like(real_logit), real_logit) + self.loss(
                tf.zeros_like(fake_logit), fake_logit
            )
        self.d_optimizer.apply_gradients(
            zip(tape.gradient(d_loss, d_vars), d_vars, strict=True)
        )
        with tf.GradientTape() as tape:
            fake = self.generator([noise, y], training=True)
            fake_logit = self.discriminator([fake, y], training=True)
            g_loss = self.loss(tf.ones_like(fake_logit), fake_logit)
        self.g_optimizer.apply_gradients(
            zip(tape.gradient(g_loss, g_vars), g_vars, strict=True)
        )
        return d_loss, g_loss

    def step(
        self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[float, float]:
        """Train both networks on one batch of real rows; return (D loss, G loss)."""
        noise = rng.standard_normal((len(y), self.latent_dim)).astype(np.float32)
        d_loss, g_loss = self._step(
            tf.constant(x), tf.constant(y.astype(np.int32)), tf.constant(noise)
        )
        return float(d_loss), float(g_loss)

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Generate one row per label."""
        noise = rng.standard_normal((len(labels), self.latent_dim)).astype(np.float32)
        rows = self.generator([noise, labels.astype(np.int32)], training=False)
        return rows.numpy()


def fill_counts(labels: np.ndarray, num_classes: int, fill: int | str) -> np.ndarray:
    """Return how many generated rows of each class a client adds.

    ``fill="largest"``: every class up to the client's largest class count;
    ``fill=k``: every class up to ``k`` rows (classes above ``k`` get none). Classes
    the client lacks count as 0 rows, so they are filled too.
    """
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    if fill == "largest":
        target = counts.max(initial=0)
    elif isinstance(fill, int) and not isinstance(fill, bool) and fill >= 0:
        target = fill
    else:
        raise ValueError(f"fill must be 'largest' or a count >= 0, received {fill!r}")
    return np.maximum(target - counts, 0)
