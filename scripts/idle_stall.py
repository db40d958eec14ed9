"""Parallel calls made after the process was idle (README, "Hard inference": "Parallel calls after an idle pause").

Times ``FFF(784, 16, 10, 9).predict`` on 256 inputs and ``UltraFFF(768, 768, 11).predict`` on 128 tokens, each
call made after ``--pause`` seconds of sleep and then once more at once, over ``--rounds`` rounds, and the median
of 20 calls back to back; prints every time and the range. Run it under each threading setting to compare:

    python scripts/idle_stall.py
    OMP_WAIT_POLICY=passive python scripts/idle_stall.py       # OpenMP workers sleep at once after each call
    NUMBA_THREADING_LAYER=workqueue python scripts/idle_stall.py
"""

import argparse
import os
import time

import numpy as np

import fffcpu
from fffcpu import engine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.2)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    models = {
        "FFF(784, 16, 10, 9), 256 inputs": (fffcpu.FFF(784, 16, 10, 9, seed=0),
                                            rng.standard_normal((256, 784)).astype(np.float32)),
        "UltraFFF(768, 768, 11), 128 tokens": (fffcpu.UltraFFF(768, 768, 11, seed=0),
                                               rng.standard_normal((128, 768)).astype(np.float32)),
    }
    for model, x in models.values():  # compile or load the kernels, start the thread pool
        model.predict(x)
    settings = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    print(f"Numba threading layer: {engine.threading_layer()}, {engine.resolve_n_jobs(None)} threads; "
          f"pause {args.pause} s; {settings or 'OpenMP settings unset'}")
    for name, (model, x) in models.items():
        after_pause, again = [], []
        for _ in range(args.rounds):
            time.sleep(args.pause)
            for times in (after_pause, again):
                start = time.perf_counter()
                model.predict(x)
                times.append((time.perf_counter() - start) * 1e3)
        for label, times in (("after the pause", after_pause), ("again at once", again)):
            shown = " ".join(f"{t:.2f}" for t in times)
            print(f"{name}, {label}: {min(times):.2f}-{max(times):.2f} ms  [{shown}]")
        back_to_back = []
        for _ in range(20):
            start = time.perf_counter()
            model.predict(x)
            back_to_back.append((time.perf_counter() - start) * 1e3)
        print(f"{name}, back to back: median {np.median(back_to_back):.2f} ms")


if __name__ == "__main__":
    main()
