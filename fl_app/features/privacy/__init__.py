"""Differential privacy: DP-SGD with ε accounting on the clients, client-level DP.

``dpsgd`` holds the tensorflow-privacy adapter and the accountant; ``server``
reports ε in the summary. Client-level DP and SecAgg+ wrap the strategy in
``fl_app.server.run`` for now.
"""
