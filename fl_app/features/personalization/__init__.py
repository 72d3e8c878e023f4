"""Personalized models: APFL's blend and FedPer's local head.

``training`` trains the local and global copies on the client, ``server`` builds
the ``personalized`` strategy; the math is ``strategies/personalized.py``.
"""
