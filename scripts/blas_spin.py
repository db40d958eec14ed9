"""How a parallel fffcpu call fares right after a multithreaded NumPy matmul (README, "Hard inference").

OpenBLAS keeps its threads spinning for a while after a call; a parallel fffcpu call made in that window shares the
cores with them. This times ``FFF(784, 16, 10, 9).predict`` on 4096 inputs (a new batch per call) right after a
2048 x 2048 float32 matmul, after the matmul and 0.2 s of sleep, back to back, and right after a matmul made under
``threadpoolctl.threadpool_limits(1)``; medians and ranges over ``--rounds`` rounds.

    python scripts/blas_spin.py                               # OpenBLAS's default thread timeout
    OPENBLAS_THREAD_TIMEOUT=4 python scripts/blas_spin.py     # its threads sleep almost at once
"""

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import fffcpu
from fffcpu import engine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    model = fffcpu.FFF(784, 16, 10, 9, seed=0)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4096, 784)).astype(np.float32) for _ in range(8)]
    a = rng.standard_normal((2048, 2048)).astype(np.float32)
    for x in batches[:2]:
        model.predict(x)
    calls = iter(range(10**9))

    def timed():
        x = batches[next(calls) % len(batches)]
        start = time.perf_counter()
        model.predict(x)
        return (time.perf_counter() - start) * 1e3

    cases = {"right after a matmul": [], "after a matmul and 0.2 s of sleep": [], "back to back": [],
             "right after a matmul on one BLAS thread": []}
    for _ in range(args.rounds):
        a @ a
        cases["right after a matmul"].append(timed())
        a @ a
        time.sleep(0.2)
        cases["after a matmul and 0.2 s of sleep"].append(timed())
        cases["back to back"] += [timed() for _ in range(3)]
        with threadpool_limits(1):
            a @ a
        cases["right after a matmul on one BLAS thread"].append(timed())
    blas = [f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}, {i['num_threads']} threads)"
            for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"BLAS: {', '.join(blas)}; OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}; "
          f"Numba threading layer: {engine.threading_layer()}, {engine.resolve_n_jobs(None)} threads")
    print("FFF(784, 16, 10, 9).predict, 4096 inputs:")
    for name, ms in cases.items():
        print(f"  {name:42s} median {np.median(ms):6.2f} ms  (range {min(ms):.2f}-{max(ms):.2f} ms)")


if __name__ == "__main__":
    main()
