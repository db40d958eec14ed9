"""The README's code runs as printed, and the command line works end to end."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_names_the_two_commands():
    assert "make demo" in README and "make test" in README
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_code_runs(index, tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()  # every block prints what it shows


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fffcpu", *args], capture_output=True, text=True, timeout=300)


def test_demo_prints_the_comparison_table():
    pytest.importorskip("sklearn")
    result = run_cli("demo", "--epochs", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ff = next(line for line in lines if line.startswith("FF width 128"))
    fff = next(line for line in lines if line.startswith("FFF depth 4, leaf 8"))
    assert "12 of 143" in fff and ff.split()[5] == "128"
    assert len(re.findall(r"\d+\.\d%", fff)) == 2  # soft and hard accuracy


def test_cli_errors_are_one_line_and_nonzero():
    result = run_cli("demo", "--epochs", "0")
    assert result.returncode != 0 and "--epochs must be at least 1, got 0" in result.stderr
    result = run_cli()
    assert result.returncode == 2 and "demo" in result.stdout
