"""Update compression: codecs (int8, sign, sparse, top-k) with error feedback.

``codecs`` holds the codecs and the client's side of the transport; the server's
side is ``strategies/transport.py``. Settings (``compression-*``) are in
``fl_app.core.config`` for now.
"""
