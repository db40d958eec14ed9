"""Write the README's figures to docs/figures/ (PNG), from fixed seeds.

    python scripts/make_figures.py            # all figures
    python scripts/make_figures.py --quick    # smaller timing runs (a few seconds)
    python scripts/make_figures.py regions    # only the figures named (file names without .png)

Figures: tree_path.png (one input routed through a tree), regions.png (hard regions, soft mixture and
prediction of an FFF trained on two moons), partition_training.png (the partition forming over training),
neuron_savings.png (training width vs inference size) and inference_time.png (measured on this machine: FFF vs
dense FF, one thread). The timing figure depends on the machine; the others are deterministic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import fffcpu  # noqa: E402
from fffcpu import viz  # noqa: E402
from fffcpu.datasets import checkerboard, two_moons  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"


def save(fig, name: str) -> None:
    path = OUT / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(OUT.parents[1])}")


FIGURES = ("tree_path", "regions", "partition_training", "neuron_savings", "inference_time")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller timing runs")
    parser.add_argument("figures", nargs="*", metavar="figure",
                        help=f"the figures to write (default: all): {', '.join(FIGURES)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.figures) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure {', '.join(unknown)}: choose from {', '.join(FIGURES)}")
    wanted = set(args.figures or FIGURES)
    OUT.mkdir(parents=True, exist_ok=True)
    fffcpu.warmup()

    X, y = two_moons(600, noise=0.15, seed=0)
    model = fffcpu.FFF(2, 4, 2, 3, seed=3)
    fffcpu.train(model, X, y, lr=0.02, epochs=40, batch_size=32, hardening=1.0, seed=0, progress=False)

    if "tree_path" in wanted:
        fig, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
        viz.plot_tree(model, np.array([0.2, 0.3]), ax=ax)
        save(fig, "tree_path.png")

    if "regions" in wanted:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.9), layout="constrained")
        viz.plot_regions(model, X, y, ax=axes[0])
        viz.plot_regions(model, X, y, ax=axes[1], mode="soft", legend=False)
        viz.plot_regions(model, X, y, ax=axes[2], mode="class", legend=False)
        save(fig, "regions.png")

    if "partition_training" in wanted:
        Xc, yc = checkerboard(800, tiles=4, seed=0)
        board = fffcpu.FFF(2, 4, 2, 4, seed=0)
        recorder = viz.SnapshotRecorder(board)
        fffcpu.train(board, Xc, yc, lr=0.03, epochs=40, batch_size=32, hardening=0.3, seed=0, progress=False,
                     callback=recorder)
        fig, axes = plt.subplots(1, 4, figsize=(14, 4.0), layout="constrained")
        for ax, epoch in zip(axes, [0, 2, 10, 40]):
            viz.plot_regions(recorder.model_at(epoch), Xc, yc, ax=ax, mode="soft", title=f"epoch {epoch}",
                             point_size=3, legend=epoch == 0)
        save(fig, "partition_training.png")

    if "neuron_savings" in wanted:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
        viz.plot_sizes(leaf_width=1, max_depth=14, depth=7, ax=axes[0])
        viz.plot_sizes(max_depth=14, depth=11, ultra=True, ax=axes[1])
        save(fig, "neuron_savings.png")

    if "inference_time" not in wanted:
        return
    depths = range(2, 11, 2) if args.quick else range(2, 15, 2)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    for ax, batch in zip(axes, (1, 256)):
        timing = viz.inference_timing(depths, leaf_width=1, input_width=512, output_width=512, batch_size=batch,
                                      repeats=3 if args.quick else 7, threads=1)
        viz.plot_inference_time(timing, ax=ax)
    save(fig, "inference_time.png")


if __name__ == "__main__":
    main()
