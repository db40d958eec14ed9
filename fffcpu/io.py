"""Save and load models as ``.npz`` files: the parameter arrays plus one JSON metadata entry.

The metadata holds the class name, the constructor arguments and a format version; files are read with
``allow_pickle=False``, so loading never runs code from the file. A save writes to a temporary file in the
same folder and renames it into place: an interrupted or failed save leaves any existing file untouched.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import zipfile

import numpy as np

from .models import MODELS as _MODELS

__all__ = ["save", "save_path", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_META_KEY = "__fffcpu__"
_ZIP_MAGIC = b"PK\x03\x04"  # the start of an .npz file (a zip archive)
_NPY_MAGIC = b"\x93NUMPY"  # the start of an .npy file (one array)


def file_start(path: str, action: str = "read") -> tuple[bytes, bool]:
    """The first 8 bytes of ``path`` and whether they start an .npz (zip) or .npy file, what ``np.load`` reads
    without pickles; an unreadable file raises ``PermissionError``: "cannot {action} {path!r}: ..."."""
    try:
        with open(path, "rb") as f:
            start = f.read(8)
    except PermissionError as err:
        raise PermissionError(err.errno, f"cannot {action} {path!r}: {err.strerror}") from None
    return start, start.startswith(_ZIP_MAGIC) or start.startswith(_NPY_MAGIC)


def save(model, path) -> str:
    """Write ``model`` to ``path`` (``.npz`` is appended if missing); returns the path written.

    The write is atomic: the data go to a temporary file in the destination folder, which is then renamed
    over ``path``. If anything fails, the temporary file is removed and an existing ``path`` is unchanged.
    A ``path`` that names a folder (an existing one, or one ending in a path separator) raises
    ``IsADirectoryError`` instead of writing ``folder.npz`` beside it or a nameless ``.npz`` inside it; a folder
    that cannot be written raises ``PermissionError`` before anything is written. The file gets the permissions
    of the one it replaces, or those of an ordinary new file (the umask's).
    """
    if type(model).__name__ not in _MODELS:
        raise TypeError(f"save expects an fffcpu model ({', '.join(sorted(_MODELS))}), got {type(model).__name__}")
    path = save_path(path)
    meta = {"format": "fffcpu", "format_version": FORMAT_VERSION, "class": type(model).__name__,
            "config": model.config()}
    arrays = {name: np.ascontiguousarray(p) for name, p in model.params.items()}
    arrays[_META_KEY] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def atomic_write(path: str, write) -> None:
    """Call ``write(f)`` on a new temporary file beside ``path``, then rename it over ``path``: an existing file
    is replaced whole or, if anything fails, left as it was (the temporary file removed). The file gets the
    permissions of the one it replaces, or those of an ordinary ``open(path, "w")`` when there was none. An
    ``OSError`` names ``path``, not the temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = _create_temporary(folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError):
            raise type(err)(err.errno, f"cannot write {path!r}: {err.strerror or err}") from err
        raise


def _create_temporary(folder: str):
    """A new file ``.fffcpu-<random>.tmp`` in ``folder``, opened for writing, created with the mode an
    ordinary ``open(..., "w")`` gives (0o666 less the umask; ``tempfile.mkstemp`` would give 0o600). Returns
    ``(fd, path)``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f".fffcpu-{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def save_path(path) -> str:
    """The file ``save(model, path)`` would write (``.npz`` appended if missing), after the checks ``save`` makes
    before writing: ``path`` must not name a folder (``IsADirectoryError``) and its folder must exist
    (``FileNotFoundError``) and be writable (``PermissionError``); ``path`` must be a ``str``, ``bytes`` or
    ``os.PathLike``, not empty. A program can call it before long work whose result it will save."""
    path = _check_path(path, "save to")
    if os.path.isdir(path) or path.endswith(tuple(s for s in (os.sep, os.altsep) if s)):
        raise IsADirectoryError(f"cannot save to {path!r}: it names a folder; give a file name, such as "
                                f"{os.path.join(path, 'model.npz')!r}")
    if not path.lower().endswith(".npz"):
        path += ".npz"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot save to {path!r}: folder {folder!r} is not writable")
    return path


def _check_path(path, action: str) -> str:
    """``path`` as a ``str`` (a ``str``, ``bytes`` or ``os.PathLike``), not empty."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"cannot {action} {path!r}: a path must be a str, bytes or os.PathLike, "
                        f"got {type(path).__name__}")
    path = os.fsdecode(os.fspath(path))
    if not path:
        raise ValueError(f"cannot {action} an empty path: give a file name, such as 'model.npz'")
    return path


def load(path):
    """Read a model written by ``save``. As ``save`` appends ``.npz`` to a path without it, ``load("model")``
    reads ``model.npz`` when there is no file ``model``.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    IsADirectoryError, PermissionError
        If ``path`` names a folder, or a file that cannot be read.
    ValueError
        If the file is not an fffcpu model: not an npz (zip) file, truncated, without metadata, a newer format,
        an unknown class, or arrays missing or of the wrong shape.
    """
    path = _check_path(path, "load")
    if not os.path.exists(path) and not path.lower().endswith(".npz") and os.path.isfile(path + ".npz"):
        path += ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot load {path!r}: it is a folder, not a model file")
    start, numpy_file = file_start(path, "load")
    if not numpy_file:
        raise ValueError(f"{path!r} is not a readable fffcpu model file: an fffcpu model is an .npz (zip) file, "
                         f"and this one starts with {start!r}")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a .npy file: one array, no model
            raise ValueError(f"{path!r} holds a single array ({data.dtype} {data.shape}), not an fffcpu model "
                             "(an .npz file written by fffcpu.save)")
        with data:
            if _META_KEY not in data.files:
                raise ValueError(f"{path!r} is an .npz file but not an fffcpu model (no {_META_KEY!r} entry)")
            meta = json.loads(str(data[_META_KEY]))
            arrays = {name: data[name] for name in data.files if name != _META_KEY}
    except ValueError as err:
        if "fffcpu" in str(err):
            raise
        raise ValueError(f"{path!r} is not a readable fffcpu model file ({err})") from None
    except (OSError, zipfile.BadZipFile, EOFError, json.JSONDecodeError, NotImplementedError) as err:
        raise ValueError(f"{path!r} is not a readable fffcpu model file (corrupt or truncated: {err})") from None
    except MemoryError:
        raise MemoryError(f"{path!r}: its arrays do not fit in memory") from None
    if not isinstance(meta, dict) or meta.get("format") != "fffcpu":
        raise ValueError(f"{path!r} has metadata that is not fffcpu's")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format version {version!r}; this fffcpu reads versions up to {FORMAT_VERSION} "
            "(upgrade fffcpu)"
        )
    name = meta.get("class")
    cls = _MODELS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{path!r} holds a model of unknown class {meta.get('class')!r}; known: {sorted(_MODELS)}")
    try:
        model = cls(**meta["config"])
        model.set_params(arrays)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{path!r} does not hold a valid {cls.__name__}: {err}") from None
    return model
