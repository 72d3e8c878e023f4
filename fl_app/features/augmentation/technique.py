"""Image augmentation as a client technique: a transform of each training batch.

On when any factor of ``client-augmentation-*`` is set. The transform is built per
local training from a seed drawn from the client's per-round generator
(:func:`fl_app.features.augmentation.augmenter.make_augmenter`); evaluation and the
exchanged weights never see it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fl_app.core.techniques import ClientTechnique, register_client_technique
from fl_app.features.augmentation.settings import AugmentationConfig


@register_client_technique
class Augmentation(ClientTechnique):
    """Randomly transform each training batch (Keras preprocessing layers)."""

    name = "augmentation"
    prefix = "client-augmentation"
    Config = AugmentationConfig

    @classmethod
    def enabled(cls, config: AugmentationConfig) -> bool:
        """On when any transformation is set."""
        return config.active

    @classmethod
    def batch_transform(
        cls, config: AugmentationConfig, seed: int
    ) -> Callable[[Any], Any] | None:
        """Return this local training's augmenter."""
        from fl_app.features.augmentation.augmenter import make_augmenter

        return make_augmenter(config, seed)

    @classmethod
    def check_input(
        cls, config: AugmentationConfig, input_shape: tuple[int, ...]
    ) -> None:
        """Refuse data that are not images."""
        if len(input_shape) != 3:
            raise ValueError(
                f"client-augmentation '{config.name}' transforms images (h, w, c) but "
                f"the data has shape {input_shape}; set client.augmentation=none"
            )
