"""What every model promises, checked once for all of them."""

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
