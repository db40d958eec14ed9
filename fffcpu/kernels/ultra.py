"""Numba kernels of the UltraFastBERT layer (``UltraFFF``, spec §2) that touch only the root-to-leaf paths.

Every kernel takes arrays and scalars only; ``fffcpu.models.ultra.UltraFFF`` validates and converts, and the
functions at the end of this module (``forward``, ``predict``, ``route``, ``backward``) pick a kernel by batch size.
Nothing is compiled at import time (lazy ``@njit``, ``cache=True``).

Layout (heap order per tree, spec §2): ``w_in`` (trees, N, input_width), ``b_in`` (trees, N),
``w_out`` (trees, N, output_width) with N = 2**(depth + 1) - 1; a path visits ``depth + 1`` nodes,
root 0 first, and the next node is ``2 n + 1 + [z_n > 0]`` (strict: a logit of exactly 0 goes left).

Floating point. The dot products (``_dot``, ``_dot4``) and the output sums (``_path_output``) are written in LLVM IR
(``numba.extending.intrinsic``) with AVX-512-sized vectors and a summation order fixed by the code, not by the
compiler: lane j of accumulator i sums the elements ``64 k + 16 i + j`` (float32; 8 lanes for float64), the four
accumulators are added as (a0 + a1) + (a2 + a3), the lanes by halving, then the tail elements one by one. No
fast-math flag is set anywhere (no reassociation, no FMA contraction, no ``nnan``): every path kernel (one input,
four inputs at once, serial, parallel, grouped by subtree) therefore gives the same bits for an input, a
logit of exactly 0 and a NaN logit go left as in the reference, and routes differ from a reference summed in
another order only where ``|z|`` is at rounding level. Output element o is ``((0 + a_0 u_0[o]) + a_1 u_1[o]) + ...``
over trees then levels, in every kernel.

Races: outputs are owned. Per-sample arrays (``y``, ``dx``, the path caches) are written by the thread that owns
the sample (or the segment of samples); the weight gradients are written by the thread that owns a block of
columns (all nodes, all samples, columns ``c0:c1``), after the path entries are grouped by node (a counting sort),
so no two threads ever add into the same element, every row is written once in order, and the sums do not depend
on the thread count.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import parallel_lock, parallel_usable

__all__ = ["ACTIVATION_CODES", "forward", "predict", "route", "backward", "split_level", "predict_kernel", "streams"]

#: Activation name -> integer code understood by the kernels.
ACTIVATION_CODES = {"gelu": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "identity": 4}

#: Batches smaller than this run the serial kernels (a parallel launch costs more than a few tokens).
PARALLEL_MIN_BATCH = 32

#: Bytes of weight rows (w_in + b_in + w_out) a subtree of the grouped kernels may take: about half of a
#: 1 MiB L2 (AMD Zen 4); the top of the tree takes about as much again.
SUBTREE_CACHE_BYTES = 512 * 1024

#: Inputs per task of the parallel per-input inference kernel (each task allocates its path buffers once).
PREDICT_CHUNK = 16

#: Batches from this size on run the grouped forward (``_forward_grouped``) rather than the per-input kernel.
GROUPED_MIN_BATCH = 256

#: The grouped kernel cuts the inputs (and each subtree's inputs) into segments of at most this many, one task of
#: the ``prange`` each.
SEGMENT = 256

#: Outputs of at least this many bytes are written with non-temporal stores by the grouped kernel (when 64-byte
#: aligned): far larger than the L3 cache, they would only evict the weight rows and cost a read per line.
STREAM_MIN_BYTES = 16 << 20

#: Bytes of one vector register (AVX-512) and the number of independent vector accumulators of a dot product.
VECTOR_BYTES = 64
DOT_ACCUMULATORS = 4

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --- vector primitives in LLVM IR -----------------------------------------------------------------------------


def _vector_type(dtype):
    """(LLVM element type, lanes per vector register) of a Numba float type."""
    element = ir.FloatType() if dtype.bitwidth == 32 else ir.DoubleType()
    return element, VECTOR_BYTES * 8 // dtype.bitwidth


def _is_float_array(ty, ndim):
    return isinstance(ty, types.Array) and ty.ndim == ndim and ty.layout == "C" and ty.dtype in (types.float32,
                                                                                                types.float64)


def _is_weight_array(ty, ndim, dtype):
    """A C-contiguous weight array for activations of ``dtype``: the same dtype, or uint16 holding bfloat16 bits
    (the upper half of a float32) when ``dtype`` is float32."""
    return (isinstance(ty, types.Array) and ty.ndim == ndim and ty.layout == "C"
            and (ty.dtype == dtype or (dtype == types.float32 and ty.dtype == types.uint16)))


def _load_vector(builder, ptr, offset, vty, align):
    return builder.load(builder.bitcast(builder.gep(ptr, [offset]), vty.as_pointer()), align=align)


def _widen_bfloat16(builder, bits, float_type):
    """bfloat16 bits (i16 or a vector of them) → float32 (exact: the bits become the upper half)."""
    wide = ir.IntType(32) if isinstance(bits.type, ir.IntType) else ir.VectorType(ir.IntType(32), bits.type.count)
    shift = ir.Constant(wide, 16) if isinstance(wide, ir.IntType) else ir.Constant(wide, [16] * wide.count)
    return builder.bitcast(builder.shl(builder.zext(bits, wide), shift), float_type)


def _load_weights(builder, ptr, offset, vty, weight_dtype, align):
    """A vector of weights from ``ptr + offset`` as ``vty``; uint16 weights are bfloat16, widened exactly."""
    if weight_dtype == types.uint16:
        bits = _load_vector(builder, ptr, offset, ir.VectorType(ir.IntType(16), vty.count), 2)
        return _widen_bfloat16(builder, bits, vty)
    return _load_vector(builder, ptr, offset, vty, align)


def _load_weight(builder, ptr, index, element, weight_dtype):
    """One weight ``ptr[index]`` as ``element``; uint16 weights are bfloat16, widened exactly."""
    value = builder.load(builder.gep(ptr, [index]))
    return _widen_bfloat16(builder, value, element) if weight_dtype == types.uint16 else value


def _ir_dots(builder, a_ptrs, b_ptrs, n, dtype, b_dtype):
    """IR of ``[a · b for a, b in zip(a_ptrs, b_ptrs)]`` (vectors of length n), computed in one loop so that the
    independent chains overlap. Each dot product has the same instructions, in the same order, as when it is
    computed alone. ``b_dtype`` is the Numba dtype of the b arrays (``dtype``, or uint16 for bfloat16 rows)."""
    element, width = _vector_type(dtype)
    vty = ir.VectorType(element, width)
    align = dtype.bitwidth // 8
    intp = n.type
    chunk = width * DOT_ACCUMULATORS
    zero = ir.Constant(vty, [0.0] * width)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(DOT_ACCUMULATORS)] for _ in a_ptrs]
    n_chunks = builder.sdiv(n, intp(chunk))
    with cgutils.for_range(builder, n_chunks) as loop:
        base = builder.mul(loop.index, intp(chunk))
        for i in range(DOT_ACCUMULATORS):
            offset = builder.add(base, intp(i * width))
            for acc, a_ptr, b_ptr in zip(accs, a_ptrs, b_ptrs):
                va = _load_vector(builder, a_ptr, offset, vty, align)
                vb = _load_weights(builder, b_ptr, offset, vty, b_dtype, align)
                builder.store(builder.fadd(builder.load(acc[i]), builder.fmul(va, vb)), acc[i])
    tails = [cgutils.alloca_once_value(builder, ir.Constant(element, 0.0)) for _ in a_ptrs]
    start = builder.mul(n_chunks, intp(chunk))
    with cgutils.for_range(builder, builder.sub(n, start)) as loop:
        i = builder.add(start, loop.index)
        for tail, a_ptr, b_ptr in zip(tails, a_ptrs, b_ptrs):
            va = builder.load(builder.gep(a_ptr, [i]))
            vb = _load_weight(builder, b_ptr, i, element, b_dtype)
            builder.store(builder.fadd(builder.load(tail), builder.fmul(va, vb)), tail)
    results = []
    for acc, tail in zip(accs, tails):
        v = [builder.load(a) for a in acc]
        v = builder.fadd(builder.fadd(v[0], v[1]), builder.fadd(v[2], v[3]))
        lanes = width
        while lanes > 1:
            half = lanes // 2
            mask_type = ir.VectorType(ir.IntType(32), half)
            lo = builder.shuffle_vector(v, v, ir.Constant(mask_type, list(range(half))))
            hi = builder.shuffle_vector(v, v, ir.Constant(mask_type, list(range(half, lanes))))
            v = builder.fadd(lo, hi)
            lanes = half
        results.append(builder.fadd(builder.extract_element(v, ir.IntType(32)(0)), builder.load(tail)))
    return results


@intrinsic
def _dot(typingctx, a, b):
    """``a · b`` of two contiguous 1-D arrays of equal length (the length of ``a`` is used); ``b`` may hold
    bfloat16 weights (uint16) for a float32 ``a``."""
    if not (_is_float_array(a, 1) and _is_weight_array(b, 1, a.dtype)):
        return None

    def codegen(context, builder, sig, args):
        arr_a = context.make_array(sig.args[0])(context, builder, args[0])
        arr_b = context.make_array(sig.args[1])(context, builder, args[1])
        n = builder.extract_value(arr_a.shape, 0)
        return _ir_dots(builder, [arr_a.data], [arr_b.data], n, sig.args[0].dtype, sig.args[1].dtype)[0]

    return a.dtype(a, b), codegen


@intrinsic
def _dot4(typingctx, a0, b0, a1, b1, a2, b2, a3, b3):
    """``(a0 · b0, a1 · b1, a2 · b2, a3 · b3)``, each bitwise equal to ``_dot(ai, bi)``: four independent dot
    products in one loop, so that their dependency chains (and the loads of four rows) overlap."""
    if not (all(_is_float_array(a, 1) and a.dtype == a0.dtype for a in (a0, a1, a2, a3))
            and all(_is_weight_array(b, 1, a0.dtype) and b.dtype == b0.dtype for b in (b0, b1, b2, b3))):
        return None

    def codegen(context, builder, sig, args):
        arrs = [context.make_array(ty)(context, builder, v) for ty, v in zip(sig.args, args)]
        n = builder.extract_value(arrs[0].shape, 0)
        dots = _ir_dots(builder, [a.data for a in arrs[0::2]], [b.data for b in arrs[1::2]], n, sig.args[0].dtype,
                        sig.args[1].dtype)
        return context.make_tuple(builder, sig.return_type, dots)

    return types.UniTuple(a0.dtype, 4)(a0, b0, a1, b1, a2, b2, a3, b3), codegen


def _make_path_output(stream):
    """The intrinsic ``path_output(yb, w_out, nodes_b, acts_b)``; with ``stream`` its vector stores of ``yb`` are
    non-temporal (straight to memory, no read of the line first) and assume ``yb`` 64-byte aligned."""

    @intrinsic
    def path_output(typingctx, yb, w_out, nodes_b, acts_b):
        """``yb[o] = Σ_trees Σ_levels acts_b[t, l] w_out[t, nodes_b[t, l], o]`` summed in that order from 0.

        ``yb`` (out,), ``w_out`` (trees, N, out; bfloat16 bits as uint16 for a float32 ``yb``), ``nodes_b``
        (trees, levels) int64, ``acts_b`` (trees, levels); all C-contiguous. Each block of 4 vectors of ``yb`` stays
        in registers over the whole path and is stored once."""
        if not (_is_float_array(yb, 1) and _is_weight_array(w_out, 3, yb.dtype) and _is_float_array(acts_b, 2)
                and isinstance(nodes_b, types.Array) and nodes_b.ndim == 2 and nodes_b.layout == "C"
                and nodes_b.dtype == types.int64 and yb.dtype == acts_b.dtype):
            return None

        def codegen(context, builder, sig, args):
            y, w, nodes, acts = (context.make_array(ty)(context, builder, v) for ty, v in zip(sig.args, args))
            dtype, w_dtype = sig.args[0].dtype, sig.args[1].dtype
            element, width = _vector_type(dtype)
            vty = ir.VectorType(element, width)
            align = dtype.bitwidth // 8
            n_out = builder.extract_value(y.shape, 0)
            intp = n_out.type
            n_nodes = builder.extract_value(w.shape, 1)
            trees = builder.extract_value(nodes.shape, 0)
            levels = builder.extract_value(nodes.shape, 1)
            chunk = width * DOT_ACCUMULATORS
            n_chunks = builder.sdiv(n_out, intp(chunk))
            zero = ir.Constant(vty, [0.0] * width)
            mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)

            def path(body):
                """Call ``body(a, row_start)`` for every (tree, level) of the path, trees then levels."""
                with cgutils.for_range(builder, trees) as tree:
                    with cgutils.for_range(builder, levels) as level:
                        k = builder.add(builder.mul(tree.index, levels), level.index)
                        node = builder.load(builder.gep(nodes.data, [k]))
                        a = builder.load(builder.gep(acts.data, [k]))
                        row = builder.mul(builder.add(builder.mul(tree.index, n_nodes), node), n_out)
                        body(a, row)

            accs = [cgutils.alloca_once(builder, vty) for _ in range(DOT_ACCUMULATORS)]
            with cgutils.for_range(builder, n_chunks) as loop:
                base = builder.mul(loop.index, intp(chunk))
                for acc in accs:
                    builder.store(zero, acc)

                def add_row(a, row):
                    undefined = ir.Constant(vty, ir.Undefined)
                    av = builder.shuffle_vector(builder.insert_element(undefined, a, ir.IntType(32)(0)), undefined,
                                                mask)
                    start = builder.add(row, base)
                    for i, acc in enumerate(accs):
                        u = _load_weights(builder, w.data, builder.add(start, intp(i * width)), vty, w_dtype, align)
                        builder.store(builder.fadd(builder.load(acc), builder.fmul(av, u)), acc)

                path(add_row)
                for i, acc in enumerate(accs):
                    ptr = builder.bitcast(builder.gep(y.data, [builder.add(base, intp(i * width))]), vty.as_pointer())
                    store = builder.store(builder.load(acc), ptr, align=VECTOR_BYTES if stream else align)
                    if stream:
                        store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
            total = cgutils.alloca_once(builder, element)
            start = builder.mul(n_chunks, intp(chunk))
            with cgutils.for_range(builder, builder.sub(n_out, start)) as loop:
                o = builder.add(start, loop.index)
                builder.store(ir.Constant(element, 0.0), total)

                def add_element(a, row):
                    u = _load_weight(builder, w.data, builder.add(row, o), element, w_dtype)
                    builder.store(builder.fadd(builder.load(total), builder.fmul(a, u)), total)

                path(add_element)
                builder.store(builder.load(total), builder.gep(y.data, [o]))
            return context.get_dummy_value()

        return types.none(yb, w_out, nodes_b, acts_b), codegen

    return path_output


_path_output = _make_path_output(stream=False)
#: ``_path_output`` with non-temporal stores: for outputs far larger than the caches (``_forward_grouped`` with
#: ``stream``), a row aligned to 64 bytes, followed by ``_store_fence()`` before other threads read the output.
_path_output_stream = _make_path_output(stream=True)


@intrinsic
def _store_fence(typingctx):
    """``sfence``: the non-temporal stores issued before it are globally visible before any later store."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


# --- scalar helpers -------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _visit(t, level, node, z, code, nodes_b, logits_b, acts_b):
    """Record the logit ``z`` of one input at ``node`` (tree ``t``, ``level``) and return its next node, which is
    also recorded in ``nodes_b`` unless ``level`` is the last."""
    logits_b[t, level] = z
    acts_b[t, level] = _activation(z, code)  # stored in the array dtype: float32 models stay in float32
    child = 2 * node + 1 + (1 if z > 0 else 0)
    if level + 1 < nodes_b.shape[1]:
        nodes_b[t, level + 1] = child
    return child


@njit(cache=True, nogil=True)
def _levels(n_nodes):
    """depth + 1 of a tree of ``n_nodes`` = 2**(depth + 1) - 1 nodes."""
    levels = 0
    while (1 << (levels + 1)) - 1 <= n_nodes:
        levels += 1
    return levels


# --- one input ------------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _walk_levels(xb, w_in, b_in, code, t, level0, level1, nodes_b, logits_b, acts_b):
    """Walk tree ``t`` for one input from ``level0`` (its node there is ``nodes_b[t, level0]``) to ``level1``
    (exclusive), recording nodes, logits and activations in its path arrays (trees, levels)."""
    node = nodes_b[t, level0]
    for level in range(level0, level1):
        node = _visit(t, level, node, _dot(xb, w_in[t, node]) + b_in[t, node], code, nodes_b, logits_b, acts_b)


@njit(cache=True, nogil=True)
def _walk_one(xb, w_in, b_in, code, nodes_b, logits_b, acts_b):
    """Walk every tree for one input: its path ``nodes_b`` (trees, levels), logits and activations."""
    trees, levels = nodes_b.shape
    for t in range(trees):
        nodes_b[t, 0] = 0
        _walk_levels(xb, w_in, b_in, code, t, 0, levels, nodes_b, logits_b, acts_b)


@njit(cache=True, nogil=True)
def _walk_four(x, w_in, b_in, code, t, b0, b1, b2, b3, level0, level1, nodes, logits, acts):
    """``_walk_levels`` for inputs ``b0``..``b3`` at once (``_dot4``: four independent dot products per step,
    each at its input's own node); each input's arithmetic is that of ``_walk_levels``."""
    n0, n1, n2, n3 = nodes[b0, t, level0], nodes[b1, t, level0], nodes[b2, t, level0], nodes[b3, t, level0]
    for level in range(level0, level1):
        z0, z1, z2, z3 = _dot4(x[b0], w_in[t, n0], x[b1], w_in[t, n1], x[b2], w_in[t, n2], x[b3], w_in[t, n3])
        n0 = _visit(t, level, n0, z0 + b_in[t, n0], code, nodes[b0], logits[b0], acts[b0])
        n1 = _visit(t, level, n1, z1 + b_in[t, n1], code, nodes[b1], logits[b1], acts[b1])
        n2 = _visit(t, level, n2, z2 + b_in[t, n2], code, nodes[b2], logits[b2], acts[b2])
        n3 = _visit(t, level, n3, z3 + b_in[t, n3], code, nodes[b3], logits[b3], acts[b3])


@njit(cache=True, nogil=True)
def _walk_inputs(x, w_in, b_in, code, t, ids, level0, level1, nodes, logits, acts):
    """Walk tree ``t`` from ``level0`` to ``level1`` for the inputs ``ids``, four at a time."""
    m = ids.shape[0]
    k = 0
    while k + 4 <= m:
        _walk_four(x, w_in, b_in, code, t, ids[k], ids[k + 1], ids[k + 2], ids[k + 3], level0, level1,
                   nodes, logits, acts)
        k += 4
    for k in range(k, m):
        b = ids[k]
        _walk_levels(x[b], w_in, b_in, code, t, level0, level1, nodes[b], logits[b], acts[b])


@njit(cache=True, nogil=True)
def _route_one(xb, w_in, b_in, depth, leaves_b):
    """Leaf id (final node - (2**depth - 1)) of one input in every tree."""
    first_leaf = (1 << depth) - 1
    for t in range(w_in.shape[0]):
        node = 0
        for _ in range(depth):
            z = _dot(xb, w_in[t, node]) + b_in[t, node]
            node = 2 * node + 1 + (1 if z > 0 else 0)
        leaves_b[t] = node - first_leaf


# --- per-input batch kernels: a serial and a parallel form of each --------------------------------------------


@njit(cache=True, nogil=True)
def _forward_serial(x, w_in, b_in, w_out, code, nodes, logits, acts, y):
    for b in range(x.shape[0]):
        _walk_one(x[b], w_in, b_in, code, nodes[b], logits[b], acts[b])
        _path_output(y[b], w_out, nodes[b], acts[b])


@njit(cache=True, nogil=True, parallel=True)
def _forward_parallel(x, w_in, b_in, w_out, code, nodes, logits, acts, y):
    for b in prange(x.shape[0]):
        _walk_one(x[b], w_in, b_in, code, nodes[b], logits[b], acts[b])
        _path_output(y[b], w_out, nodes[b], acts[b])


@njit(cache=True, nogil=True)
def _predict_serial(x, w_in, b_in, w_out, code, y):
    """Hard inference, nothing kept (one path buffer for the whole call); the batch-1 kernel."""
    trees, n_nodes = b_in.shape
    levels = _levels(n_nodes)
    nodes_b = np.empty((trees, levels), dtype=np.int64)
    logits_b = np.empty((trees, levels), dtype=y.dtype)
    acts_b = np.empty((trees, levels), dtype=y.dtype)
    for b in range(x.shape[0]):
        _walk_one(x[b], w_in, b_in, code, nodes_b, logits_b, acts_b)
        _path_output(y[b], w_out, nodes_b, acts_b)


@njit(cache=True, nogil=True, parallel=True)
def _predict_parallel(x, w_in, b_in, w_out, code, y):
    """The inputs in chunks of ``PREDICT_CHUNK``, one path buffer per chunk (not one allocation per input)."""
    n = x.shape[0]
    trees, n_nodes = b_in.shape
    levels = _levels(n_nodes)
    for c in prange((n + PREDICT_CHUNK - 1) // PREDICT_CHUNK):
        nodes_b = np.empty((trees, levels), dtype=np.int64)
        logits_b = np.empty((trees, levels), dtype=y.dtype)
        acts_b = np.empty((trees, levels), dtype=y.dtype)
        for b in range(c * PREDICT_CHUNK, min(n, (c + 1) * PREDICT_CHUNK)):
            _walk_one(x[b], w_in, b_in, code, nodes_b, logits_b, acts_b)
            _path_output(y[b], w_out, nodes_b, acts_b)


@njit(cache=True, nogil=True)
def _route_serial(x, w_in, b_in, depth, leaves):
    for b in range(x.shape[0]):
        _route_one(x[b], w_in, b_in, depth, leaves[b])


@njit(cache=True, nogil=True, parallel=True)
def _route_parallel(x, w_in, b_in, depth, leaves):
    for b in prange(x.shape[0]):
        _route_one(x[b], w_in, b_in, depth, leaves[b])


# --- grouped by subtree: several inputs share each weight row ---------------------------------------------------


@njit(cache=True, nogil=True, parallel=True)
def _forward_grouped(x, w_in, b_in, w_out, code, split, stream, nodes, logits, acts, y, order):
    """Training forward / inference for large batches, with the inputs ordered so that shared weight rows stay
    in cache.

    Per tree: (1) segments of ``SEGMENT`` consecutive inputs walk the top ``split`` levels (2**split - 1 rows, hot
    in L2 for all inputs); (2) the inputs are counting-sorted by the subtree root they reached at level
    ``split``; (3) the inputs of each subtree, cut into segments of at most ``SEGMENT`` (one ``prange`` task each),
    walk the subtree, whose 2**(depth - split + 1) - 1 rows are sized to stay in L2. Inputs are walked four at a
    time (``_walk_inputs``). After the last tree, each input's output row is summed in registers over its whole
    path and written once by the thread that owns its segment; with ``stream`` (a 64-byte-aligned output far
    larger than the caches) the rows are written with non-temporal stores. ``order`` (n,) receives the last
    tree's order (inputs sorted by subtree), which ``backward`` follows.
    """
    n, trees, levels = nodes.shape
    n_sub = 1 << split
    first = n_sub - 1
    segment = SEGMENT
    for t in range(trees):
        for b in range(n):
            order[b] = b
            nodes[b, t, 0] = 0
        if split > 0:
            for s in prange((n + segment - 1) // segment):
                _walk_inputs(x, w_in, b_in, code, t, order[s * segment:min(n, (s + 1) * segment)], 0, split,
                             nodes, logits, acts)
        counts = np.zeros(n_sub + 1, dtype=np.int64)
        for b in range(n):
            counts[nodes[b, t, split] - first + 1] += 1
        for k in range(n_sub):
            counts[k + 1] += counts[k]
        # segments: each subtree's inputs cut into ceil(count / SEGMENT) nearly equal pieces
        n_seg = 0
        for k in range(n_sub):
            n_seg += (counts[k + 1] - counts[k] + segment - 1) // segment
        bounds = np.empty(n_seg + 1, dtype=np.int64)
        s = 0
        for k in range(n_sub):
            c = counts[k + 1] - counts[k]
            pieces = (c + segment - 1) // segment
            for p in range(pieces):
                bounds[s] = counts[k] + (c * p) // pieces
                s += 1
        bounds[n_seg] = n
        fill = counts[:-1].copy()
        for b in range(n):
            k = nodes[b, t, split] - first
            order[fill[k]] = b
            fill[k] += 1
        last = t == trees - 1
        for s in prange(n_seg):
            seg = order[bounds[s]:bounds[s + 1]]
            _walk_inputs(x, w_in, b_in, code, t, seg, split, levels, nodes, logits, acts)
            if last:
                for k in range(seg.shape[0]):
                    b = seg[k]
                    if stream:
                        _path_output_stream(y[b], w_out, nodes[b], acts[b])
                    else:
                        _path_output(y[b], w_out, nodes[b], acts[b])
                if stream:
                    _store_fence()


# --- backward -----------------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _path_grads_one(xb, gb, w_in, w_out, code, nodes_b, logits_b, dz_b, dxb, want_dx):
    """∂L/∂z_n = act'(z_n) (g · u_n) on one input's paths; ``dxb = Σ_path ∂L/∂z_n w_n`` if ``want_dx``."""
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


@njit(cache=True, nogil=True, parallel=True)
def _path_grads_parallel(x, g, w_in, w_out, code, nodes, logits, dz, dx, want_dx):
    for b in prange(x.shape[0]):
        _path_grads_one(x[b], g[b], w_in, w_out, code, nodes[b], logits[b], dz[b], dx[b], want_dx)


@njit(cache=True, nogil=True)
def _path_grads_serial(x, g, w_in, w_out, code, nodes, logits, dz, dx, want_dx):
    for b in range(x.shape[0]):
        _path_grads_one(x[b], g[b], w_in, w_out, code, nodes[b], logits[b], dz[b], dx[b], want_dx)


@njit(cache=True, nogil=True, parallel=True)
def _path_grads_ordered(x, g, w_in, w_out, code, nodes, logits, dz, dx, want_dx, order):
    """``_path_grads_one`` for every input, visiting inputs in ``order`` (grouped by subtree: shared rows hot)."""
    for i in prange(x.shape[0]):
        b = order[i]
        _path_grads_one(x[b], g[b], w_in, w_out, code, nodes[b], logits[b], dz[b], dx[b], want_dx)


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True, parallel=True)
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
                db_in[k] = 0  # a zero of db_in's dtype, whatever the last call left there (NaN * 0 is NaN)
                s = db_in[k]
                for e in range(offsets[k], offsets[k + 1]):
                    s += dz[entries[e]]
                db_in[k] = s


def split_level(depth, row_bytes, cache_bytes=None):
    """Level at which ``_forward_grouped`` splits the tree: the top ``split`` levels and each subtree below
    (``depth - split + 1`` levels) should both fit in ``cache_bytes`` (default ``SUBTREE_CACHE_BYTES``)."""
    cache_bytes = SUBTREE_CACHE_BYTES if cache_bytes is None else cache_bytes
    split = 0
    while split < depth and ((2 << (depth - split)) - 1) * row_bytes > cache_bytes:
        split += 1
    return split


# --- public entry points (arrays already validated and contiguous) --------------------------------------------


def forward(x, w_in, b_in, w_out, code, nodes, logits, acts, y):
    """Training forward into preallocated ``nodes`` (n, trees, depth+1) int64, ``logits``/``acts`` (same shape)
    and ``y`` (n, output_width). Returns the order in which the inputs were processed (for ``backward``)."""
    n = len(x)
    if n >= GROUPED_MIN_BATCH and parallel_usable():
        order = np.empty(n, dtype=np.int64)
        depth = nodes.shape[2] - 1
        split = split_level(depth, (w_in.shape[2] + w_out.shape[2] + 1) * w_in.itemsize)
        with parallel_lock():
            _forward_grouped(x, w_in, b_in, w_out, code, split, streams(y), nodes, logits, acts, y, order)
        return order
    if n >= PARALLEL_MIN_BATCH and parallel_usable():
        with parallel_lock():
            _forward_parallel(x, w_in, b_in, w_out, code, nodes, logits, acts, y)
    else:
        _forward_serial(x, w_in, b_in, w_out, code, nodes, logits, acts, y)
    return np.arange(n, dtype=np.int64)


def streams(y):
    """Whether the grouped kernel writes ``y`` with non-temporal stores: at least ``STREAM_MIN_BYTES``, rows that
    start on 64-byte boundaries (aligned data, whole vectors per row)."""
    return bool(y.nbytes >= STREAM_MIN_BYTES and y.ctypes.data % VECTOR_BYTES == 0
                and y.strides[0] % VECTOR_BYTES == 0)


def predict_kernel(n):
    """The serial kernel ``predict`` runs for a batch of ``n`` inputs, ``kernel(x, w_in, b_in, w_out, code, y)``;
    None for batches that take a parallel kernel (through ``predict``, which takes ``parallel_lock``).
    ``UltraFFF.predict`` calls it directly for small batches (no further dispatch)."""
    return _predict_serial if n < PARALLEL_MIN_BATCH else None


def predict(x, w_in, b_in, w_out, code, depth, y):
    """Hard inference into ``y`` (n, output_width); keeps nothing (large batches use the grouped kernel with
    per-input path buffers)."""
    n = len(x)
    if n < PARALLEL_MIN_BATCH or not parallel_usable():  # (a process forked after GNU OpenMP: serially)
        _predict_serial(x, w_in, b_in, w_out, code, y)
        return
    if n < GROUPED_MIN_BATCH:
        with parallel_lock():
            _predict_parallel(x, w_in, b_in, w_out, code, y)
        return
    shape = (n, w_in.shape[0], depth + 1)
    forward(x, w_in, b_in, w_out, code, np.empty(shape, np.int64), np.empty(shape, y.dtype),
            np.empty(shape, y.dtype), y)


def route(x, w_in, b_in, depth, leaves):
    """Leaf per input and tree into ``leaves`` (n, trees) int64."""
    if len(x) >= PARALLEL_MIN_BATCH and parallel_usable():
        with parallel_lock():
            _route_parallel(x, w_in, b_in, depth, leaves)
    else:
        _route_serial(x, w_in, b_in, depth, leaves)


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
    if n >= PARALLEL_MIN_BATCH and parallel_usable():
        with parallel_lock():
            _path_grads_ordered(x, g, w_in, w_out, code, nodes, logits, dz, dx_buf, want_dx, order)
    else:
        _path_grads_serial(x, g, w_in, w_out, code, nodes, logits, dz, dx_buf, want_dx)
    offsets, entries = _group_by_node(nodes, n_nodes)
    blocks = 2 * numba.get_num_threads()
    block_in = max(16, -(-x.shape[1] // blocks))
    block_out = max(16, -(-g.shape[1] // blocks))
    with parallel_lock():
        _weight_grads(x, g, acts.reshape(-1), dz.reshape(-1), offsets, entries, trees * levels,
                      dw_in.reshape(trees * n_nodes, -1), db_in.reshape(-1), dw_out.reshape(trees * n_nodes, -1),
                      block_in, block_out)
