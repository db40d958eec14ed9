"""The dense baselines' BLAS kernel: how much the speed-ups over dense NumPy depend on it.

OpenBLAS picks its compute kernel for the CPU when it loads, unless the environment variable
``OPENBLAS_CORETYPE`` names one; a kernel for an older CPU (Haswell: 256-bit vectors) leaves a newer CPU's wider
units idle and makes the dense layers slower, and every speed-up over them larger. The report's other sections
time the dense layers with the environment as given; this one times them at the target points in fresh processes,
once with the environment as given and once without ``OPENBLAS_CORETYPE`` (OpenBLAS's own choice for this CPU),
and fffcpu at the same points in this process, so that both speed-ups stand side by side.

    python -m benchmarks.blas_kernel [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np

import fffcpu

from .common import THREADS, Section, fmt_x, median_time, settle, table, warm

VARIABLE = "OPENBLAS_CORETYPE"
LEAF = 16

#: What is timed: ("fff", training width, depth, batch): FFF(784, 16, 10, depth).predict against the dense NumPy FF
#: of that width (benchmarks.inference); ("ultra", batch): UltraFFF(768, 768, 11).predict against the dense
#: NumPy FF-3072 with GELU (benchmarks.ultra); ("ultra_train", batch): UltraFFF's path-only training step against
#: the masked dense formulation (every logit, a mask on the path: benchmarks.ultra). In these the dense side uses
#: the BLAS. ("fff_train", batch): the soft training step of FFF(784, 8, 10, 4) (benchmarks.training), whose
#: matrix products go through NumPy's BLAS too: here fffcpu is the side that runs with each kernel (the torch
#: package it is compared with in the section "Training step" has a BLAS of its own).
JOBS = [("fff", 65536, 12, 1), ("fff", 65536, 12, 4096), ("fff", 8192, 9, 4096),
        ("ultra", 1), ("ultra", 16384), ("ultra_train", 2048), ("fff_train", 256)]
QUICK_JOBS = [("fff", 1024, 6, 1), ("fff", 1024, 6, 256), ("ultra", 16), ("ultra_train", 64), ("fff_train", 256)]

#: Runs in a fresh process (the BLAS kernel is chosen when the library loads): the dense side of every job.
CHILD = r"""
import json, sys
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from benchmarks.blas_kernel import dense_call
from benchmarks.common import median_time
jobs, threads, quick = json.loads(sys.argv[1])
blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
result = {"kernel": ", ".join(sorted({i.get("architecture") or i["internal_api"] for i in blas})) or "none",
          "seconds": []}
with threadpool_limits(limits=threads):
    for job in jobs:
        call = dense_call(tuple(job), quick)
        t, _ = median_time(call, budget=0.3 if quick else 3.0)
        result["seconds"].append(t)
print(json.dumps(result))
"""


def dense_call(job, quick):
    """``call(k)``: the side of ``job`` that runs with each BLAS kernel, on its k-th input (a new batch per call, as
    in the grid): the dense baseline, or for "fff_train" fffcpu's training step."""
    rng = np.random.default_rng(0)
    if job[0] == "fff_train":
        from fffcpu.optim import Adam

        from .training import DEPTH, INPUT, LEAF, LR, OUTPUT, batches, fffcpu_step

        model = fffcpu.FFF(INPUT, LEAF, OUTPUT, DEPTH, seed=0)
        step, (xs, labels) = fffcpu_step(model, Adam(model.params, lr=LR)), batches(quick)
        return lambda k: step(xs[k % len(xs)], labels[k % len(xs)])
    if job[0] == "fff":
        from .inference import DenseNumPy, _pool

        _, width, _, batch = job
        dense, pool = DenseNumPy(width, rng), _pool(rng, batch, quick)
        return lambda k: dense(pool[k % len(pool)])
    if job[0] == "ultra":
        from .ultra import DenseNumpy, token_pool

        dense, pool = DenseNumpy(3072, rng), token_pool(rng, job[1])
        buffers = dense.buffers(job[1])
        return lambda k: dense(pool[k % len(pool)], *buffers)
    from .ultra import training_data, training_steps

    _, masked_step = training_steps(*training_data(job[1]))
    return lambda k: masked_step()


def fffcpu_call(job, quick):
    """``call(k)``: fffcpu's side of ``job`` on its k-th input (None for "fff_train", whose fffcpu side is the one
    that runs with each kernel)."""
    rng = np.random.default_rng(1)
    if job[0] == "fff_train":
        return None
    if job[0] == "fff":
        from .inference import INPUT_WIDTH, OUTPUT_WIDTH, _pool

        _, _, depth, batch = job
        model = fffcpu.FFF(INPUT_WIDTH, LEAF, OUTPUT_WIDTH, depth, dtype="float32", seed=0)
        pool = _pool(rng, batch, quick)
        return lambda k: model.predict(pool[k % len(pool)])
    from .ultra import DEPTH, WIDTH, token_pool, training_data, training_steps

    if job[0] == "ultra":
        model, pool = fffcpu.UltraFFF(WIDTH, WIDTH, DEPTH, seed=0), token_pool(rng, job[1])
        y = np.empty((job[1], WIDTH), np.float32)
        return lambda k: model.predict(pool[k % len(pool)], out=y)
    path_step, _ = training_steps(*training_data(job[1]))
    return lambda k: path_step()


def dense_times(jobs, threads, quick, environ) -> dict:
    """``{"kernel": ..., "seconds": [...]}``: the dense side of ``jobs``, timed in a fresh process whose environment
    is ``environ``."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([jobs, threads, quick])],
                          cwd=root, env=dict(environ), capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def fffcpu_times(jobs, threads, quick) -> list:
    """Median seconds of fffcpu's side of ``jobs``, in this process."""
    numba.set_num_threads(threads)
    fffcpu.warmup()
    out = []
    for job in jobs:
        call = fffcpu_call(job, quick)
        if call is None:
            out.append(None)
            continue
        settle()
        k = warm(call, 0)  # the core's clock and caches after the pause, as the grid does
        t, _ = median_time(lambda i: call(k + i), warmup=0, max_repeats=10_000, budget=0.3 if quick else 1.0)
        out.append(t)
    return out


def compare(jobs, threads=THREADS, quick=False, environ=None) -> dict:
    """The dense side of ``jobs`` with ``environ`` (default: this process's environment) and, when it sets
    ``OPENBLAS_CORETYPE``, again without it; fffcpu's side in this process."""
    environ = dict(os.environ if environ is None else environ)
    given = dense_times(jobs, threads, quick, environ)
    own = None
    if VARIABLE in environ:
        own = dense_times(jobs, threads, quick, {k: v for k, v in environ.items() if k != VARIABLE})
    return {"given": given, "own": own, "fffcpu": fffcpu_times(jobs, threads, quick),
            "variable": environ.get(VARIABLE)}


def describe(job) -> tuple:
    """(fffcpu side, dense side, batch) of ``job`` in words."""
    if job[0] == "fff":
        _, width, depth, batch = job
        return f"FFF depth {depth}, leaf {LEAF}", f"dense FF of width {width:,}", batch
    if job[0] == "ultra":
        return "UltraFFF(768, 768, 11)", "dense FF-3072 (GELU)", job[1]
    return "UltraFFF training step", "masked dense step", job[1]


def render(jobs, result, where="the target points") -> str:
    given, own, fff = result["given"], result["own"], result["fffcpu"]
    if own is None:
        return (f"`{VARIABLE}` is not set in this run's environment: the dense layers of the other sections ran with "
                f"the kernel OpenBLAS picked for this CPU ({given['kernel']}).")
    headers = ["fffcpu", "against", "batch", "fffcpu time", f"dense, kernel as given ({given['kernel']})", "speedup",
               f"dense, OpenBLAS's own choice ({own['kernel']})", "speedup", "dense time, given / own"]
    timed = list(zip(jobs, fff, given["seconds"], own["seconds"]))
    rows = [[*describe(job), f"{t * 1e3:.3f} ms", f"{g * 1e3:.3f} ms", fmt_x(g / t), f"{o * 1e3:.3f} ms",
             fmt_x(o / t), f"{g / o:.2f}"] for job, t, g, o in timed if job[0] != "fff_train"]
    training = [(job, t, g, o) for job, t, g, o in timed if job[0] == "fff_train"]
    same = given["kernel"] == own["kernel"]
    text = (f"This run's environment sets `{VARIABLE}={result['variable']}`, so the dense layers of the other "
            f"sections ran with the {given['kernel']} kernel of the BLAS"
            + (", the one it picks for this CPU anyway. " if same else
               f"; without the variable, OpenBLAS picks its {own['kernel']} kernel on this CPU. ")
            + f"Below, the dense side of {where}, with each kernel in a fresh process, and fffcpu's side in this one "
            "(medians, a new input batch per call where the other sections use one); a speed-up is the dense time "
            "over fffcpu's.")
    parts = [text, "", table(headers, rows)]
    for job, _, g, o in training:
        parts += ["", f"fffcpu's training goes through NumPy's BLAS as well: the soft training step of "
                  f"FFF(784, 8, 10, 4) at batch {job[1]} (section \"Training step\", against the torch package and its "
                  f"own BLAS) took {g * 1e3:.2f} ms with the {given['kernel']} kernel and {o * 1e3:.2f} ms with "
                  f"{own['kernel']} ({g / o:.2f}x), each in a fresh process."]
    return "\n".join(parts)


def run(quick=False, *, threads=THREADS) -> Section:
    jobs = QUICK_JOBS if quick else JOBS
    result = compare(jobs, threads, quick)
    where = "small points (a quick run)" if quick else "the target points"
    return Section("The dense baselines' BLAS kernel", render(jobs, result, where), [result])


def main(argv=None):
    from .common import section_main

    section_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
