"""Argument checks shared by every public entry point: clear messages that say what was expected and what was given."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping

import numpy as np

FLOAT_DTYPES = ("float32", "float64")


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    if type(value) is int and value >= minimum:  # the common case, cheap enough for per-level calls in training
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_seed(seed, name: str = "seed"):
    """``seed`` as None or a plain int >= 0 (NumPy integers converted, so that it can be saved in JSON)."""
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be None or an integer >= 0, got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"{name} must be None or an integer >= 0, got {seed}")
    return int(seed)


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_state_dict(state_dict, where: str) -> Mapping:
    """``state_dict`` if it is a mapping (a torch ``state_dict()`` or a dict of arrays); otherwise a ``TypeError``
    that names the likely mistake: the torch module passed instead of its ``state_dict()``."""
    if isinstance(state_dict, Mapping):
        return state_dict
    if callable(getattr(state_dict, "state_dict", None)):
        raise TypeError(f"{where} takes a state dict: pass model.state_dict(), not the {type(state_dict).__name__} "
                        "module itself")
    raise TypeError(f"{where} expects a mapping of parameter names to tensors or arrays, got "
                    f"{type(state_dict).__name__}")


def check_probability(value, name: str, *, below_one: bool = False) -> float:
    """A number in [0, 1], or in [0, 1) with ``below_one``."""
    interval = "[0, 1)" if below_one else "[0, 1]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in {interval}, got {value!r}")
    if not (0.0 <= value < 1.0 if below_one else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return float(value)


def check_positive_float(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def check_nonnegative_float(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def check_dtype(dtype) -> np.dtype:
    if dtype is None:  # np.dtype(None) would silently mean float64
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got None")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}") from None
    if dt.name not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dt.name!r}")
    return dt.newbyteorder("=")  # the machine's byte order: '>f4' is float32 here


#: Batches whose allocations stay below this are not checked against physical memory.
SMALL_BATCH_BYTES = 1 << 28


def check_input(x, n_features: int, dtype: np.dtype, *, name: str = "x", finite: bool = False,
                per_sample: int = 0, what: str = "this call") -> np.ndarray:
    """Return ``x`` as a 2-D array of ``dtype`` with ``n_features`` columns, or raise a clear error.

    Integers and booleans are converted; complex, object and string data are refused. With ``finite=True``
    NaN or Inf is refused too (training needs it; prediction lets NaN propagate, see ``FFF.predict``).
    A batch whose converted copy plus ``per_sample`` bytes per row (what the caller will allocate: outputs,
    caches) would not fit in physical memory is refused (``MemoryError`` naming ``what``) before anything is
    allocated.
    """
    arr = as_array(x, name)
    if arr.dtype.kind in "cOSUVMm":
        raise TypeError(
            f"{name} must hold real numbers, got dtype {arr.dtype}"
            + (" (complex values: pass the real part explicitly)" if arr.dtype.kind == "c" else "")
        )
    if arr.ndim != 2:
        hint = f"; for one sample use {name}.reshape(1, -1)" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_samples, {n_features}), got shape {arr.shape}{hint}")
    if arr.shape[1] != n_features:
        raise ValueError(
            f"{name} has {arr.shape[1]} features, the model was built for input_width={n_features}"
        )
    copied = arr.dtype != dtype or not arr.flags.c_contiguous  # converted here, or made contiguous by the caller
    n_bytes = float(arr.shape[0]) * (per_sample + (n_features * np.dtype(dtype).itemsize if copied else 0))
    if n_bytes > SMALL_BATCH_BYTES:  # (asking the OS for its memory size costs ~1 µs)
        check_fits_in_memory(n_bytes, f"{what} on {arr.shape[0]:,} samples")
    if finite:
        check_finite(arr, name, dtype, "training needs finite inputs")
    with np.errstate(over="ignore"):  # (finite=False: values beyond the dtype's range become ±Inf, as documented)
        return arr.astype(dtype, copy=False)


def check_finite(arr: np.ndarray, name: str, dtype, why: str, *, count: bool = True) -> None:
    """Refuse NaN or Inf in ``arr`` (saying how many with ``count``), and finite values that ``dtype`` cannot
    hold (they would become Inf)."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); {why}" if count
                         else f"{name} contains NaN or Inf; {why}")
    if arr.size and arr.dtype.kind in "fiu" and np.dtype(dtype).kind == "f":
        largest = float(np.finfo(dtype).max)
        biggest = max(abs(float(arr.max())), abs(float(arr.min())))
        if biggest > largest:
            raise ValueError(f"{name} has values up to {biggest:.3g} in magnitude, beyond the largest "
                             f"{np.dtype(dtype)} ({largest:.3g}): they would become Inf; {why}")


def as_array(x, name: str) -> np.ndarray:
    """``np.asarray(x)``, except that a masked array with masked values is refused (``asarray`` would drop the
    mask), a pandas object with nullable numeric columns (``Float32``, ``Int64``) becomes floats (``NA`` as NaN),
    and rows of different lengths get a message that names ``x``."""
    if isinstance(x, np.ma.MaskedArray):
        if np.ma.count_masked(x):
            raise ValueError(f"{name} is a masked array with {np.ma.count_masked(x)} masked value(s): fill them "
                             f"first ({name}.filled(value)); a model reads every value")
        return np.asarray(x.data)
    if not isinstance(x, np.ndarray) and callable(getattr(x, "to_numpy", None)):
        arr = x.to_numpy()
        if arr.dtype == object:
            try:
                arr = x.to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                pass  # not numbers: refused by the caller with the dtype
        return arr
    try:
        return np.asarray(x)
    except ValueError as err:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got rows of different lengths "
                         f"({err})") from None


def is_valid_input(x, n_features: int, dtype) -> bool:
    """Whether ``x`` is already what ``check_input`` would return: a C-contiguous 2-D ndarray of ``dtype`` with
    ``n_features`` columns. The models' fast paths test this to skip conversion and copies."""
    return (type(x) is np.ndarray and x.ndim == 2 and x.dtype == dtype and x.shape[1] == n_features
            and x.flags.c_contiguous)


def check_out(out, x: np.ndarray, shape: tuple, dtype) -> np.ndarray:
    """``out`` if it can take a result of ``shape`` and ``dtype`` computed from ``x``: a writeable C-contiguous
    ndarray that does not overlap ``x``; otherwise a clear error, and ``out`` is left as it was."""
    dtype = np.dtype(dtype)
    if (type(out) is np.ndarray and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous
            and out.flags.writeable and not np.may_share_memory(out, x)):
        return out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a NumPy array of shape {shape} and dtype {dtype}, got {type(out).__name__}")
    problems = [f"shape {out.shape} (expected {shape})" if out.shape != shape else "",
                f"dtype {out.dtype} (expected {dtype})" if out.dtype != dtype else "",
                "not C-contiguous" if not out.flags.c_contiguous else "",
                "read-only" if not out.flags.writeable else "",
                "overlaps x" if np.may_share_memory(out, x) else ""]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"out: {', '.join(problems)}; expected a writeable C-contiguous array of shape "
                         f"{shape} and dtype {dtype} that does not overlap x")
    return out


def physical_memory_bytes() -> int | None:
    """Total physical memory of this machine, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def check_fits_in_memory(n_bytes: float, what: str) -> None:
    """Refuse, before allocating, anything larger than this machine's physical memory."""
    total = physical_memory_bytes()
    if total is not None and n_bytes > total:
        raise MemoryError(
            f"{what} would need {format_bytes(n_bytes)}, more than this machine's "
            f"{format_bytes(total)} of memory"
        )
