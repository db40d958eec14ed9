"""Probes of the machine under the hard-inference engine: what a vector load, a node dot product, an input batch and
a node row cost, measured on their own. They explain the breakdown of the inference section (docs/engine.md reads
them).

* Vector loads and alignment: a sum of 3136 float32 (196 16-lane loads) held in L1, the array starting on a 64-byte
  boundary or 16 bytes past one (where NumPy puts large arrays): a load that straddles two cache lines costs two.
* Node dot products in cache: routing 256 samples down a depth-3 tree (all rows in L1/L2), one thread, with the
  input rows aligned to 64 bytes or 16 bytes past.
* Input traffic: at depth 9, leaf 16, batch 4096 (2 threads), routing and the leaf evaluation with a new input batch
  per call (from a pool larger than the L3, as in the inference benchmark) or the same batch at every call.
* Node-row bytes: routing at batch 4096 (2 threads) with 784 and with 392 inputs per sample, the same depth.
* Leaf weights and the L3: at depth 9, leaf 16, batch 4096 (2 threads), the same input batch at every call, the
  grouped leaf evaluation alone with the samples in full tiles of 8 on all 512 leaves (25.7 MB of W1 at 784 inputs)
  or on 64 of them (3.2 MB): the same tiles and multiply-adds, only the leaf weights' footprint differs. With 784
  inputs the batch (12.8 MB) and the leaf weights together exceed the 32 MiB L3; with 392 they fit.
* Data the caches keep: one array of 4 to 96 MiB summed over and over (2 threads, 16-lane loads): the read rate
  shows how much of the 32 MiB L3 a process can count on finding again (the L3 is shared with the rest of the
  machine).
* Routing step by step: at depth 9, the time per node dot product and core of two dot products per loop on rows in
  cache (input rows aligned or not), then with the walk's dependency between levels, the engine's pair walk, and
  batches of 4096 (2 threads) sent down one path (node rows in cache) with the same or a new input batch per call,
  and routed by the model: what each step adds to the routing of a batch.
* Routing after the leaf stream: at depth 12, leaf 16, batch 4096 (2 threads), routing a new batch right after
  routing another one (the node rows are still in the caches) or right after another batch's leaf evaluation (as in
  back-to-back predict calls, where the leaf weights stream through the caches between two routings), and the
  first 9 levels alone after a leaf evaluation: what the deep levels add.
* Routing under the leaf stream: at depth 12, leaf 16, batch 4096 (2 threads), routing and a bare read of the reached
  leaves' W1 run one after the other, interleaved on each core (a leaf read, then that leaf's share of the routing),
  or side by side (one thread routes every sample while the other reads every leaf): whether routing can hide
  under the memory traffic of the leaves.
* The leaf stream and its arithmetic: at depth 12, leaf 16, batch 4096 (2 threads), the tiles of the grouped leaf
  evaluation (samples already sorted by leaf) with a new input batch per call, the same tiles with each thread's
  input rows taken from 8 rows per run of tiles that stay in its L2 (the same leaves, tiles and multiply-adds, no
  input traffic), and a bare read of the reached leaves' weights: how far the evaluation is from the read of its
  leaves, and how much of the difference its input rows make.

Run as part of ``python -m benchmarks`` or alone with ``python -m benchmarks.probes [--quick]``.
"""

from __future__ import annotations

import functools
from time import perf_counter

import numba
import numpy as np

from fffcpu import FFF, engine
from fffcpu.kernels import fff as kernels
from fffcpu.models.base import _aligned_empty

from .common import (
    THREADS,
    Section,
    best_time,
    interleaved_medians,
    section_main,
    settle,
    table,
)
from .inference import _row_sums, read_leaves

INPUT_WIDTH = 784


def aligned_array(n, dtype, offset_bytes, rng):
    """Standard-normal array of ``n`` elements whose first element is ``offset_bytes`` past a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    buf = _aligned_empty(n * itemsize + offset_bytes, np.uint8)
    a = buf[offset_bytes:].view(dtype)
    a[:] = rng.standard_normal(n)
    return a


@numba.njit(cache=True, fastmath=True)
def _sum_repeated(a, repeats):
    # fastmath lets the sum use independent vector partial sums: the loop is bound by its loads
    total = np.float32(0)
    for _ in range(repeats):
        acc = np.float32(0)
        for i in range(a.shape[0]):
            acc += a[i]
        total += acc
    return total


@numba.njit(cache=True)
def _route_repeated(x, node_weights, node_biases, depth, leaves, repeats):
    for _ in range(repeats):
        kernels._route_serial(x, node_weights, node_biases, depth, leaves)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _read_leaf(w1, leaf):
    # fastmath lets the sum use independent vector partial sums: the loop is bound by the memory reads
    acc = np.float32(0)
    for i in range(w1.shape[1]):
        acc += w1[leaf, i]
    return acc


@numba.njit(cache=True, nogil=True)
def _read_and_route(x, node_weights, node_biases, depth, leaves, w1, reached, lo, hi, s_lo, s_hi, mode):
    """One thread's share: read the W1 of ``reached[lo:hi]`` (mode 0), route samples ``s_lo:s_hi`` in pairs (mode 1),
    or both interleaved (mode 2: after each leaf, the pairs whose share of the routing that leaf's turn covers)."""
    acc = np.float32(0)
    pairs = (s_hi - s_lo) // 2
    done = 0
    for q in range(lo, lo if mode == 1 else hi):
        acc += _read_leaf(w1, reached[q])
        if mode == 2:
            target = (q + 1 - lo) * pairs // (hi - lo)
            while done < target:
                kernels._route_pair(x, s_lo + 2 * done, s_lo + 2 * done + 1, node_weights, node_biases, depth, leaves)
                done += 1
    if mode != 0:
        while done < pairs:
            kernels._route_pair(x, s_lo + 2 * done, s_lo + 2 * done + 1, node_weights, node_biases, depth, leaves)
            done += 1
        if (s_hi - s_lo) % 2:
            leaves[s_hi - 1] = kernels._route_one(x, s_hi - 1, node_weights, node_biases, depth)
    return acc


@numba.njit(cache=True, parallel=True)
def _overlap(x, node_weights, node_biases, depth, leaves, w1, reached, mode, n_chunks):
    """Modes 0-2 of ``_read_and_route`` with leaves and samples split evenly over ``n_chunks`` threads; mode 3:
    chunk 0 routes every sample, the other chunks read every leaf between them. Returns the sum of the weights
    read."""
    n, m = x.shape[0], reached.shape[0]
    partial = np.zeros(n_chunks, dtype=np.float64)
    for c in numba.prange(n_chunks):
        if mode == 3:
            if c == 0:
                partial[c] = _read_and_route(x, node_weights, node_biases, depth, leaves, w1, reached, 0, 0, 0, n, 1)
            else:
                lo = (c - 1) * m // (n_chunks - 1)
                hi = c * m // (n_chunks - 1)
                partial[c] = _read_and_route(x, node_weights, node_biases, depth, leaves, w1, reached, lo, hi, 0, 0, 0)
        else:
            partial[c] = _read_and_route(x, node_weights, node_biases, depth, leaves, w1, reached,
                                         c * m // n_chunks, (c + 1) * m // n_chunks,
                                         c * n // n_chunks, (c + 1) * n // n_chunks, mode)
    return partial.sum()


def _best_per_call(fn, calls, timings=7):
    """Fastest of ``timings`` timings of ``fn(calls)``, per call (in-cache loops: the fastest is the cleanest)."""
    fn(1)
    return best_time(lambda: fn(calls), timings) / calls


def load_alignment(repeats=200_000):
    rng = np.random.default_rng(0)
    out = {}
    for offset in (0, 16):
        a = aligned_array(3136, np.float32, offset, rng)
        out[offset] = _best_per_call(functools.partial(_sum_repeated, a), repeats)
    return out


def dot_alignment(repeats=50, samples=256, depth=3):
    rng = np.random.default_rng(1)
    model = FFF(INPUT_WIDTH, 16, 10, depth, dtype="float32", seed=0)
    nw, nb = model.params["node_weights"], model.params["node_biases"]
    leaves = np.empty(samples, dtype=np.int64)
    out = {}
    for offset in (0, 16):
        x = aligned_array(samples * INPUT_WIDTH, np.float32, offset, rng).reshape(samples, INPUT_WIDTH)
        route = functools.partial(_route_repeated, x, nw, nb, depth, leaves)
        out[offset] = _best_per_call(route, repeats) / (samples * depth)
    return out


def _model_and_batches(depth, batch, threads, seed):
    """A depth-``depth`` FFF of 784 inputs, 16-unit leaves and 10 outputs, a pool of five input batches (at batch
    4096 more than the L3 holds) and the leaves each batch reaches."""
    rng = np.random.default_rng(seed)
    model = FFF(INPUT_WIDTH, 16, 10, depth, dtype="float32", seed=0)
    pool = [rng.standard_normal((batch, INPUT_WIDTH), dtype=np.float32) for _ in range(5)]
    return model, pool, [model.route(x, n_jobs=threads) for x in pool]


def input_traffic(depth=9, batch=4096, threads=THREADS, budget=1.0):
    model, pool, leaves = _model_and_batches(depth, batch, threads, seed=2)
    p = model.params
    P = len(pool)

    def route(x):
        return engine.route(x, p["node_weights"], p["node_biases"], depth, n_jobs=threads)

    timed = interleaved_medians({
        "route new": lambda k: route(pool[k % P]),
        "route same": lambda k: route(pool[0]),
        "leaves new": lambda k: engine.leaf_outputs(pool[k % P], leaves[k % P], p, "relu", n_jobs=threads),
        "leaves same": lambda k: engine.leaf_outputs(pool[0], leaves[0], p, "relu", n_jobs=threads),
    }, budget=budget, max_repeats=dict.fromkeys(("route new", "route same", "leaves new", "leaves same"), 200))
    return {k: v[0] for k, v in timed.items()}


def node_row_bytes(depths=(9, 12), batch=4096, threads=THREADS, budget=1.0):
    rng = np.random.default_rng(3)
    fns = {}
    for depth in depths:
        for n_in in (INPUT_WIDTH, INPUT_WIDTH // 2):
            model = FFF(n_in, 16, 10, depth, dtype="float32", seed=0)
            nw, nb = model.params["node_weights"], model.params["node_biases"]
            pool = [rng.standard_normal((batch, n_in), dtype=np.float32) for _ in range(5)]
            fns[(depth, n_in)] = functools.partial(_route_from_pool, pool, nw, nb, depth, threads)
    timed = interleaved_medians(fns, budget=budget, max_repeats=dict.fromkeys(fns, 200))
    return {k: v[0] for k, v in timed.items()}


@numba.njit(cache=True, nogil=True)
def _walk_fixed(x, node_weights, paths, repeats):
    """Rows 0 and 1 of ``x`` against the node rows ``paths[0]`` and ``paths[1]`` (one pair of dot products per
    level, as the pair walk computes them), each level independent of the logits before. Returns their sum."""
    n = x.shape[1]
    total = 0.0
    for _ in range(repeats):
        for level in range(paths.shape[1]):
            z0, z1 = kernels._dot_pair(x, 0, paths[0, level] * n, n, paths[1, level] * n, node_weights, n)
            total += z0 + z1
    return total


@numba.njit(cache=True, nogil=True)
def _walk_dependent(x, node_weights, node_biases, depth, leaves, repeats):
    """Rows 0 and 1 of ``x`` walked down the tree in lockstep, each level's node given by the logits before, with the
    pair walk's dot products but none of its prefetches; the leaves reached go to ``leaves[:2]``."""
    n = x.shape[1]
    for _ in range(repeats):
        node0 = 0
        node1 = 0
        for _level in range(depth):
            z0, z1 = kernels._dot_pair(x, 0, node0 * n, n, node1 * n, node_weights, n)
            node0 = 2 * node0 + 1 + (1 if z0 + node_biases[node0] >= 0 else 0)
            node1 = 2 * node1 + 1 + (1 if z1 + node_biases[node1] >= 0 else 0)
        leaves[0] = node0 - ((1 << depth) - 1)
        leaves[1] = node1 - ((1 << depth) - 1)


@numba.njit(cache=True, nogil=True)
def _walk_engine(x, node_weights, node_biases, depth, leaves, repeats):
    """The engine's pair walk (``_route_pair``, its prefetches included) of rows 0 and 1 of ``x``, ``repeats`` times."""
    for _ in range(repeats):
        kernels._route_pair(x, 0, 1, node_weights, node_biases, depth, leaves)


def _outer_paths(depth):
    """Node ids of the leftmost path (row 0) and the rightmost path (row 1) of a tree of ``depth`` levels."""
    levels = np.arange(depth)
    return np.stack([(1 << levels) - 1, (2 << levels) - 2]).astype(np.int64)


def _side_biases(n_nodes, dtype, root):
    """Node biases that send every sample on down its side of the tree: odd nodes (left children) send it left,
    even ones right, whatever its logit; the root's bias is ``root``."""
    biases = np.where(np.arange(n_nodes) % 2 == 1, -np.inf, np.inf).astype(dtype)
    biases[0] = root
    return biases


def routing_steps(depth=9, batch=4096, threads=THREADS, budget=1.0, repeats=2_000):
    """Time per node dot product (s, per core) of routing, from the pair's dot products alone up to routing a batch:
    two dot products per loop on rows in cache, each level independent of the one before (input rows 16 bytes past
    a 64-byte boundary, where NumPy puts them, or aligned to one); the same with each level's rows given by the
    logits before; the engine's pair walk (``_route_pair``) on the same two samples (``repeats`` walks per call, one
    thread); batches routed with every node sending its samples left (node rows in cache), the same batch at every
    call or a new one; batches routed by the model (paths spread over the tree), a new one per call. All seven take
    turns (``interleaved_medians``), so that a change in the machine's speed hits them alike."""
    model, pool, _ = _model_and_batches(depth, batch, threads, seed=7)
    nw = model.params["node_weights"]
    nb = model.params["node_biases"]
    paths = _outer_paths(depth)
    # two input rows that the root sends apart; every node below sends its sample on down its side
    x = aligned_array(2 * INPUT_WIDTH, np.float32, 16, np.random.default_rng(8)).reshape(2, INPUT_WIDTH)
    root = float(x[0].astype(np.float64) @ nw[0].astype(np.float64))
    x[0] *= -np.sign(root) if root else 1.0
    x[1] = -x[0]
    aligned = aligned_array(2 * INPUT_WIDTH, np.float32, 0, np.random.default_rng(9)).reshape(2, INPUT_WIDTH)
    aligned[:] = x
    sides = _side_biases(len(nb), nb.dtype, root=0)
    left = np.full_like(nb, -np.inf)  # every sample goes left at every node
    leaves = np.empty(2, dtype=np.int64)
    for walk in (_walk_dependent, _walk_engine):
        leaves[:] = -1
        walk(x, nw, sides, depth, leaves, 1)
        if leaves[0] != 0 or leaves[1] != (1 << depth) - 1:
            raise AssertionError(f"routing_steps: {walk.__name__} reached leaves {leaves.tolist()}, not the "
                                 "outermost ones")
    if engine.route(pool[0], nw, left, depth, n_jobs=threads).any():
        raise AssertionError("routing_steps: a sample left the leftmost path")
    P = len(pool)

    def route(biases, same, k):
        return engine.route(pool[0 if same else k % P], nw, biases, depth, n_jobs=threads)

    fns = {"fixed rows, aligned": lambda k: _walk_fixed(aligned, nw, paths, repeats),
           "fixed rows": lambda k: _walk_fixed(x, nw, paths, repeats),
           "dependent": lambda k: _walk_dependent(x, nw, sides, depth, leaves, repeats),
           "pair walk": lambda k: _walk_engine(x, nw, sides, depth, leaves, repeats),
           "left, same batch": functools.partial(route, left, True),
           "left, new batch": functools.partial(route, left, False),
           "model, new batch": functools.partial(route, nb, False)}
    timed = interleaved_medians(fns, budget=budget, max_repeats=dict.fromkeys(fns, 200))
    one_thread = 1 / (repeats * 2 * depth)
    batched = threads / (batch * depth)
    return {name: t * (batched if name.endswith("batch") else one_thread) for name, (t, _) in timed.items()}


def routing_overlap(depth=12, batch=4096, threads=THREADS, budget=1.0):
    """Median times (s) of routing alone, the bare read of the reached leaves' W1 alone, the two one after the
    other, interleaved on each core, and side by side on different cores (``_overlap``); new inputs at every call."""
    if threads < 2:
        raise ValueError(f"routing_overlap needs at least 2 threads (one routes while another reads), got {threads}")
    model, pool, routed = _model_and_batches(depth, batch, threads, seed=4)
    p = model.params
    nw, nb = p["node_weights"], p["node_biases"]
    w1 = p["w1s"].reshape(model.n_leaves, -1)  # a view: leaf rows of INPUT_WIDTH * 16 weights
    reached = [np.unique(leaves) for leaves in routed]
    leaves = np.empty(batch, dtype=np.int64)
    P = len(pool)

    def run(mode, k):
        return _overlap(pool[k % P], nw, nb, depth, leaves, w1, reached[k % P], mode, threads)

    fns = {"route": functools.partial(run, 1), "read": functools.partial(run, 0),
           "route, then read": lambda k: (run(1, k), run(0, k)),
           "interleaved on each core": functools.partial(run, 2),
           "side by side (one thread routes)": functools.partial(run, 3)}
    expected = model.route(pool[0], n_jobs=threads)
    for mode in (1, 2, 3):  # every arrangement routes every sample
        leaves[:] = -1
        run(mode, 0)
        if not np.array_equal(leaves, expected):
            raise AssertionError(f"routing_overlap: mode {mode} gave other leaves than FFF.route")
    timed = interleaved_medians(fns, budget=budget, max_repeats=dict.fromkeys(fns, 200))
    return {k: v[0] for k, v in timed.items()}


def leaf_footprint(depth=9, batch=4096, threads=THREADS, budget=1.0):
    """Median times (s) of the grouped leaf evaluation alone (``engine.leaf_outputs``), the same input batch at every
    call, its samples in full tiles (sample s goes to leaf (s // TILE) mod n) on all the leaves (n = 2^depth) or
    on an eighth of them: the same tiles and arithmetic, an eighth of the leaf weights. Keys (n_in, n_leaves used)."""
    rng = np.random.default_rng(5)
    fns = {}
    for n_in in (INPUT_WIDTH, INPUT_WIDTH // 2):
        model = FFF(n_in, 16, 10, depth, dtype="float32", seed=0)
        x = rng.standard_normal((batch, n_in), dtype=np.float32)
        for used in (model.n_leaves, max(1, model.n_leaves // 8)):
            leaves = (np.arange(batch) // kernels.TILE) % used
            fns[(n_in, used)] = functools.partial(_leaf_outputs, x, leaves, model.params, threads)
    timed = interleaved_medians(fns, budget=budget, max_repeats=dict.fromkeys(fns, 200))
    return {k: v[0] for k, v in timed.items()}


def _hot_order(starts, n_chunks, rows=8):
    """A sample order for the tiles ``starts`` in which the samples of each run of tiles (as ``_eval_tiles_parallel``
    splits them over ``n_chunks``) are sent to ``rows`` rows of their own, so that a run reads and writes the same few
    rows over and over (they stay in the core's caches) and no two runs share a row."""
    n_tiles = starts.shape[0] - 1
    hot = np.empty(starts[-1], dtype=np.int64)
    for c in range(n_chunks):
        lo, hi = starts[c * n_tiles // n_chunks], starts[(c + 1) * n_tiles // n_chunks]
        hot[lo:hi] = c * rows + np.arange(hi - lo) % rows
    return hot


def leaf_stream(depth=12, batch=4096, threads=THREADS, budget=1.0):
    """Median times (s) of the grouped evaluation's tiles (``_eval_tiles_parallel``, the samples sorted by leaf
    beforehand) with a new input batch per call ("tiles"), the same tiles with every run's input rows in cache
    (``_hot_order``: the same leaves, tiles and arithmetic) and a bare read of the reached leaves' weights
    (``read_leaves``); "leaf bytes": the mean bytes of weights those leaves hold."""
    model, pool, routed = _model_and_batches(depth, batch, threads, seed=7)
    p = model.params
    w = (p["w1s"], p["b1s"], p["w2s"], p["b2s"])
    plans = []
    for leaves in routed:
        order = kernels._leaf_order(leaves, model.n_leaves)
        starts, tile_leaf = kernels._make_tiles(leaves, order, kernels.TILE)
        chunks = engine._chunks(len(tile_leaf), threads)  # the runs of tiles _eval_grouped makes
        plans.append((order, _hot_order(starts, chunks), starts, tile_leaf, chunks, np.unique(leaves)))
    outs = [np.empty((batch, model.output_width), dtype=np.float32) for _ in pool]
    P = len(pool)

    def tiles(hot, k):
        order, hot_order, starts, tile_leaf, chunks, _ = plans[k % P]
        kernels._eval_tiles_parallel(pool[k % P], hot_order if hot else order, starts, tile_leaf, *w, 1,
                                     outs[k % P], chunks)

    fns = {"tiles": functools.partial(tiles, False), "tiles, input rows in cache": functools.partial(tiles, True),
           "bare read": lambda k: read_leaves(*w, plans[k % P][-1], threads)}
    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        tiles(False, 0)
        expected = engine.leaf_outputs(pool[0], routed[0], p, "relu", n_jobs=threads)
        if not np.array_equal(outs[0], expected):
            raise AssertionError("leaf_stream: the tiles gave other outputs than engine.leaf_outputs")
        timed = interleaved_medians(fns, budget=budget, max_repeats=dict.fromkeys(fns, 200))
    finally:
        numba.set_num_threads(saved)
    leaf_bytes = sum(a[0].nbytes for a in w) * np.mean([len(plan[-1]) for plan in plans])
    return {**{k: v[0] for k, v in timed.items()}, "leaf bytes": leaf_bytes}


def cache_reuse(sizes_mib, threads=THREADS, budget=1.0):
    """Read rate (bytes/s) of an array of each size in MiB summed over and over (``_row_sums``, 16-lane loads over
    ``threads`` Numba threads): the rate of the caches while the array stays in them, falling to the memory's rate as
    it outgrows what they keep. Keys: the sizes."""
    ones = np.ones((1, 4096), dtype=np.float32)
    arrays = {mib: np.ones(((mib << 20) // (4 * 4096), 4096), dtype=np.float32) for mib in sizes_mib}
    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        fns = {mib: functools.partial(_sum_rows, a, ones, threads) for mib, a in arrays.items()}
        timed = interleaved_medians(fns, budget=budget, max_repeats=dict.fromkeys(fns, 400))
    finally:
        numba.set_num_threads(saved)
    return {mib: arrays[mib].nbytes / timed[mib][0] for mib in sizes_mib}


def _sum_rows(rows, ones, threads, k):
    return _row_sums(rows, ones, threads)


def routing_after_leaves(depth=12, batch=4096, threads=THREADS, rounds=100):
    """Median times (s) of routing a new input batch (``engine.route``) right after routing another batch ("after
    routing") and right after the leaf evaluation of another batch ("after a leaf evaluation"), the arrangements
    taking turns; the inputs come from a pool of five batches, larger than the L3, in all. In trees deeper than
    ``kernels.DEEP_LEVEL`` levels, also the routing of the first ``DEEP_LEVEL`` levels alone (the same node rows of
    the same model, a tree cut there) after a leaf evaluation: what the deep levels add."""
    model, pool, leaves = _model_and_batches(depth, batch, threads, seed=6)
    p = model.params
    P = len(pool)
    top = kernels.DEEP_LEVEL
    cut = (1 << top) - 1

    def route(k, d=depth, weights=p["node_weights"], biases=p["node_biases"]):
        return engine.route(pool[k % P], weights, biases, d, n_jobs=threads)

    def leaf_evaluation(k):
        return engine.leaf_outputs(pool[k % P], leaves[k % P], p, "relu", n_jobs=threads)

    arrangements = {"after routing": (route, route), "after a leaf evaluation": (leaf_evaluation, route)}
    if depth > top:
        top_only = functools.partial(route, d=top, weights=p["node_weights"][:cut], biases=p["node_biases"][:cut])
        if not np.array_equal(top_only(0), leaves[0] >> (depth - top)):
            raise AssertionError("routing_after_leaves: the cut tree routes otherwise than the whole tree's top")
        arrangements[f"the first {top} levels alone, after a leaf evaluation"] = (leaf_evaluation, top_only)
    times = {name: [] for name in arrangements}
    settle()
    for k in range(rounds):
        for name, (before, timed) in arrangements.items():
            before(2 * k)
            t = perf_counter()
            timed(2 * k + 1)
            times[name].append(perf_counter() - t)
    return {name: float(np.median(v[1:])) for name, v in times.items()}


def _leaf_outputs(x, leaves, params, threads, k):
    return engine.leaf_outputs(x, leaves, params, "relu", n_jobs=threads)


def _route_from_pool(pool, node_weights, node_biases, depth, threads, k):
    return engine.route(pool[k % len(pool)], node_weights, node_biases, depth, n_jobs=threads)


def _ratio_rows(times, base):
    """Table rows of median times (s) by name: the name, the time in ms, its ratio to ``base``."""
    return [[name, f"{t * 1e3:.3f} ms", f"{t / base:.2f}"] for name, t in times.items()]


def run(quick=False, *, threads=THREADS) -> Section:
    batch = 512 if quick else 4096
    budget = 0.2 if quick else 1.0
    loads = load_alignment(2_000 if quick else 200_000)
    dots = dot_alignment(2 if quick else 50)
    traffic = input_traffic(6 if quick else 9, batch=batch, threads=threads, budget=budget)
    depths = (6, 9) if quick else (9, 12)
    rows_bytes = node_row_bytes(depths, batch=batch, threads=threads, budget=budget)
    footprint_depth = 6 if quick else 9
    footprint = leaf_footprint(footprint_depth, batch=batch, threads=threads, budget=budget)
    reuse_sizes = (4, 48) if quick else (4, 8, 12, 16, 20, 24, 32, 48, 96)
    reuse = cache_reuse(reuse_sizes, threads=threads, budget=budget)
    steps_depth = 6 if quick else 9
    steps = routing_steps(steps_depth, batch=batch, threads=threads, budget=budget, repeats=50 if quick else 2_000)
    overlap_depth = 9 if quick else 12
    after = routing_after_leaves(overlap_depth, batch=batch, threads=threads, rounds=10 if quick else 100)
    overlap = routing_overlap(overlap_depth, batch=batch, threads=threads, budget=budget) if threads >= 2 else None
    stream = leaf_stream(overlap_depth, batch=batch, threads=threads, budget=budget)
    ms = 1e3
    body = [
        ["sum of 3136 float32 in L1 (196 16-lane loads), one thread", f"{loads[0] * 1e9:.1f} ns",
         f"{loads[16] * 1e9:.1f} ns", f"{loads[16] / loads[0]:.2f}"],
        ["node dot product of 784, rows in L1/L2 (depth 3, 256 samples), one thread", f"{dots[0] * 1e9:.1f} ns",
         f"{dots[16] * 1e9:.1f} ns", f"{dots[16] / dots[0]:.2f}"],
    ]
    md = [
        ("Vector loads and alignment: the array starts on a 64-byte boundary, or 16 bytes past one (where NumPy puts "
         "a large array). Every 16-lane load of an array 16 bytes off straddles two cache lines."),
        "",
        table(["probe", "aligned to 64 bytes", "16 bytes past", "ratio"], body),
        "",
        (f"Input traffic, depth {6 if quick else 9}, leaf 16, batch {batch}, {threads} threads: a new input batch at "
         "every call (from a pool of five, larger than the L3) or the same batch at every call (read again from the "
         "caches)."),
        "",
        table(["part", "new input per call", "same input at every call", "difference"], [
            [part, f"{traffic[part + ' new'] * ms:.3f} ms", f"{traffic[part + ' same'] * ms:.3f} ms",
             f"{(traffic[part + ' new'] - traffic[part + ' same']) * ms:.3f} ms"]
            for part in ("route", "leaves")]),
        "",
        (f"Node-row bytes: routing at batch {batch}, {threads} threads, with inputs of 784 and of 392 values (node "
         "rows and input rows half as long; the same number of dot products)."),
        "",
        table(["depth", "784 inputs", "392 inputs", "ratio"], [
            [d, f"{rows_bytes[(d, INPUT_WIDTH)] * ms:.3f} ms", f"{rows_bytes[(d, INPUT_WIDTH // 2)] * ms:.3f} ms",
             f"{rows_bytes[(d, INPUT_WIDTH)] / rows_bytes[(d, INPUT_WIDTH // 2)]:.2f}"] for d in depths]),
    ]
    step_rows = [
        ("fixed rows, aligned", "two dot products per loop, rows in cache, each level's rows fixed in advance; input "
         "rows aligned to 64 bytes (one thread)"),
        ("fixed rows", "the same, input rows 16 bytes past a 64-byte boundary, as NumPy places them (read as whole "
         "lines)"),
        ("dependent", "each level's node rows given by the logits of the level before (the walk's dependency)"),
        ("pair walk", "the engine's pair walk (`_route_pair`, its prefetches included) on the same two samples"),
        ("left, same batch", f"a batch, every node sending its samples left (node rows in cache), the same batch at "
         f"every call ({threads} threads)"),
        ("left, new batch", "the same, a new input batch per call (input rows from memory)"),
        ("model, new batch", "a batch routed by the model's nodes (paths spread over the tree), a new input batch per "
         "call"),
    ]
    whole = steps["model, new batch"]
    md += [
        "",
        (f"Routing step by step, depth {steps_depth}, batch {batch}: the time per node dot product and core, from two "
         "dot products in cache up to routing a batch as `FFF.route` does; each row adds one thing to the row "
         "before it (the first two differ only in the input rows' alignment)."),
        "",
        table(["step", "per dot product and core", "of the last row"], [
            [label, f"{steps[key] * 1e9:.1f} ns", f"{steps[key] / whole:.0%}"] for key, label in step_rows]),
    ]
    n_leaves = 2**footprint_depth
    few = max(1, n_leaves // 8)
    mb = 1e-6 * 16 * 4  # MB of W1 per leaf and input
    md += [
        "",
        (f"Leaf weights and the L3: depth {footprint_depth}, leaf 16, batch {batch}, {threads} threads, the same input "
         f"batch at every call, the grouped leaf evaluation alone, its samples in full tiles of {kernels.TILE} (sample "
         f"s sent to leaf (s // {kernels.TILE}) mod n) on all {n_leaves} leaves or on {few}: the same tiles and "
         "multiply-adds; only the "
         f"bytes of leaf weights differ. The L3 holds 32 MiB; the batch takes {batch * 4e-6 * INPUT_WIDTH:.1f} MB at "
         "784 inputs."),
        "",
        table(["inputs", f"{n_leaves} leaves", f"{few} leaves", "ratio"], [
            [n_in, f"{footprint[(n_in, n_leaves)] * ms:.3f} ms ({n_leaves * n_in * mb:.1f} MB of W1)",
             f"{footprint[(n_in, few)] * ms:.3f} ms ({few * n_in * mb:.1f} MB)",
             f"{footprint[(n_in, n_leaves)] / footprint[(n_in, few)]:.2f}"]
            for n_in in (INPUT_WIDTH, INPUT_WIDTH // 2)]),
    ]
    md += [
        "",
        (f"Data the caches keep: one array summed over and over, {threads} threads (16-lane loads). The L3 holds "
         "32 MiB, shared with the rest of the machine; the read rate falls to the memory's as the array outgrows the "
         "part of it the process finds again."),
        "",
        table(["array", "read rate"], [[f"{mib} MiB", f"{reuse[mib] / 1e9:.1f} GB/s"] for mib in reuse_sizes]),
        "",
        (f"Routing after the leaf stream, depth {overlap_depth}, leaf 16, batch {batch}, {threads} threads, a new "
         "input batch per routing: right after routing another batch (the node rows are still in the caches) or "
         "right after another batch's leaf evaluation, as in back-to-back predict calls (the leaf weights stream "
         f"through the caches in between). Median of the routing alone. In trees deeper than {kernels.DEEP_LEVEL} "
         f"levels, also the first {kernels.DEEP_LEVEL} levels alone (the same model's node rows, its tree cut there), "
         "after a leaf evaluation: the rest of the routing is the deep levels' cost."),
        "",
        table(["routing", "time", "ratio"], _ratio_rows(after, after["after routing"])),
    ]
    if overlap:
        base = overlap["route, then read"]
        md += [
            "",
            (f"Routing under the leaf stream, depth {overlap_depth}, leaf 16, batch {batch}, {threads} threads, a new "
             "input batch per call: routing every sample (in pairs, as the engine does) and a bare read of the W1 of "
             "the leaves the batch reaches (in increasing order, as the grouped evaluation visits them), run one "
             "after the other, interleaved on each core (each thread reads a leaf, then routes that leaf's share of "
             "its samples; the hardware has the next leaf's lines to stream while the dot products run), or side by "
             "side (one thread routes every sample while the other threads read every leaf)."),
            "",
            table(["run", "time", "vs route, then read"], _ratio_rows(overlap, base)),
        ]
    read = stream["bare read"]
    md += [
        "",
        (f"The leaf stream and its arithmetic, depth {overlap_depth}, leaf 16, batch {batch}, {threads} threads: the "
         "tiles of the grouped leaf evaluation (samples sorted by leaf beforehand) with a new input batch per call; "
         "the same tiles with each run of tiles reading its input rows from 8 rows of its own, which stay in the "
         "core's caches (the same leaves, tiles and multiply-adds, no input traffic); a bare read of the weights of "
         f"the leaves the batch reaches ({stream['leaf bytes'] / 2**20:.1f} MiB), in the same order and threads."),
        "",
        table(["run", "time", "leaf weights per second", "vs the bare read"], [
            [name, f"{stream[name] * ms:.3f} ms", f"{stream['leaf bytes'] / stream[name] / 1e9:.1f} GB/s",
             f"{stream[name] / read:.2f}"] for name in ("tiles", "tiles, input rows in cache", "bare read")]),
    ]
    return Section("Engine probes: loads, alignment, input traffic, node-row bytes, leaf weights and the L3, data the "
                   "caches keep, routing step by step, after and under the leaf stream, the leaf stream and its "
                   "arithmetic",
                   "\n".join(md),
                   figures={"loads": loads, "dots": dots, "traffic": traffic, "node_rows": rows_bytes,
                            "footprint": footprint, "reuse": reuse, "steps": steps, "after": after, "overlap": overlap,
                            "stream": stream})


def main(argv=None):
    section_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
