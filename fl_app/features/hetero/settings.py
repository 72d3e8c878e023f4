"""Settings of heterogeneous width slicing (HeteroFL, FedRolex).

``strategy-*`` of strategies that slice widths (``StrategySpec.width_slicing``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_app.core.config import strategy_has
from fl_app.core.schema import fail, register_section, setting

if TYPE_CHECKING:
    pass


def _parse_capacities(text: str) -> tuple[tuple[float, float], ...]:
    """Parse ``"1.0:1,0.5:1"`` into ``((1.0, 0.5), (0.5, 0.5))`` (shares normalized)."""
    allowed = (
        "comma-separated width:share pairs, 0 < width <= 1, share > 0, distinct "
        "widths (e.g. '1.0:0.3,0.5:0.4,0.25:0.3')"
    )
    pairs = []
    try:
        for item in text.split(","):
            width, share = (float(part) for part in item.split(":"))
            pairs.append((width, share))
    except ValueError:
        raise fail("strategy-capacities", text, allowed) from None
    widths = [w for w, _ in pairs]
    if (
        not pairs
        or len(set(widths)) != len(widths)
        or any(not (0 < w <= 1 and share > 0) for w, share in pairs)
        or not all(math.isfinite(x) for pair in pairs for x in pair)
    ):
        raise fail("strategy-capacities", text, allowed)
    total = sum(share for _, share in pairs)
    return tuple((w, share / total) for w, share in pairs)


@dataclass(frozen=True)
class HeteroConfig:
    """Heterogeneous width slicing (HeteroFL; FedRolex when ``rolling``).

    ``capacities`` holds ``(width, share)`` pairs: the fraction ``share`` of the
    clients trains the slice of width ``width`` (shares sum to 1).
    """

    capacities: tuple[tuple[float, float], ...] = setting(
        "1.0:1,0.5:1,0.25:1", parse=_parse_capacities
    )
    rolling: bool = setting(False)
    scaler: bool = setting(True)  # HeteroFL's training-time 1/width scaler
    # HeteroFL's "dynamic" setting: the assignment of capacities to clients is drawn
    # anew every round (same shares), as for devices whose free compute varies.
    dynamic: bool = setting(False)

    @property
    def widths(self) -> list[float]:
        """The configured widths, largest first."""
        return sorted((w for w, _ in self.capacities), reverse=True)


register_section("hetero", HeteroConfig, "strategy", strategy_has("width_slicing"))
