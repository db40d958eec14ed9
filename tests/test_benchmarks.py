"""Smoke test of the benchmark runner on a tiny grid: the report has the expected rows and the correctness checks ran.
No timing assertions (timings depend on the machine and its load)."""

import os
import shutil
import time
import sys

import numpy as np
import pytest

import fffcpu

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import __main__ as runner  # noqa: E402
from benchmarks import blas_kernel, common, inference, probes  # noqa: E402
from benchmarks.common import have_torch  # noqa: E402
from fffcpu.kernels import fff as kernels  # noqa: E402


def test_inference_quick_grid_has_rows_and_checks():
    section = inference.run(quick=True, widths=(64,), depths=(2, 3), batches=(1, 5))
    points = {(r["width"], r["depth"], r["leaf"], r["batch"]) for r in section.rows}
    assert points == {(64, 2, 16, 1), (64, 2, 16, 5), (64, 3, 8, 1), (64, 3, 8, 5)}
    for key, checks in section.checks.items():
        assert checks["fffcpu"] and checks["route"] and checks["dense NumPy"], key
        if have_torch():
            assert checks["torch package (+b2)"] and checks["torch dense"], key
    for r in section.rows:
        assert r["fff"] > 0 and r["dense"] > 0 and r["limit"] == pytest.approx(r["width"] / (r["depth"] + r["leaf"]))
        assert (r["torch_pkg"] is not None) == have_torch()
    assert "| 64 | 3 | 8 | 5 |" in section.markdown
    assert "Targets" in section.markdown


def test_grid_keeps_whole_leaf_widths():
    assert inference.grid((128, 65536), (3, 9, 12)) == [(128, 3, 16), (65536, 3, 8192), (65536, 9, 128),
                                                          (65536, 12, 16)]


def test_runner_writes_report(tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "QUICK_WIDTHS", (32,))
    monkeypatch.setattr(inference, "QUICK_DEPTHS", (1,))
    monkeypatch.setattr(inference, "QUICK_BATCHES", (3,))
    out = tmp_path / "bench.md"
    report = runner.main(["--quick", "--out", str(out)])
    text = out.read_text()
    assert text == report
    for needle in ("## Machine", "Numba threading layer", "threadpool 0", "| 32 | 1 | 16 | 3 |", "| leaf width ℓ |",
                   "## Training step", "fffcpu FFF(784, 8, 10, 4)", "fffcpu dense FF(784, 128, 10)",
                   "### Batch 1: where the time goes", "12 layers of each kind", "CPU details",
                   "## The dense baselines' BLAS kernel"):
        assert needle in text, needle
    assert (tmp_path / "bench_inference.png").exists()  # named after the report, so reports side by side keep theirs
    assert "![Hard inference: fffcpu vs dense FF and the PyTorch package](bench_inference.png)" in text
    assert "benchmarks.training" in runner.MODULES and "benchmarks.inference" in runner.MODULES


def test_blas_kernel_times_both_sides_of_every_job(monkeypatch):
    # the environment is left as it is: with OPENBLAS_CORETYPE set, the dense side runs twice (as given, and without
    # it); without it, once
    monkeypatch.setattr(blas_kernel, "QUICK_JOBS",
                        [("fff", 64, 2, 3), ("ultra", 2), ("ultra_train", 4), ("fff_train", 256)])
    section = blas_kernel.run(quick=True)
    result = section.rows[0]
    assert len(result["fffcpu"]) == len(result["given"]["seconds"]) == 4
    assert result["fffcpu"][3] is None  # fffcpu's training step is the side timed with each kernel
    assert all(t > 0 for t in result["fffcpu"][:3] + result["given"]["seconds"])
    if "OPENBLAS_CORETYPE" in os.environ:
        assert result["variable"] == os.environ["OPENBLAS_CORETYPE"] and len(result["own"]["seconds"]) == 4
        assert "| FFF depth 2, leaf 16 | dense FF of width 64 | 3 |" in section.markdown
        assert "| UltraFFF training step | masked dense step | 4 |" in section.markdown
        assert "the soft training step of FFF(784, 8, 10, 4) at batch 256" in section.markdown
    else:
        assert result["own"] is None and "is not set in this run's environment" in section.markdown


def test_blas_kernel_renders_what_the_kernels_give():
    jobs = [("fff", 65536, 12, 4096), ("ultra", 16384), ("fff_train", 256)]
    result = {"variable": "Haswell", "fffcpu": [0.005, 0.01, None],
              "given": {"kernel": "Haswell", "seconds": [2.0, 1.1, 0.0014]},
              "own": {"kernel": "SkylakeX", "seconds": [1.2, 0.77, 0.0011]}}
    text = blas_kernel.render(jobs, result)
    assert "sets `OPENBLAS_CORETYPE=Haswell`" in text and "OpenBLAS picks its SkylakeX kernel on this CPU" in text
    assert ("| FFF depth 12, leaf 16 | dense FF of width 65,536 | 4096 | 5.000 ms | 2000.000 ms | 400x | 1200.000 ms "
            "| 240x | 1.67 |") in text
    assert ("| UltraFFF(768, 768, 11) | dense FF-3072 (GELU) | 16384 | 10.000 ms | 1100.000 ms | 110x | 770.000 ms "
            "| 77x | 1.43 |") in text
    assert "took 1.40 ms with the Haswell kernel and 1.10 ms with SkylakeX (1.27x)" in text
    result["own"] = None
    assert "is not set in this run's environment" in blas_kernel.render(jobs, result)


def test_read_leaves_reads_exactly_the_given_leaves():
    p = fffcpu.FFF(20, 4, 3, 3, dtype="float32", seed=0).params
    leaves = np.array([0, 2, 5, 7])
    expected = sum(float(p[k][leaves].astype(np.float64).sum()) for k in ("w1s", "b1s", "w2s", "b2s"))
    for threads in (1, 2, 3):
        got = inference.read_leaves(p["w1s"], p["b1s"], p["w2s"], p["b2s"], leaves, threads)
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert inference.read_leaves(p["w1s"], p["b1s"], p["w2s"], p["b2s"], leaves[:0], 2) == 0


def test_breakdown_of_a_large_batch_times_every_part_and_renders_the_floor():
    model = fffcpu.FFF(inference.INPUT_WIDTH, 16, inference.OUTPUT_WIDTH, 3, dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((64, inference.INPUT_WIDTH), dtype=np.float32) for _ in range(2)]
    parts = inference.breakdown(model, pool, 2, 0.02)
    for key in ("call", "route", "leaves", "read"):
        assert parts[key] > 0, key
    distinct = np.mean([len(np.unique(model.route(x))) for x in pool])
    assert parts["leaf_bytes"] == pytest.approx(distinct * inference.leaf_nbytes(16))
    assert parts["dots"] == 64 * 3
    row = {"width": 128, "depth": 3, "leaf": 16, "batch": 64, "parts": parts, "t_dense": 1.0}
    text = inference.breakdown_table([row], 40e9)
    floor = parts["route"] + parts["read"]
    assert f"{floor * 1e3:.2f} ms" in text and "only read in" in text


def test_leaf_costs_by_width_times_each_width_and_renders_per_unit_costs():
    rows = inference.leaf_costs_by_width((1, 3, 16), repeats=1)
    assert [w for w, _ in rows] == [1, 3, 16] and all(t > 0 for _, t in rows)
    text = inference.leaf_costs_table([(4, 100e-9)])
    assert "| 4 | 100 | 25.0 | 31.8 |" in text  # 4 units x (784 + 10) multiply-adds in 100 ns


def test_bandwidth_probe_sums_every_element():
    rows = np.random.default_rng(0).random((37, 4096), dtype=np.float32)
    ones = np.ones((1, 4096), np.float32)
    for chunks in (1, 2, 5):
        assert inference._row_sums(rows, ones, chunks) == pytest.approx(rows.astype(np.float64).sum(), rel=1e-5)
    assert inference.read_bandwidth(2, n_bytes=8 << 20, repeats=1) > 0


def test_peak_probe_and_the_arithmetic_bound_of_the_torch_target():
    peak = inference.peak_macs(2, n_steps=20_000, repeats=1)
    assert peak > 0
    row = {"width": 1024, "depth": 3, "leaf": 128, "batch": 256, "vs_pkg": 20.0}
    macs = inference.call_macs(row)
    assert macs == 256 * (3 * 784 + 784 * 128 + 128 * 10)
    # a torch-package time 50x the call's multiply-adds at the peak rate: out of reach; 500x: not
    slow = dict(row, t_pkg=50 * macs / peak)
    fast = dict(row, width=128, depth=6, leaf=2, t_pkg=500 * inference.call_macs(dict(row, depth=6, leaf=2)) / peak)
    (_, measured, status), = [t for t in inference.evaluate_targets([slow, fast], True, peak) if "torch" in t[0]]
    assert status == "missed; physically out of reach (multiply-adds vs peak)"
    assert "out of reach at 1 of them" in measured and "width 1024 depth 3 leaf 128 at most 50.0x" in measured
    # a bound just below 100x is printed below 100x
    near = dict(slow, t_pkg=99.996 * macs / peak)
    (_, measured, status), = [t for t in inference.evaluate_targets([near], True, peak) if "torch" in t[0]]
    assert status.endswith("out of reach (multiply-adds vs peak)") and "at most 99.996x" in measured
    (_, measured, status), = [t for t in inference.evaluate_targets([fast], True, peak) if "torch" in t[0]]
    assert status == "missed" and "out of reach" not in measured


def test_peak_memory_counts_buffers_taken_from_memory_the_heap_had_freed():
    if common.peak_memory(lambda: None) is None:
        pytest.skip("no /proc/self/clear_refs here")
    mib = 2**20
    big = np.ones(16 * mib // 8)  # an mmapped block: freeing it raises glibc's threshold for the next ones
    del big
    held = [np.ones(mib // 8) for _ in range(8)]  # 8 MiB now taken from the heap, then freed to it
    del held
    peak = common.peak_memory(lambda: np.ones(4 * mib // 8))
    assert 4 * mib <= peak < 8 * mib


def test_routing_after_leaves_times_the_first_levels_alone_in_deep_trees():
    top = kernels.DEEP_LEVEL
    times = probes.routing_after_leaves(depth=top + 1, batch=64, threads=2, rounds=3)
    assert set(times) == {"after routing", "after a leaf evaluation",
                          f"the first {top} levels alone, after a leaf evaluation"}
    assert all(t > 0 for t in times.values())


def test_engine_probes_quick_run_renders_every_table():
    section = probes.run(quick=True)
    f = section.figures
    assert all(t > 0 for t in [*f["loads"].values(), *f["dots"].values(), *f["traffic"].values(),
                               *f["node_rows"].values()])
    assert set(f["node_rows"]) == {(6, 784), (6, 392), (9, 784), (9, 392)}
    for needle in ("| probe | aligned to 64 bytes |", "| route |", "| leaves |", "| 9 |"):
        assert needle in section.markdown
    assert set(f["footprint"]) == {(784, 64), (784, 8), (392, 64), (392, 8)}
    assert all(t > 0 for t in f["footprint"].values())
    assert "| inputs | 64 leaves | 8 leaves | ratio |" in section.markdown and "(3.2 MB of W1)" in section.markdown
    assert set(f["reuse"]) == {4, 48} and all(rate > 0 for rate in f["reuse"].values())
    assert "| 48 MiB |" in section.markdown
    assert set(f["steps"]) == {"fixed rows, aligned", "fixed rows", "dependent", "pair walk", "left, same batch",
                               "left, new batch", "model, new batch"} and all(t > 0 for t in f["steps"].values())
    assert "| step | per dot product and core | of the last row |" in section.markdown
    assert "new input batch per call | " in section.markdown and " | 100% |" in section.markdown
    assert set(f["after"]) == {"after routing", "after a leaf evaluation"} and all(t > 0 for t in f["after"].values())
    assert "| after a leaf evaluation |" in section.markdown
    assert set(f["overlap"]) == {"route", "read", "route, then read", "interleaved on each core",
                                 "side by side (one thread routes)"}
    assert all(t > 0 for t in f["overlap"].values()) and "| interleaved on each core |" in section.markdown
    assert set(f["stream"]) == {"tiles", "tiles, input rows in cache", "bare read", "leaf bytes"}
    assert all(v > 0 for v in f["stream"].values()) and "| tiles, input rows in cache |" in section.markdown


def test_routing_steps_walks_compute_the_dot_products_and_reach_the_outermost_leaves():
    depth = 4
    model = fffcpu.FFF(probes.INPUT_WIDTH, 16, 10, depth, dtype="float32", seed=0)
    nw = model.params["node_weights"]
    x = np.random.default_rng(0).standard_normal((2, probes.INPUT_WIDTH), dtype=np.float32)
    paths = probes._outer_paths(depth)
    assert paths.tolist() == [[0, 1, 3, 7], [0, 2, 6, 14]]
    expected = sum(float(x[s].astype(np.float64) @ nw[node].astype(np.float64))
                   for s in (0, 1) for node in paths[s])
    assert probes._walk_fixed(x, nw, paths, 3) == pytest.approx(3 * expected, rel=1e-4, abs=1e-3)
    # odd nodes send their samples left, even ones right: below the root, each row follows its side's edge
    for root_bias, reached in ((-np.inf, [0, 0]), (np.inf, [15, 15])):
        sides = probes._side_biases(len(nw), np.float32, root=root_bias)
        leaves = np.full(2, -1, dtype=np.int64)
        probes._walk_dependent(x, nw, sides, depth, leaves, 2)
        assert leaves.tolist() == reached
        leaves[:] = -1
        probes._walk_engine(x, nw, sides, depth, leaves, 2)
        assert leaves.tolist() == reached
    times = probes.routing_steps(depth, batch=64, threads=2, budget=0.05, repeats=5)
    assert len(times) == 7 and all(t > 0 for t in times.values())


def test_hot_order_gives_each_run_of_tiles_rows_of_its_own():
    leaves = np.random.default_rng(1).integers(0, 16, 200)
    order = kernels._leaf_order(leaves, 16)
    starts, tile_leaf = kernels._make_tiles(leaves, order, kernels.TILE)
    n_chunks, n_tiles = 4, len(tile_leaf)
    hot = probes._hot_order(starts, n_chunks)
    for c in range(n_chunks):
        lo, hi = starts[c * n_tiles // n_chunks], starts[(c + 1) * n_tiles // n_chunks]
        assert set(hot[lo:hi]) == set(range(8 * c, 8 * c + min(8, hi - lo)))


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_routing_overlap_modes_route_every_sample_and_read_every_leaf(mode):
    model = fffcpu.FFF(probes.INPUT_WIDTH, 16, 10, 5, dtype="float32", seed=0)
    p = model.params
    x = np.random.default_rng(0).standard_normal((66, probes.INPUT_WIDTH), dtype=np.float32)  # chunks of 33
    reached = np.unique(model.route(x))
    w1 = np.abs(p["w1s"].reshape(model.n_leaves, -1))  # positive: a leaf read twice or skipped shows in the sum
    leaves = np.full(66, -1, dtype=np.int64)
    total = probes._overlap(x, p["node_weights"], p["node_biases"], 5, leaves, w1, reached, mode, 2)
    if mode == 1:
        assert total == 0 and np.array_equal(leaves, model.route(x))
    else:
        assert total == pytest.approx(float(w1[reached].sum(dtype=np.float64)), rel=1e-3)
        assert np.array_equal(leaves, model.route(x)) == (mode != 0)


def test_aligned_array_starts_where_asked():
    rng = np.random.default_rng(0)
    for offset in (0, 4, 16):
        a = probes.aligned_array(100, np.float32, offset, rng)
        assert a.ctypes.data % 64 == offset and a.shape == (100,) and np.isfinite(a).all()


def test_ab_parses_cases_and_refuses_bad_ones():
    from benchmarks import ab
    assert ab.parse_case("9,16,4096") == (9, 16, 4096)
    for bad in ("9,16", "a,b,c", "9,0,4", "-1,16,4"):
        with pytest.raises(Exception, match="a case"):
            ab.parse_case(bad)
    with pytest.raises(SystemExit):
        ab.main(["HEAD"])  # one version: nothing to compare


def test_ab_copies_a_directory_or_refuses_what_is_not_a_version(tmp_path):
    from benchmarks import ab
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = ab.materialize(repo, str(tmp_path), 3)
    assert os.path.basename(target) == "fffcpu_ab3"
    assert os.path.isfile(os.path.join(target, "kernels", "fff.py"))
    assert not any("__pycache__" in dirs for dirs, _, _ in os.walk(target))
    with pytest.raises(SystemExit, match="neither a directory holding an fffcpu package nor a git revision"):
        ab.materialize(str(tmp_path / "nowhere"), str(tmp_path), 4)
    if shutil.which("git") and os.path.isdir(os.path.join(repo, ".git")):
        target = ab.materialize("HEAD", str(tmp_path), 5)
        assert os.path.isfile(os.path.join(target, "kernels", "fff.py"))
        assert not os.path.exists(os.path.join(str(tmp_path), ".tar5"))


@pytest.mark.parametrize("kind", ["call", "route", "leaves"])
def test_ab_measures_every_kind_and_compares_the_bits(kind):
    from benchmarks import ab
    base, summary, same = ab.measure([fffcpu, fffcpu], (3, 4, 40), kind=kind, rounds=2, budget=0.01,
                                     quick=True)
    assert base > 0 and same == [True, True] and len(summary) == 1
    mid, lo, hi = summary[0]
    assert 0 < lo <= mid <= hi
    line = ab.format_line(kind, (3, 4, 40), ["HEAD", "."], base, summary, same)
    assert line.startswith(f"{kind} depth 3 leaf 4 batch 40: HEAD ") and ". " in line and "other bits" not in line
    assert "[other bits]" in ab.format_line(kind, (3, 4, 40), ["HEAD", "."], base, summary, [True, False])


def test_reports_name_the_source_and_the_blas_kernel():
    import subprocess

    from benchmarks.common import blas_summary, machine_info, source_revision

    revision = source_revision()
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if head.returncode == 0:
        assert f"commit {head.stdout.strip()}" in revision
    else:
        assert "not a git checkout" in revision
    assert machine_info()["fffcpu source"] == revision
    assert "kernel" in blas_summary() or blas_summary() == "no BLAS found by threadpoolctl"


def test_interleaved_times_warms_short_calls_after_each_pause():
    """A call that stalls when it is the first after an idle pause (as the first parallel call of Numba's OpenMP
    workers can) is timed by its warm calls; a call slower than ``WARM_BELOW_S`` is timed at once, without
    untimed calls."""
    from benchmarks import ultra

    last = [0.0]
    calls = {"stalls": 0, "slow": 0}

    def stalls():
        calls["stalls"] += 1
        now = time.perf_counter()
        time.sleep(0.002 + (0.03 if now - last[0] > 0.05 else 0.0))  # 32 ms after a pause, else 2 ms
        last[0] = time.perf_counter()

    def slow():
        calls["slow"] += 1
        time.sleep(ultra.WARM_BELOW_S * 1.2)

    times = ultra.interleaved_times({"stalls": stalls, "slow": slow}, min_seconds=0.0, min_rounds=3, settle=0.08)
    assert times["stalls"] < 0.015  # every timing would be 32 ms without the warm calls
    assert times["slow"] >= ultra.WARM_BELOW_S
    assert calls["slow"] == 4 + 3  # the warm-up and probe calls, then one timed call per round
    assert calls["stalls"] > 4 + 3
