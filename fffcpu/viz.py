"""Plots of fast feedforward networks: the tree, the regions it cuts, training curves, neuron savings.

Every plotting function takes ``ax=None`` (or ``axes=None``), draws into it (a new figure when None) and returns
what it drew into; nothing here calls ``plt.show()``. Artists that tests and widgets look for carry a ``gid``:

=================== ==========================================================
gid                 artist
=================== ==========================================================
``node-{i}``        inner node i of the tree (a circle patch)
``leaf-{k}``        leaf k of the tree (a square patch)
``edge-{i}-{j}``    tree edge from node i to child j (heap numbering, leaves
                    continue the numbering: leaf k is heap node 2**d - 1 + k)
``hard-path``       the overlay drawn on the edges of the hard path
``region-{k}``      the polygon of leaf k's hard region (2-D inputs)
``hyperplane-{i}``  node i's hyperplane, clipped to the region of node i
``soft-mixture``    the image of the soft mixture colours
``points``          the data points of a region plot (class colours)
``class-legend``    the legend of the class colours, above a region plot
``marked-sizes``    the numbers written at the marked depth of a sizes plot
=================== ==========================================================

Colours: every class c has one strong colour, ``class_colors(n)[c]`` (tab10: blue, orange, ...), wherever classes
appear (points, predicted-class backgrounds, stacked bars); leaf regions are pale (``region_colors``), and the
first leaves avoid the hues of the first two classes.

Conventions are the library's (spec §1, arXiv 2308.14711 §2): heap order, ``p_i = σ(w_i·x + b_i)`` weights the
right child, a hard decision goes right iff the logit is >= 0.

Needs matplotlib (``pip install 'fffcpu[viz]'``). The widget builders that use these plots are in
:mod:`fffcpu.widgets`.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import tree
from ._validation import check_positive_int
from .functional import sigmoid

try:
    import matplotlib
    from matplotlib import patheffects
    from matplotlib.colors import hsv_to_rgb, to_rgba
    from matplotlib.patches import Polygon
except ImportError as err:  # pragma: no cover - matplotlib is in the viz/test extras
    raise ImportError("fffcpu.viz needs matplotlib: pip install 'fffcpu[viz]'") from err

__all__ = [
    "route_details",
    "mixture_weights",
    "leaf_colors",
    "region_colors",
    "class_colors",
    "tree_layout",
    "plot_tree",
    "partition_2d",
    "plot_regions",
    "plot_history",
    "plot_leaf_usage",
    "plot_leaf_montage",
    "plot_sizes",
    "measure_seconds",
    "inference_timing",
    "plot_inference_time",
    "limited_threads",
    "SnapshotRecorder",
]


def _check_fff(model, what: str) -> None:
    """``what`` draws the tree of an ``fffcpu.FFF``: refuse anything else with a message that says so."""
    from .models.fff import FFF

    if not isinstance(model, FFF):
        hint = ""
        if type(model).__name__ == "UltraFFF":
            hint = ("; an UltraFFF's nodes are single neurons and it has no leaf networks "
                    "(notebooks/05_ultrafastbert.ipynb walks its path by hand)")
        raise TypeError(f"{what} needs an fffcpu.FFF (hyperplane nodes and leaf networks), got "
                        f"{type(model).__name__}{hint}")


def _new_axes(ax, figsize=(6, 4)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


# ------------------------------------------------------------------------------------------ routing math


def route_details(model, x) -> dict:
    """Everything about how one input travels through an FFF's tree, from the public parameters.

    Parameters
    ----------
    model : FFF
    x : array-like, shape (input_width,) or (1, input_width)

    Returns
    -------
    dict with
        ``logits`` (2**d - 1,) node logits z_i = w_i·x + b_i;
        ``p`` (2**d - 1,) σ(z_i), the weight of the right child;
        ``node_reach`` (2**d - 1,) probability that the soft mixture reaches node i;
        ``leaf_reach`` (2**d,) the mixture weight c_leaf (sums to 1);
        ``leaf`` int, the hard leaf (right iff z >= 0); ``path`` (d,) the inner nodes of the hard path, root first;
        ``soft`` (output_width,) the soft output, ``hard`` (output_width,) the hard output.
    """
    _check_fff(model, "route_details")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim > 2 or (x.ndim == 2 and x.shape[0] != 1):
        raise ValueError(f"x must be one input, of shape ({model.input_width},) or (1, {model.input_width}), "
                         f"got shape {x.shape}")
    x = x.reshape(1, -1)
    if x.shape[1] != model.input_width:
        raise ValueError(f"x has {x.shape[1]} features, the model was built for input_width={model.input_width}")
    w = np.asarray(model.params["node_weights"], dtype=np.float64)
    b = np.asarray(model.params["node_biases"], dtype=np.float64)
    logits = w @ x[0] + b
    p = sigmoid(logits)
    node_reach, reach = (r[0] for r in _reaches(p[None], model.depth))
    node = 0
    path = []
    for _ in range(model.depth):
        path.append(node)
        node = 2 * node + 1 + int(logits[node] >= 0)
    leaf = node - model.n_nodes
    xm = x.astype(model.dtype)
    return {
        "logits": logits, "p": p, "node_reach": node_reach, "leaf_reach": reach, "leaf": leaf,
        "path": np.array(path, dtype=np.int64), "soft": model.predict_soft(xm)[0], "hard": model.predict(xm)[0],
    }


def leaf_colors(n_leaves: int) -> np.ndarray:
    """One distinct colour per leaf, RGBA, shape (n_leaves, 4): tab10/tab20 while they suffice, then a hue wheel.

    The blue and orange (and the cyan and red close to them) of the first two class colours
    (:func:`class_colors`) come last, so that up to 8 leaves (16 in tab20's light shades) never share a hue with
    the points of a two-class problem; the hue wheel skips those two hues.
    """
    order = [2, 4, 5, 6, 8, 7, 9, 3, 0, 1]  # green, purple, brown, pink, olive, grey, cyan, red, blue, orange
    if n_leaves <= 10:
        tab10 = matplotlib.colormaps["tab10"].colors
        return np.array([to_rgba(tab10[i]) for i in order[:n_leaves]])
    if n_leaves <= 20:
        tab20 = matplotlib.colormaps["tab20"].colors  # 2k: colour k of tab10, 2k + 1: its light shade
        shades = [2 * i for i in order[:8]] + [2 * i + 1 for i in order[:8]] + [0, 2, 1, 3]
        return np.array([to_rgba(tab20[i]) for i in shades[:n_leaves]])
    # Golden-ratio hues spread neighbouring leaves apart; the hues of the first two class colours (orange around
    # 0.08, blue around 0.58) are skipped, and the colours are a little muted.
    t = (np.arange(n_leaves) * 0.618033988749895) % 1.0
    hues = np.interp(t, [0.0, 0.44, 0.44, 1.0], [0.13, 0.52, 0.66, 1.02]) % 1.0
    rgb = hsv_to_rgb(np.column_stack([hues, np.full(n_leaves, 0.65), np.full(n_leaves, 0.85)]))
    return np.column_stack([rgb, np.ones(n_leaves)])


REGION_TINT = 0.4
"""How much of a leaf's colour its region keeps (the rest is white): pale, so that the strong class colours of
the points on top cannot be mistaken for it."""


def region_colors(n_leaves: int, tint: float = REGION_TINT) -> np.ndarray:
    """The pale colour of each leaf's region in region plots, RGB, shape (n_leaves, 3).

    ``1 - tint * (1 - leaf_colors(n_leaves))``: the leaf's colour mixed with white, opaque.
    """
    return 1.0 - tint * (1.0 - leaf_colors(n_leaves)[:, :3])


def class_colors(n_classes: int) -> np.ndarray:
    """One strong colour per class, RGBA, shape (n_classes, 4): tab10 (blue, orange, green, ...), then tab20.

    Every plot of fffcpu colours class c with ``class_colors(n)[c]``: the points of region plots, the background
    of the predicted class, the stacked bars of :func:`plot_leaf_usage`.
    """
    n_classes = check_positive_int(n_classes, "n_classes")
    if n_classes <= 10:
        return np.array([to_rgba(c) for c in matplotlib.colormaps["tab10"].colors[:n_classes]])
    if n_classes <= 20:
        return np.array([to_rgba(c) for c in matplotlib.colormaps["tab20"].colors[:n_classes]])
    return matplotlib.colormaps["turbo"](np.linspace(0, 1, n_classes))


def _class_legend(ax, classes, colors, *, title: str | None = None) -> None:
    """A one-row legend of the classes just above the axes (under the title), where it covers no data."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="none", marker="o", ms=5, mfc=colors[i], mec="0.15", mew=0.4)
               for i in range(len(classes))]
    labels = [f"class {c}" for c in classes]
    legend = ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(classes), 5),
                       frameon=False, fontsize=8, handletextpad=0.1, columnspacing=0.8, borderaxespad=0.15,
                       borderpad=0.1)
    legend.set_gid("class-legend")
    if title is not None:
        rows = -(-len(classes) // 5)
        ax.set_title(title, pad=4 + 11 * rows)


# ---------------------------------------------------------------------------------------------- the tree


def tree_layout(depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions for drawing a tree of ``depth``: inner nodes (2**d - 1, 2) and leaves (2**d, 2).

    Leaf k sits at (k, -depth); a node sits above the middle of its subtree, one unit per level.
    """
    nodes = np.empty((tree.n_nodes(depth), 2))
    for level in range(depth):
        span = 1 << (depth - level)  # leaves below each node of this level
        for j, i in enumerate(range(*tree.level_slice(level).indices(tree.n_nodes(depth)))):
            nodes[i] = ((j + 0.5) * span - 0.5, -level)
    leaves = np.column_stack([np.arange(tree.n_leaves(depth), dtype=float), np.full(tree.n_leaves(depth), -depth)])
    return nodes, leaves


def plot_tree(model, x=None, *, ax=None, labels: str | None = "auto", soft: bool = True):
    """Draw an FFF's tree; with an input ``x``, its node logits, soft reach probabilities and hard path.

    Parameters
    ----------
    model : FFF
    x : array-like, shape (input_width,), optional
        The input to route. Without it the bare tree is drawn.
    ax : matplotlib Axes, optional
    labels : {"auto", "logit", "p", "path", None}
        What to write next to the inner nodes: ``"logit"`` z and p, ``"p"`` only p = σ(z), ``"path"`` z and p
        of the nodes on the hard path only, None nothing. ``"auto"`` is ``"logit"`` for depth <= 3, ``"path"``
        for depth 4 to 6, and None deeper. A label sits on a white box above the edges: for a node of the hard
        path, above the node on its outer side (left of a left child, right of a right child or the root), away
        from the red path, which arrives from the inner side; for the other nodes, right of the node and centred
        on it, between the edge from its parent and the edges to its children. Nodes and leaves are numbered
        while their markers are large enough to hold the number (up to depth 4); leaves get their mixture
        weight c_leaf (in %) up to depth 4, and at depth 5 the hard leaf and the leaves of weight 5% or more.
    soft : bool
        Shade nodes and leaves by their soft reach probability and draw edges as wide as the probability
        that flows along them (spec §1: c_leaf is the product of the decisions on its path).

    Returns
    -------
    matplotlib Axes
        The hard path is drawn on top in red (gid ``hard-path``); the title names the leaf reached.
    """
    _check_fff(model, "plot_tree")
    ax = _new_axes(ax, figsize=(7, 3.5))
    depth = model.depth
    node_xy, leaf_xy = tree_layout(depth)
    all_xy = np.vstack([node_xy, leaf_xy])  # heap numbering: leaf k is node 2**d - 1 + k
    info = route_details(model, x) if x is not None else None
    if labels == "auto":
        labels = "logit" if depth <= 3 else "path" if depth <= 6 else None
    if labels not in ("logit", "p", "path", None):
        raise ValueError(f"labels must be 'auto', 'logit', 'p', 'path' or None, got {labels!r}")
    reach = None
    if info is not None:
        reach = np.concatenate([info["node_reach"], info["leaf_reach"]])

    n_leaves = tree.n_leaves(depth)
    marker_size = float(np.clip(220 / n_leaves, 5, 26))  # points; round whatever the axes' aspect
    fontsize = 9 if depth <= 2 else (8 if depth <= 4 else 7)
    for i in range(model.n_nodes):
        for j in (2 * i + 1, 2 * i + 2):
            flow = reach[j] if (reach is not None and soft) else 0.3
            ax.plot(*all_xy[[i, j]].T, color="0.55", lw=0.6 + 5.0 * flow, solid_capstyle="round", zorder=1,
                    gid=f"edge-{i}-{j}")
    if info is not None and depth > 0:
        hard_nodes = list(info["path"]) + [model.n_nodes + info["leaf"]]
        ax.plot(*all_xy[hard_nodes].T, color="crimson", lw=2.2, zorder=2, gid="hard-path",
                label="hard path (right iff z ≥ 0)")

    on_path = set()
    if info is not None:
        on_path = set(int(n) for n in info["path"]) | {model.n_nodes + info["leaf"]}
    box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
    for i, (px, py) in enumerate(all_xy):
        is_leaf = i >= model.n_nodes
        shade = reach[i] if (reach is not None and soft) else (0.5 if reach is None else 0.0)
        face = (1 - 0.75 * shade, 1 - 0.45 * shade, 1.0) if not is_leaf else (1.0, 1 - 0.35 * shade, 1 - 0.75 * shade)
        edge = "crimson" if i in on_path else "0.25"
        ax.plot([px], [py], marker="s" if is_leaf else "o", ms=marker_size, mfc=face, mec=edge,
                mew=2.2 if i in on_path else 1.0, zorder=3, linestyle="none",
                gid=f"leaf-{i - model.n_nodes}" if is_leaf else f"node-{i}")
        if labels is None or (n_leaves > 32 and labels != "path"):
            continue
        if is_leaf and n_leaves <= 32:
            k = i - model.n_nodes
            if marker_size >= 12:  # the number fits in the square
                ax.text(px, py, str(k), ha="center", va="center", fontsize=fontsize - 1, zorder=4)
            if info is not None and (n_leaves <= 16 or i in on_path or info["leaf_reach"][k] >= 0.05):
                below = marker_size / 2 + 3 + (fontsize if n_leaves > 16 and k % 2 else 0)  # stagger when narrow
                ax.annotate(f"{100 * info['leaf_reach'][k]:.0f}%", (px, py), xytext=(0, -below),
                            textcoords="offset points", ha="center", va="top", fontsize=fontsize - 1, zorder=4,
                            gid=f"leaf-label-{k}")
        elif not is_leaf:
            if marker_size >= 12:
                ax.text(px, py, str(i), ha="center", va="center", fontsize=fontsize - 1, zorder=4)
            if info is not None and (labels != "path" or i in on_path):
                z, p = info["logits"][i], info["p"][i]
                text = f"p={p:.2f}" if labels == "p" else f"z={z:+.2f}\np={p:.2f}"
                gap = marker_size / 2 + 2
                if i in on_path:  # above, on the outer side: the hard path arrives from the inner side
                    left = i % 2 == 1  # a left child: its parent, and the path, are up to the right
                    xytext, ha, va = ((-gap if left else gap) * 0.8, gap * 0.5), "right" if left else "left", "bottom"
                else:  # right of the node, centred: between its parent's edge and its children's
                    xytext, ha, va = (gap, 0), "left", "center"
                ax.annotate(text, (px, py), xytext=xytext, textcoords="offset points", ha=ha, va=va,
                            fontsize=fontsize, zorder=5, bbox=box, gid=f"node-label-{i}")
    ax.set_xlim(-0.8, tree.n_leaves(depth) - 0.2)
    ax.set_ylim(-depth - (1.0 if n_leaves > 16 else 0.8), 0.7)
    ax.set_aspect("auto")
    ax.axis("off")
    if info is None:
        ax.set_title(f"FFF of depth {depth}: {model.n_nodes} nodes, {model.n_leaves} leaves of {model.leaf_width}")
    else:
        turns = "".join("R" if r else "L" for r in tree.path_directions(info["leaf"], depth)) or "(no decision)"
        ax.set_title(f"hard path {turns} → leaf {info['leaf']}   (soft weight of that leaf "
                     f"{100 * info['leaf_reach'][info['leaf']]:.0f}%)")
    return ax


# ----------------------------------------------------------------------------------- 2-D region partitions


def _clip_halfplane(poly: np.ndarray, w: np.ndarray, b: float, right: bool) -> np.ndarray:
    """The part of convex polygon ``poly`` (k, 2) where w·x + b >= 0 (``right``) or < 0 (left)."""
    if len(poly) == 0:
        return poly
    s = poly @ w + b
    if not right:
        s = -s
    inside = s >= 0
    out = []
    k = len(poly)
    for a in range(k):
        c = (a + 1) % k
        if inside[a]:
            out.append(poly[a])
        if inside[a] != inside[c]:
            t = s[a] / (s[a] - s[c])
            out.append(poly[a] + t * (poly[c] - poly[a]))
    out = np.array(out).reshape(-1, 2)
    if len(out) < 3 or _area(out) < 1e-12:
        return np.empty((0, 2))
    return out


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _line_in_polygon(poly: np.ndarray, w: np.ndarray, b: float):
    """The segment of the line w·x + b = 0 inside convex polygon ``poly``, as (2, 2), or None."""
    if len(poly) == 0 or not np.any(w):
        return None
    s = poly @ w + b
    points = []
    k = len(poly)
    for a in range(k):
        c = (a + 1) % k
        if s[a] == 0:
            points.append(poly[a])
        elif s[a] * s[c] < 0:
            t = s[a] / (s[a] - s[c])
            points.append(poly[a] + t * (poly[c] - poly[a]))
    if len(points) < 2:
        return None
    points = np.array(points)
    direction = np.array([-w[1], w[0]])
    proj = points @ direction
    return points[[np.argmin(proj), np.argmax(proj)]]


def _extent_of(X=None, extent=None, margin: float = 0.15):
    if extent is not None:
        x0, x1, y0, y1 = _check_extent(extent)
        return x0, x1, y0, y1
    if X is None or len(X) == 0:
        return -1.5, 1.5, -1.5, 1.5
    X = np.asarray(X)
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = margin * (hi - lo).max()
    return lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad


def _check_extent(extent) -> tuple:
    """``extent`` as four floats (xmin, xmax, ymin, ymax) of a non-empty finite rectangle."""
    values = np.asarray(extent, dtype=float).ravel() if np.ndim(extent) else np.empty(0)
    if values.shape != (4,) or not np.isfinite(values).all() or values[0] >= values[1] or values[2] >= values[3]:
        raise ValueError(f"extent must be (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax, got {extent!r}")
    return tuple(float(v) for v in values)


def _check_points(X, y):
    """Points to draw over a region plot: X of shape (n, 2), y (if given) of length n."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"X must hold 2-D points, shape (n, 2), got shape {X.shape}")
    if y is not None and np.shape(y) != (len(X),):
        raise ValueError(f"y must hold one label per point, shape ({len(X)},), got shape {np.shape(y)}")
    return X


def _check_2d(model):
    _check_fff(model, "a region plot")
    if model.input_width != 2:
        raise ValueError(f"region plots need a model with input_width=2, got input_width={model.input_width}")


def partition_2d(model, extent=(-1.5, 1.5, -1.5, 1.5)) -> tuple[dict, dict]:
    """The exact hard partition of a 2-D rectangle by an FFF's tree.

    Each node's region is convex (an intersection of half-planes), so it is computed by clipping the rectangle
    with the decisions on the way down (right iff w·x + b >= 0).

    Parameters
    ----------
    model : FFF with input_width=2
    extent : (xmin, xmax, ymin, ymax)

    Returns
    -------
    leaf_polygons : dict leaf -> ndarray (k, 2)
        The hard region of every leaf that has positive area inside the rectangle.
    node_segments : dict node -> ndarray (2, 2)
        The part of node i's hyperplane inside node i's own region (where it actually decides), for the
        nodes whose region it crosses.
    """
    _check_2d(model)
    x0, x1, y0, y1 = _check_extent(extent)
    box = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    w = np.asarray(model.params["node_weights"], dtype=np.float64)
    b = np.asarray(model.params["node_biases"], dtype=np.float64)
    regions = {0: box}
    leaves, segments = {}, {}
    for node in range(model.n_nodes):
        poly = regions.pop(node, None)
        if poly is None or len(poly) == 0:
            continue
        seg = _line_in_polygon(poly, w[node], b[node])
        if seg is not None:
            segments[node] = seg
        for child, right in ((2 * node + 1, False), (2 * node + 2, True)):
            part = _clip_halfplane(poly, w[node], b[node], right)
            if len(part):
                regions[child] = part
    for node, poly in regions.items():
        leaves[node - model.n_nodes] = poly
    return leaves, segments


def plot_regions(model, X=None, y=None, *, ax=None, mode: str = "hard", extent=None, hyperplanes: bool = True,
                 resolution: int = 160, alpha: float = REGION_TINT, point_size: float = 9, title: str | None = None,
                 legend: bool = True):
    """2-D region partitioning: which leaf owns which part of the plane, with the node hyperplanes.

    Parameters
    ----------
    model : FFF with input_width=2
    X, y : training points (n, 2) and their class labels (n,), optional; drawn on top, class c in the strong
        colour ``class_colors(n)[c]``.
    ax : matplotlib Axes, optional
    mode : {"hard", "soft", "class"}
        ``"hard"``: each leaf's hard region as a filled polygon in the leaf's pale colour (``region_colors``;
        gid ``region-{k}``). ``"soft"``: every grid point coloured by the soft mixture Σ c_leaf(x) · colour(leaf)
        (gid ``soft-mixture``), with the hard region borders as thin lines: where the tree is undecided the
        colours blend. ``"class"``: the hard prediction's class as a pale background in the class colours, leaf
        borders on top.
    extent : (xmin, xmax, ymin, ymax), optional
        Defaults to the bounding box of X plus a margin (or [-1.5, 1.5]^2).
    hyperplanes : bool
        Draw each node's hyperplane clipped to the node's own region (gid ``hyperplane-{i}``), the deeper
        the thinner.
    resolution : int
        Grid points per axis for the ``soft`` and ``class`` images.
    alpha : float
        How much of the leaf (or class) colour the background keeps, the rest being white.
    point_size : float
        Marker area of the points X (matplotlib's ``s``).
    title : str, optional
        The default names the mode; for ``"hard"`` it counts the leaf regions inside the rectangle and, with
        X, the leaves that receive those points (hard routing), which can be fewer.
    legend : bool
        With labels y (or in ``"class"`` mode), a legend of the class colours above the axes (gid
        ``class-legend``).

    Returns
    -------
    matplotlib Axes
    """
    _check_2d(model)
    if mode not in ("hard", "soft", "class"):
        raise ValueError(f"mode must be 'hard', 'soft' or 'class', got {mode!r}")
    resolution = check_positive_int(resolution, "resolution", minimum=2)
    if X is not None:
        X = _check_points(X, y)
    ax = _new_axes(ax, figsize=(5, 5))
    x0, x1, y0, y1 = _extent_of(X, extent)
    leaves, segments = partition_2d(model, (x0, x1, y0, y1))
    colors = region_colors(model.n_leaves, alpha)
    n_classes = max(model.output_width, 2, int(np.max(y)) + 1 if y is not None and len(y) else 0)
    classes = class_colors(n_classes)

    if mode == "hard":
        for k, poly in sorted(leaves.items()):
            ax.add_patch(Polygon(poly, closed=True, facecolor=colors[k], edgecolor="none", gid=f"region-{k}",
                                 zorder=0))
            if len(leaves) <= 32:  # above the points and hyperplanes, with a white halo so that it stays legible
                cx, cy = poly.mean(axis=0)
                ax.text(cx, cy, str(k), ha="center", va="center", fontsize=8, color="0.2", zorder=4,
                        gid=f"leaf-number-{k}", path_effects=[patheffects.withStroke(linewidth=2.5, foreground="w")])
    else:
        gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
        grid = np.column_stack([gx.ravel(), gy.ravel()]).astype(model.dtype)
        if mode == "soft":
            image = (mixture_weights(model, grid) @ colors).reshape(resolution, resolution, 3)
            ax.imshow(np.clip(image, 0, 1), origin="lower", extent=(x0, x1, y0, y1), aspect="auto",
                      interpolation="bilinear", zorder=0, gid="soft-mixture")
        else:
            predicted = model.predict(grid).argmax(axis=1).reshape(resolution, resolution)
            pale = 1.0 - alpha * (1.0 - classes[:, :3])
            ax.imshow(pale[predicted], origin="lower", extent=(x0, x1, y0, y1), aspect="auto",
                      interpolation="nearest", zorder=0, gid="class-image")
        for k, poly in sorted(leaves.items()):  # borders only
            ax.add_patch(Polygon(poly, closed=True, facecolor="none", edgecolor="0.3", lw=0.5, zorder=1,
                                 gid=f"region-border-{k}"))

    if hyperplanes:
        for node, seg in sorted(segments.items()):
            level = int(math.log2(node + 1))
            ax.plot(seg[:, 0], seg[:, 1], color="black", lw=max(0.6, 2.4 - 0.45 * level), zorder=2,
                    gid=f"hyperplane-{node}")

    if X is not None:
        X = np.asarray(X)
        if y is None:
            ax.scatter(X[:, 0], X[:, 1], s=point_size, c="0.2", zorder=3, gid="points")
        else:
            y = np.asarray(y)
            ax.scatter(X[:, 0], X[:, 1], s=point_size, c=classes[y.astype(np.int64)], edgecolors="0.15",
                       linewidths=0.25, zorder=3, gid="points")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    if title is None:
        if mode == "hard":
            title = f"hard regions: {len(leaves)} of {model.n_leaves} leaves in view"
            if X is not None and len(X):
                title += f",\n{len(np.unique(model.route(X.astype(model.dtype))))} receive the points"
        else:
            title = {"soft": "soft mixture of leaf colours", "class": "hard prediction (class)"}[mode]
    if legend and (y is not None or mode == "class"):
        shown = np.unique(np.asarray(y)) if y is not None else np.arange(model.output_width)
        _class_legend(ax, [int(c) for c in shown], classes[[int(c) for c in shown]], title=title)
    else:
        ax.set_title(title)
    return ax


def mixture_weights(model, X) -> np.ndarray:
    """The soft mixture weights c_leaf(x) of a batch, from the public parameters (spec §1), shape (n, 2**d).

    Row i is :func:`route_details`'s ``leaf_reach`` for input ``X[i]``: the product of the decisions on each
    leaf's path, p_i to the right and 1 − p_i to the left; every row sums to 1. Computed in float64.

    Parameters
    ----------
    model : FFF
    X : array-like, shape (n, input_width)
    """
    _check_fff(model, "mixture_weights")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != model.input_width:
        raise ValueError(f"X must have shape (n, {model.input_width}) for a model with input_width="
                         f"{model.input_width}, got shape {X.shape}")
    logits = X @ np.asarray(model.params["node_weights"], dtype=np.float64).T + \
        np.asarray(model.params["node_biases"], dtype=np.float64)
    return _reaches(sigmoid(logits), model.depth)[1]


def _reaches(p: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """From the right-child weights p (n, 2**d - 1): the probability that the soft mixture reaches each node
    (n, 2**d - 1) and each leaf (n, 2**d), level by level."""
    n = len(p)
    node_reach = np.empty(p.shape)
    reach = np.ones((n, 1))
    for level in range(depth):
        node_reach[:, tree.level_slice(level)] = reach
        q = p[:, tree.level_slice(level)]
        reach = np.stack([reach * (1 - q), reach * q], axis=2).reshape(n, -1)
    return node_reach, reach


# ------------------------------------------------------------------------------------- training curves


def plot_history(history, *, axes=None, title: str | None = None):
    """Training curves of a :class:`fffcpu.History`: loss, node entropy, soft vs hard accuracy.

    Parameters
    ----------
    history : History (or a dict of per-epoch lists with the same keys)
    axes : sequence of 3 Axes, optional
        Where to draw (default: a new figure of three panels side by side).
    title : str, optional
        A title over the three panels (the figure's ``suptitle``).

    Returns
    -------
    ndarray of 3 Axes: loss (train, validation), mean node entropy (with its maximum ln 2), and accuracy
    (or MSE for regression), soft dashed and hard solid.
    """
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, 3, figsize=(12, 3.2), layout="constrained")
    if not hasattr(history, "keys") or "loss" not in history or "entropy" not in history or not len(
            history["loss"]):
        keys = sorted(history.keys()) if hasattr(history, "keys") else type(history).__name__
        raise ValueError("history must be the History that fffcpu.train returns (or a dict of per-epoch lists with "
                         f"at least 'loss' and 'entropy', one epoch or more), got {keys}")
    axes = np.asarray(axes).ravel()
    if len(axes) != 3:
        raise ValueError(f"plot_history draws 3 panels, got {len(axes)} axes")
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax = axes[0]
    ax.plot(epochs, history["loss"], label="train")
    if "val_loss" in history:
        ax.plot(epochs, history["val_loss"], label="validation")
    ax.set(xlabel="epoch", ylabel="prediction loss", title="loss")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(epochs, history["entropy"], color="tab:purple")
    ax.axhline(math.log(2), color="0.6", ls=":", lw=1)
    ax.text(epochs[0], math.log(2), "ln 2: undecided", va="bottom", fontsize=7, color="0.4")
    ax.set(xlabel="epoch", ylabel="mean node entropy (nats)", title="node entropy (hardening term)",
           ylim=(0, 0.75))
    ax = axes[2]
    metric = "acc" if "train_acc_soft" in history else "mse"
    for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
        for kind, style in (("soft", "--"), ("hard", "-")):
            key = f"{split}_{metric}_{kind}"
            if key in history:
                ax.plot(epochs, history[key], ls=style, color=color, label=f"{split} {kind}")
    ax.set(xlabel="epoch", ylabel="accuracy" if metric == "acc" else "MSE",
           title="soft vs hard " + ("accuracy" if metric == "acc" else "MSE"))
    ax.legend(fontsize=8)
    if title:
        axes[0].figure.suptitle(title)
    return axes


def plot_leaf_usage(model, X=None, y=None, *, ax=None, counts: str = "hard", class_names=None):
    """How many samples each leaf receives.

    Parameters
    ----------
    model : FFF
    ax : matplotlib Axes, optional
    X : array-like (n, input_width), optional
        Count the hard routes of these samples. Without it, the model's cumulative training usage
        counters are shown (``model.usage["leaf_hard"]`` or ``["leaf_soft"]``, see ``counts``).
    y : class labels (n,), optional
        Stack the bars by class, to see which classes land in which leaf (class c in ``class_colors(n)[c]``,
        the colours of the points in :func:`plot_regions`).
    counts : {"hard", "soft"}
        For the usage counters only.
    class_names : sequence of str, optional
        Legend names of the classes of y (``class_names[c]`` for class c; default: the class numbers).

    Returns
    -------
    matplotlib Axes; one bar (gid ``usage-{k}``) per leaf, or one stacked segment per leaf and class.
    """
    _check_fff(model, "plot_leaf_usage")
    if y is not None:
        if X is None:
            raise ValueError("y stacks the bars of the samples X by class: give X too")
        n, classes = len(np.asarray(X)), np.unique(np.asarray(y))
        if np.shape(y) != (n,):
            raise ValueError(f"y must hold one label per sample of X, shape ({n},), got shape {np.shape(y)}")
        if class_names is not None and len(class_names) < len(classes):
            raise ValueError(f"class_names must name the {len(classes)} classes of y, got {len(class_names)} names")
    ax = _new_axes(ax, figsize=(7, 3))
    n_leaves = model.n_leaves
    leaves = np.arange(n_leaves)
    if X is None:
        if counts not in ("hard", "soft"):
            raise ValueError(f"counts must be 'hard' or 'soft', got {counts!r}")
        values = np.asarray(model.usage[f"leaf_{counts}"], dtype=float)
        ax.bar(leaves, values, color=leaf_colors(n_leaves), gid="usage")
        for k, patch in enumerate(ax.patches[-n_leaves:]):
            patch.set_gid(f"usage-{k}")
        used, label = int(np.sum(values > 0)), f"training usage ({counts})"
    else:
        routed = model.route(X)
        values = np.bincount(routed, minlength=n_leaves).astype(float)
        if y is None:
            bars = ax.bar(leaves, values, color=leaf_colors(n_leaves))
            for k, patch in enumerate(bars):
                patch.set_gid(f"usage-{k}")
        else:
            y = np.asarray(y)
            classes = np.unique(y)
            integer = np.issubdtype(classes.dtype, np.integer) and classes.min() >= 0
            palette = class_colors(int(classes.max()) + 1 if integer else len(classes))
            bottom = np.zeros(n_leaves)
            for c_i, c in enumerate(classes):
                part = np.bincount(routed[y == c], minlength=n_leaves).astype(float)
                name = class_names[c_i] if class_names is not None else str(c)
                ax.bar(leaves, part, bottom=bottom, color=palette[int(c) if integer else c_i], label=name,
                       gid=f"usage-class-{c}")
                bottom += part
            ax.legend(fontsize=7, ncol=2, title="class", title_fontsize=7, loc="upper right")
        used, label = int(np.sum(values > 0)), "samples routed (hard)"
    ax.set(xlabel="leaf", ylabel=label)
    if n_leaves <= 32:
        ax.set_xticks(leaves)
    ax.set_title(f"leaf usage: {used} of {n_leaves} leaves used")
    return ax


def plot_leaf_montage(model, X, y=None, *, image_shape=(8, 8), per_leaf: int = 12, leaves=None, ax=None,
                      seed: int = 0):
    """A montage of the inputs that land in each leaf: one row per leaf, ``per_leaf`` samples per row.

    Parameters
    ----------
    model : FFF
    X : array-like (n, input_width), images flattened row-major
    y : labels (n,), optional; the row label then names the most common labels of the leaf
    image_shape : (h, w) with h * w == input_width
    per_leaf : int
    leaves : sequence of int, optional
        Which leaves to show (default: every leaf that receives a sample, in order).
    ax : matplotlib Axes, optional
    seed : int
        Picks the samples shown when a leaf has more than ``per_leaf``.

    Returns
    -------
    matplotlib Axes (the montage is one image, gid ``montage``; y tick labels describe the rows)
    """
    _check_fff(model, "plot_leaf_montage")
    h, w = image_shape
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, {h * w}): images flattened row-major, got shape {X.shape}")
    per_leaf = check_positive_int(per_leaf, "per_leaf")
    if y is not None and np.shape(y) != (len(X),):
        raise ValueError(f"y must hold one label per sample of X, shape ({len(X)},), got shape {np.shape(y)}")
    if leaves is not None and any(not 0 <= int(k) < model.n_leaves for k in leaves):
        raise ValueError(f"leaves must be leaf indices in [0, {model.n_leaves}), got {list(leaves)}")
    if h * w != X.shape[1]:
        raise ValueError(f"image_shape {image_shape} has {h * w} pixels, X has {X.shape[1]} features")
    routed = model.route(X)
    if leaves is None:
        leaves = np.unique(routed)
    leaves = [int(k) for k in leaves]
    rng = np.random.default_rng(seed)
    pad = 1
    canvas = np.full((len(leaves) * (h + pad) + pad, per_leaf * (w + pad) + pad), np.nan)
    row_labels = []
    for r, leaf in enumerate(leaves):
        rows = np.flatnonzero(routed == leaf)
        shown = rng.choice(rows, size=min(per_leaf, len(rows)), replace=False) if len(rows) else rows
        if y is not None:
            shown = shown[np.argsort(np.asarray(y)[shown], kind="stable")]
        for c, i in enumerate(shown):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            canvas[top:top + h, left:left + w] = X[i].reshape(h, w)
        text = f"leaf {leaf} (n={len(rows)})"
        if y is not None and len(rows):
            labels, counts = np.unique(np.asarray(y)[rows], return_counts=True)
            best = np.argsort(-counts)[:2]
            text += ": " + ", ".join(f"{labels[b]}×{counts[b]}" for b in best)
        row_labels.append(text)
    ax = _new_axes(ax, figsize=(0.45 * per_leaf + 2.5, 0.42 * len(leaves) + 0.6))
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="white")
    ax.imshow(canvas, cmap=cmap, interpolation="nearest", gid="montage")
    ax.set_yticks([pad + r * (h + pad) + h / 2 - 0.5 for r in range(len(leaves))], row_labels, fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"samples per leaf ({len(leaves)} leaves)")
    return ax


# ------------------------------------------------------------------------------------- neuron savings


def plot_sizes(leaf_width: int = 1, max_depth: int = 14, *, depth: int | None = None, ax=None,
               ultra: bool = False):
    """Training width 2^d·ℓ against inference size d + ℓ (arXiv 2308.14711 §3), log scale.

    Parameters
    ----------
    leaf_width : int
        ℓ (ignored when ``ultra``).
    max_depth : int
        Depths 0..max_depth on the x axis.
    depth : int, optional
        Mark this depth and annotate its numbers (gid ``marked-sizes``: inference size of training width, or
        neurons on the path of neurons in the tree), on the side of the line that keeps the text inside the axes.
    ax : matplotlib Axes, optional
    ultra : bool
        UltraFastBERT's tree instead (arXiv 2311.10770): every node is a neuron, 2^(D+1) − 1 neurons in the
        tree, D + 1 of them on a path (D = 11: 4095 and 12).

    Returns
    -------
    matplotlib Axes; the lines carry gids ``training-width``, ``inference-size`` (and ``training-size``).
    """
    max_depth = check_positive_int(max_depth, "max_depth", minimum=0)
    if max_depth > 61:  # 2^(D+1) - 1 must fit the int64 the plot computes in
        raise ValueError(f"max_depth must be at most 61, got {max_depth}")
    if depth is not None:
        depth = check_positive_int(depth, "depth", minimum=0)
    ax = _new_axes(ax, figsize=(6, 4))
    d = np.arange(0, max_depth + 1)
    if ultra:
        train_w = 2 ** (d + 1) - 1
        infer = d + 1
        ax.plot(d, train_w, "o-", ms=3, label="neurons in the tree  2^(D+1) − 1", gid="training-width")
        ax.plot(d, infer, "s-", ms=3, label="neurons on the path  D + 1", gid="inference-size")
    else:
        train_w = np.array([tree.training_width(int(k), leaf_width) for k in d])
        infer = np.array([tree.inference_size(int(k), leaf_width) for k in d])
        ax.plot(d, train_w, "o-", ms=3, label=f"training width  2^d · ℓ  (ℓ={leaf_width})", gid="training-width")
        ax.plot(d, [tree.training_size(int(k), leaf_width) for k in d], ":", color="tab:blue", alpha=0.6,
                label="training size  (2^d − 1) + 2^d · ℓ", gid="training-size")
        ax.plot(d, infer, "s-", ms=3, label="inference size  d + ℓ", gid="inference-size")
    ax.set_yscale("log", base=2)
    ax.set(xlabel="depth" + (" D" if ultra else " d"), ylabel="neurons")
    if depth is not None:
        k = int(depth)
        tw = int(2 ** (k + 1) - 1) if ultra else tree.training_width(k, leaf_width)
        inf = k + 1 if ultra else tree.inference_size(k, leaf_width)
        ax.axvline(k, color="0.7", lw=1, zorder=0, gid="marked-depth")
        right_half = k > max_depth / 2  # write towards the middle, so the text stays inside the axes
        ax.annotate(f"{inf:,} of {tw:,} ({_percent(inf / tw)})", (k, inf), xytext=(-5 if right_half else 5, 12),
                    textcoords="offset points", ha="right" if right_half else "left", fontsize=9,
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
                    gid="marked-sizes")
        if ultra:
            ax.set_title(f"depth {k}: {inf} of {tw:,} neurons on the path", fontsize=10)
        else:
            ax.set_title(f"depth {k}: inference size {inf:,} of training width {tw:,}", fontsize=10)
    else:
        ax.set_title("exponential neuron savings")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="major", alpha=0.3)
    return ax


def _percent(fraction: float) -> str:
    """A fraction as a percentage with three significant digits: 1 -> '100%', 12/1024 -> '1.17%',
    272/16777216 -> '0.00162%'."""
    return f"{100 * fraction:.3g}%"


def measure_seconds(function, *args, repeats: int = 5, min_time: float = 0.02) -> float:
    """Median wall time of ``function(*args)`` in seconds, over ``repeats`` timings of ≥ ``min_time`` each.

    Each timing loops the call enough times to last ``min_time`` and divides (time.perf_counter), so short
    calls are measured above the timer's resolution. One untimed call runs first (JIT warm-up, caches).
    """
    function(*args)
    started = time.perf_counter()
    function(*args)
    once = max(time.perf_counter() - started, 1e-7)
    loops = max(1, int(min_time / once))
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            function(*args)
        samples.append((time.perf_counter() - started) / loops)
    return float(np.median(samples))


def inference_timing(depths, *, leaf_width: int = 1, input_width: int = 256, output_width: int = 256,
                     batch_size: int = 256, repeats: int = 5, dtype="float32", seed: int = 0,
                     threads: int | None = 1) -> dict:
    """Measure hard inference of FFFs of the given depths against dense FFs of the same training width.

    The dense baseline is ``FF(input_width, 2**d * leaf_width, output_width).predict`` (a BLAS matrix product,
    spec §3); the FFF is ``FFF(..., depth=d).predict`` (one leaf per input). Weights are random: speed does not
    depend on training.

    ``threads`` limits both sides alike (BLAS through threadpoolctl, Numba through ``numba.set_num_threads``) and
    restores the previous settings afterwards; the default 1 gives steady numbers on a shared machine. None
    leaves the thread counts as they are.

    Returns
    -------
    dict of equal-length lists: ``depth``, ``training_width``, ``inference_size``, ``fff_seconds``,
    ``ff_seconds`` (median seconds per batch), and the scalars ``batch_size``, ``input_width``, ``leaf_width``.
    """
    from .models import FF, FFF

    repeats = check_positive_int(repeats, "repeats")
    batch_size = check_positive_int(batch_size, "batch_size")
    if threads is not None:
        threads = check_positive_int(threads, "threads")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, input_width)).astype(dtype)
    out = {"depth": [], "training_width": [], "inference_size": [], "fff_seconds": [], "ff_seconds": [],
           "batch_size": batch_size, "input_width": input_width, "leaf_width": leaf_width, "threads": threads}
    with limited_threads(threads):
        for d in depths:
            fff = FFF(input_width, leaf_width, output_width, int(d), dtype=dtype, seed=seed)
            ff = FF(input_width, fff.training_width, output_width, dtype=dtype, seed=seed)
            out["depth"].append(int(d))
            out["training_width"].append(fff.training_width)
            out["inference_size"].append(fff.inference_size)
            out["fff_seconds"].append(measure_seconds(fff.predict, x, repeats=repeats))
            out["ff_seconds"].append(measure_seconds(ff.predict, x, repeats=repeats))
    return out


class limited_threads:
    """Context manager: BLAS (threadpoolctl) and Numba limited to ``threads`` (None: unchanged), restored on exit.

    >>> with limited_threads(1):
    ...     seconds = measure_seconds(model.predict, x)
    """

    def __init__(self, threads):
        self.threads = threads

    def __enter__(self):
        if self.threads is None:
            return self
        import numba
        from threadpoolctl import threadpool_limits

        self._numba = numba.get_num_threads()
        numba.set_num_threads(min(int(self.threads), numba.config.NUMBA_NUM_THREADS))
        self._blas = threadpool_limits(int(self.threads))
        return self

    def __exit__(self, *exc):
        if self.threads is not None:
            import numba

            numba.set_num_threads(self._numba)
            self._blas.restore_original_limits()
        return False


def plot_inference_time(timing: dict, *, ax=None, per_sample: bool = True):
    """Measured inference time against training width, FFF vs dense FF (log-time vs linear-time).

    Parameters
    ----------
    timing : dict from :func:`inference_timing`
    ax : matplotlib Axes, optional
    per_sample : bool
        Show microseconds per sample (else seconds per batch).

    Returns
    -------
    matplotlib Axes; lines with gids ``fff-time`` and ``ff-time``.
    """
    ax = _new_axes(ax, figsize=(6, 4))
    width = np.asarray(timing["training_width"])
    scale = 1e6 / timing["batch_size"] if per_sample else 1.0
    fff = np.asarray(timing["fff_seconds"]) * scale
    ff = np.asarray(timing["ff_seconds"]) * scale
    ax.plot(width, ff, "o-", color="tab:orange", label="dense FF (all neurons)", gid="ff-time")
    ax.plot(width, fff, "s-", color="tab:blue", label=f"FFF hard inference (ℓ={timing['leaf_width']})",
            gid="fff-time")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="training width (neurons)", ylabel="µs per sample" if per_sample else "seconds per batch")
    speedup = ff[-1] / fff[-1]
    threads = timing.get("threads")
    ax.set_title(f"batch {timing['batch_size']}, input {timing['input_width']}"
                 f"{f', {threads} thread' + ('s' if threads != 1 else '') if threads else ''}: "
                 f"×{speedup:.1f} at width {width[-1]:,}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return ax


# ------------------------------------------------------------------------------------------- snapshots


class SnapshotRecorder:
    """A ``train(..., callback=...)`` callback that keeps copies of the weights every ``every`` epochs.

    Examples
    --------
    >>> recorder = SnapshotRecorder(model)          # records the initial weights as epoch 0
    >>> history = fffcpu.train(model, X, y, epochs=30, callback=recorder)
    >>> recorder.model_at(10)                       # a copy of the model after 10 epochs

    Attributes
    ----------
    epochs : list of int (0 = before training)
    params : list of dict name -> ndarray
    metrics : list of dict (the history's last values at that epoch; empty for epoch 0)
    """

    def __init__(self, model=None, every: int = 1):
        self.every = check_positive_int(every, "every")
        self.epochs, self.params, self.metrics = [], [], []
        self._template = None
        if model is not None:
            self._record(0, {}, model)

    def _record(self, epoch: int, metrics: dict, model) -> None:
        self._template = model
        self.epochs.append(epoch)
        self.params.append({name: p.copy() for name, p in model.params.items()})
        self.metrics.append(dict(metrics))

    def __call__(self, epoch, history, model) -> None:
        done = epoch + 1
        if done % self.every == 0:
            self._record(done, history.last(), model)

    def __len__(self) -> int:
        return len(self.epochs)

    def model_at(self, epoch: int):
        """A copy of the model with the weights recorded after ``epoch`` epochs."""
        if epoch not in self.epochs:
            raise ValueError(f"no snapshot after {epoch} epochs; recorded epochs are {self.epochs}")
        clone = self._template.copy()
        clone.set_params(self.params[self.epochs.index(epoch)])
        return clone
