"""The robust feature's client part: label flipping, the one attack on the client.

Every other attack is simulated at the server (``strategies.attacks``). A client
data hook flips the training labels of the simulated attackers (``attack=label_flip``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fl_app.client.keras_client import register_client_data
from fl_app.data import ClientData

if TYPE_CHECKING:
    from fl_app.client.keras_client import KerasClient


def flip_labels(data: ClientData, num_classes: int) -> ClientData:
    """Return an attacker's data with each training label ``y`` as ``C - 1 - y``."""
    flipped = (num_classes - 1 - data.train.y).astype(data.train.y.dtype)
    return replace(data, train=replace(data.train, y=flipped))


@register_client_data
def flip_attackers_labels(client: KerasClient, num_classes: int) -> None:
    """Flip the training labels of a simulated ``label_flip`` attacker."""
    attack = client.cfg.extra("attack")
    if attack is None or attack.kind != "label_flip":
        return
    if client.partition_id in attack.attackers(client.cfg):
        client.data = flip_labels(client.data, num_classes)
