"""Split training: SplitFed (v1, v2) and local-loss split learning.

``model`` cuts a model in two, ``client`` answers the split messages, ``server``
runs the split workflow.
"""
