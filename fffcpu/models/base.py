"""What every fffcpu model shares: parameters and gradients as named arrays, input checks, configuration."""

from __future__ import annotations

import math

import numpy as np

from .._validation import check_dtype, check_fits_in_memory, check_input, check_seed, format_bytes


class Parameters(dict):
    """A model's parameter arrays by name (``model.params``): a dict whose names are fixed and whose arrays keep
    their shapes and dtypes.

    The kernels read these arrays as they are, so an array put in place of another must have the same shape and
    dtype and be C-contiguous; anything else is refused here rather than read out of bounds later. The usual ways
    to change parameters write into the arrays: ``model.params[name][...] = values`` or ``model.set_params``.
    (An optimizer holds the arrays it was built on: after replacing one, build the optimizer again.)
    """

    def __setitem__(self, name, value):
        self._check(name, value)
        dict.__setitem__(self, name, value)

    def update(self, *args, **kwargs):
        items = dict(*args, **kwargs)
        for name, value in items.items():  # every array checked before any is replaced
            self._check(name, value)
        for name, value in items.items():
            dict.__setitem__(self, name, value)

    def _check(self, name, value) -> None:
        if name not in self:
            raise KeyError(f"no parameter {name!r}: the parameters are {list(self)}")
        old = dict.__getitem__(self, name)
        if (not isinstance(value, np.ndarray) or value.shape != old.shape or value.dtype != old.dtype
                or not value.flags.c_contiguous):
            given = (f"{'a C-contiguous' if value.flags.c_contiguous else 'a non-contiguous'} array of shape "
                     f"{value.shape} and dtype {value.dtype}" if isinstance(value, np.ndarray)
                     else type(value).__name__)
            raise ValueError(f"params[{name!r}] must be a C-contiguous array of shape {old.shape} and dtype "
                             f"{old.dtype}, got {given} (to change values, write into the array: "
                             f"params[{name!r}][...] = values)")

    def __ior__(self, other):
        self.update(other)
        return self

    def _fixed(self, *args, **kwargs):
        raise TypeError(f"the parameter names of a model are fixed: {list(self)}")

    __delitem__ = pop = popitem = clear = setdefault = _fixed

    def __reduce__(self):  # copy and pickle as the plain dict of arrays
        return type(self), (dict(self),)


class Model:
    """Base class of the models: ``params`` and ``grads`` are dicts of NumPy arrays with the same keys.

    Subclasses define ``param_shapes()`` (name -> shape, in creation order), ``init_bounds()`` (name -> b for
    the U(-b, b) initialisation),
    ``config()`` (the JSON-able constructor arguments), ``forward``, ``backward`` and ``predict``.

    ``param_blocks`` maps a parameter name to the kind of block its first axis indexes ("node" or "leaf")
    for the localized optimizers (``fffcpu.optim.Localized``); models without blocks leave it empty.
    """

    param_blocks: dict = {}

    def __init__(self, input_width: int, output_width: int, dtype, seed):
        self.input_width = input_width
        self.output_width = output_width
        self.dtype = check_dtype(dtype)
        self.seed = check_seed(seed)
        self.rng = np.random.default_rng(seed)
        n_bytes = self.n_parameters * self.dtype.itemsize
        check_fits_in_memory(2 * n_bytes,
                             f"{type(self).__name__} parameters and gradients ({self.n_parameters:,} values)")
        self.params = Parameters(self._init_params(self.rng))
        self._grads = None
        self._cache = None

    def __setstate__(self, state):
        """Unpickling: the pickled attributes, then any attribute derived from the configuration (``_derived``) that
        they lack, so that a model pickled by an earlier fffcpu still runs."""
        self.__dict__.update(state)
        for name, value in self._derived().items():
            if name not in state:
                setattr(self, name, value)

    def _derived(self) -> dict:
        """Attributes computed from the configuration attributes (such as the activation's functions)."""
        return {}

    def _set_derived(self) -> None:
        """Set the ``_derived`` attributes, one ``setattr`` each, as plain assignments would (without touching
        ``__dict__``, so that the instance keeps CPython's shared-key attribute storage)."""
        for name, value in self._derived().items():
            setattr(self, name, value)

    # --- to be defined by subclasses ---------------------------------------------------------
    def param_shapes(self) -> dict:
        """Parameter name -> shape, in the order the parameters are initialised (and saved)."""
        raise NotImplementedError

    def init_bounds(self) -> dict:
        """Parameter name -> b: the initial values are drawn from U(-b, b)."""
        raise NotImplementedError

    def config(self) -> dict:
        """The constructor's arguments: ``type(model)(**model.config())`` builds a model of the same shape (with the
        initial weights of its seed); ``save`` stores them beside the parameters."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    @property
    def n_parameters(self) -> int:
        """The number of parameter values (weights and biases), from ``param_shapes()``."""
        return sum(math.prod(int(n) for n in shape) for shape in self.param_shapes().values())  # exact, any size

    @property
    def grads(self) -> dict:
        """Gradients of the last ``backward``, same keys and shapes as ``params`` (allocated on first use)."""
        if self._grads is None:
            self._grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        return self._grads

    def _init_params(self, rng) -> dict:
        """Every parameter ~ U(-b, b) with b from ``init_bounds()``, drawn in ``param_shapes()`` order directly in
        the model's dtype (no float64 temporary), into 64-byte-aligned arrays (whole cache lines and AVX-512
        vectors for the kernels; ``set_params`` copies into these arrays, so they stay aligned)."""
        bounds, params = self.init_bounds(), {}
        for name, shape in self.param_shapes().items():
            params[name] = rng.random(shape, dtype=self.dtype, out=_aligned_empty(shape, self.dtype))
            params[name] *= 2 * bounds[name]
            params[name] -= bounds[name]
        return params

    def _check_x(self, x, *, finite: bool = False, name: str = "x", per_sample: int = 0, what: str = "this call"):
        """``x`` checked and converted (``check_input``); ``per_sample``: the bytes per row the caller will
        allocate, for the memory check made before the conversion."""
        return check_input(x, self.input_width, self.dtype, name=name, finite=finite, per_sample=per_sample,
                           what=what)

    def _check_dy(self, dy, n: int):
        dy = np.asarray(dy)
        if dy.dtype.kind not in "fiub":
            raise TypeError(f"dy must hold real numbers, got dtype {dy.dtype}"
                            + (" (complex values: pass the real part explicitly)" if dy.dtype.kind == "c" else ""))
        if dy.shape != (n, self.output_width):
            raise ValueError(
                f"dy must have the shape of the last forward output ({n}, {self.output_width}), got {dy.shape}"
            )
        return dy.astype(self.dtype, copy=False)

    def _require_cache(self, what: str = "backward"):
        if self._cache is None:
            raise RuntimeError(f"{what} needs the cache of a forward pass: call forward(x) first")
        return self._cache

    def set_params(self, params: dict) -> None:
        """Overwrite every parameter with the given arrays (checked against the expected names and shapes)."""
        if not hasattr(params, "keys") or not hasattr(params, "__getitem__"):
            raise TypeError(f"params must be a dict of parameter name -> array (as model.params), got "
                            f"{type(params).__name__}")
        expected = self.param_shapes()
        missing = sorted(set(expected) - set(params))
        extra = sorted(set(params) - set(expected))
        if missing or extra:
            raise ValueError(f"parameters do not match {type(self).__name__}: missing {missing}, unexpected {extra}")
        for name, shape in expected.items():
            value = np.asarray(params[name])
            if value.shape != tuple(shape):
                raise ValueError(f"parameter {name!r} must have shape {tuple(shape)}, got {value.shape}")
            if value.dtype.kind not in "fiu":
                raise TypeError(f"parameter {name!r} must be real numbers, got dtype {value.dtype}")
            target = self.params[name].dtype
            if value.dtype.kind == "f" and value.dtype.itemsize > target.itemsize and value.size:
                largest = float(np.max(np.abs(value), initial=0, where=np.isfinite(value)))
                limit = float(np.finfo(target).max)
                if largest > limit:
                    raise ValueError(f"parameter {name!r} holds values up to {largest:.3g}, beyond the range of "
                                     f"{target} (largest {limit:.3g}): they would become Inf")
        # Copy into the existing arrays, so that optimizers holding references to them stay valid.
        for name in expected:
            np.copyto(self.params[name], np.asarray(params[name]), casting="unsafe")
        self._cache = None

    def zero_grads(self) -> None:
        """Set every gradient array to 0, in place (``backward`` overwrites them; this is for accumulating by hand)."""
        for g in self.grads.values():
            g.fill(0)

    def copy(self):
        """A deep copy: same configuration and parameters, independent arrays."""
        clone = type(self)(**self.config())
        clone.set_params(self.params)
        return clone

    @property
    def nbytes(self) -> int:
        """Bytes of the parameter arrays (gradients and caches not included)."""
        return int(sum(p.nbytes for p in self.params.values()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def summary(self) -> str:
        """One line: the configuration, the number of parameters and their size in memory."""
        return f"{self!r}: {self.n_parameters:,} parameters, {format_bytes(self.nbytes)}"


def _aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(n_bytes + align, dtype=np.uint8)
    offset = -buffer.ctypes.data % align
    return buffer[offset:offset + n_bytes].view(dtype).reshape(shape)
