"""Heterogeneous width slicing: weak clients train a slice of the global model.

HeteroFL (Diao et al., "HeteroFL: Computation and Communication Efficient Federated
Learning for Heterogeneous Clients", ICLR 2021, https://arxiv.org/abs/2010.01264):
a client of capacity ``r`` trains the sub-network made of the first ``r`` fraction of
every hidden layer's units; each global element is the sample-weighted average over
the clients whose slice covers it, and uncovered elements keep their global value.
FedRolex (Alam et al., NeurIPS 2022, https://arxiv.org/abs/2212.01548) rolls each
slice's window by one unit per round (wrapping around), so every element is trained.

The model is described to this module without any framework: a :data:`Layout` gives,
for every weight array and every axis, either ``None`` (the axis keeps its full size:
the input features, the classes) or an :class:`AxisMap` naming the width group (a
hidden layer's units) the axis indexes, ``repeat`` times over (a flattened feature map
repeats the channels once per spatial position, channels fastest).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common import (
    GetPropertiesIns,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
)
from flwr.server.client_proxy import ClientProxy

from strategies.aggregation import check_update
from strategies.fedavg import FedAvg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AxisMap:
    """An axis that indexes the units of width group ``group``, ``repeat`` times."""

    group: str
    repeat: int = 1


Layout = Sequence[Sequence[AxisMap | None]]
Windows = Mapping[str, np.ndarray]


def slice_window(full: int, size: int, offset: int = 0) -> np.ndarray:
    """Return the ``size`` unit indices of a window from ``offset``, wrapping."""
    if not 0 < size <= full:
        raise ValueError(f"slice size must be in 1..{full}, received {size}")
    return (offset + np.arange(size)) % full


def make_windows(
    full_sizes: Mapping[str, int],
    sizes: Mapping[str, int],
    server_round: int = 0,
    rolling: bool = False,
) -> dict[str, np.ndarray]:
    """Return each group's window: static (HeteroFL) or rolled per round (FedRolex)."""
    return {
        group: slice_window(full, sizes[group], server_round if rolling else 0)
        for group, full in full_sizes.items()
    }


def _axis_index(
    axis: AxisMap | None, length: int, full_sizes: Mapping[str, int], windows: Windows
) -> np.ndarray:
    if axis is None:
        return np.arange(length)
    full = full_sizes[axis.group]
    if full * axis.repeat != length:
        raise ValueError(
            f"axis of length {length} cannot be {axis.repeat} x {full} units of "
            f"'{axis.group}'"
        )
    window = windows[axis.group]
    return (np.arange(axis.repeat)[:, None] * full + window[None, :]).reshape(-1)


def slice_indices(
    weights: NDArrays, layout: Layout, full_sizes: Mapping[str, int], windows: Windows
) -> list[tuple[np.ndarray, ...]]:
    """For every array, the per-axis global indices its slice covers."""
    if len(layout) != len(weights):
        raise ValueError(f"layout has {len(layout)} arrays, weights {len(weights)}")
    return [
        tuple(
            _axis_index(axis, length, full_sizes, windows)
            for axis, length in zip(axes, array.shape, strict=True)
        )
        for array, axes in zip(weights, layout, strict=True)
    ]


def slice_weights(
    weights: NDArrays, layout: Layout, full_sizes: Mapping[str, int], windows: Windows
) -> NDArrays:
    """Cut the sub-model given by ``windows`` out of the full ``weights``."""
    return [
        array[np.ix_(*index)]
        for array, index in zip(
            weights, slice_indices(weights, layout, full_sizes, windows), strict=True
        )
    ]


def aggregate_sliced(
    global_weights: NDArrays,
    results: Sequence[tuple[NDArrays, int, Windows]],
    layout: Layout,
    full_sizes: Mapping[str, int],
) -> tuple[NDArrays, NDArrays]:
    """Average sub-models into the global model element by element (HeteroFL).

    Parameters
    ----------
    global_weights : NDArrays
        The current full global model.
    results : Sequence[tuple[NDArrays, int, Windows]]
        ``(sub-model weights, num_examples, windows it was cut with)`` per client.
    layout, full_sizes
        The model's slicing layout and each group's full size.

    Returns
    -------
    tuple[NDArrays, NDArrays]
        The new global model (each element the example-weighted mean over the
        clients covering it, else unchanged) and, per array, the number of examples
        that covered each element.
    """
    sums = [np.zeros(w.shape, np.float64) for w in global_weights]
    coverage = [np.zeros(w.shape, np.float64) for w in global_weights]
    for sub, n, windows in results:
        indices = slice_indices(global_weights, layout, full_sizes, windows)
        for acc, cov, part, index in zip(sums, coverage, sub, indices, strict=True):
            grid = np.ix_(*index)
            acc[grid] += np.asarray(part, np.float64) * n
            cov[grid] += n
    merged = [
        np.where(cov > 0, acc / np.maximum(cov, 1), w).astype(w.dtype)
        for acc, cov, w in zip(sums, coverage, global_weights, strict=True)
    ]
    return merged, coverage


class HeteroSlicingFedAvg(FedAvg):
    """FedAvg where each client trains the width slice its capacity allows.

    The strategy asks each client once for its ``capacity`` (``get_properties``),
    sends it the sub-model at that width in its own ``FitIns``/``EvaluateIns``
    (config ``width``), and scatters the returned sub-models back with
    :func:`aggregate_sliced`.

    Parameters
    ----------
    layout : Layout
        Per array and axis, the width group it indexes (see module docstring).
    full_sizes : Mapping[str, int]
        Each width group's size in the full model.
    sizes_by_width : Mapping[float, Mapping[str, int]]
        Each width group's size at every capacity a client may report (computed by
        the model builder's own width rule).
    rolling : bool
        Roll the windows every round (FedRolex) instead of keeping them at 0.
    dynamic : bool
        Ask every node its capacity every round (HeteroFL's dynamic setting, where
        the capacities move between clients) instead of once.
    **kwargs
        As for :class:`strategies.fedavg.FedAvg`.
    """

    def __init__(
        self,
        *,
        layout: Layout,
        full_sizes: Mapping[str, int],
        sizes_by_width: Mapping[float, Mapping[str, int]],
        rolling: bool = False,
        dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.layout = layout
        self.full_sizes = dict(full_sizes)
        self.sizes_by_width = {float(w): dict(s) for w, s in sizes_by_width.items()}
        self.rolling = rolling
        self.dynamic = dynamic
        self.capacities: dict[int, float] = {}
        self._capacities_round = 0  # the round ``capacities`` holds (dynamic)
        self._sent: dict[int, dict[str, np.ndarray]] = {}
        # Fail now, not in round 1, if the layout does not fit the model.
        full_windows = make_windows(self.full_sizes, self.full_sizes)
        slice_indices(self.global_parameters, layout, self.full_sizes, full_windows)

    def __repr__(self) -> str:
        mode = "FedRolex" if self.rolling else "HeteroFL"
        if self.dynamic:
            mode += ", dynamic"
        return f"HeteroSlicingFedAvg({mode}, widths {sorted(self.sizes_by_width)})"

    def _windows(self, width: float, server_round: int) -> dict[str, np.ndarray]:
        return make_windows(
            self.full_sizes, self.sizes_by_width[width], server_round, self.rolling
        )

    def capacity(self, proxy: ClientProxy, server_round: int) -> float:
        """Return the client's capacity, asked once and remembered per node.

        Dynamic: asked again in every round (once for its fit and evaluation).
        """
        if self.dynamic and server_round != self._capacities_round:
            self.capacities.clear()
            self._capacities_round = server_round
        if proxy.node_id not in self.capacities:
            ins = GetPropertiesIns({"server_round": server_round})
            res = proxy.get_properties(ins, None, server_round)
            width = float(res.properties.get("capacity", 1.0))
            if width not in self.sizes_by_width:
                raise ValueError(
                    f"node {proxy.node_id} reports capacity {width}; the configured "
                    f"widths are {sorted(self.sizes_by_width)}"
                )
            self.capacities[proxy.node_id] = width
        return self.capacities[proxy.node_id]

    def client_parameters(
        self, server_round: int, parameters: Parameters, proxy: ClientProxy
    ) -> tuple[Parameters, dict[str, Scalar]]:
        """Cut the client's slice (at its capacity) out of the global model."""
        width = self.capacity(proxy, server_round)
        windows = self._windows(width, server_round)
        self._sent[proxy.node_id] = windows
        sub = slice_weights(
            self.global_parameters, self.layout, self.full_sizes, windows
        )
        return ndarrays_to_parameters(sub), {"width": width}

    def check_layers(self, node_id: int, update: NDArrays) -> str | None:
        """Check the update against the shapes of the slice sent to that node."""
        if node_id not in self._sent:
            return "no slice was sent to this node"
        return check_update(self.reference_for(node_id), update)

    def reference_for(self, node_id: int) -> NDArrays:
        """Return the slice the node was sent (its update's delta is to it)."""
        return slice_weights(
            self.global_parameters, self.layout, self.full_sizes, self._sent[node_id]
        )

    def aggregate_layers(self, accepted: list[tuple[int, NDArrays, int]]) -> NDArrays:
        """Scatter-average the sub-models into the global model (HeteroFL)."""
        merged, _ = aggregate_sliced(
            self.global_parameters,
            [(sub, n, self._sent[node]) for node, sub, n in accepted],
            self.layout,
            self.full_sizes,
        )
        return merged
