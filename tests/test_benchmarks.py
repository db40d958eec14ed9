"""Smoke test of the benchmark runner on a tiny grid: the report has the expected rows and the correctness checks ran.
No timing assertions (timings depend on the machine and its load)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import __main__ as runner  # noqa: E402
from benchmarks import inference, training  # noqa: E402
from benchmarks.common import have_torch  # noqa: E402


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
    for needle in ("## Machine", "Numba threading layer", "threadpool 0", "| 32 | 1 | 16 | 3 |",
                   "## Training step", "fffcpu FFF(784, 8, 10, 4)", "fffcpu dense FF(784, 128, 10)",
                   "### Batch 1: where the time goes", "12 layers of each kind"):
        assert needle in text, needle
    assert (tmp_path / "benchmarks_inference.png").exists()
    assert "benchmarks.training" in runner.MODULES and "benchmarks.inference" in runner.MODULES
