"""Slow, obviously-correct references for UltraFFF (spec §2): one sample, one tree, one node at a time, in float64.

The path is walked with plain Python; each neuron's logit is a Python sum, so this file shares no code with
the NumPy masked formulation (``fffcpu.models.ultra.masked_forward``) nor with the Numba kernels.
"""

from __future__ import annotations

import math

import numpy as np

from naive import act


def params64(model):
    return {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}


def logit(p, t, node, xb):
    return float(sum(float(w) * float(v) for w, v in zip(p["w_in"][t, node], xb)) + p["b_in"][t, node])


def paths(model, x):
    """Nodes and logits on every path: two arrays (n, trees, depth + 1); a logit > 0 goes right, else left."""
    p, d = params64(model), model.depth
    x = np.asarray(x, dtype=np.float64)
    nodes = np.zeros((len(x), model.trees, d + 1), dtype=np.int64)
    logits = np.zeros((len(x), model.trees, d + 1))
    for b, xb in enumerate(x):
        for t in range(model.trees):
            node = 0
            for level in range(d + 1):
                z = logit(p, t, node, xb)
                nodes[b, t, level], logits[b, t, level] = node, z
                node = 2 * node + 1 + (1 if z > 0 else 0)
    return nodes, logits


def route(model, x):
    """Leaf per sample and tree: the final node minus 2**depth - 1."""
    nodes, _ = paths(model, x)
    return nodes[:, :, -1] - (2**model.depth - 1)


def min_margin(model, x):
    """Smallest |logit| on each sample's paths that decides a turn (the leaf's own sign decides nothing)."""
    _, logits = paths(model, x)
    if model.depth == 0:
        return np.full(len(logits), np.inf)
    return np.abs(logits[:, :, :-1]).min(axis=(1, 2)) if len(logits) else np.zeros(0)


def forward(model, x):
    """y = Σ_trees Σ_{n on path} act(z_n) u_n."""
    p = params64(model)
    nodes, logits = paths(model, x)
    out = np.zeros((len(nodes), model.output_width))
    for b in range(len(nodes)):
        for t in range(model.trees):
            for level in range(model.depth + 1):
                out[b] += act(model.activation, logits[b, t, level]) * p["w_out"][t, nodes[b, t, level]]
    return out


def act_grad(name, z):
    """Closed-form derivative of the activation at a scalar z (GELU' = Φ(z) + z φ(z))."""
    if name == "gelu":
        return 0.5 * (1 + math.erf(z / math.sqrt(2))) + z * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    if name == "relu":
        return 1.0 if z > 0 else 0.0
    if name == "tanh":
        return 1 - math.tanh(z) ** 2
    if name == "sigmoid":
        s = 1 / (1 + math.exp(-z))
        return s * (1 - s)
    return 1.0


def gradients(model, x, g):
    """The spec §2 formulas, one path neuron at a time: (grads dict, dx)."""
    p = params64(model)
    nodes, logits = paths(model, x)
    x = np.asarray(x, dtype=np.float64)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dx = np.zeros_like(x)
    for b in range(len(x)):
        for t in range(model.trees):
            for level in range(model.depth + 1):
                n, z = nodes[b, t, level], logits[b, t, level]
                grads["w_out"][t, n] += float(act(model.activation, z)) * g[b]
                dz = act_grad(model.activation, z) * float(g[b] @ p["w_out"][t, n])
                grads["w_in"][t, n] += dz * x[b]
                grads["b_in"][t, n] += dz
                dx[b] += dz * p["w_in"][t, n]
    return grads, dx
