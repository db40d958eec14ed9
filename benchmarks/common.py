"""Shared helpers of the benchmarks: timing, peak memory, machine description, markdown tables."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import functools
import os
import platform
import time

import numpy as np

from fffcpu.info import blas_summary, cpu_details, cpu_model  # noqa: F401 (the benchmarks import them from here)

THREADS = 2  # every library gets this many threads (Numba, BLAS, torch)

#: Seconds of sleep (not timed) after each method's turn. After a call returns, a thread pool keeps its workers
#: spinning for a while in case more work comes: OpenBLAS's pthreads for about 0.1 s here (2**28 cycles by
#: default), OpenMP workers (Numba's, torch's) for a shorter time. A method timed while another library's workers
#: still spin shares the 2 cores with them: measured on this machine (scripts/blas_spin.py), FFF(784, 16, 10,
#: 9).predict on 4096 inputs took 4.8 ms (2.0-6.2 ms) right after a NumPy matmul and 2.2 ms after 0.2 s of sleep.
#: Each method therefore starts from idle thread pools, as in a program that does not alternate libraries in a
#: tight loop.
SETTLE_S = 0.2

#: Seconds of untimed calls a method makes at the start of each turn, after the pause (methods whose call takes
#: less than this): after 0.2 s of idling the core's clock and caches need a moment, and a method timed on calls
#: of a few microseconds would otherwise pay that for its first calls of every turn.
WARM_S = 0.02


def settle(seconds=SETTLE_S):
    """Sleep until the thread pools of the previously timed library have stopped spinning."""
    time.sleep(seconds)


@dataclasses.dataclass
class Section:
    """What a benchmark module returns: a markdown section, plus raw rows and checks for tests."""

    title: str
    markdown: str
    rows: list = dataclasses.field(default_factory=list)
    checks: dict = dataclasses.field(default_factory=dict)
    figures: dict = dataclasses.field(default_factory=dict)


def median_time(fn, *, min_repeats=3, max_repeats=50, budget=1.0, warmup=1):
    """Median wall time of ``fn(k)`` (k = call number, so each call can take distinct inputs).

    After ``warmup`` untimed calls, calls until ``max_repeats`` or until ``budget`` seconds are spent, but at least
    ``min_repeats`` times.
    """
    for k in range(warmup):
        fn(k)
    times, spent, k = [], 0.0, warmup
    while len(times) < min_repeats or (len(times) < max_repeats and spent < budget):
        t0 = time.perf_counter()
        fn(k)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        k += 1
    return float(np.median(times)), len(times)


def best_time(fn, repeats):
    """Fastest of ``repeats`` wall times of ``fn()``: for loops whose data stay in cache and for bounds, which a
    slow timing (an interruption, another job) must not lower."""
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def warm(fn, k, seconds=WARM_S):
    """Untimed calls ``fn(k)``, ``fn(k + 1)``... for ``seconds`` (at least one); returns the next call number."""
    started = time.perf_counter()
    while True:
        fn(k)
        k += 1
        if time.perf_counter() - started >= seconds:
            return k


def interleaved_medians(fns, *, budget=1.0, min_repeats=None, max_repeats=None, warmup=1, slice_s=0.2,
                        settle_s=SETTLE_S):
    """Median wall time of each ``fns[name](k)``, the methods taking turns so that they see the same machine load.

    ``fns`` maps a name to a callable of the call number k (so each call can take distinct inputs). After
    ``warmup`` untimed calls each, the methods run in rounds; in a round each method still running makes calls
    for about ``slice_s`` seconds (at least one), then the process sleeps ``settle_s`` (see ``SETTLE_S``; not
    counted) before the next method's turn, which starts with untimed calls for ``WARM_S`` if the method's
    calls are shorter than that (``warm``). A method stops once it has ``min_repeats[name]`` (default 3)
    timings and either ``max_repeats[name]`` (default 50) of them or ``budget`` seconds spent. Returns
    ``{name: (median seconds, repeats)}``.
    """
    min_repeats, max_repeats = min_repeats or {}, max_repeats or {}
    for fn in fns.values():
        for k in range(warmup):
            fn(k)
    settle(settle_s)
    times = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)

    def running(name):
        n = len(times[name])
        return n < min_repeats.get(name, 3) or (n < max_repeats.get(name, 50) and spent[name] < budget)

    k = warmup
    while any(running(name) for name in fns):
        for name, fn in fns.items():
            if not running(name):
                continue
            if settle_s and times[name] and np.median(times[name]) < WARM_S:
                k = warm(fn, k)
            in_slice = 0.0
            while running(name) and (in_slice == 0.0 or in_slice < slice_s):
                t0 = time.perf_counter()
                fn(k)
                dt = time.perf_counter() - t0
                times[name].append(dt)
                spent[name] += dt
                in_slice += dt
                k += 1
            settle(settle_s)
    return {name: (float(np.median(t)), len(t)) for name, t in times.items()}


def _status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where there is no glibc."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def _release_free_heap():
    """Hand the C heap's free memory back to the system (glibc's ``malloc_trim(0)``, every arena): memory an
    allocation then takes from the heap must be faulted in again, so it counts in the resident set. Without it, a
    call whose buffers come from memory that earlier, larger arrays freed adds nothing to the resident set. No-op
    where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def peak_memory(fn):
    """Peak resident memory (bytes) that one ``fn()`` adds above the memory in use before the call.

    Linux: returns the heap's free memory to the system (``_release_free_heap``), resets the high-water mark
    (``/proc/self/clear_refs``) and reads ``VmHWM`` after the call; this sees NumPy, Numba (NRT) and torch
    allocations alike, to the page. Returns None where that is not available.
    """
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024


def source_revision() -> str:
    """The fffcpu source the figures come from: its git commit (``-dirty`` with uncommitted changes), or its
    version where it is not a git checkout."""
    import subprocess

    import fffcpu

    root = os.path.dirname(os.path.dirname(os.path.abspath(fffcpu.__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"fffcpu {fffcpu.__version__} (not a git checkout)"
    return f"fffcpu {fffcpu.__version__}, commit {commit}{'-dirty' if dirty else ''}"


def machine_info(threads=THREADS) -> dict:
    """CPU, versions, BLAS (threadpoolctl: internal_api, architecture = kernel, threads), Numba threading layer."""
    import numba
    import scipy
    from threadpoolctl import threadpool_info

    from fffcpu import engine

    info = {
        "fffcpu source": source_revision(),
        "CPU": f"{cpu_model()} ({os.cpu_count()} logical CPUs)",
        "CPU details": cpu_details() or "not reported by this system",
        "Python": platform.python_version(),
        "NumPy": np.__version__,
        "SciPy": scipy.__version__,
        "Numba": numba.__version__,
        "Numba threading layer": engine.threading_layer(),
        "Numba threads": f"{threads} (of {numba.config.NUMBA_NUM_THREADS})",
    }
    for k, lib in enumerate(threadpool_info()):
        info[f"threadpool {k}"] = (
            f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('user_api')}), kernel/architecture "
            f"{lib.get('architecture')}, {lib.get('num_threads')} threads, threading {lib.get('threading_layer')}, "
            f"{os.path.basename(lib.get('filepath', ''))}"
        )
    try:
        import torch

        info["torch"] = f"{torch.__version__}, {torch.get_num_threads()} threads"
        import fastfeedforward  # noqa: F401

        info["fastfeedforward"] = _dist_version("fastfeedforward")
    except ImportError:
        info["torch"] = "not installed (torch columns skipped)"
    try:
        with open("/proc/loadavg") as f:
            info["load average at report time"] = " ".join(f.read().split()[:3])
    except OSError:
        pass
    return info


def _dist_version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def have_torch() -> bool:
    try:
        import fastfeedforward  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def fmt_rate(v):
    if v is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def fmt_bytes(n):
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def fmt_x(v):
    return "–" if v is None else (f"{v:.0f}x" if v >= 10 else f"{v:.2g}x")


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section_main(run, doc, argv=None):
    """The command line of a benchmark module, ``python -m benchmarks.<module> [--quick]``: prints its section."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args(argv).quick).markdown)
