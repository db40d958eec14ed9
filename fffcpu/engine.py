"""The hard-inference engine: validates and converts arrays, picks a Numba kernel by batch size, controls threads.

This is the public face of ``fffcpu.kernels`` (stumpy-style: the kernels take only arrays and scalars;
everything a user can get wrong is checked here). ``FFF.predict`` and ``FFF.route`` call it; the readable
NumPy version of the same computation is ``FFF._route_reference`` / ``FFF._hard_outputs_reference``.

Paths (``method=``), all giving the same bits for the same sample:

``"serial"``
    one sample after the other on the calling thread: route, then evaluate that sample's leaf. The
    parallel launch costs more than the work at batch 1 (a few microseconds), so small batches go here.
``"parallel"``
    the same per-sample work, samples split into contiguous chunks over the Numba threads.
``"grouped"``
    route all samples in parallel, sort them by leaf (stable), and evaluate each leaf once for tiles of up
    to ``kernels.fff.TILE`` of its samples, so that a weight row read from memory serves every sample of the
    tile. Wins once several samples share a leaf.
``"auto"``
    serial up to ``SERIAL_MAX`` samples while their multiply-adds stay below ``SERIAL_WORK`` (``serial_rows``);
    grouped from ``GROUPED_MIN`` samples, and earlier when the samples are bound to share leaves or the leaves
    are wide (``choose_method``); otherwise parallel (serial with one thread).

Small batches (batch 1 is the common case) have a lean entry: when ``x`` is already a C-contiguous ndarray of
the model's dtype and width with at most ``SERIAL_MAX`` rows (``is_ready``; for ``predict``, one row or at most
``serial_rows``), ``FFF.predict`` / ``FFF.route`` call ``predict_small`` / ``route_small``, which go straight to
the serial kernel: no ``np.asarray``, no conversion, no memory check (such a batch cannot exceed memory), no
thread query. About 1 µs of Python per call remains (mostly Numba's unboxing of the ten arguments); everything
else takes the checked path with its error messages.

Memory: beyond the output (n, output_width), a call allocates O(n) integers (leaves, sort order, tiles)
and per-thread scratch of O(TILE · leaf_width); never an (n, 2**depth) array. A batch whose output and
bookkeeping would not fit in physical memory is refused before anything is allocated.

Threads: ``n_jobs`` sets the Numba thread count for the call (``numba.set_num_threads``, restored
afterwards; the setting is per calling thread, so concurrent calls do not disturb each other). The kernels
call no BLAS (their inner products are Numba/LLVM vector code), so BLAS threads never multiply Numba's; but
OpenBLAS (pthreads) and Numba's OpenMP pool both spin-wait briefly after work, so alternating large NumPy
matmuls and large ``predict`` calls with both pools at full size can oversubscribe the cores: cap one of them
(``threadpoolctl.threadpool_limits`` or ``n_jobs``) when mixing them in a tight loop (``scripts/blas_spin.py``).
With the ``omp`` threading layer and OpenMP's default wait policy, a parallel call made after the process was idle
can stall for milliseconds on a virtual machine; ``OMP_WAIT_POLICY=passive`` in the environment, or the
``workqueue`` layer, avoids it at some cost to back-to-back calls (README, "Hard inference";
``scripts/idle_stall.py``). Parallel launches take turns (``fffcpu.kernels.parallel_lock``, shared with the UltraFFF
kernels: the ``workqueue`` threading layer aborts the process on concurrent launches), except launches on one
thread under the ``omp`` or ``tbb`` layer; those and the serial kernels release the GIL and run concurrently.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba
import numpy as np

from ._validation import check_dtype, is_valid_input
from .kernels import parallel_lock, parallel_usable
from .kernels import fff as _k

__all__ = ["METHODS", "SERIAL_MAX", "SERIAL_WORK", "GROUPED_MIN", "GROUPED_PER_LEAF", "GROUPED_WIDE_LEAF",
           "resolve_n_jobs", "num_threads", "route", "run_route", "route_flipped", "predict", "run_predict",
           "is_ready", "predict_small", "activation_code",
           "route_small", "leaf_outputs", "choose_method", "sample_work", "serial_rows",
           "threading_layer", "warmup"]

METHODS = ("auto", "serial", "parallel", "grouped")
#: Batches up to this size run on the calling thread ("serial") ...
SERIAL_MAX = 16
#: ... while their multiply-adds stay below this (about 10 µs on one core); above it a parallel launch, a few
#: microseconds, pays: 16 samples of a depth-6 tree of 16-unit leaves took 13 µs in parallel against 17 µs serial,
#: 8 samples of a depth-3 tree of 128-unit leaves 34 µs (grouped) against 58 µs.
SERIAL_WORK = 150_000
#: Batches from this size are sorted by leaf ("grouped").
GROUPED_MIN = 128
#: Below GROUPED_MIN, batches of at least this many samples per leaf go grouped too ...
GROUPED_PER_LEAF = 8
#: ... and so do batches that do not run serially when the leaves are at least this wide (the weights a tile
#: shares outweigh the sort), e.g. 24 samples on 8 leaves of 128 units: 49 µs grouped against 88 µs parallel;
#: leaves of ``kernels.fff.WIDE`` units or more only from 4 samples per leaf (smaller tiles of such leaves share no
#: weight loads: 17 samples on 8 leaves of 1024 units took 581 µs grouped against 567 µs parallel).
GROUPED_WIDE_LEAF = 64


# --- threads ----------------------------------------------------------------------------------


def resolve_n_jobs(n_jobs) -> int:
    """Number of Numba threads for ``n_jobs``: None = the current setting, -1 = all, -k = all but k - 1.

    Values above ``numba.config.NUMBA_NUM_THREADS`` (the size of Numba's pool) are clipped to it.
    """
    limit = numba.config.NUMBA_NUM_THREADS
    if n_jobs is None:
        return numba.get_num_threads()
    if isinstance(n_jobs, (bool, np.bool_)) or not isinstance(n_jobs, (int, np.integer)):
        raise TypeError(f"n_jobs must be None or a nonzero integer, got {n_jobs!r}")
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs must be None, a positive thread count, or negative (-1 = all threads), got 0")
    if n_jobs < 0:
        return max(1, limit + 1 + n_jobs)
    return min(n_jobs, limit)


@contextmanager
def num_threads(n_jobs):
    """Context manager: Numba uses ``resolve_n_jobs(n_jobs)`` threads inside, the previous count after. In a process
    forked after GNU OpenMP had started (``kernels.parallel_usable``), one: the callers then take their serial
    kernels, which give the same bits."""
    n = resolve_n_jobs(n_jobs)
    if not parallel_usable():
        yield 1
        return
    old = numba.get_num_threads()
    if n == old:
        yield n
        return
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(old)


def threading_layer() -> str:
    """The Numba threading layer in use ("omp", "tbb", "workqueue"), or the configured one if no parallel
    kernel has run yet (e.g. "default")."""
    try:
        return numba.threading_layer()
    except ValueError:
        return f"{numba.config.THREADING_LAYER} (not started yet)"


# --- argument handling ------------------------------------------------------------------------


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def sample_work(input_width: int, depth: int, leaf_width: int, output_width: int) -> int:
    """Multiply-adds of one sample's hard inference: ``depth`` node dot products and the leaf's two layers."""
    return input_width * (depth + leaf_width) + leaf_width * output_width


def serial_rows(work: int) -> int:
    """The largest batch that ``method="auto"`` runs on the calling thread, for ``work`` multiply-adds per sample
    (``sample_work``): ``SERIAL_MAX``, fewer for heavy models, never less than 1."""
    return max(1, min(SERIAL_MAX, SERIAL_WORK // max(work, 1)))


def choose_method(n: int, threads: int, n_leaves: int = 1 << 30, leaf_width: int = 1, work: int = 0) -> str:
    """The path ``method="auto"`` takes for a batch of ``n`` samples with ``threads`` Numba threads, for a tree of
    ``n_leaves`` leaves ``leaf_width`` units wide and ``work`` multiply-adds per sample (``sample_work``; the
    defaults, an unknown shape, decide by ``n`` alone)."""
    if n <= serial_rows(work):
        return "serial"
    if n >= GROUPED_MIN or n >= GROUPED_PER_LEAF * n_leaves:
        return "grouped"
    if leaf_width >= GROUPED_WIDE_LEAF and (leaf_width < _k.WIDE or n >= 4 * n_leaves):
        return "grouped"
    return "serial" if threads <= 1 else "parallel"


def _contiguous(x: np.ndarray, dtype) -> np.ndarray:
    """``x`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return np.ascontiguousarray(x, dtype=dtype)


def _check_x(x: np.ndarray) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (samples, input_width), got shape {x.shape}")


def activation_code(activation) -> int:
    """The kernels' code of an activation name (``kernels.fff.ACTIVATION_CODES``), or a ``ValueError``."""
    if activation not in _k.ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {sorted(_k.ACTIVATION_CODES)}, got {activation!r}")
    return _k.ACTIVATION_CODES[activation]


def _chunks(n_items: int, threads: int) -> int:
    """Contiguous chunks for a parallel loop: a few per thread for balance, never more than the items."""
    return max(1, min(n_items, 4 * threads))


# --- public functions ---------------------------------------------------------------------------


def route(x, node_weights, node_biases, depth: int, *, n_jobs=None, method: str = "auto") -> np.ndarray:
    """Leaf id (int64, shape (n,)) of every row of ``x`` under hard routing (logit >= 0 goes right).

    ``x`` must already have ``node_weights.shape[1]`` columns; it is made C-contiguous in the parameters' dtype.
    """
    _check_method(method)
    x = _contiguous(x, getattr(node_weights, "dtype", None))
    _check_x(x)
    _node_arrays(node_weights, node_biases, depth, x.shape[1])
    return run_route(x, node_weights, node_biases, depth, n_jobs=n_jobs, method=method)


def run_route(x, node_weights, node_biases, depth: int, *, n_jobs=None, method: str = "auto") -> np.ndarray:
    """``route`` without its checks, for a caller that made them: the models, on their own parameters (whose
    shapes cannot change) and an ``x`` they checked and made C-contiguous in the parameters' dtype."""
    n = x.shape[0]
    leaves = np.empty(n, dtype=np.int64)
    if n == 0:
        return leaves
    if depth == 0:
        leaves[:] = 0
        return leaves
    if method == "serial" or (method == "auto" and n <= SERIAL_MAX):
        _k._route_serial(x, node_weights, node_biases, depth, leaves)
        return leaves
    with num_threads(n_jobs) as threads:
        if method == "auto" or not parallel_usable():
            method = "serial" if threads <= 1 else "parallel"
        if method == "serial":
            _k._route_serial(x, node_weights, node_biases, depth, leaves)
        else:
            with parallel_lock(threads):
                _k._route_parallel(x, node_weights, node_biases, depth, leaves)
    return leaves


def route_flipped(x, node_weights, node_biases, depth: int, flips=None) -> np.ndarray:
    """Leaf ids as ``route`` gives them (the same logits, bit for bit), each node's decision swapped where
    ``flips`` (bool, shape (n, 2**depth - 1); region leak) is True.

    For the training forward: it runs on the calling thread, between the BLAS calls of a training step, where a
    parallel launch would compete with BLAS threads still spinning. ``x`` must already have
    ``node_weights.shape[1]`` columns; it is made C-contiguous in the parameters' dtype.
    """
    x = _contiguous(x, getattr(node_weights, "dtype", None))
    _check_x(x)
    _node_arrays(node_weights, node_biases, depth, x.shape[1])
    n = x.shape[0]
    leaves = np.zeros(n, dtype=np.int64)
    if n == 0 or depth == 0:
        return leaves
    if flips is not None:
        flips = np.ascontiguousarray(flips, dtype=np.bool_)
        if flips.shape != (n, 2**depth - 1):
            raise ValueError(f"flips must have shape {(n, 2**depth - 1)} (samples, nodes), got {flips.shape}")
    if flips is None:
        _k._route_serial(x, node_weights, node_biases, depth, leaves)
    else:
        _k._route_flipped(x, node_weights, node_biases, depth, flips, leaves)
    return leaves


def predict(x, params: dict, depth: int, activation: str, *, n_jobs=None, method: str = "auto",
            out=None) -> np.ndarray:
    """Hard FFF output (n, output_width): route each row of ``x``, evaluate that leaf, b2 included.

    Parameters
    ----------
    x : ndarray, shape (n, input_width)
    params : dict
        ``node_weights`` (2**d - 1, in), ``node_biases`` (2**d - 1,), ``w1s`` (2**d, in, ℓ), ``b1s`` (2**d, ℓ),
        ``w2s`` (2**d, ℓ, out), ``b2s`` (2**d, out), all of one dtype and C-contiguous.
    depth : int
    activation : str
        A key of ``kernels.fff.ACTIVATION_CODES``.
    n_jobs : int or None
    method : {"auto", "serial", "parallel", "grouped"}
    out : ndarray or None
        Where to write the result, already checked by the caller (``_validation.check_out``); a new array if None.
    """
    _check_method(method)
    act = activation_code(activation)
    x = _contiguous(x, getattr(params.get("w1s") if isinstance(params, dict) else None, "dtype", None))
    _check_x(x)
    return run_predict(x, _param_arrays(params, depth, x.shape[1]), depth, act, n_jobs=n_jobs, method=method,
                       out=out)


def run_predict(x, arrays: tuple, depth: int, act: int, *, n_jobs=None, method: str = "auto",
                out=None) -> np.ndarray:
    """``predict`` without its checks, for a caller that made them: the models, on their own parameters (whose
    shapes cannot change) and an ``x`` they checked and made C-contiguous in the parameters' dtype. ``arrays``:
    the six parameter arrays in the order of ``predict``'s ``params``; ``act``: an activation code."""
    nw, nb, w1s, b1s, w2s, b2s = arrays
    n = x.shape[0]
    if out is None:
        out = np.empty((n, w2s.shape[2]), dtype=w1s.dtype)
    if n == 0:
        return out
    work = sample_work(x.shape[1], depth, w1s.shape[2], w2s.shape[2])
    if method == "serial" or (method == "auto" and n <= serial_rows(work)):  # small batches: no thread query
        _k._predict_serial(x, nw, nb, w1s, b1s, w2s, b2s, depth, act, out)
        return out
    with num_threads(n_jobs) as threads:
        if method == "auto":
            method = choose_method(n, threads, w1s.shape[0], w1s.shape[2], work)
        if not parallel_usable():  # a forked child that cannot launch a parallel kernel: the same bits serially
            method = "serial"
        if method == "serial":
            _k._predict_serial(x, nw, nb, w1s, b1s, w2s, b2s, depth, act, out)
        elif method == "parallel":
            with parallel_lock(threads):
                _k._predict_parallel(x, nw, nb, w1s, b1s, w2s, b2s, depth, act, out, _chunks(n, threads))
        else:
            with parallel_lock(threads):
                _k._predict_grouped(x, nw, nb, w1s, b1s, w2s, b2s, depth, act, out, threads)
    return out


def is_ready(x, input_width: int, dtype) -> bool:
    """Whether ``x`` can go to the kernels as it is: a 2-D C-contiguous ndarray of ``dtype`` with
    ``input_width`` columns and 1 to ``SERIAL_MAX`` rows (the common batch-1 case).

    The models test this first and then call ``predict_small`` / ``route_small``, skipping ``np.asarray``,
    the dtype conversion, the memory check (a batch this small cannot exceed memory) and the thread
    handling; anything else takes the checked path, with its error messages.
    """
    return is_valid_input(x, input_width, dtype) and 0 < x.shape[0] <= SERIAL_MAX


def predict_small(x: np.ndarray, params: dict, depth: int, activation: str, out=None) -> np.ndarray:
    """``predict`` on the calling thread (the same bits) for an ``x`` that passes ``is_ready``; ``out`` as in
    ``predict``."""
    w2s = params["w2s"]
    if out is None:
        out = np.empty((x.shape[0], w2s.shape[2]), dtype=w2s.dtype)
    _k._predict_serial(x, params["node_weights"], params["node_biases"], params["w1s"], params["b1s"], w2s,
                       params["b2s"], depth, _k.ACTIVATION_CODES[activation], out)
    return out


def route_small(x: np.ndarray, node_weights, node_biases, depth: int) -> np.ndarray:
    """``route`` on the calling thread for an ``x`` that passes ``is_ready``."""
    leaves = np.zeros(x.shape[0], dtype=np.int64)
    if depth:
        _k._route_serial(x, node_weights, node_biases, depth, leaves)
    return leaves


def leaf_outputs(x, leaves, params: dict, activation: str, *, n_jobs=None, method: str = "auto") -> np.ndarray:
    """Output (n, output_width) of leaf ``leaves[b]`` for each row ``b`` of ``x``, b2 included.

    The same arithmetic as ``predict`` (bit for bit), for leaves chosen elsewhere (hard training, region leak).
    """
    _check_method(method)
    act = activation_code(activation)
    x = _contiguous(x, getattr(params.get("w1s") if isinstance(params, dict) else None, "dtype", None))
    _check_x(x)
    _, _, w1s, b1s, w2s, b2s = _param_arrays(params, None, x.shape[1])
    leaves = np.ascontiguousarray(leaves, dtype=np.int64)
    n = x.shape[0]
    if leaves.shape != (n,):
        raise ValueError(f"leaves must have shape ({n},), got {leaves.shape}")
    if n and (leaves.min() < 0 or leaves.max() >= w1s.shape[0]):
        raise ValueError(f"leaf ids must be in [0, {w1s.shape[0]}), got [{leaves.min()}, {leaves.max()}]")
    out = np.empty((n, w2s.shape[2]), dtype=w1s.dtype)
    if n == 0:
        return out
    with num_threads(n_jobs) as threads:
        if method == "auto":
            method = choose_method(n, threads, w1s.shape[0], w1s.shape[2],
                                   sample_work(x.shape[1], 0, w1s.shape[2], w2s.shape[2]))
        if method == "serial" or (method == "parallel" and threads <= 1) or not parallel_usable():
            _k._eval_leaves_serial(x, leaves, w1s, b1s, w2s, b2s, act, out)
        else:  # with given leaves, "parallel" and "grouped" both go through the leaf-sorted tiles
            _grouped_outputs(x, leaves, w1s, b1s, w2s, b2s, act, out, threads)
    return out


def _grouped_outputs(x, leaves, w1s, b1s, w2s, b2s, act, out, threads):
    with parallel_lock(threads):
        _k._eval_grouped(x, leaves, w1s, b1s, w2s, b2s, act, out, threads)



def _param_arrays(params: dict, depth: int | None = None, input_width: int | None = None):
    """The six parameter arrays, after checking that they form one FFF (of ``depth`` and ``input_width`` when
    given): the kernels index them by these shapes and would read out of bounds otherwise. (The batch-1 path,
    ``predict_small``, skips this: it only runs on a model's own ``params``, whose arrays keep their shapes.)"""
    try:
        arrays = nw, nb, w1s, b1s, w2s, b2s = tuple(params[name] for name in _PARAM_NAMES)
    except (KeyError, TypeError):
        raise TypeError(f"params must be a dict with the arrays {list(_PARAM_NAMES)} (e.g. FFF.params), got "
                        + (f"keys {sorted(map(str, params))}" if isinstance(params, dict)
                           else type(params).__name__)) from None
    dtype = getattr(w1s, "dtype", None)
    for name, a in zip(_PARAM_NAMES, arrays):
        if not isinstance(a, np.ndarray) or a.dtype != dtype or dtype.char not in "fd" or not a.flags.c_contiguous:
            raise TypeError(f"params[{name!r}] must be a C-contiguous float32 or float64 array of the dtype of "
                            f"w1s ({dtype}), got "
                            + (f"dtype {a.dtype}, {'C-' if a.flags.c_contiguous else 'not C-'}contiguous"
                               if isinstance(a, np.ndarray) else type(a).__name__))
    if w1s.ndim != 3 or w2s.ndim != 3:
        raise ValueError(f"params['w1s'] and params['w2s'] must be 3-D, got shapes {w1s.shape} and {w2s.shape}")
    n_leaves, n_in, leaf_width = w1s.shape
    out_width = w2s.shape[2]
    if depth is not None:
        _check_depth(depth)
    d = int(depth) if depth is not None else n_leaves.bit_length() - 1
    n_in = n_in if input_width is None else input_width
    expected = ((2**d - 1, n_in), (2**d - 1,), (2**d, n_in, leaf_width), (2**d, leaf_width),
                (2**d, leaf_width, out_width), (2**d, out_width))
    if (nw.shape, nb.shape, w1s.shape, b1s.shape, w2s.shape, b2s.shape) != expected:
        wrong = [f"{name} must have shape {shape}, got {a.shape}"
                 for name, a, shape in zip(_PARAM_NAMES, arrays, expected) if a.shape != shape]
        raise ValueError(f"params do not form an FFF of depth {d}"
                         + (f" for inputs of width {input_width}" if input_width is not None else "")
                         + ": " + "; ".join(wrong))
    return arrays


_PARAM_NAMES = ("node_weights", "node_biases", "w1s", "b1s", "w2s", "b2s")


def _check_depth(depth) -> None:
    if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, (int, np.integer)) or not 0 <= depth <= 40:
        raise ValueError(f"depth must be an integer from 0 to 40, got {depth!r}")


def _node_arrays(node_weights, node_biases, depth: int, input_width: int):
    """Check the routing arrays as ``_param_arrays`` does, for ``route``."""
    for name, a in (("node_weights", node_weights), ("node_biases", node_biases)):
        if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64) or not a.flags.c_contiguous:
            raise TypeError(f"{name} must be a C-contiguous float32 or float64 array, got "
                            + (f"dtype {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__))
    _check_depth(depth)
    n_nodes = 2**int(depth) - 1
    if node_weights.shape != (n_nodes, input_width) or node_biases.shape != (n_nodes,) \
            or node_biases.dtype != node_weights.dtype:
        raise ValueError(f"a tree of depth {depth} routing inputs of width {input_width} needs node_weights of shape "
                         f"{(n_nodes, input_width)} and node_biases of shape {(n_nodes,)} of one dtype, got "
                         f"{node_weights.shape} ({node_weights.dtype}) and {node_biases.shape} ({node_biases.dtype})")


# --- warm-up --------------------------------------------------------------------------------------


def warmup(dtypes=("float32", "float64"), *, parallel: bool = True, ultra: bool = False) -> None:
    """Compile (or load from Numba's cache) every hard-inference kernel on tiny inputs.

    Call it once at start-up (the demo and the notebooks do) so that the first real ``predict`` does not pay
    for compilation. With the on-disk cache warm this takes a fraction of a second. ``dtypes``: the models'
    dtypes to compile for, ``"float32"`` and/or ``"float64"`` (one name, or a sequence of them). With
    ``ultra=True``, also UltraFFF's kernels (inference, routing, the bfloat16 snapshot's, and the path-only
    training forward and backward), which otherwise compile at their first call: about as long again on a fresh
    cache.
    """
    if not isinstance(ultra, (bool, np.bool_)):
        raise TypeError(f"ultra must be True or False, got {ultra!r}")
    if isinstance(dtypes, (str, np.dtype, type)):
        dtypes = (dtypes,)  # one dtype, not the characters of its name
    if not isinstance(dtypes, (list, tuple)):
        raise TypeError(f"dtypes must be a dtype name ('float32' or 'float64') or a list or tuple of them, got "
                        f"{dtypes!r}")
    dtypes = [check_dtype(dtype) for dtype in dtypes]
    rng = np.random.default_rng(0)
    for dt in dtypes:
        d, n_in, width, n_out = 1, 3, 2, 2
        params = {
            "node_weights": rng.normal(size=(1, n_in)).astype(dt),
            "node_biases": np.zeros(1, dt),
            "w1s": rng.normal(size=(2, n_in, width)).astype(dt),
            "b1s": np.zeros((2, width), dt),
            "w2s": rng.normal(size=(2, width, n_out)).astype(dt),
            "b2s": np.zeros((2, n_out), dt),
        }
        x = rng.normal(size=(4, n_in)).astype(dt)
        methods = ("serial", "parallel", "grouped") if parallel else ("serial",)
        for method in methods:
            predict(x, params, d, "relu", method=method)
            route_method = method if method != "grouped" else "parallel"
            leaves = route(x, params["node_weights"], params["node_biases"], d, method=route_method)
            leaf_outputs(x, leaves, params, "relu", method=method)
        for flips in (None, np.zeros((len(x), 1), dtype=bool)):  # the training forward's routing
            route_flipped(x, params["node_weights"], params["node_biases"], d, flips)
        if ultra:
            _warm_ultra(dt, rng, parallel)


def _warm_ultra(dtype, rng, parallel):
    """UltraFFF's kernels for ``dtype``, on every batch size that picks another kernel."""
    from .kernels import ultra as ultra_kernels
    from .models.ultra import UltraFFF

    model = UltraFFF(3, 2, 1, dtype=dtype, seed=0)
    layers = [model, model.to_bfloat16()] if dtype == np.float32 else [model]
    sizes = ((1, ultra_kernels.PARALLEL_MIN_BATCH, ultra_kernels.GROUPED_MIN_BATCH) if parallel else (1,))
    for n in sizes:
        x = rng.normal(size=(n, 3)).astype(dtype)
        for layer in layers:
            layer.predict(x)
            layer.route(x)
        y = model.forward(x)
        model.backward(np.ones_like(y), input_grad=True)
        model.backward(np.ones_like(y), input_grad=False)
