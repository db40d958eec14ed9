"""Numba kernels (private ``@njit`` functions taking only arrays and scalars).

``fff``: FFF hard routing and leaf evaluation. The validating, dispatching public layer is ``fffcpu.engine``;
the NumPy references are the ``*_reference`` methods of the models and ``tests/naive.py``.
Importing this package compiles nothing: kernels compile (or load from Numba's on-disk cache) on first use
or in ``fffcpu.warmup()``.

Every kernel is declared with ``cache=True``, and Numba refuses such a declaration when it finds no folder to
cache in: neither a writable ``__pycache__`` beside the module nor a user cache folder (``~/.cache/numba``), as
for a read-only install run by an account without a writable home. ``_ensure_cache_dir`` then points Numba's
cache to a folder in the temporary directory, unless ``NUMBA_CACHE_DIR`` chooses one.

Threads: every kernel releases the GIL (``nogil=True``), so calls from several Python threads run at once, and
every launch of a ``parallel=True`` kernel holds ``PARALLEL_LOCK`` (``parallel_lock`` says when): Numba's
``workqueue`` threading layer (the one left where neither OpenMP nor TBB loads, or the one chosen by
``NUMBA_THREADING_LAYER``) aborts the whole process when two threads launch parallel kernels at once. With the
``omp`` and ``tbb`` layers the lock only makes launches on several threads take turns (each already uses every
thread it was given); launches on one thread run side by side.
"""

import contextlib
import os
import tempfile
import threading

import numba

#: Held around every launch of a ``parallel=True`` kernel that another thread's launch could meet (``parallel_lock``).
PARALLEL_LOCK = threading.RLock()

_layer = None  # the threading layer, once Numba has started one (it cannot change afterwards)

#: Whether this process was forked after Numba's ``omp`` layer had started on GNU OpenMP (``_after_fork``).
FORKED_FROM_GNU_OPENMP = False

FORK_MESSAGE = (
    "this process was forked from one that had already run Numba's GNU OpenMP threads (fffcpu's parallel "
    "kernels), and GNU OpenMP cannot run again after a fork: Numba would end the process. Here predict and route "
    "run on one thread, and this call has no one-thread kernel. Start worker processes with the 'spawn' or "
    "'forkserver' method (multiprocessing.get_context('spawn')), or set NUMBA_THREADING_LAYER=workqueue before "
    "the parent process imports fffcpu.")


def _after_fork() -> None:
    """In a forked child: note whether the parent had started Numba's ``omp`` layer on GNU OpenMP, which
    terminates a forked process at its next parallel launch (whatever its thread count)."""
    global FORKED_FROM_GNU_OPENMP
    try:
        layer = numba.threading_layer()
    except ValueError:  # the parent never launched a parallel kernel: the child may start a layer of its own
        return
    if layer == "omp":
        from numba.np.ufunc import omppool

        if getattr(omppool, "openmp_vendor", "GNU") == "GNU":
            FORKED_FROM_GNU_OPENMP = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def parallel_usable() -> bool:
    """Whether a ``parallel=True`` kernel can run in this process (not in a child forked after GNU OpenMP)."""
    return not FORKED_FROM_GNU_OPENMP


def parallel_lock(threads: int | None = None):
    """``PARALLEL_LOCK``, to hold around a parallel launch on ``threads`` Numba threads (None: the calling thread's
    current setting); nothing to hold on one thread under the ``omp`` or ``tbb`` layer, so that the tasks of a Dask
    worker with ``n_jobs=1`` (many Python threads, one Numba thread each) still run side by side. The ``workqueue``
    layer, and a layer not started yet, get the lock at any thread count: ``workqueue`` queues even a one-thread
    launch and aborts the process when another thread's launch meets it."""
    global _layer
    if FORKED_FROM_GNU_OPENMP:  # a clear error instead of Numba's SIGTERM
        raise RuntimeError(FORK_MESSAGE)
    if threads is None:
        threads = numba.get_num_threads()
    if threads > 1:
        return PARALLEL_LOCK
    if _layer is None:
        try:
            _layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            return PARALLEL_LOCK
    return PARALLEL_LOCK if _layer == "workqueue" else contextlib.nullcontext()


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


#: Where Numba caches the kernels of this package when it can write there (its own rule: beside the sources).
BESIDE_SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")


def user_cache_dir() -> str:
    """Numba's per-user cache folder, its second choice (``~/.cache/numba`` on Linux)."""
    from numba.misc.appdirs import AppDirs

    return AppDirs(appname="numba", appauthor=False).user_cache_dir


def kernel_cache_dir() -> str:
    """The folder where Numba keeps these kernels once compiled: ``NUMBA_CACHE_DIR`` as ``_ensure_cache_dir`` left
    it, else beside the sources, else Numba's per-user folder."""
    if numba.config.CACHE_DIR:
        return numba.config.CACHE_DIR
    return BESIDE_SOURCES if _writable(BESIDE_SOURCES) else user_cache_dir()


def _ensure_cache_dir() -> None:
    if numba.config.CACHE_DIR and not _writable(numba.config.CACHE_DIR):
        # Numba would refuse every cache=True kernel with an error that does not name the folder: say so, and
        # cache where fffcpu would have without the setting
        import warnings

        warnings.warn(f"NUMBA_CACHE_DIR={numba.config.CACHE_DIR!r} is not a folder this process can write to; "
                      "fffcpu caches its compiled kernels elsewhere (fffcpu.info.kernel_cache_dir() says where)",
                      RuntimeWarning, stacklevel=2)
        numba.config.CACHE_DIR = ""
    if numba.config.CACHE_DIR or _writable(BESIDE_SOURCES) or _writable(user_cache_dir()):
        return
    user = os.getuid() if hasattr(os, "getuid") else "user"
    folder = os.path.join(tempfile.gettempdir(), f"fffcpu-numba-cache-{user}")
    try:  # the folder of a previous run, if this user owns it; else a new one of this process's
        os.makedirs(folder, mode=0o700, exist_ok=True)
        owned = not hasattr(os, "getuid") or os.stat(folder).st_uid == os.getuid()
    except OSError:
        owned = False
    numba.config.CACHE_DIR = folder if owned and _writable(folder) else tempfile.mkdtemp(prefix="fffcpu-numba-cache-")


_ensure_cache_dir()
