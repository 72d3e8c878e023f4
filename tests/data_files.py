"""A SuperNode's own data file (``.npz``) for tests: digits-shaped random rows."""

import numpy as np


def client_file_arrays(n_train=20, n_test=5, shape=(8, 8, 1)):
    """Return the four arrays of a valid client file (seeded: equal calls agree)."""
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.random((n_train, *shape), dtype=np.float32),
        "y_train": rng.integers(0, 10, n_train),
        "x_test": rng.random((n_test, *shape), dtype=np.float32),
        "y_test": rng.integers(0, 10, n_test),
    }
