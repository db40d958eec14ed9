"""The README's code runs as printed, and the command line works end to end."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    block = python_blocks()[index]
    exec(compile(block, f"README.md block {index}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert printed.strip()  # every block prints what it shows
    # a figure the README states in a comment after a print: "# hard 0.953, soft 0.929, 8 of 16"
    for hard, soft, used, n in re.findall(r"# hard ([\d.]+), soft ([\d.]+), (\d+) of (\d+)", block):
        assert f"hard accuracy {hard}, soft {soft}, leaves used {used} of {n}" in printed


def test_relative_links_of_the_docs_resolve():
    # README.md and docs/*.md link to each other, to images and to files of the repository by relative paths;
    # each must name a file that exists (renaming a report must not leave links behind)
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#", 1)[0]
            if path and "://" not in path and not path.startswith("mailto:"):
                if not (page.parent / path).exists():
                    broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fffcpu", *args], capture_output=True, text=True, timeout=300)


def test_demo_prints_the_comparison_table():
    pytest.importorskip("sklearn")
    result = run_cli("demo", "--epochs", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ff = next(line for line in lines if line.startswith("FF width 128"))
    soft = next(line for line in lines if line.startswith("FFF soft + hardening"))
    hard = next(line for line in lines if line.startswith("FFF hard, straight-through"))
    sharp = next(line for line in lines if line.startswith("FFF soft, sharpened"))
    assert "128 of 128" in ff
    for row in (soft, hard, sharp):
        assert "12 of 143" in row and re.search(r"\b\d+ of 16\b", row)  # neurons per input, leaves used
        assert len(re.findall(r"\d+\.\d%", row)) == 2  # soft and hard accuracy


def test_demo_repeats_exactly():
    # README: the demo is seeded, and its accuracies and leaf counts repeat exactly (same BLAS kernel)
    pytest.importorskip("sklearn")
    import io

    from fffcpu import cli

    runs = [cli.demo(epochs=2, progress=False, out=io.StringIO()) for _ in range(2)]
    for name, first in runs[0].items():
        second = runs[1][name]
        assert {k: v for k, v in first.items() if k != "samples_per_s"} == \
            {k: v for k, v in second.items() if k != "samples_per_s"}, name


def test_demo_compiles_the_kernels_before_training(monkeypatch):
    # The compilation (about half a minute on a first run) is announced and timed before any progress bar starts.
    pytest.importorskip("sklearn")
    import io

    import fffcpu
    from fffcpu import cli

    events = []
    real_train = fffcpu.train
    monkeypatch.setattr(fffcpu, "warmup", lambda *dtypes: events.append(("warmup", dtypes)))
    monkeypatch.setattr(fffcpu, "train", lambda *a, **k: events.append("train") or real_train(*a, **k))
    out = io.StringIO()
    cli.demo(epochs=1, progress=False, out=out)
    assert events[0] == ("warmup", ("float32",)) and events[1:] == ["train"] * 4
    assert re.search(r"loading the hard-inference kernels .* \d+\.\d s\n", out.getvalue())


def test_throughput_is_timed_after_blas_threads_went_idle(monkeypatch):
    from fffcpu import cli

    events = []
    monkeypatch.setattr(cli.time, "sleep", lambda seconds: events.append(("sleep", seconds)))
    cli._median_seconds(lambda: events.append("call"), repeats=3)
    assert events == [("sleep", cli.PAUSE), "call", "call", "call", "call"]  # the pause, the warm-up, 3 timed calls
    assert cli.PAUSE >= 0.2  # OpenBLAS threads spin for about 0.1 s after a call


def test_cli_errors_are_one_line_and_nonzero():
    result = run_cli("demo", "--epochs", "0")
    assert result.returncode == 2 and "--epochs: expected an integer >= 1, got '0'" in result.stderr
    result = run_cli()
    assert result.returncode == 2 and "demo" in result.stdout


def test_train_save_predict_end_to_end(tmp_path):
    import fffcpu

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    data = tmp_path / "data.npz"
    np.savez(data, X=X, y=y)
    model_path = tmp_path / "m.npz"
    result = run_cli("train", "--data", f"npz:{data}", "--depth", "2", "--leaf-width", "3", "--epochs", "30",
                     "--training", "soft", "--hardening", "5", "--save", str(model_path), "--quiet")
    assert result.returncode == 0, result.stderr
    hard_acc = float(re.search(r"test accuracy: +soft [\d.]+, hard ([\d.]+)", result.stdout).group(1))
    assert hard_acc > 0.85
    np.save(tmp_path / "x.npy", X[:20])
    out = tmp_path / "labels.npy"
    result = run_cli("predict", str(model_path), str(tmp_path / "x.npy"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    model = fffcpu.load(model_path)
    np.testing.assert_array_equal(np.load(out), model.predict(X[:20]).argmax(axis=1))
    result = run_cli("predict", str(model_path), str(tmp_path / "x.npy"), "--what", "leaves")
    assert [int(v) for v in result.stdout.split()] == model.route(X[:20]).tolist()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "foo"], "--data must be digits, mnist5k, idx:DIR or npz:FILE, got 'foo'"),
        (["train", "--data", "npz:/nonexistent.npz"], "no such file"),
        (["train", "--data", "idx:/nonexistent-dir", "--quiet"], "fffcpu train: error:"),
        (["train", "--depth", "-1", "--quiet"], "depth must be an integer >= 0, got -1"),
        (["predict", "/nonexistent.npz", "/nonexistent.npy"], "no such model file"),
        # the destination of --save is checked before the data are even loaded, not after the training
        (["train", "--data", "npz:/nonexistent.npz", "--save", "/nonexistent-dir/m.npz"],
         "folder '/nonexistent-dir' does not exist"),
        (["train", "--data", "npz:/nonexistent.npz", "--save", "/"], "it names a folder; give a file name"),
    ],
)
def test_cli_bad_input_gives_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bench_prints_a_row_per_depth():
    result = run_cli("bench", "--depths", "1", "3", "--batch", "8", "--leaf-width", "2")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "3"] and [r[1] for r in rows] == ["4", "16"]


def test_train_on_idx_files_uses_t10k_as_test_set(tmp_path):
    from test_datasets import write_mnist

    write_mnist(tmp_path, "train", n=60, gz=".gz")
    write_mnist(tmp_path, "t10k", n=20)
    result = run_cli("train", "--data", f"idx:{tmp_path}", "--depth", "1", "--leaf-width", "2", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "60 training and 20 test samples" in result.stderr  # t10k files became the test set
    assert "training" in result.stderr  # progress bar without --quiet
    # the kernels are loaded (compiled on a first run) before the progress bar starts, with the time it took
    assert re.search(r"loading the hard-inference kernels .* \d+\.\d s\n\s*training", result.stderr)


def test_console_script_is_installed():
    import shutil
    from pathlib import Path

    script = shutil.which("fffcpu", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("fffcpu is not installed as a package here (no console script next to the interpreter)")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "train" in result.stdout and "predict" in result.stdout


def test_cli_says_what_a_wrong_data_or_input_file_holds(tmp_path):
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((3, 4), dtype=np.float32))
    text = tmp_path / "notes.npz"
    text.write_text("not numpy")
    for args, message in [
        (["train", "--data", f"npz:{single}"], "holds a single array (float32 (3, 4)); --data npz:FILE needs"),
        (["train", "--data", f"npz:{text}"], "is neither an .npz nor an .npy file; --data npz:FILE needs"),
        (["predict", str(single), str(single)], "holds a single array (float32 (3, 4)), not an fffcpu model"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 1
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    model = tmp_path / "m.npz"
    assert run_cli("train", "--data", "digits", "--epochs", "1", "--quiet", "--save", str(model)).returncode == 0
    result = run_cli("predict", str(model), str(text))
    assert result.returncode == 1 and "is neither an .npz nor an .npy file; inputs must be" in result.stderr


def test_blas_spin_script_runs():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "blas_spin.py"), "--rounds", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for case in ("right after a matmul", "after a matmul and 0.2 s of sleep", "back to back",
                 "right after a matmul on one BLAS thread"):
        assert re.search(rf"{case} +median +\d+\.\d\d ms", result.stdout), result.stdout


def test_idle_stall_script_runs():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "idle_stall.py"), "--rounds", "1", "--pause", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for model in ("FFF(784, 16, 10, 9), 256 inputs", "UltraFFF(768, 768, 11), 128 tokens"):
        for label in ("after the pause", "again at once"):
            assert re.search(rf"{re.escape(model)}, {label}: \d+\.\d\d-\d+\.\d\d ms", result.stdout), result.stdout
        assert re.search(rf"{re.escape(model)}, back to back: median \d+\.\d\d ms", result.stdout), result.stdout


def test_cli_labels_empty_inputs_and_the_output_name(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    data = tmp_path / "words.npz"
    np.savez(data, X=X, y=np.array(["cat", "dog"] * 20))
    result = run_cli("train", "--data", f"npz:{data}", "--quiet")
    assert result.returncode == 1 and "y must hold integer class labels 0, 1, ..., got dtype <U3" in result.stderr
    model = tmp_path / "m.npz"
    np.savez(data, X=X, y=(X[:, 0] > 0).astype(int))
    assert run_cli("train", "--data", f"npz:{data}", "--epochs", "1", "--quiet", "--save", str(model)).returncode == 0
    np.save(tmp_path / "empty.npy", np.zeros((0, 4)))
    result = run_cli("predict", str(model), str(tmp_path / "empty.npy"))
    assert result.returncode == 1 and "no inputs to predict (an array of shape (0, 4))" in result.stderr
    np.save(tmp_path / "x.npy", X[:5])
    result = run_cli("predict", str(model), str(tmp_path / "x.npy"), "--output", str(tmp_path / "labels"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"to {tmp_path / 'labels.npy'}") and (tmp_path / "labels.npy").exists()


def test_train_defaults_to_hard_training_and_reports_the_leaves_used():
    result = run_cli("train", "--data", "digits", "--quiet")
    assert result.returncode == 0, result.stderr
    used = int(re.search(r"leaves used: (\d+) of 16", result.stdout).group(1))
    hard_acc = float(re.search(r"test accuracy: +soft [\d.]+, hard ([\d.]+)", result.stdout).group(1))
    assert used >= 6 and hard_acc > 0.9  # (a soft tree at hardening 10, the old default, used 1 leaf)
    result = run_cli("train", "--data", "digits", "--quiet", "--training", "sharpened", "--epochs", "20")
    soft_acc, hard_acc = map(float, re.search(r"test accuracy: +soft ([\d.]+), hard ([\d.]+)", result.stdout).groups())
    assert result.returncode == 0 and abs(soft_acc - hard_acc) < 0.02  # the soft model ends as the hard one


def test_idx_data_with_half_a_test_set_is_refused(tmp_path):
    from test_datasets import write_idx, write_mnist

    write_mnist(tmp_path, "train", n=20)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 4, 3), np.uint8))  # no t10k labels
    result = run_cli("train", "--data", f"idx:{tmp_path}", "--epochs", "1", "--quiet")
    assert result.returncode == 1 and "no t10k labels file" in result.stderr


def test_train_takes_a_test_count_and_refuses_fractional_labels(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    data = tmp_path / "d.npz"
    np.savez(data, X=X, y=(X[:, 0] > 0).astype(float) + 0.5)
    result = run_cli("train", "--data", f"npz:{data}", "--quiet")
    assert result.returncode == 1
    assert "y must hold integer class labels 0, 1, ..., got non-integer values" in result.stderr
    np.savez(data, X=X, y=(X[:, 0] > 0).astype(int))
    result = run_cli("train", "--data", f"npz:{data}", "--quiet", "--epochs", "1", "--test-size", "15")
    assert result.returncode == 0, result.stderr
