"""Scale-out hard inference with Dask: the same kernels, one chunk of rows per task.

``predict(model, X)`` and ``route(model, X)`` take a dask array (or anything array-like) of shape
(n, input_width), chunked by rows, and return a lazy dask array; call ``.compute()``. With a
``distributed`` client (passed, or the current one), the model is scattered to the workers once and every
task reuses it; without one, Dask's local scheduler runs the tasks in threads.

Threads: each task runs fffcpu's Numba kernels with ``n_jobs`` threads (default 1), so that a worker with T
threads runs T tasks side by side instead of T × cores threads fighting for the cores. Give each worker
one thread and ``n_jobs`` = cores per worker, or many worker threads and ``n_jobs=1``; not both.

Requires the optional dependency ``fffcpu[dask]`` (dask[array] and distributed).
"""

from __future__ import annotations

import numpy as np

__all__ = ["predict", "route"]


def _require_dask():
    try:
        import dask.array as da
    except ImportError:
        raise ImportError("fffcpu.dask needs dask: pip install 'fffcpu[dask]'") from None
    return da


def _call(model, block, method: str, n_jobs):
    f = getattr(model, method)
    try:
        return f(block, n_jobs=n_jobs)
    except TypeError as err:  # a model whose methods take no n_jobs
        if "n_jobs" not in str(err):
            raise
        return f(block)


def _predict_block(block, model, n_jobs):
    return _call(model, block, "predict", n_jobs)


def _route_block(block, model, n_jobs):
    return _call(model, block, "route", n_jobs)


def _prepare(model, X):
    da = _require_dask()
    X = X if isinstance(X, da.Array) else da.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, {model.input_width}), got shape {X.shape}")
    if X.shape[1] != model.input_width:
        raise ValueError(f"X has {X.shape[1]} features, the model was built for input_width={model.input_width}")
    if len(X.chunks[1]) != 1:
        X = X.rechunk({1: -1})  # each task needs whole rows
    return da, X


def _map(model, X, client, n_jobs, block_fn, out_width, dtype):
    da, X = _prepare(model, X)
    if client is not None:
        shipped = client.scatter(model, broadcast=True)  # on every worker before the tasks start
    else:
        import dask

        shipped = dask.delayed(model, pure=True)  # one node of the graph, shared by every task
    if out_width is None:
        return X.map_blocks(block_fn, shipped, n_jobs, dtype=dtype, drop_axis=1, chunks=(X.chunks[0],),
                            meta=np.empty((0,), dtype))
    return X.map_blocks(block_fn, shipped, n_jobs, dtype=dtype, chunks=(X.chunks[0], (out_width,)),
                        meta=np.empty((0, out_width), dtype))


def predict(model, X, *, client=None, n_jobs: int = 1):
    """Hard predictions of ``model`` for every row of ``X``, as a lazy dask array (n, output_width).

    Parameters
    ----------
    model : FFF, FF or UltraFFF
    X : dask array or array-like, shape (n, input_width), chunked by rows
    client : distributed.Client, optional
        Scatter the model to this client's workers up front (compute on the same client).
    n_jobs : int
        Numba threads per task (see the module notes).
    """
    return _map(model, X, client, n_jobs, _predict_block, model.output_width, model.dtype)


def route(model, X, *, client=None, n_jobs: int = 1):
    """Leaf index of every row of ``X`` (lazy dask array of int64; (n,) for FFF, (n, trees) for UltraFFF)."""
    trees = getattr(model, "trees", None)
    return _map(model, X, client, n_jobs, _route_block, trees, np.int64)
