"""Numba kernels of the UltraFastBERT layer (``UltraFFF``, spec §2) that touch only the root-to-leaf paths.

Every kernel takes arrays and scalars only; ``fffcpu.models.ultra.UltraFFF`` validates and converts, and picks a
serial or a parallel kernel by batch size. Nothing is compiled at import time (lazy ``@njit``, ``cache=True``).

Layout (heap order per tree, spec §2): ``w_in`` (trees, N, input_width), ``b_in`` (trees, N),
``w_out`` (trees, N, output_width) with N = 2**(depth + 1) - 1; a path visits ``depth + 1`` nodes,
root 0 first, and the next node is ``2 n + 1 + [z_n > 0]`` (strict: a logit of exactly 0 goes left).

Floating point: only the dot products (``_dot``) are compiled with ``fastmath={"reassoc", "contract"}`` so LLVM
may vectorise the reduction; the comparison ``z > 0`` lives in functions without fastmath flags, and no
``nnan``/``ninf`` flag is ever set, so a NaN logit compares false (goes left) and 0 goes left, as the reference.
Routes can differ from a reference computed in another summation order only where ``|z|`` is at rounding level.

Races: outputs are owned. Per-sample arrays (``y``, ``dx``, the path caches) are written by the thread that owns
the sample; the weight gradients are written by the thread that owns a block of columns (all nodes, all samples,
columns ``c0:c1``), after the path entries are grouped by node (a counting sort), so no two threads ever add into
the same element, every row is written once in order, and the sums do not depend on the thread count.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

__all__ = ["ACTIVATION_CODES", "forward", "predict", "route", "backward", "split_level"]

#: Activation name -> integer code understood by the kernels.
ACTIVATION_CODES = {"gelu": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "identity": 4}

#: Batches smaller than this run the serial kernels (a parallel launch costs more than a few tokens).
PARALLEL_MIN_BATCH = 32

#: Bytes of weight rows (w_in + b_in + w_out) a subtree of the grouped kernels may take: about half of a
#: 1 MiB L2 (AMD Zen 4); the top of the tree takes about as much again.
SUBTREE_CACHE_BYTES = 512 * 1024

#: Batches from this size on run the grouped forward (``_forward_grouped``) rather than the per-input kernel.
GROUPED_MIN_BATCH = 256

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --- scalar helpers -------------------------------------------------------------------------------------------


@njit(cache=True, fastmath={"reassoc", "contract"})
def _dot(a, b):
    """``a · b`` for 1-D arrays of equal length >= 1; reassociation lets LLVM vectorise the sum."""
    s = a[0] * b[0]
    for i in range(1, a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(cache=True, fastmath={"contract"})
def _axpy(a, u, y):
    """``y += a u`` with fused multiply-adds (the output update; never part of a routing decision)."""
    for o in range(y.shape[0]):
        y[o] += a * u[o]


@njit(cache=True)
def _activation(z, code):
    """act(z) in float64 for the activation ``code`` (see ACTIVATION_CODES); GELU is the exact erf form."""
    z = float(z)
    if code == 0:
        return 0.5 * z * (1.0 + math.erf(z * _INV_SQRT2))
    if code == 1:
        return z if z > 0.0 else 0.0
    if code == 2:
        return math.tanh(z)
    if code == 3:
        if z >= 0.0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)
    return z


@njit(cache=True)
def _activation_grad(z, code):
    """act'(z) in float64; GELU' = Φ(z) + z φ(z)."""
    z = float(z)
    if code == 0:
        return 0.5 * (1.0 + math.erf(z * _INV_SQRT2)) + z * math.exp(-0.5 * z * z) * _INV_SQRT2PI
    if code == 1:
        return 1.0 if z > 0.0 else 0.0
    if code == 2:
        t = math.tanh(z)
        return 1.0 - t * t
    if code == 3:
        s = _activation(z, 3)
        return s * (1.0 - s)
    return 1.0


# --- one sample ------------------------------------------------------------------------------------------------


@njit(cache=True)
def _forward_one(xb, w_in, b_in, w_out, code, nodes_b, logits_b, acts_b, yb):
    """Walk every tree for one sample: fill its path (nodes, logits, activations) and ``yb = Σ act(z_n) u_n``."""
    trees, levels = nodes_b.shape
    yb[:] = 0
    for t in range(trees):
        node = 0
        for level in range(levels):
            z = _dot(xb, w_in[t, node]) + b_in[t, node]
            nodes_b[t, level] = node
            logits_b[t, level] = z
            acts_b[t, level] = _activation(z, code)
            a = acts_b[t, level]  # in the array dtype, so the update below stays in float32 for float32 models
            _axpy(a, w_out[t, node], yb)
            node = 2 * node + 1 + (1 if z > 0 else 0)


@njit(cache=True)
def _predict_one(xb, w_in, b_in, w_out, code, levels, act_buf, yb):
    """Hard inference for one sample, nothing kept: ``yb = Σ_trees Σ_path act(z_n) u_n``."""
    yb[:] = 0
    for t in range(w_in.shape[0]):
        node = 0
        for _ in range(levels):
            z = _dot(xb, w_in[t, node]) + b_in[t, node]
            act_buf[0] = _activation(z, code)
            a = act_buf[0]
            _axpy(a, w_out[t, node], yb)
            node = 2 * node + 1 + (1 if z > 0 else 0)


@njit(cache=True)
def _route_one(xb, w_in, b_in, depth, leaves_b):
    """Leaf id (final node - (2**depth - 1)) of one sample in every tree."""
    first_leaf = (1 << depth) - 1
    for t in range(w_in.shape[0]):
        node = 0
        for _ in range(depth):
            z = _dot(xb, w_in[t, node]) + b_in[t, node]
            node = 2 * node + 1 + (1 if z > 0 else 0)
        leaves_b[t] = node - first_leaf


# --- batch kernels: a serial and a parallel form of each ------------------------------------------------------


@njit(cache=True)
def _forward_serial(x, w_in, b_in, w_out, code, nodes, logits, acts, y):
    for b in range(x.shape[0]):
        _forward_one(x[b], w_in, b_in, w_out, code, nodes[b], logits[b], acts[b], y[b])


@njit(cache=True, parallel=True)
def _forward_parallel(x, w_in, b_in, w_out, code, nodes, logits, acts, y):
    for b in prange(x.shape[0]):
        _forward_one(x[b], w_in, b_in, w_out, code, nodes[b], logits[b], acts[b], y[b])


@njit(cache=True)
def _predict_serial(x, w_in, b_in, w_out, code, levels, y):
    act_buf = np.empty(1, dtype=y.dtype)
    for b in range(x.shape[0]):
        _predict_one(x[b], w_in, b_in, w_out, code, levels, act_buf, y[b])


@njit(cache=True, parallel=True)
def _predict_parallel(x, w_in, b_in, w_out, code, levels, y):
    for b in prange(x.shape[0]):
        act_buf = np.empty(1, dtype=y.dtype)
        _predict_one(x[b], w_in, b_in, w_out, code, levels, act_buf, y[b])


@njit(cache=True)
def _route_serial(x, w_in, b_in, depth, leaves):
    for b in range(x.shape[0]):
        _route_one(x[b], w_in, b_in, depth, leaves[b])


@njit(cache=True, parallel=True)
def _route_parallel(x, w_in, b_in, depth, leaves):
    for b in prange(x.shape[0]):
        _route_one(x[b], w_in, b_in, depth, leaves[b])


@njit(cache=True)
def _path_grads_one(xb, gb, w_in, w_out, code, nodes_b, logits_b, dz_b, dxb, want_dx):
    """∂L/∂z_n = act'(z_n) (g · u_n) on one sample's paths; ``dxb = Σ_path ∂L/∂z_n w_n`` if ``want_dx``."""
    trees, levels = nodes_b.shape
    if want_dx:
        dxb[:] = 0
    for t in range(trees):
        for level in range(levels):
            node = nodes_b[t, level]
            dz_b[t, level] = _dot(gb, w_out[t, node]) * _activation_grad(logits_b[t, level], code)
            if want_dx:
                d = dz_b[t, level]
                w = w_in[t, node]
                for i in range(dxb.shape[0]):
                    dxb[i] += d * w[i]


@njit(cache=True, parallel=True)
def _path_grads_parallel(x, g, w_in, w_out, code, nodes, logits, dz, dx, want_dx):
    for b in prange(x.shape[0]):
        _path_grads_one(x[b], g[b], w_in, w_out, code, nodes[b], logits[b], dz[b], dx[b], want_dx)


@njit(cache=True)
def _path_grads_serial(x, g, w_in, w_out, code, nodes, logits, dz, dx, want_dx):
    for b in range(x.shape[0]):
        _path_grads_one(x[b], g[b], w_in, w_out, code, nodes[b], logits[b], dz[b], dx[b], want_dx)


@njit(cache=True)
def _group_by_node(nodes, n_nodes):
    """Counting sort of the path entries by (tree, node): ``entries[offsets[k]:offsets[k + 1]]`` are the flat
    indices ``(b * trees + t) * levels + level`` of the entries visiting row ``k = t * n_nodes + node``, b ascending."""
    n, trees, levels = nodes.shape
    offsets = np.zeros(trees * n_nodes + 1, dtype=np.int64)
    for b in range(n):
        for t in range(trees):
            for level in range(levels):
                offsets[t * n_nodes + nodes[b, t, level] + 1] += 1
    for k in range(trees * n_nodes):
        offsets[k + 1] += offsets[k]
    fill = offsets[:-1].copy()
    entries = np.empty(n * trees * levels, dtype=np.int64)
    for b in range(n):
        for t in range(trees):
            for level in range(levels):
                k = t * n_nodes + nodes[b, t, level]
                entries[fill[k]] = (b * trees + t) * levels + level
                fill[k] += 1
    return offsets, entries


@njit(cache=True)
def _accumulate_rows(src, coef, offsets, entries, per_sample, dst, c0, c1):
    """``dst[k, c0:c1] = Σ_{entries e of row k} coef[e] src[e // per_sample, c0:c1]`` for every row k (0 if none).

    Rows are written once, in order, from an accumulator that stays in L1."""
    width = c1 - c0
    acc = np.empty(width, dtype=dst.dtype)
    for k in range(dst.shape[0]):
        acc[:] = 0
        for e in range(offsets[k], offsets[k + 1]):
            idx = entries[e]
            s = coef[idx]
            xs = src[idx // per_sample, c0:c1]
            for c in range(width):
                acc[c] += s * xs[c]
        dst[k, c0:c1] = acc


@njit(cache=True, parallel=True)
def _weight_grads(x, g, acts, dz, offsets, entries, per_sample, dw_in, db_in, dw_out, block_in, block_out):
    """All weight gradients; iteration j of the prange owns one column block of dw_in or dw_out (or db_in).

    ``dw_in``/``dw_out`` are 2-D views (trees * N, width); ``acts``/``dz`` flat (n * trees * levels,)."""
    blocks_in = (x.shape[1] + block_in - 1) // block_in
    blocks_out = (g.shape[1] + block_out - 1) // block_out
    for j in prange(blocks_in + blocks_out + 1):
        if j < blocks_in:
            _accumulate_rows(x, dz, offsets, entries, per_sample, dw_in, j * block_in,
                             min((j + 1) * block_in, x.shape[1]))
        elif j < blocks_in + blocks_out:
            k = j - blocks_in
            _accumulate_rows(g, acts, offsets, entries, per_sample, dw_out, k * block_out,
                             min((k + 1) * block_out, g.shape[1]))
        else:
            for k in range(db_in.shape[0]):
                s = db_in[k] * 0
                for e in range(offsets[k], offsets[k + 1]):
                    s += dz[entries[e]]
                db_in[k] = s


@njit(cache=True, parallel=True)
def _forward_grouped(x, w_in, b_in, w_out, code, split, nodes, logits, acts, y, order):
    """Training forward / inference for large batches, sharing weight rows among inputs whose paths coincide.

    Per tree: (1) every input walks the top ``split`` levels (2**split - 1 rows, hot in L2 for all inputs);
    (2) the inputs are counting-sorted by the subtree root they reached at level ``split``; (3) each input walks
    its subtree in that order, so consecutive inputs share the subtree's rows (2**(depth - split + 1) - 1 of them,
    sized to stay in L2) and each row comes from memory about once per batch, not once per input. The output row
    of an input is written by the one thread that owns the input. ``order`` (n,) receives the last tree's order.
    """
    n, trees, levels = nodes.shape
    n_sub = 1 << split
    first = n_sub - 1
    for t in range(trees):
        for b in prange(n):
            xb = x[b]
            node = 0
            for level in range(split):
                z = _dot(xb, w_in[t, node]) + b_in[t, node]
                nodes[b, t, level] = node
                logits[b, t, level] = z
                acts[b, t, level] = _activation(z, code)
                node = 2 * node + 1 + (1 if z > 0 else 0)
            nodes[b, t, split] = node
        counts = np.zeros(n_sub + 1, dtype=np.int64)
        for b in range(n):
            counts[nodes[b, t, split] - first + 1] += 1
        for k in range(n_sub):
            counts[k + 1] += counts[k]
        for b in range(n):
            k = nodes[b, t, split] - first
            order[counts[k]] = b
            counts[k] += 1
        for i in prange(n):
            b = order[i]
            xb, yb = x[b], y[b]
            if t == 0:
                yb[:] = 0
            for level in range(split):
                a = acts[b, t, level]
                _axpy(a, w_out[t, nodes[b, t, level]], yb)
            node = nodes[b, t, split]
            for level in range(split, levels):
                z = _dot(xb, w_in[t, node]) + b_in[t, node]
                nodes[b, t, level] = node
                logits[b, t, level] = z
                acts[b, t, level] = _activation(z, code)
                a = acts[b, t, level]
                _axpy(a, w_out[t, node], yb)
                node = 2 * node + 1 + (1 if z > 0 else 0)


@njit(cache=True, parallel=True)
def _path_grads_ordered(x, g, w_in, w_out, code, nodes, logits, dz, dx, want_dx, order):
    """``_path_grads_one`` for every input, visiting inputs in ``order`` (grouped by subtree: shared rows hot)."""
    for i in prange(x.shape[0]):
        b = order[i]
        _path_grads_one(x[b], g[b], w_in, w_out, code, nodes[b], logits[b], dz[b], dx[b], want_dx)


def split_level(depth, row_bytes, cache_bytes=None):
    """Level at which ``_forward_grouped`` splits the tree: the top ``split`` levels and each subtree below
    (``depth - split + 1`` levels) should both fit in ``cache_bytes`` (default ``SUBTREE_CACHE_BYTES``)."""
    cache_bytes = SUBTREE_CACHE_BYTES if cache_bytes is None else cache_bytes
    split = 0
    while split < depth and ((2 << (depth - split)) - 1) * row_bytes > cache_bytes:
        split += 1
    return split


# --- public entry points (arrays already validated and contiguous) --------------------------------------------


def _grouped(x, w_in, w_out):
    return len(x) >= GROUPED_MIN_BATCH


def forward(x, w_in, b_in, w_out, code, nodes, logits, acts, y):
    """Training forward into preallocated ``nodes`` (n, trees, depth+1) int64, ``logits``/``acts`` (same shape)
    and ``y`` (n, output_width). Returns the order in which the inputs were processed (for ``backward``)."""
    n = len(x)
    if _grouped(x, w_in, w_out):
        order = np.empty(n, dtype=np.int64)
        depth = nodes.shape[2] - 1
        split = split_level(depth, (w_in.shape[2] + w_out.shape[2] + 1) * w_in.itemsize)
        _forward_grouped(x, w_in, b_in, w_out, code, split, nodes, logits, acts, y, order)
        return order
    kernel = _forward_parallel if n >= PARALLEL_MIN_BATCH else _forward_serial
    kernel(x, w_in, b_in, w_out, code, nodes, logits, acts, y)
    return np.arange(n, dtype=np.int64)


def predict(x, w_in, b_in, w_out, code, depth, y):
    """Hard inference into ``y`` (n, output_width); keeps nothing (large batches use the grouped kernel with
    small per-input path buffers)."""
    n = len(x)
    if _grouped(x, w_in, w_out):
        shape = (n, w_in.shape[0], depth + 1)
        forward(x, w_in, b_in, w_out, code, np.empty(shape, np.int64), np.empty(shape, y.dtype),
                np.empty(shape, y.dtype), y)
        return
    kernel = _predict_parallel if n >= PARALLEL_MIN_BATCH else _predict_serial
    kernel(x, w_in, b_in, w_out, code, depth + 1, y)


def route(x, w_in, b_in, depth, leaves):
    """Leaf per sample and tree into ``leaves`` (n, trees) int64."""
    kernel = _route_parallel if len(x) >= PARALLEL_MIN_BATCH else _route_serial
    kernel(x, w_in, b_in, depth, leaves)


def backward(x, g, w_in, w_out, code, nodes, logits, acts, order, dw_in, db_in, dw_out, dx):
    """Gradients of the path-only forward; ``dx`` is None or (n, input_width), filled in place.

    ``order`` is what ``forward`` returned. Weight gradients cover every node (untouched nodes get 0), so they
    are complete dense arrays; each row is written by one thread, in a fixed summation order.
    """
    n, trees, levels = nodes.shape
    n_nodes = w_in.shape[1]
    dz = np.empty_like(logits)
    want_dx = dx is not None
    dx_buf = dx if want_dx else np.empty((n, 0), dtype=x.dtype)
    if n >= PARALLEL_MIN_BATCH:
        _path_grads_ordered(x, g, w_in, w_out, code, nodes, logits, dz, dx_buf, want_dx, order)
    else:
        _path_grads_serial(x, g, w_in, w_out, code, nodes, logits, dz, dx_buf, want_dx)
    offsets, entries = _group_by_node(nodes, n_nodes)
    blocks = 2 * numba.get_num_threads()
    block_in = max(16, -(-x.shape[1] // blocks))
    block_out = max(16, -(-g.shape[1] // blocks))
    _weight_grads(x, g, acts.reshape(-1), dz.reshape(-1), offsets, entries, trees * levels,
                  dw_in.reshape(trees * n_nodes, -1), db_in.reshape(-1), dw_out.reshape(trees * n_nodes, -1),
                  block_in, block_out)
