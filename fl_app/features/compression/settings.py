"""Settings of update and model compression (``compression``, ``compression-*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_app.core.config import require_dense, unit_closed
from fl_app.core.schema import fail, register_section, setting

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig


def _codec(spec: str) -> bool:
    from fl_app.features.compression.codecs import Codec  # numpy only

    try:
        Codec.parse(spec)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class CompressionConfig:
    """How model arrays travel: codec specs (``features.compression.codecs``)."""

    upload: str = setting(
        "none", "'none' or a '+'-joined codec spec", _codec, key="compression"
    )
    download: str = setting("none", "'none' or a '+'-joined codec spec", _codec)
    # clients send their update minus the model they received
    delta: bool = setting(False)
    # carry each client's coding error into its next update
    error_feedback: bool = setting(False)
    # fraction of each kernel's update entries sent (largest)
    topk: float = setting(1.0, "0 < value <= 1", unit_closed)

    @property
    def active(self) -> bool:
        """Whether anything differs from dense float32 full models."""
        return (
            self.upload != "none"
            or self.download != "none"
            or self.delta
            or self.topk < 1.0
        )

    def validate(self, run: RunConfig) -> None:
        """Error feedback and top-k need delta (sparse) uploads; dense strategies."""
        if self.error_feedback and not self.delta:
            raise fail(
                "compression-error-feedback",
                True,
                "false unless compression-delta=true (the coding error of an update "
                "is carried into the client's next update)",
            )
        if self.topk < 1.0 and not (self.delta and "sparse" in self.upload):
            raise fail(
                "compression-topk",
                self.topk,
                "1.0 unless compression-delta=true and compression includes "
                "'sparse' (top-k keeps the largest entries of an update, sent sparse)",
            )
        if self.active:
            require_dense(run)


register_section("compression", CompressionConfig, "compression")
