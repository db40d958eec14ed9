"""The UltraFastBERT layer (Belcak & Wattenhofer, arXiv 2311.10770), spec §2: every node is one neuron.

A tree of depth D has N = 2**(D + 1) - 1 neurons in heap order (root 0, children 2n + 1 and 2n + 2). An input walks
from the root, going right iff its logit is > 0 (strict, as the UltraFastBERT code), and every neuron on its path
fires ("conditional matrix multiplication", §2 of the paper):

    z_n = w_n · x + b_n;   y(x) = Σ_trees Σ_{n on path} act(z_n) u_n     (no output bias)

Training is hard: the path is chosen by the signs and gradients flow through the activations of the on-path
neurons only. Two implementations of the same function live here:

- ``masked_forward`` / ``masked_backward``: the UltraFastBERT training formulation in NumPy. Every logit of every
  neuron is computed (one GEMM), off-path activations are masked to zero. Readable, float64-capable, and as
  expensive as a dense layer of width trees · N: the reference for tests and the baseline of the benchmark.
- ``UltraFFF.forward`` / ``backward`` / ``predict``: the Numba kernels of ``fffcpu.kernels.ultra`` that touch only
  the trees · (D + 1) neurons of each path, so a training step costs O(depth) per input, not O(width).

Parameters (names of this library; the UltraFastBERT state-dict names are in ``UltraFFF.from_state_dict``):

====== ============================== ==========================================
name   shape                          role
====== ============================== ==========================================
w_in   (trees, N, input_width)        neuron input weights, also the hyperplanes
b_in   (trees, N)                     neuron biases
w_out  (trees, N, output_width)       neuron output weights u_n
====== ============================== ==========================================
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from .._validation import (check_input, check_nonnegative_float, check_out, check_positive_int,
                           check_state_dict, format_bytes, is_valid_input)
from ..functional import get_activation
from ..kernels import ultra as _kernels
from .base import Model, Parameters, _aligned_empty

__all__ = ["UltraFFF", "masked_forward", "masked_backward", "path_mask"]

_STATE_KEYS = ("linear_in.weight", "linear_in.bias", "linear_out.weight")


# --- the NumPy reference: UltraFastBERT's dense-masked training formulation --------------------------------------


def path_mask(logits: np.ndarray, depth: int) -> np.ndarray:
    """One-hot mask of the hard path from all logits.

    Parameters
    ----------
    logits : ndarray, shape (n, trees, N)
        The logit of every neuron of every tree, N = 2**(depth + 1) - 1.
    depth : int

    Returns
    -------
    ndarray of bool, shape (n, trees, N): True on the depth + 1 neurons of each path (next = 2n + 1 + [z_n > 0]).
    """
    n, trees, _ = logits.shape
    mask = np.zeros(logits.shape, dtype=bool)
    node = np.zeros((n, trees), dtype=np.int64)
    rows, cols = np.arange(n)[:, None], np.arange(trees)[None, :]
    for _ in range(depth + 1):
        mask[rows, cols, node] = True
        node = 2 * node + 1 + (logits[rows, cols, node] > 0)
    return mask


def masked_forward(params: dict, x: np.ndarray, depth: int, activation: str = "gelu") -> dict:
    """The UltraFastBERT training forward: all logits, off-path activations masked (spec §2).

    Parameters
    ----------
    params : dict with ``w_in`` (trees, N, in), ``b_in`` (trees, N), ``w_out`` (trees, N, out)
    x : ndarray, shape (n, in)
    depth : int
    activation : str

    Returns
    -------
    dict with ``y`` (n, out) and what ``masked_backward`` needs: ``x``, ``logits`` (n, trees, N), ``mask``,
    ``hidden`` (masked activations, (n, trees, N)).
    """
    act, _ = get_activation(activation)
    trees, nodes, width_in = params["w_in"].shape
    w_in_flat = params["w_in"].reshape(trees * nodes, width_in)
    logits = (x @ w_in_flat.T + params["b_in"].reshape(-1)).reshape(len(x), trees, nodes)
    mask = path_mask(logits, depth)
    hidden = act(logits) * mask
    y = hidden.reshape(len(x), trees * nodes) @ params["w_out"].reshape(trees * nodes, -1)
    return {"x": x, "logits": logits, "mask": mask, "hidden": hidden, "y": y}


def masked_backward(params: dict, cache: dict, g: np.ndarray, activation: str = "gelu", *,
                    input_grad: bool = True) -> tuple[dict, np.ndarray | None]:
    """Gradients of ``masked_forward`` (spec §2): no gradient through the path choice.

    ∂L/∂u_n = act(z_n) g;  ∂L/∂z_n = act'(z_n) (g · u_n) on the path, 0 elsewhere;  ∂L/∂w_n = ∂L/∂z_n x;
    ∂L/∂b_n = ∂L/∂z_n;  ∂L/∂x = Σ_path ∂L/∂z_n w_n.

    Returns
    -------
    (grads, dx): grads has the keys and shapes of ``params``; dx is (n, in) or None.
    """
    _, act_grad = get_activation(activation)
    x, logits, mask, hidden = cache["x"], cache["logits"], cache["mask"], cache["hidden"]
    n, (trees, nodes, width_in) = len(x), params["w_in"].shape
    w_out_flat = params["w_out"].reshape(trees * nodes, -1)
    d_hidden = g @ w_out_flat.T  # (n, trees * N)
    d_logits = d_hidden * (act_grad(logits) * mask).reshape(n, trees * nodes)
    grads = {
        "w_in": (d_logits.T @ x).reshape(trees, nodes, width_in),
        "b_in": d_logits.sum(axis=0).reshape(trees, nodes),
        "w_out": (hidden.reshape(n, trees * nodes).T @ g).reshape(trees, nodes, -1),
    }
    dx = d_logits @ params["w_in"].reshape(trees * nodes, width_in) if input_grad else None
    return grads, dx


# --- the model --------------------------------------------------------------------------------------------------


class UltraFFF(Model):
    """UltraFastBERT's fast feedforward layer: ``trees`` trees of single-neuron nodes, the whole path fires.

    Parameters
    ----------
    input_width, output_width : int
    depth : int
        Depth D >= 0 of each tree: 2**(D + 1) - 1 neurons, D + 1 of them used per input.
        UltraFastBERT-1x11 is ``UltraFFF(768, 768, 11)``: 4095 neurons, 12 used.
    trees : int
        Number K of parallel trees ("UltraFastBERT-KxD"); their outputs add up.
    activation : {"gelu", "relu", "tanh", "sigmoid", "identity"}
        GELU is the exact erf form (PyTorch's default), as UltraFastBERT.
    dtype : {"float32", "float64"}
    seed : int or None

    Notes
    -----
    Routing (spec §2): the next node is ``2 n + 1 + [z_n > 0]``; a logit of exactly 0 goes **left** (the FFF of
    arXiv 2308.14711 sends it right: the two papers' codes differ, and each layer follows its own). A NaN logit
    also goes left.

    Initialisation (spec §2): w_in, b_in ~ U(±1/√input_width); w_out ~ U(±1/√(trees (depth + 1))).

    Training is hard and has no soft decisions: ``hardening_loss()`` is 0, ``predict_soft`` is ``predict``, and the
    ``hardening`` argument of ``backward`` is accepted and ignored, so ``fffcpu.train`` works unchanged.
    No localized optimizers (``param_blocks`` is empty).
    """

    def __init__(self, input_width: int, output_width: int, depth: int, *, trees: int = 1,
                 activation: str = "gelu", dtype="float32", seed=None):
        input_width = check_positive_int(input_width, "input_width")
        output_width = check_positive_int(output_width, "output_width")
        self.depth = check_positive_int(depth, "depth", minimum=0)
        if self.depth > 40:
            raise ValueError(f"depth={depth} would need 2**{depth + 1} - 1 neurons per tree; use depth <= 40")
        self.trees = check_positive_int(trees, "trees")
        get_activation(activation)  # a clear error for an unknown name
        if activation not in _kernels.ACTIVATION_CODES:  # pragma: no cover - the two lists are kept equal
            raise ValueError(f"activation {activation!r} has no UltraFFF kernel")
        self.activation = activation
        self._set_derived()
        super().__init__(input_width, output_width, dtype, seed)

    def _derived(self) -> dict:
        return {"_act_code": _kernels.ACTIVATION_CODES[self.activation]}

    # --- structure --------------------------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        """Neurons per tree, N = 2**(depth + 1) - 1."""
        return (2 << self.depth) - 1

    @property
    def n_leaves(self) -> int:
        return 1 << self.depth

    @property
    def training_width(self) -> int:
        """Neurons of the layer, trees · N (what the masked training formulation computes)."""
        return self.trees * self.n_nodes

    @property
    def inference_size(self) -> int:
        """Neurons used per input, trees · (depth + 1)."""
        return self.trees * (self.depth + 1)

    def param_shapes(self) -> dict:
        k, n = self.trees, self.n_nodes
        return {"w_in": (k, n, self.input_width), "b_in": (k, n), "w_out": (k, n, self.output_width)}

    def init_bounds(self) -> dict:
        bound_in = 1 / math.sqrt(self.input_width)
        return {"w_in": bound_in, "b_in": bound_in, "w_out": 1 / math.sqrt(self.trees * (self.depth + 1))}

    def config(self) -> dict:
        return {
            "input_width": self.input_width,
            "output_width": self.output_width,
            "depth": self.depth,
            "trees": self.trees,
            "activation": self.activation,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    def _weights(self):
        p = self.params
        return p["w_in"], p["b_in"], p["w_out"]

    # --- inference ----------------------------------------------------------------------------------------------
    def route(self, x, *, n_jobs=None) -> np.ndarray:
        """Leaf reached in every tree: final node - (2**depth - 1), so the root decision is the top bit.

        Parameters
        ----------
        x : array-like, shape (n, input_width)
        n_jobs : int or None
            Numba threads for this call, as ``FFF.route`` (None: the current setting).

        Returns
        -------
        ndarray of int64, shape (n, trees), values in [0, 2**depth)
        """
        x = np.ascontiguousarray(self._check_x(x, per_sample=8 * self.trees, what="UltraFFF.route"))
        w_in, b_in, _ = self._weights()
        leaves = np.empty((len(x), self.trees), dtype=np.int64)
        with _threads(n_jobs):
            _kernels.route(x, w_in, b_in, self.depth, leaves)
        return leaves

    def predict(self, x, *, out=None, n_jobs=None) -> np.ndarray:
        """Hard inference, path only: ``y = Σ_trees Σ_path act(z_n) u_n``; keeps no cache.

        NaN in ``x`` is not checked: a NaN logit goes left and the output is NaN.

        Parameters
        ----------
        x : array-like, shape (n, input_width)
        out : ndarray, optional
            Where to write the result: a writeable C-contiguous array of shape (n, output_width) and the model's
            dtype that does not overlap ``x``. For large batches this saves allocating (and the system zeroing)
            an output as large as the input at every call, as ``np.matmul(..., out=)`` does for a dense layer.
        n_jobs : int or None
            Numba threads for this call (set and restored), as ``FFF.predict``; None: the current setting.

        Returns
        -------
        ndarray, shape (n, output_width), the model's dtype: ``out`` when given
        """
        if n_jobs is not None:
            with _threads(n_jobs):
                return self.predict(x, out=out)
        if is_valid_input(x, self.input_width, self.dtype):  # no checks, no copy (the batch-1 path)
            kernel = _kernels.predict_kernel(x.shape[0])
            if kernel is not None:
                y = self._output(x, out)
                p = self.params
                kernel(x, p["w_in"], p["b_in"], p["w_out"], self._act_code, y)
                return y
        else:
            x = np.ascontiguousarray(self._check_x(x, per_sample=self.output_width * self.dtype.itemsize,
                                                   what="UltraFFF.predict"))
        y = self._output(x, out)
        _kernels.predict(x, *self._weights(), self._act_code, self.depth, y)
        return y

    def _output(self, x, out):
        """``out`` checked against ``x``, or a new output array (64-byte aligned: whole vectors per row)."""
        shape = (x.shape[0], self.output_width)
        if out is None:
            return _aligned_empty(shape, self.dtype) if x.shape[0] >= _kernels.GROUPED_MIN_BATCH else \
                np.empty(shape, dtype=self.dtype)
        return check_out(out, x, shape, self.dtype)

    def predict_soft(self, x) -> np.ndarray:
        """The same as ``predict``: UltraFFF trains hard, it has no soft mixture."""
        return self.predict(x)

    def to_bfloat16(self) -> BFloat16UltraFFF:
        """An inference-only snapshot of this layer with ``w_in`` and ``w_out`` stored in bfloat16.

        The weights are rounded to the nearest bfloat16 (ties to even), which halves the bytes every path reads;
        the arithmetic stays float32, in the same order: the snapshot's ``predict`` and ``route`` give exactly the
        bits of this layer with its weights replaced by their bfloat16 values (tested). Outputs differ from the
        float32 layer by the rounding of the weights (about 3 significant digits), and an input whose logit is
        that close to 0 can take the other branch. Later changes to this layer (training) do not reach the
        snapshot. Requires a float32 layer.
        """
        if self.dtype != np.float32:
            raise ValueError(f"to_bfloat16 needs a float32 layer (bfloat16 weights, float32 arithmetic); this "
                             f"layer is {self.dtype}")
        return BFloat16UltraFFF(self)

    # --- training -----------------------------------------------------------------------------------------------
    def forward(self, x) -> np.ndarray:
        """Training forward through the path kernels; keeps the paths (nodes, logits, activations) for ``backward``.

        Parameters
        ----------
        x : array-like, shape (n, input_width)

        Returns
        -------
        ndarray, shape (n, output_width)
        """
        per_sample = (self.output_width + 3 * self.trees * (self.depth + 1)) * 8
        x = np.ascontiguousarray(self._check_x(x, per_sample=per_sample, what="an UltraFFF training forward"))
        n, shape = len(x), (len(x), self.trees, self.depth + 1)
        nodes = np.empty(shape, dtype=np.int64)
        logits = np.empty(shape, dtype=self.dtype)
        acts = np.empty(shape, dtype=self.dtype)
        y = np.empty((n, self.output_width), dtype=self.dtype)
        order = _kernels.forward(x, *self._weights(), self._act_code, nodes, logits, acts, y)
        self._cache = {"x": x, "nodes": nodes, "logits": logits, "acts": acts, "order": order}
        return y

    def hardening_loss(self) -> float:
        """UltraFFF makes only hard decisions: always 0 (so the training loop treats every model alike)."""
        return 0.0

    def backward(self, dy, *, hardening: float = 0.0, input_grad: bool = True):
        """Path-only backprop of the last ``forward`` (spec §2), filling ``grads``.

        Parameters
        ----------
        dy : array-like, shape (n, output_width)
            ∂L/∂y for the output of the last forward.
        hardening : float
            A number >= 0, accepted for the training loop; no effect (there are no soft decisions to harden).
        input_grad : bool
            Whether to compute ∂L/∂x.

        Returns
        -------
        ndarray, shape (n, input_width), or None when ``input_grad=False``
        """
        check_nonnegative_float(hardening, "hardening")  # checked as FFF.backward checks it, then unused
        c = self._require_cache()
        x = c["x"]
        g = np.ascontiguousarray(self._check_dy(dy, len(x)))
        w_in, _, w_out = self._weights()
        grads = self.grads
        dx = np.empty_like(x) if input_grad else None
        _kernels.backward(x, g, w_in, w_out, self._act_code, c["nodes"], c["logits"], c["acts"],
                          c["order"], grads["w_in"], grads["b_in"], grads["w_out"], dx)
        return dx

    # --- UltraFastBERT state dicts ------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state_dict, *, depth: int | None = None, trees: int = 1, prefix: str = "",
                        activation: str = "gelu", dtype="float32"):
        """Build a layer from UltraFastBERT weights (a PyTorch-style state dict), without importing torch.

        Layout (spec §2): ``linear_in.weight`` (trees · N, input_width), ``linear_in.bias`` (trees · N,),
        ``linear_out.weight`` (output_width, trees · N), N = 2**(depth + 1) - 1. The rows are tree-major:
        row ``t · N + n`` is node ``n`` (heap order) of tree ``t``; so ``w_in[t, n] = linear_in.weight[t·N + n]``
        and ``w_out[t, n] = linear_out.weight[:, t·N + n]``. UltraFastBERT has no output bias: a
        ``linear_out.bias`` entry is accepted only if it is all zeros.

        Parameters
        ----------
        state_dict : mapping of str to array-like
            NumPy arrays, torch tensors (converted through ``__array__``, detached first), nested lists.
        depth : int, optional
            Inferred from N = rows / trees when omitted (N + 1 must be a power of two).
        trees : int
            The number of trees the rows hold. Pass it for a layer of several trees: the state dict does not
            record it, and some shapes fit more than one layout (3 trees of depth 0 have the rows of 1 tree of
            depth 1: 3 · 1 = 1 · 3; 5 trees of depth 1 those of 1 tree of depth 3), so the default of 1 tree
            reads such a layer as one deeper tree.
        prefix : str
            Prepended to the key names, e.g. ``"encoder.layer.0.ffn."``.
        activation, dtype
            As the constructor.

        Returns
        -------
        UltraFFF
        """
        trees = check_positive_int(trees, "trees")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str (the keys' common start, e.g. 'encoder.layer.0.'), got {prefix!r}")
        state_dict = check_state_dict(state_dict, "UltraFFF.from_state_dict")
        arrays = {}
        for key in _STATE_KEYS:
            if prefix + key not in state_dict:
                found = sorted({str(k)[:-len(key)] for k in state_dict if str(k).endswith(key)})
                hint = (f"; the keys ending in {key!r} start with {', '.join(map(repr, found[:3]))}: pass that start "
                        f"as prefix=, e.g. prefix={found[0]!r}" if found else "")
                raise KeyError(f"state dict has no {prefix + key!r}; expected the keys "
                               f"{[prefix + k for k in _STATE_KEYS]}, got {sorted(map(str, state_dict))[:10]}{hint}")
            arrays[key] = _as_numpy(state_dict[prefix + key], prefix + key)
        w_in, b_in, w_out = (arrays[k] for k in _STATE_KEYS)
        if w_in.ndim != 2:
            raise ValueError(f"{prefix}linear_in.weight must be 2-D (trees·N, input_width), got shape {w_in.shape}")
        rows, input_width = w_in.shape
        if rows % trees:
            raise ValueError(f"{prefix}linear_in.weight has {rows} rows, not a multiple of trees={trees}")
        n_nodes = rows // trees
        if depth is None:
            if n_nodes < 1 or (n_nodes + 1) & n_nodes:
                raise ValueError(
                    f"{prefix}linear_in.weight has {rows} rows = trees ({trees}) x {n_nodes}; {n_nodes} is not "
                    "2**(depth+1) - 1 for any depth: pass the right trees= (and depth=)")
            depth = (n_nodes + 1).bit_length() - 2
        depth = check_positive_int(depth, "depth", minimum=0)
        expected = trees * ((2 << depth) - 1)
        if rows != expected:
            raise ValueError(f"{prefix}linear_in.weight must have trees·(2**(depth+1) - 1) = {expected} rows for "
                             f"trees={trees}, depth={depth}; got {rows}")
        if b_in.shape != (rows,):
            raise ValueError(f"{prefix}linear_in.bias must have shape ({rows},), got {b_in.shape}")
        if w_out.ndim != 2 or w_out.shape[1] != rows:
            raise ValueError(f"{prefix}linear_out.weight must have shape (output_width, {rows}), got {w_out.shape}")
        bias_out = prefix + "linear_out.bias"
        if bias_out in state_dict:
            b_out = _as_numpy(state_dict[bias_out], bias_out)
            if b_out.shape != (w_out.shape[0],):
                raise ValueError(f"{bias_out} must have shape ({w_out.shape[0]},), got {b_out.shape}")
            if np.any(b_out):
                raise ValueError(f"{bias_out} is not zero, but the UltraFastBERT layer has no output bias")
        model = cls(input_width, w_out.shape[0], depth, trees=trees, activation=activation, dtype=dtype)
        largest = float(np.finfo(model.dtype).max)
        for key, value in (("linear_in.weight", w_in), ("linear_in.bias", b_in), ("linear_out.weight", w_out)):
            finite = np.abs(value[np.isfinite(value)])
            if finite.size and float(finite.max()) > largest:
                raise ValueError(f"{prefix}{key} holds values up to {float(finite.max()):.3g} in magnitude, beyond "
                                 f"the largest {model.dtype} ({largest:.3g}): they would become Inf")
        n = (2 << depth) - 1
        model.set_params({
            "w_in": w_in.reshape(trees, n, input_width),
            "b_in": b_in.reshape(trees, n),
            "w_out": w_out.T.reshape(trees, n, w_out.shape[0]),
        })
        return model

    def to_state_dict(self) -> dict:
        """The UltraFastBERT state dict of this layer (NumPy arrays, layout of ``from_state_dict``)."""
        rows = self.trees * self.n_nodes
        p = self.params
        return {
            "linear_in.weight": p["w_in"].reshape(rows, self.input_width).copy(),
            "linear_in.bias": p["b_in"].reshape(rows).copy(),
            "linear_out.weight": np.ascontiguousarray(p["w_out"].reshape(rows, self.output_width).T),
        }

    def summary(self) -> str:
        return (
            f"{super().summary()}; {self.training_width:,} neurons, {self.inference_size} used per input "
            f"({format_bytes(self.inference_size * (self.input_width + self.output_width + 1) * self.dtype.itemsize)}"
            " of weights read per input)"
        )


def to_bfloat16_bits(w) -> np.ndarray:
    """float32 → bfloat16, rounded to nearest (ties to even), returned as the uint16 upper halves; NaN stays NaN."""
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    return np.where(np.isnan(w), np.uint16(0x7FC0), rounded).astype(np.uint16)


def from_bfloat16_bits(bits) -> np.ndarray:
    """bfloat16 bits (uint16) → float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


class BFloat16UltraFFF:
    """Inference-only UltraFFF with bfloat16 weights: made by ``UltraFFF.to_bfloat16()``.

    ``params`` holds ``w_in`` and ``w_out`` as uint16 arrays of bfloat16 bits (the upper halves of float32
    values) and ``b_in`` in float32; ``predict`` and ``route`` run the UltraFFF kernels, which widen each weight
    exactly to float32 as they load it. Same arguments, checks and results as ``UltraFFF.predict`` / ``route``
    for a layer whose weights are the bfloat16 values (``from_bfloat16_bits(params["w_in"])``...).
    """

    dtype = np.dtype(np.float32)

    def __init__(self, layer: UltraFFF):
        self.input_width, self.output_width = layer.input_width, layer.output_width
        self.depth, self.trees, self.activation = layer.depth, layer.trees, layer.activation
        self._act_code = layer._act_code
        self.params = Parameters({"w_in": _aligned_copy(to_bfloat16_bits(layer.params["w_in"])),
                                  "b_in": layer.params["b_in"].copy(),
                                  "w_out": _aligned_copy(to_bfloat16_bits(layer.params["w_out"]))})

    @property
    def nbytes(self) -> int:
        """Bytes of the weights (half those of the float32 layer, apart from the biases)."""
        return sum(a.nbytes for a in self.params.values())

    def _check_x(self, x, *, per_sample: int = 0, what: str = "this call"):
        return check_input(x, self.input_width, self.dtype, per_sample=per_sample, what=what)

    def _weights(self):
        p = self.params
        return p["w_in"], p["b_in"], p["w_out"]

    route = UltraFFF.route
    predict = UltraFFF.predict
    _output = UltraFFF._output

    def __repr__(self) -> str:
        return (f"BFloat16UltraFFF(input_width={self.input_width}, output_width={self.output_width}, "
                f"depth={self.depth}, trees={self.trees}, activation={self.activation!r})")


def _threads(n_jobs):
    """``engine.num_threads(n_jobs)``, or nothing to do for None (the batch-1 path stays free of it)."""
    from ..engine import num_threads

    return num_threads(n_jobs) if n_jobs is not None else contextlib.nullcontext()


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    out = _aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def _as_numpy(value, name: str) -> np.ndarray:
    """A state-dict entry as a NumPy array: tensors are detached and moved to the CPU first (no torch import)."""
    for method in ("detach", "cpu"):
        if hasattr(value, method):
            value = getattr(value, method)()
    if "bfloat16" in str(getattr(value, "dtype", "")) and hasattr(value, "float"):
        value = value.float()  # NumPy has no bfloat16
    try:
        arr = np.asarray(value)
    except Exception as err:  # e.g. a tensor type NumPy cannot read
        raise TypeError(f"{name} could not be converted to a NumPy array: {err}") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr
