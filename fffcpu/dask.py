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

import inspect

import numpy as np

__all__ = ["predict", "route"]


def _require_dask():
    try:
        import dask.array as da
    except ImportError:
        raise ImportError("fffcpu.dask needs dask: pip install 'fffcpu[dask]'") from None
    return da


def _call(model, block, method: str, n_jobs):
    from .engine import num_threads

    f = getattr(model, method)
    if "n_jobs" in inspect.signature(f).parameters:
        return f(block, n_jobs=n_jobs)
    with num_threads(n_jobs):  # a model whose methods take no n_jobs (UltraFFF): the Numba threads of the task
        return f(block)


def _predict_block(block, model, n_jobs):
    return _call(model, block, "predict", n_jobs)


def _route_block(block, model, n_jobs):
    return _call(model, block, "route", n_jobs)


def _check_model(model, method: str) -> None:
    from .models import MODELS

    if not isinstance(model, tuple(MODELS.values())):
        raise TypeError(f"expected an fffcpu model ({', '.join(sorted(MODELS))}), got {type(model).__name__}")
    if not callable(getattr(model, method, None)):
        raise TypeError(f"{method} needs a model with tree routing (FFF or UltraFFF); {type(model).__name__} has "
                        f"no {method} method")


def _prepare(model, X, client, n_jobs):
    from .engine import resolve_n_jobs

    da = _require_dask()
    resolve_n_jobs(n_jobs)  # a bad n_jobs fails now, not inside every task at compute()
    if client is not None and not callable(getattr(client, "scatter", None)):
        raise TypeError(f"client must be a distributed.Client (or None), got {type(client).__name__}")
    if not isinstance(X, da.Array):
        dtype = X.dtype if isinstance(X, np.ndarray) else np.asarray(X).dtype
        if dtype.kind not in "fiub":  # (dask cannot even chunk an object array)
            raise TypeError(f"X must hold real numbers, got dtype {dtype}")
        X = da.asarray(X)
    if X.dtype.kind not in "fiub":
        raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, {model.input_width}), got shape {X.shape}")
    if X.shape[1] != model.input_width:
        raise ValueError(f"X has {X.shape[1]} features, the model was built for input_width={model.input_width}")
    if len(X.chunks[1]) != 1:
        X = X.rechunk({1: -1})  # each task needs whole rows
    return da, X


def _map(model, X, client, n_jobs, block_fn, out_width, dtype):
    da, X = _prepare(model, X, client, n_jobs)
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
        Numba threads per task (see the module notes); checked here, before any task runs. A dense ``FF``
        runs on NumPy's BLAS, whose threads it does not set.
    """
    _check_model(model, "predict")
    return _map(model, X, client, n_jobs, _predict_block, model.output_width, model.dtype)


def route(model, X, *, client=None, n_jobs: int = 1):
    """Leaf index of every row of ``X`` (lazy dask array of int64; (n,) for FFF, (n, trees) for UltraFFF)."""
    _check_model(model, "route")
    trees = getattr(model, "trees", None)
    return _map(model, X, client, n_jobs, _route_block, trees, np.int64)
