"""Save and load models as ``.npz`` files: the parameter arrays plus one JSON metadata entry.

The metadata holds the class name, the constructor arguments and a format version; files are read with
``allow_pickle=False``, so loading never runs code from the file. Before it reads any array, ``load`` checks the
names, shapes and dtypes in the arrays' headers against those the metadata's model has, so a corrupt or crafted
file is refused before it can fill the memory. A save writes to a temporary file in the same folder and renames
it into place: an interrupted or failed save leaves any existing file untouched.

A file holds the model, not a training run: an FFF's usage counters (``usage``, ``batch_usage``) and the random
stream of its region leak are not saved; a loaded model starts them as a new one with its ``seed`` does.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import stat
import zipfile
import zlib
from io import BytesIO

import numpy as np

from ._validation import format_bytes
from .models import MODELS as _MODELS

__all__ = ["save", "save_path", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_META_KEY = "__fffcpu__"
_ZIP_MAGIC = b"PK\x03\x04"  # the start of an .npz file (a zip archive)
_NPY_MAGIC = b"\x93NUMPY"  # the start of an .npy file (one array)
_NPY_HEADER_BYTES = 1 << 16  # enough for any header numpy reads (it refuses those over 10,000 characters)
_META_BYTES = 1 << 20  # the most metadata read; fffcpu writes a few hundred bytes
#: What reading a damaged zip archive or .npy entry raises.
_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)
_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_start(path: str, action: str = "read") -> tuple[bytes, bool]:
    """The first 8 bytes of ``path`` and whether they start an .npz (zip) or .npy file, what ``np.load`` reads
    without pickles; an unreadable file raises ``PermissionError``: "cannot {action} {path!r}: ...". Anything but
    a regular file (a FIFO, a device, a socket) raises ``ValueError`` before it is opened, as reading it could
    wait forever or never end."""
    _check_regular(path, action)
    try:
        with open(path, "rb") as f:
            start = f.read(8)
    except PermissionError as err:
        raise PermissionError(err.errno, f"cannot {action} {path!r}: {err.strerror}") from None
    return start, start.startswith(_ZIP_MAGIC) or start.startswith(_NPY_MAGIC)


def _check_regular(path: str, action: str, where: str | None = None) -> None:
    """Refuse an existing ``path`` that is not a regular file (links followed); a missing one passes. The error
    names ``where`` (by default ``path``)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
        raise ValueError(f"cannot {action} {where or repr(path)}: expected a regular file, but it is {kind}")


def save(model, path) -> str:
    """Write ``model`` to ``path`` (``.npz`` is appended if missing); returns the path written.

    The file holds the model's configuration (``model.config()``) and its parameters, which is all that
    ``predict`` and further training need; not the gradients, the optimizer's state or an FFF's usage counters,
    which ``load`` starts afresh (an optimizer's moments are the optimizer's, not the model's).

    The write is atomic: the data go to a temporary file in the destination folder, which is then renamed
    over ``path``. If anything fails, the temporary file is removed and an existing ``path`` is unchanged.
    A ``path`` that names a folder (an existing one, or one ending in a path separator) raises
    ``IsADirectoryError`` instead of writing ``folder.npz`` beside it or a nameless ``.npz`` inside it; a folder
    that cannot be written, or an existing file that cannot (a read-only one), raises ``PermissionError``
    before anything is written. The file gets the permissions of the one it replaces, or those of an ordinary
    new file (the umask's).

    A symbolic link at ``path`` is followed: the file it points to is replaced, and the link kept. As the
    replacement is a new file, other hard links to the old one keep the old contents. ``~`` is not expanded
    (as in ``numpy.save``): pass ``os.path.expanduser(path)`` for a path in the home folder.
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
    ``OSError`` names ``path``, not the temporary file.

    A symbolic link at ``path`` is followed (its target is replaced, the link kept); an existing file that cannot
    be written (``PermissionError``) or that is not a regular file (``ValueError``) is refused, before ``write``
    is called."""
    target = _write_target(path, "write")
    folder = os.path.dirname(target)
    tmp = None
    try:
        fd, tmp = _create_temporary(folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        except FileNotFoundError:
            pass
        os.replace(tmp, target)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError):
            raise type(err)(err.errno, f"cannot write {path!r}: {err.strerror or err}") from err
        raise


def _write_target(path: str, action: str) -> str:
    """The file a write to ``path`` replaces: ``path`` with symbolic links resolved. An existing one must be a
    regular file (``ValueError``) that this process may write (``PermissionError``)."""
    target = os.path.realpath(path)
    where = f"{path!r}" if target == os.path.abspath(path) else f"{path!r} (a link to {target!r})"
    _check_regular(target, action, where)
    if os.path.exists(target) and not os.access(target, os.W_OK):
        mode = stat.S_IMODE(os.stat(target).st_mode)
        raise PermissionError(errno.EACCES, f"cannot {action} {where}: the file exists and is read-only for you "
                                            f"(mode {mode:#o}); expected a file you can write: make it writable "
                                            "or choose another name")
    return target


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
    (``FileNotFoundError``) and be writable (``PermissionError``); an existing file there must be a regular file
    (``ValueError``) that can be written (``PermissionError``); ``path`` must be a ``str``, ``bytes`` or
    ``os.PathLike``, not empty, without NUL characters. A symbolic link is checked where it points. A program can
    call it before long work whose result it will save."""
    path = _check_path(path, "save to")
    if os.path.isdir(path) or path.endswith(tuple(s for s in (os.sep, os.altsep) if s)):
        raise IsADirectoryError(f"cannot save to {path!r}: it names a folder; give a file name, such as "
                                f"{os.path.join(path, 'model.npz')!r}")
    if not path.lower().endswith(".npz"):
        path += ".npz"
    folder = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path!r}: folder {folder!r} does not exist{_tilde_hint(path)}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot save to {path!r}: folder {folder!r} is not writable")
    _write_target(path, "save to")
    return path


def _tilde_hint(path: str) -> str:
    """For a path that starts with ``~``: a note that it was taken literally, not as the home folder."""
    if not path.startswith("~"):
        return ""
    return (f" ('~' is not expanded, as numpy does not expand it: for the home folder, pass "
            f"os.path.expanduser({path!r}))")


def _check_path(path, action: str) -> str:
    """``path`` as a ``str`` (a ``str``, ``bytes`` or ``os.PathLike``), not empty, without NUL characters."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"cannot {action} {path!r}: a path must be a str, bytes or os.PathLike, "
                        f"got {type(path).__name__}")
    path = os.fsdecode(os.fspath(path))
    if not path:
        raise ValueError(f"cannot {action} an empty path: give a file name, such as 'model.npz'")
    if "\0" in path:
        raise ValueError(f"cannot {action} {path!r}: expected a path without NUL characters ('\\x00'), "
                         f"got one with a NUL at position {path.index(chr(0))}")
    return path


def load(path):
    """Read a model written by ``save``. As ``save`` appends ``.npz`` to a path without it, ``load("model")``
    reads ``model.npz`` when there is no file ``model``. ``~`` is not expanded (as in ``numpy.load``).

    The arrays' names, shapes and dtypes are read from their headers and checked against the model the metadata
    describes before the model is built or any array read: a corrupt or crafted file is refused without
    filling the memory.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    IsADirectoryError, PermissionError
        If ``path`` names a folder, or a file that cannot be read.
    ValueError
        If the file is not an fffcpu model: not a regular file (a FIFO, a device), not an npz (zip) file,
        truncated, without metadata, of an unknown or newer format version, an unknown class, an invalid
        configuration, or arrays missing, unexpected or of the wrong shape or dtype.
    MemoryError
        If the model would not fit in this machine's memory.
    """
    path = _model_file(path)
    with _open_archive(path) as archive:
        members = {m.removesuffix(".npy"): m for m in archive.namelist()}
        meta = _read_meta(path, archive, members)
        cls = _model_class(path, meta)
        expected = _expected_shapes(path, cls, meta)
        _check_arrays(path, cls, archive, members, expected)
        try:
            model = cls(**meta["config"])
            arrays = {name: _read_entry(path, archive, members[name]) for name in expected}
        except MemoryError:
            n_values = sum(math.prod(shape) for shape in expected.values())
            raise MemoryError(f"cannot load {path!r}: its {n_values:,} parameter values do not fit in the free "
                              "memory") from None
    try:
        model.set_params(arrays)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path!r} does not hold a valid {cls.__name__}: {err}") from None
    return model


def _model_file(path) -> str:
    """The file ``load(path)`` reads, checked to be a readable regular file that starts as an .npz does."""
    path = _check_path(path, "load")
    if not os.path.exists(path) and not path.lower().endswith(".npz") and os.path.isfile(path + ".npz"):
        path += ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}{_tilde_hint(path)}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot load {path!r}: it is a folder, not a model file")
    start, numpy_file = file_start(path, "load")
    if not numpy_file:
        raise ValueError(f"{path!r} is not a readable fffcpu model file: an fffcpu model is an .npz (zip) file, "
                         f"and this one starts with {start!r}")
    if start.startswith(_NPY_MAGIC):
        try:
            with open(path, "rb") as f:
                shape, dtype = npy_header(f)
        except _READ_ERRORS as err:
            raise ValueError(f"{path!r} is not a readable fffcpu model file (corrupt or truncated: {err})") from None
        raise ValueError(f"{path!r} holds a single array ({dtype} {shape}), not an fffcpu model "
                         "(an .npz file written by fffcpu.save)")
    return path


def _open_archive(path: str) -> zipfile.ZipFile:
    """``path`` opened as a zip archive, or a ``ValueError`` naming it."""
    try:
        return zipfile.ZipFile(path)
    except _READ_ERRORS as err:
        raise ValueError(f"{path!r} is not a readable fffcpu model file (corrupt or truncated: {err})") from None


def npy_header(f) -> tuple[tuple, np.dtype]:
    """Shape and dtype of the .npy data that ``f`` starts with, from its header alone: no array data is read."""
    head = BytesIO(f.read(_NPY_HEADER_BYTES))
    version = np.lib.format.read_magic(head)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(head)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(head)
    else:
        raise ValueError(f"expected an .npy header of version 1.0 or 2.0, got version {version}")
    return shape, dtype


def _entry_header(path: str, archive: zipfile.ZipFile, member: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of the .npy entry ``member`` of ``archive``, read from its header."""
    try:
        with archive.open(member) as f:
            return npy_header(f)
    except _READ_ERRORS as err:
        raise ValueError(f"{path!r} is not a readable fffcpu model file (entry {member!r}: {err})") from None


def _read_entry(path: str, archive: zipfile.ZipFile, member: str) -> np.ndarray:
    """The array of the .npy entry ``member`` (never unpickled)."""
    try:
        with archive.open(member) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except _READ_ERRORS as err:
        raise ValueError(f"{path!r} is not a readable fffcpu model file (corrupt or truncated: {err})") from None


def _read_meta(path: str, archive: zipfile.ZipFile, members: dict) -> dict:
    """The JSON metadata entry, after its header shows a single string of at most ``_META_BYTES``."""
    if _META_KEY not in members:
        raise ValueError(f"{path!r} is an .npz file but not an fffcpu model (no {_META_KEY!r} entry)")
    shape, dtype = _entry_header(path, archive, members[_META_KEY])
    if dtype.kind != "U" or shape != () or dtype.itemsize > _META_BYTES:
        raise ValueError(f"{path!r} is not a readable fffcpu model file: its {_META_KEY!r} entry should be one "
                         f"JSON text (a str array of shape () up to {format_bytes(_META_BYTES)}), got {dtype} "
                         f"{shape} ({format_bytes(dtype.itemsize)})")
    text = str(_read_entry(path, archive, members[_META_KEY]))
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path!r} is not a readable fffcpu model file: its metadata is not JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != "fffcpu":
        found = f"'format': {meta.get('format')!r}" if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path!r} has metadata that is not fffcpu's: expected a JSON object with "
                         f"'format': 'fffcpu', got {found}")
    _check_version(path, meta.get("format_version"))
    return meta


def _check_version(path: str, version) -> None:
    """``version`` must be an integer (not a bool) from 1 to ``FORMAT_VERSION``."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path!r} has format version {version!r} ({type(version).__name__}); expected an "
                         f"integer from 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format version {version!r}; this fffcpu reads versions up to {FORMAT_VERSION} "
            "(upgrade fffcpu)"
        )


def _model_class(path: str, meta: dict) -> type:
    """The model class the metadata names, with a JSON object of constructor arguments."""
    name = meta.get("class")
    cls = _MODELS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{path!r} holds a model of unknown class {meta.get('class')!r}; known: {sorted(_MODELS)}")
    if "config" not in meta:
        raise ValueError(f"{path!r} does not hold a valid {cls.__name__}: its metadata should have a 'config' "
                         f"entry (a JSON object of constructor arguments), got only the keys {sorted(meta)}")
    if not isinstance(meta["config"], dict):
        raise ValueError(f"{path!r} does not hold a valid {cls.__name__}: its 'config' should be a JSON object of "
                         f"constructor arguments, got {type(meta['config']).__name__}")
    return cls


class _ParamShapes(Exception):
    """Raised, in place of allocating the parameters, by a model built only to learn their shapes."""


def _param_shapes(cls: type, config: dict) -> dict:
    """The parameter shapes of ``cls(**config)``: its constructor runs every check of the configuration, and
    refuses a model larger than this machine's memory, up to where it would allocate the parameters, and stops
    there. Nothing large is allocated."""
    def stop(self, rng):
        raise _ParamShapes(self.param_shapes())

    try:
        model = type(cls.__name__, (cls,), {"_init_params": stop})(**config)
    except _ParamShapes as stopped:
        return stopped.args[0]
    return model.param_shapes()


def _expected_shapes(path: str, cls: type, meta: dict) -> dict:
    """Parameter name -> shape of the model the metadata describes, or an error naming ``path``."""
    try:
        return {name: tuple(shape) for name, shape in _param_shapes(cls, meta["config"]).items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path!r} does not hold a valid {cls.__name__}: {err}") from None
    except MemoryError as err:
        raise MemoryError(f"cannot load {path!r}: {err}") from None


def _check_arrays(path: str, cls: type, archive: zipfile.ZipFile, members: dict, expected: dict) -> None:
    """The archive must hold exactly the ``expected`` arrays, with those shapes and real dtypes, as their
    headers say: checked before any array is read."""
    found = set(members) - {_META_KEY}
    missing, extra = sorted(set(expected) - found), sorted(found - set(expected))
    if missing or extra:
        raise ValueError(f"{path!r} does not hold a valid {cls.__name__}: expected the arrays {list(expected)}; "
                         f"missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        found_shape, dtype = _entry_header(path, archive, members[name])
        if found_shape != shape:
            raise ValueError(f"{path!r} does not hold a valid {cls.__name__}: parameter {name!r} must have shape "
                             f"{shape}, got {found_shape}")
        if dtype.kind not in "fiu":
            raise ValueError(f"{path!r} does not hold a valid {cls.__name__}: parameter {name!r} must hold real "
                             f"numbers (a float or integer dtype), got dtype {dtype}")
