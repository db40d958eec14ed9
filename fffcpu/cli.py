"""Command line: ``python -m fffcpu <command>`` (also installed as the ``fffcpu`` script)."""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time
import zipfile

import numpy as np

__all__ = ["main", "demo", "load_data", "quick_bench"]


#: Seconds to wait before timing, so that the threads of a BLAS call made just before (training, a dense layer, a soft
#: prediction) have stopped spinning: OpenBLAS keeps them busy for about 0.1 s after a call, and a parallel fffcpu call
#: made in that window shares the two cores with them (README, "Hard inference"; scripts/blas_spin.py).
PAUSE = 0.2


def _median_seconds(f, repeats: int = 7, pause: float = PAUSE) -> float:
    time.sleep(pause)
    f()  # warm-up (compiles or loads kernels, fills caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _load_kernels(dtype, out) -> None:
    """``warmup(dtype)``, announced and timed on ``out`` (None: silently).

    Called before training, so that the first epoch's progress bar does not count the compilation: about half a
    minute on the first run; later runs load the kernels from Numba's on-disk cache in a fraction of a second.
    """
    from . import warmup

    if out is None:
        warmup(dtype)
        return
    print("loading the hard-inference kernels (Numba compiles them on the first run only) ...", end=" ", file=out,
          flush=True)
    start = time.perf_counter()
    warmup(dtype)
    print(f"{time.perf_counter() - start:.1f} s", file=out)


def demo(*, epochs: int = 40, seed: int = 0, progress: bool = True, out=sys.stdout) -> dict:
    """Train a dense FF of width 128 and three FFFs of training width 128 on digits and compare them.

    The FFFs have depth 4 and leaf width 8 (16 leaves of 8 neurons). The first is trained soft with the
    hardening term (h = 1), the paper's recipe; the second is trained hard with straight-through gradients
    through the node decisions; the third is trained soft with the hardening weight ramped up to 1 and its
    node parameters sharpened 4096x over the epochs (``train(..., sharpening=...)``). Each is evaluated soft
    (all leaves mixed) and hard (one leaf per input, as deployed), with the number of leaves the test images
    actually reach.

    Returns
    -------
    dict
        The figures printed, per model: accuracies, leaves used, neurons per input and throughput.
    """
    from . import FF, FFF, train
    from .datasets import load_digits, train_test_split
    from .train import linear_ramp, sharpening_ramp

    X, y = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, seed=seed)
    print(f"digits: {len(X_train)} training and {len(X_test)} test images of 8x8 pixels, 10 classes", file=out)
    _load_kernels("float32", out)
    print(file=out)

    models = {  # name: (model, hardening, sharpening)
        "FF width 128": (FF(64, 128, 10, seed=seed), 0.0, None),
        "FFF soft + hardening": (FFF(64, 8, 10, 4, seed=seed), 1.0, None),
        "FFF hard, straight-through": (FFF(64, 8, 10, 4, train_hardened=True, straight_through=True, seed=seed),
                                       0.0, None),
        "FFF soft, sharpened": (FFF(64, 8, 10, 4, seed=seed), linear_ramp(1.0, epochs),
                                sharpening_ramp(4096.0, epochs)),
    }
    batch = np.ascontiguousarray(np.resize(X_test, (4096, 64)), dtype=np.float32)
    figures = {}
    for name, (model, hardening, sharpening) in models.items():
        how = (", hardening weight ramped to 1, nodes sharpened 4096x" if sharpening else
               f", hardening weight {hardening}" if hardening else "")
        print(f"training {name} ({model.training_width} neurons{how}) ...", file=out)
        train(model, X_train, y_train, lr=1e-2, epochs=epochs, batch_size=64, hardening=hardening, seed=seed,
              sharpening=sharpening, progress=progress)
        is_tree = isinstance(model, FFF)
        figures[name] = {
            "accuracy_soft": float(np.mean(model.predict_soft(X_test).argmax(axis=1) == y_test)),
            "accuracy_hard": float(np.mean(model.predict(X_test).argmax(axis=1) == y_test)),
            "leaves_used": len(np.unique(model.route(X_test))) if is_tree else None,
            "leaves": model.n_leaves if is_tree else None,
            "neurons_per_input": model.inference_size,
            "neurons": model.training_width + (model.n_nodes if is_tree else 0),
            "samples_per_s": len(batch) / _median_seconds(lambda: model.predict(batch)),
        }

    rows = [("model", "test acc soft", "test acc hard", "leaves used", "neurons per input", "samples/s")]
    for name, f in figures.items():
        leaves = f"{f['leaves_used']} of {f['leaves']}" if f["leaves"] else "-"
        rows.append((name, f"{f['accuracy_soft']:.1%}", f"{f['accuracy_hard']:.1%}", leaves,
                     f"{f['neurons_per_input']} of {f['neurons']}", f"{f['samples_per_s']:,.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(file=out)
    for k, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))),
              file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)
    ff, st = figures["FF width 128"], figures["FFF hard, straight-through"]
    limit = ff["neurons_per_input"] / st["neurons_per_input"]
    print(
        f"\nAn FFF touches {st['neurons_per_input']} neurons per input (4 routing nodes + one leaf of 8) where the "
        f"FF touches {ff['neurons_per_input']}.\n'soft' mixes all 16 leaves (training); 'hard' evaluates one "
        "(deployment). Soft training\ncan leave routing undecided or send most inputs to a few leaves, so hard "
        "accuracy lags;\ntraining hard with straight-through gradients trains the model that is deployed, and "
        "sharpening\nthe nodes while training soft turns the soft model into it (soft = hard).\n"
        f"Throughput: hard inference, float32, batch 4096, timed after a {PAUSE} s pause (no BLAS threads still\n"
        f"spinning). The FFF's limit over the FF is training width / neurons per input = "
        f"{ff['neurons_per_input']} / {st['neurons_per_input']}\n= {limit:.0f}x here; larger layers gain far more "
        "(docs/benchmarks.md).",
        file=out,
    )
    return figures


def load_data(spec: str, *, test_size: float = 0.25, seed: int = 0):
    """Training and test sets from a data spec: ``digits``, ``mnist5k``, ``idx:DIR`` or ``npz:FILE``.

    ``idx:DIR`` reads MNIST/Fashion-MNIST files (``train-*`` as training set, ``t10k-*`` as test set when present).
    ``npz:FILE`` reads arrays ``X`` and ``y`` (and ``X_test``, ``y_test`` when present).
    Without a separate test set, a ``test_size`` split is taken with ``seed`` (``datasets.train_test_split``:
    stratified by class for integer labels).

    Returns
    -------
    X_train, X_test, y_train, y_test
    """
    from . import datasets

    X, y, X_test, y_test = _read_data(spec)
    if X_test is None:
        return datasets.train_test_split(X, y, test_size=test_size, seed=seed)
    return X, X_test, y, y_test


def _read_data(spec: str):
    """``X, y, X_test, y_test`` of a data spec (``load_data``); ``X_test`` and ``y_test`` are None when the data
    have no separate test set."""
    from . import datasets

    kind, _, arg = spec.partition(":")
    X_test = y_test = None
    if kind == "digits" and not arg:
        X, y = datasets.load_digits()
    elif kind == "mnist5k" and not arg:
        X, y = datasets.load_mnist_5k()
    elif kind == "idx" and arg:
        X, y = datasets.load_mnist(arg, "train")
        present = [os.path.basename(p) for p in glob.glob(os.path.join(arg, "t10k-*"))]
        if present:  # a test set, which must then be whole: half of one would silently become a random split
            X_test, y_test = datasets.load_mnist(arg, "t10k")
    elif kind == "npz" and arg:
        if not os.path.exists(arg):
            raise FileNotFoundError(f"no such file: {arg!r}")
        needed = "--data npz:FILE needs an .npz file with arrays 'X' and 'y' (np.savez(FILE, X=X, y=y))"
        with _open_npz(arg, needed) as data:
            if "X" not in data.files or "y" not in data.files:
                raise ValueError(f"{arg!r} must hold arrays named 'X' and 'y', found {sorted(data.files)}")
            X, y = data["X"], data["y"]
            if "X_test" in data.files and "y_test" in data.files:
                X_test, y_test = data["X_test"], data["y_test"]
    else:
        raise ValueError(f"--data must be digits, mnist5k, idx:DIR or npz:FILE, got {spec!r}")
    return X, y, X_test, y_test


def _open_npz(path: str, needed: str):
    """``np.load`` of an .npz file (arrays only, never pickles), or a ``ValueError`` that says what ``path`` holds
    instead and what was ``needed``."""
    from .io import file_start

    if not file_start(path)[1]:
        raise ValueError(f"{path!r} is neither an .npz nor an .npy file; {needed}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path!r} is not a readable .npz file ({err}); {needed}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} holds a single array ({data.dtype} {data.shape}); {needed}")
    return data


#: What ``fffcpu predict`` reads, said when a file is something else.
_INPUTS_NEEDED = "inputs must be a .npy file or an .npz file with an array 'X'"


def _read_inputs(path: str) -> np.ndarray:
    """The inputs array of ``fffcpu predict``: a numeric array from a .npy file, or from an .npz file (its array
    'X', or its only array). Never unpickles; anything else raises a ``ValueError`` naming ``path``."""
    from .io import file_start

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such input file: {path!r}")
    if not path.endswith((".npy", ".npz")):
        raise ValueError(f"inputs must be a .npy or .npz file, got {path!r}")
    start, _ = file_start(path)  # what the file holds decides, not its name
    if start.startswith(b"\x93NUMPY"):
        X = _load_npy(path)
    elif path.endswith(".npy") and not start.startswith(b"PK"):
        raise ValueError(f"{path!r} is not an .npy file; {_INPUTS_NEEDED}")
    else:
        with _open_npz(path, _INPUTS_NEEDED) as data:
            names = ["X"] if "X" in data.files else data.files if len(data.files) == 1 else None
            if names is None:
                raise ValueError(f"{path!r} holds {sorted(data.files)}: name the input array 'X'")
            where = f"{path!r} (array {names[0]!r})"
            try:
                member = names[0] if names[0] in data.zip.namelist() else names[0] + ".npy"
                with data.zip.open(member) as f:
                    _refuse_objects(f, where)
                X = data[names[0]]
            except (ValueError, EOFError, zipfile.BadZipFile) as err:
                if str(err).startswith(where):
                    raise
                raise ValueError(f"{where} is not a readable array ({err}); {_INPUTS_NEEDED}") from None
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{path!r}: expected a numeric array (samples x features), got dtype {X.dtype}")
    return X


def _load_npy(path: str) -> np.ndarray:
    """``np.load`` of a .npy file holding a numeric array, read without unpickling; an array of Python objects or
    a damaged file raises a ``ValueError`` naming ``path``."""
    try:
        with open(path, "rb") as f:
            _refuse_objects(f, repr(path))
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as err:
        if str(err).startswith(repr(path)):
            raise
        raise ValueError(f"{path!r} is not a readable .npy file ({err}); {_INPUTS_NEEDED}") from None


def _refuse_objects(f, where: str) -> None:
    """Read the .npy header at the start of file object ``f``; an array of Python objects (which only unpickling
    would read) raises a ``ValueError`` naming ``where``, before any data are read."""
    from .io import npy_header

    shape, dtype = npy_header(f)
    if dtype.hasobject:
        raise ValueError(f"{where} holds an array of Python objects (dtype {dtype}, shape {shape}), which fffcpu "
                         "does not read (it would need unpickling); expected a numeric array (samples x features)")


def quick_bench(*, depths=(4, 8, 12), leaf_width: int = 16, batch: int = 256, input_width: int = 784,
                output_width: int = 10, out=sys.stdout) -> list:
    """Hard-inference throughput of FFFs against the dense FF of the same training width (float32).

    A quick look; ``make bench`` runs the full, documented benchmark (docs/benchmarks.md).
    """
    from . import FF, FFF
    from ._validation import check_fits_in_memory, check_positive_int

    depths = [check_positive_int(depth, "depth", minimum=0) for depth in depths]
    deepest = max(depths, default=0)
    if deepest > 40:
        raise ValueError(f"depth={deepest} would need 2**{deepest} leaves; an FFF of that depth cannot be stored "
                         "(use depth <= 40)")
    # the deepest FFF and its dense FF, parameters and gradients in float32: refused before the table starts
    width = leaf_width << deepest
    values = (((1 << deepest) - 1) * (input_width + 1) + (1 << deepest) * output_width + output_width
              + 2 * width * (input_width + output_width + 1))
    check_fits_in_memory(2 * 4 * values, f"depth {deepest} (an FFF and a dense FF of width {width:,})")
    rng = np.random.default_rng(0)
    x = rng.random((batch, input_width), dtype=np.float32)
    rows = []
    print(f"{'depth':>5} {'training width':>14} {'FFF samples/s':>14} {'FF samples/s':>13} {'speedup':>8} "
          f"{'limit':>6}", file=out)
    for depth in depths:
        fff = FFF(input_width, leaf_width, output_width, depth, seed=0)
        ff = FF(input_width, fff.training_width, output_width, seed=0)
        fff_rate = batch / _median_seconds(lambda m=fff: m.predict(x), repeats=5)
        ff_rate = batch / _median_seconds(lambda m=ff: m.predict(x), repeats=3)
        limit = fff.training_width / fff.inference_size
        rows.append({"depth": depth, "training_width": fff.training_width, "fff_samples_per_s": fff_rate,
                     "ff_samples_per_s": ff_rate, "speedup": fff_rate / ff_rate, "limit": limit})
        print(f"{depth:>5} {fff.training_width:>14,} {fff_rate:>14,.0f} {ff_rate:>13,.0f} "
              f"{fff_rate / ff_rate:>7.1f}x {limit:>5.0f}x", file=out)
        del fff, ff
    return rows


#: The hardening weight of each ``fffcpu train --training`` when ``--hardening`` is not given. On digits (depth 4,
#: leaves of 8, 40 epochs), soft training with a weight of 3 or 10 sent all 1797 images to one leaf.
TRAINING_HARDENING = {"hard": 0.0, "soft": 1.0, "sharpened": 1.0}

#: ``fffcpu train`` options that apply to one ``--model`` only, with their defaults. Their parser defaults are None,
#: so that an option given for the other model is refused rather than silently ignored.
MODEL_OPTIONS = {
    "fff": {"depth": 4, "leaf_width": 8, "training": "hard", "hardening": None, "region_leak": 0.0},
    "ff": {"hidden_width": 128},
}

#: ``--test-size`` when it is not given.
TEST_SIZE = 0.25

LABELS_HELP = (
    "Labels y must be integers 0, 1, ..., K-1 (or floats with such values); the model gets one output per label "
    "up to the largest. Refused: negative or non-integer labels, fewer than 2 distinct labels in the training "
    "set, and labels so sparse that more than half of the outputs would have no sample (largest label + 1 > 2 x "
    "the number of distinct labels, as with a stray label 10**9, or labels 0 and 5 only: renumber them 0..K-1). "
    "A few absent classes are allowed (labels 1..10 give 11 outputs, output 0 unused).")


def _check_model_options(args) -> None:
    """Refuse the options of the other ``--model`` given on the command line; set the defaults of this one's."""
    other = "ff" if args.model == "fff" else "fff"
    given = [name for name in MODEL_OPTIONS[other] if getattr(args, name) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"--model {args.model} does not take {flags} (options of --model {other}), got "
                         + " ".join(f"--{name.replace('_', '-')} {getattr(args, name)}" for name in given)
                         + f": remove {'it' if len(given) == 1 else 'them'}, or use --model {other}")
    for name, default in MODEL_OPTIONS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _split(args, X, y, X_test, y_test):
    """``X_train, X_test, y_train, y_test`` of ``fffcpu train``: the data's own test set, or a ``--test-size``
    split (``datasets.train_test_split``), checked against the number of samples."""
    from . import datasets

    if X_test is not None:
        if args.test_size is not None:
            raise ValueError(f"--data {args.data} has its own test set ({len(X_test)} samples); --test-size applies "
                             f"only to data without one, got --test-size {args.test_size}")
        return X, X_test, y, y_test
    test_size = TEST_SIZE if args.test_size is None else args.test_size
    n = len(y)
    if isinstance(test_size, int) and test_size >= n:
        raise ValueError(f"--test-size {test_size}: expected fewer test samples than the {n} samples of --data "
                         f"{args.data} (at least one must remain for training), got {test_size}")
    if isinstance(test_size, float) and math.ceil(test_size * n) >= n:
        raise ValueError(f"--test-size {test_size} would put all {n} samples of --data {args.data} in the test set "
                         "and none in the training set: expected a smaller fraction")
    return datasets.train_test_split(X, y, test_size=test_size, seed=args.seed)


def _n_classes(spec: str, y_train, y_test) -> int:
    """The model's number of outputs for the class labels ``y_train`` and ``y_test`` of ``--data spec``: the
    largest label + 1, after the checks of ``LABELS_HELP``."""
    ys = [np.asarray(y_train), np.asarray(y_test)]
    for y in ys:
        if y.dtype.kind not in "biuf":
            raise ValueError(f"--data {spec}: y must hold integer class labels 0, 1, ..., got dtype {y.dtype}")
        if y.dtype.kind == "f":
            bad = ~np.isfinite(y) | (y != np.round(y))
            if bad.any():
                raise ValueError(f"--data {spec}: y must hold integer class labels 0, 1, ..., got non-integer "
                                 f"values (such as {y[bad].flat[0]})")
    labels = np.unique(np.concatenate([y.ravel() for y in ys]))
    if labels.size == 0:
        raise ValueError(f"--data {spec}: y holds no labels")
    distinct, smallest, largest = len(labels), int(labels[0]), int(labels[-1])
    found = f"{distinct} distinct label{'s' if distinct > 1 else ''} in all, the largest {largest}"
    if smallest < 0:
        raise ValueError(f"--data {spec}: y must hold class labels 0, 1, ..., K-1, got negative labels (the "
                         f"smallest {smallest}; {found})")
    in_training = len(np.unique(ys[0]))
    if in_training < 2:
        raise ValueError(f"--data {spec}: expected at least 2 distinct labels (classes) in the training set, got "
                         f"{in_training} ({found}): a classifier of one class learns nothing")
    if largest + 1 > 2 * distinct:
        raise ValueError(
            f"--data {spec}: y must hold class labels 0, 1, ..., K-1, got {found}: a model of {largest + 1:,} "
            f"outputs, {largest + 1 - distinct:,} of them for classes without a sample (refused when more than half "
            f"are): renumber the classes 0..{distinct - 1}, e.g. y = np.unique(y, return_inverse=True)[1]")
    return largest + 1


def _train_command(args) -> None:
    from . import FF, FFF, save, train
    from .io import save_path
    from .train import accuracy, linear_ramp, sharpening_ramp

    _check_model_options(args)
    if args.save is not None:
        save_path(args.save)  # a bad destination fails now, not after the training
    X_train, X_test, y_train, y_test = _split(args, *_read_data(args.data))
    X_train = np.asarray(X_train).reshape(len(X_train), -1)
    X_test = np.asarray(X_test).reshape(len(X_test), -1)
    n_classes = _n_classes(args.data, y_train, y_test)
    if args.model == "ff":
        model = FF(X_train.shape[1], args.hidden_width, n_classes, activation=args.activation, seed=args.seed)
    else:
        hard = args.training == "hard"
        model = FFF(X_train.shape[1], args.leaf_width, n_classes, args.depth, activation=args.activation,
                    region_leak=args.region_leak, train_hardened=hard, straight_through=hard, seed=args.seed)
    hardening = 0.0 if args.model == "ff" else (
        args.hardening if args.hardening is not None else TRAINING_HARDENING[args.training])
    sharpening = None
    if args.model == "fff" and args.training == "sharpened":
        hardening = linear_ramp(hardening, args.epochs) if hardening else 0.0
        sharpening = sharpening_ramp(4096.0, args.epochs)
    if not args.quiet:
        print(f"{model.summary()}\n{len(X_train)} training and {len(X_test)} test samples", file=sys.stderr)
    if args.model == "fff":
        _load_kernels(model.dtype, None if args.quiet else sys.stderr)
    history = train(model, X_train, y_train, optimizer=args.optimizer, lr=args.lr, epochs=args.epochs,
                    batch_size=args.batch_size, hardening=hardening, sharpening=sharpening,
                    validation=(X_test, y_test),
                    seed=args.seed, progress=not args.quiet,
                    local_batch_size=args.local_batch_size or (args.batch_size if "local" in args.optimizer else None))
    last = history.last()
    print(f"train accuracy: soft {last['train_acc_soft']:.4f}, hard {last['train_acc_hard']:.4f}")
    print(f"test accuracy:  soft {accuracy(model.predict_soft(X_test), y_test):.4f}, "
          f"hard {accuracy(model.predict(X_test), y_test):.4f}")
    if args.model == "fff":  # a tree whose inputs all go to a few leaves has collapsed: say so
        used = len(np.unique(model.route(np.concatenate([X_train, X_test]))))
        print(f"leaves used: {used} of {model.n_leaves}")
    if args.save is not None:
        print(f"saved to {save(model, args.save)}")


def _predict_command(args) -> None:
    from . import load

    output = None if args.output is None else _output_path(args.output)  # a bad destination fails before the work
    model = load(args.model)
    X = _read_inputs(args.inputs)
    if X.ndim == 0 or len(X) == 0:
        raise ValueError(f"{args.inputs}: no inputs to predict (an array of shape {X.shape})")
    width = getattr(model, "input_width", None)
    per_sample = f"samples x features, here n x {width}" if width else "samples x features"
    if X.ndim == 1:
        raise ValueError(f"{args.inputs}: expected a 2-D array ({per_sample}), got a 1-D array of shape {X.shape}; "
                         f"save a single sample as an array of shape (1, {X.shape[0]})")
    shape = X.shape
    X = X.reshape(len(X), -1) if X.ndim > 2 else X
    if width and X.shape[1] != width:
        raise ValueError(f"{args.inputs}: the model takes {width} features per sample, got an array of shape "
                         f"{shape} ({X.shape[1]} features per sample)")
    if args.what == "leaves":
        if not hasattr(model, "route"):
            raise ValueError(f"{type(model).__name__} has no routes")
        result = model.route(X)
    else:
        result = model.predict(X)
        if args.what == "labels":
            undefined = np.flatnonzero(~np.isfinite(result).all(axis=1))
            if undefined.size:  # argmax would give a label (0) that looks like any other
                rows = ", ".join(map(str, undefined[:5])) + (", ..." if undefined.size > 5 else "")
                raise ValueError(f"{args.inputs}: {undefined.size} of {len(X)} samples (rows {rows}) have NaN or "
                                 "Inf outputs, so no label (NaN/Inf inputs, or values too large); nothing was "
                                 "written. --what outputs shows the outputs")
            result = result.argmax(axis=1)
    if output is not None:
        written = _save_npy(output, result)
        print(f"wrote {args.what} of {len(X)} samples, shape {result.shape}, to {written}")
    else:
        np.savetxt(sys.stdout, result.reshape(len(result), -1), fmt="%d" if result.dtype.kind == "i" else "%.6g")


def _output_path(path: str) -> str:
    """The file ``fffcpu predict --output path`` writes (``.npy`` appended if missing, as ``np.save`` does), after
    the checks ``io.save_path`` makes for a model's path: not empty, not a folder (an existing one, or a path
    ending in a separator), in a folder that exists."""
    if not path:
        raise ValueError("--output: expected a file name, such as 'labels.npy', got an empty one")
    if "\0" in path:
        raise ValueError(f"--output {path!r}: expected a file name without NUL characters")
    full = path if path.endswith(".npy") else path + ".npy"
    if os.path.isdir(path) or os.path.isdir(full) or path.endswith(tuple(s for s in (os.sep, os.altsep) if s)):
        raise IsADirectoryError(f"--output {path!r} names a folder; expected a file name, such as "
                                f"{os.path.join(path, 'labels.npy')!r}")
    folder = os.path.dirname(os.path.realpath(full))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--output {path!r}: folder {folder!r} does not exist")
    return full


def _save_npy(path: str, array: np.ndarray) -> str:
    """``np.save(path, array)`` (``.npy`` appended if missing, as ``np.save`` does) through ``io.atomic_write``:
    a failed write leaves an existing file as it was. Returns the path written."""
    from .io import atomic_write

    if not path.endswith(".npy"):
        path += ".npy"
    atomic_write(path, lambda f: np.save(f, array))
    return path


def _test_size(text: str) -> float | int:
    """``--test-size``: a whole number is a count of test samples (``500``, at least 1); a number with a decimal
    point or an exponent is a fraction of the samples (``0.25``), in (0, 1): ``1.0`` is refused, not read as one
    sample. As ``datasets.train_test_split`` takes them."""
    try:
        count = int(text)
    except ValueError:
        pass
    else:
        if count < 1:
            raise argparse.ArgumentTypeError(f"expected a number of test samples >= 1 or a fraction in (0, 1), "
                                             f"got {text!r}")
        return count
    try:
        fraction = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) such as 0.25, or a number of test samples "
                                         f"such as 500, got {text!r}") from None
    if not 0 < fraction < 1:
        whole = f" (for a count of {int(fraction)} sample{'s' if fraction > 1 else ''}, write {int(fraction)})" if (
            fraction >= 1 and fraction.is_integer()) else ""
        raise argparse.ArgumentTypeError(f"a number with a decimal point is a fraction of the samples and must be in "
                                         f"(0, 1), got {text!r}{whole}")
    return fraction


def _positive_int(text: str) -> int:
    """An integer >= 1 (``--epochs``, ``--batch-size``, widths)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """A finite number > 0 (``--lr``, ``--local-batch-size``)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fffcpu", description="Fast feedforward networks on the CPU.",
        epilog="Examples:\n  fffcpu demo\n  fffcpu train --data digits --depth 4 --leaf-width 8 --save m.npz\n"
               "  fffcpu predict m.npz inputs.npy --output labels.npy\n  fffcpu bench\n  fffcpu info",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command")

    p = commands.add_parser("demo", help="train an FF and an FFF on digits and compare accuracy and speed")
    p.add_argument("--epochs", type=_positive_int, default=40, help="training epochs for each model (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = commands.add_parser("train", help="train an FFF (or a dense FF) and optionally save it",
                            description="Train an FFF (or a dense FF) classifier and optionally save it. "
                                        + LABELS_HELP)
    p.add_argument("--data", default="digits",
                   help="digits | mnist5k | idx:DIR | npz:FILE (arrays X and y, optionally X_test and y_test; "
                        "labels as above) (default digits)")
    p.add_argument("--model", choices=["fff", "ff"], default="fff",
                   help="fff (default) or the dense ff baseline; the options of the other model are refused")
    p.add_argument("--depth", type=int, default=None, help="fff: tree depth (default 4)")
    p.add_argument("--leaf-width", type=_positive_int, default=None, help="fff: neurons per leaf (default 8)")
    p.add_argument("--hidden-width", type=_positive_int, default=None,
                   help="ff: width of the dense hidden layer (default 128)")
    p.add_argument("--activation", default="relu", help="relu | gelu | tanh | sigmoid | identity (default relu)")
    p.add_argument("--epochs", type=_positive_int, default=40, help="training epochs (default 40)")
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="learning rate (default 0.01)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="minibatch size (default 64)")
    p.add_argument("--optimizer", default="adam", help="adam | sgd | local_adam | local_sgd (default adam)")
    p.add_argument("--local-batch-size", type=_positive_float, default=None,
                   help="usage a node/leaf must gather before a localized update (default: the batch size)")
    p.add_argument("--training", choices=sorted(TRAINING_HARDENING), default=None,
                   help="fff: hard (default: hard routing as in prediction, straight-through gradients), soft (the "
                        "paper's soft mixture) or sharpened (soft, the hardening weight ramped up and the nodes "
                        "sharpened 4096x, so that the soft model ends as the hard one)")
    p.add_argument("--hardening", type=float, default=None,
                   help="fff: weight of the node-entropy term (default: 0 for hard, 1 for soft; sharpened ramps it "
                        "to this value, default 1)")
    p.add_argument("--region-leak", type=float, default=None, help="fff: region leak probability (default 0)")
    p.add_argument("--test-size", type=_test_size, default=None,
                   help=f"when the data have no test set: a fraction in (0, 1) of the samples, written with a "
                        f"decimal point (0.25), or a whole number of test samples (500) (default {TEST_SIZE})")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the initial weights, the test split and the minibatch order (default 0)")
    p.add_argument("--save", metavar="FILE", help="save the trained model (.npz; checked before the training)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = commands.add_parser("predict", help="apply a saved model to inputs in a .npy/.npz file")
    p.add_argument("model", help="a model saved by 'fffcpu train --save' or fffcpu.save")
    p.add_argument("inputs", help=".npy file, or .npz with an array 'X'")
    p.add_argument("--what", choices=["labels", "outputs", "leaves"], default="labels",
                   help="argmax labels (default), raw outputs, or the leaf each input is routed to")
    p.add_argument("--output", metavar="FILE",
                   help="write a .npy file instead of printing (.npy appended if missing; not a folder)")

    commands.add_parser("info", help="versions, CPU, BLAS and its kernel, Numba's threads and kernel cache (for a "
                                     "bug report, or beside a timing)")

    p = commands.add_parser(
        "bench", help="quick hard-inference speed table against the dense FF",
        description="Samples per second of FFF hard inference and of the dense FF of the same training width "
                    "(float32, input 784, output 10), medians of a few calls: a quick look; 'make bench' runs the "
                    "documented benchmark. With another busy process on the same cores, the figures can drop many "
                    "times over (spinning OpenMP workers); start Python with OMP_WAIT_POLICY=passive to avoid it.")
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12], help="tree depths (default 4 8 12)")
    p.add_argument("--leaf-width", type=_positive_int, default=16, help="neurons per leaf (default 16)")
    p.add_argument("--batch", type=_positive_int, default=256, help="samples per call (default 256)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            demo(epochs=args.epochs, seed=args.seed, progress=not args.quiet)
        elif args.command == "train":
            _train_command(args)
        elif args.command == "predict":
            _predict_command(args)
        elif args.command == "info":
            from .info import show_versions

            show_versions()
        elif args.command == "bench":
            quick_bench(depths=args.depths, leaf_width=args.leaf_width, batch=args.batch)
    except (ValueError, TypeError, FileNotFoundError, ImportError, MemoryError, OSError) as err:
        print(f"fffcpu {args.command}: error: {err}", file=sys.stderr)
        return 1
    except FloatingPointError as err:
        from .train import TrainingDiverged

        if not isinstance(err, TrainingDiverged):
            raise
        unsaved = f"; nothing was saved to {args.save!r}" if getattr(args, "save", None) is not None else ""
        lr = f" (--lr {args.lr:g})" if hasattr(args, "lr") else ""
        print(f"fffcpu {args.command}: error: training diverged{lr}: {str(err).rstrip('.')}{unsaved}.",
              file=sys.stderr)
        return 1
    return 0
