"""Plots (fffcpu.viz) and widget builders (fffcpu.widgets): checked on small models for what they draw."""

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.path import Path  # noqa: E402

import fffcpu  # noqa: E402
from fffcpu import tree, viz  # noqa: E402
from fffcpu.datasets import two_moons  # noqa: E402

pytest.importorskip("ipywidgets")
from fffcpu import widgets as fw  # noqa: E402

BOX = (-1.5, 1.5, -1.5, 1.5)


@pytest.fixture(autouse=True)
def _no_show_and_close(monkeypatch):
    """No plotting function may call plt.show(); close every figure after each test."""
    def refuse(*args, **kwargs):
        raise AssertionError("plt.show() was called")

    monkeypatch.setattr(plt, "show", refuse)
    yield
    plt.close("all")


def model2d(depth, seed=0, leaf_width=2, output_width=2):
    return fffcpu.FFF(2, leaf_width, output_width, depth, seed=seed, dtype="float64")


def gids(ax, prefix):
    artists = list(ax.patches) + list(ax.lines) + list(ax.images) + list(ax.texts) + list(ax.collections)
    return sorted(a.get_gid() for a in artists if a.get_gid() and a.get_gid().startswith(prefix))


def artist(ax, gid):
    found = [a for a in list(ax.patches) + list(ax.lines) + list(ax.images) if a.get_gid() == gid]
    assert len(found) == 1, f"expected one artist {gid!r}, found {len(found)}"
    return found[0]


# ------------------------------------------------------------------------------------------ routing math


@pytest.mark.parametrize("depth", [0, 1, 3, 5])
def test_route_details_agree_with_the_model(depth):
    model = fffcpu.FFF(5, 3, 4, depth, seed=depth)
    x = np.random.default_rng(depth).standard_normal(5)
    info = viz.route_details(model, x)
    assert info["leaf"] == model.route(x[None])[0]
    assert np.isclose(info["leaf_reach"].sum(), 1.0)
    model.forward(x[None])
    np.testing.assert_allclose(info["leaf_reach"], model._cache["reach_levels"][-1][0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(info["soft"], model.predict_soft(x[None])[0])
    np.testing.assert_allclose(info["hard"], model.predict(x[None])[0])
    assert len(info["path"]) == depth
    if depth:
        assert np.array_equal(info["path"], tree.path_nodes(info["leaf"], depth))
    with pytest.raises(ValueError, match="input_width=5"):
        viz.route_details(model, np.zeros(4))


@pytest.mark.parametrize("depth", [0, 1, 3, 5])
def test_mixture_weights_are_route_details_leaf_reach_per_row(depth):
    model = fffcpu.FFF(3, 2, 2, depth, seed=depth)
    X = np.random.default_rng(depth).standard_normal((7, 3))
    weights = viz.mixture_weights(model, X)
    assert weights.shape == (7, 2 ** depth)
    for x, row in zip(X, weights):
        np.testing.assert_allclose(row, viz.route_details(model, x)["leaf_reach"], rtol=1e-12)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match=r"X must have shape \(n, 3\)"):
        viz.mixture_weights(model, X[:, :2])


def test_leaf_colors_are_distinct():
    for n in (1, 2, 8, 16, 20, 64):
        colors = viz.leaf_colors(n)
        assert colors.shape == (n, 4)
        assert len({tuple(np.round(c, 4)) for c in colors}) == n


# ---------------------------------------------------------------------------------------------- the tree


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_plot_tree_highlights_the_hard_path(depth):
    model = fffcpu.FFF(3, 2, 2, depth, seed=1)
    x = np.array([0.3, -1.2, 0.8])
    ax = viz.plot_tree(model, x)
    leaf = int(model.route(x[None])[0])
    nodes_xy, leaves_xy = viz.tree_layout(depth)
    expected = np.vstack([nodes_xy[tree.path_nodes(leaf, depth)], leaves_xy[leaf]])
    np.testing.assert_allclose(np.column_stack(artist(ax, "hard-path").get_data()), expected)
    assert len(gids(ax, "node-")) - len(gids(ax, "node-label")) == model.n_nodes
    assert len([g for g in gids(ax, "leaf-") if not g.startswith("leaf-label")]) == model.n_leaves
    assert len(gids(ax, "edge-")) == 2 * model.n_nodes
    assert f"leaf {leaf}" in ax.get_title()
    # the highlighted leaf is outlined in red, the others are not
    red = matplotlib.colors.to_rgba("crimson")
    outlined = [int(line.get_gid().split("-")[1]) for line in ax.lines
                if (line.get_gid() or "").startswith("leaf-")
                and np.allclose(matplotlib.colors.to_rgba(line.get_markeredgecolor()), red)]
    assert outlined == [leaf]
    # soft reach: the leaf labels are the mixture weights in percent and add up to about 100
    if depth <= 4:
        labels = [t for t in ax.texts if (t.get_gid() or "").startswith("leaf-label")]
        assert len(labels) == model.n_leaves
        assert abs(sum(float(t.get_text().rstrip("%")) for t in labels) - 100) <= model.n_leaves * 0.5 + 0.01


@pytest.mark.parametrize("depth, seed, point", [(2, 0, (0.5, -0.3)), (3, 3, (0.2, 0.3)), (3, 1, (-1.0, 1.2)),
                                                 (4, 2, (1.1, 0.9)), (5, 5, (0.5, -0.3)), (6, 0, (-0.4, 0.8))])
def test_plot_tree_labels_every_path_node_off_the_red_path(depth, seed, point):
    """Each node of the hard path carries z and p (up to depth 6), and no label sits on the red path or on
    another label."""
    model = fffcpu.FFF(2, 4, 2, depth, seed=seed)
    fig, ax = plt.subplots(figsize=(7.4, 3.9), layout="constrained")
    viz.plot_tree(model, np.array(point), ax=ax)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if (t.get_gid() or "").startswith("node-label-")]
    path = [int(n) for n in viz.route_details(model, np.array(point))["path"]]
    assert set(path) <= {int(t.get_gid().rsplit("-", 1)[1]) for t in labels}
    assert all(t.get_zorder() > artist(ax, "hard-path").get_zorder() for t in labels)
    xy = ax.transData.transform(np.column_stack(artist(ax, "hard-path").get_data()))
    along = np.concatenate([np.linspace(a, b, 400) for a, b in itertools.pairwise(xy)])
    boxes = [t.get_window_extent(renderer).padded(1.0) for t in labels]  # 1 px: half the path's width
    for text, box in zip(labels, boxes):
        on_box = ((along[:, 0] > box.x0) & (along[:, 0] < box.x1) & (along[:, 1] > box.y0) & (along[:, 1] < box.y1))
        assert not on_box.any(), f"{text.get_text()!r} lies on the hard path"
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two node labels overlap"


def test_plot_tree_edge_widths_follow_the_soft_reach():
    model = fffcpu.FFF(2, 2, 2, 2, seed=3)
    x = np.array([0.4, 0.1])
    info = viz.route_details(model, x)
    ax = viz.plot_tree(model, x)
    reach = np.concatenate([info["node_reach"], info["leaf_reach"]])
    for child in range(1, 7):
        parent = (child - 1) // 2
        assert artist(ax, f"edge-{parent}-{child}").get_linewidth() == pytest.approx(0.6 + 5.0 * reach[child])


def test_plot_tree_without_input_and_depth_zero():
    ax = viz.plot_tree(fffcpu.FFF(2, 4, 1, 0, seed=0), np.zeros(2))
    assert gids(ax, "hard-path") == [] and "leaf 0" in ax.get_title()
    fig, ax2 = plt.subplots()
    assert viz.plot_tree(fffcpu.FFF(2, 4, 1, 3, seed=0), ax=ax2) is ax2
    assert "depth 3" in ax2.get_title()


# ----------------------------------------------------------------------------------- 2-D region partitions


@pytest.mark.parametrize("depth, seed", [(1, 0), (3, 1), (4, 2), (6, 3)])
def test_partition_polygons_contain_exactly_their_points(depth, seed):
    model = model2d(depth, seed)
    model.params["node_weights"] *= 3  # sharper, more varied cuts inside the box
    leaves, segments = viz.partition_2d(model, BOX)
    area = sum(viz._area(p) for p in leaves.values())
    assert area == pytest.approx(9.0, rel=1e-9)
    points = np.random.default_rng(seed).uniform(-1.5, 1.5, (3000, 2))
    routed = model.route(points)
    assert set(routed) <= set(leaves)
    for leaf, poly in leaves.items():
        inside = Path(poly).contains_points(points, radius=-1e-9)
        assert np.all(routed[inside] == leaf)
    w, b = model.params["node_weights"], model.params["node_biases"]
    for node, seg in segments.items():
        np.testing.assert_allclose(seg @ w[node] + b[node], 0, atol=1e-9)  # on the node's hyperplane
        # and inside the node's own region: a point just beside the midpoint routes through the node
        mid = seg.mean(axis=0)
        leaf = model.route(mid[None])[0]
        assert node in tree.path_nodes(leaf, depth)


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_plot_regions_draws_one_region_per_leaf_reached(depth):
    model = model2d(depth, seed=depth)
    model.params["node_weights"] *= 3
    ax = viz.plot_regions(model, extent=BOX)
    drawn = {int(g.split("-")[1]) for g in gids(ax, "region-")}
    gx, gy = np.meshgrid(np.linspace(-1.5, 1.5, 400), np.linspace(-1.5, 1.5, 400))
    reached = set(np.unique(model.route(np.column_stack([gx.ravel(), gy.ravel()]))))
    leaves, segments = viz.partition_2d(model, BOX)
    assert reached <= drawn
    big = {k for k, p in leaves.items() if viz._area(p) > 0.01}  # the grid cannot miss these
    assert big <= reached
    assert f"{len(drawn)} of {model.n_leaves} leaves" in ax.get_title()
    assert {int(g.split("-")[1]) for g in gids(ax, "hyperplane-")} == set(segments)
    # each region's number, above the hyperplanes and any points, with a halo that keeps it legible on them
    numbers = [t for t in ax.texts if (t.get_gid() or "").startswith("leaf-number-")]
    assert sorted(int(t.get_gid().rsplit("-", 1)[1]) for t in numbers) == sorted(drawn)
    assert all(t.get_text() == t.get_gid().rsplit("-", 1)[1] and t.get_path_effects() for t in numbers)
    assert min(t.get_zorder() for t in numbers) > max(a.get_zorder() for a in ax.lines + ax.collections)


def test_region_plot_titles_count_leaf_regions_in_view_and_leaves_with_points():
    X, y = two_moons(300, noise=0.15, seed=0)
    model = model2d(3, seed=1)  # untrained: 7 leaf regions cross the plotted rectangle, 4 of them hold points
    in_view = len(viz.partition_2d(model, viz._extent_of(X))[0])
    receiving = len(np.unique(model.route(X)))
    assert (in_view, receiving) == (7, 4)
    title = viz.plot_regions(model, X, y).get_title()
    assert "7 of 8 leaves in view" in title and "4 receive the points" in title
    assert viz.plot_regions(model).get_title() == f"hard regions: {len(viz.partition_2d(model, BOX)[0])} of 8 " \
                                                  "leaves in view"


def test_region_plots_keep_class_colours_apart_from_leaf_colours():
    """Points in strong class colours, with a legend; regions pale and, up to 8 leaves, of other hues than the
    first two classes; the same class colours in the stacked leaf-usage bars."""
    X, y = two_moons(200, seed=0)
    model = model2d(3, seed=1)
    classes = viz.class_colors(2)
    for mode in ("hard", "soft", "class"):
        ax = viz.plot_regions(model, X, y, mode=mode)
        points = next(c for c in ax.collections if c.get_gid() == "points")
        np.testing.assert_allclose(points.get_facecolors(), classes[y])
        legend = ax.get_legend()
        assert legend is not None and legend.get_gid() == "class-legend"
        assert [t.get_text() for t in legend.get_texts()] == ["class 0", "class 1"]
        np.testing.assert_allclose([matplotlib.colors.to_rgba(h.get_markerfacecolor()) for h in
                                    legend.legend_handles], classes)
    regions = viz.region_colors(8)
    assert regions.min() >= 1 - viz.REGION_TINT - 1e-12  # mostly white
    assert classes[:, :3].min(axis=1).max() < 0.2  # strong: one channel near 0
    for leaf in viz.leaf_colors(8):
        assert not any(np.allclose(leaf, c) for c in classes), "a leaf has the colour of a class"
    ax = viz.plot_regions(model, X, y)
    for k in viz.partition_2d(model, viz._extent_of(X))[0]:
        np.testing.assert_allclose(artist(ax, f"region-{k}").get_facecolor()[:3], regions[k])
    image = np.asarray(artist(viz.plot_regions(model, mode="class", resolution=20), "class-image").get_array())
    pale_classes = 1 - viz.REGION_TINT * (1 - classes[:, :3])
    assert np.abs(image.reshape(-1, 1, 3) - pale_classes[None]).sum(axis=2).min(axis=1).max() < 1e-9
    bars = viz.plot_leaf_usage(model, X, y)
    for c in (0, 1):
        patches = [p for p in bars.patches if p.get_gid() == f"usage-class-{c}"]
        assert patches and all(np.allclose(p.get_facecolor(), classes[c]) for p in patches)


def test_plot_regions_soft_mixture_blends_and_hardens():
    model = model2d(2, seed=5)
    ax = viz.plot_regions(model, mode="soft", extent=BOX, resolution=50)
    soft_img = np.asarray(artist(ax, "soft-mixture").get_array())
    assert soft_img.shape == (50, 50, 3)
    # With weights scaled up the sigmoids become steps: the soft image turns into flat leaf colours.
    hard = model.copy()
    for key in ("node_weights", "node_biases"):
        hard.params[key] *= 1e4
    img = np.asarray(artist(viz.plot_regions(hard, mode="soft", extent=BOX, resolution=50), "soft-mixture").get_array())
    colors = viz.region_colors(4)
    distances = np.abs(img.reshape(-1, 1, 3) - colors[None]).sum(axis=2).min(axis=1)
    assert np.quantile(distances, 0.95) < 1e-3
    soft_distances = np.abs(soft_img.reshape(-1, 1, 3) - colors[None]).sum(axis=2).min(axis=1)
    assert np.quantile(soft_distances, 0.5) > 1e-2  # the untrained tree really is undecided


def test_plot_regions_points_class_mode_and_errors():
    X, y = two_moons(200, seed=0)
    model = model2d(3)
    ax = viz.plot_regions(model, X, y, mode="class")
    assert artist(ax, "class-image") is not None
    points = [c for c in ax.collections if c.get_gid() == "points"]
    assert len(points) == 1 and len(points[0].get_offsets()) == 200
    with pytest.raises(ValueError, match="input_width=2"):
        viz.plot_regions(fffcpu.FFF(3, 2, 2, 2))
    with pytest.raises(ValueError, match="mode"):
        viz.plot_regions(model, mode="fuzzy")
    with pytest.raises(ValueError, match=r"X must hold 2-D points, shape \(n, 2\), got shape \(200, 3\)"):
        viz.plot_regions(model, np.column_stack([X, X[:, 0]]))
    with pytest.raises(ValueError, match=r"y must hold one label per point, shape \(200,\), got shape \(3,\)"):
        viz.plot_regions(model, X, y[:3])
    for extent in ((1, 0, 0, 1), (0, 1, 2, 2), (0, 1, 0), (0, np.inf, 0, 1)):
        with pytest.raises(ValueError, match="extent must be"):
            viz.plot_regions(model, extent=extent)
    with pytest.raises(ValueError, match="extent must be"):
        viz.partition_2d(model, (0, 1, 1, 0))


def test_tree_plots_refuse_other_models_and_batches():
    ultra = fffcpu.UltraFFF(2, 2, 2, seed=0)
    calls = (lambda m: viz.plot_tree(m), lambda m: viz.plot_regions(m), lambda m: viz.route_details(m, [0, 0]),
             lambda m: viz.plot_leaf_usage(m), lambda m: viz.plot_leaf_montage(m, np.zeros((3, 4)), image_shape=(2, 2)))
    for call in calls:
        with pytest.raises(TypeError, match="needs an fffcpu.FFF .* got UltraFFF; an UltraFFF's nodes are single"):
            call(ultra)
        with pytest.raises(TypeError, match=r"needs an fffcpu.FFF \(hyperplane nodes and leaf networks\), got FF$"):
            call(fffcpu.FF(2, 4, 2))
    model = model2d(2)
    with pytest.raises(ValueError, match=r"x must be one input, of shape \(2,\) or \(1, 2\), got shape \(3, 2\)"):
        viz.plot_tree(model, np.zeros((3, 2)))
    assert viz.route_details(model, np.zeros((1, 2)))["leaf"] == viz.route_details(model, np.zeros(2))["leaf"]
    with pytest.raises(ValueError, match="history must be the History that fffcpu.train returns"):
        viz.plot_history({"accuracy": [0.5]})


# ------------------------------------------------------------------------------------- training curves


def train_small(depth=3, epochs=4, callback=None, seed=0):
    X, y = two_moons(200, seed=seed)
    model = fffcpu.FFF(2, 2, 2, depth, seed=seed)
    history = fffcpu.train(model, X, y, lr=0.03, epochs=epochs, batch_size=32, hardening=1.0,
                           validation=(X[:50], y[:50]), progress=False, seed=seed, callback=callback)
    return model, history, X, y


def test_plot_history_draws_loss_entropy_and_accuracy():
    _, history, _, _ = train_small()
    axes = viz.plot_history(history)
    assert len(axes) == 3
    assert [ax.get_title() for ax in axes] == ["loss", "node entropy (hardening term)", "soft vs hard accuracy"]
    np.testing.assert_allclose(axes[0].lines[0].get_ydata(), history["loss"])
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), history["entropy"])
    labels = sorted(line.get_label() for line in axes[2].lines)
    assert labels == ["train hard", "train soft", "val hard", "val soft"]
    with pytest.raises(ValueError, match="3 panels"):
        viz.plot_history(history, axes=plt.subplots(1, 2)[1])


def test_plot_leaf_usage_counts_routes():
    model, _, X, y = train_small()
    counts = np.bincount(model.route(X), minlength=model.n_leaves)
    ax = viz.plot_leaf_usage(model, X)
    np.testing.assert_allclose([p.get_height() for p in ax.patches], counts)
    assert f"{np.sum(counts > 0)} of {model.n_leaves} leaves used" in ax.get_title()
    ax = viz.plot_leaf_usage(model, X, y)  # stacked by class
    heights = np.zeros(model.n_leaves)
    for patch in ax.patches:
        heights[int(round(patch.get_x() + patch.get_width() / 2))] += patch.get_height()
    np.testing.assert_allclose(heights, counts)
    ax = viz.plot_leaf_usage(model)  # the training counters
    np.testing.assert_allclose([p.get_height() for p in ax.patches], model.usage["leaf_hard"])


def test_plot_leaf_montage_one_row_per_used_leaf():
    rng = np.random.default_rng(0)
    X = rng.random((120, 16))
    y = rng.integers(0, 3, 120)
    model = fffcpu.FFF(16, 2, 3, 3, seed=0)
    ax = viz.plot_leaf_montage(model, X, y, image_shape=(4, 4), per_leaf=5)
    used = np.unique(model.route(X))
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == len(used)
    for leaf, label in zip(used, labels):
        assert label.startswith(f"leaf {leaf} (n={np.sum(model.route(X) == leaf)})")
    with pytest.raises(ValueError, match="pixels"):
        viz.plot_leaf_montage(model, X, image_shape=(3, 3))


# ------------------------------------------------------------------------------------- neuron savings


def test_plot_sizes_lines_are_the_papers_sizes():
    ax = viz.plot_sizes(8, 10, depth=4)
    d = np.arange(11)
    np.testing.assert_array_equal(artist(ax, "training-width").get_ydata(), 2 ** d * 8)
    np.testing.assert_array_equal(artist(ax, "inference-size").get_ydata(), d + 8)
    assert ax.get_title() == "depth 4: inference size 12 of training width 128"
    ax = viz.plot_sizes(max_depth=12, depth=11, ultra=True)
    assert ax.get_title() == "depth 11: 12 of 4,095 neurons on the path"
    assert ax.get_yscale() == "log"


@pytest.mark.parametrize("depth, leaf_width, note", [(0, 1, "1 of 1 (100%)"), (1, 1, "2 of 2 (100%)"),
                                                     (7, 1, "8 of 128 (6.25%)"),
                                                     (16, 256, "272 of 16,777,216 (0.00162%)")])
def test_plot_sizes_annotation_reads_well_and_stays_in_the_figure(depth, leaf_width, note):
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    viz.plot_sizes(leaf_width, 16, depth=depth, ax=ax)
    fig.canvas.draw()
    marked = [t for t in ax.texts if t.get_gid() == "marked-sizes"]
    assert len(marked) == 1 and marked[0].get_text() == note
    inside, box = ax.get_window_extent(), marked[0].get_window_extent()
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
    title = ax.title.get_window_extent()
    assert 0 <= title.x0 and title.x1 <= fig.bbox.x1


def test_inference_timing_and_plot():
    timing = viz.inference_timing([1, 3], input_width=16, output_width=4, batch_size=8, repeats=2)
    assert timing["training_width"] == [2, 8] and timing["inference_size"] == [2, 4]
    assert all(t > 0 for t in timing["fff_seconds"] + timing["ff_seconds"])
    ax = viz.plot_inference_time(timing)
    np.testing.assert_allclose(artist(ax, "fff-time").get_ydata(), np.array(timing["fff_seconds"]) * 1e6 / 8)
    assert ax.get_xscale() == "log" and "batch 8, input 16, 1 thread:" in ax.get_title()
    import numba

    before = numba.get_num_threads()
    viz.inference_timing([1], input_width=4, output_width=2, batch_size=2, repeats=1, threads=1)
    assert numba.get_num_threads() == before  # restored


def test_measure_seconds_measures():
    import time

    assert viz.measure_seconds(time.sleep, 0.002, repeats=3, min_time=0.001) >= 0.0019


def test_snapshot_recorder_keeps_weights_per_epoch():
    recorder = viz.SnapshotRecorder(fffcpu.FFF(2, 2, 2, 3, seed=0), every=2)
    model, history, _, _ = train_small(epochs=4, callback=recorder)
    assert recorder.epochs == [0, 2, 4]
    assert recorder.metrics[2]["loss"] == history["loss"][3]
    final = recorder.model_at(4)
    for name in model.params:
        np.testing.assert_array_equal(final.params[name], model.params[name])
    assert not np.array_equal(recorder.model_at(0).params["w1s"], model.params["w1s"])
    with pytest.raises(ValueError, match="recorded epochs"):
        recorder.model_at(3)


# --------------------------------------------------------------------------------------------- widgets


def test_routing_explorer_follows_the_sliders():
    explorer = fw.RoutingExplorer(depth=2, point=(0.5, -0.3))
    first_png = bytes(explorer.image.value)
    assert first_png.startswith(b"\x89PNG")
    for depth, point in [(3, (-1.0, 1.2)), (4, (1.1, 0.9)), (1, (-0.2, -1.4))]:
        explorer.depth.value = depth
        explorer.x1.value, explorer.x2.value = point
        model = explorer.model
        assert model.depth == depth
        leaf = int(model.route(np.array([point]))[0])
        assert explorer.details["leaf"] == leaf
        # the tree panel: 2**depth leaves, the red path ends at the routed leaf
        tree_ax = explorer.ax_tree
        assert len([g for g in gids(tree_ax, "leaf-") if not g.startswith("leaf-label")]) == 2 ** depth
        path_xy = np.column_stack(artist(tree_ax, "hard-path").get_data())
        np.testing.assert_allclose(path_xy[-1], viz.tree_layout(depth)[1][leaf])
        assert f"leaf {leaf}" in tree_ax.get_title()
        # the region panel: the star sits at the input
        np.testing.assert_allclose(np.ravel(artist(explorer.ax_regions, "input-point").get_data()), point)
        assert f"<b>leaf {leaf}</b>" in explorer.status.value
    assert bytes(explorer.image.value) != first_png
    explorer.regions.value = "soft"
    assert artist(explorer.ax_regions, "soft-mixture") is not None
    assert explorer._repr_mimebundle_()  # displayable


def test_routing_explorer_uses_the_given_models():
    built = []

    def factory(depth):
        built.append(depth)
        return fffcpu.FFF(2, 1, 3, depth, seed=7)

    explorer = fw.RoutingExplorer(factory, depth=1, max_depth=3)
    explorer.depth.value = 3
    explorer.x1.value = 0.0
    explorer.depth.value = 1
    assert built == [1, 3]  # cached per depth
    assert explorer.depth.max == 3
    assert "soft output (all 2 leaves, mixed)" in explorer.status.value and explorer.details["soft"].shape == (3,)
    explorer.depth.value = 0  # one leaf: nothing to mix
    assert "soft output (the one leaf)" in explorer.status.value
    # the star is drawn whole at the sliders' ends, on the axes' edge
    explorer.x1.value, explorer.x2.value = explorer.x1.max, explorer.x2.min
    assert not artist(explorer.ax_regions, "input-point").get_clip_on()


def test_routing_explorer_shows_all_of_its_data():
    X, y = two_moons(300, noise=0.15, seed=0)
    assert X[:, 0].min() < -1.5  # beyond the default square of an explorer without data
    explorer = fw.RoutingExplorer(depth=2, data=(X, y))
    (x0, x1), (y0, y1) = explorer.ax_regions.get_xlim(), explorer.ax_regions.get_ylim()
    assert x0 < X[:, 0].min() and X[:, 0].max() < x1 and y0 < X[:, 1].min() and X[:, 1].max() < y1
    assert explorer.x1.min < X[:, 0].min() and explorer.x1.max > X[:, 0].max()
    assert explorer.x2.min < X[:, 1].min() and explorer.x2.max > X[:, 1].max()
    assert fw.RoutingExplorer(extent=(-2, 2, -1, 1)).ax_regions.get_xlim() == (-2, 2)
    assert fw.RoutingExplorer().extent == BOX


def test_routing_explorer_names_both_sizes_and_renders_readable_text():
    explorer = fw.RoutingExplorer(depth=3)
    assert ("uses 7 of the model's 39 neurons (inference size d + ℓ = 3 + 4 of training size"
            in explorer.status.value)
    labels = [t for t in explorer.ax_tree.texts if (t.get_gid() or "").startswith("node-label-")]
    assert labels
    for text in labels + [explorer.ax_regions.title]:
        assert text.get_fontsize() * explorer.dpi / 72 >= 11, "text smaller than 11 pixels"


def _curves_stay_clear_of_the_legend(ax, history):
    """The curves panel of the 02 explorers: labelled axes, entropy in nats, a legend that covers no curve."""
    assert "accuracy" in ax.get_ylabel() and "nats" in ax.get_ylabel()
    entropy = [line for line in ax.lines if line.get_label() == "node entropy (nats)"]
    np.testing.assert_allclose(entropy[0].get_ydata(), history["entropy"])
    ax.figure.canvas.draw()
    box = ax.get_legend().get_window_extent()
    curves = [line for line in ax.lines if line.get_label() in ("soft accuracy", "hard accuracy",
                                                                 "node entropy (nats)")]
    assert len(curves) == 3
    for line in curves:
        xy = ax.transData.transform(np.column_stack(line.get_data()))
        inside = (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
        assert not inside.any(), f"the legend covers {line.get_label()!r}"


def test_hardening_explorer_curves_keep_the_legend_off_a_collapsed_run():
    X, y = two_moons(160, seed=1)
    explorer = fw.HardeningExplorer(X, y, depth=3, leaf_width=2, epochs=4)
    explorer.hardening.value = 30.0  # the tree collapses: accuracy flat in the middle, entropy near 0
    explorer.train_button.click()
    _curves_stay_clear_of_the_legend(explorer.ax_curves, explorer.history)
    assert "leaves receive training points" in explorer.status.value and "nats" in explorer.status.value


def _replay(epochs, hardening):
    """A depth-3 FFF trained on two moons with snapshots, its PartitionReplay and what built it."""
    X, y = two_moons(200, seed=0)
    model = fffcpu.FFF(2, 2, 2, 3, seed=0)
    recorder = viz.SnapshotRecorder(model)
    history = fffcpu.train(model, X, y, lr=0.05, epochs=epochs, batch_size=32, hardening=hardening, progress=False,
                           seed=0, callback=recorder)
    return fw.PartitionReplay(recorder, X, y, history=history), recorder, history, X, y


def test_partition_replay_curves_and_counts():
    replay, recorder, history, X, y = _replay(epochs=5, hardening=30.0)
    _curves_stay_clear_of_the_legend(replay.ax_curves, history)
    for epoch in (0, 5):
        replay.epoch.value = epoch
        snapshot = recorder.model_at(epoch)
        receiving = len(np.unique(snapshot.route(X)))
        in_view = len(viz.partition_2d(snapshot, replay.extent)[0])
        assert (f"{receiving} of 8 leaves receive training points ({in_view} leaf regions in view)"
                in replay.status.value)


def test_hardening_explorer_reports_a_failed_training_and_recovers():
    X, y = two_moons(160, seed=1)
    broken = X.copy()
    broken[3, 0] = np.nan
    explorer = fw.HardeningExplorer(broken, y, depth=2, leaf_width=2, epochs=2)
    explorer.train_button.click()  # a button callback must not leave the error in the Jupyter log only
    assert "Training failed" in explorer.status.value and "ValueError" in explorer.status.value
    assert "training…" not in explorer.status.value
    assert not explorer.train_button.disabled and explorer.model is None and explorer.results == []
    with pytest.raises(ValueError):
        explorer.train()  # called directly, train() raises
    explorer.X = X
    explorer.train_button.click()
    assert explorer.model is not None and "Training failed" not in explorer.status.value


def test_partition_replay_shows_the_chosen_epoch():
    replay, recorder, history, X, y = _replay(epochs=6, hardening=3.0)
    assert replay.epoch.options == tuple(range(7))
    assert replay.ax_hard.get_title() == "epoch 6: hard regions"
    for epoch in (0, 3):
        replay.epoch.value = epoch
        snapshot = recorder.model_at(epoch)
        drawn = {int(g.split("-")[1]) for g in gids(replay.ax_hard, "region-")}
        assert drawn == set(viz.partition_2d(snapshot, replay.extent)[0])
        assert replay.ax_hard.get_title() == f"epoch {epoch}: hard regions"
        assert replay.ax_soft.get_title() == f"epoch {epoch}: soft mixture"
        assert artist(replay.ax_curves, "epoch-marker").get_xdata()[0] == max(epoch, 0.5)
        hard = np.mean(snapshot.predict(X).argmax(1) == y)
        assert f"hard {hard:.1%}" in replay.status.value
    with pytest.raises(ValueError, match="no snapshots"):
        fw.PartitionReplay(viz.SnapshotRecorder(), X, y)


def test_hardening_explorer_trains_on_click():
    X, y = two_moons(160, seed=1)
    explorer = fw.HardeningExplorer(X, y, depth=2, leaf_width=2, epochs=3)
    assert explorer.model is None and "press" in explorer.status.value
    explorer.hardening.value = 10.0
    explorer.depth_slider.value = 3
    explorer.train_button.click()
    assert explorer.model is not None and explorer.model.depth == 3
    assert len(explorer.results) == 1 and explorer.results[0]["hardening"] == 10.0
    assert explorer.ax_hard.get_title().startswith("hard (h=10, leak=0)")
    drawn = {int(g.split("-")[1]) for g in gids(explorer.ax_hard, "region-")}
    assert drawn == set(viz.partition_2d(explorer.model, viz._extent_of(X))[0])
    hard = np.mean(explorer.model.predict(X).argmax(1) == y)
    assert explorer.results[0]["hard_acc"] == pytest.approx(hard)
    explorer.region_leak.value = 0.1
    explorer.localized.value = True
    explorer.train_button.click()
    assert explorer.model.region_leak == 0.1
    assert "leak=0.1, localized" in explorer.ax_hard.get_title()
    assert len(explorer.results) == 2 and not explorer.train_button.disabled


def test_sizes_explorer_reports_the_sizes():
    explorer = fw.SizesExplorer(depth=4, leaf_width=8)
    assert "= 128 neurons" in explorer.status.value and "4 + 8 = 12" in explorer.status.value
    explorer.depth.value = 7
    explorer.leaf_width.value = 1
    assert "inference size 8 of training width 128" in explorer.ax.get_title()
    explorer.kind.value = "UltraFFF"
    explorer.depth.value = 11
    assert "4,095 neurons in the tree, 12 on each path (0.293%)" in explorer.status.value
    assert explorer.leaf_width.disabled


def test_sizes_explorer_formats_small_and_large_trees():
    explorer = fw.SizesExplorer(depth=0, leaf_width=1)
    assert "training width 2^0·1 = 1 neuron;" in explorer.status.value
    assert "(100% of the training width; speed-up limit ×1.0)" in explorer.status.value
    explorer.depth.value, explorer.leaf_width.value = 16, 256
    assert "= 16,777,216 neurons; inference size 16 + 256 = 272 (0.00162% of the training width" in \
        explorer.status.value
    assert "×61,680.9" in explorer.status.value
    explorer.kind.value = "UltraFFF"
    explorer.depth.value = 0
    assert "1 neuron in the tree, 1 on each path (100%)" in explorer.status.value


def test_leaf_browser_shows_the_chosen_leaf():
    rng = np.random.default_rng(0)
    X = rng.random((150, 16))
    y = rng.integers(0, 4, 150)
    model = fffcpu.FFF(16, 2, 4, 3, seed=1)
    browser = fw.LeafBrowser(model, X, y, image_shape=(4, 4))
    routed = model.route(X)
    for leaf in browser.leaf.options:
        browser.leaf.value = leaf
        n = int(np.sum(routed == leaf))
        assert browser.ax_images.get_title().startswith(f"leaf {leaf}: {n} samples")
        heights = [p.get_height() for p in browser.ax_labels.patches]
        assert sum(heights) == n
        # each digit's bar in that digit's class colour, as in plot_leaf_usage's stacked bars
        np.testing.assert_allclose([p.get_facecolor() for p in browser.ax_labels.patches], viz.class_colors(4))


def test_more_argument_checks_name_the_argument():
    model = fffcpu.FFF(2, 2, 3, 2, seed=0)
    X = np.random.default_rng(0).normal(size=(20, 2))
    y = np.arange(20) % 3
    cases = [
        (lambda: viz.plot_history({"loss": [1.0]}), ValueError, "at least 'loss' and 'entropy'"),
        (lambda: viz.plot_history({"loss": [], "entropy": []}), ValueError, "one epoch or more"),
        (lambda: viz.plot_regions(model, mode="soft", resolution=-5), ValueError,
         "resolution must be an integer >= 2"),
        (lambda: viz.plot_regions(model, mode="class", resolution=2.5), TypeError, "resolution must be an integer"),
        (lambda: viz.plot_leaf_usage(model, X, y[:5]), ValueError,
         r"y must hold one label per sample of X, shape \(20,\)"),
        (lambda: viz.plot_leaf_usage(model, X, y, class_names=["a"]), ValueError, "must name the 3 classes of y"),
        (lambda: viz.plot_leaf_montage(model, X[0], image_shape=(1, 2)), ValueError, "X must be 2-D"),
        (lambda: viz.plot_leaf_montage(model, X, image_shape=(1, 2), per_leaf=-3), ValueError,
         "per_leaf must be an integer >= 1"),
        (lambda: viz.plot_leaf_montage(model, X, image_shape=(1, 2), leaves=[99, -1]), ValueError,
         r"leaves must be leaf indices in \[0, 4\)"),
        (lambda: viz.plot_sizes(ultra=True, max_depth=70), ValueError, "max_depth must be at most 61"),
        (lambda: viz.plot_sizes(depth="x"), TypeError, "depth must be an integer"),
        (lambda: viz.inference_timing([1], threads=0), ValueError, "threads must be an integer >= 1"),
        (lambda: viz.inference_timing([1], repeats=0), ValueError, "repeats must be an integer >= 1"),
        (lambda: viz.SnapshotRecorder(every="x"), TypeError, "every must be an integer >= 1"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    plt.close("all")


def test_widgets_check_their_arguments_instead_of_clamping_them():
    model = fffcpu.FFF(4, 2, 3, 2, seed=0)
    X, y = np.zeros((6, 4)), np.arange(6) % 3
    cases = [
        (lambda: fw.RoutingExplorer(depth=9, max_depth=5), ValueError, "depth must be at most max_depth=5"),
        (lambda: fw.RoutingExplorer(extent=(1, 0, 0, 1)), ValueError, "extent must be .* with xmin < xmax"),
        (lambda: fw.SizesExplorer(leaf_width=0), ValueError, "leaf_width must be an integer >= 1"),
        (lambda: fw.SizesExplorer(depth=20), ValueError, "depth must be at most max_depth=16"),
        (lambda: fw.LeafBrowser(fffcpu.UltraFFF(4, 3, 2, seed=0), X, y, image_shape=(2, 2)), TypeError,
         "LeafBrowser needs an fffcpu.FFF"),
        (lambda: fw.LeafBrowser(model, X, y, image_shape=(3, 3)), ValueError, r"X must be 2-D \(n_samples, 9\)"),
        (lambda: fw.LeafBrowser(model, X, y[:2], image_shape=(2, 2)), ValueError, "y must hold one label per sample"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
