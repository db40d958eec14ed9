"""Numba kernels (private ``@njit`` functions taking only arrays and scalars).

``fff``: FFF hard routing and leaf evaluation. The validating, dispatching public layer is ``fffcpu.engine``;
the NumPy references are the ``*_reference`` methods of the models and ``tests/naive.py``.
Importing this package compiles nothing: kernels compile (or load from Numba's on-disk cache) on first use
or in ``fffcpu.warmup()``.

Every kernel is declared with ``cache=True``, and Numba refuses such a declaration when it finds no folder to
cache in: neither a writable ``__pycache__`` beside the module nor a user cache folder (``~/.cache/numba``), as
for a read-only install run by an account without a writable home. ``_ensure_cache_dir`` then points Numba's
cache to a folder in the temporary directory, unless ``NUMBA_CACHE_DIR`` chooses one.
"""

import os
import tempfile

import numba


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _ensure_cache_dir() -> None:
    if numba.config.CACHE_DIR or _writable(os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")):
        return
    from numba.misc.appdirs import AppDirs

    if _writable(AppDirs(appname="numba", appauthor=False).user_cache_dir):
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
