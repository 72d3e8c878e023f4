"""FedRS (Li & Zhan, KDD 2021): restricted softmax for label skew, a client technique.

``technique`` declares ``client-fedrs-alpha`` and scales, in each local training's
loss, the logits of the classes the client has no rows of by alpha.
"""

from fl_app.features.fedrs import technique as technique
