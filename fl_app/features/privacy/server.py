"""Privacy's server part: the run's ε in the summary."""

from __future__ import annotations

from typing import Any

from flwr.common import NDArrays

from fl_app.server.registry import register_summary_part
from fl_app.server.run import ServerRun, client_level_epsilon


@register_summary_part
def privacy_summary(run: ServerRun, weights: NDArrays) -> dict[str, Any]:
    """Report the largest sample-level ε any client reported; the client-level ε."""
    rows = run.recorder.rows
    return {
        "epsilon_sample_level_max": max(
            (
                row["epsilon_sample_level_max"]
                for row in rows
                if row.get("epsilon_sample_level_max") is not None
            ),
            default=None,
        ),
        "epsilon_client_level": client_level_epsilon(run.cfg, len(rows)),
    }
