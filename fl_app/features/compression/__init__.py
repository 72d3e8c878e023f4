"""Update compression: codecs (int8, sign, sparse, top-k) with error feedback.

``settings`` declares ``compression-*``; ``codecs`` holds the codecs; ``client``
codes the client's arrays (``CodecTransport``, the residual in the node state);
``server`` gives every dense strategy its codecs (``strategies/transport.py``).
"""

from fl_app.features.compression import settings as settings
