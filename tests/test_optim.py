"""Optimizers against steps computed by hand, and the localized optimizers' gating."""

import copy

import numpy as np
import pytest

from fffcpu import FFF
from fffcpu.optim import SGD, Adam, LocalAdam, LocalSGD, Localized, make_optimizer


def test_sgd_plain_step():
    p = {"w": np.array([1.0, -2.0])}
    SGD(p, lr=0.1).step({"w": np.array([0.5, 1.0])})
    np.testing.assert_allclose(p["w"], [1.0 - 0.05, -2.0 - 0.1])


def test_sgd_momentum_and_weight_decay_by_hand():
    # v1 = g1 + wd*θ0 = 1 + 0.1*2 = 1.2;             θ1 = 2 - 0.5*1.2 = 1.4
    # v2 = 0.9*1.2 + (g2 + wd*θ1) = 1.08 + (-1 + 0.14) = 0.22; θ2 = 1.4 - 0.5*0.22 = 1.29
    p = {"w": np.array([2.0])}
    opt = SGD(p, lr=0.5, momentum=0.9, weight_decay=0.1)
    opt.step({"w": np.array([1.0])})
    assert p["w"][0] == pytest.approx(1.4)
    opt.step({"w": np.array([-1.0])})
    assert p["w"][0] == pytest.approx(1.29)


def test_adam_two_steps_by_hand():
    # step 1: m = 0.1*g = 0.2, v = 0.001*g^2 = 0.004; m̂ = 2, v̂ = 4 -> θ = 1 - 0.1*2/(2+1e-8)
    # step 2 (g = -1): m = 0.9*0.2 - 0.1 = 0.08, v = 0.999*0.004 + 0.001 = 0.004996
    #   m̂ = 0.08/0.19, v̂ = 0.004996/0.001999
    p = {"w": np.array([1.0])}
    opt = Adam(p, lr=0.1)
    opt.step({"w": np.array([2.0])})
    expected = 1.0 - 0.1 * 2.0 / (2.0 + 1e-8)
    assert p["w"][0] == pytest.approx(expected, rel=1e-12)
    opt.step({"w": np.array([-1.0])})
    m_hat, v_hat = 0.08 / (1 - 0.9**2), 0.004996 / (1 - 0.999**2)
    assert p["w"][0] == pytest.approx(expected - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8), rel=1e-12)


def test_adamw_decoupled_weight_decay_by_hand():
    # step 1: θ ← 1·(1 - 0.1·0.5) = 0.95, then the Adam step on the plain gradient g = 2: m̂ = 2, v̂ = 4
    #   θ1 = 0.95 - 0.1·2/(2 + 1e-8)
    # step 2 (g = -1): θ ← θ1·0.95, then m̂ = 0.08/0.19, v̂ = 0.004996/0.001999 as in the plain Adam test
    p = {"w": np.array([1.0])}
    opt = Adam(p, lr=0.1, weight_decay=0.5, decoupled_weight_decay=True)
    opt.step({"w": np.array([2.0])})
    first = 0.95 - 0.1 * 2.0 / (2.0 + 1e-8)
    assert p["w"][0] == pytest.approx(first, rel=1e-12)
    opt.step({"w": np.array([-1.0])})
    m_hat, v_hat = 0.08 / (1 - 0.9**2), 0.004996 / (1 - 0.999**2)
    assert p["w"][0] == pytest.approx(first * 0.95 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8), rel=1e-12)
    # the coupled (L2) decay of the same strength takes another first step: the decay goes through m and v
    q = {"w": np.array([1.0])}
    Adam(q, lr=0.1, weight_decay=0.5).step({"w": np.array([2.0])})
    assert q["w"][0] == pytest.approx(1.0 - 0.1, rel=1e-6) and q["w"][0] != pytest.approx(first)


def test_adamw_without_gradient_only_decays_and_skips_masked_rows():
    p = {"w": np.array([[2.0, -4.0], [1.0, 1.0]])}
    opt = Adam(p, lr=0.1, weight_decay=0.2, decoupled_weight_decay=True)
    opt.step({"w": np.zeros((2, 2))}, rows={"w": np.array([True, False])})
    np.testing.assert_allclose(p["w"], [[2.0 * 0.98, -4.0 * 0.98], [1.0, 1.0]], rtol=1e-12)
    with pytest.raises(TypeError, match="decoupled_weight_decay must be True or False"):
        Adam(p, lr=0.1, decoupled_weight_decay="yes")


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.9), lambda p: Adam(p, lr=0.1)])
def test_masked_rows_and_their_state_are_untouched(make):
    p = {"w": np.arange(6.0).reshape(3, 2)}
    opt = make(p)
    opt.step({"w": np.ones((3, 2))})
    before = p["w"].copy()
    state = {k: v["w"].copy() for k, v in vars(opt).items() if isinstance(v, dict) and "w" in v}
    opt.step({"w": np.ones((3, 2))}, rows={"w": np.array([False, True, False])})
    np.testing.assert_array_equal(p["w"][[0, 2]], before[[0, 2]])
    assert not np.array_equal(p["w"][1], before[1])
    for name, old in state.items():
        np.testing.assert_array_equal(getattr(opt, name)["w"][[0, 2]], old[[0, 2]], err_msg=name)


def fff_with_grads(seed=0):
    model = FFF(3, 2, 2, 2, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    for g in model.grads.values():
        g[...] = rng.normal(size=g.shape)
    return model


def test_localized_updates_only_due_blocks_with_their_rescaled_gradient():
    model = fff_with_grads()
    before = {k: v.copy() for k, v in model.params.items()}
    opt = LocalSGD(model.params, model.param_blocks, lr=1.0, local_batch_size=10)
    # Batch of 8 samples: nodes used 8, 5, 3 times; leaves 4, 1, 3, 0.
    due = opt.step(model.grads, {"node": np.array([8.0, 5, 3]), "leaf": np.array([4.0, 1, 3, 0])})
    assert not due["node"].any() and not due["leaf"].any()
    for k in before:
        np.testing.assert_array_equal(model.params[k], before[k])
    # Second batch of 8: node 0 reaches 16 >= 10 and is updated with (g1 + g2) · 10 / 16 (spec: the accumulated
    # gradient rescaled by local_batch_size / usage); leaf 0 reaches 4 + 6 = 10: (g1 + g2) · 10 / 10.
    g1 = {k: v.copy() for k, v in model.grads.items()}
    g2 = {k: v * -0.5 for k, v in g1.items()}
    due = opt.step(g2, {"node": np.array([8.0, 2, 6]), "leaf": np.array([6.0, 1, 1, 0])})
    np.testing.assert_array_equal(due["node"], [True, False, False])
    np.testing.assert_array_equal(due["leaf"], [True, False, False, False])
    expected_node0 = before["node_weights"][0] - (g1["node_weights"][0] + g2["node_weights"][0]) * 10 / 16
    np.testing.assert_allclose(model.params["node_weights"][0], expected_node0)
    np.testing.assert_array_equal(model.params["node_weights"][1:], before["node_weights"][1:])
    expected_leaf0 = before["w2s"][0] - (g1["w2s"][0] + g2["w2s"][0]) * 10 / 10
    np.testing.assert_allclose(model.params["w2s"][0], expected_leaf0)
    np.testing.assert_array_equal(model.params["w2s"][1:], before["w2s"][1:])
    # Updated blocks restart their accumulation; the others keep theirs.
    assert opt.pending["node"][0] == 0 and opt.pending["node"][2] == 9
    assert not opt.accumulated["w2s"][0].any() and opt.accumulated["w2s"][1].any()


def test_local_adam_leaves_moments_of_non_due_blocks_unchanged():
    model = fff_with_grads(1)
    opt = LocalAdam(model.params, model.param_blocks, lr=0.01, local_batch_size=4)
    opt.step(model.grads, {"node": np.array([4.0, 4, 0]), "leaf": np.array([4.0, 0, 0, 0])})
    adam = opt.optimizer
    assert adam.t["node_weights"].tolist() == [1, 1, 0] and adam.t["w1s"].tolist() == [1, 0, 0, 0]
    m_before = adam.m["w1s"].copy()
    v_before = adam.v["w1s"].copy()
    opt.step(model.grads, {"node": np.array([4.0, 0, 0]), "leaf": np.array([0.0, 4, 0, 0])})
    np.testing.assert_array_equal(adam.m["w1s"][0], m_before[0])  # not decayed while not due
    np.testing.assert_array_equal(adam.v["w1s"][0], v_before[0])
    assert adam.t["w1s"].tolist() == [1, 1, 0, 0]
    assert not adam.m["w1s"][2:].any()


def test_localized_with_batch_size_usage_every_step_equals_plain_optimizer():
    """With soft counts the root is reached by every sample, so local_batch_size = B updates it every step."""
    a, b = fff_with_grads(2), fff_with_grads(2)
    plain = Adam(a.params, lr=0.01)
    local = LocalAdam(b.params, b.param_blocks, lr=0.01, local_batch_size=5)
    usage = {"node": np.full(3, 5.0), "leaf": np.full(4, 5.0)}
    for _ in range(3):
        plain.step(a.grads)
        local.step(b.grads, usage)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-12)


def test_make_optimizer_and_errors():
    model = FFF(3, 2, 2, 2)
    assert isinstance(make_optimizer("adam", model, 0.1), Adam)
    assert isinstance(make_optimizer("local_sgd", model, 0.1, local_batch_size=8), Localized)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("rmsprop", model, 0.1)
    with pytest.raises(ValueError, match="needs local_batch_size"):
        make_optimizer("local_adam", model, 0.1)
    with pytest.raises(ValueError, match="lr must be a positive finite number, got -1"):
        SGD(model.params, lr=-1)
    with pytest.raises(ValueError, match="lr must be a positive finite number, got 0"):
        Adam(model.params, lr=0)
    with pytest.raises(ValueError, match="local_batch_size"):
        LocalSGD(model.params, model.param_blocks, lr=0.1, local_batch_size=0)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adam_equals_the_rowwise_numpy_update(dtype, decoupled):
    rng = np.random.default_rng(0)
    start = {"w": rng.normal(size=(4, 3)).astype(dtype), "b": rng.normal(size=4).astype(dtype)}
    fused = {k: v.copy() for k, v in start.items()}
    rowwise = {k: v.copy() for k, v in start.items()}
    a = Adam(fused, lr=0.05, weight_decay=0.1, decoupled_weight_decay=decoupled)
    b = Adam(rowwise, lr=0.05, weight_decay=0.1, decoupled_weight_decay=decoupled)
    every_row = {"w": np.ones(4, bool), "b": np.ones(4, bool)}  # a mask forces the row-wise NumPy path
    for _ in range(4):
        grads = {k: rng.normal(size=v.shape).astype(dtype) for k, v in start.items()}
        a.step(grads)
        b.step(grads, rows=every_row)
    for k in start:
        np.testing.assert_allclose(fused[k], rowwise[k], rtol=1e-5 if dtype == np.float32 else 1e-12)
        assert not np.allclose(fused[k], start[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adam_kernel_is_the_elementwise_formula(dtype):
    """The vectorized kernel computes each element as the plain formula does, in float64, to the same bits."""
    from fffcpu.kernels.optim import adam_step

    rng = np.random.default_rng(3)
    n = 1037  # not a multiple of any vector width
    param, grad = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    m, v = (rng.standard_normal(n) * 0.1).astype(dtype), rng.random(n).astype(dtype) * 0.01
    lr_over_c1, beta1, beta2, inv_sqrt_c2, eps, wd = 1e-3 / 0.271, 0.9, 0.999, 1 / np.sqrt(0.003), 1e-8, 0.01
    g = grad.astype(np.float64) + wd * param.astype(np.float64)
    mi = beta1 * m.astype(np.float64) + (1 - beta1) * g
    vi = beta2 * v.astype(np.float64) + (1 - beta2) * g * g
    expected = (param.astype(np.float64) - lr_over_c1 * mi / (np.sqrt(vi) * inv_sqrt_c2 + eps)).astype(dtype)
    adam_step(param, grad, m, v, lr_over_c1, beta1, beta2, inv_sqrt_c2, eps, wd)
    np.testing.assert_array_equal(param, expected)
    np.testing.assert_array_equal(m, mi.astype(dtype))
    np.testing.assert_array_equal(v, vi.astype(dtype))


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1), lambda p: Adam(p)], ids=["sgd", "adam"])
def test_gradients_of_the_wrong_shape_are_refused_before_any_update(make):
    # the fused Adam kernel walks the parameter's size: a shorter gradient would be read past its end
    params = {"w": np.ones(1000, np.float32), "b": np.ones(3, np.float32)}
    opt = make(params)
    with pytest.raises(ValueError, match=r"grads\['w'\] must be a floating-point array of the parameter's shape "
                                         r"\(1000,\), got dtype float32, shape \(1,\)"):
        opt.step({"w": np.zeros(1, np.float32), "b": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"grads\['w'\] .* got dtype <U1, shape \(1000,\)"):
        opt.step({"w": np.full(1000, "a"), "b": np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match=r"no gradient for parameter\(s\) \['b'\]"):
        opt.step({"w": np.zeros(1000, np.float32)})
    with pytest.raises(TypeError, match="grads must be a dict"):
        opt.step([np.zeros(1000, np.float32)])
    grads = {"w": np.ones(1000, np.float32), "b": np.ones(3, np.float32)}
    with pytest.raises(ValueError, match=r"rows\['w'\] must be a bool array of shape \(1000,\)"):
        opt.step(grads, rows={"w": np.ones(5, bool)})
    with pytest.raises(ValueError, match=r"rows\['w'\] must be a bool array .* got dtype int64"):
        opt.step(grads, rows={"w": np.ones(1000, np.int64)})
    # a bad mask of the second parameter is found before the first one is updated
    with pytest.raises(ValueError, match=r"rows\['b'\] must be a bool array .* got list"):
        opt.step(grads, rows={"w": np.ones(1000, bool), "b": [True, True, True]})
    with pytest.raises(TypeError, match="rows must be a dict of bool arrays or None, got list"):
        opt.step(grads, rows=[np.ones(1000, bool)])
    assert (params["w"] == 1).all() and (params["b"] == 1).all()


def test_parameters_must_be_float_arrays():
    with pytest.raises(TypeError, match=r"params\['w'\] must be a floating-point NumPy array .* got list"):
        Adam({"w": [1.0, 2.0]})
    with pytest.raises(TypeError, match="got ndarray of dtype int64"):
        SGD({"w": np.arange(3)}, lr=0.1)


def test_localized_optimizers_name_the_missing_blocks_first():
    from fffcpu import UltraFFF

    with pytest.raises(ValueError, match="needs a model with node/leaf blocks .* UltraFFF has none: use 'adam'"):
        make_optimizer("local_adam", UltraFFF(4, 3, 2, seed=0), 1e-3)


@pytest.mark.parametrize("beta", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999), (0.9, 1.5)])
def test_adam_betas_must_be_below_one(beta):
    # a beta of 1 divides by zero in the bias correction (1 - beta^t)
    with pytest.raises(ValueError, match=r"betas must be in \[0, 1\), got"):
        Adam({"w": np.ones(3)}, betas=beta)


def test_localized_step_checks_usage_before_accumulating():
    model = FFF(4, 2, 3, 2, seed=0)
    opt = make_optimizer("local_sgd", model, 0.1, local_batch_size=4)
    before = {k: v.copy() for k, v in model.params.items()}
    grads = {k: np.ones_like(v) for k, v in model.params.items()}
    usage = {"node": np.ones(3), "leaf": np.ones(4)}
    cases = [
        ({"node": np.ones(3)}, KeyError, "usage has no counts for block kind 'leaf'"),
        ({"node": np.ones(2), "leaf": np.ones(4)}, ValueError, r"usage\['node'\] must be a numeric array of shape "
                                                                r"\(3,\) .* got dtype float64, shape \(2,\)"),
        ({"node": np.ones(3), "leaf": [1, 1, 1, 1]}, ValueError, r"usage\['leaf'\] .* got list"),
        ({"node": -np.ones(3), "leaf": np.ones(4)}, ValueError, r"usage\['node'\] must hold finite counts >= 0"),
        ({"node": np.full(3, np.nan), "leaf": np.ones(4)}, ValueError, "finite counts"),
        ([np.ones(3)], TypeError, "usage must be a dict"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            opt.step(grads, bad)
    with pytest.raises(ValueError, match=r"grads\['w1s'\] must be a floating-point array"):
        opt.step({**grads, "w1s": np.ones(3)}, usage)
    for kind, pending in opt.pending.items():
        assert (pending == 0).all(), kind
    for name, acc in opt.accumulated.items():
        assert (acc == 0).all(), name
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])
    opt.step(grads, usage)
    assert opt.pending["node"][0] == 1


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.9), lambda p: Adam(p)], ids=["sgd", "adam"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradients_are_refused_before_any_update(make, bad):
    # one NaN step would make every weight it touches NaN for good
    params = {"w": np.ones(1000, np.float32), "b": np.ones(3, np.float32)}
    opt = make(params)
    opt.step({"w": np.full(1000, 0.5, np.float32), "b": np.full(3, 0.5, np.float32)})
    before = {k: v.copy() for k, v in params.items()}
    state = copy.deepcopy({k: v for k, v in vars(opt).items() if k != "params"})
    b = np.zeros(3, np.float32)
    b[1] = bad
    with pytest.raises(FloatingPointError, match=r"grads \['b'\] hold NaN or Inf values; no parameter was updated"):
        opt.step({"w": np.ones(1000, np.float32), "b": b})
    for name in params:
        np.testing.assert_array_equal(params[name], before[name])
    for key, value in state.items():  # the moments and step counts too
        if isinstance(value, dict):
            for name in value:
                np.testing.assert_array_equal(getattr(opt, key)[name], value[name])
    # a localized optimizer refuses them before accumulating
    model = FFF(4, 2, 3, 2, seed=0)
    local = make_optimizer("local_adam", model, 0.1, local_batch_size=4)
    grads = {k: np.ones_like(v) for k, v in model.params.items()}
    grads["w1s"][0, 0, 0] = bad
    with pytest.raises(FloatingPointError, match=r"grads \['w1s'\]"):
        local.step(grads, {"node": np.ones(3), "leaf": np.ones(4)})
    assert all((acc == 0).all() for acc in local.accumulated.values())
    assert all((pending == 0).all() for pending in local.pending.values())


def test_unknown_optimizer_options_name_the_optimizer_and_its_options():
    model = FFF(4, 2, 3, 2, seed=0)
    with pytest.raises(TypeError, match=r"optimizer 'sgd' takes no option 'betas'; its options are lr, momentum, "
                                        r"weight_decay"):
        make_optimizer("sgd", model, 0.1, betas=(0.9, 0.99))
    with pytest.raises(TypeError, match=r"optimizer 'local_adam' takes no option 'momentum'; its options are lr, "
                                        r"betas, eps, weight_decay, decoupled_weight_decay"):
        make_optimizer("local_adam", model, 0.1, local_batch_size=4, momentum=0.9)


def test_rows_left_alone_may_hold_anything():
    # only the rows an update applies must be finite: a localized optimizer's blocks that are not due carry
    # gradients rescaled by local_batch_size / (a tiny usage), which can overflow, and are never applied
    params = {"w": np.ones((4, 3), np.float32)}
    grads = {"w": np.full((4, 3), 0.5, np.float32)}
    grads["w"][2] = np.inf
    opt = Adam(params, lr=0.1)
    opt.step(grads, rows={"w": np.array([True, True, False, True])})
    assert (params["w"][2] == 1).all() and (params["w"][[0, 1, 3]] < 1).all() and np.isfinite(params["w"]).all()
    with pytest.raises(FloatingPointError, match=r"grads \['w'\]"):
        opt.step(grads, rows={"w": np.ones(4, bool)})
    model = FFF(4, 2, 3, 2, seed=0)
    local = make_optimizer("local_sgd", model, 0.1, local_batch_size=4, counts="soft")
    before = {k: v.copy() for k, v in model.params.items()}
    grads = {k: np.full_like(v, 1e-3) for k, v in model.params.items()}
    usage = {"node": np.array([8.0, 1e-300, 8.0]), "leaf": np.array([8.0, 8.0, 8.0, 1e-300])}
    due = local.step(grads, usage)  # node 1 and leaf 3 are not due: their rescaled gradient overflows float32
    assert due["node"].tolist() == [True, False, True] and due["leaf"].tolist() == [True, True, True, False]
    assert (model.params["node_weights"][1] == before["node_weights"][1]).all()
    assert (model.params["w1s"][3] == before["w1s"][3]).all() and (model.params["w1s"][0] != before["w1s"][0]).all()
