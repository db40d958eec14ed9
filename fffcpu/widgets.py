"""Interactive explorers for the notebooks: ipywidgets controls around the plots of :mod:`fffcpu.viz`.

Each explorer owns a matplotlib ``Figure`` (``.fig``, drawn with the Agg canvas, never through pyplot) and shows it
as a PNG in an ``ipywidgets.Image``, so it works the same in JupyterLab, in VS Code, in a headless kernel and in
plain pytest: set a slider's ``.value`` or call a button's ``.click()``, then look at ``.fig``. Displaying an
explorer (last expression of a cell, or ``display(explorer)``) shows its controls, figure and status line.

=================== ======================== ===========================================================
explorer            notebook                 controls
=================== ======================== ===========================================================
RoutingExplorer     01_what_is_an_fff        input point (x1, x2), depth, hard/soft regions
PartitionReplay     02_regions               epoch (over the snapshots of a SnapshotRecorder)
HardeningExplorer   02_regions               hardening, region leak, localized updates, depth, leaf width; Train
SizesExplorer       03_neuron_savings        depth, leaf width, FFF / UltraFFF
LeafBrowser         04_digits                leaf
=================== ======================== ===========================================================
"""

from __future__ import annotations

import contextlib
import html
import io

import numpy as np

try:
    import ipywidgets as widgets
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as err:  # pragma: no cover - ipywidgets and matplotlib are in the viz/notebooks/test extras
    raise ImportError(f"fffcpu.widgets needs ipywidgets and matplotlib ({err.name} is missing): "
                      "pip install 'fffcpu[viz]'") from err

from . import tree, viz
from ._validation import check_positive_int

__all__ = ["RoutingExplorer", "PartitionReplay", "HardeningExplorer", "SizesExplorer", "LeafBrowser"]


def _check_slider_value(value, name: str, maximum: int) -> int:
    value = check_positive_int(value, name, minimum=0)
    if value > maximum:
        raise ValueError(f"{name} must be at most max_depth={maximum} (the slider's range), got {value}")
    return value


class _Explorer:
    """A figure rendered to PNG in an ``ipywidgets.Image``, under a row of controls and above a status line.

    Figures are sized in inches for ``dpi`` = 100, so that their text (8-10 points) renders at 11-14 pixels.
    """

    dpi = 100

    def __init__(self, controls, figsize):
        self.fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(self.fig)
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", height="auto"))
        self.status = widgets.HTML()
        self.controls = list(controls)
        self.widget = widgets.VBox([widgets.HBox(self.controls, layout=widgets.Layout(flex_flow="row wrap")),
                                    self.image, self.status])
        self.renders = 0

    def _observe(self, *controls):
        for control in controls:
            control.observe(lambda change: self.update(), names="value")

    def render(self) -> None:
        """Redraw the PNG from ``self.fig``."""
        buffer = io.BytesIO()
        self.fig.draw_without_rendering()  # a first layout pass, so that titles above legends fit the figure
        self.fig.savefig(buffer, format="png", dpi=self.dpi)
        self.image.value = buffer.getvalue()
        self.renders += 1

    def update(self) -> None:  # pragma: no cover - every explorer defines it
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _slider_style():
    return {"description_width": "initial"}


def _vector(values) -> str:
    return "[" + ", ".join(f"{v:+.3f}" for v in np.ravel(values)) + "]"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _training_curves(ax, history, *, epoch=None, title=None) -> None:
    """Soft and hard training accuracy and the mean node entropy (nats) per epoch, on one axis.

    The y range leaves head room above 1 for the legend, so that it never covers a curve: accuracy is at most 1,
    the entropy at most ln 2.
    """
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["train_acc_soft"], "--", color="tab:blue", label="soft accuracy")
    ax.plot(epochs, history["train_acc_hard"], "-", color="tab:blue", label="hard accuracy")
    ax.plot(epochs, history["entropy"], color="tab:purple", label="node entropy (nats)")
    ax.axhline(np.log(2), color="tab:purple", ls=":", lw=0.8, label="ln 2: undecided")
    if epoch is not None:
        ax.axvline(max(epoch, 0.5), color="crimson", lw=1.5, gid="epoch-marker")
    ax.set(xlabel="epoch", ylabel="training accuracy; node entropy (nats)", ylim=(0, 1.32),
           yticks=np.linspace(0, 1, 6), title=title)
    ax.legend(fontsize=8, loc="upper center", ncol=2, frameon=False, borderaxespad=0.2, handlelength=1.6,
              columnspacing=1.0)


# ------------------------------------------------------------------------------------------------- 01


class RoutingExplorer(_Explorer):
    """One input routed through a small 2-D FFF: its place among the regions, and its path down the tree.

    Parameters
    ----------
    model_for_depth : callable depth -> FFF with input_width=2, optional
        Builds (or trains) the model shown for each depth; called once per depth and cached. The default
        builds an untrained ``FFF(2, 4, 2, depth, seed=depth)``.
    depth : int
        Initial depth.
    max_depth : int
        Largest depth on the slider.
    point : (float, float)
        Initial input.
    data : (X, y), optional
        Points drawn on the region plot.
    extent : (xmin, xmax, ymin, ymax), optional
        The plotted rectangle and the range of the sliders. Default: the bounding box of the data plus a margin
        (the same as :func:`fffcpu.viz.plot_regions`), or [-1.5, 1.5]^2 without data.

    Attributes
    ----------
    x1, x2, depth : ipywidgets sliders; regions : ToggleButtons ("hard", "soft")
    model : the FFF shown; details : :func:`fffcpu.viz.route_details` of the current point
    ax_regions, ax_tree : the two Axes of ``fig``
    """

    def __init__(self, model_for_depth=None, *, depth: int = 2, max_depth: int = 5, point=(0.5, -0.3), data=None,
                 extent=None):
        if model_for_depth is None:
            from .models import FFF

            def model_for_depth(d):
                return FFF(2, 4, 2, d, seed=d)

        max_depth = check_positive_int(max_depth, "max_depth", minimum=0)
        depth = _check_slider_value(depth, "depth", max_depth)
        self._factory, self._models = model_for_depth, {}
        self.data = data
        self.extent = viz._extent_of(viz._check_points(*data) if data is not None else None, extent)
        x0, x1, y0, y1 = self.extent
        style = _slider_style()
        self.x1 = widgets.FloatSlider(value=point[0], min=x0, max=x1, step=0.01, description="x₁", style=style,
                                      continuous_update=False)
        self.x2 = widgets.FloatSlider(value=point[1], min=y0, max=y1, step=0.01, description="x₂", style=style,
                                      continuous_update=False)
        self.depth = widgets.IntSlider(value=depth, min=0, max=max_depth, description="depth", style=style,
                                       continuous_update=False)
        self.regions = widgets.ToggleButtons(options=["hard", "soft"], value="hard", description="regions",
                                             style=style)
        super().__init__([self.x1, self.x2, self.depth, self.regions], figsize=(9.6, 3.9))
        self.ax_regions, self.ax_tree = self.fig.subplots(1, 2, width_ratios=[1, 1.6])
        self._observe(self.x1, self.x2, self.depth, self.regions)
        self.update()

    @property
    def model(self):
        d = self.depth.value
        if d not in self._models:
            self._models[d] = self._factory(d)
        return self._models[d]

    @property
    def point(self) -> np.ndarray:
        return np.array([self.x1.value, self.x2.value])

    def update(self) -> None:
        model, point = self.model, self.point
        self.details = viz.route_details(model, point)
        for ax in (self.ax_regions, self.ax_tree):
            ax.clear()
        X, y = self.data if self.data is not None else (None, None)
        viz.plot_regions(model, X, y, ax=self.ax_regions, mode=self.regions.value, extent=self.extent,
                         point_size=6)
        self.ax_regions.plot(*point, marker="*", ms=16, color="gold", markeredgecolor="black", zorder=5,
                             gid="input-point", clip_on=False)  # whole at the sliders' ends, on the axes' edge
        viz.plot_tree(model, point, ax=self.ax_tree)
        self.render()
        leaf = self.details["leaf"]
        turns = " → ".join("right" if r else "left" for r in tree.path_directions(leaf, model.depth)) or "no decision"
        self.status.value = (
            f"<b>x = ({point[0]:+.2f}, {point[1]:+.2f})</b>: {html.escape(turns)} → <b>leaf {leaf}</b>; "
            f"it uses {model.inference_size} of the model's {tree.training_size(model.depth, model.leaf_width)} "
            f"neurons (inference size d + ℓ = {model.depth} + {model.leaf_width} of training size "
            f"(2<sup>d</sup> − 1) + 2<sup>d</sup>·ℓ = {model.n_nodes} + {model.training_width})<br>"
            f"soft output ({'the one leaf' if model.n_leaves == 1 else f'all {model.n_leaves} leaves, mixed'}) "
            f"{_vector(self.details['soft'])}<br>"
            f"hard output (leaf {leaf} only) {_vector(self.details['hard'])}"
        )


# ------------------------------------------------------------------------------------------------- 02


class PartitionReplay(_Explorer):
    """Replay training: the hard regions, the soft mixture and the curves at any recorded epoch.

    Parameters
    ----------
    recorder : :class:`fffcpu.viz.SnapshotRecorder` filled during ``fffcpu.train(..., callback=recorder)``
    X, y : the training points (n, 2) and labels
    history : History, optional
        Adds a third panel with the hard/soft training accuracy and the mean node entropy (nats), and a marker
        at the epoch.

    The status line gives the accuracies at the epoch, the number of leaves that receive training points (hard
    routing) and the number of leaf regions inside the plotted rectangle (which can be more: a region may hold
    no point).

    Attributes
    ----------
    epoch : SelectionSlider over the recorded epochs
    ax_hard, ax_soft (, ax_curves) : the Axes of ``fig``
    """

    def __init__(self, recorder, X, y, *, history=None, extent=None):
        if len(recorder) == 0:
            raise ValueError("the recorder holds no snapshots: pass it to fffcpu.train(..., callback=recorder)")
        self.recorder, self.X, self.y, self.history = recorder, np.asarray(X), np.asarray(y), history
        self.extent = viz._extent_of(self.X, extent)
        self.epoch = widgets.SelectionSlider(options=list(recorder.epochs), value=recorder.epochs[-1],
                                             description="epoch", style=_slider_style(), continuous_update=False)
        panels = 3 if history is not None else 2
        super().__init__([self.epoch], figsize=(3.5 * panels, 3.8))
        axes = self.fig.subplots(1, panels)
        self.ax_hard, self.ax_soft = axes[0], axes[1]
        self.ax_curves = axes[2] if panels == 3 else None
        self._observe(self.epoch)
        self.update()

    def update(self) -> None:
        epoch = self.epoch.value
        model = self.recorder.model_at(epoch)
        self.model = model
        for ax in self.fig.axes:
            ax.clear()
        leaves_used = len(np.unique(model.route(self.X)))
        in_view = len(viz.partition_2d(model, self.extent)[0])
        viz.plot_regions(model, self.X, self.y, ax=self.ax_hard, mode="hard", extent=self.extent,
                         title=f"epoch {epoch}: hard regions", point_size=5)
        viz.plot_regions(model, self.X, self.y, ax=self.ax_soft, mode="soft", extent=self.extent,
                         title=f"epoch {epoch}: soft mixture", point_size=5, legend=False)
        hard = float(np.mean(model.predict(self.X).argmax(1) == self.y))
        soft = float(np.mean(model.predict_soft(self.X).argmax(1) == self.y))
        if self.ax_curves is not None:
            _training_curves(self.ax_curves, self.history, epoch=epoch, title="training")
        self.render()
        self.status.value = (f"epoch {epoch}: training accuracy soft {soft:.1%}, hard {hard:.1%}; "
                             f"{leaves_used} of {model.n_leaves} leaves receive training points "
                             f"({in_view} leaf regions in view)")


class HardeningExplorer(_Explorer):
    """Train a small 2-D FFF with the press of a button and compare soft and hard behaviour.

    Parameters
    ----------
    X, y : training points (n, 2) and labels
    validation : (X_val, y_val), optional
    depth, leaf_width, epochs, lr, batch_size : initial settings
    seed : int

    Attributes
    ----------
    hardening, region_leak : SelectionSliders; localized : Checkbox (LocalAdam with ``local_batch_size``);
    depth_slider, leaf_width_slider : IntSliders; train_button : Button
    model, history : the last trained model and its History (None before the first press)
    results : list of dicts, one per press (settings and accuracies)

    If training fails (for example when it diverges), the status line shows the error, the button is enabled
    again and the figure keeps the previous run; :meth:`train` re-raises, the button does not (a widget
    callback's exception would only reach the Jupyter log).
    """

    HARDENING = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    LEAK = (0.0, 0.02, 0.05, 0.1, 0.2)

    def __init__(self, X, y, *, validation=None, depth: int = 4, leaf_width: int = 2, epochs: int = 40,
                 lr: float = 0.02, batch_size: int = 32, local_batch_size: float = 16.0, seed: int = 0,
                 train_now: bool = False):
        self.X, self.y = np.asarray(X), np.asarray(y)
        self.validation = validation
        self.epochs, self.lr, self.batch_size, self.seed = epochs, lr, batch_size, seed
        self.local_batch_size = local_batch_size
        style = _slider_style()
        self.hardening = widgets.SelectionSlider(options=list(self.HARDENING), value=1.0, description="hardening h",
                                                 style=style, continuous_update=False)
        self.region_leak = widgets.SelectionSlider(options=list(self.LEAK), value=0.0, description="region leak",
                                                   style=style, continuous_update=False)
        self.localized = widgets.Checkbox(value=False, description="localized updates", indent=False)
        self.depth_slider = widgets.IntSlider(value=depth, min=1, max=8, description="depth", style=style,
                                              continuous_update=False)
        self.leaf_width_slider = widgets.IntSlider(value=leaf_width, min=1, max=16, description="leaf width ℓ",
                                                   style=style, continuous_update=False)
        self.train_button = widgets.Button(description="Train", button_style="primary", icon="play")
        self.train_button.on_click(self._on_click)
        super().__init__([self.hardening, self.region_leak, self.localized, self.depth_slider,
                          self.leaf_width_slider, self.train_button], figsize=(10.8, 3.7))
        self.ax_hard, self.ax_soft, self.ax_curves = self.fig.subplots(1, 3)
        self.model = self.history = None
        self.results = []
        self.status.value = "Choose the settings and press <b>Train</b>."
        if train_now:
            self.train()
        else:
            for ax in self.fig.axes:
                ax.set_axis_off()
            self.render()

    def _on_click(self, button) -> None:
        with contextlib.suppress(Exception):  # train() has put the error in the status line
            self.train()

    def settings(self) -> dict:
        return {"depth": self.depth_slider.value, "leaf_width": self.leaf_width_slider.value,
                "hardening": self.hardening.value, "region_leak": self.region_leak.value,
                "localized": self.localized.value}

    def train(self):
        """Train a fresh FFF with the current settings, draw it, and return the result row."""
        from .models import FFF
        from .train import train

        s = self.settings()
        n_classes = int(self.y.max()) + 1
        self.train_button.disabled = True
        self.status.value = "training…"
        try:
            model = FFF(2, s["leaf_width"], n_classes, s["depth"], region_leak=s["region_leak"], seed=self.seed)
            options = {"optimizer": "local_adam", "local_batch_size": self.local_batch_size} if s["localized"] else {}
            history = train(model, self.X, self.y, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                            hardening=s["hardening"], validation=self.validation, seed=self.seed, progress=False,
                            **options)
        except Exception as err:
            kept = " The figure still shows the previous run." if self.model is not None else ""
            self.status.value = (f"<b>Training failed</b> ({html.escape(type(err).__name__)}: "
                                 f"{html.escape(str(err))}).{kept} Change the settings and press <b>Train</b> "
                                 "again.")
            raise
        finally:
            self.train_button.disabled = False
        self.model, self.history = model, history
        last = history.last()
        row = dict(s, soft_acc=last["train_acc_soft"], hard_acc=last["train_acc_hard"], entropy=last["entropy"],
                   leaves_used=int(len(np.unique(model.route(self.X)))))
        if self.validation is not None:
            row.update(val_soft_acc=last["val_acc_soft"], val_hard_acc=last["val_acc_hard"])
        self.results.append(row)
        for ax in self.fig.axes:
            ax.clear()
            ax.set_axis_on()
        label = f"h={s['hardening']:g}, leak={s['region_leak']:g}" + (", localized" if s["localized"] else "")
        viz.plot_regions(model, self.X, self.y, ax=self.ax_hard, mode="hard", point_size=5,
                         title=f"hard ({label}): {row['hard_acc']:.1%}")
        viz.plot_regions(model, self.X, self.y, ax=self.ax_soft, mode="soft", point_size=5, legend=False,
                         title=f"soft: {row['soft_acc']:.1%}")
        _training_curves(self.ax_curves, history, title=f"depth {s['depth']}, ℓ={s['leaf_width']}")
        self.render()
        self.status.value = (f"{label}: training accuracy soft {row['soft_acc']:.1%}, hard {row['hard_acc']:.1%} "
                             f"(gap {row['soft_acc'] - row['hard_acc']:+.1%}); node entropy {row['entropy']:.3f} "
                             f"nats; {row['leaves_used']} of {model.n_leaves} leaves receive training points")
        return row


# ------------------------------------------------------------------------------------------------- 03


class SizesExplorer(_Explorer):
    """Training width 2^d·ℓ against inference size d + ℓ, with sliders (arXiv 2308.14711 §3, 2311.10770).

    Attributes
    ----------
    depth, leaf_width : IntSliders; kind : ToggleButtons ("FFF", "UltraFFF"); ax : the Axes of ``fig``
    """

    def __init__(self, *, depth: int = 4, leaf_width: int = 8, max_depth: int = 16):
        max_depth = check_positive_int(max_depth, "max_depth", minimum=0)
        depth = _check_slider_value(depth, "depth", max_depth)
        leaf_width = check_positive_int(leaf_width, "leaf_width")
        if leaf_width > 256:
            raise ValueError(f"leaf_width must be at most 256 (the slider's range), got {leaf_width}")
        style = _slider_style()
        self.depth = widgets.IntSlider(value=depth, min=0, max=max_depth, description="depth", style=style)
        self.leaf_width = widgets.IntSlider(value=leaf_width, min=1, max=256, description="leaf width ℓ",
                                            style=style)
        self.kind = widgets.ToggleButtons(options=["FFF", "UltraFFF"], value="FFF", style=style)
        super().__init__([self.depth, self.leaf_width, self.kind], figsize=(6.4, 3.8))
        self.ax = self.fig.subplots()
        self._observe(self.depth, self.leaf_width, self.kind)
        self.update()

    def update(self) -> None:
        d, width, ultra = self.depth.value, self.leaf_width.value, self.kind.value == "UltraFFF"
        self.leaf_width.disabled = ultra
        self.ax.clear()
        viz.plot_sizes(width, max(self.depth.max, d), depth=d, ax=self.ax, ultra=ultra)
        self.render()
        if ultra:
            total, used = 2 ** (d + 1) - 1, d + 1
            self.status.value = (f"UltraFFF of depth {d}: {_plural(total, 'neuron')} in the tree, {used} on each "
                                 f"path ({viz._percent(used / total)}); UltraFastBERT-1×11 uses 12 of 4,095.")
        else:
            total, used = tree.training_width(d, width), tree.inference_size(d, width)
            self.status.value = (f"FFF depth {d}, ℓ = {width}: training width 2^{d}·{width} = "
                                 f"{_plural(total, 'neuron')}; inference size {d} + {width} = {used:,} "
                                 f"({viz._percent(used / total)} of the training width; "
                                 f"speed-up limit ×{total / used:,.1f})")


# ------------------------------------------------------------------------------------------------- 04


class LeafBrowser(_Explorer):
    """Browse the leaves of an image classifier: the images a leaf receives, and their labels.

    Parameters
    ----------
    model : FFF
    X : (n, h * w) flattened images; y : (n,) labels
    image_shape : (h, w)
    per_row, rows : size of the montage

    Attributes
    ----------
    leaf : SelectionSlider over the leaves that receive samples; ax_images, ax_labels : Axes of ``fig``
    """

    def __init__(self, model, X, y, *, image_shape=(8, 8), per_row: int = 10, rows: int = 4, seed: int = 0):
        viz._check_fff(model, "LeafBrowser")
        X, y = np.asarray(X), np.asarray(y)
        h, w = image_shape
        if X.ndim != 2 or X.shape[1] != h * w:
            raise ValueError(f"X must be 2-D (n_samples, {h * w}): images of image_shape {tuple(image_shape)} "
                             f"flattened row-major, got shape {X.shape}")
        if y.shape != (len(X),):
            raise ValueError(f"y must hold one label per sample of X, shape ({len(X)},), got shape {y.shape}")
        per_row, rows = check_positive_int(per_row, "per_row"), check_positive_int(rows, "rows")
        self.model, self.X, self.y = model, X, y
        self.image_shape, self.per_row, self.rows, self.seed = tuple(image_shape), per_row, rows, seed
        self.routed = model.route(self.X)
        used = [int(k) for k in np.unique(self.routed)]
        counts = np.bincount(self.routed, minlength=model.n_leaves)
        self.leaf = widgets.SelectionSlider(options=used, value=int(np.argmax(counts)), description="leaf",
                                            style=_slider_style(), continuous_update=False)
        super().__init__([self.leaf], figsize=(8.8, 3.1))
        self.ax_images, self.ax_labels = self.fig.subplots(1, 2, width_ratios=[1.6, 1])
        self._observe(self.leaf)
        self.update()

    def update(self) -> None:
        leaf = self.leaf.value
        h, w = self.image_shape
        rows = np.flatnonzero(self.routed == leaf)
        rng = np.random.default_rng(self.seed)
        shown = rng.choice(rows, size=min(len(rows), self.per_row * self.rows), replace=False)
        canvas = np.full((self.rows * (h + 1) + 1, self.per_row * (w + 1) + 1), np.nan)
        for i, sample in enumerate(shown):
            r, c = divmod(i, self.per_row)
            canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = \
                self.X[sample].reshape(h, w)
        for ax in self.fig.axes:
            ax.clear()
        import matplotlib

        cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="white")
        self.ax_images.imshow(canvas, cmap=cmap, interpolation="nearest")
        self.ax_images.set_axis_off()
        self.ax_images.set_title(f"leaf {leaf}: {len(rows)} samples ({len(shown)} shown)")
        labels = np.unique(self.y)
        counts = np.array([np.sum(self.y[rows] == c) for c in labels])
        integer = np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0
        colors = viz.class_colors(int(labels.max()) + 1)[labels] if integer else "tab:blue"  # as plot_leaf_usage
        self.ax_labels.bar(labels, counts, color=colors)
        self.ax_labels.set_xticks(labels)
        self.ax_labels.set(xlabel="label", ylabel="samples", title=f"labels in leaf {leaf}")
        self.render()
        top = labels[np.argmax(counts)]
        self.status.value = (f"leaf {leaf} receives {len(rows)} of {len(self.y)} samples; "
                             f"{counts.max() / max(len(rows), 1):.0%} of them are {top}s")
