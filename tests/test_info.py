"""``fffcpu.show_versions`` / ``fffcpu info``: what fffcpu runs on, for a bug report or beside a timing."""

import io
import subprocess
import sys

import numba
import numpy as np

import fffcpu
from fffcpu import cli, info


def test_system_info_names_versions_cpu_blas_and_numba():
    facts = info.system_info()
    assert facts["fffcpu"].startswith(fffcpu.__version__ + " (")
    assert facts["NumPy"] == np.__version__
    assert facts["Numba"].startswith(numba.__version__ + " (llvmlite ")
    assert facts["Numba threads"] == f"{numba.get_num_threads()} (of {numba.config.NUMBA_NUM_THREADS})"
    assert facts["kernel cache"] == info.kernel_cache_dir()
    blas = [value for name, value in facts.items() if name.startswith("threadpool") and "(blas)" in value]
    assert blas and all("kernel " in value and " threads" in value for value in blas)
    assert f"kernel {info.blas_summary().rsplit('kernel ', 1)[-1]}" in blas[0]  # NumPy's BLAS comes first
    for name in info.OPTIONAL:
        assert facts[name].endswith(f"({info.OPTIONAL[name]})")


def test_optional_packages_and_the_environment(monkeypatch):
    versions = {"scikit-learn": "1.0"}
    monkeypatch.setattr(info, "_distribution_version", lambda name: versions.get(name))
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    facts = info.system_info()
    assert facts["scikit-learn"] == "1.0 (estimators, digits)"
    assert facts["torch"] == "not installed (cross-checks)"
    assert facts["$OMP_WAIT_POLICY"] == "passive" and "$OPENBLAS_CORETYPE" not in facts


def test_show_versions_prints_one_line_per_fact_and_the_command_line_too(capsys):
    out = io.StringIO()
    fffcpu.show_versions(file=out)
    facts = info.system_info()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(facts)
    assert [line.split(": ", 1)[0].strip() for line in lines] == list(facts)
    assert cli.main(["info"]) == 0
    printed = capsys.readouterr().out
    assert f"fffcpu: {fffcpu.__version__} (" in printed and "Numba threading layer: " in printed


def test_show_versions_imports_no_optional_package():
    code = ("import sys, fffcpu; fffcpu.show_versions(); "
            "loaded = [m for m in ('sklearn', 'torch', 'matplotlib', 'dask', 'mlxtend') if m in sys.modules]; "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
