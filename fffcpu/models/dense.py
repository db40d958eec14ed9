"""The dense feedforward layer FF(input, hidden, output), the baseline every FFF is compared with (spec §3)."""

from __future__ import annotations

import threading

import numpy as np

from .._validation import check_nonnegative_float, check_out, check_positive_int
from ..engine import resolve_n_jobs
from ..functional import get_activation
from .base import Model

__all__ = ["FF"]

#: Held by ``FF.predict(n_jobs=...)`` while it limits BLAS's threads, a setting of the whole process: two such
#: calls on different threads would otherwise restore each other's limits in the wrong order.
_BLAS_LIMITS = threading.Lock()


class FF(Model):
    """Dense feedforward network ``y = act(x W1 + b1) W2 + b2``.

    Parameters
    ----------
    input_width, hidden_width, output_width : int
    activation : {"relu", "gelu", "tanh", "sigmoid", "identity"}
    dtype : {"float32", "float64"}
    seed : int or None

    Notes
    -----
    Parameters ``w1`` (input_width, hidden_width), ``b1`` (hidden_width,), ``w2`` (hidden_width, output_width),
    ``b2`` (output_width,); initialised as the FFF leaves: w1/b1 ~ U(±1/√input_width),
    w2/b2 ~ U(±1/√hidden_width). An ``FFF`` of depth 0 computes the same function.
    """

    def __init__(self, input_width: int, hidden_width: int, output_width: int, *, activation: str = "relu",
                 dtype="float32", seed=None):
        input_width = check_positive_int(input_width, "input_width")
        self.hidden_width = check_positive_int(hidden_width, "hidden_width")
        output_width = check_positive_int(output_width, "output_width")
        self.activation = activation
        self._set_derived()
        super().__init__(input_width, output_width, dtype, seed)

    def _derived(self) -> dict:
        act, act_grad = get_activation(self.activation)
        return {"_act": act, "_act_grad": act_grad}

    @property
    def training_width(self) -> int:
        return self.hidden_width

    @property
    def inference_size(self) -> int:
        return self.hidden_width

    def param_shapes(self) -> dict:
        i, h, o = self.input_width, self.hidden_width, self.output_width
        return {"w1": (i, h), "b1": (h,), "w2": (h, o), "b2": (o,)}

    def init_bounds(self) -> dict:
        bound_in, bound_hidden = 1 / np.sqrt(self.input_width), 1 / np.sqrt(self.hidden_width)
        return {"w1": bound_in, "b1": bound_in, "w2": bound_hidden, "b2": bound_hidden}

    def config(self) -> dict:
        return {
            "input_width": self.input_width,
            "hidden_width": self.hidden_width,
            "output_width": self.output_width,
            "activation": self.activation,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    def predict(self, x, *, n_jobs=None, out=None) -> np.ndarray:
        """``act(x W1 + b1) W2 + b2`` for a batch (BLAS matrix products); keeps no cache.

        Parameters
        ----------
        x : array-like, shape (n, input_width)
        n_jobs : int or None
            BLAS threads for this call, set through threadpoolctl and restored after it (None: BLAS's current
            setting; -1: all; as ``FFF.predict``'s Numba threads). Unlike Numba's, BLAS's thread count belongs to
            the whole process: while such a call runs, other threads' BLAS calls get it too, and calls with
            ``n_jobs`` from several threads take turns, so that each restores what it found. Limiting the threads
            costs a look at the loaded libraries on each call (tens of microseconds), so a tight loop is better
            wrapped in one ``threadpoolctl.threadpool_limits`` of its own.
        out : ndarray, optional
            Where to write the result, as in ``FFF.predict``: a writeable C-contiguous array of shape
            (n, output_width) and the model's dtype that does not overlap ``x``.

        Returns
        -------
        ndarray, shape (n, output_width), the model's dtype: ``out`` when given
        """
        x = self._check_x(x, per_sample=(2 * self.hidden_width + self.output_width) * self.dtype.itemsize,
                          what="FF.predict")
        if out is not None:
            out = check_out(out, x, (len(x), self.output_width), self.dtype)
        if n_jobs is None:
            return self._predict(x, out)
        from threadpoolctl import threadpool_limits

        with _BLAS_LIMITS, threadpool_limits(resolve_n_jobs(n_jobs), user_api="blas"):
            return self._predict(x, out)

    def _predict(self, x, out):
        p = self.params
        hidden = self._act(x @ p["w1"] + p["b1"])
        y = np.matmul(hidden, p["w2"], out=out)
        y += p["b2"]
        return y

    def predict_soft(self, x) -> np.ndarray:
        """The same as ``predict``: a dense layer has no soft and hard modes."""
        return self.predict(x)

    def forward(self, x) -> np.ndarray:
        """Training forward; keeps what ``backward`` needs. Returns shape (n, output_width)."""
        x = self._check_x(x, per_sample=(3 * self.hidden_width + self.output_width) * self.dtype.itemsize,
                          what="a training forward")
        p = self.params
        pre = x @ p["w1"] + p["b1"]
        hidden = self._act(pre)
        self._cache = {"x": x, "pre": pre, "hidden": hidden}
        return hidden @ p["w2"] + p["b2"]

    def hardening_loss(self) -> float:
        """A dense layer makes no decisions: always 0 (so the training loop treats every model alike)."""
        return 0.0

    def backward(self, dy, *, hardening: float = 0.0, input_grad: bool = True):
        """Hand-written backprop; fills ``grads`` and returns ∂L/∂x (n, input_width) or None. ``hardening`` (a
        number >= 0) has no effect: a dense layer makes no decisions."""
        check_nonnegative_float(hardening, "hardening")
        c = self._require_cache()
        g = self._check_dy(dy, len(c["x"]))
        p, grads = self.params, self.grads
        grads["b2"][...] = g.sum(axis=0)
        grads["w2"][...] = c["hidden"].T @ g
        d_pre = (g @ p["w2"].T) * self._act_grad(c["pre"])
        grads["w1"][...] = c["x"].T @ d_pre
        grads["b1"][...] = d_pre.sum(axis=0)
        return d_pre @ p["w1"].T if input_grad else None
