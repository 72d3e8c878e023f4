"""Settings of update and model compression (``compression``, ``compression-*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_app.core.config import non_negative, positive, require_dense, unit_closed
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
    # rounds over which the top-k fraction falls from 1 to topk (DGC's warm-up)
    topk_warmup_rounds: int = setting(0, "value >= 0", non_negative)
    # send each client what changed since its own copy of the model
    download_delta: bool = setting(False)
    # fraction of each kernel's entries the public model moves per round (largest)
    download_topk: float = setting(1.0, "0 < value <= 1", unit_closed)
    # rounds of change history kept: an older copy is sent the whole model
    download_max_age: int = setting(20, "value >= 1", positive)

    @property
    def active(self) -> bool:
        """Whether anything differs from dense float32 full models."""
        return (
            self.upload != "none"
            or self.download != "none"
            or self.delta
            or self.topk < 1.0
            or self.download_delta
        )

    def topk_at(self, server_round: int) -> float:
        """Return the top-k fraction of ``server_round``.

        DGC's exponential warm-up (Lin et al. 2018): ``topk ** (r / (W + 1))`` in
        rounds ``r <= W``, then ``topk``.
        """
        warmup = self.topk_warmup_rounds
        if warmup <= 0 or server_round > warmup or server_round < 1:
            return self.topk
        return self.topk ** (server_round / (warmup + 1))

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
        if self.topk_warmup_rounds and self.topk == 1.0:
            raise fail(
                "compression-topk-warmup-rounds",
                self.topk_warmup_rounds,
                "0 unless compression-topk < 1 (the warm-up lowers the fraction sent "
                "from 1 to compression-topk)",
            )
        if self.download_delta:
            self._validate_download_delta(run)
        elif self.download_topk < 1.0:
            raise fail(
                "compression-download-topk",
                self.download_topk,
                "1.0 unless compression-download-delta=true",
            )
        if self.active:
            require_dense(run)

    def _validate_download_delta(self, run: RunConfig) -> None:
        if not self.delta:
            raise fail(
                "compression-download-delta",
                True,
                "false unless compression-delta=true (clients upload deltas that the "
                "server adds to its own model: what a download left out stays there)",
            )
        if self.download not in ("none", "float16"):
            raise fail(
                "compression-download",
                self.download,
                "'none' or 'float16' with compression-download-delta=true (the "
                "precision of the values sent; indices are gap-coded)",
            )
        if run.pruning is not None:
            raise fail(
                "compression-download-delta",
                True,
                "false with pruning (the pruning mask reaches clients as the zeros "
                "of the whole model)",
            )


register_section("compression", CompressionConfig, "compression")
