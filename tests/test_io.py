"""Save/load: exact round trips, atomic writes, clear errors on files that are not fffcpu models."""

import os
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
