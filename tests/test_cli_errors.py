"""Bad command-line input gets a one-line error saying what was expected and what was given; nothing is lost."""

import os
import re

import numpy as np
import pytest

from fffcpu import cli


def run(capsys, *argv):
    """``fffcpu argv`` in this process: (exit code, stdout, stderr); argparse errors exit with 2."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and "Traceback" not in err, err
    return lines[-1]


@pytest.fixture
def data(tmp_path):
    """An .npz data file of 60 samples, 4 features, labels 0 and 1; ``data(y=...)`` writes other labels."""
    X = np.random.default_rng(0).normal(size=(60, 4))

    def write(y=None, name="d.npz", **arrays):
        path = tmp_path / name
        np.savez(path, X=X, y=(X[:, 0] > 0).astype(int) if y is None else y, **arrays)
        return path

    return write


@pytest.fixture
def model(tmp_path):
    import fffcpu

    return fffcpu.save(fffcpu.FFF(4, 2, 2, 1, seed=0), tmp_path / "m.npz")


# 1. divergence


def test_training_divergence_is_an_error_line_and_keeps_the_old_model_file(capsys, data, tmp_path):
    old = tmp_path / "old.npz"
    old.write_bytes(b"the user's previous model")
    code, _, err = run(capsys, "train", "--data", f"npz:{data()}", "--epochs", "2", "--lr", "1e30",
                       "--optimizer", "sgd", "--quiet", "--save", str(old))
    line = error_line(err)
    assert code == 1 and line.startswith("fffcpu train: error: training diverged (--lr 1e+30): ")
    assert "NaN" in line or "nan" in line
    assert line.endswith(f"nothing was saved to {str(old)!r}.")
    assert old.read_bytes() == b"the user's previous model"


# 2. input files that are not numeric .npy arrays


def test_predict_names_a_file_that_is_not_npy_and_never_advises_unpickling(capsys, model, tmp_path):
    text = tmp_path / "txt.npy"
    text.write_text("some text")
    code, _, err = run(capsys, "predict", str(model), str(text))
    assert code == 1 and f"{str(text)!r} is not an .npy file; inputs must be" in error_line(err)
    assert "pickle" not in err


@pytest.mark.parametrize("name", ["obj.npy", "obj.npz"])
def test_predict_refuses_object_arrays_naming_the_file(capsys, model, tmp_path, name):
    path = tmp_path / name
    array = np.array([1, "a", None], dtype=object)
    if name.endswith(".npy"):
        np.save(path, array, allow_pickle=True)
    else:
        np.savez(path, X=array)
    code, _, err = run(capsys, "predict", str(model), str(path))
    line = error_line(err)
    assert code == 1 and line.startswith(f"fffcpu predict: error: {str(path)!r}")
    assert "holds an array of Python objects (dtype object, shape (3,))" in line
    assert "expected a numeric array (samples x features)" in line
    assert "allow_pickle" not in line


def test_predict_reads_a_file_by_what_it_holds(capsys, model, tmp_path):
    X = np.random.default_rng(1).normal(size=(3, 4))
    np.savez(tmp_path / "zip.npz", X=X)
    os.replace(tmp_path / "zip.npz", tmp_path / "zip.npy")  # an .npz file named .npy
    code, out, err = run(capsys, "predict", str(model), str(tmp_path / "zip.npy"))
    assert code == 0, err
    assert len(out.split()) == 3


# 3. class labels


@pytest.mark.parametrize("y, message", [
    (np.where(np.arange(60) == 7, 10**9, np.arange(60) % 3),
     "got 4 distinct labels in all, the largest 1000000000: a model of 1,000,000,001 outputs"),
    (np.arange(60) % 2 * 5,
     "got 2 distinct labels in all, the largest 5: a model of 6 outputs, 4 of them for classes without a sample"),
    (np.zeros(60, int),
     ("expected at least 2 distinct labels (classes) in the training set, got 1 (1 distinct label in all, the "
      "largest 0)")),
    (np.arange(60) % 2 - 1, "got negative labels (the smallest -1; 2 distinct labels in all, the largest 0)"),
    (np.where(np.arange(60) == 3, np.inf, np.arange(60) % 2), "got non-integer values (such as inf)"),
])
def test_train_refuses_labels_that_are_not_classes_0_to_k_minus_1(capsys, data, y, message):
    path = data(y)
    code, _, err = run(capsys, "train", "--data", f"npz:{path}", "--epochs", "1", "--quiet")
    line = error_line(err)
    assert code == 1 and line.startswith(f"fffcpu train: error: --data npz:{path}: ")
    assert message in line


def test_train_takes_labels_with_a_few_absent_classes(capsys, data):
    code, out, err = run(capsys, "train", "--data", f"npz:{data(np.arange(60) % 2 + 1)}", "--epochs", "1", "--quiet")
    assert code == 0, err  # labels 1 and 2: 3 outputs, output 0 unused
    assert "test accuracy" in out


def test_train_help_states_the_label_rule(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "Labels y must be integers 0, 1, ..., K-1" in text
    assert "largest label + 1 > 2 x the number of distinct labels" in text


# 4. output paths


@pytest.mark.parametrize("output", ["folder", "folder/", ""])
def test_predict_refuses_an_output_that_is_a_folder_or_empty(capsys, model, tmp_path, output):
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "x.npy", np.zeros((2, 4)))
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path / "folder"))
    code, out, err = run(capsys, "predict", str(model), str(tmp_path / "x.npy"), "--output",
                         str(tmp_path / output) + ("/" if output.endswith("/") else "") if output else "")
    line = error_line(err)
    assert code == 1 and out == ""  # nothing printed instead of written
    if output:
        assert "names a folder; expected a file name, such as" in line and "labels.npy" in line
    else:
        assert line == "fffcpu predict: error: --output: expected a file name, such as 'labels.npy', got an empty one"
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path / "folder"))) == before


def test_train_refuses_an_empty_save_name(capsys, data):
    code, _, err = run(capsys, "train", "--data", f"npz:{data()}", "--epochs", "1", "--quiet", "--save", "")
    assert code == 1 and "cannot save to an empty path" in error_line(err)


# 5. --test-size


def test_test_size_with_a_decimal_point_is_a_fraction(capsys):
    code, _, err = run(capsys, "train", "--test-size", "1.0")
    assert code == 2
    assert error_line(err) == ("fffcpu train: error: argument --test-size: a number with a decimal point is a "
                               "fraction of the samples and must be in (0, 1), got '1.0' (for a count of 1 sample, "
                               "write 1)")


@pytest.mark.parametrize("size, message", [
    ("60", "--test-size 60: expected fewer test samples than the 60 samples of --data npz:"),
    ("0.999", "--test-size 0.999 would put all 60 samples of --data npz:"),
])
def test_test_size_must_leave_training_samples(capsys, data, size, message):
    code, _, err = run(capsys, "train", "--data", f"npz:{data()}", "--test-size", size, "--quiet")
    assert code == 1 and message in error_line(err)


def test_test_size_is_refused_for_data_with_a_test_set(capsys, data):
    X = np.zeros((5, 4))
    path = data(X_test=X, y_test=np.arange(5) % 2)
    code, _, err = run(capsys, "train", "--data", f"npz:{path}", "--test-size", "5", "--quiet")
    assert code == 1
    assert f"--data npz:{path} has its own test set (5 samples); --test-size applies only" in error_line(err)


# 6. argument converters


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "x"], "argument --epochs: expected an integer >= 1, got 'x'"),
    (["train", "--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    (["train", "--lr", "inf"], "argument --lr: expected a finite number > 0, got 'inf'"),
    (["train", "--lr", "fast"], "argument --lr: expected a finite number > 0, got 'fast'"),
    (["train", "--test-size", "abc"],
     ("argument --test-size: expected a fraction in (0, 1) such as 0.25, or a number of test samples such as 500, "
      "got 'abc'")),
    (["train", "--test-size", "0"],
     "argument --test-size: expected a number of test samples >= 1 or a fraction in (0, 1), got '0'"),
])
def test_argument_errors_say_what_was_expected(capsys, args, message):
    code, _, err = run(capsys, *args)
    line = error_line(err)
    assert code == 2 and line == f"fffcpu {args[0]}: error: {message}"
    assert "invalid" not in line and "_positive" not in line and "_test_size" not in line


# 7. input shapes


def test_predict_a_1d_array_says_a_2d_one_was_expected(capsys, model, tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(4))
    code, _, err = run(capsys, "predict", str(model), str(tmp_path / "one.npy"))
    line = error_line(err)
    assert code == 1 and "expected a 2-D array (samples x features, here n x 4), got a 1-D array of shape (4,)" in line
    assert "reshape" not in line


def test_predict_names_the_file_with_the_wrong_number_of_features(capsys, model, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 5)))
    code, _, err = run(capsys, "predict", str(model), str(tmp_path / "x.npy"))
    assert code == 1
    assert f"{tmp_path / 'x.npy'}: the model takes 4 features per sample, got an array of shape (2, 5)" in err


# 8. options of the other model


@pytest.mark.parametrize("model_name, option", [
    ("ff", ["--depth", "3"]), ("ff", ["--training", "soft"]), ("ff", ["--hardening", "1"]),
    ("ff", ["--region-leak", "0.1"]), ("ff", ["--leaf-width", "4"]), ("fff", ["--hidden-width", "64"]),
])
def test_options_of_the_other_model_are_refused(capsys, data, model_name, option):
    other = "fff" if model_name == "ff" else "ff"
    code, _, err = run(capsys, "train", "--data", f"npz:{data()}", "--model", model_name, *option, "--quiet")
    line = error_line(err)
    assert code == 1
    assert line.startswith(f"fffcpu train: error: --model {model_name} does not take {option[0]} (options of "
                           f"--model {other}), got {option[0]} ")
    assert line.endswith(f"remove it, or use --model {other}")


def test_ff_trains_without_the_fff_options(capsys, data):
    code, out, err = run(capsys, "train", "--data", f"npz:{data()}", "--model", "ff", "--epochs", "1", "--quiet")
    assert code == 0, err
    assert "test accuracy" in out and "leaves used" not in out


@pytest.mark.parametrize("given, expected", [((), 16.0), (("--local-batch-size", "40"), 40.0)])
def test_localized_training_gathers_a_batch_by_default(capsys, monkeypatch, data, given, expected):
    # README: local_batch_size defaults to the batch size in fffcpu train, as in the estimators
    import fffcpu

    seen = {}
    real = fffcpu.train

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(fffcpu, "train", spy)
    code, _, err = run(capsys, "train", "--data", f"npz:{data()}", "--optimizer", "local_adam", "--batch-size", "16",
                       "--epochs", "1", "--quiet", *given)
    assert code == 0, err
    assert seen["optimizer"] == "local_adam" and seen["local_batch_size"] == expected


def test_predict_gives_no_label_to_a_sample_with_nan_outputs(capsys, model, tmp_path):
    # argmax of a NaN row is 0, a label like any other: refuse, name the rows, keep the old output file
    x = np.random.default_rng(1).normal(size=(8, 4))
    x[2] = np.nan
    x[5, 1] = np.inf
    np.save(tmp_path / "x.npy", x)
    old = tmp_path / "labels.npy"
    old.write_bytes(b"the user's previous labels")
    code, out, err = run(capsys, "predict", str(model), str(tmp_path / "x.npy"), "--output", str(old))
    assert code == 1 and out == ""
    assert error_line(err) == (f"fffcpu predict: error: {tmp_path / 'x.npy'}: 2 of 8 samples (rows 2, 5) have NaN or "
                               "Inf outputs, so no label (NaN/Inf inputs, or values too large); nothing was written. "
                               "--what outputs shows the outputs")
    assert old.read_bytes() == b"the user's previous labels"
    code, out, _ = run(capsys, "predict", str(model), str(tmp_path / "x.npy"), "--what", "outputs")
    assert code == 0 and out.splitlines()[2] == "nan nan"
    code, out, _ = run(capsys, "predict", str(model), str(tmp_path / "x.npy"), "--what", "leaves")
    assert code == 0 and len(out.splitlines()) == 8


@pytest.mark.parametrize("depths, message", [
    (["2", "50"], re.escape("depth=50 would need 2**50 leaves; an FFF of that depth cannot be stored "
                            "(use depth <= 40)")),
    (["2", "-1"], "depth must be an integer >= 0, got -1"),
    (["2", "30"], r"depth 30 \(an FFF and a dense FF of width 17,179,869,184\) would need .* more than this machine"),
])
def test_bench_refuses_a_bad_depth_before_its_table(capsys, depths, message):
    code, out, err = run(capsys, "bench", "--depths", *depths)
    assert code == 1 and out == ""  # no header of a table that will not come
    assert re.search(message, error_line(err))


def test_version_and_the_defaults_in_train_help(capsys):
    import fffcpu

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"fffcpu {fffcpu.__version__}"
    code, out, _ = run(capsys, "train", "--help")
    text = " ".join(out.split())
    for flag, default in [("--epochs", "40"), ("--lr", "0.01"), ("--batch-size", "64"), ("--seed", "0"),
                          ("--activation", "relu")]:
        assert re.search(re.escape(flag) + r" \S+ [^-]*\(default " + re.escape(default) + r"\)", text), flag
    assert cli.build_parser().parse_args(["train"]).lr == 0.01  # the help says what the parser does
