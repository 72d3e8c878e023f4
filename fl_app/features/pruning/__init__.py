"""Magnitude pruning with tensorflow-model-optimization (polynomial decay).

``pruning`` wraps the prunable layers and gives the schedule; the server's mask
is ``strategies/transport.py``'s ``ServerPruner``.
"""
