"""One soft training step of an FFF: fffcpu (NumPy, hand-written backprop) vs the PyTorch package, and a dense FF.

Step = forward, hardening term, backward (no input gradient: a first layer), Adam update; batch 256, float32,
``FFF(784, 8, 10, 4)`` (training width 128, the paper's MNIST configuration) and the dense ``FF(784, 128, 10)``.
The torch package does ``training_forward(x, return_entropies=True)`` + cross-entropy + h · entropies.mean() +
autograd backward + ``torch.optim.Adam.step``, with ``torch.set_num_threads`` equal to the BLAS thread count.
Medians over steps after warm-up; every step gets a different batch.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from fffcpu import FF, FFF
from fffcpu.functional import cross_entropy_grad
from fffcpu.optim import Adam

from .common import (
    THREADS,
    Section,
    fmt_rate,
    have_torch,
    median_time,
    section_main,
    settle,
    table,
)

INPUT, LEAF, OUTPUT, DEPTH, HIDDEN, BATCH, HARDENING, LR = 784, 8, 10, 4, 128, 256, 0.1, 1e-3
TARGET = 2.0  # fffcpu step at least this many times faster than the torch package


def fffcpu_step(model, opt):
    def step(x, labels):
        y = model.forward(x)
        model.hardening_loss()
        model.backward(cross_entropy_grad(y, labels), hardening=HARDENING, input_grad=False)
        opt.step(model.grads)
    return step


def torch_step(threads):
    import fastfeedforward
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = fastfeedforward.FFF(INPUT, LEAF, OUTPUT, DEPTH)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def step(x, labels):
        xt, lt = torch.from_numpy(x), torch.from_numpy(labels)
        opt.zero_grad(set_to_none=True)
        y, entropies = model.training_forward(xt, return_entropies=True)
        loss = torch.nn.functional.cross_entropy(y, lt) + HARDENING * entropies.mean()
        loss.backward()
        opt.step()
    return step


def batches(quick):
    """Inputs and labels for the steps: 8 (quick) or 32 batches that the steps take in turn."""
    rng = np.random.default_rng(0)
    n_pool = 8 if quick else 32
    xs = [rng.standard_normal((BATCH, INPUT), dtype=np.float32) for _ in range(n_pool)]
    ls = [rng.integers(0, OUTPUT, BATCH).astype(np.int64) for _ in range(n_pool)]
    return xs, ls


def run(quick=False, *, threads=THREADS) -> Section:
    xs, ls = batches(quick)
    n_pool = len(xs)
    fff = FFF(INPUT, LEAF, OUTPUT, DEPTH, seed=0)
    ff = FF(INPUT, HIDDEN, OUTPUT, seed=0)
    steps = {"fffcpu FFF(784, 8, 10, 4)": fffcpu_step(fff, Adam(fff.params, lr=LR)),
             "fffcpu dense FF(784, 128, 10)": fffcpu_step(ff, Adam(ff.params, lr=LR))}
    if have_torch():
        steps["torch package fastfeedforward.FFF(784, 8, 10, 4)"] = torch_step(threads)
    budget, repeats = (0.3, 20) if quick else (2.0, 300)
    times = {}
    with threadpool_limits(limits=threads):
        for name, step in steps.items():
            settle()  # the previous method's BLAS or OpenMP threads stop spinning first
            times[name], _ = median_time(lambda k: step(xs[k % n_pool], ls[k % n_pool]), warmup=3, budget=budget,
                                         max_repeats=repeats)
            print(f"  {name}: {times[name] * 1e3:.2f} ms/step", flush=True)
    ours = times["fffcpu FFF(784, 8, 10, 4)"]
    rows = [[name, f"{t * 1e3:.2f} ms", fmt_rate(BATCH / t), f"{t / ours:.2f}"] for name, t in times.items()]
    pkg = [t for name, t in times.items() if name.startswith("torch")]
    ratio = pkg[0] / ours if pkg else None
    status = ("torch not installed" if ratio is None else
              f"{ratio:.2f}x faster than the torch package: target ≥ {TARGET:.0f}x " + ("met" if ratio >= TARGET else "missed"))
    md = "\n".join([
        f"One soft training step (forward, hardening term h = {HARDENING}, backward without input gradient, Adam "
        f"lr {LR}), batch {BATCH}, float32, {threads} threads (BLAS and torch). Median over steps after warm-up.",
        "",
        table(["model", "time / step", "samples/s", "time relative to fffcpu FFF"], rows),
        "",
        f"fffcpu FFF step: {status}.",
    ])
    return Section("Training step: fffcpu vs the PyTorch package", md, [dict(name=k, seconds=v) for k, v in times.items()],
                   {"steps": list(times)}, {"vs_torch_package": ratio})


def main(argv=None):
    section_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
