"""The compression feature's server part: the strategy's codecs.

Gives every dense strategy its :class:`strategies.transport.Transport` (download
codec, upload decoding, deltas) when compression is on.
"""

from __future__ import annotations

from typing import Any

from fl_app.core.config import RunConfig
from fl_app.features.compression.codecs import Codec
from fl_app.features.compression.download import ModelCopies
from fl_app.server.registry import register_strategy_options
from strategies.transport import Transport


@register_strategy_options(dense_only=True)
def codec_transport(cfg: RunConfig, model: Any) -> dict[str, Any]:
    """Give the strategy the run's codecs (nothing while compression is off)."""
    comp = cfg.compression
    if not comp.active:
        return {}
    if comp.download_delta:  # per-client downloads: what changed since each copy
        values = "float16" if comp.download == "float16" else "float32"
        copies = ModelCopies(
            comp.download_topk, values, comp.download_max_age, share_origin=True
        )
        return {
            "transport": Transport(
                upload=Codec.parse(comp.upload) if comp.upload != "none" else None,
                delta=True,
                copies=copies,
            )
        }
    return {
        "transport": Transport(
            upload=Codec.parse(comp.upload) if comp.upload != "none" else None,
            download=Codec.parse(comp.download) if comp.download != "none" else None,
            delta=comp.delta,
        )
    }
