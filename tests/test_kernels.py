"""The Numba hard-inference engine (fffcpu.engine, fffcpu.kernels) against the NumPy reference and tests/naive.py."""

import os
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest

import fffcpu
from fffcpu import FFF, engine
from fffcpu.kernels import fff as kernels

import naive

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}
PATHS = ("serial", "parallel", "grouped")


def random_model(depth, dtype="float64", seed=0, *, leaf_width=None, input_width=None, activation="relu"):
    rng = np.random.default_rng(seed + 1000 * depth)
    n_in = int(input_width or rng.integers(1, 70))
    width = int(leaf_width or rng.choice([1, 2, 5, 16, 17, 33]))
    model = FFF(n_in, width, int(rng.integers(1, 12)), depth, dtype=dtype, seed=seed, activation=activation)
    model.params["node_biases"][...] = rng.normal(size=model.n_nodes) * 0.5
    return model, rng


def reference(model, x):
    x = np.asarray(x, dtype=model.dtype)
    leaves = model._route_reference(x)
    return leaves, model._hard_outputs_reference(x, leaves)


def clear_rows(model, x, margin=1e-6):
    """Samples whose every logit on the hard path is farther than ``margin`` from 0 (float64 logits)."""
    return naive.fff_min_margin(model, x) > margin


def all_paths(model, x):
    p = model.params
    outs = {m: engine.predict(x, p, model.depth, model.activation, method=m) for m in PATHS}
    routes = {m: engine.route(x, p["node_weights"], p["node_biases"], model.depth, method=m) for m in ("serial", "parallel")}
    routes["training"] = engine.route_flipped(x, p["node_weights"], p["node_biases"], model.depth)
    return outs, routes


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("depth", range(11))
@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_every_path_matches_reference(depth, n, dtype):
    model, rng = random_model(depth, dtype, seed=n)
    x = rng.normal(size=(n, model.input_width)).astype(dtype)
    leaves_ref, y_ref = reference(model, x)
    clear = clear_rows(model, x)
    outs, routes = all_paths(model, x)
    for method, y in outs.items():
        assert y.shape == (n, model.output_width) and y.dtype == np.dtype(dtype)
        np.testing.assert_allclose(y[clear], y_ref[clear], **TOL[dtype], err_msg=method)
        # every path gives the same bits (one fixed order of operations per sample)
        np.testing.assert_array_equal(y, outs["serial"], err_msg=method)
    for method, leaves in routes.items():
        assert leaves.dtype == np.int64
        np.testing.assert_array_equal(leaves[clear], leaves_ref[clear], err_msg=method)
        np.testing.assert_array_equal(leaves, routes["serial"])
    np.testing.assert_array_equal(model.route(x), routes["serial"])
    np.testing.assert_array_equal(model.predict(x), outs["serial"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("depth", [1, 2, 5, 9])
def test_training_routing_applies_region_leak_flips(depth, dtype):
    model, rng = random_model(depth, dtype, seed=3)
    x = rng.normal(size=(500, model.input_width)).astype(dtype)
    flips = rng.random((500, model.n_nodes)) < 0.3
    w, b = (model.params[k].astype(np.float64) for k in ("node_weights", "node_biases"))
    node, margin = np.zeros(500, dtype=np.int64), np.full(500, np.inf)
    rows = np.arange(500)
    for _ in range(depth):  # the NumPy walk, each decision swapped where flips says so
        logit = np.einsum("bi,bi->b", x.astype(np.float64), w[node]) + b[node]
        margin = np.minimum(margin, np.abs(logit))
        node = 2 * node + 1 + ((logit >= 0) ^ flips[rows, node])
    leaves = engine.route_flipped(x, model.params["node_weights"], model.params["node_biases"], depth, flips)
    clear = margin > 1e-4
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(leaves[clear], (node - model.n_nodes)[clear])
    none = engine.route_flipped(x, model.params["node_weights"], model.params["node_biases"], depth,
                                np.zeros_like(flips))
    np.testing.assert_array_equal(none, model.route(x))  # no flips: route's bits


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("leaf_width", [1, 2, 4, 8, 15, 16, 31, 48, kernels.WIDE - 1, kernels.WIDE, kernels.WIDE + 19])
@pytest.mark.parametrize("input_width", [1, 3, 4, 5, 16, 47, 63, 64, 80, 112, 130, 784])
def test_leaf_widths_and_input_widths_around_block_edges(leaf_width, input_width, dtype):
    model, rng = random_model(3, dtype, leaf_width=leaf_width, input_width=input_width)
    x = rng.normal(size=(37, input_width)).astype(dtype)
    leaves_ref, y_ref = reference(model, x)
    clear = clear_rows(model, x)
    outs, _ = all_paths(model, x)
    for y in outs.values():
        np.testing.assert_allclose(y[clear], y_ref[clear], **TOL[dtype])
        np.testing.assert_array_equal(y, outs["serial"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("leaf_width", [3, 4, 16, 20])
def test_leaf_tiles_in_any_split_give_the_per_sample_bits(leaf_width, dtype):
    # The grouped evaluation prefetches, while one tile computes, the next tile's input rows and (at a leaf's
    # first tile) the next leaf's W1; leaves with several tiles, single-sample tiles, unreached leaves and runs
    # split at every tile boundary must all give the bits of evaluating each sample on its own.
    model, rng = random_model(4, dtype, leaf_width=leaf_width, input_width=70)
    p = model.params
    x = rng.normal(size=(400, 70)).astype(dtype)
    leaves = np.concatenate([np.full(30, 3), rng.integers(0, model.n_leaves, 360), [15, 0, 7, 7, 9, 1, 1, 1, 2, 14]])
    leaves[leaves == 5] = 6  # an unreached leaf
    act = kernels.ACTIVATION_CODES["relu"]
    expected = np.empty((len(x), model.output_width), dtype)
    kernels._eval_leaves_serial(x, leaves, p["w1s"], p["b1s"], p["w2s"], p["b2s"], act, expected)
    order = kernels._leaf_order(leaves, model.n_leaves)
    starts, tile_leaf = kernels._make_tiles(leaves, order, kernels.TILE)
    assert np.bincount(leaves, minlength=model.n_leaves).max() > kernels.TILE and np.any(np.diff(starts) == 1)
    got = np.full_like(expected, np.nan)
    kernels._eval_tiles_serial(x, order, starts, tile_leaf, p["w1s"], p["b1s"], p["w2s"], p["b2s"], act, got)
    np.testing.assert_array_equal(got, expected)
    for n_chunks in (2, 3, 7, len(tile_leaf)):
        got = np.full_like(expected, np.nan)
        kernels._eval_tiles_parallel(x, order, starts, tile_leaf, p["w1s"], p["b1s"], p["w2s"], p["b2s"], act, got,
                                     n_chunks)
        np.testing.assert_array_equal(got, expected, err_msg=f"{n_chunks} chunks")
    np.testing.assert_allclose(expected, model._hard_outputs_reference(x, leaves), **TOL[dtype])


def test_the_next_tiles_rows_stream_in_through_the_blocks_of_tiles_of_2_or_more():
    # _eval_tile_run prefetches, when a tile starts, the next tile's rows that the tile's blocks will not
    stream = kernels._streamed_rows
    assert [stream(count, 16, 8) for count in (1, 2, 3, 4, 5, 7, 8)] == [0, 4, 4, 4, 8, 8, 8]
    assert stream(8, 16, 3) == 3 and stream(4, 16, 0) == 0 and stream(2, 16, 1) == 1
    assert stream(8, kernels.WIDE + 19, 8) == 8 and stream(4, 17, 5) == 4 and stream(4, kernels.WIDE, 8) == 4
    assert stream(3, kernels.WIDE, 8) == 0 and stream(3, kernels.WIDE - 1, 8) == 4  # long-row loops below 4
    for narrow_or_masked_only in (*kernels.NARROW, 3, 12, 15):
        assert stream(8, narrow_or_masked_only, 8) == 0


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_leaves", [16, kernels.COUNTING_SORT_LEAVES + 3])
def test_grouped_evaluation_in_one_call_gives_the_per_sample_bits(n_leaves, threads):
    # _eval_grouped sorts the samples by leaf (a counting sort, or a merge sort when there are many more leaves
    # than samples), makes the tiles and evaluates them in one compiled call: the bits of each sample on its own.
    rng = np.random.default_rng(n_leaves)
    n_in, width, n_out = 5, 3, 2
    w1s = rng.normal(size=(n_leaves, n_in, width)).astype(np.float32)
    b1s = rng.normal(size=(n_leaves, width)).astype(np.float32)
    w2s = rng.normal(size=(n_leaves, width, n_out)).astype(np.float32)
    b2s = rng.normal(size=(n_leaves, n_out)).astype(np.float32)
    x = rng.normal(size=(300, n_in)).astype(np.float32)
    leaves = rng.integers(0, n_leaves, size=len(x))
    leaves[:20] = n_leaves - 1  # a leaf with several tiles
    act = kernels.ACTIVATION_CODES["relu"]
    expected = np.empty((len(x), n_out), np.float32)
    kernels._eval_leaves_serial(x, leaves, w1s, b1s, w2s, b2s, act, expected)
    got = np.full_like(expected, np.nan)
    with engine.num_threads(threads):
        kernels._eval_grouped(x, leaves, w1s, b1s, w2s, b2s, act, got, threads)
    np.testing.assert_array_equal(got, expected)


def narrow_order(x, w1):
    """The pre-activations of a leaf 1, 2, 4 or 8 units wide summed in the order ``kernels._make_narrow_block``
    documents, one IEEE operation at a time in the dtype of ``x`` (NumPy's elementwise ops do not fuse)."""
    n_in, w = w1.shape
    dt = x.dtype.type
    rows = 16 * (n_in // 16)
    run_x, run_w = np.repeat(x[:rows], w), w1[:rows].reshape(-1)  # flat run f = i*w + j
    acc = np.zeros((4, 16), x.dtype)
    for c in range(len(run_x) // 16):
        acc[c % 4] = acc[c % 4] + run_x[16 * c:16 * c + 16] * run_w[16 * c:16 * c + 16]
    v = (acc[0] + acc[1]) + (acc[2] + acc[3])
    out = np.empty(w, x.dtype)
    for j in range(w):
        lanes = list(v[j::w])
        while len(lanes) > 1:
            lanes = [dt(lanes[k] + lanes[k + 1]) for k in range(0, len(lanes), 2)]
        total = lanes[0]
        for i in range(rows, n_in):
            total = dt(total + dt(x[i] * w1[i, j]))
        out[j] = total
    return out


def block_order(x, w1):
    """The pre-activations of the 16-unit blocks (and of the masked blocks for the other widths below ``WIDE``):
    ``(p0 + p1) + (p2 + p3)`` with ``p_r`` the sum of ``x[i] * w1[i, j]`` over ``i ≡ r (mod 4)`` in increasing i,
    one IEEE operation at a time (every unit at once: each NumPy elementwise op rounds once per unit)."""
    p = np.zeros((4, w1.shape[1]), x.dtype)
    for i in range(len(x)):
        p[i % 4] = p[i % 4] + x[i] * w1[i]
    return (p[0] + p[1]) + (p[2] + p[3])


@numba.njit
def _dots_with_column(x, w):
    n = x.shape[1]
    return np.array([kernels._dot(x, s * n, w, 0, n) for s in range(x.shape[0])])


def dot_order(a, b):
    """``kernels._dot`` in NumPy, in its documented order: lane k of four 16-lane accumulators sums the i ≡ k
    (mod 16) of successive 64-element blocks, the full 16-element vectors after the last block go to accumulators
    0, 1, 2, the accumulators combine as (q0 + q1) + (q2 + q3), the lanes as a pairwise tree, and the last n mod 16
    products are added one by one."""
    n, lanes = len(a), kernels.LANES
    acc = np.zeros((4, lanes), dtype=a.dtype)
    n64, n16 = n // (4 * lanes) * 4 * lanes, n // lanes * lanes
    for e in range(0, n16, lanes):
        q = (e // lanes) % 4 if e < n64 else (e - n64) // lanes
        acc[q] = acc[q] + a[e:e + lanes] * b[e:e + lanes]
    v = (acc[0] + acc[1]) + (acc[2] + acc[3])
    while len(v) > 1:
        v = v[0::2] + v[1::2]
    total = v[0]
    for i in range(n16, n):
        total = total + a[i] * b[i]
    return total


@numba.njit
def _dot_pairs(x, w):
    """``kernels._dot_pair`` on rows (s, s + 1) of x against rows (s, s + 1) of w."""
    n = x.shape[1]
    out = np.empty(x.shape[0], dtype=x.dtype)
    for s in range(0, x.shape[0] - 1, 2):
        out[s], out[s + 1] = kernels._dot_pair(x, s * n, s * n, (s + 1) * n, (s + 1) * n, w, n)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [784, 130, 100, 64, 63, 37, 16, 5])
def test_dot_products_sum_in_the_documented_order_wherever_the_rows_start(n, dtype):
    # The rows of x start at every element offset within a cache line (a row that does not start on one is read
    # as whole lines, shifted in registers, where the CPU has AVX-512): the bits of the documented order each time.
    rng = np.random.default_rng(n)
    w = rng.normal(size=(16, n)).astype(dtype)
    values = rng.normal(size=(16, n)).astype(dtype)
    expected = np.array([dot_order(values[s], w[s]) for s in range(16)])
    size = np.dtype(dtype).itemsize
    buffer = np.empty(16 * n + 2 * 64 // size, dtype=dtype)
    first = (-buffer.ctypes.data % 64) // size  # the first element on a 64-byte boundary
    for offset in range(64 // size):
        x = buffer[first + offset:first + offset + 16 * n].reshape(16, n)
        x[...] = values
        np.testing.assert_array_equal(_dots_with_column_rows(x, w), expected, err_msg=f"offset {offset}")
        np.testing.assert_array_equal(_dot_pairs(x, w), expected, err_msg=f"offset {offset}")


@numba.njit
def _dots_with_column_rows(x, w):
    n = x.shape[1]
    return np.array([kernels._dot(x, s * n, w, s * n, n) for s in range(x.shape[0])])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("depth", [kernels.DEEP_LEVEL - 1, kernels.DEEP_LEVEL, kernels.DEEP_LEVEL + 1,
                                   kernels.DEEP_LEVEL + 3])
def test_routing_in_blocks_gives_the_bits_of_one_sample_at_a_time(depth, dtype):
    # Levels from DEEP_LEVEL on are routed level by level over blocks of samples: every batch size (blocks of
    # uneven sizes, a last sample alone, fewer pairs than ROUTE_MIN_BLOCKS) and input width (rows of x and of the
    # node weights that start off a cache line) gives the leaves of _route_one, serial and parallel.
    rng = np.random.default_rng(depth)
    for n_in in (16, 37, 784):
        node_weights = rng.normal(size=(2**depth - 1, n_in)).astype(dtype)
        node_biases = (rng.normal(size=2**depth - 1) * 0.1).astype(dtype)
        for n in (1, 2, 3, 2 * kernels.ROUTE_BLOCK, 2 * kernels.ROUTE_BLOCK + 1, 7 * kernels.ROUTE_BLOCK + 6, 1001):
            x = rng.normal(size=(n, n_in)).astype(dtype)
            expected = np.array([kernels._route_one(x, s, node_weights, node_biases, depth) for s in range(n)])
            for route in (kernels._route_serial, kernels._route_parallel):
                leaves = np.full(n, -7, dtype=np.int64)
                route(x, node_weights, node_biases, depth, leaves)
                np.testing.assert_array_equal(leaves, expected, err_msg=f"{route.__name__}, n_in {n_in}, n {n}")
            assert len(np.unique(expected)) > min(n, 2**depth) // 4  # the samples spread over the tree


def test_inputs_at_every_offset_route_and_predict_with_the_same_bits():
    model = FFF(784, 16, 10, 9, dtype="float32", seed=0)
    values = np.random.default_rng(0).normal(size=(300, 784)).astype(np.float32)
    leaves, y = model.route(values), model.predict(values)
    buffer = np.empty(values.size + 32, dtype=np.float32)
    first = (-buffer.ctypes.data % 64) // 4
    for offset in range(16):
        x = buffer[first + offset:first + offset + values.size].reshape(values.shape)
        x[...] = values
        np.testing.assert_array_equal(model.route(x), leaves, err_msg=f"offset {offset}")
        np.testing.assert_array_equal(model.predict(x), y, err_msg=f"offset {offset}")
        np.testing.assert_array_equal(model.predict(x[:1]), y[:1], err_msg=f"offset {offset}")


GENERIC_TARGET = """
import sys
import numpy as np
import fffcpu
from fffcpu.kernels import fff
model = fffcpu.FFF(784, 16, 10, 6, dtype="float32", seed=0)
x = np.load(sys.argv[1])
np.save(sys.argv[2], model.predict(x))
np.save(sys.argv[3], model.route(x))
print(fff._SHIFTED_LINES)
"""


def test_a_generic_target_gives_the_same_bits(tmp_path):
    # NUMBA_CPU_NAME=generic (a cache for any x86-64) compiles the kernels without AVX-512: the plain loads
    # instead of the shifted lines, the same order of operations, so the same bits
    model = FFF(784, 16, 10, 6, dtype="float32", seed=0)
    x = np.random.default_rng(0).normal(size=(300, 784)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NUMBA_CPU_FEATURES", None)
    result = subprocess.run([sys.executable, "-c", GENERIC_TARGET, str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                             str(tmp_path / "leaves.npy")], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False"]  # the generic target has no AVX-512
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model.predict(x))
    np.testing.assert_array_equal(np.load(tmp_path / "leaves.npy"), model.route(x))


#: Leaves of the samples in the order tests: leaf 0 gets a tile of 6 samples (a block of 4, then single samples),
#: leaf 1 a tile of 5, leaf 2 a tile of 2.
# Leaf 0: one tile of 7 samples (blocks of 4 and 3); leaf 1: 5 (4 and 1); leaf 2: 10, tiles of 8 (4 and 4) and 2
# (a block of 2; for leaves of WIDE units or more, the long-row loops)
ORDER_TEST_LEAVES = np.array([0, 0, 2, 0, 1, 2, 2, 0, 1, 2, 0, 2, 1, 2, 0, 2, 1, 2, 0, 2, 1, 2])


def exact_preactivations(x, w1s, leaves):
    """The engine's hidden pre-activations, read exactly: identity activation, zero biases and W2 = I, so that
    each output is one pre-activation (adding exact zeros to it changes no bit)."""
    n_leaves, _, width = w1s.shape
    dtype = x.dtype
    order = kernels._leaf_order(leaves, n_leaves)
    starts, tile_leaf = kernels._make_tiles(leaves, order, kernels.TILE)
    got = np.empty((len(x), width), dtype)
    kernels._eval_tiles_serial(x, order, starts, tile_leaf, w1s, np.zeros((n_leaves, width), dtype),
                               np.repeat(np.eye(width, dtype=dtype)[None], n_leaves, axis=0),
                               np.zeros((n_leaves, width), dtype), kernels.ACTIVATION_CODES["identity"], got)
    return got


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("leaf_width", kernels.NARROW)
def test_narrow_leaves_sum_in_the_documented_order(leaf_width, dtype):
    rng = np.random.default_rng(leaf_width)
    leaves = ORDER_TEST_LEAVES
    for n_in in (1, 3, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 80, 100, 784):
        w1s = rng.normal(size=(3, n_in, leaf_width)).astype(dtype)
        x = rng.normal(size=(len(leaves), n_in)).astype(dtype)
        got = exact_preactivations(x, w1s, leaves)
        expected = np.array([narrow_order(x[s], w1s[leaves[s]]) for s in range(len(x))])
        np.testing.assert_array_equal(got, expected, err_msg=f"input width {n_in}")
        if leaf_width == 1:  # a 1-unit leaf is the node dot product of routing
            for leaf in range(3):
                np.testing.assert_array_equal(got[leaves == leaf, 0],
                                              _dots_with_column(x, w1s[leaf].reshape(1, -1))[leaves == leaf])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("leaf_width", [3, 12, 16, 17, 20, 33, kernels.WIDE, kernels.WIDE + 19])
def test_blocks_and_masked_blocks_sum_in_the_documented_order(leaf_width, dtype):
    # tiles of 7, 5, 8 and 2 samples: blocks of 4, 3, 2 and 1 samples; for leaves of WIDE units or more the tile
    # of 2 goes through the long-row loops instead; all must give these bits
    rng = np.random.default_rng(leaf_width)
    leaves = ORDER_TEST_LEAVES
    starts, _ = kernels._make_tiles(leaves, kernels._leaf_order(leaves, 3), kernels.TILE)
    assert sorted(np.diff(starts)) == [2, 5, 7, 8]
    for n_in in (1, 2, 3, 4, 5, 7, 70, 784):
        w1s = rng.normal(size=(3, n_in, leaf_width)).astype(dtype)
        x = rng.normal(size=(len(leaves), n_in)).astype(dtype)
        expected = np.array([block_order(x[s], w1s[leaves[s]]) for s in range(len(x))])
        np.testing.assert_array_equal(exact_preactivations(x, w1s, leaves), expected, err_msg=f"input width {n_in}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("leaf_width", [1, 16, 20, kernels.WIDE + 44])
@pytest.mark.parametrize("output_width", [1, 10, 16, 17, 40])
def test_outputs_sum_in_the_documented_order(output_width, leaf_width, dtype):
    # y_k = (Σ_j h_j w2[j, k]) + b2[k], from 0 in increasing j; h read exactly through W2 = I and b2 = 0
    rng = np.random.default_rng(output_width + leaf_width)
    n, n_in = 11, 40
    w1s = rng.normal(size=(1, n_in, leaf_width)).astype(dtype)
    b1s = rng.normal(size=(1, leaf_width)).astype(dtype)
    x = rng.normal(size=(n, n_in)).astype(dtype)
    leaves = np.zeros(n, np.int64)
    order = kernels._leaf_order(leaves, 1)
    starts, tile_leaf = kernels._make_tiles(leaves, order, kernels.TILE)
    relu = kernels.ACTIVATION_CODES["relu"]
    h = np.empty((n, leaf_width), dtype)
    kernels._eval_tiles_serial(x, order, starts, tile_leaf, w1s, b1s, np.eye(leaf_width, dtype=dtype)[None],
                               np.zeros((1, leaf_width), dtype), relu, h)
    w2s = rng.normal(size=(1, leaf_width, output_width)).astype(dtype)
    b2s = rng.normal(size=(1, output_width)).astype(dtype)
    y = np.empty((n, output_width), dtype)
    kernels._eval_tiles_serial(x, order, starts, tile_leaf, w1s, b1s, w2s, b2s, relu, y)
    expected = np.zeros((n, output_width), dtype)
    for j in range(leaf_width):
        expected = expected + h[:, j:j + 1] * w2s[0, j]
    np.testing.assert_array_equal(y, expected + b2s[0])


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid", "identity"])
def test_every_activation_against_naive(activation):
    model, rng = random_model(4, "float64", activation=activation, leaf_width=19)
    x = rng.normal(size=(50, model.input_width))
    clear = clear_rows(model, x)
    for method in PATHS:
        y = engine.predict(x, model.params, model.depth, activation, method=method)
        np.testing.assert_allclose(y[clear], naive.fff_hard(model, x)[clear], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_leaf_outputs_for_given_leaves_match_predict_bits(dtype):
    model, rng = random_model(6, dtype, leaf_width=20)
    x = rng.normal(size=(500, model.input_width)).astype(dtype)
    leaves = model.route(x)
    y = model.predict(x)
    for method in PATHS:
        np.testing.assert_array_equal(engine.leaf_outputs(x, leaves, model.params, "relu", method=method), y)
    # arbitrary leaves (as region leak makes in hard training) against the reference
    other = rng.integers(0, model.n_leaves, size=len(x))
    np.testing.assert_allclose(model._hard_outputs(x, other), model._hard_outputs_reference(x, other), **TOL[dtype])
    with pytest.raises(ValueError, match="leaf ids must be in"):
        engine.leaf_outputs(x[:2], np.array([0, model.n_leaves]), model.params, "relu")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layouts_are_converted(dtype):
    model, rng = random_model(5, dtype, leaf_width=17, input_width=40)
    base = rng.normal(size=(64, 80))
    expected = model.predict(np.ascontiguousarray(base[:, ::2], dtype=dtype))
    fortran = np.asfortranarray(base[:, ::2])
    strided = base[:, ::2]  # non-contiguous float64
    readonly = np.ascontiguousarray(base[:, ::2], dtype=dtype)
    readonly.flags.writeable = False
    for x in (fortran, strided, readonly, fortran.astype(dtype), base[:, ::2].astype(np.float32 if dtype == "float64" else np.float64)):
        y = model.predict(x)
        if x.dtype == np.dtype(dtype):
            np.testing.assert_array_equal(y, expected)
        else:  # converted from the other precision first: equal to dtype tolerance
            np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(model.route(readonly), model.route(np.array(readonly)))


def test_logit_exactly_zero_goes_right_and_nan_goes_left():
    model = FFF(3, 2, 2, 3, dtype="float64", seed=0)
    model.params["node_weights"][...] = 0.0
    model.params["node_biases"][...] = 0.0
    x = np.ones((5, 3))
    for method in ("serial", "parallel"):
        assert (engine.route(x, model.params["node_weights"], model.params["node_biases"], 3, method=method) == 7).all()
    model, rng = random_model(4, "float64")
    x = rng.normal(size=(40, model.input_width))
    x[3, 0] = np.nan
    x[5, :] = np.nan
    for method in PATHS:
        y = engine.predict(x, model.params, model.depth, model.activation, method=method)
        assert np.isnan(y[[3, 5]]).all() and np.isfinite(np.delete(y, [3, 5], axis=0)).all()
    assert (model.route(x)[[3, 5]] == 0).all()  # NaN logits go left at every level


def test_inf_input_is_routed_by_the_same_rule():
    model = FFF(2, 3, 2, 2, dtype="float64", seed=0)
    model.params["node_weights"][...] = [[1.0, 0.0]] * 3
    model.params["node_biases"][...] = 0.0
    x = np.array([[np.inf, 0.0], [-np.inf, 0.0]])
    np.testing.assert_array_equal(model.route(x), [3, 0])  # +inf logit: right; -inf: left
    np.testing.assert_array_equal(model.route(x), naive.fff_route(model, x))


def test_dispatcher_choices():
    assert engine.choose_method(1, 2) == "serial"
    assert engine.choose_method(engine.SERIAL_MAX + 1, 2) == "parallel"
    assert engine.choose_method(engine.GROUPED_MIN, 2) == "grouped"
    assert engine.choose_method(10, 1) == "serial"
    assert engine.choose_method(engine.GROUPED_MIN, 1) == "grouped"
    # by shape: samples bound to share leaves, or wide leaves, go grouped below GROUPED_MIN
    assert engine.choose_method(64, 2, n_leaves=8, leaf_width=16) == "grouped"
    assert engine.choose_method(63, 2, n_leaves=8, leaf_width=16) == "parallel"
    assert engine.choose_method(63, 1, n_leaves=8, leaf_width=16) == "serial"
    wide = engine.GROUPED_WIDE_LEAF
    assert engine.choose_method(engine.SERIAL_MAX + 1, 2, n_leaves=512, leaf_width=wide) == "grouped"
    assert engine.choose_method(100, 2, n_leaves=512, leaf_width=engine.GROUPED_WIDE_LEAF - 1) == "parallel"
    assert engine.choose_method(engine.SERIAL_MAX, 2, n_leaves=1, leaf_width=1024) == "serial"
    # leaves of WIDE units or more: grouped only from 4 samples per leaf (smaller tiles share no loads)
    assert engine.choose_method(31, 2, n_leaves=8, leaf_width=kernels.WIDE) == "parallel"
    assert engine.choose_method(32, 2, n_leaves=8, leaf_width=kernels.WIDE) == "grouped"
    # by work: small batches run serially only while their multiply-adds stay below SERIAL_WORK
    light = engine.sample_work(784, 6, 16, 10)
    heavy = engine.sample_work(784, 3, 128, 10)
    assert light == 784 * 22 + 160 and engine.serial_rows(light) == engine.SERIAL_WORK // light == 8
    assert engine.choose_method(8, 2, 64, 16, light) == "serial"
    assert engine.choose_method(9, 2, 64, 16, light) == "parallel"
    assert engine.choose_method(8, 2, 8, 128, heavy) == "grouped"
    assert engine.serial_rows(10**9) == 1 and engine.choose_method(1, 2, 8, 8192, 10**9) == "serial"
    assert engine.serial_rows(1) == engine.SERIAL_MAX


@pytest.mark.parametrize("batch", [1, 2, 8, engine.SERIAL_MAX])
@pytest.mark.parametrize(("input_width", "leaf_width"), [(600, 160), (3000, 32)])  # grouped, parallel from 2
def test_small_batches_of_a_heavy_model_give_the_serial_bits(input_width, leaf_width, batch):
    # a model whose samples cost more than SERIAL_WORK / 2 multiply-adds: batches from 2 leave the lean serial
    # entry of FFF.predict for the threaded paths, with the same bits
    model = FFF(input_width, leaf_width, 3, 3, dtype="float32", seed=0)
    assert engine.serial_rows(model._sample_work) == 1
    x = np.random.default_rng(batch).normal(size=(batch, input_width)).astype(np.float32)
    expected = engine.predict(x, model.params, model.depth, model.activation, method="serial")
    for n_jobs in (1, 2):
        np.testing.assert_array_equal(model.predict(x, n_jobs=n_jobs), expected)
    if batch > 1 and engine.resolve_n_jobs(2) == 2:  # which path ran: not the serial kernel
        real, calls = kernels._predict_serial, []
        try:
            kernels._predict_serial = lambda *args: (calls.append(len(args[0])), real(*args))[1]
            np.testing.assert_array_equal(model.predict(x, n_jobs=2), expected)
        finally:
            kernels._predict_serial = real
        assert calls == []
    with pytest.raises(ValueError, match="method must be one of"):
        engine.predict(np.zeros((1, 3)), FFF(3, 2, 2, 1).params, 1, "relu", method="fast")


def test_n_jobs_sets_and_restores_threads():
    import numba

    model, rng = random_model(6, "float32", leaf_width=16)
    x = rng.normal(size=(1000, model.input_width)).astype(np.float32)
    before = numba.get_num_threads()
    y = model.predict(x)
    for n_jobs in (1, 2, -1, 64):
        np.testing.assert_array_equal(model.predict(x, n_jobs=n_jobs), y)
        np.testing.assert_array_equal(model.route(x, n_jobs=n_jobs), model.route(x))
        assert numba.get_num_threads() == before
    with engine.num_threads(1) as n:
        assert n == 1 and numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="n_jobs"):
        model.predict(x, n_jobs=0)
    with pytest.raises(TypeError, match="n_jobs"):
        model.predict(x, n_jobs=1.5)
    # the same checks on the small-batch path, which runs on the calling thread
    for small in (x[:1], x[:3]):
        for call in (model.predict, model.route):
            with pytest.raises(ValueError, match="n_jobs"):
                call(small, n_jobs=0)
            with pytest.raises(TypeError, match="n_jobs"):
                call(small, n_jobs="2")
            np.testing.assert_array_equal(call(small, n_jobs=1), call(small))


def test_concurrent_predict_from_threads_matches_sequential():
    model, rng = random_model(8, "float32", leaf_width=16, input_width=50)
    batches = [rng.normal(size=(n, 50)).astype(np.float32) for n in (1, 5, 40, 300, 2000, 1, 700, 33)]
    expected = [model.predict(x) for x in batches]
    results = {}

    def work(k):
        for rep in range(5):
            for j, x in enumerate(batches):
                results[k, rep, j] = model.predict(x, n_jobs=1 + (k + j) % 2)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 * 5 * len(batches)
    for (k, rep, j), y in results.items():
        np.testing.assert_array_equal(y, expected[j])


@pytest.mark.parametrize("method", ["predict", "route"])
def test_bad_input(method):
    model = FFF(4, 2, 2, 2)
    f = getattr(model, method)
    with pytest.raises(ValueError, match="x has 3 features, the model was built for input_width=4"):
        f(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="must be 2-D"):
        f(np.zeros((2, 2, 4)))
    # a batch that would not fit in memory is refused before anything is allocated (x is a broadcast view)
    huge = np.broadcast_to(np.zeros(4, dtype=np.float64), (10**12, 4))
    with pytest.raises(MemoryError, match="hard inference on 1,000,000,000,000 samples would need"):
        f(huge)


def test_hard_training_forward_equals_predict_bits_at_every_batch_size():
    model = FFF(30, 16, 5, 6, train_hardened=True, seed=3)
    rng = np.random.default_rng(3)
    for n in (1, 9, 200, 3000):
        x = rng.normal(size=(n, 30)).astype(np.float32)
        np.testing.assert_array_equal(model.forward(x), model.predict(x))


def test_no_batch_by_leaves_allocation():
    """Memory stays O(batch · (leaf_width + output_width)): a depth-20 tree (1M leaves) with a tiny batch."""
    import tracemalloc

    model = FFF(8, 2, 3, 20, seed=0)
    x = np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32)
    model.predict(x)  # compile
    tracemalloc.start()
    model.predict(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 512 * 200  # a (512, 2**20) array would be 2 GB


def test_warmup_runs_and_is_public():
    fffcpu.warmup(("float32",))
    assert "warmup" in fffcpu.__all__
    assert isinstance(engine.threading_layer(), str)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("depth", [0, 1, 5, 9])
def test_small_batch_fast_path_gives_the_checked_paths_bits(depth, dtype):
    """C-contiguous batches of the model dtype with up to SERIAL_MAX rows skip the conversions (is_ready)."""
    model, rng = random_model(depth, dtype, leaf_width=16, input_width=70)
    for n in (1, 2, 5, engine.SERIAL_MAX):
        x = rng.normal(size=(n, 70)).astype(dtype)
        assert engine.is_ready(x, 70, model.dtype)
        p = model.params
        np.testing.assert_array_equal(model.predict(x), engine.predict(x, p, depth, "relu", method="serial"))
        np.testing.assert_array_equal(model.predict(x), engine.predict(x, p, depth, "relu", method="grouped"))
        np.testing.assert_array_equal(model.route(x), engine.route(x, p["node_weights"], p["node_biases"], depth,
                                                                   method="parallel"))
        assert model.predict(x).dtype == np.dtype(dtype) and model.route(x).dtype == np.int64
    other = "float64" if dtype == "float32" else "float32"
    for x in (np.zeros((0, 70), dtype), np.zeros((3, 140), dtype)[:, ::2], np.zeros((3, 70), other),
              np.zeros((engine.SERIAL_MAX + 1, 70), dtype), np.zeros((2, 69), dtype), [[0.0] * 70]):
        assert not engine.is_ready(x, 70, model.dtype)
    with pytest.raises(ValueError, match="x has 69 features, the model was built for input_width=70"):
        model.predict(np.zeros((1, 69), dtype))


@pytest.mark.parametrize("n_leaves", [1, 2, 7, 4096])
def test_leaf_order_is_a_stable_argsort(n_leaves):
    leaves = np.random.default_rng(n_leaves).integers(0, n_leaves, size=1000)
    np.testing.assert_array_equal(kernels._leaf_order(leaves, n_leaves), np.argsort(leaves, kind="stable"))
    assert kernels._leaf_order(leaves[:0], n_leaves).shape == (0,)


@pytest.mark.parametrize("n_leaves", [1, 3, 64])
def test_tiles_cover_the_leaf_order_with_at_most_tile_samples_of_one_leaf(n_leaves):
    # the per-thread scratch holds TILE samples: a longer tile would write past it
    leaves = np.random.default_rng(n_leaves).integers(0, n_leaves, size=1000)
    order = kernels._leaf_order(leaves, n_leaves)
    starts, tile_leaf = kernels._make_tiles(leaves, order, kernels.TILE)
    assert starts[0] == 0 and starts[-1] == len(order) and len(tile_leaf) == len(starts) - 1
    sizes = np.diff(starts)
    assert sizes.min() >= 1 and sizes.max() <= kernels.TILE
    for s, e, leaf in zip(starts[:-1], starts[1:], tile_leaf):
        assert (leaves[order[s:e]] == leaf).all()
    # as few tiles as that allows: every leaf in ceil(count / TILE) tiles
    assert len(tile_leaf) == sum(-(-c // kernels.TILE) for c in np.bincount(leaves) if c)


def test_engine_checks_the_arrays_it_hands_to_the_kernels():
    # the kernels index the parameters by their shapes: arrays that do not form one FFF would be read out of bounds
    model = FFF(4, 2, 3, 2, seed=0)
    p, x = model.params, np.ones((20, 4), np.float32)
    nw, nb = p["node_weights"], p["node_biases"]
    cases = [
        (lambda: engine.predict(np.ones((20, 2), np.float32), p, 2, "relu"), ValueError,
         r"params do not form an FFF of depth 2 for inputs of width 2: node_weights must have shape \(3, 2\), got "
         r"\(3, 4\); w1s must have shape \(4, 2, 2\), got \(4, 4, 2\)"),
        (lambda: engine.predict(x, p, 3, "relu"), ValueError, r"depth 3 .* node_weights must have shape \(7, 4\)"),
        (lambda: engine.predict(x, p, 2, "swish"), ValueError, "activation must be one of .* got 'swish'"),
        (lambda: engine.predict(x[0], p, 2, "relu"), ValueError, r"x must be 2-D .* got shape \(4,\)"),
        (lambda: engine.predict(x, {**p, "b2s": np.zeros((4, 3))}, 2, "relu"), TypeError,
         r"params\['b2s'\] must be a C-contiguous float32 or float64 array of the dtype of w1s \(float32\), got "
         r"dtype float64"),
        (lambda: engine.predict(x, {**p, "w1s": np.zeros((2, 4, 2), np.float32)}, 2, "relu"), ValueError,
         r"w1s must have shape \(4, 4, 2\), got \(2, 4, 2\)"),
        (lambda: engine.predict(x, {"w1s": p["w1s"]}, 2, "relu"), TypeError, "params must be a dict with the arrays"),
        (lambda: engine.predict(x, p, -1, "relu"), ValueError, "depth must be an integer from 0 to 40, got -1"),
        (lambda: engine.route(x, nw, nb, 5), ValueError,
         r"a tree of depth 5 routing inputs of width 4 needs node_weights of shape \(31, 4\)"),
        (lambda: engine.route(x[:, :2], nw, nb, 2), ValueError, r"needs node_weights of shape \(3, 2\)"),
        (lambda: engine.route(x, nw.astype(np.float64), nb, 2), ValueError, "of one dtype"),
        (lambda: engine.route(x, np.asfortranarray(nw), nb, 2), TypeError, "node_weights must be a C-contiguous"),
        (lambda: engine.leaf_outputs(x, np.zeros(20, int), {**p, "b1s": np.zeros((4, 3), np.float32)}, "relu"),
         ValueError, r"b1s must have shape \(4, 2\), got \(4, 3\)"),
        (lambda: engine.route_flipped(x, nw, nb, 2, np.zeros((20, 2), bool)), ValueError,
         r"flips must have shape \(20, 3\) \(samples, nodes\), got \(20, 2\)"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_warmup_with_ultra_leaves_nothing_for_ultrafff_to_compile():
    """After ``warmup(ultra=True)`` an UltraFFF's inference, routing and training, on every batch size, compile no
    further kernel (a fresh process, so that no earlier test has compiled them)."""
    import subprocess
    import sys

    script = """
import numpy as np, numba, fffcpu
from fffcpu.kernels import ultra

def compiled():
    return {name: len(f.signatures) for name, f in vars(ultra).items()
            if isinstance(f, numba.core.dispatcher.Dispatcher)}

fffcpu.warmup("float32", ultra=True)
before = compiled()
model = fffcpu.UltraFFF(16, 8, 4, trees=2, dtype="float32", seed=0)
snapshot = model.to_bfloat16()
rng = np.random.default_rng(0)
for n in (1, 5, 40, 300):
    x = rng.normal(size=(n, 16)).astype(np.float32)
    model.predict(x); model.route(x); snapshot.predict(x); snapshot.route(x)
    y = model.forward(x); model.backward(np.ones_like(y)); model.backward(np.ones_like(y), input_grad=False)
fffcpu.train(model, rng.normal(size=(300, 16)), rng.normal(size=(300, 8)), loss="mse", epochs=1, progress=False)
after = compiled()
print(sum(before.values()), {k: (before[k], v) for k, v in after.items() if v != before[k]})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    warmed, new = result.stdout.split(" ", 1)
    assert int(warmed) >= 10 and new.strip() == "{}", result.stdout
