"""What every model promises, checked once for all of them."""

import copy
import pickle
import re

import numpy as np
import pytest

from fffcpu import FF, FFF, UltraFFF

MODELS = {
    "FF": lambda: FF(4, 3, 2),
    "FFF": lambda: FFF(4, 2, 2, 2),
    "UltraFFF": lambda: UltraFFF(4, 2, 2),
}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_backward_needs_forward_and_matching_dy(make):
    model = make()
    with pytest.raises(RuntimeError, match="call forward"):
        model.backward(np.zeros((1, 2)))
    model.forward(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"dy must have the shape .* \(3, 2\), got \(3, 3\)"):
        model.backward(np.zeros((3, 3)))


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_grads_have_the_keys_and_shapes_of_params(make):
    model = make()
    model.forward(np.random.default_rng(0).normal(size=(5, 4)))
    dx = model.backward(np.ones((5, 2)))
    assert dx.shape == (5, 4)
    assert set(model.grads) == set(model.params)
    for name, p in model.params.items():
        assert model.grads[name].shape == p.shape and model.grads[name].dtype == p.dtype


ENTRY_POINTS = [(name, method) for name in MODELS for method in ("predict", "route", "forward", "predict_soft")
                if not (name == "FF" and method == "route")]  # a dense layer has no routes


@pytest.mark.parametrize("name, method", ENTRY_POINTS)
def test_bad_inputs(name, method):
    f = getattr(MODELS[name](), method)
    with pytest.raises(ValueError, match="x has 3 features, the model was built for input_width=4"):
        f(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"2-D \(n_samples, 4\), got shape \(4,\); for one sample use"):
        f(np.zeros(4))
    with pytest.raises(TypeError, match="complex"):
        f(np.zeros((2, 4), dtype=complex))
    with pytest.raises(TypeError, match="real numbers"):
        f(np.array([["a", "b", "c", "d"]]))
    assert f(np.ones((2, 4), dtype=np.int64)).shape[0] == 2  # integers are converted
    assert f(np.asfortranarray(np.ones((3, 4)))).shape[0] == 3  # any memory layout


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_parameters_are_64_byte_aligned_and_stay_so(make):
    model = make()
    assert all(p.ctypes.data % 64 == 0 and p.flags.c_contiguous for p in model.params.values())
    model.set_params({k: np.ones(v.shape) for k, v in model.params.items()})
    assert all(p.ctypes.data % 64 == 0 and (p == 1).all() for p in model.params.values())


@pytest.mark.parametrize("name, method", ENTRY_POINTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batches_beyond_memory_are_refused_before_allocating(name, method, dtype):
    # a broadcast view takes no memory; its conversion, output and caches would take terabytes
    x = np.broadcast_to(np.zeros(4, dtype), (10**11, 4))
    with pytest.raises(MemoryError, match=r"on 100,000,000,000 samples would need .* more than this machine's"):
        getattr(MODELS[name](), method)(x)


@pytest.mark.parametrize("make", [*MODELS.values(), lambda: UltraFFF(4, 2, 2).to_bfloat16()],
                         ids=[*MODELS.keys(), "BFloat16UltraFFF"])
def test_params_keep_their_names_shapes_and_dtypes(make):
    # the kernels read the arrays as they are: a replacement of another shape would be read out of bounds
    model = make()
    x = np.random.default_rng(0).normal(size=(40, 4))
    expected = model.predict(x)
    name, array = next(iter(model.params.items()))
    bad = [np.zeros(array.shape[:-1] + (array.shape[-1] + 1,), array.dtype),  # a longer last axis
           array.astype(np.float64 if array.dtype != np.float64 else np.float32),  # another dtype
           np.asfortranarray(np.broadcast_to(array, (2,) + array.shape))[0],  # not C-contiguous
           array.tolist()]
    for value in bad:
        with pytest.raises(ValueError, match=re.escape(f"params['{name}'] must be a C-contiguous array of shape "
                                                       f"{array.shape} and dtype {array.dtype}, got")):
            model.params[name] = value
        with pytest.raises(ValueError, match=rf"params\['{name}'\] must be"):
            model.params.update({name: value})
    with pytest.raises(KeyError, match="no parameter 'extra': the parameters are"):
        model.params["extra"] = array.copy()
    for change in (lambda p: p.pop(name), lambda p: p.popitem(), lambda p: p.clear(), lambda p: p.__delitem__(name),
                   lambda p: p.setdefault("extra", array)):
        with pytest.raises(TypeError, match="the parameter names of a model are fixed"):
            change(model.params)
    np.testing.assert_array_equal(model.predict(x), expected)
    model.params[name] = array.copy()  # an array of the same shape, dtype and layout may take its place
    np.testing.assert_array_equal(model.predict(x), expected)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone.params) is type(model.params)
        np.testing.assert_array_equal(clone.predict(x), expected)


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_set_params_refuses_values_beyond_the_dtype(make):
    model = make()
    before = {k: v.copy() for k, v in model.params.items()}
    values = {k: v.astype(np.float64) for k, v in model.params.items()}
    last = list(values)[-1]
    values[last][...] = 1e300
    with pytest.raises(ValueError, match=rf"parameter '{last}' holds values up to 1e\+300, beyond the range of "
                                         r"float32 \(largest 3.4e\+38\): they would become Inf"):
        model.set_params(values)
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])  # nothing changed, the checks come first


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_hardening_is_checked_and_an_empty_batch_has_zero_gradients(make):
    model = make()
    model.forward(np.zeros((0, 4)))
    assert model.backward(np.zeros((0, 2)), hardening=1.0).shape == (0, 4)  # FFF had divided by zero here
    for name, g in model.grads.items():
        assert (g == 0).all(), name
    model.forward(np.ones((2, 4)))
    for bad, error in ((-1.0, ValueError), ("1", TypeError), (float("nan"), ValueError)):
        with pytest.raises(error, match="hardening must be"):
            model.backward(np.ones((2, 2)), hardening=bad)


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_predict_takes_n_jobs_and_out_alike(make):
    """Every model's predict takes n_jobs and out=, so that one can stand in for another (the dense FF's n_jobs
    limits BLAS's threads for the call and restores them)."""
    from threadpoolctl import threadpool_info

    model = make()
    x = np.random.default_rng(3).normal(size=(7, 4)).astype(np.float32)
    expected = model.predict(x)
    blas_before = [(lib["internal_api"], lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"]
    for n_jobs in (1, -1, None):
        out = np.full((7, 2), np.nan, np.float32)
        assert model.predict(x, n_jobs=n_jobs, out=out) is out
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(model.predict(x, n_jobs=n_jobs), expected)
    assert [(lib["internal_api"], lib["num_threads"]) for lib in threadpool_info()
            if lib["user_api"] == "blas"] == blas_before
    with pytest.raises(ValueError, match="n_jobs must be None, a positive thread count"):
        model.predict(x, n_jobs=0)
    bad = np.full((7, 3), 5.0, np.float32)
    with pytest.raises(ValueError, match=re.escape("shape (7, 3) (expected (7, 2))")):
        model.predict(x, out=bad)
    assert (bad == 5.0).all()


def test_hardening_loss_before_a_forward_says_so_and_is_zero_without_nodes():
    with pytest.raises(RuntimeError, match=r"^hardening_loss needs the cache of a forward pass: call forward\(x\) "
                                           r"first$"):
        FFF(4, 2, 2, 2).hardening_loss()
    assert FFF(4, 2, 2, 0).hardening_loss() == 0.0  # depth 0: no decision to harden
    assert FF(4, 3, 2).hardening_loss() == 0.0 and UltraFFF(4, 2, 2).hardening_loss() == 0.0


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_a_pickle_without_the_derived_attributes_unpickles_whole(make):
    """A model pickled by an earlier fffcpu may lack an attribute derived from its configuration (the kernels'
    activation code, the activation's functions): unpickling rebuilds it, so that the model predicts and trains."""
    model = make()
    x = np.random.default_rng(5).normal(size=(40, 4)).astype(np.float32)
    expected = model.predict(x)
    derived = set(model._derived())
    assert derived and derived <= set(vars(model))
    for name in derived:
        delattr(model, name)
    clone = pickle.loads(pickle.dumps(model))
    assert derived <= set(vars(clone))
    np.testing.assert_array_equal(clone.predict(x), expected)
    out = clone.forward(x)
    clone.backward(np.ones_like(out))
    assert all(np.isfinite(g).all() for g in clone.grads.values())
