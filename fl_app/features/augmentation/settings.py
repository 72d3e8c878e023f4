"""Settings of image augmentation (``client-augmentation-*``), on every client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_app.core.config import unit_open
from fl_app.core.schema import fail, setting

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig

FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")


@dataclass(frozen=True)
class AugmentationConfig:
    """Random image transformations applied to training batches only.

    Factors follow the Keras preprocessing layers: ``rotation`` as a fraction of a
    full turn, ``translation`` and ``zoom`` as fractions of the image size,
    ``contrast`` as the contrast factor; 0 (or ``flip="none"``) disables one.
    """

    name: str = setting("none")
    rotation: float = setting(0.0, "0 <= value < 1", unit_open)
    translation: float = setting(0.0, "0 <= value < 1", unit_open)
    zoom: float = setting(0.0, "0 <= value < 1", unit_open)
    flip: str = setting("none", choices=FLIP_MODES)
    contrast: float = setting(0.0, "0 <= value < 1", unit_open)

    @property
    def active(self) -> bool:
        """Whether any transformation is switched on."""
        return (
            max(self.rotation, self.translation, self.zoom, self.contrast) > 0
            or self.flip != "none"
        )

    def validate(self, run: RunConfig) -> None:
        """Image augmentation needs images."""
        if self.active and run.dataset.name == "synthetic":
            raise fail(
                "client-augmentation",
                self.name,
                "'none' (all factors 0) for dataset=synthetic: image augmentation "
                "needs image data",
            )
