"""FedLC (Zhang et al., ICML 2022): logit calibration for label skew, a technique.

``technique`` declares ``client-fedlc-tau`` and shifts, in each local training's
loss, each class's logit by tau times the client's count of it to the power -1/4.
"""

from fl_app.features.fedlc import technique as technique
