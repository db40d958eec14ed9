"""Activations, losses and their derivatives, in plain NumPy.

Every function works in the dtype it is given (float32 or float64) and is numerically stable:
the sigmoid never evaluates ``exp`` of a large positive number, cross-entropy goes through
log-sum-exp, and the Bernoulli entropy of a node decision is computed from its logit.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "relu",
    "relu_grad",
    "gelu",
    "gelu_grad",
    "tanh",
    "tanh_grad",
    "sigmoid",
    "sigmoid_grad",
    "identity",
    "identity_grad",
    "log_sigmoid",
    "bernoulli_entropy",
    "bernoulli_entropy_grad",
    "log_softmax",
    "softmax",
    "cross_entropy",
    "cross_entropy_grad",
    "mean_squared_error",
    "mean_squared_error_grad",
    "get_activation",
    "get_loss",
]


# --- activations: f(z) and df/dz, both taking the pre-activation z ---------------------------


def relu(z):
    """``max(z, 0)``."""
    return np.maximum(z, 0)


def relu_grad(z):
    """1 where ``z > 0``, else 0 (0 at ``z = 0``, as PyTorch)."""
    return (z > 0).astype(z.dtype)


def _erf(z):
    """``scipy.special.erf``, imported on first use: SciPy's special functions take about as long to import as the
    rest of fffcpu, and only GELU needs them."""
    from scipy.special import erf

    return erf(z)


def gelu(z):
    """Exact GELU, ``z Φ(z)`` with the erf form of Φ (PyTorch's default, not the tanh approximation)."""
    return z * (0.5 * (1 + _erf(z * z.dtype.type(1 / math.sqrt(2)))))


def gelu_grad(z):
    """``Φ(z) + z φ(z)``."""
    cdf = 0.5 * (1 + _erf(z * z.dtype.type(1 / math.sqrt(2))))
    pdf = np.exp(-0.5 * z * z) * z.dtype.type(1 / math.sqrt(2 * math.pi))
    return cdf + z * pdf


def tanh(z):
    """``tanh(z)``."""
    return np.tanh(z)


def tanh_grad(z):
    """``1 - tanh(z)²``."""
    t = np.tanh(z)
    return 1 - t * t


def sigmoid(z):
    """``1 / (1 + exp(-z))`` without overflow: ``exp`` only ever sees ``-|z|``."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def sigmoid_grad(z):
    """``σ(z) (1 - σ(z))``."""
    s = sigmoid(z)
    return s * (1 - s)


def identity(z):
    """``z`` itself (a linear leaf)."""
    return z


def identity_grad(z):
    """Ones of the shape and dtype of ``z``."""
    return np.ones_like(z)


ACTIVATIONS = {
    "relu": (relu, relu_grad),
    "gelu": (gelu, gelu_grad),
    "tanh": (tanh, tanh_grad),
    "sigmoid": (sigmoid, sigmoid_grad),
    "identity": (identity, identity_grad),
}


def get_activation(name: str):
    """``(f, df)`` for an activation name; a clear error for an unknown one."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}") from None


# --- node decisions ---------------------------------------------------------------------------


def log_sigmoid(z):
    """``log σ(z) = -softplus(-z)``, stable for any z."""
    return -np.logaddexp(0, -z)


def bernoulli_entropy(z):
    """Entropy (natural log) of the decision ``p = σ(z)`` of a node with logit ``z``.

    ``H(p) = -p ln p - (1 - p) ln(1 - p) = p softplus(-z) + (1 - p) softplus(z)``; computed from z, it is
    exact where p rounds to 0 or 1 (no clamping as in the PyTorch package). Maximum ``ln 2`` at ``z = 0``.
    """
    p = sigmoid(z)
    return p * np.logaddexp(0, -z) + (1 - p) * np.logaddexp(0, z)


def bernoulli_entropy_grad(z):
    """``dH/dz = -z p (1 - p)`` (spec §1)."""
    p = sigmoid(z)
    return -z * p * (1 - p)


# --- losses: value (mean over the batch) and gradient w.r.t. the network output ---------------


def log_softmax(logits):
    """Row-wise ``log softmax`` through log-sum-exp."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits):
    """Row-wise softmax of ``logits`` (n, n_classes), computed from ``log_softmax`` (no overflow)."""
    return np.exp(log_softmax(logits))


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy.

    Parameters
    ----------
    logits : ndarray, shape (n, n_classes)
    labels : ndarray of int, shape (n,)

    Returns
    -------
    float
    """
    labels = _check_labels(logits, labels)
    if len(labels) == 0:
        return 0.0
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def cross_entropy_grad(logits, labels):
    """``(softmax(logits) - onehot(labels)) / n``, shape (n, n_classes)."""
    labels = _check_labels(logits, labels)
    grad = softmax(logits)
    grad[np.arange(len(labels)), labels] -= 1
    return grad / max(len(labels), 1)


def _check_labels(logits, labels) -> np.ndarray:
    """Class indices for the rows of ``logits``: integers in [0, n_classes) (a negative index would wrap)."""
    labels = np.asarray(labels)
    n, n_classes = np.shape(logits)
    if labels.shape != (n,) or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(f"labels must be {n} integer class indices (one per row of logits), got dtype "
                         f"{labels.dtype}, shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}) for {n_classes} classes, got values from "
                         f"{labels.min()} to {labels.max()}")
    return labels


def mean_squared_error(outputs, targets):
    """``mean over samples of 0.5 * ||outputs - targets||^2`` (sum over outputs, mean over the batch).

    The factor 1/2 makes the gradient ``(outputs - targets) / n`` (scikit-learn's ``squared_loss``).
    """
    if len(outputs) == 0:
        return 0.0
    diff = outputs - targets
    return float(0.5 * np.sum(diff * diff) / len(outputs))


def mean_squared_error_grad(outputs, targets):
    """``(outputs - targets) / n``, the gradient of ``mean_squared_error``."""
    return (outputs - targets) / max(len(outputs), 1)


LOSSES = {
    "cross_entropy": (cross_entropy, cross_entropy_grad),
    "mse": (mean_squared_error, mean_squared_error_grad),
}


def get_loss(name: str):
    """``(loss, dloss)`` for a loss name; a clear error for an unknown one."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}") from None
