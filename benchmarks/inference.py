"""Hard inference of an FFF (fffcpu's Numba engine) against the dense FF of the same training width.

Side by side, in one process, float32, the same thread count everywhere (Numba, BLAS, torch), medians over repeats
after a warm-up call, and a pool of distinct input batches cycled through so that successive calls do not find the
same leaves' weights hot in cache:

* ``fffcpu``: ``FFF.predict`` (the engine picks serial / parallel / grouped by batch size);
* dense NumPy: ``relu(x W1 + b1) W2 + b2`` with ``np.matmul`` into preallocated buffers and in-place bias and
  activation (the strongest plain-NumPy baseline), width = the FFF's training width 2**depth · leaf_width;
* dense torch (``torch.addmm`` + ``relu_`` under ``inference_mode``) and the PyTorch package ``fastfeedforward``
  0.2.1 ``FFF.eval_forward`` with the same weights, when torch is installed.

Before timing, every method's output is checked against a float64 NumPy reference on the same input (for the
torch package: its eval output plus the b2 bias it forgets; routes compared where |logit| > 1e-4).

Run as part of ``python -m benchmarks`` or alone with ``python -m benchmarks.inference [--quick]``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from threadpoolctl import threadpool_limits

import fffcpu
from fffcpu import FFF, engine
from fffcpu.kernels import fff as kernels

from .common import (
    SETTLE_S,
    THREADS,
    Section,
    best_time,
    fmt_bytes,
    fmt_rate,
    fmt_x,
    have_torch,
    interleaved_medians,
    median_time,
    peak_memory,
    section_main,
    settle,
    table,
)

INPUT_WIDTH, OUTPUT_WIDTH = 784, 10
WIDTHS, DEPTHS, BATCHES = (128, 1024, 8192, 65536), (3, 6, 9, 12), (1, 256, 4096)
QUICK_WIDTHS, QUICK_DEPTHS, QUICK_BATCHES = (128, 1024), (3, 6), (1, 64)
POOL_BYTES = 64 << 20  # distinct inputs cycled through per grid point

TARGETS = [
    # (description, predicate on a row, quantity, threshold)
    ("depth 12, leaf 16 (65536), batch 1: ≥ 1000x dense NumPy", dict(width=65536, depth=12, batch=1), "speedup", 1000),
    ("depth 12, leaf 16 (65536), batch 4096: ≥ 500x dense NumPy", dict(width=65536, depth=12, batch=4096), "speedup", 500),
    ("depth 9, leaf 16 (8192), batch 4096: ≥ 150x dense NumPy", dict(width=8192, depth=9, batch=4096), "speedup", 150),
]


def grid(widths, depths):
    """(training width, depth, leaf width) with leaf width = width / 2**depth a whole number >= 1."""
    return [(w, d, w >> d) for w in widths for d in depths if (w >> d) >= 1 and (w >> d) << d == w]


def reference64(params, depth, x):
    """float64 hard inference: (leaves, outputs, smallest |logit| on each path), vectorized NumPy."""
    x = x.astype(np.float64)
    nw = params["node_weights"]
    node = np.zeros(len(x), dtype=np.int64)
    margin = np.full(len(x), np.inf)
    for _ in range(depth):
        logit = np.einsum("bi,bi->b", x, nw[node].astype(np.float64)) + params["node_biases"][node].astype(np.float64)
        margin = np.minimum(margin, np.abs(logit))
        node = 2 * node + 1 + (logit >= 0)
    leaves = node - ((1 << depth) - 1)
    y = np.empty((len(x), params["w2s"].shape[2]))
    for b, leaf in enumerate(leaves):
        h = np.maximum(x[b] @ params["w1s"][leaf].astype(np.float64) + params["b1s"][leaf], 0)
        y[b] = h @ params["w2s"][leaf].astype(np.float64) + params["b2s"][leaf]
    return leaves, y, margin


class DenseNumPy:
    """``relu(x W1 + b1) W2 + b2`` into preallocated buffers (the strongest NumPy baseline)."""

    def __init__(self, width, rng):
        bound_in, bound_h = 1 / math.sqrt(INPUT_WIDTH), 1 / math.sqrt(width)
        u = lambda shape, b: (rng.random(shape, dtype=np.float32) * 2 - 1) * np.float32(b)  # noqa: E731
        self.w1, self.b1 = u((INPUT_WIDTH, width), bound_in), u((width,), bound_in)
        self.w2, self.b2 = u((width, OUTPUT_WIDTH), bound_h), u((OUTPUT_WIDTH,), bound_h)
        self.buffers = {}

    def __call__(self, x):
        n = len(x)
        if n not in self.buffers:
            self.buffers = {n: (np.empty((n, self.w1.shape[1]), np.float32), np.empty((n, OUTPUT_WIDTH), np.float32))}
        h, y = self.buffers[n]
        np.matmul(x, self.w1, out=h)
        h += self.b1
        np.maximum(h, 0, out=h)
        np.matmul(h, self.w2, out=y)
        y += self.b2
        return y

    def reference64(self, x):
        x = x.astype(np.float64)
        return np.maximum(x @ self.w1.astype(np.float64) + self.b1, 0) @ self.w2.astype(np.float64) + self.b2


def _torch_methods(model, dense, threads):
    import fastfeedforward
    import torch

    torch.set_num_threads(threads)
    pkg = fastfeedforward.FFF(INPUT_WIDTH, model.leaf_width, OUTPUT_WIDTH, model.depth)
    with torch.no_grad():
        for name, value in model.params.items():
            getattr(pkg, name).copy_(torch.from_numpy(value).reshape(getattr(pkg, name).shape))
    pkg.eval()
    w1, b1, w2, b2 = (torch.from_numpy(a) for a in (dense.w1, dense.b1, dense.w2, dense.b2))

    def torch_dense(x):
        with torch.inference_mode():
            return torch.addmm(b2, torch.addmm(b1, torch.from_numpy(x), w1).relu_(), w2).numpy()

    def torch_pkg(x):
        with torch.inference_mode():
            return pkg.eval_forward(torch.from_numpy(x)).numpy()

    return torch_dense, torch_pkg


def _pool(rng, batch, quick):
    count = max(2, min(64 if not quick else 4, POOL_BYTES // (batch * INPUT_WIDTH * 4)))
    return [rng.standard_normal((batch, INPUT_WIDTH), dtype=np.float32) for _ in range(count)]


def measure_point(width, depth, leaf, batches, *, threads, quick, use_torch, rng):
    model = FFF(INPUT_WIDTH, leaf, OUTPUT_WIDTH, depth, dtype="float32", seed=0)
    dense = DenseNumPy(width, rng)
    torch_dense = torch_pkg = None
    if use_torch:
        torch_dense, torch_pkg = _torch_methods(model, dense, threads)
    rows, checks = [], {}
    budget = 0.3 if quick else 1.0
    for batch in batches:
        pool = _pool(rng, batch, quick)
        P = len(pool)
        # --- correctness, before any timing ---------------------------------------------------------
        xc = pool[0][:256]
        leaves, y64, margin = reference64(model.params, depth, xc)
        clear = margin > 1e-4
        ok = {"fffcpu": bool(np.allclose(model.predict(xc, n_jobs=threads)[clear], y64[clear], rtol=1e-3, atol=1e-4)),
              "route": bool(np.array_equal(model.route(xc, n_jobs=threads)[clear], leaves[clear])),
              "dense NumPy": bool(np.allclose(dense(xc), dense.reference64(xc), rtol=1e-3, atol=1e-4))}
        if use_torch:
            ok["torch dense"] = bool(np.allclose(torch_dense(xc), dense.reference64(xc), rtol=1e-3, atol=1e-4))
            pkg_out = torch_pkg(xc) + model.params["b2s"][leaves]  # eval_forward forgets b2
            ok["torch package (+b2)"] = bool(np.allclose(pkg_out[clear], y64[clear], rtol=1e-3, atol=1e-4))
        checks[(width, depth, batch)] = ok
        if not all(ok.values()):
            raise AssertionError(f"correctness check failed at width {width}, depth {depth}, batch {batch}: {ok}")
        # --- timing --------------------------------------------------------------------------------
        # all methods take turns (interleaved_medians), so that a burst of load on the shared machine hits
        # fffcpu and its baselines alike
        path = engine.choose_method(batch, threads, model.n_leaves, leaf,
                                    engine.sample_work(INPUT_WIDTH, depth, leaf, OUTPUT_WIDTH))
        slow = width * batch >= 2**26  # dense calls of a second or more: fewer repeats
        fns = {"fff": lambda k: model.predict(pool[k % P], n_jobs=threads), "dense": lambda k: dense(pool[k % P])}
        lo = {"dense": 2 if slow else 3, "torch dense": 2 if slow else 3, "pkg": 2 if leaf * batch >= 2**20 else 3}
        hi = {"fff": 4000 if batch == 1 else 300, "dense": 500 if batch == 1 else 50,
              "torch dense": 500 if batch == 1 else 50, "pkg": 200}
        if use_torch:
            fns["torch dense"] = lambda k: torch_dense(pool[k % P])
            fns["pkg"] = lambda k: torch_pkg(pool[k % P])
        timed = interleaved_medians(fns, budget=budget, min_repeats=lo, max_repeats=hi,
                                    settle_s=0.02 if quick else SETTLE_S)
        (t_fff, reps), (t_dense, _) = timed["fff"], timed["dense"]
        t_td = timed["torch dense"][0] if use_torch else None
        t_pkg = timed["pkg"][0] if use_torch else None
        parts = breakdown(model, pool, threads, budget) if (depth, leaf) in BREAKDOWN_POINTS else None
        ceiling = None
        if (batch > engine.SERIAL_MAX and (depth, leaf) in BREAKDOWN_POINTS) or (use_torch and batch == 256
                                                                                 and leaf <= 128):
            ceiling = in_cache_costs(model, pool[0])
        # --- memory (one more call each, after timing) --------------------------------------------------
        mem_fff = peak_memory(lambda: model.predict(pool[1 % P], n_jobs=threads))
        dense.buffers = {}
        mem_dense = peak_memory(lambda: dense(pool[1 % P]))
        dense.buffers = {}
        limit = width / (depth + leaf)
        speedup = t_dense / t_fff
        distinct = len(np.unique(model.route(pool[0], n_jobs=threads)))
        rows.append(dict(width=width, depth=depth, leaf=leaf, batch=batch, path=path, repeats=reps,
                         fff=batch / t_fff, dense=batch / t_dense, speedup=speedup, limit=limit,
                         fraction=speedup / limit,
                         torch_dense=None if t_td is None else batch / t_td,
                         torch_pkg=None if t_pkg is None else batch / t_pkg,
                         vs_pkg=None if t_pkg is None else t_pkg / t_fff,
                         mem_fff=mem_fff, mem_dense=mem_dense, distinct_leaves=distinct,
                         t_fff=t_fff, t_dense=t_dense, t_pkg=t_pkg, parts=parts, ceiling=ceiling))
        print(f"  width {width:>6} depth {depth:>2} leaf {leaf:>5} batch {batch:>5}: fffcpu {fmt_rate(batch / t_fff)}/s "
              f"({path}), dense {fmt_rate(batch / t_dense)}/s, speedup {speedup:.0f}x (limit {limit:.0f}x)"
              + (f", torch pkg {fmt_rate(batch / t_pkg)}/s ({t_pkg / t_fff:.0f}x)" if t_pkg else ""), flush=True)
    return rows, checks


BREAKDOWN_POINTS = ((12, 16), (9, 16))  # (depth, leaf) of the dense-NumPy targets


def breakdown(model, pool, threads, budget):
    """Where an fffcpu call's time goes, each part timed in turns with the whole call (medians, distinct inputs).

    Batch up to ``engine.SERIAL_MAX``: the kernel called directly (``kernels.fff._predict_serial`` into a
    preallocated output) vs ``FFF.predict``; the difference is the Python-level cost (checks, dispatch,
    allocation). Larger batches: routing alone (``engine.route``) and the leaf evaluation alone
    (``engine.leaf_outputs`` with the leaves precomputed, samples sorted by leaf included).
    """
    P, p, d = len(pool), model.params, model.depth
    if len(pool[0]) <= engine.SERIAL_MAX:
        outs = [np.empty((len(x), OUTPUT_WIDTH), np.float32) for x in pool]
        args = (p["node_weights"], p["node_biases"], p["w1s"], p["b1s"], p["w2s"], p["b2s"], d, 1)
        timed = interleaved_medians({
            "call": lambda k: model.predict(pool[k % P], n_jobs=threads),
            "kernel": lambda k: kernels._predict_serial(pool[k % P], *args, outs[k % P]),
        }, budget=budget, max_repeats={"call": 4000, "kernel": 4000})
        return {"call": timed["call"][0], "kernel": timed["kernel"][0]}
    leaves = [model.route(x, n_jobs=threads) for x in pool]
    reached = [np.unique(lv) for lv in leaves]
    timed = interleaved_medians({
        "call": lambda k: model.predict(pool[k % P], n_jobs=threads),
        "route": lambda k: engine.route(pool[k % P], p["node_weights"], p["node_biases"], d, n_jobs=threads),
        "leaves": lambda k: engine.leaf_outputs(pool[k % P], leaves[k % P], p, "relu", n_jobs=threads),
        "read": lambda k: read_leaves(p["w1s"], p["b1s"], p["w2s"], p["b2s"], reached[k % P], threads),
    }, budget=budget, max_repeats={"call": 100, "route": 100, "leaves": 100, "read": 100})
    distinct = np.mean([len(r) for r in reached])
    return {"call": timed["call"][0], "route": timed["route"][0], "leaves": timed["leaves"][0],
            "read": timed["read"][0], "leaf_bytes": distinct * leaf_nbytes(model.leaf_width),
            "dots": len(pool[0]) * d}


def read_leaves(w1s, b1s, w2s, b2s, leaves, threads):
    """Read every weight of the given leaves (W1, b1, W2, b2) and nothing else, the leaves split into ``threads``
    contiguous runs read in parallel in the order given (sorted, as the grouped kernel visits them): the memory
    traffic of a leaf evaluation without its arithmetic. Returns the sum of those weights."""
    n = len(w1s)
    flat = [a.reshape(n, -1) for a in (w1s, b1s, w2s, b2s)]  # views: the parameters are C-contiguous
    return _read_leaves(*flat, np.ascontiguousarray(leaves, dtype=np.int64), threads)


@numba.njit(cache=True, parallel=True, fastmath=True)
def _read_leaves(w1, b1, w2, b2, leaves, n_chunks):
    # fastmath lets the sums vectorize into independent partial sums, so the loads are limited by memory alone
    n = leaves.shape[0]
    partial = np.zeros(n_chunks, dtype=np.float64)
    for c in numba.prange(n_chunks):
        acc = np.float32(0)
        for q in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            leaf = leaves[q]
            for i in range(w1.shape[1]):
                acc += w1[leaf, i]
            for i in range(b1.shape[1]):
                acc += b1[leaf, i]
            for i in range(w2.shape[1]):
                acc += w2[leaf, i]
            for i in range(b2.shape[1]):
                acc += b2[leaf, i]
        partial[c] = acc
    return partial.sum()


def read_bandwidth(threads=THREADS, n_bytes=512 << 20, repeats=5):
    """Memory read bandwidth (bytes/s): the faster of two parallel sums of a ``n_bytes`` float32 array (far
    larger than the caches), each the median of ``repeats`` timings after a pause (``settle``) that lets the
    thread pools of earlier work go idle: ``threads`` Python threads each summing their part with NumPy (which
    releases the GIL), and ``_row_sums`` (16-lane vector loads) over ``threads`` Numba threads."""
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(n_bytes // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    rows = a[: a.size - a.size % 4096].reshape(-1, 4096)
    ones = np.ones((1, 4096), dtype=np.float32)
    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _row_sums(rows[:8], ones, threads)  # compiled (or loaded from cache) before timing
        settle()
        with ThreadPoolExecutor(threads) as pool:
            t_numpy, _ = median_time(lambda k: list(pool.map(np.sum, parts)), min_repeats=repeats,
                                     max_repeats=repeats)
        settle()
        t_numba, _ = median_time(lambda k: _row_sums(rows, ones, threads), min_repeats=repeats, max_repeats=repeats)
    finally:
        numba.set_num_threads(saved)
    return max(a.nbytes / t_numpy, rows.nbytes / t_numba)


@numba.njit(cache=True, parallel=True)
def _row_sums(rows, ones, n_chunks):
    """Sum of every element of ``rows`` (2-D, C-contiguous), the rows split into ``n_chunks`` parallel runs, each
    row summed with the engine's 16-lane dot product against a row of ones (vector loads, four accumulators)."""
    n, m = rows.shape
    partial = np.zeros(n_chunks)
    for c in numba.prange(n_chunks):
        acc = 0.0
        for r in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            acc += kernels._dot(rows, r * m, ones, 0, m)
        partial[c] = acc
    return partial.sum()


#: Independent multiply-add chains of the peak probe: more than the FMA latency times the FMA pipes of a core.
PEAK_CHAINS = 12


@intrinsic
def _fma_chains(typingctx, scale, shift, n):
    """``n`` steps of ``acc = fma(acc, scale, shift)`` on ``PEAK_CHAINS`` independent 16-lane float32 accumulators
    held in registers (no memory traffic); returns the sum of their lanes so that nothing is optimised away."""
    if not (scale == types.float32 and shift == types.float32 and isinstance(n, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        vty = ir.VectorType(f32, kernels.LANES)
        intp = context.get_value_type(types.intp)
        a = kernels._splat(builder, args[0], vty)
        b = kernels._splat(builder, args[1], vty)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                                             f"llvm.fma.v{kernels.LANES}f32")
        start = [builder.fadd(b, ir.Constant(vty, [float(c)] * kernels.LANES)) for c in range(PEAK_CHAINS)]
        accs = [cgutils.alloca_once_value(builder, v) for v in start]
        count = context.cast(builder, args[2], signature.args[2], types.intp)
        with cgutils.for_range(builder, count, intp=intp):
            for acc in accs:
                builder.store(builder.call(fma, [builder.load(acc), a, b]), acc)
        total = builder.load(accs[0])
        for acc in accs[1:]:
            total = builder.fadd(total, builder.load(acc))
        out = builder.extract_element(total, ir.Constant(ir.IntType(32), 0))
        for k in range(1, kernels.LANES):
            out = builder.fadd(out, builder.extract_element(total, ir.Constant(ir.IntType(32), k)))
        return out

    return types.float32(scale, shift, n), codegen


@numba.njit(cache=True, parallel=True)
def _peak_run(n_steps, n_chunks):
    partial = np.zeros(n_chunks, dtype=np.float32)
    for c in numba.prange(n_chunks):
        partial[c] = _fma_chains(np.float32(0.999), np.float32(1e-3), n_steps)
    return partial.sum()


def peak_macs(threads=THREADS, n_steps=2_000_000, repeats=7):
    """Multiply-adds per second the CPU can do at most in float32 with ``threads`` threads: fused multiply-adds on
    ``PEAK_CHAINS`` independent 16-lane vectors per thread, all in registers (the fastest of ``repeats`` timings
    after a pause, since a bound must not be lowered by a slow timing). No kernel that does the same number of
    multiply-adds can be faster than that count divided by this rate: the engine's kernels, which multiply and add
    separately (to keep IEEE results independent of the compiler), are bounded by it too."""
    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _peak_run(10, threads)  # compiled (or loaded from cache) before timing
        settle()
        t = best_time(lambda: _peak_run(n_steps, threads), repeats)
    finally:
        numba.set_num_threads(saved)
    return threads * n_steps * PEAK_CHAINS * kernels.LANES / t


def call_macs(r):
    """Multiply-adds of one fffcpu call: per sample, ``depth`` node dot products and the leaf's two layers."""
    return r["batch"] * (r["depth"] * INPUT_WIDTH + INPUT_WIDTH * r["leaf"] + r["leaf"] * OUTPUT_WIDTH)


def in_cache_costs(model, x, repeats=200):
    """Single-thread cost of the engine's two building blocks with everything in cache: seconds per node dot
    product (``_route_serial`` on 64 samples, 200 KB of inputs, over and over) and per sample of a leaf evaluated
    in full tiles (the 64 samples all sent to leaf 0, ``_eval_tiles_serial``). Fastest of 20 timings."""
    p, d = model.params, model.depth
    x = np.ascontiguousarray(x[:64])
    n = len(x)
    leaves = np.empty(n, np.int64)
    same = np.zeros(n, np.int64)
    order = kernels._leaf_order(same, 2**d)
    starts, tile_leaf = kernels._make_tiles(same, order, kernels.TILE)
    out = np.empty((n, OUTPUT_WIDTH), x.dtype)
    act = kernels.ACTIVATION_CODES[model.activation]

    def route(_):
        for _ in range(repeats):
            kernels._route_serial(x, p["node_weights"], p["node_biases"], d, leaves)

    def leaf(_):
        for _ in range(repeats):
            kernels._eval_tiles_serial(x, order, starts, tile_leaf, p["w1s"], p["b1s"], p["w2s"], p["b2s"], act, out)

    best = {}
    for name, fn in (("route", route), ("leaf", leaf)):
        fn(0)
        best[name] = min(median_time(fn, min_repeats=1, max_repeats=1, warmup=0)[0] for _ in range(20))
    return best["route"] / (repeats * n * d), best["leaf"] / (repeats * n)


#: Leaf widths of the table of leaf costs by width (docs/benchmarks.md).
COST_WIDTHS = (1, 2, 3, 4, 8, 12, 16, 20, 32, 64, 128, 256, 1024)


def leaf_costs_by_width(widths=COST_WIDTHS, repeats=50):
    """Single-thread, in-cache cost of evaluating one leaf per sample, for leaves of each width: 64 samples all
    sent to one leaf, in full tiles (``_eval_tiles_serial``), input 784, output 10, float32. Fastest of 20 timings
    of ``repeats`` calls. Returns rows (width, seconds per sample)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, INPUT_WIDTH), dtype=np.float32)
    same = np.zeros(len(x), np.int64)
    order = kernels._leaf_order(same, 1)
    starts, tile_leaf = kernels._make_tiles(same, order, kernels.TILE)
    out = np.empty((len(x), OUTPUT_WIDTH), np.float32)
    rows = []
    for width in widths:
        model = FFF(INPUT_WIDTH, width, OUTPUT_WIDTH, 0, dtype="float32", seed=0)
        p = model.params

        def leaf(_):
            for _ in range(repeats):
                kernels._eval_tiles_serial(x, order, starts, tile_leaf, p["w1s"], p["b1s"], p["w2s"], p["b2s"], 1, out)

        leaf(0)
        best = min(median_time(leaf, min_repeats=1, max_repeats=1, warmup=0)[0] for _ in range(20))
        rows.append((width, best / (repeats * len(x))))
    return rows


def leaf_costs_table(rows):
    return table(["leaf width ℓ", "ns per sample", "ns per unit", "multiply-adds per ns (W1 and W2)"],
                 [[w, f"{t * 1e9:.0f}", f"{t * 1e9 / w:.1f}", f"{w * (INPUT_WIDTH + OUTPUT_WIDTH) / (t * 1e9):.1f}"]
                  for w, t in rows])


def leaf_nbytes(leaf):
    """float32 bytes of one leaf: W1, b1, W2, b2."""
    return (INPUT_WIDTH * leaf + leaf + leaf * OUTPUT_WIDTH + OUTPUT_WIDTH) * 4


def breakdown_table(rows, bandwidth):
    out = []
    for r in rows:
        q = r.get("parts")
        if not q:
            continue
        if "kernel" in q:
            out.append([r["width"], r["depth"], r["leaf"], r["batch"], f"{q['call'] * 1e6:.2f} µs",
                        f"kernel alone {q['kernel'] * 1e6:.2f} µs; Python-level checks and dispatch "
                        f"{(q['call'] - q['kernel']) * 1e6:.2f} µs", "–", "–"])
        else:
            bw, bw_read = q["leaf_bytes"] / q["leaves"], q["leaf_bytes"] / q["read"]
            floor = q["route"] + q["read"]
            out.append([r["width"], r["depth"], r["leaf"], r["batch"], f"{q['call'] * 1e3:.2f} ms",
                        f"routing {q['route'] * 1e3:.2f} ms ({q['route'] / q['dots'] * 1e9:.0f} ns per node dot "
                        f"product over {THREADS} threads); leaf evaluation {q['leaves'] * 1e3:.2f} ms "
                        f"({q['leaves'] / r['batch'] * 1e9:.0f} ns per sample)",
                        f"{fmt_bytes(q['leaf_bytes'])}: evaluated in {q['leaves'] * 1e3:.2f} ms = {bw / 1e9:.1f} GB/s; "
                        f"only read in {q['read'] * 1e3:.2f} ms = {bw_read / 1e9:.1f} GB/s ({bw / bandwidth:.0%} and "
                        f"{bw_read / bandwidth:.0%} of the measured {bandwidth / 1e9:.1f} GB/s)",
                        f"{floor * 1e3:.2f} ms: {fmt_x(r['t_dense'] / floor)}"])
    return table(["width", "depth", "ℓ", "batch", "fffcpu call", "parts (timed separately)",
                  "leaf weights reached", "routing + reading the leaves: speedup vs dense"], out)


def ceiling_table(rows, threads):
    """The arithmetic ceiling at the target points (large batches vs dense NumPy, batch 256 vs the torch package):
    every sample's node dot products and its leaf at their in-cache single-thread cost (``in_cache_costs``), split
    perfectly over the threads, no memory traffic."""
    out = []
    for r in rows:
        if not r.get("ceiling"):
            continue
        dot_s, leaf_s = r["ceiling"]
        t_min = r["batch"] * (r["depth"] * dot_s + leaf_s) / threads
        out.append([r["width"], r["depth"], r["leaf"], r["batch"], f"{dot_s * 1e9:.1f} ns", f"{leaf_s * 1e9:.0f} ns",
                    f"{t_min * 1e3:.3f} ms", f"{r['t_fff'] * 1e3:.3f} ms", fmt_x(r["t_dense"] / t_min),
                    fmt_x(r["speedup"]), fmt_x(r["t_pkg"] / t_min) if r["t_pkg"] else "–", fmt_x(r["vs_pkg"])])
    return table(["width", "depth", "ℓ", "batch", "node dot product of 784, in cache", "leaf of one sample, in cache "
                  "(tiles of 8)", f"ceiling time ({threads} threads)", "measured fffcpu time",
                  "speedup ceiling vs dense", "measured speedup", "ceiling vs torch pkg", "measured vs torch pkg"], out)


def evaluate_targets(rows, use_torch, peak=None):
    """The targets' rows: (target, measured, status). With ``peak`` (multiply-adds per second, ``peak_macs``), the
    torch-package target also names the points that no kernel can bring to 100x: those whose multiply-adds alone,
    at the peak rate, take more than a hundredth of the torch package's measured time."""
    out = []
    for text, where, key, threshold in TARGETS:
        hits = [r for r in rows if all(r[k] == v for k, v in where.items())]
        if not hits:
            out.append((text, "not in this grid", "–"))
            continue
        value = hits[0][key]
        out.append((text, f"{value:.0f}x", "met" if value >= threshold else "missed"))
    text = "every grid point with leaf ≤ 128, batch 256: ≥ 100x the torch package's eval_forward"
    pts = [r for r in rows if r["leaf"] <= 128 and r["batch"] == 256]
    if not use_torch:
        out.append((text, "torch not installed", "–"))
    elif not pts:
        out.append((text, "not in this grid", "–"))
    else:
        worst = min(pts, key=lambda r: r["vs_pkg"])
        n_ok = sum(r["vs_pkg"] >= 100 for r in pts)
        measured = (f"{n_ok}/{len(pts)} points; lowest {worst['vs_pkg']:.0f}x (width {worst['width']}, depth "
                    f"{worst['depth']}, leaf {worst['leaf']})")
        status = "met" if n_ok == len(pts) else "missed"
        beyond = [r for r in pts if peak and r["t_pkg"] * peak / call_macs(r) < 100]
        if beyond and status == "missed":
            measured += (f"; out of reach at {len(beyond)} of them, whose multiply-adds alone take more than 1/100 "
                         f"of the torch package's time at the measured peak of {peak / 1e9:.0f} GMAC/s: "
                         + ", ".join(f"width {r['width']} depth {r['depth']} leaf {r['leaf']} at most "
                                     f"{_below_100(r['t_pkg'] * peak / call_macs(r))}" for r in beyond))
            status = "missed; physically out of reach (multiply-adds vs peak)"
        out.append((text, measured, status))
    return out


def _below_100(v):
    """``v`` (< 100) as "NN.Nx", with as many decimals as it takes not to print 100 or more."""
    for digits in range(1, 7):
        text = f"{v:.{digits}f}"
        if float(text) < 100:
            break
    return text + "x"


def bytes_moved(r):
    """Lower bound on the bytes one fffcpu call must read from memory: the weights of every distinct leaf reached
    (W1, b1, W2, b2), one node row per level for every distinct path prefix (bounded by the samples), and the input."""
    f = 4
    leaf_bytes = leaf_nbytes(r["leaf"])
    node_rows = sum(min(r["batch"], 2**k) for k in range(r["depth"]))
    return r["distinct_leaves"] * leaf_bytes + node_rows * (INPUT_WIDTH + 1) * f + r["batch"] * INPUT_WIDTH * f


def bounds(rows, bandwidth, use_torch, peak):
    """For the target points: the fastest an fffcpu call could be if it only had to stream its bytes at the
    measured bandwidth, and the speedup that would give (vs dense NumPy, and vs the torch package); then the
    fastest it could be if it only had to do its multiply-adds at the measured peak rate, and the speedup that
    would give over the torch package."""
    pts = [r for r in rows if (r["depth"], r["leaf"]) in ((12, 16), (9, 16))]
    if use_torch:
        pts += [r for r in rows if r["leaf"] <= 128 and r["batch"] == 256 and r not in pts]
    out = []
    for r in pts:
        b = bytes_moved(r)
        t_min = b / bandwidth
        macs = call_macs(r)
        t_arith = macs / peak
        out.append([r["width"], r["depth"], r["leaf"], r["batch"], r["distinct_leaves"], fmt_bytes(b),
                    f"{t_min * 1e6:.0f} µs", f"{r['t_fff'] * 1e6:.0f} µs", f"{macs / r['t_fff'] / 1e9:.1f}",
                    fmt_x(r["t_dense"] / t_min), fmt_x(r["speedup"]),
                    fmt_x(r["t_pkg"] / t_min) if r["t_pkg"] else "–", fmt_x(r["vs_pkg"]),
                    f"{macs / 1e6:.1f}M", f"{t_arith * 1e6:.0f} µs",
                    fmt_x(r["t_pkg"] / t_arith) if r["t_pkg"] else "–"])
    headers = ["width", "depth", "ℓ", "batch", "distinct leaves", "bytes read (lower bound)",
               "time at measured bandwidth", "measured fffcpu time", "fffcpu GMAC/s",
               "speedup bound vs dense", "measured speedup", "bound vs torch pkg", "measured vs torch pkg",
               "multiply-adds", "time at peak arithmetic", "peak-arithmetic bound vs torch pkg"]
    return table(headers, out)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for batch, marker in zip(sorted({r["batch"] for r in rows}), "osD^"):
        pts = sorted((r for r in rows if r["batch"] == batch), key=lambda r: r["limit"])
        ax.loglog([r["limit"] for r in pts], [r["speedup"] for r in pts], marker, label=f"fffcpu, batch {batch}")
    lim = [min(r["limit"] for r in rows), max(r["limit"] for r in rows)]
    ax.loglog(lim, lim, "k--", lw=1, label="theoretical limit (training width / inference size)")
    ax.set_xlabel("theoretical limit = 2^d·ℓ / (d + ℓ)")
    ax.set_ylabel("speedup over dense NumPy FF (same training width)")
    ax.set_title("FFF hard inference vs dense FF, float32, 784→10")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(quick=False, *, threads=THREADS, widths=None, depths=None, batches=None, plot_path=None) -> Section:
    widths = widths or (QUICK_WIDTHS if quick else WIDTHS)
    depths = depths or (QUICK_DEPTHS if quick else DEPTHS)
    batches = batches or (QUICK_BATCHES if quick else BATCHES)
    use_torch = have_torch()
    rng = np.random.default_rng(12345)
    fffcpu.warmup()
    numba.set_num_threads(threads)
    rows, checks = [], {}
    with threadpool_limits(limits=threads):
        for width, depth, leaf in grid(widths, depths):
            r, c = measure_point(width, depth, leaf, batches, threads=threads, quick=quick, use_torch=use_torch, rng=rng)
            rows += r
            checks.update(c)
    headers = ["training width", "depth", "leaf ℓ", "batch", "fffcpu path", "fffcpu samples/s", "dense NumPy samples/s",
               "speedup", "limit", "fraction of limit", "torch dense samples/s", "torch pkg samples/s",
               "fffcpu / torch pkg", "peak mem fffcpu", "peak mem dense"]
    body = [[r["width"], r["depth"], r["leaf"], r["batch"], r["path"], fmt_rate(r["fff"]), fmt_rate(r["dense"]),
             fmt_x(r["speedup"]), fmt_x(r["limit"]), f"{r['fraction']:.0%}", fmt_rate(r["torch_dense"]),
             fmt_rate(r["torch_pkg"]), fmt_x(r["vs_pkg"]), fmt_bytes(r["mem_fff"]), fmt_bytes(r["mem_dense"])]
            for r in rows]
    bandwidth = read_bandwidth(threads)
    peak = peak_macs(threads)
    targets = evaluate_targets(rows, use_torch, peak)
    md = [
        f"Input {INPUT_WIDTH}, output {OUTPUT_WIDTH}, ReLU, float32, {threads} threads for every library. "
        "Samples/s are medians over repeated calls after a warm-up call; every call gets a different input batch. "
        "`speedup` = dense NumPy time / fffcpu time; `limit` = training width / inference size (2^d·ℓ / (d + ℓ)); "
        "peak memory = peak resident memory one call adds (VmHWM, after the C heap's free memory was returned to the "
        "system, so that buffers taken from it count), buffers included (the dense FF allocates its "
        "(batch, width) hidden buffer). Correctness of every method was checked against a float64 reference before "
        "timing" + (" (torch package: its `eval_forward` output plus the `b2s` bias it omits)." if use_torch else
                    "; torch is not installed, so the torch columns are empty."),
        "",
        table(headers, body),
        "",
        "Targets (measured in this run):",
        "",
        table(["target", "measured", "status"], targets),
        "",
        f"Bandwidth bound: the faster of two parallel sums over 512 MiB (NumPy's, and a Numba kernel of 16-lane "
        f"vector loads), timed after a pause so that no thread pool of earlier work still spins, reads memory at "
        f"{bandwidth / 1e9:.1f} GB/s with {threads} threads on this machine. The table gives, for the target points, the bytes an fffcpu call must at least read (the "
        "distinct leaves' weights, the node rows, the input), the time that takes at that bandwidth, and the speedup "
        "that time would give over the measured dense and torch-package times: a target above its bound cannot be "
        "met by a kernel that reads these bytes from memory. The bound assumes the weights come from DRAM; models whose weights fit in the 32 MiB L3 (training width ≤ 8192 at ℓ ≤ 128) can beat it when calls find them cached, so for those rows it is indicative only; larger ones can too, in part, when the leaves a call reaches overlap with those of the calls just before it (the \"only read\" column of the breakdown below shows how fast those bytes come in practice). Python-level call overhead (checks, dispatch, allocation: measured below) is not in the bound and matters at batch 1.",
        "",
        f"The last three columns do the same for arithmetic: the call's multiply-adds (per sample: d node dot "
        f"products of {INPUT_WIDTH} for a tree of depth d, the leaf's {INPUT_WIDTH} x ℓ and ℓ x {OUTPUT_WIDTH} "
        f"layers), the time they take at the peak rate of this machine, {peak / 1e9:.0f} GMAC/s with {threads} threads (measured: "
        f"fused multiply-adds on {PEAK_CHAINS} independent 16-lane float32 vectors per thread, in registers), and "
        "the speedup over the torch package that time would give: a point whose bound is below 100x cannot reach "
        "the torch-package target with any kernel that does every multiply-add of the layer, whatever its memory "
        "access.",
        "",
        bounds(rows, bandwidth, use_torch, peak),
    ]
    if any(r.get("parts") for r in rows):
        md += ["", "Where the time goes at the dense-NumPy target points (each part timed on its own, in turns with "
               "the whole call, on the same inputs). \"Only read\" is a kernel that reads the weights of the leaves "
               "the batch reaches (in the grouped kernel's order, the same threads) and does nothing else: the "
               "memory traffic of the leaf evaluation without its arithmetic. A call that routes every sample "
               "before it evaluates the leaves (which it must, to read each reached leaf once) cannot be faster "
               "than routing plus that read; the last column is the speedup over dense NumPy such a call would "
               "reach.", "", breakdown_table(rows, bandwidth)]
    if any(r.get("ceiling") for r in rows):
        md += ["", "Arithmetic ceiling at the target points: the engine's two building blocks timed "
               "with their data in cache on one thread (a node dot product; a leaf evaluated for full tiles of "
               "8 samples), times the work of the batch, divided by the threads. No kernel built from these blocks "
               "can be faster than this time, whatever it does about memory; a target above the ceiling needs "
               "cheaper arithmetic per sample (fewer or narrower multiply-adds), not better memory access.", "",
               ceiling_table(rows, threads)]
    costs = leaf_costs_by_width(COST_WIDTHS[:4] if quick else COST_WIDTHS)
    md += ["", "Leaf evaluation by leaf width: one thread, everything in cache, 64 samples sent to one leaf and "
           "evaluated in tiles of 8 (input 784, output 10, float32). Leaves of 1, 2, 4 or 8 units are summed as one "
           "flat run of 16-lane vectors; other widths go through 16-unit blocks, the last one masked, so a width "
           "that is not a multiple of 16 pays for its last block as if it were full (compare 12 with 16 and 20 "
           "with 32).", "", leaf_costs_table(costs)]
    if plot_path:
        plot(rows, plot_path)
    return Section("Hard inference: fffcpu vs dense FF and the PyTorch package", "\n".join(md), rows, checks,
                   {"targets": targets, "bandwidth": bandwidth, "peak_macs": peak, "leaf_costs": costs})


def main(argv=None):
    section_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
