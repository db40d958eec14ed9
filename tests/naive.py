"""Slow, obviously-correct references: one sample at a time, one leaf at a time, plain Python loops.

Everything here is computed in float64 from the model's parameters and follows the spec (FFF.md) literally,
so that the fast paths of fffcpu can be checked against it.
"""

from __future__ import annotations

import math

import numpy as np


def act(name, z):
    z = np.asarray(z, dtype=np.float64)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "gelu":
        return np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z.ravel()]).reshape(z.shape)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "identity":
        return z
    raise ValueError(name)


def sigmoid(z):
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def params64(model):
    return {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}


def node_logit(p, node, xb):
    return float(p["node_weights"][node] @ xb + p["node_biases"][node])


def leaf_output(p, leaf, xb, activation):
    hidden = act(activation, xb @ p["w1s"][leaf] + p["b1s"][leaf])
    return hidden @ p["w2s"][leaf] + p["b2s"][leaf]


def fff_route(model, x):
    """Leaf per sample: at each level go right iff the logit is >= 0."""
    p, d = params64(model), model.depth
    x = np.asarray(x, dtype=np.float64)
    leaves = []
    for xb in x:
        node = 0
        for _ in range(d):
            node = 2 * node + 1 + (1 if node_logit(p, node, xb) >= 0 else 0)
        leaves.append(node - (2**d - 1))
    return np.array(leaves, dtype=np.int64)


def fff_min_margin(model, x):
    """Smallest |logit| met on each sample's hard path (to skip near-ties when comparing routes)."""
    p, d = params64(model), model.depth
    margins = []
    for xb in np.asarray(x, dtype=np.float64):
        node, m = 0, np.inf
        for _ in range(d):
            z = node_logit(p, node, xb)
            m = min(m, abs(z))
            node = 2 * node + 1 + (1 if z >= 0 else 0)
        margins.append(m)
    return np.array(margins)


def fff_hard(model, x):
    """Hard inference: one path, one leaf, b2 included."""
    p = params64(model)
    x = np.asarray(x, dtype=np.float64)
    leaves = fff_route(model, x)
    out = np.zeros((len(x), model.output_width))
    for b, xb in enumerate(x):
        out[b] = leaf_output(p, leaves[b], xb, model.activation)
    return out


def fff_mixture(model, x, *, flips=None, decision=None):
    """Mixture weight c_leaf of every leaf for every sample, (n, 2**d).

    ``decision(z, b, node)`` gives the weight of the right child (default σ(z)); ``flips[b, node]`` swaps
    the children (region leak).
    """
    p, d = params64(model), model.depth
    x = np.asarray(x, dtype=np.float64)
    c = np.ones((len(x), 2**d))
    for b, xb in enumerate(x):
        for leaf in range(2**d):
            node = 0
            for level in range(d):
                go_right = (leaf >> (d - 1 - level)) & 1
                z = node_logit(p, node, xb)
                q = sigmoid(z) if decision is None else decision(z, b, node)
                if flips is not None and flips[b, node]:
                    q = 1 - q
                c[b, leaf] *= q if go_right else 1 - q
                node = 2 * node + 1 + go_right
    return c


def fff_soft(model, x, **mixture_options):
    """Σ_leaf c_leaf(x) (act(x W1 + b1) W2 + b2), every leaf evaluated."""
    p = params64(model)
    x = np.asarray(x, dtype=np.float64)
    c = fff_mixture(model, x, **mixture_options)
    out = np.zeros((len(x), model.output_width))
    for b, xb in enumerate(x):
        for leaf in range(2**model.depth):
            out[b] += c[b, leaf] * leaf_output(p, leaf, xb, model.activation)
    return out


def fff_entropy(model, x):
    """Mean over samples and nodes of the Bernoulli entropy (natural log) of σ(logit)."""
    p = params64(model)
    total, count = 0.0, 0
    for xb in np.asarray(x, dtype=np.float64):
        for node in range(2**model.depth - 1):
            q = sigmoid(node_logit(p, node, xb))
            total += -sum(v * math.log(v) for v in (q, 1 - q) if v > 0)
            count += 1
    return total / count if count else 0.0


def ff_forward(model, x):
    p = params64(model)
    out = []
    for xb in np.asarray(x, dtype=np.float64):
        out.append(act(model.activation, xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])
    return np.array(out).reshape(len(x), model.output_width)


def cross_entropy(logits, labels):
    total = 0.0
    for row, label in zip(logits, labels):
        m = max(row)
        total += -(row[label] - m - math.log(sum(math.exp(v - m) for v in row)))
    return total / len(labels)


def mse(outputs, targets):
    return 0.5 * float(np.sum((outputs - targets) ** 2)) / len(outputs)


def numerical_gradients(f, params: dict, x: np.ndarray, eps: float = 1e-6):
    """Central differences of the scalar ``f()`` w.r.t. every entry of every array in ``params`` and of ``x``.

    The arrays are perturbed in place and restored.
    """
    grads = {}
    for name, arr in list(params.items()) + [("x", x)]:
        g = np.zeros(arr.shape)
        flat, gflat = arr.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = f()
            flat[i] = old - eps
            down = f()
            flat[i] = old
            gflat[i] = (up - down) / (2 * eps)
        grads[name] = g
    return grads
