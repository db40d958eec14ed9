"""Packaging consistency: pyproject.toml vs environment.yml, Makefile, .ci/run.

environment.yml (for conda users) must list exactly the core dependencies plus
the ``data``, ``notebooks`` and ``test`` extras of pyproject.toml, with the same
version bounds, besides ``python`` and ``pip``.  The YAML is read by a tiny
hand parser (PyYAML is not a dependency), which understands only the simple
shape that file has.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
ENVIRONMENT = ROOT / "environment.yml"
MAKEFILE = ROOT / "Makefile"
CI_RUN = ROOT / ".ci" / "run"

# Extras mirrored in environment.yml (viz and dask are pip-only; dev is a meta extra).
MIRRORED_EXTRAS = ("data", "notebooks", "test")
# Allowed in environment.yml beyond the mirrored packages.
ENV_ONLY = {"python", "pip"}

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")
_SPEC = re.compile(r"^(>=|<=|==|!=|~=|>|<|=)\s*([0-9][0-9A-Za-z.*+!-]*)$")


def normalize(name: str) -> str:
    """PEP 503 name normalization (``Scikit_Learn`` -> ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str) -> tuple[str, frozenset[str]]:
    """Split ``"numpy>=1.24,<2.6"`` (PEP 508 or conda match spec) into
    ``("numpy", {">=1.24", "<2.6"})``.  Raises ValueError on anything else
    (markers, URLs, conda space syntax; conda ``=`` is accepted), so surprises fail the test."""
    text = text.split("#", 1)[0].strip()
    m = _REQ.match(text)
    if not m:
        raise ValueError(f"cannot parse requirement {text!r}")
    name, _extras, rest = m.groups()
    specs = set()
    if rest:
        for part in rest.split(","):
            part = part.strip().replace(" ", "")
            if not _SPEC.match(part):
                raise ValueError(f"cannot parse version bound {part!r} in {text!r}")
            specs.add(part)
    return normalize(name), frozenset(specs)


def load_pyproject(text: str | None = None) -> dict:
    return tomllib.loads(PYPROJECT.read_text() if text is None else text)


def expected_packages(pyproject: dict) -> tuple[dict[str, frozenset[str]], list[str]]:
    """Packages the conda environment must carry, name -> bounds, plus any
    inconsistencies inside pyproject itself (one package, two different bounds)."""
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {})
    requirements = list(project.get("dependencies", []))
    problems = []
    for extra in MIRRORED_EXTRAS:
        if extra not in extras:
            problems.append(f"pyproject.toml has no [{extra}] extra")
        requirements += extras.get(extra, [])
    packages: dict[str, frozenset[str]] = {}
    for req in requirements:
        name, specs = parse_requirement(req)
        if name in packages and packages[name] != specs:
            problems.append(
                f"pyproject.toml gives {name} two different bounds: "
                f"{sorted(packages[name])} and {sorted(specs)}"
            )
        packages.setdefault(name, specs)
    return packages, problems


def parse_environment(text: str) -> dict:
    """Tiny parser for the simple conda environment.yml shape::

        name: fffcpu
        channels:
          - conda-forge
        dependencies:
          - numpy>=1.24,<2.6
          - pip:
              - -e .

    Returns {"name": str, "channels": [...], "dependencies": [...], "pip": [...]}.
    """
    result: dict = {"name": None, "channels": [], "dependencies": [], "pip": []}
    section = None  # top-level key whose list we are reading
    in_pip = False
    item_indent = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        stripped = line.strip()
        if indent == 0:
            key, sep, value = stripped.partition(":")
            if not sep:
                raise ValueError(f"environment.yml:{lineno}: expected 'key:' got {raw!r}")
            key, value = key.strip(), value.strip()
            in_pip, item_indent = False, None
            if value:
                result[key] = value
                section = None
            else:
                section = key
                result.setdefault(key, [])
            continue
        if section is None or not stripped.startswith("- "):
            raise ValueError(f"environment.yml:{lineno}: unexpected line {raw!r}")
        item = stripped[2:].strip()
        if item_indent is None:
            item_indent = indent
        if indent == item_indent:
            in_pip = False
            if section == "dependencies" and item == "pip:":
                in_pip = True
                continue
            result[section].append(item)
        elif indent > item_indent and in_pip:
            result["pip"].append(item)
        else:
            raise ValueError(f"environment.yml:{lineno}: unexpected indentation {raw!r}")
    return result


def environment_problems(pyproject: dict, environment: dict) -> list[str]:
    """Every difference between the mirrored pyproject packages and environment.yml."""
    expected, problems = expected_packages(pyproject)
    found: dict[str, frozenset[str]] = {}
    for dep in environment["dependencies"]:
        name, specs = parse_requirement(dep)
        if name in found:
            problems.append(f"environment.yml lists {name} twice")
        found[name] = specs
    for name, specs in sorted(expected.items()):
        if name not in found:
            problems.append(f"{name} is in pyproject.toml but missing from environment.yml")
        elif found[name] != specs:
            problems.append(
                f"{name}: pyproject.toml has {sorted(specs)}, "
                f"environment.yml has {sorted(found[name])}"
            )
    for name in sorted(set(found) - set(expected) - ENV_ONLY):
        problems.append(f"{name} is in environment.yml but not in pyproject.toml core/{'/'.join(MIRRORED_EXTRAS)}")
    for name in sorted(ENV_ONLY - set(found)):
        problems.append(f"environment.yml does not list {name}")
    return problems


# --------------------------------------------------------------------------
# pyproject.toml


def test_pyproject_metadata():
    project = load_pyproject()["project"]
    assert project["name"] == "fffcpu"
    assert project["version"] == "0.1.0"
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"]["fffcpu"] == "fffcpu.cli:main"
    extras = project["optional-dependencies"]
    assert {"data", "notebooks", "viz", "dask", "test", "dev"} <= set(extras)
    assert any(r.startswith("fffcpu[") for r in extras["dev"])


def test_pyproject_requirements_parse_and_numpy_capped_for_numba():
    project = load_pyproject()["project"]
    core = dict(parse_requirement(r) for r in project["dependencies"])
    assert {"numpy", "numba", "scipy", "tqdm", "threadpoolctl"} <= set(core)
    assert "<2.6" in core["numpy"], "numba 0.68 needs numpy < 2.6"
    for extra, reqs in project["optional-dependencies"].items():
        for req in reqs:
            parse_requirement(req)  # raises on anything unexpected


def test_pytest_markers_declared():
    options = load_pyproject()["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests"]
    names = {m.split(":", 1)[0].strip() for m in options["markers"]}
    assert {"slow", "torch"} <= names


# --------------------------------------------------------------------------
# environment.yml


def test_environment_shape():
    env = parse_environment(ENVIRONMENT.read_text())
    assert env["name"] == "fffcpu"
    assert env["channels"] == ["conda-forge"]
    assert "python=3.11" in env["dependencies"]
    assert env["pip"] == ["-e ."]


def test_environment_matches_pyproject():
    problems = environment_problems(
        load_pyproject(), parse_environment(ENVIRONMENT.read_text())
    )
    assert problems == []


def _drop_line(text: str, startswith: str) -> str:
    lines = text.splitlines(keepends=True)
    kept = [ln for ln in lines if not ln.strip().startswith(startswith)]
    assert len(kept) == len(lines) - 1, f"expected exactly one line starting {startswith!r}"
    return "".join(kept)


@pytest.mark.parametrize(
    "mutate, expected_message",
    [
        # a package removed from environment.yml
        (lambda py, env: (py, _drop_line(env, "- mlxtend")), "mlxtend is in pyproject.toml but missing"),
        # a package removed from pyproject.toml (no longer expected in environment.yml)
        (
            lambda py, env: (py.replace('"threadpoolctl>=3.1",', ""), env),
            "threadpoolctl is in environment.yml but not in pyproject",
        ),
        # a bound changed in one file only
        (lambda py, env: (py, env.replace("numba>=0.59", "numba>=0.58")), "numba: pyproject.toml has"),
        # an upper bound dropped in one file only
        (lambda py, env: (py, env.replace("numpy>=1.24,<2.6", "numpy>=1.24")), "numpy: pyproject.toml has"),
        # something unexpected added to environment.yml
        (lambda py, env: (py, env.replace("  - pip\n", "  - pip\n  - torch>=2\n")), "torch is in environment.yml"),
        # the same package with two different bounds inside pyproject
        (
            lambda py, env: (
                py.replace('data = ["scikit-learn>=1.6"', 'data = ["scikit-learn>=1.7"'),
                env,
            ),
            "two different bounds",
        ),
    ],
    ids=["removed-from-env", "removed-from-pyproject", "bound-changed", "upper-bound-dropped",
         "unexpected-in-env", "inconsistent-in-pyproject"],
)
def test_consistency_check_can_fail(mutate, expected_message):
    py_text, env_text = PYPROJECT.read_text(), ENVIRONMENT.read_text()
    new_py, new_env = mutate(py_text, env_text)
    assert (new_py, new_env) != (py_text, env_text), "mutation did not apply"
    problems = environment_problems(load_pyproject(new_py), parse_environment(new_env))
    assert any(expected_message in p for p in problems), problems


def test_parse_requirement_rejects_unknown_syntax():
    assert parse_requirement("numpy>=1.24,<2.6") == ("numpy", frozenset({">=1.24", "<2.6"}))
    assert parse_requirement("dask[array]>=2023.1") == ("dask", frozenset({">=2023.1"}))
    assert parse_requirement("ruff") == ("ruff", frozenset())
    with pytest.raises(ValueError):
        parse_requirement("numpy 1.24.*")  # conda space syntax is not used in environment.yml


# --------------------------------------------------------------------------
# Makefile and .ci/run


def makefile_targets(text: str) -> set[str]:
    targets = set()
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.%$()/ -]+?)\s*:(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(m.group(1).split())
    return targets


def test_makefile_targets():
    text = MAKEFILE.read_text()
    targets = makefile_targets(text)
    for target in ("demo", "test", "bench", "lab", "torch", "venv", "clean", "help"):
        assert target in targets, f"Makefile has no '{target}' target"
    assert re.search(r"^\.DEFAULT_GOAL\s*:=\s*help\s*$", text, re.M)
    # GNU make recipes must be indented with tabs
    for lineno, line in enumerate(text.splitlines(), 1):
        assert not re.match(r"^ +(\$\(|@|rm |find )", line), f"Makefile:{lineno}: recipe indented with spaces"


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_make_help_lists_targets():
    out = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "help"],
        capture_output=True, text=True, check=True,
    ).stdout
    for target in ("demo", "test", "bench", "lab"):
        assert f"make {target}" in out


def test_ci_run_calls_make_test():
    text = CI_RUN.read_text()
    code = [ln.split("#", 1)[0] for ln in text.splitlines()]
    assert text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/bash")
    assert any(re.search(r"\bset -euo pipefail\b", ln) for ln in code)
    assert any(re.search(r"\bmake\b.*\btest\b", ln) for ln in code), ".ci/run must call `make test`"
    assert any(re.search(r"\bmake\b.*\btorch\b", ln) for ln in code), ".ci/run must install the torch cross-checks"


@pytest.mark.skipif(os.name != "posix", reason="executable bit is POSIX only")
def test_ci_run_is_executable():
    assert os.access(CI_RUN, os.X_OK)


def _run_read_only(site: Path, command: list, env: dict, cwd: Path) -> tuple:
    """Run ``command`` with every file under ``site`` read-only; its two printed words."""
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=cwd)
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert result.returncode == 0, result.stderr
    return tuple(result.stdout.split())


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_read_only_install_without_a_writable_home_imports_and_caches_in_the_temporary_folder(tmp_path):
    # Numba refuses a cache=True kernel when it has nowhere to cache: the package must find it a folder
    site = tmp_path / "site"
    shutil.copytree(ROOT / "fffcpu", site / "fffcpu", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import numba, numpy as np, fffcpu\n"
            "from fffcpu.kernels.optim import adam_step\n"
            "p = np.zeros(3); adam_step(p, np.ones(3), np.zeros(3), np.zeros(3), 0.1, 0.9, 0.999, 1.0, 1e-8, 0.0)\n"
            "print(numba.config.CACHE_DIR, p[0] < 0)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(HOME=str(tmp_path / "no-home"), XDG_CACHE_HOME=str(tmp_path / "no-home" / ".cache"),
               PYTHONPATH=str(site), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "no-home").mkdir(mode=0o555)
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:  # root writes anywhere: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--"] + command
    cache, ran = _run_read_only(site, command, env, tmp_path)
    assert cache == str(tmp_path / "tmp" / f"fffcpu-numba-cache-{os.getuid()}") and ran == "True"
    if os.geteuid() == 0:  # the same folder name taken by another user: a new folder of this process instead
        shutil.rmtree(cache)
        os.mkdir(cache, mode=0o755)
        os.chown(cache, 65534, 65534)
        other, ran = _run_read_only(site, command, env, tmp_path)
        assert other != cache and os.path.basename(other).startswith("fffcpu-numba-cache-") and ran == "True"


def test_the_wheel_carries_the_license_and_the_readme_and_the_sdist_no_test_suite(tmp_path):
    import zipfile

    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "fffcpu", source / "fffcpu", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {result.stderr.strip()[-200:]}")
    (wheel,) = tmp_path.glob("fffcpu-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "Description-Content-Type: text/markdown" in metadata and "# fffcpu" in metadata
    assert {n.split("/")[0] for n in names} == {"fffcpu", wheel.name.split("-py3")[0] + ".dist-info"}
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "prune tests" in manifest  # tests/ needs the repository (naive.py, benchmarks/): not in the sdist


def test_a_numba_cache_dir_that_cannot_be_written_is_set_aside_with_a_warning(tmp_path):
    # Numba would refuse every cache=True kernel at import with an error that does not name the folder
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import numpy as np, fffcpu\n"
            "from fffcpu.info import kernel_cache_dir\n"
            "y = fffcpu.FFF(3, 2, 2, 1, seed=0).predict(np.ones((5, 3)))\n"
            "print(kernel_cache_dir(), y.shape)\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(blocker / "cache")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"NUMBA_CACHE_DIR={str(blocker / 'cache')!r} is not a folder this process can write to" in result.stderr
    cache, shape = result.stdout.split(" ", 1)
    assert cache != str(blocker / "cache") and shape.strip() == "(5, 2)"
