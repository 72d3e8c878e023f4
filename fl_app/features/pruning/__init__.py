"""Magnitude pruning with tensorflow-model-optimization (polynomial decay).

``settings`` declares ``pruning-*``; ``technique`` wraps the client's model for
pruning; ``pruning`` holds the tfmot helpers and the schedule; ``server`` gives
every dense strategy the server's mask (``strategies/transport.py``'s
``ServerPruner``).
"""

from fl_app.features.pruning import settings as settings
from fl_app.features.pruning import technique as technique
