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
