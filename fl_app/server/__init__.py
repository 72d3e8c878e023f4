"""The server side: the run, the rounds workflow, grids and registries.

Features fill the registries (``registry``) from their ``server.py``.
"""
