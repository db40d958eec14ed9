"""Numba kernels for FFF hard inference (arXiv 2308.14711 §2, "hard" FFF): routing and leaf evaluation.

Private ``@njit`` kernels that take only arrays and scalars (validated and converted by the caller,
``fffcpu.engine``); the readable NumPy reference is ``FFF._route_reference`` / ``FFF._hard_outputs_reference``
and the per-sample one is ``tests/naive.py``.

Conventions (spec §1): heap-ordered nodes, children ``2i + 1`` (left) and ``2i + 2`` (right); a sample goes
right iff its logit ``w_i·x + b_i >= 0`` (a logit of exactly 0 goes right, a NaN logit goes left).

Arithmetic is fixed so that every kernel gives the same bits for the same sample, whichever path the
dispatcher picks and however samples are grouped or split across threads:

* a node logit is ``_dot(x, w_i)`` (16-lane vector partial sums in a fixed order, see ``_dot``) plus ``b_i``;
* a leaf hidden unit is ``act(((p0 + p1) + (p2 + p3)) + b1[j])`` where ``p_r = Σ_{i ≡ r (mod 4)} x_i w1[i, j]``
  is accumulated in increasing ``i`` (four interleaved partial sums, so that a single sample has four
  independent dependency chains), except in leaves 1, 2, 4 or 8 units wide (``NARROW``), whose W1 is summed
  as one flat run of 16-lane vectors (``_make_narrow_block``; for a 1-unit leaf, exactly ``_dot``);
* an output is ``(Σ_j h_j w2[j, k]) + b2[k]`` accumulated in increasing ``j``.

No ``fastmath`` anywhere: routing ties must match the reference, and contraction into FMA would make the
bits depend on the inlining context. How a vector is loaded changes no bit: a row of x that starts off a cache
line is read as whole lines and shifted in registers where the target has AVX-512 (``_dots_codegen``), with
plain loads elsewhere, and both give the same vectors.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["ACTIVATION_CODES", "TILE", "WIDE", "LANES", "NARROW"]

#: Activation names of ``fffcpu.functional`` → the integer code the kernels branch on.
ACTIVATION_CODES = {"identity": 0, "relu": 1, "gelu": 2, "tanh": 3, "sigmoid": 4}

#: Samples of one leaf evaluated together (they share every weight row load).
TILE = 8
#: Tiles of fewer than 4 samples of leaves at least this wide are evaluated with long vectorized rows instead of
#: 16-unit blocks.
WIDE = 256

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


# --- SIMD building blocks -----------------------------------------------------------------------
# Numba's loop vectorizer does not vectorize loops of 16 iterations (it wants 64+) and its SLP vectorizer
# is off, so the two hot inner products are written as LLVM vector IR. Every lane is an ordinary IEEE
# multiply followed by an add (no FMA contraction, no reassociation): the order of operations is the one
# written here, identical in every kernel that calls these blocks.

LANES = 16
#: Bytes of a cache line (the unit of a prefetch).
_LINE = 64
#: The grouped evaluation prefetches the next leaf's W1 while it evaluates a leaf when W1 is at most this large:
#: two leaves then sit well within a 1 MiB L2 (a 784 x 16 float32 W1 is 49 KiB). Larger leaves are left to the
#: hardware prefetcher (measured: prefetching 392 KiB leaves, 784 x 128, made the leaf evaluation of a depth-9 tree
#: at batch 4096 10% slower).
PREFETCH_LEAF_BYTES = 128 * 1024


def _target_has_avx512() -> bool:
    """Whether the code Numba generates may use AVX-512F: the host's features, or those of ``NUMBA_CPU_NAME`` /
    ``NUMBA_CPU_FEATURES`` when they are set (a cache built for a generic target must not use it)."""
    from llvmlite import binding
    from numba.core import config

    if config.CPU_NAME is not None:
        return "+avx512f" in (config.CPU_FEATURES or "").split(",")
    return bool(binding.get_host_cpu_features().get("avx512f"))


#: The dot products read a row that does not start on a cache line as whole lines and shift them in registers
#: (``_dots_codegen``); this needs AVX-512's two-source permute.
_SHIFTED_LINES = _target_has_avx512()


def _same_c_arrays(*arrays):
    return all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == arrays[0].dtype for a in arrays)


def _intp_args(context, builder, signature, args, indices):
    return [context.cast(builder, args[k], signature.args[k], types.intp) for k in indices]


def _array_args(context, builder, signature, args, indices):
    """The array structures (``.data``, ``.shape``) of the arguments at ``indices``."""
    return [context.make_array(signature.args[k])(context, builder, args[k]) for k in indices]


def _splat(builder, value, vty):
    undef = ir.Constant(vty, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


def _make_hidden_block(n_samples, masked=False, prefetch_rows=False):
    """Intrinsic ``block(x, rows, start, w, woff, out, ooff, ostride, pf)``: 16 hidden pre-activations (no bias)
    for the ``n_samples`` samples ``rows[start:start + n_samples]``.

    For sample t and lane j: ``out[ooff + t*ostride + j] = (p0 + p1) + (p2 + p3)`` with
    ``p_r = Σ_{i ≡ r mod 4} x[row_t, i] * w[woff + i*wstride + j]`` accumulated in increasing i, where
    ``wstride`` is ``w.shape[-1]`` (the leaf width) and ``x`` is C-contiguous (n, n_in). One load of a weight
    row segment serves all the samples.

    With ``pf >= 0``, the step that reads row i also prefetches (``_prefetch_line``) the line at
    ``w[pf + i*wstride]``: the same row segment of the leaf evaluated next, which then streams in from memory one line
    per row while this block computes. A prefetch changes no result.

    With ``masked``, the intrinsic takes one more argument, ``n_units`` (1 to 16), and only lanes
    ``j < n_units`` are read from ``w`` and written to ``out`` (masked vector loads and stores): the same sums
    for the last ``width % 16`` units of a leaf, or for a whole leaf narrower than 16 units.

    With ``prefetch_rows``, it takes two more, ``xstart`` and ``xcount`` (0 to 4): the step that reads rows i to
    i + 3 of ``w`` also prefetches (``_prefetch_line``) the next line of one of the input rows ``rows[xstart:xstart +
    xcount]``, the rows taking turns, so that over the block's ``n_in / 4`` steps these rows stream in whole
    (``itemsize / 4`` lines per step: 4 rows of ``n_in * itemsize`` bytes). The caller passes the rows of the
    tile it evaluates next: they then come from memory a line at a time while this block computes, instead of
    all at once before it.
    """

    def codegen(context, builder, signature, args):
        tys = signature.args
        xa, ra, wa, oa = _array_args(context, builder, signature, args, (0, 1, 3, 5))
        start_, woff_, ooff_, ostride_, pf_ = _intp_args(context, builder, signature, args, (2, 4, 6, 7, 8))
        intp = context.get_value_type(types.intp)
        n_in = cgutils.unpack_tuple(builder, xa.shape, tys[0].ndim)[1]
        wshape = cgutils.unpack_tuple(builder, wa.shape, tys[3].ndim)
        wstride = wshape[-1]
        elt = context.get_data_type(tys[0].dtype)
        vty = ir.VectorType(elt, LANES)
        align = tys[0].dtype.bitwidth // 8
        zero = ir.Constant(vty, [ir.Constant(elt, 0.0)] * LANES)
        mask = None
        if masked:
            n_units = _intp_args(context, builder, signature, args, (9,))[0]
            lanes = ir.Constant(ir.VectorType(intp, LANES), list(range(LANES)))
            mask = builder.icmp_signed("<", lanes, _splat(builder, n_units, ir.VectorType(intp, LANES)))
        xbase = []
        for t in range(n_samples):
            row = builder.load(builder.gep(ra.data, [builder.add(start_, ir.Constant(intp, t))]))
            xbase.append(builder.mul(context.cast(builder, row, tys[1].dtype, types.intp), n_in))
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(4)] for _ in range(n_samples)]

        def step(i, r):
            wp = builder.bitcast(builder.gep(wa.data, [builder.add(woff_, builder.mul(i, wstride))]), vty.as_pointer())
            wv = builder.load(wp, align=align) if mask is None else _masked_load(builder, wp, align, mask, zero)
            for t in range(n_samples):
                xv = builder.load(builder.gep(xa.data, [builder.add(xbase[t], i)]))
                acc = accs[t][r]
                builder.store(builder.fadd(builder.load(acc), builder.fmul(_splat(builder, xv, vty), wv)), acc)

        four = ir.Constant(intp, 4)
        n4 = builder.mul(builder.sdiv(n_in, four), four)
        prefetching = builder.icmp_signed(">=", pf_, ir.Constant(intp, 0))
        if prefetch_rows:
            xstart_, xcount_ = _intp_args(context, builder, signature, args, (9, 10))
            lines_per_step = max(1, tys[0].dtype.bitwidth // 32)
            per_line = ir.Constant(intp, max(1, _LINE * 8 // tys[0].dtype.bitwidth))
            last = builder.mul(builder.sub(cgutils.unpack_tuple(builder, xa.shape, 2)[0], ir.Constant(intp, 1)),
                               n_in)
            # the start of each prefetched row in x (flat), -1 where there is none
            xrow = []
            for k in range(4):
                have = builder.icmp_signed(">", xcount_, ir.Constant(intp, k))
                index = builder.select(have, builder.add(xstart_, ir.Constant(intp, k)), start_)
                row = context.cast(builder, builder.load(builder.gep(ra.data, [index])), tys[1].dtype, types.intp)
                xrow.append(builder.select(have, builder.mul(row, n_in), ir.Constant(intp, -1)))
        with cgutils.for_range_slice(builder, ir.Constant(intp, 0), n4, four, intp) as (i, _):
            with builder.if_then(prefetching):
                for r in range(4):
                    row = builder.mul(builder.add(i, ir.Constant(intp, r)), wstride)
                    _prefetch_line(builder, builder.gep(wa.data, [builder.add(pf_, row)]))
            if prefetch_rows:
                # step i // 4: row (i // 4) % 4, lines from (i // 16) * lines_per_step
                turn = builder.and_(builder.ashr(i, ir.Constant(intp, 2)), ir.Constant(intp, 3))
                base = xrow[3]
                for k in (2, 1, 0):
                    base = builder.select(builder.icmp_signed("==", turn, ir.Constant(intp, k)), xrow[k], base)
                with builder.if_then(builder.icmp_signed(">=", base, ir.Constant(intp, 0))):
                    first = builder.mul(builder.ashr(i, ir.Constant(intp, 4)), ir.Constant(intp, lines_per_step))
                    for k in range(lines_per_step):
                        off = builder.mul(builder.add(first, ir.Constant(intp, k)), per_line)
                        # a line past the row's end can only be the next row's: stay inside x
                        off = builder.add(base, off)
                        off = builder.select(builder.icmp_signed("<", off, builder.add(last, n_in)), off, last)
                        _prefetch_line(builder, builder.gep(xa.data, [off]))
            for r in range(4):
                step(builder.add(i, ir.Constant(intp, r)), r)
        rem = builder.sub(n_in, n4)
        for r in range(3):
            with builder.if_then(builder.icmp_signed(">", rem, ir.Constant(intp, r))):
                step(builder.add(n4, ir.Constant(intp, r)), r)
        for t in range(n_samples):
            a = [builder.load(accs[t][r]) for r in range(4)]
            total = builder.fadd(builder.fadd(a[0], a[1]), builder.fadd(a[2], a[3]))
            op = builder.gep(oa.data, [builder.add(ooff_, builder.mul(ir.Constant(intp, t), ostride_))])
            op = builder.bitcast(op, vty.as_pointer())
            if mask is None:
                builder.store(total, op, align=align)
            else:
                _masked_store(builder, total, op, align, mask)
        return context.get_dummy_value()

    def signature(x, rows, start, w, woff, out, ooff, ostride, pf, *more):
        if not _same_c_arrays(x, w, out):
            return None  # a typing error: the raw-pointer code above needs C-contiguous arrays of one dtype
        return types.void(x, rows, start, w, woff, out, ooff, ostride, pf, *more)

    if masked:
        @intrinsic
        def hidden_block(typingctx, x, rows, start, w, woff, out, ooff, ostride, pf, n_units):
            return signature(x, rows, start, w, woff, out, ooff, ostride, pf, n_units), codegen
    elif prefetch_rows:
        @intrinsic
        def hidden_block(typingctx, x, rows, start, w, woff, out, ooff, ostride, pf, xstart, xcount):
            return signature(x, rows, start, w, woff, out, ooff, ostride, pf, xstart, xcount), codegen
    else:
        @intrinsic
        def hidden_block(typingctx, x, rows, start, w, woff, out, ooff, ostride, pf):
            return signature(x, rows, start, w, woff, out, ooff, ostride, pf), codegen

    return hidden_block


def _masked_load(builder, pointer, align, mask, passthru):
    """IR of ``llvm.masked.load``: the lanes of ``*pointer`` where ``mask`` is set, ``passthru`` elsewhere (the
    masked-off lanes are not read, so they may lie past the end of an array)."""
    vty = passthru.type
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty.as_pointer(), ir.IntType(32), mask.type, vty]),
        f"llvm.masked.load.v{LANES}f{_float_bits(vty)}.p0v{LANES}f{_float_bits(vty)}")
    return builder.call(fn, [pointer, ir.IntType(32)(align), mask, passthru])


def _masked_store(builder, value, pointer, align, mask):
    """IR of ``llvm.masked.store``: writes the lanes of ``value`` where ``mask`` is set, nothing elsewhere."""
    vty = value.type
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), ir.IntType(32), mask.type]),
        f"llvm.masked.store.v{LANES}f{_float_bits(vty)}.p0v{LANES}f{_float_bits(vty)}")
    builder.call(fn, [value, pointer, ir.IntType(32)(align), mask])


def _float_bits(vty):
    return 64 if isinstance(vty.element, ir.DoubleType) else 32


@intrinsic
def _output_row(typingctx, h, hoff, w2, woff, n_units, b2, boff, y, yoff):
    """``y[yoff + k] = (Σ_j h[hoff + j] * w2[woff + j*n_out + k]) + b2[boff + k]`` for every ``k < n_out``
    (``n_out = y.shape[-1]``), each sum starting from 0 and taking j in increasing order (the order of the module
    docstring): 16 outputs per vector, a masked one for the last ``n_out % 16``, so that the outputs' sums run
    side by side in the lanes instead of one after the other."""
    if not _same_c_arrays(h, w2, b2, y):
        return None
    sig = types.void(h, hoff, w2, woff, n_units, b2, boff, y, yoff)

    def codegen(context, builder, signature, args):
        tys = signature.args
        ha, wa, ba, ya = _array_args(context, builder, signature, args, (0, 2, 5, 7))
        hoff_, woff_, n_units_, boff_, yoff_ = _intp_args(context, builder, signature, args, (1, 3, 4, 6, 8))
        intp = context.get_value_type(types.intp)
        n_out = cgutils.unpack_tuple(builder, ya.shape, tys[7].ndim)[-1]
        elt = context.get_data_type(tys[0].dtype)
        vty = ir.VectorType(elt, LANES)
        ivty = ir.VectorType(intp, LANES)
        align = tys[0].dtype.bitwidth // 8
        zero = ir.Constant(vty, [ir.Constant(elt, 0.0)] * LANES)
        lanes = ir.Constant(ivty, list(range(LANES)))

        def vptr(arr, off):
            return builder.bitcast(builder.gep(arr.data, [off]), vty.as_pointer())

        with cgutils.for_range_slice(builder, ir.Constant(intp, 0), n_out, ir.Constant(intp, LANES), intp) as (k, _):
            mask = builder.icmp_signed("<", lanes, _splat(builder, builder.sub(n_out, k), ivty))
            acc = cgutils.alloca_once_value(builder, zero)
            with cgutils.for_range(builder, n_units_, intp=intp) as loop:
                j = loop.index
                hj = builder.load(builder.gep(ha.data, [builder.add(hoff_, j)]))
                wv = _masked_load(builder, vptr(wa, builder.add(woff_, builder.add(builder.mul(j, n_out), k))), align,
                                  mask, zero)
                builder.store(builder.fadd(builder.load(acc), builder.fmul(_splat(builder, hj, vty), wv)), acc)
            bv = _masked_load(builder, vptr(ba, builder.add(boff_, k)), align, mask, zero)
            _masked_store(builder, builder.fadd(builder.load(acc), bv), vptr(ya, builder.add(yoff_, k)), align, mask)
        return context.get_dummy_value()

    return sig, codegen


def _prefetch_line(builder, pointer):
    """IR of a read prefetch of the cache line holding ``pointer`` into L2 and beyond, not L1 (``llvm.prefetch``
    with locality 2: ``prefetcht1``). Against locality 3 (``prefetcht0``, L1 included), both loaded from Numba's
    cache (``benchmarks.ab``), on a Zen 4 with a 32 KiB L1d: 1.04-1.11x at depth 9, batch 4096, in three A/Bs,
    1.09x at depth 6, 1.00-1.08x at depth 12, 0.99-1.02x at batch 1, 64 and 256; on a Zen 5 with a 48 KiB L1d:
    1.03x at depth 9, 0.99x at depth 12, 0.94-1.00x at batch 1, 256 and 1024 (docs/engine.md)."""
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                        "llvm.prefetch.p0i8")
    builder.call(fn, [builder.bitcast(pointer, i8p), i32(0), i32(2), i32(1)])


def _prefetch_lines(context, builder, signature, xa, first, stop):
    """IR prefetching (``_prefetch_line``) the cache lines of the 2-D array ``xa`` (the intrinsic's first argument)
    that hold its flat elements ``first`` to ``stop`` (exclusive), one prefetch per line's worth of elements."""
    intp = context.get_value_type(types.intp)
    itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
    step = ir.Constant(intp, max(1, _LINE // itemsize))
    with cgutils.for_range_slice(builder, first, stop, step, intp) as (i, _):
        _prefetch_line(builder, builder.gep(xa.data, [i]))


def _is_c_matrix(x):
    return isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C"


@intrinsic
def _prefetch_span(typingctx, x, start, n_lines):
    """Prefetch (``_prefetch_line``) ``n_lines`` cache lines of the C-contiguous 2-D array ``x`` from its flat element
    ``start`` on (none past the end of ``x``)."""
    if not (_is_c_matrix(x) and isinstance(start, types.Integer) and isinstance(n_lines, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        xa, = _array_args(context, builder, signature, args, (0,))
        first, n = _intp_args(context, builder, signature, args, (1, 2))
        shape = cgutils.unpack_tuple(builder, xa.shape, 2)
        size = builder.mul(shape[0], shape[1])
        itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        stop = builder.add(first, builder.mul(n, ir.Constant(first.type, max(1, _LINE // itemsize))))
        stop = builder.select(builder.icmp_signed("<", stop, size), stop, size)
        _prefetch_lines(context, builder, signature, xa, first, stop)
        return context.get_dummy_value()

    return types.none(x, start, n_lines), codegen


@intrinsic
def _prefetch_row(typingctx, x, row):
    """Prefetch (``_prefetch_line``) every cache line of row ``row`` of the C-contiguous 2-D array ``x``."""
    if not (_is_c_matrix(x) and isinstance(row, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        xa, = _array_args(context, builder, signature, args, (0,))
        start, = _intp_args(context, builder, signature, args, (1,))
        n_in = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
        start = builder.mul(start, n_in)
        _prefetch_lines(context, builder, signature, xa, start, builder.add(start, n_in))
        return context.get_dummy_value()

    return types.none(x, row), codegen


# One block per sample count, 1 to 4: a tile of c samples goes through c // 4 blocks of 4 and one block of the
# remaining c % 4, so that every sample of a tile shares the block's W1 loads (same sums whatever the count).
_hidden_block1 = _make_hidden_block(1)
_hidden_block2 = _make_hidden_block(2)
_hidden_block3 = _make_hidden_block(3)
_hidden_block4 = _make_hidden_block(4)
# The same blocks, prefetching the next tile's input rows as they compute (``prefetch_rows``).
_streaming_block1 = _make_hidden_block(1, prefetch_rows=True)
_streaming_block2 = _make_hidden_block(2, prefetch_rows=True)
_streaming_block3 = _make_hidden_block(3, prefetch_rows=True)
_streaming_block4 = _make_hidden_block(4, prefetch_rows=True)
_masked_block1 = _make_hidden_block(1, masked=True)
_masked_block2 = _make_hidden_block(2, masked=True)
_masked_block3 = _make_hidden_block(3, masked=True)
_masked_block4 = _make_hidden_block(4, masked=True)

#: Leaf widths that the narrow blocks evaluate as one flat run (the divisors of ``LANES`` below it); other widths
#: below 16, and the last ``width % 16`` units of wider leaves, go through masked 16-unit blocks.
NARROW = (1, 2, 4, 8)


def _make_narrow_block(n_samples):
    """Intrinsic ``block(x, rows, start, w1, woff, out, ooff, ostride)``: the w hidden pre-activations (no bias)
    of a leaf w units wide, ``w = w1.shape[-1]`` in ``NARROW`` (other widths write nothing), for the
    ``n_samples`` samples ``rows[start:start + n_samples]``.

    The leaf's W1 (``n_in`` rows of w weights, from ``w1.ravel()[woff:]``) is read as one flat run,
    ``f = i*w + j``, 16 elements at a time. For the first ``R = 16*(n_in // 16)`` rows, element f of the run
    goes to lane ``f % 16`` of accumulator ``(f // 16) % 4`` (four 16-lane accumulators, each lane summing
    ``x[i] * w1[i, j]`` in increasing f); lane L only ever holds unit ``L % w``. Then
    ``out[ooff + t*ostride + j] = tree(lanes L ≡ j (mod w) of (q0 + q1) + (q2 + q3))``, the lanes of a unit
    summed as a pairwise tree in increasing L, plus the rows ``i >= R`` added one by one in increasing i. For
    ``w == 1`` this is exactly ``_dot``. The input values a 16-element run needs (16/w rows, each repeated w
    times) come from one vector load of x and a lane shuffle; one load of W1 serves all the samples. The code
    for each w in ``NARROW`` is generated apart (its shuffles and accumulator order are constants) and chosen by
    a switch on w.
    """

    @intrinsic
    def narrow_block(typingctx, x, rows, start, w1, woff, out, ooff, ostride):
        if not _same_c_arrays(x, w1, out):
            return None
        sig = types.void(x, rows, start, w1, woff, out, ooff, ostride)

        def codegen(context, builder, signature, args):
            intp = context.get_value_type(types.intp)
            w1a, = _array_args(context, builder, signature, args, (3,))
            width = cgutils.unpack_tuple(builder, w1a.shape, signature.args[3].ndim)[-1]
            end = builder.append_basic_block("narrow.end")
            switch = builder.switch(width, end)
            for w in NARROW:
                case = builder.append_basic_block(f"narrow.w{w}")
                switch.add_case(ir.Constant(intp, w), case)
                builder.position_at_end(case)
                _narrow_codegen(context, builder, signature, args, n_samples, w)
                builder.branch(end)
            builder.position_at_end(end)
            return context.get_dummy_value()

        return sig, codegen

    return narrow_block


def _narrow_codegen(context, builder, signature, args, n_samples, w):
    """IR of ``_make_narrow_block``'s block for a leaf exactly ``w`` units wide."""
    tys = signature.args
    xa, ra, wa, oa = _array_args(context, builder, signature, args, (0, 1, 3, 5))
    start_, woff_, ooff_, ostride_ = _intp_args(context, builder, signature, args, (2, 4, 6, 7))
    intp = context.get_value_type(types.intp)

    def const(v):
        return ir.Constant(intp, v)

    rows_per_vec = LANES // w
    masks = [[m * rows_per_vec + lane // w for lane in range(LANES)] for m in range(w)]
    step_rows = LANES * max(1, 4 // w)  # rows per loop step: a whole number of 4-vector blocks of the flat run
    n_in = cgutils.unpack_tuple(builder, xa.shape, tys[0].ndim)[1]
    elt = context.get_data_type(tys[0].dtype)
    vty = ir.VectorType(elt, LANES)
    align = tys[0].dtype.bitwidth // 8
    zero = ir.Constant(vty, [ir.Constant(elt, 0.0)] * LANES)
    i32 = ir.IntType(32)
    undef = ir.Constant(vty, ir.Undefined)
    xbase = []
    for t in range(n_samples):
        row = builder.load(builder.gep(ra.data, [builder.add(start_, const(t))]))
        xbase.append(builder.mul(context.cast(builder, row, tys[1].dtype, types.intp), n_in))
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(4)] for _ in range(n_samples)]

    def vload(arr, off):
        return builder.load(builder.bitcast(builder.gep(arr.data, [off]), vty.as_pointer()), align=align)

    def rows16(i, first_vec):
        """The 16 rows from row i: w vectors of the flat run, the first being run vector first_vec."""
        xv = [vload(xa, builder.add(xbase[t], i)) for t in range(n_samples)]
        for m in range(w):
            wv = vload(wa, builder.add(woff_, builder.add(builder.mul(i, const(w)), const(m * LANES))))
            q = (first_vec + m) % 4
            for t in range(n_samples):
                xm = xv[t] if w == 1 else builder.shuffle_vector(
                    xv[t], undef, ir.Constant(ir.VectorType(i32, LANES), masks[m]))
                acc = accs[t][q]
                builder.store(builder.fadd(builder.load(acc), builder.fmul(xm, wv)), acc)

    n16 = builder.mul(builder.sdiv(n_in, const(LANES)), const(LANES))
    n_step = builder.mul(builder.sdiv(n_in, const(step_rows)), const(step_rows))
    with cgutils.for_range_slice(builder, const(0), n_step, const(step_rows), intp) as (i, _):
        for k in range(step_rows // LANES):
            rows16(builder.add(i, const(k * LANES)), k * w)
    # the whole 16-row groups after the last full step (w = 1, 2 only): accumulators in turn, as in _dot
    for k in range(step_rows // LANES - 1):
        i = builder.add(n_step, const(k * LANES))
        with builder.if_then(builder.icmp_signed("<", i, n16)):
            rows16(i, k * w)
    for t in range(n_samples):
        a = [builder.load(acc) for acc in accs[t]]
        v = builder.fadd(builder.fadd(a[0], a[1]), builder.fadd(a[2], a[3]))
        for j in range(w):
            lanes = [builder.extract_element(v, ir.Constant(i32, lane)) for lane in range(j, LANES, w)]
            while len(lanes) > 1:
                lanes = [builder.fadd(lanes[k], lanes[k + 1]) for k in range(0, len(lanes), 2)]
            total = cgutils.alloca_once_value(builder, lanes[0])
            with cgutils.for_range_slice(builder, n16, n_in, const(1), intp) as (i, _):
                xi = builder.load(builder.gep(xa.data, [builder.add(xbase[t], i)]))
                wij = builder.load(builder.gep(wa.data, [builder.add(woff_, builder.add(
                    builder.mul(i, const(w)), const(j)))]))
                builder.store(builder.fadd(builder.load(total), builder.fmul(xi, wij)), total)
            op = builder.gep(oa.data, [builder.add(ooff_, builder.add(builder.mul(const(t), ostride_), const(j)))])
            builder.store(builder.load(total), op)


_narrow_block1 = _make_narrow_block(1)
_narrow_block2 = _make_narrow_block(2)
_narrow_block3 = _make_narrow_block(3)
_narrow_block4 = _make_narrow_block(4)


def _dots_codegen(context, builder, aa, ba, offs, n_, dtype):
    """IR of ``len(offs)`` dot products ``a[aoff:]·b[boff:]`` over n elements, one per ``(aoff, boff)`` of
    ``offs``, interleaved in one loop (independent dependency chains that the CPU overlaps; loads of the same
    ``b`` address are shared by LLVM). Each product is summed in the fixed order documented on ``_dot``, the
    same whatever the other products are. Returns the scalar values."""
    intp = context.get_value_type(types.intp)
    elt = context.get_data_type(dtype)
    vty = ir.VectorType(elt, LANES)
    align = dtype.bitwidth // 8
    zero = ir.Constant(vty, [ir.Constant(elt, 0.0)] * LANES)
    m = len(offs)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(4)] for _ in range(m)]

    def vload(arr, off):
        return builder.load(builder.bitcast(builder.gep(arr.data, [off]), vty.as_pointer()), align=align)

    def vstep(i, q):
        for t, (aoff, boff) in enumerate(offs):
            av = vload(aa, builder.add(aoff, i))
            bv = vload(ba, builder.add(boff, i))
            builder.store(builder.fadd(builder.load(accs[t][q]), builder.fmul(av, bv)), accs[t][q])

    block = ir.Constant(intp, 4 * LANES)
    n64 = builder.mul(builder.sdiv(n_, block), block)

    def plain_blocks():
        with cgutils.for_range_slice(builder, ir.Constant(intp, 0), n64, block, intp) as (i, _):
            for q in range(4):
                vstep(builder.add(i, ir.Constant(intp, q * LANES)), q)

    if _SHIFTED_LINES and dtype.bitwidth == 32:
        # A row of a that starts `s` elements past a 64-byte boundary (NumPy puts large arrays 16 bytes past one)
        # makes each of its 16-lane loads straddle two cache lines, two L1 accesses each. Instead, load the
        # row's whole lines (5 per 64-element block) and take each vector from two neighbouring lines with a
        # permute: the same values in the same lanes, so the same bits. Every line read holds an element of the
        # row (no read can touch a page the row does not). When a row starts on a line, all take the plain loads.
        i32 = ir.IntType(32)
        ivty = ir.VectorType(i32, LANES)
        addrs = [builder.ptrtoint(builder.gep(aa.data, [aoff]), intp) for aoff, _ in offs]
        shifts = [builder.ashr(builder.and_(a, ir.Constant(intp, _LINE - 1)), ir.Constant(intp, 2)) for a in addrs]
        # every row shifted (a row on a line boundary could have its last line wholly past its end) and made of
        # whole floats
        use_lines = ir.Constant(ir.IntType(1), 1)
        for v, a in zip(shifts, addrs):
            use_lines = builder.and_(use_lines, builder.icmp_signed("!=", v, ir.Constant(intp, 0)))
            use_lines = builder.and_(use_lines, builder.icmp_signed(
                "==", builder.and_(a, ir.Constant(intp, 3)), ir.Constant(intp, 0)))
        permute = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, ivty, vty]),
                                                 "llvm.x86.avx512.vpermi2var.ps.512")
        with builder.if_else(use_lines) as (lines_path, plain_path):
            with lines_path:
                # lane k of the vector at element e of a row shifted by s: element k + s of the line pair at e - s
                starts = [builder.sub(aoff, v) for (aoff, _), v in zip(offs, shifts)]
                picks = []
                for v in shifts:
                    splat = builder.insert_element(ir.Constant(ivty, ir.Undefined), builder.trunc(v, i32),
                                                   ir.Constant(i32, 0))
                    splat = builder.shuffle_vector(splat, ir.Constant(ivty, ir.Undefined),
                                                   ir.Constant(ivty, [0] * LANES))
                    picks.append(builder.add(splat, ir.Constant(ivty, list(range(LANES)))))

                def line(start, off):
                    return builder.load(builder.bitcast(builder.gep(aa.data, [builder.add(start, off)]),
                                                        vty.as_pointer()), align=_LINE)

                with cgutils.for_range_slice(builder, ir.Constant(intp, 0), n64, block, intp) as (i, _):
                    lines = [[line(start, builder.add(i, ir.Constant(intp, k * LANES))) for k in range(5)]
                             for start in starts]
                    for q in range(4):
                        iq = builder.add(i, ir.Constant(intp, q * LANES))
                        for t, (_, boff) in enumerate(offs):
                            av = builder.call(permute, [lines[t][q], picks[t], lines[t][q + 1]])
                            bv = vload(ba, builder.add(boff, iq))
                            builder.store(builder.fadd(builder.load(accs[t][q]), builder.fmul(av, bv)), accs[t][q])
            with plain_path:
                plain_blocks()
    else:
        plain_blocks()
    # the last full 16-lane vectors of a partial block go to accumulators 0, 1, 2 in turn
    lanes_c = ir.Constant(intp, LANES)
    n16 = builder.mul(builder.sdiv(n_, lanes_c), lanes_c)
    for q in range(3):
        off = builder.add(n64, ir.Constant(intp, q * LANES))
        with builder.if_then(builder.icmp_signed("<", off, n16)):
            vstep(off, q)
    totals = []
    for t in range(m):
        q = [builder.load(acc) for acc in accs[t]]
        v = builder.fadd(builder.fadd(q[0], q[1]), builder.fadd(q[2], q[3]))
        lanes = [builder.extract_element(v, ir.Constant(ir.IntType(32), k)) for k in range(LANES)]
        while len(lanes) > 1:
            lanes = [builder.fadd(lanes[k], lanes[k + 1]) for k in range(0, len(lanes), 2)]
        totals.append(cgutils.alloca_once_value(builder, lanes[0]))
    with cgutils.for_range_slice(builder, n16, n_, ir.Constant(intp, 1), intp) as (i, _):
        for t, (aoff, boff) in enumerate(offs):
            x = builder.load(builder.gep(aa.data, [builder.add(aoff, i)]))
            y = builder.load(builder.gep(ba.data, [builder.add(boff, i)]))
            builder.store(builder.fadd(builder.load(totals[t]), builder.fmul(x, y)), totals[t])
    return [builder.load(total) for total in totals]


def _dots_intrinsic_codegen(m):
    """Codegen of an intrinsic computing ``m`` ``_dot`` products in one interleaved loop (same bits as ``m``
    calls), arguments ``(a, aoff_0, boff_0, ..., aoff_{m-1}, boff_{m-1}, b, n)``."""

    def codegen(context, builder, signature, args):
        tys = signature.args
        aa, ba = _array_args(context, builder, signature, args, (0, 2 * m + 1))
        vals = _intp_args(context, builder, signature, args, list(range(1, 2 * m + 1)) + [2 * m + 2])
        offs = [(vals[2 * t], vals[2 * t + 1]) for t in range(m)]
        out = _dots_codegen(context, builder, aa, ba, offs, vals[-1], tys[0].dtype)
        return context.make_tuple(builder, signature.return_type, out)

    return codegen


@intrinsic
def _dot_pair(typingctx, a, aoff0, boff0, aoff1, boff1, b, n):
    """Two ``_dot`` products on different rows of b, interleaved (two chains that overlap):
    ``(a[aoff0:]·b[boff0:], a[aoff1:]·b[boff1:])`` over n elements, the bits of two ``_dot`` calls."""
    if not _same_c_arrays(a, b):
        return None
    return types.UniTuple(a.dtype, 2)(a, aoff0, boff0, aoff1, boff1, b, n), _dots_intrinsic_codegen(2)


@intrinsic
def _dot(typingctx, a, aoff, b, boff, n):
    """``Σ_i a[aoff + i] * b[boff + i]`` over i < n, in a fixed order: lane k of four 16-lane accumulators
    sums the i ≡ k (mod 16) of successive 64-element blocks, and the up to three full 16-element vectors that
    follow the last whole block are added to accumulators 0, 1, 2; the accumulators combine as
    (q0+q1)+(q2+q3), the lanes as a pairwise tree, and the remaining n mod 16 products are added one by one
    at the end."""
    if not _same_c_arrays(a, b):
        return None
    sig = a.dtype(a, aoff, b, boff, n)

    def codegen(context, builder, signature, args):
        tys = signature.args
        aa, ba = _array_args(context, builder, signature, args, (0, 2))
        aoff_, boff_, n_ = _intp_args(context, builder, signature, args, (1, 3, 4))
        return _dots_codegen(context, builder, aa, ba, [(aoff_, boff_)], n_, tys[0].dtype)[0]

    return sig, codegen


@njit(cache=True, nogil=True)
def _activate(z, code):
    """One activation value; ``code`` from ``ACTIVATION_CODES``. ReLU keeps NaN (as ``np.maximum``)."""
    if code == 1:
        return z if not z < 0 else z * 0
    if code == 0:
        return z
    if code == 2:
        return z * (0.5 * (1.0 + math.erf(z * _INV_SQRT2)))
    if code == 3:
        return math.tanh(z)
    # sigmoid, without overflow: exp only ever sees -|z|
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(cache=True, nogil=True)
def _route_one(x, s, node_weights, node_biases, depth):
    """Leaf id reached by sample ``x[s]``: ``depth`` dot products down the heap-ordered tree.

    The input row is prefetched whole before the first dot product: its cache misses then overlap, instead of
    coming a few at a time as the dot product's loads reach them (the row is read from memory in a new batch)."""
    n_in = x.shape[1]
    _prefetch_row(x, s)
    node = 0
    for _ in range(depth):
        logit = _dot(x, s * n_in, node_weights, node * n_in, n_in) + node_biases[node]
        node = 2 * node + 1 + (1 if logit >= 0 else 0)  # NaN compares false: left
    return node - ((1 << depth) - 1)


@njit(cache=True, nogil=True)
def _route_pair(x, s0, s1, node_weights, node_biases, depth, leaves, next_row=-1):
    """``_route_one`` for samples s0 and s1 walked in lockstep (their memory accesses overlap).

    With ``next_row >= 0``, rows ``next_row`` and ``next_row + 1`` of ``x`` (the next pair's, contiguous) are
    prefetched a slice per level, so that they stream in while this pair computes."""
    n_in = x.shape[1]
    _prefetch_row(x, s0)
    _prefetch_row(x, s1)
    per_line = max(1, _LINE // x.itemsize)
    n_lines = (2 * n_in + per_line - 1) // per_line
    node0 = 0
    node1 = 0
    for level in range(depth):
        if next_row >= 0:
            first = level * n_lines // depth
            _prefetch_span(x, next_row * n_in + first * per_line, (level + 1) * n_lines // depth - first)
        z0, z1 = _dot_pair(x, s0 * n_in, node0 * n_in, s1 * n_in, node1 * n_in, node_weights, n_in)
        node0 = 2 * node0 + 1 + (1 if z0 + node_biases[node0] >= 0 else 0)
        node1 = 2 * node1 + 1 + (1 if z1 + node_biases[node1] >= 0 else 0)
    leaves[s0] = node0 - ((1 << depth) - 1)
    leaves[s1] = node1 - ((1 << depth) - 1)


@njit(cache=True, nogil=True)
def _streamed_rows(count, width, next_count):
    """How many of the next tile's ``next_count`` input rows the 16-unit blocks of a tile of ``count`` samples of a
    leaf ``width`` units wide prefetch as they compute (``_eval_tile``): four per block of the first 16-unit
    column, in tiles of at least 2 samples (a single sample computes too briefly to hide them), none in leaves
    that go through the narrow or masked blocks only or, in tiles of fewer than 4 samples of ``WIDE`` units or
    more, through the long-row loops."""
    long_rows = width >= WIDE and count < 4
    if count < 2 or width < LANES or long_rows:  # (the narrow widths 1, 2, 4 and 8 are all below LANES)
        return 0
    return min(next_count, 4 * ((count + 3) // 4))


@njit(cache=True, nogil=True)
def _eval_tile(x, order, start, stop, leaf, w1s, b1s, w2s, b2s, act, part, hid, out, next_leaf=-1, next_start=0,
               streamed=0):
    """Outputs of ``leaf`` for the samples ``order[start:stop]`` (at most ``TILE``), written to their rows of ``out``.

    ``hid`` (TILE, leaf_width) and, for leaves of ``WIDE`` units or more, ``part`` (4, TILE, leaf_width) are
    per-thread scratch; nothing outside the tile's own output rows is written. Leaves of 1, 2, 4 or 8 units go
    through the narrow blocks (the whole leaf at once), other leaves through the 16-unit blocks (masked for the
    last ``width % 16`` units), except that a tile of fewer than 4 samples of a leaf of ``WIDE`` units or more
    goes through loops over whole W1 rows, long enough for Numba's own vectorizer (the blocks read W1 in 64-byte
    pieces, one 16-unit column at a time: fine when 4 samples share each piece, slow for one sample); all sum in
    the order of the module docstring. With ``next_leaf >= 0``, the 16-unit
    blocks' first pass over W1 prefetches the same rows of W1 of ``next_leaf``. The input rows
    ``order[next_start:next_start + streamed]`` (the first of the next tile's, as many as ``_streamed_rows``
    gives) are prefetched by the blocks of the first 16-unit column, four rows per block (the caller prefetches
    the others).
    """
    n_in = x.shape[1]
    width = w1s.shape[2]
    n_out = w2s.shape[2]
    count = stop - start
    if width == 1 or width == 2 or width == 4 or width == 8:  # NARROW: a whole leaf per block
        leaf_off = leaf * n_in * width
        t = 0
        while t + 4 <= count:
            _narrow_block4(x, order, start + t, w1s, leaf_off, hid, t * width, width)
            t += 4
        rest = count - t
        if rest == 3:
            _narrow_block3(x, order, start + t, w1s, leaf_off, hid, t * width, width)
        elif rest == 2:
            _narrow_block2(x, order, start + t, w1s, leaf_off, hid, t * width, width)
        elif rest == 1:
            _narrow_block1(x, order, start + t, w1s, leaf_off, hid, t * width, width)
    elif width < WIDE or count >= 4:
        w16 = width - width % LANES
        leaf_off = leaf * n_in * width
        for jb in range(0, w16, LANES):
            pf = next_leaf * n_in * width + jb if next_leaf >= 0 else -1
            if jb > 0:
                streamed = 0  # the first column's blocks prefetched them
            t = 0
            while t + 4 <= count:
                if t < streamed:
                    _streaming_block4(x, order, start + t, w1s, leaf_off + jb, hid, t * width + jb, width, pf,
                                      next_start + t, min(4, streamed - t))
                else:
                    _hidden_block4(x, order, start + t, w1s, leaf_off + jb, hid, t * width + jb, width, pf)
                pf = -1
                t += 4
            rest = count - t
            if t < streamed:
                xs = next_start + t
                xc = min(4, streamed - t)
                if rest == 3:
                    _streaming_block3(x, order, start + t, w1s, leaf_off + jb, hid, t * width + jb, width, pf, xs, xc)
                elif rest == 2:
                    _streaming_block2(x, order, start + t, w1s, leaf_off + jb, hid, t * width + jb, width, pf, xs, xc)
                elif rest == 1:
                    _streaming_block1(x, order, start + t, w1s, leaf_off + jb, hid, t * width + jb, width, pf, xs, xc)
            elif rest == 3:
                _hidden_block3(x, order, start + t, w1s, leaf_off + jb, hid, t * width + jb, width, pf)
            elif rest == 2:
                _hidden_block2(x, order, start + t, w1s, leaf_off + jb, hid, t * width + jb, width, pf)
            elif rest == 1:
                _hidden_block1(x, order, start + t, w1s, leaf_off + jb, hid, t * width + jb, width, pf)
        if w16 < width:  # the last width % 16 units: the same sums, through masked loads and stores
            t = 0
            while t + 4 <= count:
                _masked_block4(x, order, start + t, w1s, leaf_off + w16, hid, t * width + w16, width, -1, width - w16)
                t += 4
            rest = count - t
            if rest == 3:
                _masked_block3(x, order, start + t, w1s, leaf_off + w16, hid, t * width + w16, width, -1, width - w16)
            elif rest == 2:
                _masked_block2(x, order, start + t, w1s, leaf_off + w16, hid, t * width + w16, width, -1, width - w16)
            elif rest == 1:
                _masked_block1(x, order, start + t, w1s, leaf_off + w16, hid, t * width + w16, width, -1, width - w16)
    else:
        for r in range(4):
            for t in range(count):
                pr = part[r, t]
                for j in range(width):
                    pr[j] = 0
        for i in range(n_in):
            wr = w1s[leaf, i]
            r = i % 4
            for t in range(count):
                xv = x[order[start + t], i]
                pr = part[r, t]
                for j in range(width):
                    pr[j] += xv * wr[j]
        for t in range(count):
            p0 = part[0, t]
            p1 = part[1, t]
            p2 = part[2, t]
            p3 = part[3, t]
            h = hid[t]
            for j in range(width):
                h[j] = (p0[j] + p1[j]) + (p2[j] + p3[j])
    for t in range(count):
        h = hid[t]
        if act == 1:  # ReLU (the default) without the call's branches, so that LLVM can vectorize it
            for j in range(width):
                z = h[j] + b1s[leaf, j]
                h[j] = z if not z < 0 else z * 0
        else:
            for j in range(width):
                h[j] = _activate(h[j] + b1s[leaf, j], act)
        _output_row(hid, t * width, w2s, leaf * width * n_out, width, b2s, leaf * n_out, out, order[start + t] * n_out)


@njit(cache=True, nogil=True)
def _scratch(dtype_like, tile, width):
    """Per-thread scratch of ``_eval_tile`` for tiles of up to ``tile`` samples."""
    if width >= WIDE:
        part = np.empty((4, tile, width), dtype=dtype_like.dtype)
    else:
        part = np.empty((4, 1, 1), dtype=dtype_like.dtype)
    hid = np.empty((tile, width), dtype=dtype_like.dtype)
    return part, hid


# --- routing ----------------------------------------------------------------------------------


#: Routing walks the first ``DEEP_LEVEL`` levels sample pair by sample pair (``_route_pair``); the levels below
#: it (depth 10 and more), level by level over blocks of ``ROUTE_BLOCK`` samples (``_route_block``). Level 9
#: alone has 512 node rows (1.6 MB at 784 inputs) and each deeper one as many again as all above it, so that a
#: batch visits each of their rows only a few times and, after a leaf evaluation has streamed through the
#: caches, finds them in memory.
DEEP_LEVEL = 9
ROUTE_BLOCK = 16
ROUTE_MIN_BLOCKS = 16


@njit(cache=True, nogil=True)
def _route_block(x, first, stop, node_weights, node_biases, depth, leaves, next_row):
    """Leaves of the samples ``first`` to ``stop - 1`` (an even number of them), the bits of ``_route_one``.

    The first ``DEEP_LEVEL`` levels: each pair walks them in lockstep (``_route_pair``; the last pair prefetches
    the rows of the pair at ``next_row``, the next block's first, if >= 0). The levels below: one level at a
    time for every pair of the block, the heap nodes kept in ``leaves``; since every pair's node at the level is
    known before the level starts, each pair prefetches the next pair's two node rows whole while it computes,
    and those rows stream in from memory instead of being asked for one level at a time."""
    n_in = x.shape[1]
    top = min(depth, DEEP_LEVEL)
    for s in range(first, stop, 2):
        _route_pair(x, s, s + 1, node_weights, node_biases, top, leaves, s + 2 if s + 3 < stop else next_row)
    if depth == top:
        return
    per_line = max(1, _LINE // x.itemsize)
    n_lines = (n_in + per_line - 1) // per_line + 1  # a row that starts off a line spans one more
    for s in range(first, stop):
        leaves[s] += (1 << top) - 1  # the heap node reached at level `top`
    for _ in range(top, depth):
        for s in range(first, stop, 2):
            if s + 3 < stop:
                _prefetch_span(node_weights, leaves[s + 2] * n_in, n_lines)
                _prefetch_span(node_weights, leaves[s + 3] * n_in, n_lines)
            node0 = leaves[s]
            node1 = leaves[s + 1]
            z0, z1 = _dot_pair(x, s * n_in, node0 * n_in, (s + 1) * n_in, node1 * n_in, node_weights, n_in)
            leaves[s] = 2 * node0 + 1 + (1 if z0 + node_biases[node0] >= 0 else 0)
            leaves[s + 1] = 2 * node1 + 1 + (1 if z1 + node_biases[node1] >= 0 else 0)
    for s in range(first, stop):
        leaves[s] -= (1 << depth) - 1


@njit(cache=True, nogil=True)
def _block_bounds(n_pairs, n_blocks, b):
    """First and stop sample of block ``b`` of ``n_blocks`` that share ``n_pairs`` pairs as evenly as they can."""
    return 2 * (b * n_pairs // n_blocks), 2 * ((b + 1) * n_pairs // n_blocks)


@njit(cache=True, nogil=True)
def _route_serial(x, node_weights, node_biases, depth, leaves):
    n = x.shape[0]
    n_pairs = n // 2
    n_blocks = max(1, (n_pairs * 2 + ROUTE_BLOCK - 1) // ROUTE_BLOCK)
    for b in range(n_blocks):
        first, stop = _block_bounds(n_pairs, n_blocks, b)
        _route_block(x, first, stop, node_weights, node_biases, depth, leaves, stop if stop + 1 < n else -1)
    if n % 2:
        leaves[n - 1] = _route_one(x, n - 1, node_weights, node_biases, depth)


@njit(cache=True, nogil=True, parallel=True)
def _route_parallel(x, node_weights, node_biases, depth, leaves):
    n = x.shape[0]
    n_pairs = n // 2
    # blocks of about ROUTE_BLOCK samples, and at least ROUTE_MIN_BLOCKS (for the threads to share a small batch);
    # each thread takes a contiguous run of them
    n_blocks = min(n_pairs, max(ROUTE_MIN_BLOCKS, (n_pairs * 2 + ROUTE_BLOCK - 1) // ROUTE_BLOCK))
    for b in prange(n_blocks):
        first, stop = _block_bounds(n_pairs, n_blocks, b)
        _route_block(x, first, stop, node_weights, node_biases, depth, leaves, stop if stop + 1 < n else -1)
    if n % 2:
        leaves[n - 1] = _route_one(x, n - 1, node_weights, node_biases, depth)


@njit(cache=True, nogil=True)
def _route_flipped(x, node_weights, node_biases, depth, flips, leaves):
    """Serial routing with the logits of ``_route_one``, each decision swapped where ``flips[s, node]`` (the
    training forward's region leak)."""
    n_in = x.shape[1]
    for s in range(x.shape[0]):
        node = 0
        for _ in range(depth):
            logit = _dot(x, s * n_in, node_weights, node * n_in, n_in) + node_biases[node]
            right = logit >= 0  # NaN compares false: left
            node = 2 * node + 1 + (1 if right != flips[s, node] else 0)
        leaves[s] = node - ((1 << depth) - 1)


@njit(cache=True, nogil=True)
def _leaf_order(leaves, n_leaves):
    """Samples sorted by leaf, stably (a counting sort: O(n + n_leaves)); same result as a stable argsort."""
    n = leaves.shape[0]
    count = np.zeros(n_leaves + 1, dtype=np.int64)
    for s in range(n):
        count[leaves[s] + 1] += 1
    for leaf in range(n_leaves):
        count[leaf + 1] += count[leaf]
    order = np.empty(n, dtype=np.int64)
    for s in range(n):
        leaf = leaves[s]
        order[count[leaf]] = s
        count[leaf] += 1
    return order


# --- per-sample prediction (route, then the sample's own leaf) ---------------------------------


@njit(cache=True, nogil=True)
def _predict_serial(x, node_weights, node_biases, w1s, b1s, w2s, b2s, depth, act, out):
    """One sample at a time, on the calling thread: the fast path for small batches."""
    width = w1s.shape[2]
    part, hid = _scratch(x, 1, width)
    index = np.empty(1, dtype=np.int64)
    for s in range(x.shape[0]):
        leaf = _route_one(x, s, node_weights, node_biases, depth)
        index[0] = s
        _eval_tile(x, index, 0, 1, leaf, w1s, b1s, w2s, b2s, act, part, hid, out)


@njit(cache=True, nogil=True, parallel=True)
def _predict_parallel(x, node_weights, node_biases, w1s, b1s, w2s, b2s, depth, act, out, n_chunks):
    """Samples split into ``n_chunks`` contiguous chunks run in parallel; each chunk owns its output rows."""
    n = x.shape[0]
    width = w1s.shape[2]
    for c in prange(n_chunks):
        lo = c * n // n_chunks
        hi = (c + 1) * n // n_chunks
        part, hid = _scratch(x, 1, width)
        index = np.empty(1, dtype=np.int64)
        for s in range(lo, hi):
            leaf = _route_one(x, s, node_weights, node_biases, depth)
            index[0] = s
            _eval_tile(x, index, 0, 1, leaf, w1s, b1s, w2s, b2s, act, part, hid, out)


# --- evaluation of given leaves (grouped: samples sorted by leaf, tiles of one leaf) -----------


@njit(cache=True, nogil=True)
def _make_tiles(leaves, order, tile):
    """Split the leaf-sorted sample order into tiles of at most ``tile`` samples of one leaf.

    Returns ``starts`` (n_tiles + 1,) into ``order`` and ``tile_leaf`` (n_tiles,).
    """
    n = order.shape[0]
    starts = np.empty(n + 1, dtype=np.int64)
    tile_leaf = np.empty(n, dtype=np.int64)
    n_tiles = 0
    s = 0
    while s < n:
        leaf = leaves[order[s]]
        e = s + 1
        while e < n and e - s < tile and leaves[order[e]] == leaf:
            e += 1
        starts[n_tiles] = s
        tile_leaf[n_tiles] = leaf
        n_tiles += 1
        s = e
    starts[n_tiles] = n
    return starts[:n_tiles + 1].copy(), tile_leaf[:n_tiles].copy()


@njit(cache=True, nogil=True)
def _eval_tile_run(x, order, starts, tile_leaf, lo, hi, w1s, b1s, w2s, b2s, act, part, hid, out):
    """Tiles ``lo:hi`` in turn, with the memory each is about to need streaming in while the one before it
    computes: the input rows of the next tile are prefetched as a tile computes (by its blocks, a line at a
    time, in tiles of at least 2 samples; in one go when the tile starts otherwise), and the first tile of each
    leaf prefetches the W1 of the next leaf as it reads its own (``_eval_tile``'s ``next_leaf``) when a leaf's
    W1 is at most ``PREFETCH_LEAF_BYTES``."""
    prefetch_leaves = w1s.shape[1] * w1s.shape[2] * w1s.itemsize <= PREFETCH_LEAF_BYTES
    width = w1s.shape[2]
    for q in range(lo, hi):
        leaf = tile_leaf[q]
        next_start = 0
        streamed = 0
        if q + 1 < hi:
            next_start = starts[q + 1]
            streamed = _streamed_rows(starts[q + 1] - starts[q], width, starts[q + 2] - next_start)
            for k in range(next_start + streamed, starts[q + 2]):
                _prefetch_row(x, order[k])
        next_leaf = -1
        if prefetch_leaves and (q == lo or tile_leaf[q - 1] != leaf):
            r = q + 1
            while r < hi and tile_leaf[r] == leaf:
                r += 1
            if r < hi:
                next_leaf = tile_leaf[r]
        _eval_tile(x, order, starts[q], starts[q + 1], leaf, w1s, b1s, w2s, b2s, act, part, hid, out, next_leaf,
                   next_start, streamed)


@njit(cache=True, nogil=True)
def _eval_tiles_serial(x, order, starts, tile_leaf, w1s, b1s, w2s, b2s, act, out):
    width = w1s.shape[2]
    part, hid = _scratch(x, TILE, width)
    _eval_tile_run(x, order, starts, tile_leaf, 0, tile_leaf.shape[0], w1s, b1s, w2s, b2s, act, part, hid, out)


@njit(cache=True, nogil=True, parallel=True)
def _eval_tiles_parallel(x, order, starts, tile_leaf, w1s, b1s, w2s, b2s, act, out, n_chunks):
    """Tiles split into ``n_chunks`` contiguous runs; every sample is in exactly one tile, so no two
    threads write the same output row."""
    n_tiles = tile_leaf.shape[0]
    width = w1s.shape[2]
    for c in prange(n_chunks):
        lo = c * n_tiles // n_chunks
        hi = (c + 1) * n_tiles // n_chunks
        part, hid = _scratch(x, TILE, width)
        _eval_tile_run(x, order, starts, tile_leaf, lo, hi, w1s, b1s, w2s, b2s, act, part, hid, out)


#: Above this many leaves (and 4 per sample), samples are sorted by leaf with a merge sort instead of the counting
#: sort, whose O(n_leaves) pass would then cost more than the batch's own work.
COUNTING_SORT_LEAVES = 1 << 16


@njit(cache=True, nogil=True)
def _eval_grouped(x, leaves, w1s, b1s, w2s, b2s, act, out, threads):
    """The grouped evaluation as one compiled call: samples sorted by leaf (stably), split into tiles of one leaf
    (``_make_tiles``), the tiles evaluated over ``threads`` Numba threads (on the calling thread for 1). Compiled
    as one function so that the steps between the parallel launches cost no Python-level calls (a few
    microseconds: 1-10% of a batch-256 call)."""
    n_leaves = w1s.shape[0]
    if n_leaves <= max(4 * leaves.shape[0], COUNTING_SORT_LEAVES):  # O(n + leaves): 10x faster than a sort
        order = _leaf_order(leaves, n_leaves)
    else:
        order = np.argsort(leaves, kind="mergesort")  # stable
    starts, tile_leaf = _make_tiles(leaves, order, TILE)
    n_tiles = tile_leaf.shape[0]
    if threads <= 1:
        _eval_tiles_serial(x, order, starts, tile_leaf, w1s, b1s, w2s, b2s, act, out)
    else:
        # a few contiguous runs of tiles per thread, for balance (as engine._chunks)
        _eval_tiles_parallel(x, order, starts, tile_leaf, w1s, b1s, w2s, b2s, act, out,
                             max(1, min(n_tiles, 4 * threads)))


@njit(cache=True, nogil=True)
def _predict_grouped(x, node_weights, node_biases, w1s, b1s, w2s, b2s, depth, act, out, threads):
    """Route every sample (in parallel for ``threads`` > 1), then ``_eval_grouped``: the "grouped" path as one
    compiled call."""
    leaves = np.zeros(x.shape[0], dtype=np.int64)
    if depth > 0:
        if threads > 1:
            _route_parallel(x, node_weights, node_biases, depth, leaves)
        else:
            _route_serial(x, node_weights, node_biases, depth, leaves)
    _eval_grouped(x, leaves, w1s, b1s, w2s, b2s, act, out, threads)


@njit(cache=True, nogil=True)
def _eval_leaves_serial(x, leaves, w1s, b1s, w2s, b2s, act, out):
    """Per sample, in input order, the output of its given leaf (no sorting): for small batches."""
    width = w1s.shape[2]
    part, hid = _scratch(x, 1, width)
    index = np.empty(1, dtype=np.int64)
    for s in range(x.shape[0]):
        index[0] = s
        _eval_tile(x, index, 0, 1, leaves[s], w1s, b1s, w2s, b2s, act, part, hid, out)


