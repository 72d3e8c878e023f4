"""The robust feature's client part: label flipping, the one attack on the client.

Every other attack is simulated at the server (``strategies.attacks``).
"""

from __future__ import annotations

from dataclasses import replace

from fl_app.data import ClientData


def flip_labels(data: ClientData, num_classes: int) -> ClientData:
    """Return an attacker's data with each training label ``y`` as ``C - 1 - y``."""
    flipped = (num_classes - 1 - data.train.y).astype(data.train.y.dtype)
    return replace(data, train=replace(data.train, y=flipped))
