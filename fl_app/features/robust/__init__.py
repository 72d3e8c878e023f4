"""Robust aggregation: update defences (on by default), robust rules, attacks.

``settings`` declares ``robust-*``, the robust strategies' settings and ``attack-*``;
``server`` builds the robust strategies and checks attacks run in simulation only.
The math is in ``strategies/defences.py``, ``strategies/robust.py`` and
``strategies/attacks.py``.
"""

from fl_app.features.robust import settings as settings
