"""Gradients of the softmax model (one dense layer) worked out by hand in NumPy."""

import numpy as np


def softmax_residuals(kernel, bias, x, y):
    """Return ``p - onehot(y)``, dLoss/dlogits of each example's cross-entropy."""
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p


def softmax_grads(kernel, bias, x, y):
    """Gradient of the mean cross-entropy of softmax(x @ kernel + bias)."""
    p = softmax_residuals(kernel, bias, x, y)
    return x.T @ p / len(y), p.mean(axis=0)


def clipped_softmax_grads(kernel, bias, x, y, clip):
    """Mean of the per-example gradients, each clipped to L2 norm ``clip``.

    Example i's gradient is ``(x_i (p_i - e_i)^T, p_i - e_i)``; its norm over both
    arrays is ``|p_i - e_i| * sqrt(|x_i|^2 + 1)``. Returns the clipped mean's kernel
    and bias parts and the unclipped per-example norms.
    """
    p = softmax_residuals(kernel, bias, x, y)
    norms = np.linalg.norm(p, axis=1) * np.sqrt((x**2).sum(axis=1) + 1.0)
    p = p * np.minimum(1.0, clip / norms)[:, None]
    return x.T @ p / len(y), p.mean(axis=0), norms
