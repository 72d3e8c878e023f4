"""Personalized models: APFL's blend and FedPer's local head.

``settings`` declares the ``strategy-*`` keys of personalized strategies;
``training`` trains the local and global copies, ``client`` registers that local
training, ``server`` builds the ``personalized`` strategy; the math is
``strategies/personalized.py``.
"""

from fl_app.features.personalization import settings as settings
