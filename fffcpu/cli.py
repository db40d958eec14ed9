"""Command line: ``python -m fffcpu <command>`` (also installed as the ``fffcpu`` script)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["main", "demo"]


def _median_seconds(f, repeats: int = 7) -> float:
    f()  # warm-up (compiles or loads kernels, fills caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def demo(*, epochs: int = 40, seed: int = 0, progress: bool = True, out=sys.stdout) -> dict:
    """Train a dense FF of width 128 and an FFF of training width 128 on digits and compare them.

    The FFF has depth 4 and leaf width 8 (16 leaves of 8 neurons); it is trained soft with the hardening
    term, then evaluated both soft (all leaves mixed) and hard (one leaf per input, as deployed).

    Returns
    -------
    dict
        The figures printed: accuracies, sizes and throughputs.
    """
    from . import FF, FFF, train
    from .datasets import load_digits, train_test_split

    X, y = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, seed=seed)
    print(f"digits: {len(X_train)} training and {len(X_test)} test images of 8x8 pixels, 10 classes\n", file=out)

    ff = FF(64, 128, 10, seed=seed)
    fff = FFF(64, 8, 10, 4, seed=seed)
    print("training FF(64 -> 128 -> 10) ...", file=out)
    train(ff, X_train, y_train, lr=1e-2, epochs=epochs, batch_size=64, seed=seed, progress=progress)
    print("training FFF(64 -> 16 leaves x 8 -> 10), hardening weight 10 ...", file=out)
    train(fff, X_train, y_train, lr=1e-2, epochs=epochs, batch_size=64, hardening=10.0, seed=seed,
          progress=progress)

    def accuracy(outputs):
        return float(np.mean(outputs.argmax(axis=1) == y_test))

    batch = np.ascontiguousarray(np.resize(X_test, (4096, 64)), dtype=np.float32)
    figures = {
        "ff_accuracy": accuracy(ff.predict(X_test)),
        "fff_accuracy_soft": accuracy(fff.predict_soft(X_test)),
        "fff_accuracy_hard": accuracy(fff.predict(X_test)),
        "ff_neurons": ff.hidden_width,
        "fff_training_width": fff.training_width,
        "fff_inference_size": fff.inference_size,
        "ff_samples_per_s": len(batch) / _median_seconds(lambda: ff.predict(batch)),
        "fff_samples_per_s": len(batch) / _median_seconds(lambda: fff.predict(batch)),
    }
    f = figures
    rows = [
        ("model", "test acc (soft)", "test acc (hard)", "neurons per input", "samples/s (batch 4096)"),
        ("FF width 128", f"{f['ff_accuracy']:.1%}", f"{f['ff_accuracy']:.1%}", f"{f['ff_neurons']}",
         f"{f['ff_samples_per_s']:,.0f}"),
        ("FFF depth 4, leaf 8", f"{f['fff_accuracy_soft']:.1%}", f"{f['fff_accuracy_hard']:.1%}",
         f"{f['fff_inference_size']} of {f['fff_training_width'] + 15}", f"{f['fff_samples_per_s']:,.0f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(file=out)
    for k, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))),
              file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)
    print(
        f"\nThe FFF touches {f['fff_inference_size']} neurons per input (4 routing nodes + one leaf of 8) where the "
        f"FF touches {f['ff_neurons']};\nhard inference runs at {f['fff_samples_per_s'] / f['ff_samples_per_s']:.1f}x "
        "the dense FF's throughput here (float32, tiny 64-pixel inputs: see docs/benchmarks.md for large layers).",
        file=out,
    )
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fffcpu", description="Fast feedforward networks on the CPU.")
    commands = parser.add_subparsers(dest="command", metavar="command")
    p_demo = commands.add_parser("demo", help="train an FF and an FFF on digits and compare accuracy and speed")
    p_demo.add_argument("--epochs", type=int, default=40, help="training epochs for each model (default 40)")
    p_demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p_demo.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            if args.epochs < 1:
                parser.error(f"--epochs must be at least 1, got {args.epochs}")
            demo(epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    except (ValueError, TypeError, FileNotFoundError, ImportError, MemoryError) as err:
        print(f"fffcpu {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0
