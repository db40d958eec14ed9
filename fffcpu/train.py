"""The training loop: minibatches, the hardening term, optimizers, history and a progress bar."""

from __future__ import annotations

import time

import numpy as np

from ._validation import (check_finite, check_input, check_nonnegative_float, check_positive_float,
                          check_positive_int, check_seed)
from .functional import get_loss
from .optim import Localized, Optimizer, make_optimizer
from .optim import optimizer_options as _options_of

__all__ = ["train", "History", "TrainingDiverged", "check_targets", "accuracy", "linear_ramp", "sharpening_ramp"]


def _check_optimizer_options(optimizer, options: dict) -> None:
    """Refuse a keyword that is neither ``train``'s nor an option of the named optimizer (a misspelt ``epoch=``
    would otherwise reach the optimizer and be reported as the optimizer's), suggesting the closest names."""
    import difflib
    import inspect

    allowed = _options_of(optimizer)  # also refuses an unknown optimizer name
    unknown = sorted(set(options) - set(allowed))
    if not unknown:
        return
    own = [p for p in inspect.signature(train).parameters if p not in ("model", "X", "y", "optimizer_options")]
    hints = [f"{name!r} (did you mean {', '.join(map(repr, close))}?)" if (
        close := difflib.get_close_matches(name, own + list(allowed), n=2)) else repr(name) for name in unknown]
    raise TypeError(f"train() got unexpected keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: "
                    f"train takes {', '.join(own)}, and optimizer={optimizer!r} also takes "
                    f"{', '.join(allowed)}")


class TrainingDiverged(FloatingPointError):
    """The loss or a gradient became NaN or Inf; the model holds the last weights that gave a finite loss."""

    def __init__(self, message: str, history: "History"):
        super().__init__(message)
        self.history = history


class History(dict):
    """Per-epoch metrics: ``history["loss"][epoch]``; ``history.epochs`` counts the completed epochs.

    Keys: ``loss`` (mean prediction loss over the epoch's batches), ``entropy`` (mean node entropy, the
    hardening term), ``objective`` (loss + the epoch's hardening weight · entropy), ``seconds``; for classification
    ``train_acc_soft``, ``train_acc_hard`` and with validation ``val_loss`` (the prediction loss of the outputs
    training computes: hard for a model with ``train_hardened``, soft otherwise), ``val_acc_soft``, ``val_acc_hard``;
    for regression ``train_mse_soft``/``_hard`` and ``val_mse_soft``/``_hard``; with ``sharpening``,
    ``node_scale`` (the product of the sharpening factors applied so far).
    """

    @property
    def epochs(self) -> int:
        return len(self.get("loss", []))

    def append(self, **metrics) -> None:
        for key, value in metrics.items():
            self.setdefault(key, []).append(value)

    def last(self) -> dict:
        return {key: values[-1] for key, values in self.items() if values}

    def table(self) -> str:
        """The history as a plain-text table, one row per epoch."""
        keys = list(self)
        rows = [" ".join(f"{k:>14}" for k in ["epoch"] + keys)]
        for e in range(self.epochs):
            rows.append(" ".join([f"{e + 1:>14}"] + [f"{self[k][e]:>14.4f}" for k in keys]))
        return "\n".join(rows)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose largest output is the label."""
    return float(np.mean(np.argmax(outputs, axis=1) == labels)) if len(labels) else float("nan")


def check_targets(y, n_samples: int, loss: str, output_width: int, dtype, *, name: str = "y") -> np.ndarray:
    """Validate targets: class labels in [0, output_width) for cross-entropy, finite values for MSE."""
    arr = np.asarray(y)
    if arr.dtype.kind in "cOSUVMm":
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if loss == "cross_entropy":
        if arr.ndim != 1 or len(arr) != n_samples:
            raise ValueError(f"{name} must be 1-D class labels of length {n_samples}, got shape {arr.shape}")
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} contains NaN or Inf; class labels must be integers")
            if not np.array_equal(arr, np.round(arr)):
                raise ValueError(f"{name} must be integer class labels, got non-integer values "
                                 "(regression? use loss='mse')")
        if n_samples and (arr.min() < 0 or arr.max() >= output_width):  # in the given dtype: no wrap-around
            low, high = (arr.min(), arr.max()) if arr.dtype.kind != "b" else (int(arr.min()), int(arr.max()))
            raise ValueError(
                f"{name} has labels in [{low}, {high}], the model has output_width={output_width} "
                f"classes: labels must be in [0, {output_width - 1}]"
            )
        return arr.astype(np.int64)
    if arr.ndim == 1 and output_width == 1:
        arr = arr.reshape(-1, 1)
    if arr.shape != (n_samples, output_width):
        raise ValueError(f"{name} must have shape ({n_samples}, {output_width}) for loss='mse', got {arr.shape}")
    check_finite(arr, name, dtype, "training needs finite targets", count=False)
    return arr.astype(dtype, copy=False)


def linear_ramp(hardening: float, epochs: int):
    """A hardening schedule for ``train``: the weight grows linearly to ``hardening`` over ``epochs``, then stays.

    Epoch e (from 0) gets ``hardening · min(1, (e + 1) / epochs)``. Annealing the weight lets the soft tree
    decide its routing while the leaves adapt to it, instead of freezing the first routing it finds (§3.2).
    """
    hardening = check_nonnegative_float(hardening, "hardening")
    epochs = check_positive_int(epochs, "epochs")
    return lambda epoch: hardening * min(1.0, (epoch + 1) / epochs)


def sharpening_ramp(total: float, epochs: int):
    """A sharpening schedule for ``train``: node parameters multiplied by ``total`` in all over ``epochs`` epochs.

    Epoch e (from 0) gets the factor ``total ** (1 / epochs)`` while ``e < epochs``, then 1: geometric growth, so
    the soft decisions sharpen at the same relative pace throughout (the optimizer's own updates come on top).
    Combined with a hardening weight ramped over the same epochs (``linear_ramp``), the soft model that is trained
    ends as close to the hard one as the total makes it: with ``total=4096`` every configuration of the
    reproduction (docs/reproduction.md) ends with soft and hard test accuracy within a point.
    """
    total = check_positive_float(total, "total")
    epochs = check_positive_int(epochs, "epochs")
    step = total ** (1.0 / epochs)
    return lambda epoch: step if epoch < epochs else 1.0


def _sharpening_at(sharpening, epoch: int) -> float:
    return check_positive_float(sharpening(epoch) if callable(sharpening) else sharpening, "sharpening")


def _hardening_at(hardening, epoch: int) -> float:
    return check_nonnegative_float(hardening(epoch) if callable(hardening) else hardening, "hardening")


def _evaluate(model, X, y, loss: str, prefix: str) -> dict:
    soft, hard = model.predict_soft(X), model.predict(X)
    if loss == "cross_entropy":
        return {f"{prefix}_acc_soft": accuracy(soft, y), f"{prefix}_acc_hard": accuracy(hard, y)}
    loss_fn, _ = get_loss(loss)
    return {f"{prefix}_mse_soft": 2 * loss_fn(soft, y) / model.output_width,
            f"{prefix}_mse_hard": 2 * loss_fn(hard, y) / model.output_width}


def train(model, X, y, *, loss: str = "cross_entropy", optimizer="adam", lr: float | None = None, epochs: int = 10,
          batch_size: int = 256, hardening=0.0, validation=None, seed=None, progress: bool = True,
          local_batch_size: float | None = None, usage_counts: str = "soft", sharpening=None, callback=None,
          **optimizer_options) -> History:
    """Train ``model`` (FFF, FF or any model with forward/backward/params/grads) on ``(X, y)``.

    Parameters
    ----------
    model : FFF, FF, ...
    X : array-like, shape (n, input_width)
    y : array-like
        Class labels (n,) for ``loss="cross_entropy"``; targets (n, output_width) for ``loss="mse"``.
    loss : {"cross_entropy", "mse"}
    optimizer : {"adam", "sgd", "local_adam", "local_sgd"} or an optimizer built on ``model.params``
        An optimizer object keeps its own learning rate and options: ``lr`` and ``**optimizer_options`` are
        then refused rather than ignored.
    lr : float, default 1e-3
        The learning rate of an optimizer named by a string.
    epochs, batch_size : int
    hardening : float or callable
        Weight h of the hardening term: the objective is ``loss + h · mean node entropy``
        (see ``FFF.hardening_loss`` for the relation to the paper's sum). A callable ``hardening(epoch)``
        (epoch counted from 0) gives the weight of each epoch, e.g. ``linear_ramp(3.0, 20)``.
    validation : (X_val, y_val), optional
    seed : int >= 0, optional
        Seeds the shuffling of the minibatches.
    progress : bool
        Show a tqdm progress bar (``tqdm.auto``, so it renders in notebooks).
    local_batch_size, usage_counts
        For the localized optimizers: the usage a block must accumulate before it is updated (its accumulated
        gradient is then rescaled by ``local_batch_size / usage``: ``fffcpu.optim.Localized``), and whether usage
        counts soft reach probabilities or hard paths.
    sharpening : float or callable, optional
        After each epoch's updates (before its evaluation), multiply the node weights and biases by this
        factor (``model.sharpen``; FFF only): hard routing keeps its decisions and the soft routing moves
        towards them, so that the soft model being trained becomes the hard model that ``predict`` runs. A
        callable ``sharpening(epoch)`` gives each epoch's factor, e.g. ``sharpening_ramp(4096, epochs)``. The
        history records the product of the factors so far as ``node_scale``.
    callback : callable(epoch, history, model), optional
        Called after every epoch (e.g. to keep snapshots of the weights).

    Every argument, the schedules' value at every epoch included, is checked before the first update, so a bad
    argument raises with the model untouched.
    **optimizer_options
        Passed to the optimizer (``momentum``, ``weight_decay``, ``decoupled_weight_decay``, ``betas``, ``eps``).

    Returns
    -------
    History

    Raises
    ------
    TrainingDiverged
        When the loss or a gradient is not finite. The model keeps the last weights whose loss was
        finite, and the exception carries the history so far.
    """
    if not (callable(getattr(model, "forward", None)) and callable(getattr(model, "backward", None))
            and isinstance(getattr(model, "params", None), dict)):
        raise TypeError(f"train expects a trainable fffcpu model (FFF, UltraFFF or FF), got {type(model).__name__}")
    loss_fn, loss_grad = get_loss(loss)
    X = check_input(X, model.input_width, model.dtype, name="X", finite=True)
    if len(X) == 0:
        raise ValueError("the training set is empty: X has 0 samples")
    y = check_targets(y, len(X), loss, model.output_width, model.dtype)
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = check_seed(seed)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(epoch, history, model), got {callback!r}")
    for epoch in range(epochs):  # a schedule that fails in a late epoch would fail after the model has changed
        _hardening_at(hardening, epoch)
        if sharpening is not None:
            _sharpening_at(sharpening, epoch)
    if sharpening is not None:
        if not callable(getattr(model, "sharpen", None)):
            raise ValueError(f"sharpening needs a model with soft routing to sharpen (an FFF); "
                             f"{type(model).__name__} has no sharpen method")
    if validation is not None:
        try:
            X_val, y_val = validation
        except (TypeError, ValueError):
            raise TypeError("validation must be a pair (X_val, y_val)") from None
        X_val = check_input(X_val, model.input_width, model.dtype, name="X_val", finite=True)
        y_val = check_targets(y_val, len(X_val), loss, model.output_width, model.dtype, name="y_val")
    if isinstance(optimizer, (Optimizer, Localized)):
        given = (["lr"] if lr is not None else []) + sorted(optimizer_options)
        if given:
            raise TypeError(f"{', '.join(given)} only apply to an optimizer named by a string; the "
                            f"{type(optimizer).__name__} object passed as optimizer has its own (set them when "
                            "building it, e.g. Adam(model.params, lr=0.01))")
        foreign = [name for name, p in model.params.items() if optimizer.params.get(name) is not p]
        if foreign or len(optimizer.params) != len(model.params):
            raise ValueError(f"the optimizer updates other arrays than this model's parameters (model.params; "
                             f"not the same: {foreign or sorted(set(optimizer.params) - set(model.params))}): "
                             f"build it on this model, e.g. Adam(model.params)")
        opt = optimizer
    else:
        _check_optimizer_options(optimizer, optimizer_options)
        lr = 1e-3 if lr is None else check_positive_float(lr, "lr")
        opt = make_optimizer(optimizer, model, lr, local_batch_size=local_batch_size, counts=usage_counts,
                             **optimizer_options)
    localized = isinstance(opt, Localized)
    if localized and not hasattr(model, "block_usage"):
        raise ValueError(f"{type(model).__name__} has no node/leaf blocks to localize: use 'adam' or 'sgd'")
    if localized and opt.local_batch_size > len(X) * epochs:
        # even the root, which every sample reaches, would never be due: nothing would be trained
        raise ValueError(f"local_batch_size={opt.local_batch_size:g} is more than the {len(X) * epochs:,} samples "
                         f"that {epochs} epoch(s) of {len(X):,} samples present: no block would ever be updated")

    rng = np.random.default_rng(seed)
    snapshot = {name: np.empty_like(p) for name, p in model.params.items()}
    history = History()
    node_scale = 1.0
    bar = _progress(epochs, progress)
    for epoch in range(epochs):
        started = time.perf_counter()
        h = _hardening_at(hardening, epoch)
        order = rng.permutation(len(X))
        total_loss = total_entropy = 0.0
        for start in range(0, len(X), batch_size):
            rows = order[start:start + batch_size]
            xb, yb = X[rows], y[rows]
            with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are reported below
                out = model.forward(xb)
                batch_loss = loss_fn(out, yb)
                entropy = model.hardening_loss()
            if not np.isfinite(batch_loss):
                _restore(model, snapshot, start > 0 or epoch > 0)
                bar.close()
                raise TrainingDiverged(
                    f"the loss became {batch_loss} in epoch {epoch + 1} (batch starting at sample {start}); "
                    "the model keeps the last weights with a finite loss. Try a smaller lr.", history)
            with np.errstate(over="ignore", invalid="ignore"):  # non-finite gradients are reported below
                model.backward(loss_grad(out, yb), hardening=h, input_grad=False)
            if not all(np.isfinite(g).all() for g in model.grads.values()):
                bar.close()
                # hard routing sends NaN logits left, so Inf weights can still give a finite loss: undo the update
                # that made them, as for a non-finite loss
                weights_finite = all(np.isfinite(p).all() for p in model.params.values())
                if not weights_finite:
                    _restore(model, snapshot, start > 0 or epoch > 0)
                raise TrainingDiverged(
                    f"a gradient became NaN or Inf in epoch {epoch + 1}; "
                    + ("the weights were not updated" if weights_finite else
                       "the model keeps the last finite weights") + ". Try a smaller lr.", history)
            for name, p in model.params.items():
                np.copyto(snapshot[name], p)
            with np.errstate(over="ignore", invalid="ignore"):  # non-finite weights are caught below
                if localized:
                    opt.step(model.grads, model.block_usage(opt.counts))
                else:
                    opt.step(model.grads)
            total_loss += batch_loss * len(rows)
            total_entropy += entropy * len(rows)
        if not all(np.isfinite(p).all() for p in model.params.values()):
            # the epoch's last update, which no later batch checks
            _restore(model, snapshot, True)
            bar.close()
            raise TrainingDiverged(
                f"the weights became NaN or Inf in the last update of epoch {epoch + 1}; the model keeps the weights "
                "before it. Try a smaller lr.", history)
        metrics = {"loss": total_loss / len(X), "entropy": total_entropy / len(X)}
        metrics["objective"] = metrics["loss"] + h * metrics["entropy"]
        if sharpening is not None:
            factor = _sharpening_at(sharpening, epoch)
            try:
                model.sharpen(factor)
            except ValueError as err:  # would overflow the dtype: the weights grew too large for the schedule
                bar.close()
                raise TrainingDiverged(f"after epoch {epoch + 1}: {err}; the model keeps the weights of that epoch, "
                                       "unsharpened", history) from None
            node_scale *= factor
            metrics["node_scale"] = node_scale
        with np.errstate(over="ignore", invalid="ignore"):  # huge (finite) weights: the metrics say so, as Inf/NaN
            metrics.update(_evaluate(model, X, y, loss, "train"))
            if validation is not None:
                # the counterpart of "loss": the outputs training computes, hard when the model trains hard
                hard = getattr(model, "train_hardened", False)
                metrics["val_loss"] = loss_fn(model.predict(X_val) if hard else model.predict_soft(X_val), y_val)
                metrics.update(_evaluate(model, X_val, y_val, loss, "val"))
        metrics["seconds"] = time.perf_counter() - started
        history.append(**metrics)
        bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items() if k in _SHOWN}, refresh=False)
        bar.update(1)
        if callback is not None:
            callback(epoch, history, model)
    bar.close()
    return history


_SHOWN = ("loss", "entropy", "train_acc_hard", "val_acc_hard", "val_mse_hard")


def _restore(model, snapshot: dict, have_snapshot: bool) -> None:
    if have_snapshot:
        for name, p in model.params.items():
            np.copyto(p, snapshot[name])


def _progress(epochs: int, enabled: bool):
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=epochs, desc="training", unit="epoch")
    return _NoProgress()


class _NoProgress:
    def set_postfix(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass
