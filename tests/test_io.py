"""Save/load: exact round trips, atomic writes, clear errors on files that are not fffcpu models."""

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tracemalloc
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


# --- crafted and corrupt files are refused from the arrays' headers, before anything large is allocated ----------

def rewrite_meta(path, **changes):
    """Rewrite the metadata entry of the model file ``path``: keys set to a value, or removed when given None."""
    with np.load(path) as data:
        meta = json.loads(str(data["__fffcpu__"]))
    meta.update(changes)
    meta = {key: value for key, value in meta.items() if value is not None}
    rewrite(path, __fffcpu__=np.array(json.dumps(meta)))


def npz_entries(path) -> dict:
    """The entries of an .npz file: name (without .npy) -> the bytes of the .npy entry."""
    with zipfile.ZipFile(path) as archive:
        return {name.removesuffix(".npy"): archive.read(name) for name in archive.namelist()}


def write_npz(path, entries: dict) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name + ".npy", data)


def npy_header_only(shape, dtype) -> bytes:
    """An .npy header that announces an array of ``shape`` and ``dtype``, and no data after it."""
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    return f.getvalue()


def peak_allocation(function) -> int:
    """The most bytes traced as allocated at once while ``function()`` runs (NumPy arrays included)."""
    tracemalloc.start()
    try:
        function()
    except (ValueError, MemoryError):
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_config_that_does_not_match_the_arrays_is_refused_before_the_model_is_built(tmp_path):
    path = fffcpu.save(FFF(8, 4, 3, 2, seed=0), tmp_path / "m.npz")
    rewrite_meta(path, config=dict(FFF(8, 4, 3, 2).config(), depth=20))  # a 0.4 GB model for 3 KB of arrays
    with pytest.raises(ValueError, match=r"'.*m\.npz' does not hold a valid FFF: parameter 'node_weights' must "
                                         r"have shape \(1048575, 8\), got \(3, 8\)"):
        fffcpu.load(path)
    assert peak_allocation(lambda: fffcpu.load(path)) < 20 * 2**20


def test_an_unexpected_array_is_refused_before_any_array_is_read(tmp_path):
    path = fffcpu.save(FFF(4, 2, 3, 2, seed=0), tmp_path / "m.npz")
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    np.savez_compressed(path, **arrays, extra=np.zeros(2**24))  # 128 MiB of zeros, a few hundred KiB on disk
    with pytest.raises(ValueError, match=r"'.*m\.npz' does not hold a valid FFF: expected the arrays "
                                         r"\['node_weights', .*\]; missing \[\], unexpected \['extra'\]"):
        fffcpu.load(path)
    assert peak_allocation(lambda: fffcpu.load(path)) < 20 * 2**20


@pytest.mark.parametrize(
    "entry, header, message",
    [
        ("w1s", ((2**40, 4, 2), "<f4"), r"parameter 'w1s' must have shape \(4, 4, 2\), got \(1099511627776, 4, 2\)"),
        ("w1s", ((4, 4, 2), "<c16"), r"parameter 'w1s' must hold real numbers \(a float or integer dtype\), "
                                     r"got dtype complex128"),
        ("__fffcpu__", ((), "<U100000000"), r"its '__fffcpu__' entry should be one JSON text \(a str array of "
                                            r"shape \(\) up to 1\.0 MiB\), got <U100000000 \(\) \(381\.5 MiB\)"),
    ],
    ids=["huge-shape", "complex-dtype", "huge-metadata"],
)
def test_shapes_and_dtypes_are_checked_from_the_headers(tmp_path, entry, header, message):
    path = fffcpu.save(FFF(4, 2, 3, 2, seed=0), tmp_path / "m.npz")
    entries = npz_entries(path)
    entries[entry] = npy_header_only(*header)  # the header alone: reading the data would fail or fill the memory
    write_npz(path, entries)
    with pytest.raises(ValueError, match=r"'.*m\.npz' .*" + message):
        fffcpu.load(path)


@pytest.mark.parametrize("depth", [30, 40])
def test_a_model_too_large_for_the_memory_is_refused_naming_the_file(tmp_path, depth):
    path = fffcpu.save(FFF(8, 4, 3, 2, seed=0), tmp_path / "m.npz")
    rewrite_meta(path, config=dict(FFF(8, 4, 3, 2).config(), depth=depth))
    with pytest.raises(MemoryError, match=r"cannot load '.*m\.npz': FFF parameters and gradients .* would need"):
        fffcpu.load(path)


@pytest.mark.parametrize("version", [True, 0, -5, 1.0, "1", None])
def test_the_format_version_must_be_a_supported_integer(tmp_path, version):
    path = fffcpu.save(FFF(4, 2, 3, 2, seed=0), tmp_path / "m.npz")
    rewrite_meta(path, format_version=version)
    expected = f"format version {version!r} ({type(version).__name__}); expected an integer from 1 to 1"
    with pytest.raises(ValueError, match=r"'.*m\.npz' has " + re.escape(expected)):
        fffcpu.load(path)


def test_metadata_without_a_config_says_what_it_holds(tmp_path):
    path = fffcpu.save(FFF(4, 2, 3, 2, seed=0), tmp_path / "m.npz")
    rewrite_meta(path, config=None)
    with pytest.raises(ValueError, match=r"'.*m\.npz' does not hold a valid FFF: its metadata should have a "
                                         r"'config' entry \(a JSON object of constructor arguments\), got only the "
                                         r"keys \['class', 'format', 'format_version'\]"):
        fffcpu.load(path)
    rewrite_meta(path, config=[4, 2, 3, 2])
    with pytest.raises(ValueError, match=r"its 'config' should be a JSON object of constructor arguments, got list"):
        fffcpu.load(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_load_refuses_files_that_are_not_regular_instead_of_waiting_on_them(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    code = f"import fffcpu\ntry:\n    fffcpu.load({str(fifo)!r})\nexcept ValueError as e:\n    print(e)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"cannot load {str(fifo)!r}: expected a regular file, but it is a FIFO (named pipe)" in result.stdout
    if os.path.exists("/dev/null"):
        with pytest.raises(ValueError, match="expected a regular file, but it is a character device"):
            fffcpu.load("/dev/null")


# --- save: links, read-only files and paths --------------------------------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_save_through_a_symbolic_link_updates_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "store").mkdir()
    target = fffcpu.save(FFF(4, 2, 3, 2, seed=0), tmp_path / "store" / "real.npz")
    link = tmp_path / "link.npz"
    link.symlink_to(os.path.join("store", "real.npz"))  # relative, as `ln -s` makes them
    new = FFF(4, 2, 3, 3, seed=1)
    assert fffcpu.save(new, link) == str(link)
    assert os.readlink(link) == os.path.join("store", "real.npz")
    assert fffcpu.load(target).config() == new.config()
    assert sorted(os.listdir(tmp_path)) == ["link.npz", "store"] and os.listdir(tmp_path / "store") == ["real.npz"]
    dangling = tmp_path / "dangling.npz"
    dangling.symlink_to(tmp_path / "store" / "later.npz")
    fffcpu.save(new, dangling)
    assert dangling.is_symlink() and fffcpu.load(tmp_path / "store" / "later.npz").config() == new.config()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_save_refuses_to_replace_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"cannot save to '.*pipe\.npz': expected a regular file, but it is a FIFO"):
        fffcpu.save(FFF(4, 2, 3, 2, seed=0), fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(os.listdir(tmp_path)) == ["pipe.npz"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_save_refuses_to_overwrite_a_read_only_file_and_leaves_it_intact(tmp_path):
    path = fffcpu.save(FFF(4, 2, 3, 2, seed=0), tmp_path / "m.npz")
    link = tmp_path / "link.npz"
    link.symlink_to(path)
    os.chmod(path, 0o444)
    before = open(path, "rb").read()
    result = _as_a_user_without_overrides(
        "import fffcpu\n"
        f"for path in ({path!r}, {str(link)!r}):\n"
        "    for write in (fffcpu.io.save_path, lambda p: fffcpu.save(fffcpu.FFF(4, 2, 3, 3), p)):\n"
        "        try:\n            write(path)\n"
        "        except PermissionError as e:\n            print(e)\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    for line in lines[:2]:
        assert line.endswith(f"cannot save to {path!r}: the file exists and is read-only for you (mode 0o444); "
                             "expected a file you can write: make it writable or choose another name")
    for line in lines[2:]:
        assert f"cannot save to {str(link)!r} (a link to {path!r}): the file exists and is read-only" in line
    assert open(path, "rb").read() == before and os.stat(path).st_mode & 0o777 == 0o444
    assert sorted(os.listdir(tmp_path)) == ["link.npz", "m.npz"]


def test_a_path_with_a_nul_character_is_refused_saying_where(tmp_path):
    bad = str(tmp_path / "m\0.npz")
    for call, action in ((lambda: fffcpu.save(FFF(4, 2, 3, 2), bad), "save to"), (lambda: fffcpu.load(bad), "load")):
        with pytest.raises(ValueError, match=rf"cannot {action} '.*m\\x00\.npz': expected a path without NUL "
                                             rf"characters \('\\x00'\), got one with a NUL at position {len(bad) - 5}"):
            call()
    assert os.listdir(tmp_path) == []


def test_tilde_is_not_expanded_and_the_errors_say_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hint = (r"'~' is not expanded, as numpy does not expand it: for the home folder, pass "
            r"os\.path\.expanduser\('~/m\.npz'\)")
    with pytest.raises(FileNotFoundError, match=r"cannot save to '~/m\.npz': folder '.*~' does not exist \(" + hint):
        fffcpu.save(FFF(4, 2, 3, 2), "~/m.npz")
    with pytest.raises(FileNotFoundError, match=r"no such model file: '~/m\.npz' \(" + hint):
        fffcpu.load("~/m.npz")
    (tmp_path / "~").mkdir()  # a folder really named "~" is used as any other
    fffcpu.save(FFF(4, 2, 3, 2, seed=0), "~/m.npz")
    assert os.listdir(tmp_path / "~") == ["m.npz"] and fffcpu.load("~/m").depth == 2


def test_a_loaded_model_starts_usage_and_region_leak_as_a_new_one(tmp_path):
    # the file holds the model, not the training run (documented in fffcpu.io)
    trained = fffcpu.FFF(4, 2, 3, 2, region_leak=0.1, seed=3)
    trained.forward(np.ones((5, 4)))
    assert trained.usage["leaf_soft"].sum() > 0
    loaded = fffcpu.load(fffcpu.save(trained, tmp_path / "m.npz"))
    fresh = fffcpu.FFF(4, 2, 3, 2, region_leak=0.1, seed=3)
    for key, counts in loaded.usage.items():
        assert (counts == 0).all(), key
    np.testing.assert_array_equal(loaded.leak_rng.random(8), fresh.leak_rng.random(8))


class _Payload:
    """Unpickling this creates a folder: the trace of code run from a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "code-ran"
    for entry in ("__fffcpu__", "w1s"):  # in the metadata, or in a parameter array
        path = tmp_path / f"{entry}.npz"
        good = fffcpu.save(FFF(4, 2, 3, 2, seed=0), tmp_path / "good.npz")
        with np.load(good) as data:
            arrays = {k: data[k] for k in data.files}
        arrays[entry] = np.array([_Payload(marker)], dtype=object)
        np.savez(path, **arrays)
        with pytest.raises(ValueError):
            fffcpu.load(path)
        assert not marker.exists(), f"loading a file with a pickled {entry} ran its code"


def test_save_writes_a_temporary_file_beside_the_target_syncs_it_and_renames_it(tmp_path, monkeypatch):
    # the rename is what makes the write atomic: it must happen within one folder, after the data are on disk
    events = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", fd)), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace",
                        lambda src, dst: (events.append(("replace", src, dst)), real_replace(src, dst))[1])
    target = tmp_path / "m.npz"
    fffcpu.save(FFF(4, 2, 3, 2, seed=0), target)
    assert [e[0] for e in events] == ["fsync", "replace"]
    _, src, dst = events[1]
    assert os.path.dirname(src) == str(tmp_path) and dst == str(target) and not os.path.exists(src)
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]
