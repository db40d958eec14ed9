"""Save/load: exact round trips, atomic writes, clear errors on files that are not fffcpu models."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import fffcpu
from fffcpu import FF, FFF


@pytest.mark.parametrize(
    "model",
    [
        FFF(5, 3, 2, 3, activation="gelu", region_leak=0.25, dtype="float64", seed=1),
        FFF(5, 3, 2, 0, seed=2),
        FFF(4, 2, 3, 2, train_hardened=True, straight_through=True, seed=3),
        FF(5, 7, 2, activation="tanh", seed=4),
    ],
    ids=["fff", "fff-depth0", "fff-hardened", "ff"],
)
def test_round_trip_is_exact(tmp_path, model):
    path = fffcpu.save(model, tmp_path / "model")
    assert path.endswith(".npz") and os.path.exists(path)
    loaded = fffcpu.load(path)
    assert type(loaded) is type(model) and loaded.config() == model.config()
    for name, value in model.params.items():
        assert loaded.params[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded.params[name], value)
    x = np.random.default_rng(0).normal(size=(6, model.input_width))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = FFF(3, 2, 2, 1, seed=0)
    fffcpu.save(old, path)
    before = path.read_bytes()

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        fffcpu.save(FFF(3, 2, 2, 2, seed=1), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temporary file left behind


def test_save_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fffcpu.save(FFF(3, 2, 2, 1), tmp_path / "missing" / "m.npz")
    with pytest.raises(TypeError, match="save expects an fffcpu model"):
        fffcpu.save({"w": np.zeros(3)}, tmp_path / "m.npz")
    # a folder is not a file name: neither <folder>.npz beside it nor a nameless .npz inside it
    (tmp_path / "models").mkdir()
    for folder in (tmp_path / "models", str(tmp_path / "models") + os.sep, str(tmp_path / "new") + os.sep):
        with pytest.raises(IsADirectoryError, match="give a file name, such as"):
            fffcpu.save(FFF(3, 2, 2, 1), folder)
    assert sorted(os.listdir(tmp_path)) == ["models"] and os.listdir(tmp_path / "models") == []


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        fffcpu.load(tmp_path / "nope.npz")


def test_load_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    fffcpu.save(FFF(8, 4, 3, 3), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable fffcpu model file"):
        fffcpu.load(path)


def test_load_foreign_files(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable fffcpu model file"):
        fffcpu.load(text)
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(3))
    with pytest.raises(ValueError, match="not an fffcpu model"):
        fffcpu.load(plain)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __fffcpu__=np.array([{"class": "FFF"}], dtype=object))
    with pytest.raises(ValueError, match="not a readable fffcpu model file"):
        fffcpu.load(pickled)  # object arrays are never unpickled
    single = tmp_path / "inputs.npy"
    np.save(single, np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"holds a single array \(float32 \(3, 4\)\), not an fffcpu model"):
        fffcpu.load(single)


def rewrite(path, **changes):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def test_load_rejects_wrong_shapes_versions_and_classes(tmp_path):
    path = tmp_path / "m.npz"
    fffcpu.save(FFF(4, 2, 3, 2), path)
    rewrite(path, w1s=np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match=r"parameter 'w1s' must have shape \(4, 4, 2\), got \(4, 4, 5\)"):
        fffcpu.load(path)
    fffcpu.save(FFF(4, 2, 3, 2), path)
    rewrite(path, __fffcpu__=np.array('{"format": "fffcpu", "format_version": 99, "class": "FFF", "config": {}}'))
    with pytest.raises(ValueError, match="format version 99"):
        fffcpu.load(path)
    rewrite(path, __fffcpu__=np.array('{"format": "fffcpu", "format_version": 1, "class": "Evil", "config": {}}'))
    with pytest.raises(ValueError, match="unknown class 'Evil'"):
        fffcpu.load(path)
    rewrite(path, __fffcpu__=np.array('{"format": "fffcpu", "format_version": 1, "class": "FFF", "config": {"depth": -1}}'))
    with pytest.raises(ValueError, match="does not hold a valid FFF"):
        fffcpu.load(path)


def test_saved_file_is_a_plain_npz(tmp_path):
    path = fffcpu.save(FFF(3, 2, 2, 1), tmp_path / "m.npz")
    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"node_weights", "node_biases", "w1s", "b1s", "w2s", "b2s", "__fffcpu__"}


def test_saved_files_get_ordinary_permissions_and_keep_those_of_the_file_they_replace(tmp_path):
    model = FFF(4, 2, 3, 2, seed=0)
    mask = os.umask(0o022)
    try:
        path = fffcpu.save(model, tmp_path / "new.npz")
        assert os.stat(path).st_mode & 0o777 == 0o644  # as open(path, "w") gives, not mkstemp's 0o600
        os.chmod(path, 0o640)
        fffcpu.save(model, path)
        assert os.stat(path).st_mode & 0o777 == 0o640
    finally:
        os.umask(mask)
    assert sorted(os.listdir(tmp_path)) == ["new.npz"]  # no temporary file left behind


def _as_a_user_without_overrides(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new Python whose file permissions apply: as it is for an ordinary user; for root, with
    the capabilities that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped by ``setpriv``."""
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--"] + command
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_folder_that_cannot_be_written_is_refused_up_front_and_reading_needs_permission(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    unreadable = fffcpu.save(FFF(4, 2, 3, 2, seed=0), tmp_path / "m.npz")
    folder.chmod(0o500)
    os.chmod(unreadable, 0)
    try:
        result = _as_a_user_without_overrides(
            "import fffcpu\n"
            f"try:\n    fffcpu.io.save_path({str(folder / 'm.npz')!r})\n"
            "except PermissionError as e:\n    print('save:', e)\n"
            f"try:\n    fffcpu.load({unreadable!r})\n"
            "except PermissionError as e:\n    print('load:', e)\n")
    finally:
        folder.chmod(0o700)
        os.chmod(unreadable, 0o600)
    assert result.returncode == 0, result.stderr
    assert "save: " in result.stdout and "is not writable" in result.stdout
    assert "load: " in result.stdout and "cannot load" in result.stdout


def test_a_failed_write_names_the_path_given_and_leaves_the_old_file(tmp_path):
    model = FFF(4, 2, 3, 2, seed=0)
    path = fffcpu.save(model, tmp_path / "m.npz")
    old = open(path, "rb").read()

    def fail(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"cannot write '.*m\.npz': No space left on device"):
        fffcpu.io.atomic_write(path, fail)
    assert open(path, "rb").read() == old and sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_paths_load_finds_and_the_path_checks(tmp_path):
    model = FFF(4, 2, 3, 2, seed=0)
    fffcpu.save(model, tmp_path / "model")  # writes model.npz
    assert fffcpu.load(tmp_path / "model").config() == model.config()
    assert fffcpu.load(os.fsencode(tmp_path / "model.npz")).config() == model.config()
    assert fffcpu.save(model, tmp_path / "upper.NPZ").endswith("upper.NPZ")
    assert fffcpu.save(model, os.fsencode(tmp_path / "b.npz")) == str(tmp_path / "b.npz")
    with pytest.raises(ValueError, match="cannot save to an empty path"):
        fffcpu.save(model, "")
    with pytest.raises(TypeError, match="a path must be a str, bytes or os.PathLike, got int"):
        fffcpu.load(3)
    with pytest.raises(IsADirectoryError, match="it is a folder, not a model file"):
        fffcpu.load(tmp_path)


def test_load_refuses_other_files_with_the_documented_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not numpy at all")
    with pytest.raises(ValueError, match=r"an fffcpu model is an \.npz \(zip\) file, and this one starts with "
                                         r"b'not nump'"):
        fffcpu.load(text)
    path = fffcpu.save(FFF(4, 2, 3, 2, seed=0), tmp_path / "m.npz")
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(str(arrays["__fffcpu__"]))
    meta["class"] = ["FFF"]  # a list: not a class name
    arrays["__fffcpu__"] = np.array(json.dumps(meta))
    odd = tmp_path / "odd.npz"
    np.savez(odd, **arrays)
    with pytest.raises(ValueError, match=r"unknown class \['FFF'\]"):
        fffcpu.load(odd)
