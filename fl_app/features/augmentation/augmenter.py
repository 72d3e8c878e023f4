"""Image augmentation with Keras preprocessing layers, applied to training batches only.

The pipeline is not part of the model: evaluation and the weights exchanged with the
server never see it. It is built per local training with a seed drawn from the
client's per-round generator, so a client's augmentations do not depend on which
clients a shared worker served before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.features.augmentation.settings import AugmentationConfig

keras = tf.keras

Augmenter = Callable[[np.ndarray], tf.Tensor]


def make_augmenter(cfg: AugmentationConfig, seed: int) -> Augmenter | None:
    """Return a function that randomly transforms an image batch, or None if off."""
    if not cfg.active:
        return None
    layers: list[keras.layers.Layer] = []
    seeds = iter(np.random.default_rng(seed).integers(0, 2**31 - 1, size=5))
    if cfg.rotation > 0:
        layers.append(
            keras.layers.RandomRotation(
                cfg.rotation, fill_mode="constant", seed=next(seeds)
            )
        )
    if cfg.translation > 0:
        layers.append(
            keras.layers.RandomTranslation(
                cfg.translation, cfg.translation, fill_mode="constant", seed=next(seeds)
            )
        )
    if cfg.zoom > 0:
        layers.append(
            keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=next(seeds))
        )
    if cfg.flip != "none":
        layers.append(keras.layers.RandomFlip(cfg.flip, seed=next(seeds)))
    if cfg.contrast > 0:
        layers.append(keras.layers.RandomContrast(cfg.contrast, seed=next(seeds)))
    pipeline = keras.Sequential(layers, name="augmentation")

    def augment(batch: np.ndarray) -> tf.Tensor:
        return pipeline(batch, training=True)

    return augment
