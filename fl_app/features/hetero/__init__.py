"""Heterogeneous width slicing (HeteroFL, FedRolex).

``settings`` declares the ``strategy-*`` keys of width-slicing strategies;
``slicing`` maps a model to its sliceable layout, ``capacities`` gives each
partition its capacity, ``server`` builds the ``hetero`` strategy and reports
accuracy by width; the math is ``strategies/hetero_slicing.py``.
"""

from fl_app.features.hetero import settings as settings
