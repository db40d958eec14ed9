"""Save and load models as ``.npz`` files: the parameter arrays plus one JSON metadata entry.

The metadata holds the class name, the constructor arguments and a format version; files are read with
``allow_pickle=False``, so loading never runs code from the file. A save writes to a temporary file in the
same folder and renames it into place: an interrupted or failed save leaves any existing file untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .models import MODELS as _MODELS

__all__ = ["save", "save_path", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_META_KEY = "__fffcpu__"


def save(model, path) -> str:
    """Write ``model`` to ``path`` (``.npz`` is appended if missing); returns the path written.

    The write is atomic: the data go to a temporary file in the destination folder, which is then renamed
    over ``path``. If anything fails, the temporary file is removed and an existing ``path`` is unchanged.
    A ``path`` that names a folder (an existing one, or one ending in a path separator) raises
    ``IsADirectoryError`` instead of writing ``folder.npz`` beside it or a nameless ``.npz`` inside it.
    """
    if type(model).__name__ not in _MODELS:
        raise TypeError(f"save expects an fffcpu model ({', '.join(sorted(_MODELS))}), got {type(model).__name__}")
    path = save_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    meta = {"format": "fffcpu", "format_version": FORMAT_VERSION, "class": type(model).__name__,
            "config": model.config()}
    arrays = {name: np.ascontiguousarray(p) for name, p in model.params.items()}
    arrays[_META_KEY] = np.array(json.dumps(meta))
    fd, tmp = tempfile.mkstemp(prefix=".fffcpu-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_path(path) -> str:
    """The file ``save(model, path)`` would write (``.npz`` appended if missing), after the checks ``save`` makes
    before writing: ``path`` must not name a folder (``IsADirectoryError``) and its folder must exist
    (``FileNotFoundError``). A program can call it before long work whose result it will save."""
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(tuple(s for s in (os.sep, os.altsep) if s)):
        raise IsADirectoryError(f"cannot save to {path!r}: it names a folder; give a file name, such as "
                                f"{os.path.join(path, 'model.npz')!r}")
    if not path.endswith(".npz"):
        path += ".npz"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path!r}: folder {folder!r} does not exist")
    return path


def load(path):
    """Read a model written by ``save``.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not an fffcpu model: not a zip/npz, truncated, without metadata, a newer format,
        an unknown class, or arrays missing or of the wrong shape.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
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
    except (OSError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as err:
        raise ValueError(f"{path!r} is not a readable fffcpu model file (corrupt or truncated: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") != "fffcpu":
        raise ValueError(f"{path!r} has metadata that is not fffcpu's")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format version {version!r}; this fffcpu reads versions up to {FORMAT_VERSION} "
            "(upgrade fffcpu)"
        )
    cls = _MODELS.get(meta.get("class"))
    if cls is None:
        raise ValueError(f"{path!r} holds a model of unknown class {meta.get('class')!r}; known: {sorted(_MODELS)}")
    try:
        model = cls(**meta["config"])
        model.set_params(arrays)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{path!r} does not hold a valid {cls.__name__}: {err}") from None
    return model
