"""Split training: SplitFed (v1, v2) and local-loss split learning.

``settings`` declares ``split-*``; ``model`` cuts a model in two, ``client``
answers the split messages, ``server`` runs the split workflow (it takes over
every run with split on).
"""

from fl_app.features.split import settings as settings
