"""Calls from several Python threads: every kernel releases the GIL, parallel launches never overlap (Numba's
``workqueue`` threading layer aborts the process when they do), and concurrent calls give sequential results."""

import copy
import os
import subprocess
import sys
import threading
import time

import numba
import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import fffcpu
from fffcpu import FFF, UltraFFF, engine
from fffcpu.kernels import fff as fff_kernels
from fffcpu.kernels import optim as optim_kernels
from fffcpu.kernels import ultra as ultra_kernels


@pytest.mark.parametrize("module", [fff_kernels, ultra_kernels, optim_kernels], ids=lambda m: m.__name__)
def test_every_kernel_releases_the_gil(module):
    kernels = {name: obj for name, obj in vars(module).items() if isinstance(obj, CPUDispatcher)}
    assert kernels, f"no Numba kernels found in {module.__name__}"
    holding = sorted(name for name, k in kernels.items() if not k.targetoptions.get("nogil"))
    assert not holding, f"kernels of {module.__name__} that hold the GIL: {holding}"


def _ticks_during(call, seconds=0.25):
    """Run ``call`` again and again for ``seconds`` while another Python thread records timestamps; returns the
    number of timestamps taken in the middle half of some call (between calls the ticker runs anyway: Python hands
    the GIL over between bytecodes) and the shortest call."""
    ticks, spans, stop = [], [], threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        first = time.perf_counter()
        while time.perf_counter() - first < seconds:
            start = time.perf_counter()
            call()
            spans.append((start, time.perf_counter()))
    finally:
        stop.set()
        thread.join()
    ticks = np.array(ticks)
    inside = sum(int(np.count_nonzero((ticks > a + (b - a) / 4) & (ticks < b - (b - a) / 4))) for a, b in spans)
    return inside, min(b - a for a, b in spans)


KINDS = ["FFF serial kernel", "UltraFFF serial kernel", "FFF.predict", "UltraFFF.predict", "UltraFFF training"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_long_kernel_call_lets_other_python_threads_run(kind):
    """Kernel calls of ~50 ms or more on one thread: a kernel that held the GIL would stop the ticker for the whole
    call (the Python around it takes microseconds). The serial kernels are called directly on a large batch (the
    public calls take them for small batches only, too short to tell)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 256)).astype(np.float32)
    if kind.startswith("FFF"):
        model = FFF(256, 64, 10, 6, seed=0)
        p, y = model.params, np.empty((len(x), 10), np.float32)
        arrays = tuple(p[name] for name in ("node_weights", "node_biases", "w1s", "b1s", "w2s", "b2s"))
        if kind == "FFF serial kernel":
            def call():
                fff_kernels._predict_serial(x, *arrays, model.depth, model._act_code, y)
        else:
            def call():
                model.predict(x, n_jobs=1)
    else:
        model = UltraFFF(256, 10, 11, trees=4, seed=0)
        p, y = model.params, np.empty((len(x), 10), np.float32)
        if kind == "UltraFFF serial kernel":
            def call():
                ultra_kernels._predict_serial(x, p["w_in"], p["b_in"], p["w_out"], model._act_code, y)
        elif kind == "UltraFFF.predict":
            def call():
                model.predict(x, n_jobs=1)
        else:
            def call():
                with engine.num_threads(1):
                    model.backward(np.ones_like(model.forward(x)))
    call()  # compile or load from the cache
    middle, shortest = _ticks_during(call)
    assert middle > 0, f"no other Python thread ran in the middle of any {kind} call ({shortest * 1e3:.1f} ms or more)"


def _calls():
    """(name, function) pairs that each run a few kinds of call and return their results: FFF predict, route and
    leaf outputs, UltraFFF predict, route and a training step (each thread trains its own copy), the bfloat16
    snapshot; batches that take the serial, parallel and grouped kernels."""
    rng = np.random.default_rng(1)
    fff = FFF(40, 16, 5, 7, seed=1)
    ultra = UltraFFF(40, 5, 6, trees=2, seed=1)
    snapshot = ultra.to_bfloat16()
    batches = [rng.normal(size=(n, 40)).astype(np.float32) for n in (1, 7, 40, 300, 1500)]

    def fff_calls(n_jobs):
        out = []
        for x in batches:
            out += [fff.predict(x, n_jobs=n_jobs), fff.route(x, n_jobs=n_jobs),
                    engine.leaf_outputs(x, fff.route(x), fff.params, fff.activation, n_jobs=n_jobs)]
        return out

    def ultra_calls(n_jobs):
        out = []
        for x in batches:
            out += [ultra.predict(x, n_jobs=n_jobs), ultra.route(x, n_jobs=n_jobs), snapshot.predict(x)]
        return out

    def ultra_training(n_jobs):
        model = copy.deepcopy(ultra)
        out = []
        with engine.num_threads(n_jobs):
            for x in batches:
                out.append(model.forward(x))
                out.append(model.backward(np.ones_like(out[-1])))
                out += [model.grads[name].copy() for name in ("w_in", "b_in", "w_out")]
        return out

    return [("fff", fff_calls), ("ultra", ultra_calls), ("ultra training", ultra_training)]


def check_concurrent_calls(threads=4, repeats=3):
    """Every call of ``_calls`` from ``threads`` Python threads at once (thread counts 1 and 2 mixed), against the
    same calls made one after another. Raises AssertionError on any difference."""
    calls = _calls()
    expected = {name: f(None) for name, f in calls}
    results, errors = [], []

    def work(k):
        try:
            for rep in range(repeats):
                for j, (name, f) in enumerate(calls):
                    results.append((name, f(1 + (k + j + rep) % 2)))
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    assert len(results) == threads * repeats * len(calls)
    for name, got in results:
        assert len(got) == len(expected[name])
        for a, b in zip(got, expected[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_concurrent_calls_match_sequential_ones():
    check_concurrent_calls()


def test_concurrent_calls_under_the_workqueue_threading_layer():
    """The ``workqueue`` layer (Numba's fallback where OpenMP and TBB do not load) aborts the whole process when two
    threads launch parallel kernels at once; fffcpu serialises its parallel launches, so none ever overlap."""
    code = ("import runpy, numba, sys\n"
            f"runpy.run_path({__file__!r})['check_concurrent_calls']()\n"
            "layer = numba.threading_layer()\n"
            "print('layer', layer)\n"
            "sys.exit(0 if layer == 'workqueue' else 3)\n")
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900,
                          cwd=os.path.dirname(__file__))
    assert done.returncode == 0, (f"exit status {done.returncode}\nstdout:\n{done.stdout[-2000:]}\n"
                                  f"stderr:\n{done.stderr[-4000:]}")
    assert "layer workqueue" in done.stdout


def test_parallel_lock_lets_one_thread_launches_run_side_by_side_except_under_workqueue():
    from fffcpu.kernels import PARALLEL_LOCK, parallel_lock

    fffcpu.warmup(("float32",))  # starts the threading layer
    assert parallel_lock(2) is PARALLEL_LOCK
    one = parallel_lock(1)
    if numba.threading_layer() == "workqueue":
        assert one is PARALLEL_LOCK
    else:
        assert one is not PARALLEL_LOCK
        with engine.num_threads(1):
            assert parallel_lock() is not PARALLEL_LOCK


def test_threading_layer_names_the_layer_in_use():
    fffcpu.warmup(("float32",))
    assert engine.threading_layer() == numba.threading_layer()


FORKED_CHILD = """
import os, pickle, sys
import numba, numpy as np
import fffcpu
from fffcpu import FFF, UltraFFF

rng = np.random.default_rng(0)
x = rng.normal(size=(300, 20)).astype(np.float32)
fff, ultra = FFF(20, 4, 3, 5, seed=0), UltraFFF(20, 3, 4, trees=2, seed=0)
reference = [fff.predict(x), fff.route(x), ultra.predict(x), ultra.route(x), ultra.forward(x)]  # parallel kernels
from numba.np.ufunc import omppool
if numba.threading_layer() != "omp" or getattr(omppool, "openmp_vendor", None) != "GNU":
    print("not GNU OpenMP:", numba.threading_layer())
    sys.exit(0)
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the child: what a worker of a fork-based pool runs
    try:
        got = [fff.predict(x), fff.route(x), ultra.predict(x), ultra.route(x), ultra.forward(x)]
        same = all(np.array_equal(a, b) for a, b in zip(got, reference))
        same = same and np.array_equal(fff.predict(x, n_jobs=2), reference[0])
        history = fffcpu.train(FFF(20, 4, 3, 3, train_hardened=True, seed=0), x, np.arange(300) % 3, epochs=1,
                               progress=False)
        try:
            ultra.backward(np.ones_like(reference[4]))
            error = None
        except RuntimeError as err:
            error = str(err)
        os.write(write, pickle.dumps((same, history.epochs, error)))
        os._exit(0)
    except BaseException as err:
        os.write(write, pickle.dumps(repr(err)))
        os._exit(1)
os.close(write)
data = b""
while chunk := os.read(read, 1 << 16):
    data += chunk
_, status = os.waitpid(pid, 0)
print("child", status, pickle.loads(data) if data else None)
"""


def test_a_process_forked_after_gnu_openmp_predicts_serially_and_says_what_it_cannot_run():
    """Numba's GNU OpenMP layer ends a forked child at its first parallel launch (SIGTERM, whatever its thread
    count), which kills the workers of a fork-based pool and hangs it. In such a child, inference and routing take
    the one-thread kernels (the same bits); UltraFFF's backward, which has none, raises a clear error instead."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    result = subprocess.run([sys.executable, "-c", FORKED_CHILD], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("not GNU OpenMP"):
        pytest.skip(result.stdout.strip())
    assert result.stdout.startswith("child 0 (True, 1, "), result.stdout + result.stderr
    assert "forked from one that had already run Numba's GNU OpenMP threads" in result.stdout
    assert "'spawn'" in result.stdout and "NUMBA_THREADING_LAYER=workqueue" in result.stdout


def test_dense_predict_with_n_jobs_from_several_threads_restores_blas_and_keeps_each_calls_threads():
    """BLAS's thread count belongs to the process: FF.predict(n_jobs=k) calls on several threads take turns, each
    computes with its own k (the bits of the same call made alone) and the setting found is restored."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    ff = fffcpu.FF(784, 2048, 64, seed=0)  # calls long enough (tens of ms) to overlap
    x = np.random.default_rng(0).normal(size=(1024, 784)).astype(np.float32)
    alone = {k: ff.predict(x, n_jobs=k) for k in (1, 2)}
    before = blas_threads()
    wrong = []

    def work(k):
        for _ in range(10):
            if not np.array_equal(ff.predict(x, n_jobs=k), alone[k]):
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(1 + t % 2,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong and blas_threads() == before
