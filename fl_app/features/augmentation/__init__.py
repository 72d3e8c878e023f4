"""Image augmentation (rotation, shifts, zoom, flips, contrast) on the clients.

``settings`` declares ``client-augmentation-*``; ``technique`` makes it a client
technique whose batch transform ``augmenter`` builds (Keras preprocessing layers)
per client and round.
"""

from fl_app.features.augmentation import settings as settings
from fl_app.features.augmentation import technique as technique
