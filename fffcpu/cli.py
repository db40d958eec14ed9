"""Command line: ``python -m fffcpu <command>`` (also installed as the ``fffcpu`` script)."""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

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
    if X_test is None:
        return datasets.train_test_split(X, y, test_size=test_size, seed=seed)
    return X, X_test, y, y_test


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


def _read_inputs(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such input file: {path!r}")
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if path.endswith(".npz"):
        with _open_npz(path, "inputs must be a .npy file or an .npz file with an array 'X'") as data:
            if "X" in data.files:
                return data["X"]
            if len(data.files) == 1:
                return data[data.files[0]]
            raise ValueError(f"{path!r} holds {sorted(data.files)}: name the input array 'X'")
    raise ValueError(f"inputs must be a .npy or .npz file, got {path!r}")


def quick_bench(*, depths=(4, 8, 12), leaf_width: int = 16, batch: int = 256, input_width: int = 784,
                output_width: int = 10, out=sys.stdout) -> list:
    """Hard-inference throughput of FFFs against the dense FF of the same training width (float32).

    A quick look; ``make bench`` runs the full, documented benchmark (docs/benchmarks.md).
    """
    from . import FF, FFF

    rng = np.random.default_rng(0)
    x = rng.random((batch, input_width), dtype=np.float32)
    rows = []
    print(f"{'depth':>5} {'training width':>14} {'FFF samples/s':>14} {'FF samples/s':>13} {'speedup':>8} "
          f"{'limit':>6}", file=out)
    for depth in depths:
        fff = FFF(input_width, leaf_width, output_width, depth, seed=0)
        ff = FF(input_width, fff.training_width, output_width, seed=0)
        fff_rate = batch / _median_seconds(lambda: fff.predict(x), repeats=5)
        ff_rate = batch / _median_seconds(lambda: ff.predict(x), repeats=3)
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


def _train_command(args) -> None:
    from . import FF, FFF, save, train
    from .io import save_path
    from .train import accuracy, linear_ramp, sharpening_ramp

    if args.save:
        save_path(args.save)  # a bad destination fails now, not after the training
    X_train, X_test, y_train, y_test = load_data(args.data, test_size=args.test_size, seed=args.seed)
    X_train = np.asarray(X_train).reshape(len(X_train), -1)
    X_test = np.asarray(X_test).reshape(len(X_test), -1)
    for y in (np.asarray(y_train), np.asarray(y_test)):
        if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.array_equal(y, np.round(y))):
            given = f"dtype {y.dtype}" if y.dtype.kind not in "biuf" else "non-integer values"
            raise ValueError(f"--data {args.data}: y must hold integer class labels 0, 1, ..., got {given}")
    n_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    if args.model == "ff":
        model = FF(X_train.shape[1], args.hidden_width, n_classes, activation=args.activation, seed=args.seed)
    else:
        hard = args.training == "hard"
        model = FFF(X_train.shape[1], args.leaf_width, n_classes, args.depth, activation=args.activation,
                    region_leak=args.region_leak, train_hardened=hard, straight_through=hard, seed=args.seed)
    hardening = args.hardening if args.hardening is not None else TRAINING_HARDENING[args.training]
    sharpening = None
    if args.training == "sharpened" and args.model == "fff":
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
    if args.save:
        print(f"saved to {save(model, args.save)}")


def _predict_command(args) -> None:
    from . import load

    model = load(args.model)
    X = _read_inputs(args.inputs)
    if X.ndim == 0 or len(X) == 0:
        raise ValueError(f"{args.inputs}: no inputs to predict (an array of shape {X.shape})")
    X = X.reshape(len(X), -1) if X.ndim > 2 else X
    if args.what == "leaves":
        if not hasattr(model, "route"):
            raise ValueError(f"{type(model).__name__} has no routes")
        result = model.route(X)
    else:
        result = model.predict(X)
        if args.what == "labels":
            result = result.argmax(axis=1)
    if args.output:
        written = _save_npy(args.output, result)
        print(f"wrote {args.what} of {len(X)} samples, shape {result.shape}, to {written}")
    else:
        np.savetxt(sys.stdout, result.reshape(len(result), -1), fmt="%d" if result.dtype.kind == "i" else "%.6g")


def _save_npy(path: str, array: np.ndarray) -> str:
    """``np.save(path, array)`` (``.npy`` appended if missing, as ``np.save`` does) through ``io.atomic_write``:
    a failed write leaves an existing file as it was. Returns the path written."""
    from .io import atomic_write

    if not path.endswith(".npy"):
        path += ".npy"
    atomic_write(path, lambda f: np.save(f, array))
    return path


def _test_size(text: str) -> float | int:
    """A fraction (``0.25``) or a count of samples (``500``), as ``datasets.train_test_split`` takes."""
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fffcpu", description="Fast feedforward networks on the CPU.",
        epilog="Examples:\n  fffcpu demo\n  fffcpu train --data digits --depth 4 --leaf-width 8 --save m.npz\n"
               "  fffcpu predict m.npz inputs.npy --output labels.npy\n  fffcpu bench",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="command")

    p = commands.add_parser("demo", help="train an FF and an FFF on digits and compare accuracy and speed")
    p.add_argument("--epochs", type=_positive_int, default=40, help="training epochs for each model (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = commands.add_parser("train", help="train an FFF (or a dense FF) and optionally save it")
    p.add_argument("--data", default="digits", help="digits | mnist5k | idx:DIR | npz:FILE (default digits)")
    p.add_argument("--model", choices=["fff", "ff"], default="fff", help="fff (default) or the dense ff baseline")
    p.add_argument("--depth", type=int, default=4, help="tree depth (default 4)")
    p.add_argument("--leaf-width", type=_positive_int, default=8, help="neurons per leaf (default 8)")
    p.add_argument("--hidden-width", type=_positive_int, default=128, help="width of the dense ff (default 128)")
    p.add_argument("--activation", default="relu", help="relu | gelu | tanh | sigmoid | identity")
    p.add_argument("--epochs", type=_positive_int, default=40)
    p.add_argument("--lr", type=_positive_float, default=1e-2)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--optimizer", default="adam", help="adam | sgd | local_adam | local_sgd (default adam)")
    p.add_argument("--local-batch-size", type=_positive_float, default=None,
                   help="usage a node/leaf must gather before a localized update (default: the batch size)")
    p.add_argument("--training", choices=sorted(TRAINING_HARDENING), default="hard",
                   help="fff: hard (default: hard routing as in prediction, straight-through gradients), soft (the "
                        "paper's soft mixture) or sharpened (soft, the hardening weight ramped up and the nodes "
                        "sharpened 4096x, so that the soft model ends as the hard one)")
    p.add_argument("--hardening", type=float, default=None,
                   help="weight of the node-entropy term (default: 0 for hard, 1 for soft; sharpened ramps it to "
                        "this value, default 1)")
    p.add_argument("--region-leak", type=float, default=0.0, help="region leak probability (default 0)")
    p.add_argument("--test-size", type=_test_size, default=0.25,
                   help="test fraction in (0, 1), or number of test samples, when the data has no test set "
                        "(default 0.25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", metavar="FILE", help="save the trained model (.npz)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = commands.add_parser("predict", help="apply a saved model to inputs in a .npy/.npz file")
    p.add_argument("model", help="a model saved by 'fffcpu train --save' or fffcpu.save")
    p.add_argument("inputs", help=".npy file, or .npz with an array 'X'")
    p.add_argument("--what", choices=["labels", "outputs", "leaves"], default="labels",
                   help="argmax labels (default), raw outputs, or the leaf each input is routed to")
    p.add_argument("--output", metavar="FILE", help="write a .npy file instead of printing")

    p = commands.add_parser("bench", help="quick hard-inference speed table against the dense FF")
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12], help="tree depths (default 4 8 12)")
    p.add_argument("--leaf-width", type=_positive_int, default=16)
    p.add_argument("--batch", type=_positive_int, default=256)
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
        elif args.command == "bench":
            quick_bench(depths=args.depths, leaf_width=args.leaf_width, batch=args.batch)
    except (ValueError, TypeError, FileNotFoundError, ImportError, MemoryError, OSError) as err:
        print(f"fffcpu {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0
