"""Optimizers that update a dict of NumPy arrays in place: SGD, Adam, and their localized forms.

Every optimizer can update a subset of the rows (first axis) of each parameter and leave the others, *and
their optimizer state*, untouched. ``Localized`` uses this for the localized optimisation of
arXiv 2308.14711 §3.3: the parameters of a node or leaf (one row of ``node_weights``, ``w1s``, ...) are
updated only once the samples that reached that block add up to ``local_batch_size``, with their accumulated
batch-mean gradient rescaled by ``local_batch_size / usage`` (spec §1): with ``local_batch_size`` equal to the batch
size, the mean gradient of the samples that reached the block. (The PyTorch package's LocalSGD/LocalAdam decay the
moments of blocks they do not update and lag momentum by a step; see the spec §4.)
"""

from __future__ import annotations

import numpy as np

from ._validation import check_nonnegative_float, check_positive_float, check_probability
from .kernels.optim import adam_step

__all__ = ["Optimizer", "SGD", "Adam", "Localized", "LocalSGD", "LocalAdam", "make_optimizer", "optimizer_options"]


class Optimizer:
    """Base class: holds references to the parameter arrays (updated in place) and the learning rate."""

    def __init__(self, params: dict, lr: float, weight_decay: float = 0.0):
        if not isinstance(params, dict) or not params:
            raise TypeError("params must be a non-empty dict of arrays (e.g. model.params)")
        for name, param in params.items():
            if not isinstance(param, np.ndarray) or param.dtype.kind != "f":
                raise TypeError(f"params[{name!r}] must be a floating-point NumPy array (updated in place), got "
                                f"{type(param).__name__}" + (f" of dtype {param.dtype}"
                                                             if isinstance(param, np.ndarray) else ""))
        self.params = params
        self.lr = check_positive_float(lr, "lr")
        self.weight_decay = check_nonnegative_float(weight_decay, "weight_decay")

    def step(self, grads: dict, rows: dict | None = None) -> None:
        """Apply one update.

        Parameters
        ----------
        grads : dict of arrays, same keys and shapes as ``params``
        rows : dict of bool arrays, optional
            ``rows[name]`` (shape ``(params[name].shape[0],)``) selects the rows of that parameter to update;
            the other rows and their optimizer state stay as they are. Missing names update fully.
        """
        self.check_grads(grads, finite=False)
        if rows is not None and not isinstance(rows, dict):
            raise TypeError(f"rows must be a dict of bool arrays or None, got {type(rows).__name__}")
        masks = {} if rows is None else {name: rows[name] for name in self.params if name in rows}
        for name, mask in masks.items():
            shape = self.params[name].shape[:1]
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != shape:
                given = (f"dtype {mask.dtype}, shape {mask.shape}" if isinstance(mask, np.ndarray)
                         else type(mask).__name__)
                raise ValueError(f"rows[{name!r}] must be a bool array of shape {shape} (one per row of the "
                                 f"parameter), got {given}")
        self._check_finite(grads, masks)  # the rows left alone may hold anything
        for name, param in self.params.items():
            grad, mask = grads[name], masks.get(name)
            if mask is None:
                self._update(name, param, grad, slice(None))
            else:
                index = np.flatnonzero(mask)
                if index.size:
                    self._update(name, param, grad[index], index)

    def check_grads(self, grads, *, finite: bool = True) -> None:
        """Raise unless ``grads`` holds a floating-point array of each parameter's shape, and with ``finite`` no NaN
        or Inf (``FloatingPointError``), before any parameter changes."""
        if not isinstance(grads, dict):
            raise TypeError(f"grads must be a dict of arrays with the keys of params, got {type(grads).__name__}")
        missing = [name for name in self.params if name not in grads]
        if missing:
            raise KeyError(f"grads has no gradient for parameter(s) {missing} (expected the keys of params: "
                           f"{list(self.params)})")
        for name, param in self.params.items():
            grad = grads[name]
            if not isinstance(grad, np.ndarray) or grad.shape != param.shape or grad.dtype.kind != "f":
                given = (f"dtype {grad.dtype}, shape {grad.shape}" if isinstance(grad, np.ndarray)
                         else type(grad).__name__)
                raise ValueError(f"grads[{name!r}] must be a floating-point array of the parameter's shape "
                                 f"{param.shape}, got {given}: were the gradients computed for another model?")
        if finite:
            self._check_finite(grads, {})

    def _check_finite(self, grads, masks) -> None:
        """Raise ``FloatingPointError`` if a gradient row that would be applied (all rows, or those of
        ``masks[name]``) holds NaN or Inf: such an update would make the weights NaN for good."""
        bad = [name for name in self.params
               if not np.isfinite(grads[name] if masks.get(name) is None else grads[name][masks[name]]).all()]
        if bad:
            raise FloatingPointError(f"grads {bad} hold NaN or Inf values; no parameter was updated (a diverging "
                                     "loss, or NaN/Inf in the inputs or in dy)")

    def _update(self, name, param, grad, index):  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and L2 weight decay (PyTorch's convention).

    ``v ← momentum·v + (g + weight_decay·θ)``; ``θ ← θ - lr·v``  (plain SGD when momentum = 0).
    """

    def __init__(self, params: dict, lr: float = 0.01, *, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = check_probability(momentum, "momentum")
        self.velocity = {name: np.zeros_like(p) for name, p in params.items()} if self.momentum else None

    def _update(self, name, param, grad, index):
        step = grad + self.weight_decay * param[index] if self.weight_decay else grad
        if self.momentum:
            v = self.momentum * self.velocity[name][index] + step
            self.velocity[name][index] = v
            step = v
        param[index] -= (self.lr * step).astype(param.dtype, copy=False)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and weight decay, coupled or decoupled.

    By default ``weight_decay`` is an L2 term added to the gradient, as PyTorch's ``Adam``. With
    ``decoupled_weight_decay=True`` it is AdamW's (Loshchilov & Hutter): ``θ ← θ·(1 - lr·weight_decay)``
    before the Adam step, which then sees the plain gradient (PyTorch's ``AdamW``). The step count is kept per
    row, so rows that are not updated do not advance their bias correction.
    """

    def __init__(self, params: dict, lr: float = 1e-3, *, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False):
        super().__init__(params, lr, weight_decay)
        if not isinstance(decoupled_weight_decay, (bool, np.bool_)):
            raise TypeError(f"decoupled_weight_decay must be True or False, got {decoupled_weight_decay!r}")
        self.decoupled = bool(decoupled_weight_decay)
        try:
            # a beta of 1 never forgets its first moment and divides by zero in the bias correction
            self.beta1, self.beta2 = (check_probability(b, "betas", below_one=True) for b in betas)
        except (TypeError, ValueError) as err:
            if "betas" in str(err):
                raise
            raise TypeError(f"betas must be a pair (beta1, beta2) of numbers in [0, 1), got {betas!r}") from None
        self.eps = check_positive_float(eps, "eps")
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}
        self.t = {name: np.zeros(p.shape[:1], dtype=np.int64) for name, p in params.items()}

    def _update(self, name, param, grad, index):
        if self.decoupled and self.weight_decay:
            param[index] *= param.dtype.type(1 - self.lr * self.weight_decay)
        t_all = self.t[name]
        fusable = isinstance(index, slice) and param.flags.c_contiguous and param.dtype == grad.dtype
        if fusable and (t_all.size == 0 or t_all.min() == t_all.max()):
            self._update_all(name, param, grad)
            return
        if self.weight_decay and not self.decoupled:
            grad = grad + self.weight_decay * param[index]
        m = self.beta1 * self.m[name][index] + (1 - self.beta1) * grad
        v = self.beta2 * self.v[name][index] + (1 - self.beta2) * grad * grad
        self.m[name][index], self.v[name][index] = m, v
        t = self.t[name][index] + 1
        self.t[name][index] = t
        shape = (-1,) + (1,) * (param.ndim - 1)
        c1 = (1 - self.beta1 ** t.astype(np.float64)).reshape(shape)
        c2 = (1 - self.beta2 ** t.astype(np.float64)).reshape(shape)
        param[index] -= (self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(param.dtype, copy=False)

    def _update_all(self, name, param, grad):
        """The same update, fused in one pass, when every row is at the same step (the unmasked case)."""
        t = self.t[name]
        t += 1
        step = int(t[0]) if t.size else 1
        c1, c2 = 1 - self.beta1**step, 1 - self.beta2**step
        adam_step(param.reshape(-1), np.ascontiguousarray(grad).reshape(-1), self.m[name].reshape(-1),
                  self.v[name].reshape(-1), self.lr / c1, self.beta1, self.beta2, 1 / np.sqrt(c2), self.eps,
                  0.0 if self.decoupled else self.weight_decay)


class Localized:
    """Usage-gated updates of node and leaf blocks (arXiv 2308.14711 §3.3, "localized optimisation").

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer that applies the updates (its state is kept per row, so untouched blocks keep theirs).
    blocks : dict
        Parameter name -> block kind ("node" or "leaf"): the kind indexed by the parameter's first axis
        (``model.param_blocks``). Parameters not named here are updated at every step.
    local_batch_size : float
        A block is updated once the samples that reached it since its last update add up to this.
    counts : {"soft", "hard"}
        Which usage counts to gate on (``FFF.block_usage``): summed reach probabilities or hard paths.

    Notes
    -----
    ``step(grads, usage)`` takes batch-mean gradients. Per block it accumulates them and the usage; a block
    whose usage reaches ``local_batch_size`` is updated with ``accumulated · local_batch_size / usage`` (spec §1,
    the PyTorch package's correction), and its accumulators restart from zero. With batches of B samples, that is
    ``local_batch_size / B`` times the mean gradient of the samples that reached the block: with
    ``local_batch_size = B`` (the default of the estimators and of ``fffcpu train``) exactly that mean, and in
    general about the same learning rate per sample as a dense layer trained on the same batches. The hardening
    term is a mean over every sample and every node, reached or not (``FFF.hardening_loss``): its part of a node's
    accumulated gradient sums over all the samples of the batches, and is rescaled by the same usage, so with
    hardening > 0 a rarely reached node gets a stronger hardening pull than its own samples' mean.
    """

    def __init__(self, optimizer: Optimizer, blocks: dict, *, local_batch_size: float, counts: str = "soft"):
        self.optimizer = optimizer
        self.local_batch_size = check_positive_float(local_batch_size, "local_batch_size")
        if counts not in ("soft", "hard"):
            raise ValueError(f"counts must be 'soft' or 'hard', got {counts!r}")
        self.counts = counts
        self.blocks = {name: kind for name, kind in blocks.items() if name in optimizer.params}
        if not self.blocks:
            raise ValueError("a localized optimizer needs a model with node/leaf blocks (model.param_blocks)")
        params = optimizer.params
        self.accumulated = {name: np.zeros(params[name].shape, dtype=np.float64) for name in self.blocks}
        self.pending = {}
        for name, kind in self.blocks.items():
            n = params[name].shape[0]
            if self.pending.setdefault(kind, np.zeros(n)).shape[0] != n:
                raise ValueError(f"parameters of block kind {kind!r} disagree on the number of blocks")

    @property
    def params(self):
        return self.optimizer.params

    @property
    def lr(self):
        return self.optimizer.lr

    @lr.setter
    def lr(self, value):
        self.optimizer.lr = check_positive_float(value, "lr")

    def step(self, grads: dict, usage: dict) -> dict:
        """Accumulate this batch and update the blocks that are due.

        Parameters
        ----------
        grads : dict of arrays
            Batch-mean gradients (``model.grads``).
        usage : dict
            Block kind -> samples of this batch that reached each block (``model.block_usage(counts)``).

        Returns
        -------
        dict
            Block kind -> bool array of the blocks updated in this step.
        """
        self.optimizer.check_grads(grads)
        self._check_usage(usage)
        for kind, pending in self.pending.items():
            pending += usage[kind]
        due = {kind: pending >= self.local_batch_size for kind, pending in self.pending.items()}
        step_grads, rows = dict(grads), {}
        for name, kind in self.blocks.items():
            acc = self.accumulated[name]
            acc += grads[name]
            shape = (-1,) + (1,) * (acc.ndim - 1)
            index = np.flatnonzero(due[kind])  # only these rows are applied; the others stay 0
            scale = self.local_batch_size / self.pending[kind][index]  # due: pending >= local_batch_size > 0
            step_grads[name] = np.zeros_like(grads[name])
            step_grads[name][index] = (acc[index] * scale.reshape(shape)).astype(grads[name].dtype, copy=False)
            rows[name] = due[kind]
            acc[index] = 0
        self.optimizer.step(step_grads, rows)
        for kind, pending in self.pending.items():
            pending[due[kind]] = 0
        return due

    def _check_usage(self, usage) -> None:
        if not isinstance(usage, dict):
            raise TypeError(f"usage must be a dict of block kind -> counts (model.block_usage), got "
                            f"{type(usage).__name__}")
        for kind, pending in self.pending.items():
            if kind not in usage:
                raise KeyError(f"usage has no counts for block kind {kind!r} (expected the kinds "
                               f"{list(self.pending)}, as model.block_usage gives)")
            counts = usage[kind]
            if not isinstance(counts, np.ndarray) or counts.shape != pending.shape or counts.dtype.kind not in "fiu":
                given = (f"dtype {counts.dtype}, shape {counts.shape}" if isinstance(counts, np.ndarray)
                         else type(counts).__name__)
                raise ValueError(f"usage[{kind!r}] must be a numeric array of shape {pending.shape} (one count per "
                                 f"block), got {given}")
            if not (np.isfinite(counts).all() and (counts >= 0).all()):
                raise ValueError(f"usage[{kind!r}] must hold finite counts >= 0, got values from {counts.min()} to "
                                 f"{counts.max()}")


def LocalSGD(params: dict, blocks: dict, lr: float = 0.01, *, local_batch_size: float, counts: str = "soft",
             momentum: float = 0.0, weight_decay: float = 0.0) -> Localized:
    """Localized SGD: ``Localized(SGD(params, ...), blocks, ...)``."""
    return Localized(SGD(params, lr, momentum=momentum, weight_decay=weight_decay), blocks,
                     local_batch_size=local_batch_size, counts=counts)


def LocalAdam(params: dict, blocks: dict, lr: float = 1e-3, *, local_batch_size: float, counts: str = "soft",
              betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
              decoupled_weight_decay: bool = False) -> Localized:
    """Localized Adam: ``Localized(Adam(params, ...), blocks, ...)``."""
    return Localized(Adam(params, lr, betas=betas, eps=eps, weight_decay=weight_decay,
                          decoupled_weight_decay=decoupled_weight_decay), blocks,
                     local_batch_size=local_batch_size, counts=counts)


_OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def _base_name(name):
    """The optimizer that ``name`` ("sgd", "adam", "local_sgd", "local_adam") builds on, or a clear error."""
    base = name[len("local_"):] if isinstance(name, str) and name.startswith("local_") else name
    if not isinstance(base, str) or base not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS) + ['local_adam', 'local_sgd']} "
                         f"or an Optimizer instance, got {name!r}")
    return base


def optimizer_options(name: str) -> tuple:
    """The keyword options (besides ``lr``) that the optimizer named ``name`` takes, e.g. ``optimizer_options("sgd")``
    is ``("momentum", "weight_decay")``."""
    import inspect

    parameters = inspect.signature(_OPTIMIZERS[_base_name(name)].__init__).parameters
    return tuple(p for p in parameters if p not in ("self", "params", "lr"))


def make_optimizer(name: str, model, lr: float, *, local_batch_size: float | None = None,
                   counts: str = "soft", **options):
    """Build an optimizer by name for ``model``: "sgd", "adam", "local_sgd" or "local_adam"."""
    base = _base_name(name)
    unknown = sorted(set(options) - set(optimizer_options(base)))
    if unknown:
        raise TypeError(f"optimizer {name!r} takes no option {', '.join(map(repr, unknown))}; its options are lr, "
                        f"{', '.join(optimizer_options(base))}")
    if base != name and not getattr(model, "param_blocks", None):
        raise ValueError(f"optimizer={name!r} needs a model with node/leaf blocks (an FFF); "
                         f"{type(model).__name__} has none: use {base!r}")
    if counts not in ("soft", "hard"):
        raise ValueError(f"counts must be 'soft' or 'hard', got {counts!r}")
    if base == name and local_batch_size is not None:
        raise ValueError(f"local_batch_size only applies to the localized optimizers ('local_{base}'), not to "
                         f"optimizer={name!r}")
    optimizer = _OPTIMIZERS[base](model.params, lr, **options)
    if base == name:
        return optimizer
    if local_batch_size is None:
        raise ValueError(f"optimizer={name!r} needs local_batch_size (e.g. the batch size)")
    return Localized(optimizer, model.param_blocks, local_batch_size=local_batch_size, counts=counts)
