"""UltraFFF (UltraFastBERT-1x11) against dense feedforward layers on the CPU: inference and one training step.

Run from the repository root::

    python -m benchmarks.ultra            # the full benchmark (a few minutes on 2 cores)
    python -m benchmarks.ultra --quick    # fewer repeats, no batch 16384
    python -m benchmarks                  # every benchmark (``make bench``); ``run(quick)`` below is this module's part

Configuration of arXiv 2311.10770 §3.2 (spec §2): input = output = 768, depth 11 (4095 neurons, 12 used per token),
float32, 2 threads everywhere (Numba, BLAS, torch). Baselines: the dense FF ``y = GELU(x W1 + b1) W2 + b2`` of width
3072 (BERT-base) and 4095 (the same number of neurons), NumPy matmul into preallocated buffers, exact-erf GELU in
place; PyTorch dense (``nn.Linear`` + GELU under ``inference_mode``) when torch is installed. Every figure is the
median of several timed calls of the public API, after a warm-up call, measured in rounds that call UltraFFF and
every baseline in turn (``interleaved_times``), so that the load of a shared machine hits all of them alike. The
calls of one batch size take their inputs in turn from a pool of 4096 random tokens (``POOL_TOKENS``), so that
small batches do not find the rows of the previous call's paths in cache. Like the dense baseline, UltraFFF writes
into a preallocated output (``UltraFFF.predict(x, out=y)``); a column gives ``UltraFFF.predict(x)`` too, which
allocates its output at every call.

Training: one forward + backward step (input gradient included, as for a layer inside a network) at batch 2048, the
path kernels against the dense-masked formulation of the UltraFastBERT training code (all 4095 logits, off-path
activations masked) in NumPy (``fffcpu.models.ultra.masked_forward/backward``) and in torch autograd.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import time

import numba
import numpy as np
from scipy.special import erf
from threadpoolctl import threadpool_limits

from fffcpu import UltraFFF
from fffcpu.models.ultra import masked_backward, masked_forward

WIDTH, DEPTH, THREADS = 768, 11, 2
BATCHES = (1, 16, 128, 2048, 16384)
#: Tokens of distinct inputs that the calls of one batch size cycle through (at least one batch).
POOL_TOKENS = 4096


def _settle(quick):
    """The pause after each method's turn: short with ``--quick``, else ``common.SETTLE_S`` (None)."""
    return 0.02 if quick else None


def median_time(fn, *, min_seconds=0.3, max_repeats=200, min_repeats=3):
    """Median wall time of ``fn()`` over enough calls to fill ``min_seconds`` (after one warm-up call)."""
    fn()
    times = []
    started = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - started < min_seconds and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


#: Functions whose call takes less than this make untimed calls after each pause before they are timed
#: (``interleaved_times``): a stall of the first parallel call after the pause, up to about 15 ms, would be more
#: than a few percent of their time. Slower ones (the dense-masked training steps, 0.4-0.7 s) are timed at once.
WARM_BELOW_S = 0.1


def interleaved_times(fns, *, min_seconds=0.5, min_rounds=5, max_rounds=400, timing_seconds=2e-3, settle=None):
    """Median time per call of each of ``fns`` (name -> callable), measured in rounds that call every function
    in turn, so that a change of the machine's load hits all of them alike. A function faster than
    ``timing_seconds`` (judged by the fastest of three probe calls) is called several times per timing (the clock's
    resolution and the loop's overhead).
    After each timing the process sleeps ``settle`` seconds (default ``common.SETTLE_S``; not counted), so that
    the idle OpenBLAS threads or OpenMP workers of the previous function have stopped spinning before the next
    function runs; a function whose call takes less than ``WARM_BELOW_S`` then makes untimed calls for
    ``common.WARM_S`` (at least one) before it is timed. The first parallel call after such a pause can stall
    for milliseconds (the README's "Hard inference"), which a timing of one call of a few milliseconds would
    take for the function's own time: UltraFFF's training step, 14 ms back to back, took 14.0-21.8 ms when it
    was the first call after the pause (a third of 30 calls over 17 ms) and 13.4-20.4 ms as the second (one
    in 30)."""
    from .common import SETTLE_S, warm

    settle = SETTLE_S if settle is None else settle
    inner, short = {}, {}
    for name, fn in fns.items():
        fn()
        probe = []
        for _ in range(3):  # the fastest of three: one call that stalls must not set the calls per timing
            t0 = time.perf_counter()
            fn()
            probe.append(time.perf_counter() - t0)
        inner[name] = max(1, min(1000, int(timing_seconds / max(min(probe), 1e-9))))
        short[name] = min(probe) < WARM_BELOW_S
    times = {name: [] for name in fns}
    started = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - started < min_seconds and rounds < max_rounds):
        for name, fn in fns.items():
            k = inner[name]
            if settle and short[name]:  # untimed calls first (common.WARM_S): a stall would be a large share
                warm(lambda _: fn(), 0)
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            times[name].append((time.perf_counter() - t0) / k)
            time.sleep(settle)
        rounds += 1
    return {name: float(np.median(v)) for name, v in times.items()}


class DenseNumpy:
    """Dense FF with preallocated buffers: matmul(out=), bias, exact GELU in place, matmul(out=)."""

    def __init__(self, hidden, rng):
        bound_in, bound_hidden = 1 / math.sqrt(WIDTH), 1 / math.sqrt(hidden)
        self.w1 = rng.uniform(-bound_in, bound_in, (WIDTH, hidden)).astype(np.float32)
        self.b1 = rng.uniform(-bound_in, bound_in, hidden).astype(np.float32)
        self.w2 = rng.uniform(-bound_hidden, bound_hidden, (hidden, WIDTH)).astype(np.float32)
        self.b2 = rng.uniform(-bound_hidden, bound_hidden, WIDTH).astype(np.float32)
        self.hidden = hidden
        self.nbytes = sum(a.nbytes for a in (self.w1, self.b1, self.w2, self.b2))

    def buffers(self, n):
        return (np.empty((n, self.hidden), np.float32), np.empty((n, self.hidden), np.float32),
                np.empty((n, WIDTH), np.float32))

    def __call__(self, x, h, tmp, y):
        np.matmul(x, self.w1, out=h)
        h += self.b1
        np.multiply(h, np.float32(1 / math.sqrt(2)), out=tmp)
        erf(tmp, out=tmp)
        tmp += 1
        tmp *= 0.5
        h *= tmp
        np.matmul(h, self.w2, out=y)
        y += self.b2
        return y


def torch_dense(hidden):
    import torch

    layer = torch.nn.Sequential(torch.nn.Linear(WIDTH, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, WIDTH))
    layer.eval()

    def run(x):
        with torch.inference_mode():
            return layer(x)

    return run


def have_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def token_pool(rng, n):
    """Distinct inputs for calls on batches of ``n`` tokens: a pool of ``POOL_TOKENS`` random tokens cut into batches
    that the calls take in turn, so that small batches walk other paths at every call (the same input would find
    its 12 rows in L1)."""
    return [rng.standard_normal((n, WIDTH), dtype=np.float32) for _ in range(max(1, POOL_TOKENS // n))]


def inference(batches, quick):
    rng = np.random.default_rng(0)
    model = UltraFFF(WIDTH, WIDTH, DEPTH, seed=0)
    bf16 = model.to_bfloat16()
    row_bytes = (2 * WIDTH + 1) * 4
    dense = {3072: DenseNumpy(3072, rng), 4095: DenseNumpy(4095, rng)}
    torch_ok = have_torch()
    if torch_ok:
        import torch

        torch.set_num_threads(THREADS)
        tdense = {h: torch_dense(h) for h in (3072, 4095)}
    rows = []
    for n in batches:
        pool = token_pool(rng, n)
        x = pool[0]
        budget = (0.3 if quick else 1.5) if n <= 2048 else (1.0 if quick else 6.0)
        y = np.empty((n, WIDTH), np.float32)
        y16 = np.empty((n, WIDTH), np.float32)
        turn = itertools.cycle(pool).__next__
        fns = {"ultra": lambda: model.predict(turn(), out=y), "ultra_new": lambda: model.predict(turn()),
               "ultra_bf16": lambda: bf16.predict(turn(), out=y16)}
        for h, layer in dense.items():
            bufs = layer.buffers(n)
            fns[h] = lambda layer=layer, bufs=bufs: layer(turn(), *bufs)
        if torch_ok:
            turn_t = itertools.cycle([torch.from_numpy(a) for a in pool]).__next__
            for h, run in tdense.items():
                fns[f"torch{h}"] = lambda run=run: run(turn_t())
        t = interleaved_times(fns, min_seconds=budget, min_rounds=3 if quick or n > 2048 else 7,
                              settle=_settle(quick))
        del fns
        t_ultra, t_new, t_bf16, t_dense = t["ultra"], t["ultra_new"], t["ultra_bf16"], {h: t[h] for h in dense}
        y32, y16 = model.predict(x), bf16.predict(x)
        bf16_error = float(np.linalg.norm(y16 - y32) / np.linalg.norm(y32))
        bf16_same_route = float(np.mean(bf16.route(x) == model.route(x)))
        t_torch = {h: t[f"torch{h}"] for h in dense if f"torch{h}" in t}
        nodes = model.route(x)  # leaves; distinct rows touched = distinct path nodes of the batch
        distinct = _distinct_path_nodes(nodes[:, 0], DEPTH)
        rows.append({
            "n": n, "ultra": t_ultra, "ultra_new": t_new, "dense": t_dense, "torch": t_torch,
            "bf16": t_bf16, "bf16_error": bf16_error, "bf16_same_route": bf16_same_route,
            "path_bytes": (DEPTH + 1) * row_bytes, "distinct_bytes": distinct * row_bytes / n,
        })
        print(f"  batch {n:>6}: UltraFFF {n / t_ultra:>12,.0f} tok/s; dense-3072 {n / t_dense[3072]:>10,.0f} tok/s "
              f"({t_dense[3072] / t_ultra:6.1f}x; bfloat16 weights {t_dense[3072] / t_bf16:6.1f}x)", flush=True)
    return rows, dense[3072].nbytes, dense[4095].nbytes


def _distinct_path_nodes(leaves, depth):
    """Number of distinct nodes on the paths to ``leaves`` (every prefix of every leaf id)."""
    total = 0
    for level in range(depth + 1):
        total += len(np.unique(leaves >> (depth - level)))
    return total


@numba.njit(cache=True)
def _dispatch_only(x, w_in, b_in, w_out, code, y):
    """Returns at once: the cost of Numba's dispatch of a call with the batch-1 kernel's six arguments."""
    return None


def batch1_breakdown(quick):
    """Where the time of a batch-1 call goes, and batch 1 through a stack of 12 layers.

    Per call, with distinct inputs (POOL_TOKENS): the dense FF-3072; ``UltraFFF.predict(x, out=y)``; its kernel
    called directly (no Python checks); the walk alone (``route``'s kernel: the 11 dependent dot products that
    choose the path, no activations, no output rows); Numba's dispatch of the six arguments. Then ``predict`` and
    its kernel on one token at every call, whose 24 path rows stay in L1/L2: the cost of a call without fetching
    the path's rows from L3 (distinct tokens minus this is what fetching them costs). Then 12 distinct layers
    of each kind called in turn with one token each, as in a 12-layer model, where no layer's weights are still in
    cache when its turn comes again (per layer)."""
    from fffcpu.kernels import ultra as kernels

    rng = np.random.default_rng(2)
    layers = [UltraFFF(WIDTH, WIDTH, DEPTH, seed=i) for i in range(12)]
    dense_layers = [DenseNumpy(3072, rng) for _ in range(12)]
    model, dense = layers[0], dense_layers[0]
    pool = [rng.standard_normal((1, WIDTH), dtype=np.float32) for _ in range(POOL_TOKENS)]
    turn = itertools.cycle(pool).__next__
    y, leaves, bufs = np.empty((1, WIDTH), np.float32), np.empty((1, 1), np.int64), dense.buffers(1)
    p, code = model.params, model._act_code
    weights = (p["w_in"], p["b_in"], p["w_out"])
    fns = {"dense": lambda: dense(turn(), *bufs), "predict": lambda: model.predict(turn(), out=y),
           "kernel": lambda: kernels._predict_serial(turn(), *weights, code, y),
           "walk": lambda: kernels._route_serial(turn(), p["w_in"], p["b_in"], DEPTH, leaves),
           "dispatch": lambda: _dispatch_only(turn(), *weights, code, y),
           "predict_same": lambda: model.predict(pool[0], out=y),
           "kernel_same": lambda: kernels._predict_serial(pool[0], *weights, code, y),
           "stack_ultra": lambda: [layer.predict(turn(), out=y) for layer in layers],
           "stack_dense": lambda: [layer(turn(), *bufs) for layer in dense_layers]}
    t = interleaved_times(fns, min_seconds=0.3 if quick else 2.0, min_rounds=3 if quick else 7,
                          settle=_settle(quick))
    t["stack_ultra"] /= len(layers)
    t["stack_dense"] /= len(dense_layers)
    return t


def batch1_report(b1):
    goal = next(goal for _, n, goal in TARGETS if n == 1)
    budget = b1["dense"] / goal
    rows = [("dense NumPy FF-3072, called back to back (its 18.9 MB of weights stay in the 32 MiB L3)", "dense"),
            ("`UltraFFF.predict(x, out=y)`", "predict"),
            ("its kernel called directly (`kernels.ultra._predict_serial`, no Python checks)", "kernel"),
            ("the walk alone: `route`'s kernel, 11 dependent dot products, no output rows", "walk"),
            ("Numba's dispatch of a call with the kernel's six arguments (a function that returns at once)",
             "dispatch"),
            ("`predict(x, out=y)` on the same token at every call (its 24 path rows stay in L1/L2)",
             "predict_same"),
            ("its kernel on the same token at every call", "kernel_same")]
    lines = ["### Batch 1: where the time goes", "",
             f"The {goal}x target leaves UltraFFF {budget * 1e6:.2f} µs per call (the dense call / {goal}). Every "
             "call takes a new token from a pool of 4096, except in the last two rows.", "",
             f"| call | µs per call | of the {goal}x budget |", "|---|---:|---:|"]
    for text, key in rows:
        share = "-" if key == "dense" else f"{b1[key] / budget:.0%}"
        lines.append(f"| {text} | {b1[key] * 1e6:,.2f} | {share} |")
    fetch = b1["kernel"] - b1["kernel_same"]
    lines += ["", f"Fetching a new token's path rows (12 rows of `w_in`, each needed before the next can be chosen, "
              f"and 12 of `w_out`; the upper levels' rows in L2, the lower ones in L3) costs the kernel "
              f"{fetch * 1e6:.2f} µs per call. Without it, with every row it reads already in L1/L2, a call of "
              f"`predict` still takes {b1['predict_same'] * 1e6:.2f} µs ({b1['predict_same'] / budget:.0%} of the "
              f"budget) and its kernel alone {b1['kernel_same'] * 1e6:.2f} µs "
              f"({b1['kernel_same'] / budget:.0%})."]
    lines += ["", "12 layers of each kind called in turn with one token each (as in a 12-layer model: no layer's "
              "weights are still in cache when its turn comes again), per layer:", "",
              "| UltraFFF µs/layer | dense FF-3072 µs/layer | speedup |", "|---:|---:|---:|",
              f"| {b1['stack_ultra'] * 1e6:.2f} | {b1['stack_dense'] * 1e6:,.0f} | "
              f"**{b1['stack_dense'] / b1['stack_ultra']:.1f}x** |"]
    return "\n".join(lines)


def training_data(n):
    """The layer, inputs and output gradients of the training step at batch ``n``."""
    rng = np.random.default_rng(1)
    model = UltraFFF(WIDTH, WIDTH, DEPTH, seed=1)
    x = rng.standard_normal((n, WIDTH), dtype=np.float32)
    g = rng.standard_normal((n, WIDTH), dtype=np.float32) / n
    return model, x, g


def training_steps(model, x, g):
    """The two training steps compared (forward + backward, input gradient included): UltraFFF's path kernels, and
    the masked dense formulation in NumPy. Each returns the input gradient."""

    def path_step():
        model.forward(x)
        return model.backward(g, input_grad=True)

    def masked_step():
        cache = masked_forward(model.params, x, DEPTH)
        return masked_backward(model.params, cache, g, input_grad=True)

    return path_step, masked_step


def training(n, quick):
    model, x, g = training_data(n)
    budget = 0.3 if quick else 1.0
    path_step, masked_step = training_steps(model, x, g)
    out = interleaved_times({"path": path_step, "masked_numpy": masked_step}, min_seconds=3 * budget, min_rounds=5,
                            settle=_settle(quick))
    if have_torch():
        import torch

        w_in = torch.tensor(model.params["w_in"][0], requires_grad=True)
        b_in = torch.tensor(model.params["b_in"][0], requires_grad=True)
        w_out = torch.tensor(model.params["w_out"][0], requires_grad=True)
        xt, gt = torch.tensor(x, requires_grad=True), torch.tensor(g)
        steps = torch.arange(DEPTH + 1)

        def torch_step():
            for p in (w_in, b_in, w_out, xt):
                p.grad = None
            logits = xt @ w_in.T + b_in  # (n, 4095): every logit, as UltraFastBERT's training code
            with torch.no_grad():  # the hard path: no gradient through the choice
                node = torch.zeros(n, dtype=torch.long)
                mask = torch.zeros_like(logits, dtype=torch.bool)
                rows = torch.arange(n)
                for _ in steps:
                    mask[rows, node] = True
                    node = 2 * node + 1 + (logits[rows, node] > 0).long()
            y = (torch.nn.functional.gelu(logits) * mask) @ w_out
            y.backward(gt)

        torch_step()
        np.testing.assert_allclose(xt.grad.numpy(), path_step(), rtol=1e-3, atol=1e-6)  # same function
        out["masked_torch"] = median_time(torch_step, min_seconds=budget)
    return out


def fmt_rate(v):
    return f"{v:,.0f}"


def report(rows, dense_bytes, dense4095_bytes, train, n_train):
    lim3072, lim4095 = 3072 / 12, 4095 / 12
    lines = ["### Inference: tokens/s (2 threads, float32, input = output = 768)", "",
             "| batch | UltraFFF 1x11 | dense NumPy 3072 | dense NumPy 4095 | torch dense 3072 | speedup vs 3072 "
             "| of 256x | speedup vs 4095 | of 341x | vs torch 3072 | UltraFFF, new output array per call |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n, tu, td = r["n"], r["ultra"], r["dense"]
        s3, s4 = td[3072] / tu, td[4095] / tu
        tt = r["torch"].get(3072)
        lines.append(
            f"| {n} | {fmt_rate(n / tu)} | {fmt_rate(n / td[3072])} | {fmt_rate(n / td[4095])} | "
            f"{fmt_rate(n / tt) if tt else '-'} | **{s3:.1f}x** | {s3 / lim3072:.0%} | {s4:.1f}x | {s4 / lim4095:.0%} | "
            f"{f'{tt / tu:.1f}x' if tt else '-'} | {fmt_rate(n / r['ultra_new'])} ({td[3072] / r['ultra_new']:.1f}x) |")
    lines += ["", "### Bytes and bandwidth", "",
              "| batch | UltraFFF path bytes/token (12 rows, no reuse) | distinct rows of the batch, bytes/token "
              "| implied bandwidth without reuse | with full reuse | dense-3072 weight bytes/token | dense-3072 GFLOP/s "
              "| UltraFFF GFLOP/s |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    flop_ultra = 12 * 4 * WIDTH
    flop_dense = 4 * WIDTH * 3072
    for r in rows:
        n, tu, td = r["n"], r["ultra"], r["dense"][3072]
        rate = n / tu
        lines.append(
            f"| {n} | {r['path_bytes'] / 1e3:.1f} kB | {r['distinct_bytes'] / 1e3:.1f} kB | "
            f"{r['path_bytes'] * rate / 1e9:.1f} GB/s | {r['distinct_bytes'] * rate / 1e9:.2f} GB/s | "
            f"{dense_bytes / n / 1e3:,.1f} kB | {flop_dense * n / td / 1e9:.0f} | {flop_ultra * rate / 1e9:.1f} |")
    lines += ["", "### Opt-in bfloat16 weights (`UltraFFF.to_bfloat16()`: w_in and w_out rounded to bfloat16, "
              "float32 arithmetic)", "",
              "| batch | tokens/s | speedup vs dense NumPy 3072 | of 256x | vs float32 UltraFFF | relative output "
              "difference to float32 (Frobenius) | tokens on the same path as float32 |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n, tb, td = r["n"], r["bf16"], r["dense"][3072]
        lines.append(f"| {n} | {fmt_rate(n / tb)} | **{td / tb:.1f}x** | {td / tb / lim3072:.0%} | "
                     f"{r['ultra'] / tb:.2f}x | {r['bf16_error']:.1e} | {r['bf16_same_route']:.1%} |")
    lines += ["", f"### Training: one forward + backward step (input gradient included), batch {n_train}", "",
              "| implementation | ms/step | UltraFFF path kernels are |", "|---|---:|---:|"]
    for key, label in (("path", "UltraFFF path kernels (Numba)"),
                       ("masked_numpy", "dense-masked, NumPy (UltraFastBERT formulation)"),
                       ("masked_torch", "dense-masked, torch autograd")):
        if key in train:
            ratio = "-" if key == "path" else f"**{train[key] / train['path']:.1f}x** faster"
            lines.append(f"| {label} | {train[key] * 1e3:.1f} | {ratio} |")
    return "\n".join(lines)


#: Targets of issue 4: (description, batch, minimum speedup over dense NumPy FF-3072).
TARGETS = (("batch 1 (a new input per call; the dense layer's weights stay cached between its calls): ≥ 150x dense "
             "NumPy FF-3072", 1, 150), ("batch 16384: ≥ 78x dense NumPy FF-3072", 16384, 78))
TRAIN_TARGET = 30  # training step at batch 2048: ≥ 30x the dense-masked NumPy formulation


def target_rows(rows, train):
    """[target, measured, status] for every target (a target whose batch was not run is "not measured")."""
    out = []
    by_batch = {r["n"]: r for r in rows}
    for text, n, goal in TARGETS:
        if n not in by_batch:
            out.append([text, "not measured (--quick)", "-"])
            continue
        r = by_batch[n]
        speedup = r["dense"][3072] / r["ultra"]
        out.append([text, f"{speedup:.1f}x ({r['ultra'] * 1e6:,.1f} µs vs {r['dense'][3072] * 1e6:,.0f} µs per batch)",
                    "met" if speedup >= goal else "missed"])
    if 16384 in by_batch:
        r = by_batch[16384]
        speedup = r["dense"][3072] / r["bf16"]
        out.append(["batch 16384 with opt-in bfloat16 weights (`to_bfloat16()`; not the float32 layer): ≥ 78x",
                    f"{speedup:.1f}x ({r['bf16'] * 1e6:,.1f} µs; outputs within {r['bf16_error']:.0e} of float32, "
                    f"{r['bf16_same_route']:.1%} of tokens on the same path)", "met" if speedup >= 78 else "missed"])
    ratio = train["masked_numpy"] / train["path"]
    out.append([f"training step, batch 2048: ≥ {TRAIN_TARGET}x dense-masked NumPy",
                f"{ratio:.1f}x ({train['path'] * 1e3:.1f} ms vs {train['masked_numpy'] * 1e3:.0f} ms)",
                "met" if ratio >= TRAIN_TARGET else "missed"])
    return out


def measure(quick=False):
    """Run the whole benchmark: (inference rows, dense-3072 bytes, dense-4095 bytes, training times, n_train,
    load averages before and after, the batch-1 breakdown)."""
    numba.set_num_threads(THREADS)
    batches = BATCHES[:-1] if quick else BATCHES
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    with threadpool_limits(THREADS):
        rows, dense_bytes, dense4095_bytes = inference(batches, quick)
        b1 = batch1_breakdown(quick)
        n_train = 2048
        train = training(n_train, quick)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return rows, dense_bytes, dense4095_bytes, train, n_train, load_before, load_after, b1


def full_report(rows, dense_bytes, dense4095_bytes, train, n_train, load_before, load_after, b1=None):
    targets = target_rows(rows, train)
    lines = [f"UltraFastBERT-1x11 layer (`UltraFFF(768, 768, 11)`, float32, {THREADS} threads everywhere) against "
             "dense FF layers; medians of calls interleaved with the baselines' in one process. Load average "
             f"{load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end (2 cores shared with other jobs: "
             "see docs/ultra.md for quiet-machine figures and the analysis).", "",
             "| target | measured | status |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets]
    lines += ["", report(rows, dense_bytes, dense4095_bytes, train, n_train)]
    if b1:
        lines += ["", batch1_report(b1)]
    return "\n".join(lines), targets


def run(quick=False):
    """Entry point of ``python -m benchmarks`` (``make bench``): the UltraFFF tables as a ``Section``."""
    from .common import Section

    measured = measure(quick)
    markdown, targets = full_report(*measured)
    rows, _, _, train, _, load_before, load_after, _ = measured
    return Section("UltraFFF (UltraFastBERT layer) vs dense FF: inference and training step", markdown, rows,
                   {"targets": targets}, {"train": train, "load": (load_before, load_after)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no batch 16384")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load:.2f}, "
          f"numba {numba.__version__} ({THREADS} threads), numpy {np.__version__}", flush=True)
    markdown, _ = full_report(*measure(args.quick))
    print()
    print(markdown)


if __name__ == "__main__":
    main()
