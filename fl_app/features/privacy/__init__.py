"""Differential privacy: DP-SGD with ε accounting, client-level DP, SecAgg+.

``settings`` declares ``dpsgd-*``, ``clientdp-*`` and ``secagg-*``; ``technique``
gives DP-SGD's optimizer to the compiled model; ``dpsgd`` holds the
tensorflow-privacy adapter and the accountant; ``client`` trains on Poisson batches
and keeps each client's ε; ``server`` wraps the strategy (DP-FedAvg), offers
SecAgg+'s fit step and reports ε per round and in the summary.
"""

from fl_app.features.privacy import settings as settings
from fl_app.features.privacy import technique as technique
