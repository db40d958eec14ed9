"""Interleaved A/B of fffcpu's hard inference between versions of the package.

    python -m benchmarks.ab HEAD~1 . [--cases 9,16,4096 12,16,4096] [--kind call|route|leaves] [--rounds 5]

Each version is a git revision (``HEAD``, ``HEAD~1``, a commit) or a directory that holds an ``fffcpu`` package
(``.`` is the working tree). Each is copied into a scratch directory as its own package (``fffcpu_ab0``,
``fffcpu_ab1``...), so that all of them are imported side by side in one process. For each case (depth, leaf
width, batch; input 784, output 10, float32, 2 threads) the models of all versions share the same parameter
arrays, their outputs are compared bit for bit, and then their calls take turns (``interleaved_medians``), each
call on a new input batch from a pool larger than the L3, so that a burst of load on the shared machine hits
every version alike. A case runs ``--rounds`` times; the line printed for it gives, for every version after the
first, the median and range over the rounds of the first version's time divided by this one's (above 1: this
version is faster).

``--kind`` times ``FFF.predict`` (``call``), ``FFF.route`` (``route``) or ``engine.leaf_outputs`` on leaves routed
beforehand (``leaves``).

Every version is first compiled in a process of its own, which fills its Numba cache; the timing process then
loads every version from that cache, as a program runs the kernels after its first run. Code compiled in the
timing process itself can run at another speed than the same source loaded from the cache: the code is laid out
and linked differently (a fresh compilation also builds each called kernel on its own, and that copy of the tile
kernel differs from the one compiled into the cached caller). Measured on one change: the grouped evaluation of
2-unit leaves, depth 9, batch 256, at 1.00x compiled in the timing process, 0.82x loaded from the cache.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

from .common import THREADS, interleaved_medians
from .inference import INPUT_WIDTH, OUTPUT_WIDTH, _pool

KINDS = ("call", "route", "leaves")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_name(index):
    return f"fffcpu_ab{index}"


def materialize(version, dest, index):
    """Copy ``fffcpu`` of ``version`` (a directory holding the package, or a git revision of this repository) to
    ``dest/<package_name(index)>``; returns that path."""
    target = os.path.join(dest, package_name(index))
    source = os.path.join(version, "fffcpu")
    if os.path.isfile(os.path.join(source, "__init__.py")):
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        return target
    archive = subprocess.run(["git", "-C", REPO, "archive", "--format=tar", version, "fffcpu"],
                             capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"{version!r} is neither a directory holding an fffcpu package nor a git revision of "
                         f"{REPO}: {archive.stderr.decode().strip()}")
    scratch = os.path.join(dest, f".tar{index}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(scratch, filter="data")
    os.rename(os.path.join(scratch, "fffcpu"), target)
    os.rmdir(scratch)
    return target


def import_versions(dest, count):
    if dest not in sys.path:
        sys.path.insert(0, dest)
    return [importlib.import_module(package_name(k)) for k in range(count)]


def parse_case(text):
    try:
        depth, leaf, batch = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a case is depth,leaf,batch (three integers), got {text!r}") from None
    if depth < 0 or leaf < 1 or batch < 1:
        raise argparse.ArgumentTypeError(f"a case needs depth >= 0, leaf >= 1 and batch >= 1, got {text!r}")
    return depth, leaf, batch


def _setup(modules, case, quick):
    """Models of every version on one set of parameters, the grid's input pool (``inference._pool``: larger than
    the L3, a few batches with ``quick``), and the leaves of each batch."""
    depth, leaf, batch = case
    models = [m.FFF(INPUT_WIDTH, leaf, OUTPUT_WIDTH, depth, dtype="float32", seed=0) for m in modules]
    for model in models[1:]:
        for key in models[0].params:
            model.params[key] = models[0].params[key]
    pool = _pool(np.random.default_rng(1), batch, quick)
    leaves = [models[0].route(x, n_jobs=THREADS) for x in pool]
    return models, pool, leaves


def _method(kind, module, model, pool, leaves):
    if kind == "route":
        return lambda x, k: model.route(x, n_jobs=THREADS)
    if kind == "leaves":
        return lambda x, k: module.engine.leaf_outputs(x, leaves[k], model.params, model.activation,
                                                       n_jobs=THREADS)
    return lambda x, k: model.predict(x, n_jobs=THREADS)


def compile_all(dest, count, cases, kinds):
    """Run every version's kernels once on every case (filling the Numba caches); returns nothing."""
    modules = import_versions(dest, count)
    for case in cases:
        models, pool, leaves = _setup(modules, case, quick=True)
        for kind in kinds:
            for module, model in zip(modules, models):
                _method(kind, module, model, pool, leaves)(pool[0], 0)


def same_bits(kind, modules, models, pool, leaves):
    outs = [_method(kind, m, model, pool, leaves)(pool[0], 0) for m, model in zip(modules, models)]
    return [bool(np.array_equal(outs[0], o)) for o in outs]


def measure(modules, case, *, kind="call", rounds=5, budget=1.0, quick=False):
    """For each version after the first: (median, lowest, highest) over ``rounds`` of first time / its time.
    Also returns the first version's median time (seconds) and which versions gave the first one's bits."""
    models, pool, leaves = _setup(modules, case, quick)
    same = same_bits(kind, modules, models, pool, leaves)
    P = len(pool)

    def timed(j):
        fn = _method(kind, modules[j], models[j], pool, leaves)
        # each version starts at another place in the pool, so that no call reads a batch another just read
        return lambda k: fn(pool[(k + 7 * j) % P], (k + 7 * j) % P)

    names = [str(j) for j in range(len(modules))]
    ratios = [[] for _ in modules[1:]]
    base = []
    for _ in range(rounds):
        res = interleaved_medians({n: timed(j) for j, n in enumerate(names)}, budget=budget,
                                  max_repeats=dict.fromkeys(names, 3000))
        base.append(res["0"][0])
        for j in range(1, len(modules)):
            ratios[j - 1].append(res["0"][0] / res[str(j)][0])
    summary = [(float(np.median(r)), float(min(r)), float(max(r))) for r in ratios]
    return float(np.median(base)), summary, same


def format_line(kind, case, versions, base, summary, same):
    depth, leaf, batch = case
    parts = [f"{kind} depth {depth} leaf {leaf} batch {batch}: {versions[0]} {base * 1e6:.0f} us"]
    for version, (mid, lo, hi), equal in zip(versions[1:], summary, same[1:]):
        parts.append(f"{version} {mid:.3f}x ({lo:.3f}-{hi:.3f})" + ("" if equal else " [other bits]"))
    return "; ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", help="git revisions or directories holding an fffcpu package; "
                        "the first is the baseline")
    parser.add_argument("--cases", nargs="+", type=parse_case, default=[(9, 16, 4096), (12, 16, 4096)],
                        metavar="D,L,B", help="depth,leaf,batch (default: 9,16,4096 12,16,4096)")
    parser.add_argument("--kind", choices=KINDS, default="call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per version per round")
    parser.add_argument("--compile-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile_only:
        compile_all(args.compile_only, len(args.versions), args.cases, (args.kind,))
        return []
    if len(args.versions) < 2:
        parser.error("give at least two versions to compare")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    dest = tempfile.mkdtemp(prefix="fffcpu-ab-")
    try:
        for k, version in enumerate(args.versions):
            materialize(version, dest, k)
        cases = [",".join(map(str, c)) for c in args.cases]
        subprocess.run([sys.executable, "-m", "benchmarks.ab", *args.versions, "--kind", args.kind,
                        "--compile-only", dest, "--cases", *cases], cwd=REPO, check=True)
        modules = import_versions(dest, len(args.versions))
        lines = []
        for case in args.cases:
            base, summary, same = measure(modules, case, kind=args.kind, rounds=args.rounds, budget=args.budget)
            lines.append(format_line(args.kind, case, args.versions, base, summary, same))
            print(lines[-1], flush=True)
        return lines
    finally:
        shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    main()
