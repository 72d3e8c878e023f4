"""FedProx (Li et al. 2020): the proximal term as a client technique.

``technique`` declares ``client-proximal-mu`` and adds ``mu / 2 ||w - w_global||^2``
to every local training's loss (plain, DP-SGD and personalized trainers alike).
"""

from fl_app.features.fedprox import technique as technique
