"""A small class-conditional GAN per dataset, its local training step, balancing.

The generator and discriminator fit for each dataset's rows (dense networks for
8×8 digits and vectors, small convolutional ones for 28×28 and 32×32 images), one
local training step on a client's real rows (:class:`GanTrainer`: the
discriminator on real against generated rows, with an auxiliary class head; the
generator through the discriminator; optionally DP-SGD for the discriminator),
class-conditional sampling, and how many rows of each class a client adds
(:func:`fill_counts`, pure numpy). The federated phase around them is
:mod:`fl_app.features.synthetic.server` (server) and
:mod:`fl_app.features.synthetic.client` (nodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.features.synthetic.settings import GENERATOR_LABELS

keras = tf.keras

# The GAN phase's messages (fl_app.features.synthetic.server sends them,
# fl_app.features.synthetic.client
# answers them on the nodes)
GAN_TRAIN = "train.gan"
GAN_FILL = "train.gan_fill"

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
    """Map ``(row, label)`` to ``[real logit, class logits...]`` (``1 + C`` outputs).

    The real/fake logit reads the row's features joined with its label's embedding
    (a conditional discriminator: does the row fit its label?). The class logits
    read the row's features only (an auxiliary classifier, Odena et al., 2017),
    which also teaches the generator to make rows of the class it was asked for.
    """
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
    joined = keras.layers.Concatenate(name="d_concat")([x, embedded])
    hidden = keras.layers.LeakyReLU(0.2)(keras.layers.Dense(128, name="d_fc")(joined))
    real = keras.layers.Dense(1, name="d_real")(hidden)
    features = keras.layers.LeakyReLU(0.2)(
        keras.layers.Dense(128, name="d_class_fc")(x)
    )
    classes = keras.layers.Dense(num_classes, name="d_class")(features)
    out = keras.layers.Concatenate(name="d_out")([real, classes])
    return keras.Model([row, label], out, name="discriminator")


def _bce(target: float, logits: tf.Tensor) -> tf.Tensor:
    """Per-row logistic loss of the real/fake logit against ``target``."""
    return tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.fill(tf.shape(logits), target), logits=logits
    )


def _class_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-row cross-entropy of the auxiliary class head."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


@dataclass(frozen=True)
class GanDp:
    """DP-SGD for the discriminator (per-row clipping and noise, then Adam)."""

    l2_norm_clip: float
    noise_multiplier: float


class GanTrainer:
    """A generator and discriminator of one shape, their optimizers, one step.

    The discriminator learns to score real rows of each class as real, generated
    rows (of the same labels) as fake, and to tell the class of real rows; the
    generator learns to make rows the discriminator scores as real and of the class
    asked for, and rows of one class that differ as their noise does (the
    mode-seeking term, ``diversity_weight``). The generator's labels
    (``generator_labels``): ``uniform`` draws them uniformly over all classes, so a
    client with few classes still trains the generator on every class against the
    federated discriminator, and nothing of a real batch reaches the generator
    except through the discriminator; ``local`` takes the real batch's labels
    (shuffled), so each client trains the generator only on classes its
    discriminator has seen real rows of. Adam
    (β₁ = 0.5) for both, the discriminator at its own rate (two time-scale updates,
    Heusel et al., 2017). With ``dp``, the discriminator's step is DP-SGD's
    (:meth:`dp_gradients`: per-row gradients, each real row with the generated row
    of its label, clipped together, Gaussian noise added) followed by Adam, so the
    generator inherits its guarantee by post-processing.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        num_classes: int,
        latent_dim: int = 32,
        learning_rate: float = 2e-4,
        seed: int = 0,
        discriminator_learning_rate: float | None = None,
        dp: GanDp | None = None,
        class_weight: float = 1.0,
        diversity_weight: float = 0.0,
        generator_labels: str = "uniform",
    ) -> None:
        if generator_labels not in GENERATOR_LABELS:
            raise ValueError(
                f"generator_labels must be one of {GENERATOR_LABELS}, "
                f"received {generator_labels!r}"
            )
        if dp is not None and generator_labels == "local":
            raise ValueError(
                "generator_labels='local' with DP: the real batch's labels would "
                "reach the generator outside DP-SGD's accounting"
            )
        keras.utils.set_random_seed(seed)
        self.generator_labels = generator_labels
        self.class_weight = class_weight
        self.diversity_weight = diversity_weight
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.dp = dp
        self.generator = build_generator(shape, num_classes, latent_dim)
        self.discriminator = build_discriminator(shape, num_classes)
        self.g_optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5)
        d_rate = discriminator_learning_rate or learning_rate
        self.d_optimizer = keras.optimizers.Adam(d_rate, beta_1=0.5)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)
        self._step = tf.function(self._train_step, reduce_retracing=True)

    def _row_loss(self, x: tf.Tensor, y: tf.Tensor, fake: tf.Tensor) -> tf.Tensor:
        """Return the discriminator's loss per row (a real and a generated row)."""
        real_out = self.discriminator([x, y], training=True)
        fake_out = self.discriminator([fake, y], training=True)
        return (
            _bce(1.0, real_out[:, 0])
            + _bce(0.0, fake_out[:, 0])
            + self.class_weight * _class_loss(y, real_out[:, 1:])
        )

    def dp_gradients(
        self, x: tf.Tensor, y: tf.Tensor, fake: tf.Tensor, noise: bool = True
    ) -> list[tf.Tensor]:
        """DP-SGD's gradient of the discriminator's mean loss over the batch.

        Each row's gradient (the real row and the generated row of its label
        together) is clipped to ``l2_norm_clip``, the clipped gradients are summed,
        Gaussian noise of standard deviation ``noise_multiplier * l2_norm_clip``
        is added and the sum divided by the rows: the mechanism of
        tensorflow-privacy's DP optimizers (a unit test compares them), with each
        row's gradient taken by ``tf.vectorized_map`` over the rows rather than
        their Jacobian through the whole batch (many times faster; see
        :mod:`fl_app.features.privacy.dpsgd`).
        """
        dp = self.dp
        d_vars = self.discriminator.trainable_variables

        def one_row(row):
            xi, yi, fi = (t[None] for t in row)
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(self._row_loss(xi, yi, fi))
            grads = tape.gradient(
                loss, d_vars, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            # dense first: the label embedding's gradient is two slices of one row
            # (the real and the generated row share the label), and the norm of
            # IndexedSlices counts duplicate slices apart, not their sum
            grads = [tf.convert_to_tensor(g) for g in grads]
            return tf.clip_by_global_norm(grads, dp.l2_norm_clip)[0]

        per_row = tf.vectorized_map(one_row, (x, y, fake))
        rows = tf.cast(tf.shape(x)[0], tf.float32)
        stddev = dp.noise_multiplier * dp.l2_norm_clip if noise else 0.0
        return [
            (tf.reduce_sum(g, 0) + tf.random.normal(tf.shape(g)[1:], stddev=stddev))
            / rows
            for g in per_row
        ]

    def _train_step(
        self,
        x: tf.Tensor,
        y: tf.Tensor,
        noise: tf.Tensor,
        g_labels: tf.Tensor,
        g_noise: tf.Tensor,
        train_generator: bool = True,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        g_vars = self.generator.trainable_variables
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            fake = self.generator([noise, y], training=True)
            d_loss = tf.reduce_mean(self._row_loss(x, y, fake))
        if self.dp is None:
            grads = tape.gradient(d_loss, d_vars)
        else:  # per-row clipping and noise
            grads = self.dp_gradients(x, y, tf.stop_gradient(fake))
        self.d_optimizer.apply_gradients(zip(grads, d_vars, strict=True))
        if not train_generator:  # a discriminator step only (traced apart)
            return d_loss, tf.constant(np.nan, tf.float32)
        with tf.GradientTape() as tape:
            fake = self.generator([g_noise, g_labels], training=True)
            out = self.discriminator([fake, g_labels], training=True)
            g_loss = tf.reduce_mean(
                _bce(1.0, out[:, 0])
                + self.class_weight * _class_loss(g_labels, out[:, 1:])
            )
            if self.diversity_weight:  # mode seeking (Mao et al., CVPR 2019)
                other = self.generator([noise, g_labels], training=True)
                axes = tf.range(1, tf.rank(fake))
                spread = tf.reduce_mean(tf.abs(fake - other), axis=axes) / (
                    tf.reduce_mean(tf.abs(g_noise - noise), axis=1)
                )
                g_loss += self.diversity_weight * tf.reduce_mean(1 / (spread + 1e-5))
        self.g_optimizer.apply_gradients(
            zip(tape.gradient(g_loss, g_vars), g_vars, strict=True)
        )
        return d_loss, g_loss

    def step(
        self,
        x: np.ndarray,
        y: np.ndarray,
        rng: np.random.Generator,
        train_generator: bool = True,
    ) -> tuple[float, float]:
        """Train on one batch of real rows; return (D loss, G loss).

        The discriminator always takes a step; the generator too unless
        ``train_generator`` is false (its loss is then NaN).
        """
        n = len(y)
        noise = rng.standard_normal((n, self.latent_dim)).astype(np.float32)
        g_noise = rng.standard_normal((n, self.latent_dim)).astype(np.float32)
        if self.generator_labels == "local":
            g_labels = rng.permutation(y).astype(np.int32)
        else:
            g_labels = rng.integers(0, self.num_classes, n).astype(np.int32)
        d_loss, g_loss = self._step(
            tf.constant(x),
            tf.constant(y.astype(np.int32)),
            tf.constant(noise),
            tf.constant(g_labels),
            tf.constant(g_noise),
            bool(train_generator),
        )
        return float(d_loss), float(g_loss)

    def sample(
        self, labels: np.ndarray, rng: np.random.Generator, batch: int = 1024
    ) -> np.ndarray:
        """Generate one row per label (float32)."""
        noise = rng.standard_normal((len(labels), self.latent_dim)).astype(np.float32)
        labels = labels.astype(np.int32)
        parts = [
            self.generator([noise[i : i + batch], labels[i : i + batch]]).numpy()
            for i in range(0, len(labels), batch)
        ]
        shape = tuple(self.generator.output.shape[1:])
        return np.concatenate(parts) if parts else np.zeros((0, *shape), np.float32)

    # -- federated use ------------------------------------------------------------

    def get_weights(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Return ``(generator weights, discriminator weights)``."""
        return self.generator.get_weights(), self.discriminator.get_weights()

    def set_weights(
        self, generator: list[np.ndarray], discriminator: list[np.ndarray]
    ) -> None:
        """Set both networks' weights."""
        self.generator.set_weights(generator)
        self.discriminator.set_weights(discriminator)

    def reset_optimizers(self) -> None:
        """Zero both optimizers' state: no client inherits another's moments."""
        from fl_app.ml.training import reset_optimizer

        reset_optimizer(self.g_optimizer)
        reset_optimizer(self.d_optimizer)


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
