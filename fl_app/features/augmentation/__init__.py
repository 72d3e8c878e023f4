"""Image augmentation (rotation, shifts, shear, zoom, flips) on the clients.

``augmenter`` builds the Keras preprocessing pipeline per client and round; its
settings (``client-augmentation-*``) are in ``fl_app.core.config`` for now.
"""
