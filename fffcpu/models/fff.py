"""The fast feedforward network (FFF) of Belcak & Wattenhofer, arXiv 2308.14711, in NumPy.

Training evaluates every leaf and mixes them with the soft routing probabilities (§2, "soft" FFF); inference
walks one root-to-leaf path and evaluates one leaf (§2, "hard" FFF), so it costs O(depth + leaf_width)
neurons instead of O(2**depth * leaf_width). The backward pass is written by hand (spec §1).

Array names follow the ``fastfeedforward`` PyTorch package (spec §1), so weights move between the two:

============== ======================= ==========================================
name           shape                   role
============== ======================= ==========================================
node_weights   (2**d - 1, input_width) one hyperplane per inner node
node_biases    (2**d - 1,)             its offset (the torch package stores (n, 1))
w1s            (2**d, input_width, ℓ)  leaf hidden layer
b1s            (2**d, ℓ)
w2s            (2**d, ℓ, output_width) leaf output layer
b2s            (2**d, output_width)
============== ======================= ==========================================
"""

from __future__ import annotations

import numpy as np

from .. import engine, tree
from .._validation import (check_bool, check_fits_in_memory, check_nonnegative_float, check_out,
                           check_positive_float, check_positive_int, check_probability, check_state_dict, format_bytes,
                           physical_memory_bytes)
from ..functional import bernoulli_entropy, bernoulli_entropy_grad, get_activation, sigmoid
from .base import Model

__all__ = ["FFF"]

_USAGE_KEYS = ("node_soft", "node_hard", "leaf_soft", "leaf_hard")


class FFF(Model):
    """Fast feedforward network: a binary tree of routing hyperplanes with a small MLP in every leaf.

    Parameters
    ----------
    input_width, leaf_width, output_width : int
        Widths of the input, of each leaf's hidden layer (ℓ), and of the output.
    depth : int
        Depth d >= 0 of the tree: 2**d - 1 routing nodes and 2**d leaves. ``depth=0`` is a plain
        feedforward layer of width ``leaf_width``.
    activation : {"relu", "gelu", "tanh", "sigmoid", "identity"}
        Activation of the leaf hidden layers.
    region_leak : float in [0, 1]
        Training only (§3.3): per sample and per node, with this probability the two children swap their
        mixture weights (p becomes 1 - p). Drawn from the model's seeded generator.
    train_hardened : bool
        If True the training forward routes hard, exactly as ``predict`` (logit >= 0 goes right), as the
        paper's hard training.
    straight_through : bool or None
        With ``train_hardened=True``: the backward pass treats each hard decision as if it were
        p = σ(z) (straight-through estimator), so node weights keep learning from the prediction loss.
        None (the default) means True with ``train_hardened=True`` and False without (where True is refused).
        ``False`` with hard training is the paper's version, as the PyTorch package (which rounds p): node weights
        then receive gradient only from the hardening term.
    dtype : {"float32", "float64"}
    seed : int or None
        Seeds the initialisation and the region-leak draws.

    Notes
    -----
    Decision rule (spec §1): ``p_i = σ(w_i·x + b_i)`` weights the *right* child (2i + 2); a hard decision
    goes right iff the logit is >= 0. The mixture weight of a leaf is the product of the decisions on its
    path; the soft output is ``y = Σ_leaf c_leaf (act(x W1 + b1) W2 + b2)``.

    Initialisation as the PyTorch package: node weights/biases and w1s/b1s ~ U(±1/√input_width),
    w2s/b2s ~ U(±1/√leaf_width).
    """

    param_blocks = {
        "node_weights": "node",
        "node_biases": "node",
        "w1s": "leaf",
        "b1s": "leaf",
        "w2s": "leaf",
        "b2s": "leaf",
    }

    def __init__(
        self,
        input_width: int,
        leaf_width: int,
        output_width: int,
        depth: int,
        *,
        activation: str = "relu",
        region_leak: float = 0.0,
        train_hardened: bool = False,
        straight_through: bool | None = None,
        dtype="float32",
        seed=None,
    ):
        input_width = check_positive_int(input_width, "input_width")
        self.leaf_width = check_positive_int(leaf_width, "leaf_width")
        output_width = check_positive_int(output_width, "output_width")
        self.depth = check_positive_int(depth, "depth", minimum=0)
        if self.depth > 40:
            raise ValueError(
                f"depth={depth} would need 2**{depth} leaves; an FFF of that depth cannot be stored (use depth <= 40)"
            )
        self.activation = activation
        self._set_derived()
        self.region_leak = check_probability(region_leak, "region_leak")
        train_hardened = check_bool(train_hardened, "train_hardened")
        straight_through = (train_hardened if straight_through is None
                            else check_bool(straight_through, "straight_through"))
        if straight_through and not train_hardened:
            raise ValueError("straight_through=True only applies to hard training: also pass train_hardened=True")
        self.train_hardened = train_hardened
        self.straight_through = straight_through
        super().__init__(input_width, output_width, dtype, seed)
        self.leak_rng = np.random.default_rng(self.rng.integers(2**63))
        self.reset_usage()

    def _derived(self) -> dict:
        act, act_grad = get_activation(self.activation)
        return {"_act": act, "_act_grad": act_grad, "_act_code": engine.activation_code(self.activation)}

    # --- structure ----------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return tree.n_nodes(self.depth)

    @property
    def _sample_work(self) -> int:
        return engine.sample_work(self.input_width, self.depth, self.leaf_width, self.output_width)

    @property
    def n_leaves(self) -> int:
        return tree.n_leaves(self.depth)

    @property
    def training_width(self) -> int:
        return tree.training_width(self.depth, self.leaf_width)

    @property
    def inference_size(self) -> int:
        return tree.inference_size(self.depth, self.leaf_width)

    def param_shapes(self) -> dict:
        nn, nl, i, h, o = self.n_nodes, self.n_leaves, self.input_width, self.leaf_width, self.output_width
        return {
            "node_weights": (nn, i),
            "node_biases": (nn,),
            "w1s": (nl, i, h),
            "b1s": (nl, h),
            "w2s": (nl, h, o),
            "b2s": (nl, o),
        }

    def init_bounds(self) -> dict:
        bound_in, bound_leaf = 1 / np.sqrt(self.input_width), 1 / np.sqrt(self.leaf_width)
        return {"node_weights": bound_in, "node_biases": bound_in, "w1s": bound_in, "b1s": bound_in,
                "w2s": bound_leaf, "b2s": bound_leaf}

    def config(self) -> dict:
        return {
            "input_width": self.input_width,
            "leaf_width": self.leaf_width,
            "output_width": self.output_width,
            "depth": self.depth,
            "activation": self.activation,
            "region_leak": self.region_leak,
            "train_hardened": self.train_hardened,
            "straight_through": self.straight_through,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    # --- usage --------------------------------------------------------------------------------
    def reset_usage(self) -> None:
        """Zero the cumulative usage counters (``usage``) and the last batch's (``batch_usage``)."""
        self.usage = {
            "node_soft": np.zeros(self.n_nodes), "node_hard": np.zeros(self.n_nodes),
            "leaf_soft": np.zeros(self.n_leaves), "leaf_hard": np.zeros(self.n_leaves),
        }
        self.batch_usage = {key: np.zeros_like(value) for key, value in self.usage.items()}

    def block_usage(self, counts: str = "soft") -> dict:
        """Samples of the last training batch that reached each node and leaf, for ``Localized`` optimizers.

        Returns ``{"node": (2**d - 1,), "leaf": (2**d,)}``; ``counts="soft"`` sums reach probabilities,
        ``"hard"`` counts the samples whose hard path (after region leak) passes there: in hard training the path
        of ``route``, in soft training that of the training forward's logits (a matrix product, whose sums can put
        a logit within rounding of 0 on the other side of it).
        """
        if counts not in ("soft", "hard"):
            raise ValueError(f"counts must be 'soft' or 'hard', got {counts!r}")
        return {"node": self.batch_usage[f"node_{counts}"], "leaf": self.batch_usage[f"leaf_{counts}"]}

    # --- hard inference (spec §1; arXiv 2308.14711 §2) ------------------------------------------
    # The Numba engine (fffcpu.engine) does the work; the *_reference methods are the readable NumPy version
    # of the same computation, kept for the tests.
    def _route_reference(self, x: np.ndarray) -> np.ndarray:
        """Walk each sample from the root: go right iff ``w_node·x + b_node >= 0``. Returns leaf ids (int64)."""
        w, b = self.params["node_weights"], self.params["node_biases"]
        node = np.zeros(len(x), dtype=np.int64)
        for _ in range(self.depth):
            logit = np.einsum("bi,bi->b", x, w[node]) + b[node]
            node = 2 * node + 1 + (logit >= 0)
        return node - self.n_nodes

    def _hard_outputs_reference(self, x: np.ndarray, leaves: np.ndarray) -> np.ndarray:
        """Output of leaf ``leaves[b]`` for each sample b, b2 included; samples are grouped by leaf."""
        w1s, b1s, w2s, b2s = (self.params[k] for k in ("w1s", "b1s", "w2s", "b2s"))
        y = np.empty((len(x), self.output_width), dtype=self.dtype)
        order = np.argsort(leaves, kind="stable")
        used, starts = np.unique(leaves[order], return_index=True)
        for leaf, rows in zip(used, np.split(order, starts[1:])):
            hidden = self._act(x[rows] @ w1s[leaf] + b1s[leaf])
            y[rows] = hidden @ w2s[leaf] + b2s[leaf]
        return y

    def _hard_outputs(self, x: np.ndarray, leaves: np.ndarray) -> np.ndarray:
        """Output of leaf ``leaves[b]`` for each sample b, b2 included, with the same kernel as ``predict``.

        Hard training (``train_hardened``) calls this, so hard training forward and ``predict`` agree bit for bit.
        It runs on the calling thread (every path gives the same bits): between the BLAS calls of a training step,
        parallel Numba workers compete with BLAS threads that are still spinning, and on 2 cores hard training of
        ``FFF(64, 8, 10, 4)`` on digits, batch 64, took 16x as long with 2 Numba threads as with this serial call.
        """
        return engine.leaf_outputs(x, leaves, self.params, self.activation, method="serial")

    def route(self, x, *, n_jobs=None) -> np.ndarray:
        """Leaf reached by each sample under hard routing (logit >= 0 goes right; a NaN logit goes left).

        Parameters
        ----------
        x : array-like, shape (n, input_width)
        n_jobs : int or None
            Numba threads for this call (None: the current ``numba.get_num_threads()``; -1: all).

        Returns
        -------
        ndarray of int64, shape (n,), values in [0, 2**depth)
        """
        p = self.params
        if n_jobs is not None:  # checked on every path, those that run on the calling thread included
            engine.resolve_n_jobs(n_jobs)
        if engine.is_ready(x, self.input_width, self.dtype):  # small C-contiguous batch of our dtype: no copies
            return engine.route_small(x, p["node_weights"], p["node_biases"], self.depth)
        x = np.ascontiguousarray(self._check_x(x, per_sample=self._inference_bytes, what="hard inference"))
        return engine.run_route(x, p["node_weights"], p["node_biases"], self.depth, n_jobs=n_jobs)

    def predict(self, x, *, n_jobs=None, out=None) -> np.ndarray:
        """Hard inference (§2): route each sample to one leaf and evaluate that leaf only, b2 included.

        Runs on the Numba engine (``fffcpu.engine``): serial for small batches, samples grouped by leaf for
        large ones; every path gives the same bits. Allocates O(n · output_width) beyond the output, never an
        (n, 2**depth) array; a batch that would not fit in memory raises ``MemoryError`` before allocating.

        NaN/Inf in ``x`` is not checked (it costs a pass over the data): a NaN logit compares false with 0,
        so the sample goes left at that node, and its output is NaN (Inf inputs give ±Inf or NaN logits and
        outputs, routed by the same rule).

        Parameters
        ----------
        x : array-like, shape (n, input_width)
        n_jobs : int or None
            Numba threads for this call (None: the current ``numba.get_num_threads()``; -1: all).
        out : ndarray, optional
            Where to write the result: a writeable C-contiguous array of shape (n, output_width) and the model's
            dtype that does not overlap ``x`` (checked before anything is written). Calls in a loop can then reuse
            one output instead of allocating one per call, as ``np.matmul(..., out=)`` does for a dense layer.

        Returns
        -------
        ndarray, shape (n, output_width), the model's dtype: ``out`` when given
        """
        if n_jobs is not None:  # checked on every path, those that run on the calling thread included
            engine.resolve_n_jobs(n_jobs)
        if engine.is_ready(x, self.input_width, self.dtype) and (  # small C-contiguous batch of our dtype
                x.shape[0] == 1 or x.shape[0] <= engine.serial_rows(self._sample_work)):
            if out is not None:  # (no call at all on the batch-1 path without one)
                out = self._check_out(out, x)
            return engine.predict_small(x, self.params, self.depth, self.activation, out)
        x = np.ascontiguousarray(self._check_x(x, per_sample=self._inference_bytes, what="hard inference"))
        if out is not None:
            out = self._check_out(out, x)
        p = self.params  # the model's own arrays: their shapes and dtype cannot change (models.base.Parameters)
        arrays = (p["node_weights"], p["node_biases"], p["w1s"], p["b1s"], p["w2s"], p["b2s"])
        return engine.run_predict(x, arrays, self.depth, self._act_code, n_jobs=n_jobs, out=out)

    @property
    def _inference_bytes(self) -> int:
        """Bytes hard inference allocates per sample: its output row and four integers of bookkeeping (leaf,
        sort order, tile start and tile leaf)."""
        return self.output_width * self.dtype.itemsize + 4 * 8

    def _check_out(self, out, x):
        """``out`` checked (``_validation.check_out``) as the output of ``predict`` on the checked input ``x``."""
        return check_out(out, x, (x.shape[0], self.output_width), self.dtype)

    def predict_soft(self, x, *, chunk_size: int = 4096) -> np.ndarray:
        """The soft (training) mixture over all leaves, without region leak and without caching.

        Parameters
        ----------
        x : array-like, shape (n, input_width)
        chunk_size : int
            Samples evaluated at a time at most (every leaf is evaluated for each of them); a positive integer.
            Fewer when a chunk's intermediate arrays (those of the training forward: a few times the training
            width per sample) would take more than a quarter of the machine's memory, so that a deep tree is
            evaluated in smaller chunks instead of exhausting memory.

        Returns
        -------
        ndarray, shape (n, output_width)
        """
        chunk_size = check_positive_int(chunk_size, "chunk_size")
        x = self._check_x(x, per_sample=self.output_width * self.dtype.itemsize, what="FFF.predict_soft")
        total = physical_memory_bytes()
        if total is not None:
            chunk_size = max(1, min(chunk_size, total // 4 // self._forward_bytes_per_sample()))
        out = np.empty((len(x), self.output_width), dtype=self.dtype)
        for start in range(0, len(x), chunk_size):
            cache = self._soft_forward(x[start:start + chunk_size], flips=None, hard=False, paths=False)
            out[start:start + chunk_size] = cache["y"]
        return out

    # --- training forward and backward -------------------------------------------------------

    def _forward_bytes_per_sample(self) -> int:
        """Bytes of the arrays a soft forward keeps per sample (leaf pre-activations, activations and outputs;
        node logits, probabilities and reaches; leaf weights)."""
        per_sample = 3 * self.training_width + 4 * self.n_nodes + 2 * self.n_leaves + self.output_width
        return per_sample * self.dtype.itemsize

    def forward(self, x, *, flips=None) -> np.ndarray:
        """Training forward: the mixture over all leaves (hard mixture if ``train_hardened``).

        Keeps what ``backward`` needs and updates the usage counters.

        Parameters
        ----------
        x : array-like, shape (n, input_width)
        flips : ndarray of bool, shape (n, 2**depth - 1), optional
            Region-leak transpositions to apply (True swaps the node's children for that sample).
            By default they are drawn with probability ``region_leak`` from ``leak_rng``.

        Returns
        -------
        ndarray, shape (n, output_width)
        """
        x = self._check_x(x, per_sample=self._forward_bytes_per_sample(), what="a training forward")
        n = len(x)
        check_fits_in_memory(n * self._forward_bytes_per_sample(), f"a training forward of {n:,} samples")
        if flips is None and self.region_leak > 0 and self.n_nodes > 0:
            flips = self.leak_rng.random((n, self.n_nodes)) < self.region_leak
        elif flips is not None:
            flips = np.asarray(flips)
            if flips.dtype != bool:  # a cast would turn every nonzero probability into True: 0/1 integers only
                if flips.dtype.kind not in "iu" or not np.isin(flips, (0, 1)).all():
                    raise TypeError(f"flips must be a bool array (True: the node swaps its children), or of 0 and 1, "
                                    f"got dtype {flips.dtype}")
                flips = flips.astype(bool)
            if flips.shape != (n, self.n_nodes):
                raise ValueError(f"flips must have shape ({n}, {self.n_nodes}), got {flips.shape}")
        self._cache = self._soft_forward(x, flips=flips, hard=self.train_hardened)
        self._count_usage(self._cache)
        return self._cache["y"]

    def _soft_forward(self, x, *, flips, hard: bool, paths: bool = True) -> dict:
        """The training forward's arrays; ``paths``: also each sample's hard path in soft training (``leaves``, for
        the usage counts), which ``predict_soft`` does without."""
        p = self.params
        n, d, width = len(x), self.depth, self.leaf_width
        logits = x @ p["node_weights"].T + p["node_biases"]  # (n, n_nodes)
        decisions, leaves = None, None
        if hard or paths:
            decisions = logits >= 0
            if flips is not None:
                decisions ^= flips
        if hard:
            # Each sample's hard path (region leak applied) with the logits of the routing kernel, bit for bit: the
            # matrix product above sums in another order, and a logit within rounding of 0 could fall on the other
            # side of 0 there than in ``route`` and ``predict``.
            leaves = engine.route_flipped(x, p["node_weights"], p["node_biases"], d, flips)
            rows = np.arange(n)
            for level, node in enumerate(self._path_nodes(leaves)):  # the path's decisions: the kernel's
                decisions[rows, node] = (leaves >> (d - 1 - level)) & 1
            right = decisions.astype(self.dtype)  # the "probability" of going right is 0 or 1
        else:
            # Only the usage counts follow these paths: the decisions of the logits above, which can differ from
            # ``route``'s at a logit within rounding of 0 (the routing kernel here too would add about 5% to a soft
            # training step of the benchmark's FFF(784, 8, 10, 4) at batch 256).
            leaves = self._leaves_from_decisions(decisions) if paths else None
            right = sigmoid(logits)
            if flips is not None:
                right = np.where(flips, 1 - right, right)

        # Reach probability of every node, level by level, then the mixture weight of every leaf.
        reach_levels = [np.ones((n, 1), dtype=self.dtype)]
        for level in range(d):
            r, q = reach_levels[-1], right[:, tree.level_slice(level)]
            reach_levels.append(np.stack([r * (1 - q), r * q], axis=2).reshape(n, 2 << level))
        mixture = reach_levels[-1]  # (n, n_leaves)

        # All leaves at once: one GEMM for the hidden layers, one for the mixed output layers.
        w1_flat = p["w1s"].transpose(1, 0, 2).reshape(self.input_width, self.training_width)
        pre = x @ w1_flat + p["b1s"].reshape(-1)  # (n, n_leaves * ℓ)
        hidden = self._act(pre)
        # Each leaf's neurons scaled by that leaf's mixture weight (broadcast over an (n, leaves, ℓ) view).
        mixed_hidden = (hidden.reshape(n, self.n_leaves, width) * mixture[:, :, None]).reshape(n, self.training_width)
        y = mixed_hidden @ p["w2s"].reshape(self.training_width, self.output_width) + mixture @ p["b2s"]
        if hard:
            # The same routing and leaf evaluation as predict, so hard training forward and hard inference agree
            # exactly.
            y = self._hard_outputs(x, leaves)
        return {
            "x": x, "logits": logits, "right": right, "flips": flips, "leaves": leaves, "reach_levels": reach_levels,
            "w1_flat": w1_flat, "pre": pre, "hidden": hidden,
            "mixed_hidden": mixed_hidden, "y": y,
        }

    def _leaves_from_decisions(self, decisions: np.ndarray) -> np.ndarray:
        """Leaf ids from per-node hard decisions (n, n_nodes), following each sample's own path."""
        n = len(decisions)
        node = np.zeros(n, dtype=np.int64)
        rows = np.arange(n)
        for _ in range(self.depth):
            node = 2 * node + 1 + decisions[rows, node]
        return node - self.n_nodes

    def _path_nodes(self, leaves: np.ndarray) -> list:
        """The inner node each sample passes at each level on its way to ``leaves``, root first (``depth``
        arrays of shape (n,))."""
        d = self.depth
        return [((leaves + (1 << d)) >> (d - level)) - 1 for level in range(d)]

    def _count_usage(self, cache: dict) -> None:
        nodes = self.n_nodes
        reach = np.concatenate(cache["reach_levels"], axis=1)  # (n, 2**(d+1) - 1): every node, then leaves
        self.batch_usage["node_soft"] = reach[:, :nodes].sum(axis=0, dtype=np.float64)
        self.batch_usage["leaf_soft"] = reach[:, nodes:].sum(axis=0, dtype=np.float64)
        leaves = cache["leaves"]
        leaf_hard = np.bincount(leaves, minlength=self.n_leaves).astype(np.float64)
        # A node's hard count is the sum of the hard counts of the leaves below it.
        node_hard = np.zeros(nodes)
        level_counts = leaf_hard
        for level in reversed(range(self.depth)):
            level_counts = level_counts[0::2] + level_counts[1::2]
            node_hard[tree.level_slice(level)] = level_counts
        self.batch_usage["leaf_hard"], self.batch_usage["node_hard"] = leaf_hard, node_hard
        for key in _USAGE_KEYS:
            self.usage[key] += self.batch_usage[key]

    def hardening_loss(self) -> float:
        """Mean Bernoulli entropy (natural log) of the node decisions of the last ``forward`` (§3.2).

        The mean runs over the batch and the nodes, as the PyTorch package; the paper sums instead, so
        ``paper_sum = n_samples * n_nodes * hardening_loss()`` and a paper weight h_paper corresponds to
        ``hardening = h_paper * n_samples * n_nodes`` here. Zero for depth 0.
        """
        if self.depth == 0:  # no node, no decision: zero whether or not a forward has run
            return 0.0
        logits = self._require_cache("hardening_loss")["logits"]
        if logits.size == 0:
            return 0.0
        return float(bernoulli_entropy(logits).mean(dtype=np.float64))

    def sharpen(self, factor: float) -> FFF:
        """Multiply every node's weights and bias by ``factor`` > 0, in place; returns the model.

        A node's logit is multiplied by ``factor``, so its sign, and with it hard routing (``route``,
        ``predict``), does not change, while the soft decisions ``σ(factor · z)`` move towards 0 or 1
        (``factor`` > 1) or towards 1/2 (``factor`` < 1): ``predict_soft`` approaches ``predict`` as the
        factor grows. A power of two is exact in floating point (barring overflow and underflow), so routes
        stay identical bit for bit; another factor rounds the products, which can flip a logit within a
        rounding error of 0. ``fffcpu.train(..., sharpening=...)`` calls this after every epoch, so that the
        soft model being trained becomes the hard one.

        Raises ``ValueError`` (model unchanged) if ``factor`` is not a positive finite number or would make
        a node parameter overflow the model's dtype.
        """
        factor = check_positive_float(factor, "factor")
        p, top = self.params, float(np.finfo(self.dtype).max)
        largest = max((float(np.abs(p[k]).max()) for k in ("node_weights", "node_biases") if p[k].size), default=0.0)
        if factor > top or largest * factor > top:
            raise ValueError(f"sharpening by {factor:g} would overflow {self.dtype}: the largest node parameter "
                             f"is {largest:g}; factor must be at most {top / max(largest, 1.0):g}")
        for name in ("node_weights", "node_biases"):
            p[name] *= p[name].dtype.type(factor)
        self._cache = None  # the last forward's logits no longer belong to these weights
        return self

    def backward(self, dy, *, hardening: float = 0.0, input_grad: bool = True):
        """Hand-written backprop of the last ``forward`` (spec §1), filling ``grads``.

        Parameters
        ----------
        dy : array-like, shape (n, output_width)
            ∂L/∂y for the output of the last forward.
        hardening : float
            Weight h of the hardening term: the gradient of ``h * hardening_loss()`` is added.
        input_grad : bool
            Whether to compute ∂L/∂x (skip it for a first layer: it costs a GEMM).

        Returns
        -------
        ndarray, shape (n, input_width), or None when ``input_grad=False``
        """
        c = self._require_cache()
        x, p, g = c["x"], self.params, self._check_dy(dy, len(c["x"]))
        hardening = check_nonnegative_float(hardening, "hardening")
        n, width, grads = len(x), self.leaf_width, self.grads
        w2_flat = p["w2s"].reshape(self.training_width, self.output_width)
        mixture = c["reach_levels"][-1]

        # Leaves: each leaf MLP sees the upstream gradient c_leaf * g.
        grads["b2s"][...] = mixture.T @ g
        grads["w2s"][...] = (c["mixed_hidden"].T @ g).reshape(grads["w2s"].shape)
        d_mixed = g @ w2_flat.T  # ∂L/∂(c·hidden), (n, n_leaves * ℓ)
        d_pre = (d_mixed.reshape(n, self.n_leaves, width) * mixture[:, :, None]).reshape(n, self.training_width)
        d_pre *= self._act_grad(c["pre"])
        w1_grad = (x.T @ d_pre).reshape(self.input_width, self.n_leaves, width)
        grads["w1s"][...] = w1_grad.transpose(1, 0, 2)
        grads["b1s"][...] = d_pre.sum(axis=0).reshape(self.n_leaves, width)
        dx = d_pre @ c["w1_flat"].T if input_grad else None

        if self.depth == 0:
            return dx
        # Nodes: V(leaf) = g·y_leaf; V(i) = p_i V(right) + (1 - p_i) V(left);
        # ∂L/∂p_i = r_i (V(right) - V(left)), with r_i the reach probability of node i.
        value = (c["hidden"] * d_mixed).reshape(n, self.n_leaves, width).sum(axis=2) + g @ p["b2s"].T
        d_right = np.empty((n, self.n_nodes), dtype=self.dtype)
        for level in reversed(range(self.depth)):
            left, right_value = value[:, 0::2], value[:, 1::2]
            q = c["right"][:, tree.level_slice(level)]
            d_right[:, tree.level_slice(level)] = c["reach_levels"][level] * (right_value - left)
            value = q * right_value + (1 - q) * left
        d_logits = d_right * self._decision_grad(c)
        if hardening and d_logits.size:  # (an empty batch has no entropy)
            d_logits += (hardening / d_logits.size) * bernoulli_entropy_grad(c["logits"])
        grads["node_weights"][...] = d_logits.T @ x
        grads["node_biases"][...] = d_logits.sum(axis=0)
        if input_grad:
            dx += d_logits @ p["node_weights"]
        return dx

    def _decision_grad(self, c: dict) -> np.ndarray:
        """∂(right-child weight)/∂logit: σ'(z), negated where region leak swapped the children.

        Zero under plain hard training; σ'(z) under the straight-through estimator.
        """
        if self.train_hardened and not self.straight_through:
            return np.zeros_like(c["logits"])
        s = sigmoid(c["logits"])
        grad = s * (1 - s)
        if c["flips"] is not None:
            grad = np.where(c["flips"], -grad, grad)
        return grad

    def summary(self) -> str:
        """One line: the configuration, parameters and their size; training width, inference size, and the bytes of
        weights hard inference reads per input (the path's node rows and biases, one leaf)."""
        leaf = self.leaf_width * (self.input_width + 1 + self.output_width) + self.output_width
        path = self.depth * (self.input_width + 1) + leaf
        return (
            f"{super().summary()}; training width {self.training_width:,}, "
            f"inference size {self.inference_size} neurons ({format_bytes(path * self.dtype.itemsize)} of weights "
            "read per input)"
        )

    # --- interop with the PyTorch package fastfeedforward (spec §1) ---------------------------
    @classmethod
    def from_fastfeedforward(cls, state_dict, *, activation: str = "relu", usage_mode: str = "soft", dtype=None,
                             **options):
        """Build an FFF from a ``fastfeedforward.FFF`` state dict, without importing torch.

        Parameters
        ----------
        state_dict : mapping
            ``torch_model.state_dict()`` (torch tensors) or the same keys holding arrays: ``node_weights``
            (n, in), ``node_biases`` (n, 1) or (n,), ``w1s``, ``b1s``, ``w2s``, ``b2s``, optionally ``depth``
            and the usage buffers ``node_usage``/``leaf_usage``.
        activation : str
            The activation the torch model was built with (a state dict does not record it; ReLU is its default).
        usage_mode : {"soft", "hard"}
            Which of our usage counters receives the package's usage buffers, when present.
        dtype : {"float32", "float64"}, optional
            Defaults to the dtype of ``w1s``.
        **options
            Other ``FFF`` keyword arguments (``region_leak``, ``train_hardened``, ``seed``, ...).
        """
        state_dict = check_state_dict(state_dict, "FFF.from_fastfeedforward")
        if usage_mode not in ("soft", "hard"):
            raise ValueError(f"usage_mode must be 'soft' or 'hard', got {usage_mode!r}")
        arrays = {key: _to_numpy(value) for key, value in state_dict.items()}
        missing = [k for k in ("node_weights", "node_biases", "w1s", "b1s", "w2s", "b2s") if k not in arrays]
        if missing:
            raise ValueError(f"state_dict lacks {missing}; expected the keys of fastfeedforward.FFF")
        w1s, w2s = arrays["w1s"], arrays["w2s"]
        if w1s.ndim != 3 or w2s.ndim != 3:
            raise ValueError(f"w1s and w2s must be 3-D, got shapes {w1s.shape} and {w2s.shape}")
        n_leaves = w1s.shape[0]
        depth = int(n_leaves).bit_length() - 1
        if n_leaves < 1 or n_leaves != 1 << depth:
            raise ValueError(f"w1s has {n_leaves} leaves, which is not a power of two (1, 2, 4, ...)")
        if "depth" in arrays:
            given = arrays["depth"]
            if np.size(given) != 1 or np.asarray(given).dtype.kind not in "iu":
                raise ValueError(f"state_dict['depth'] must be one integer, got {given!r}")
            if int(np.asarray(given).reshape(())) != depth:
                raise ValueError(f"state_dict says depth={int(np.asarray(given).reshape(()))} but w1s has "
                                 f"{n_leaves} leaves")
        if dtype is None:
            dtype = w1s.dtype if w1s.dtype.name in ("float32", "float64") else "float32"
        model = cls(w1s.shape[1], w1s.shape[2], w2s.shape[2], depth, activation=activation, dtype=dtype, **options)
        params = {k: arrays[k] for k in model.param_shapes()}
        params["node_biases"] = params["node_biases"].reshape(-1)
        model.set_params(params)
        for kind, n in (("node", model.n_nodes), ("leaf", model.n_leaves)):
            if f"{kind}_usage" in arrays:
                usage = arrays[f"{kind}_usage"]
                if usage.size != n:
                    raise ValueError(f"state_dict['{kind}_usage'] must hold {n} values (one per {kind}), got "
                                     f"shape {usage.shape}")
                model.usage[f"{kind}_{usage_mode}"][...] = usage.reshape(-1)
        return model

    def to_fastfeedforward(self, *, usage_mode: str | None = None) -> dict:
        """The parameters as a ``fastfeedforward.FFF`` state dict of NumPy arrays.

        Load it with ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()})``.
        ``node_biases`` gets the package's (n, 1) shape and ``depth`` is included; with
        ``usage_mode="soft"`` or ``"hard"`` the matching usage counters are added as ``node_usage`` and
        ``leaf_usage`` (for a torch model built with that ``usage_mode``).
        """
        state = {k: v.copy() for k, v in self.params.items()}
        state["node_biases"] = state["node_biases"].reshape(-1, 1)
        state["depth"] = np.array(self.depth, dtype=np.int64)
        if usage_mode is not None:
            if usage_mode not in ("soft", "hard"):
                raise ValueError(f"usage_mode must be None, 'soft' or 'hard', got {usage_mode!r}")
            state["node_usage"] = self.usage[f"node_{usage_mode}"].astype(np.float32)
            state["leaf_usage"] = self.usage[f"leaf_{usage_mode}"].astype(np.float32)
        return state


def _to_numpy(value) -> np.ndarray:
    """A torch tensor (without importing torch) or anything array-like, as a NumPy array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
