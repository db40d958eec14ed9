"""Heap-index arithmetic of the binary tree behind an FFF, and the sizes the papers compare.

Conventions (spec §1, arXiv 2308.14711 §2): nodes are numbered in heap order, root 0, the children of
node ``i`` are ``2i + 1`` (left) and ``2i + 2`` (right); the nodes of level ``k`` are
``2**k - 1 ... 2**(k+1) - 2``. A tree of depth ``d`` has ``2**d - 1`` inner nodes and ``2**d`` leaves;
``leaf id = final node - (2**d - 1)``, so the root decision is the most significant bit of the leaf id and
a 1 bit means "went right".
"""

from __future__ import annotations

import numpy as np

from ._validation import check_positive_int

__all__ = [
    "n_nodes",
    "n_leaves",
    "level_slice",
    "path_nodes",
    "path_directions",
    "leaf_of_path",
    "training_width",
    "training_size",
    "inference_width",
    "inference_size",
]


def n_nodes(depth: int) -> int:
    """Number of inner (routing) nodes of a tree of ``depth`` levels: ``2**depth - 1``."""
    return (1 << check_positive_int(depth, "depth", minimum=0)) - 1


def n_leaves(depth: int) -> int:
    """Number of leaves of a tree of ``depth`` levels: ``2**depth``."""
    return 1 << check_positive_int(depth, "depth", minimum=0)


def level_slice(level: int) -> slice:
    """Heap indices of the nodes of ``level`` (the root is level 0)."""
    level = check_positive_int(level, "level", minimum=0)
    return slice((1 << level) - 1, (1 << (level + 1)) - 1)


def path_nodes(leaf: int, depth: int) -> np.ndarray:
    """Inner nodes on the root-to-``leaf`` path, root first.

    Returns
    -------
    ndarray of int64, shape (depth,)
    """
    nodes = np.empty(check_positive_int(depth, "depth", minimum=0), dtype=np.int64)
    node = 0
    for level, right in enumerate(path_directions(leaf, depth)):
        nodes[level] = node
        node = 2 * node + 1 + int(right)
    return nodes


def path_directions(leaf: int, depth: int) -> np.ndarray:
    """Turns taken on the way to ``leaf``, root first: the bits of the leaf id, 1 = right.

    Returns
    -------
    ndarray of bool, shape (depth,)
    """
    if not 0 <= leaf < n_leaves(depth):
        raise ValueError(f"leaf must be in [0, {n_leaves(depth)}) for depth {depth}, got {leaf}")
    return np.array([(leaf >> (depth - 1 - level)) & 1 for level in range(depth)], dtype=bool)


def leaf_of_path(directions) -> int:
    """Leaf reached by a sequence of turns (root first, truthy = right)."""
    leaf = 0
    for right in directions:
        leaf = 2 * leaf + int(bool(right))
    return leaf


def training_width(depth: int, leaf_width: int) -> int:
    """Neurons in all leaves together, ``2**depth * leaf_width`` (arXiv 2308.14711 §3)."""
    return n_leaves(depth) * check_positive_int(leaf_width, "leaf_width")


def training_size(depth: int, leaf_width: int) -> int:
    """All neurons of the FFF, nodes included: ``(2**depth - 1) + 2**depth * leaf_width``."""
    return n_nodes(depth) + training_width(depth, leaf_width)


def inference_width(depth: int, leaf_width: int) -> int:
    """Neurons of the one leaf evaluated at inference: ``leaf_width``."""
    check_positive_int(depth, "depth", minimum=0)
    return check_positive_int(leaf_width, "leaf_width")


def inference_size(depth: int, leaf_width: int) -> int:
    """Neurons touched by one hard inference: ``depth`` nodes plus one leaf, ``depth + leaf_width``."""
    return check_positive_int(depth, "depth", minimum=0) + check_positive_int(leaf_width, "leaf_width")
