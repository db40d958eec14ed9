"""UltraFFF (spec §2): the path kernels against the per-sample references of tests/naive_ultra.py and the NumPy
masked formulation, gradients against central differences and torch autograd, state dicts, save/load, training."""

import re

import numba
import numpy as np
import pytest

import fffcpu
from fffcpu import UltraFFF
from fffcpu.functional import cross_entropy_grad, mean_squared_error_grad
from fffcpu.kernels import ultra as kernels
from fffcpu.models.base import _aligned_empty
from fffcpu.models.ultra import masked_backward, masked_forward, path_mask

import naive
import naive_ultra

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}
BIG = kernels.PARALLEL_MIN_BATCH + 13  # a batch that takes the parallel per-input kernels
HUGE = kernels.GROUPED_MIN_BATCH + 21  # a batch that takes the grouped (sorted by subtree) kernels


def random_model(depth, dtype="float64", seed=0, trees=None, **kw):
    rng = np.random.default_rng(seed + 100 * depth)
    input_width, output_width = (int(v) for v in rng.integers(1, 7, size=2))
    trees = int(rng.integers(1, 5)) if trees is None else trees
    model = UltraFFF(input_width, output_width, depth, trees=trees, dtype=dtype, seed=seed, **kw)
    # Spread the biases so the routes are not all decided by the same sign pattern.
    model.params["b_in"][...] = rng.normal(size=model.params["b_in"].shape) * 0.5
    return model, rng


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("depth", range(9))
@pytest.mark.parametrize("n", [0, 1, 7, BIG, HUGE])
def test_forward_predict_route_match_references(depth, n, dtype):
    model, rng = random_model(depth, dtype)
    x = rng.normal(size=(n, model.input_width)).astype(dtype)
    clear = naive_ultra.min_margin(model, x) > 1e-4
    expected = naive_ultra.forward(model, x)
    masked = masked_forward(model.params, x, depth, model.activation)
    y_train, y_hard, leaves = model.forward(x), model.predict(x), model.route(x)
    assert y_train.shape == y_hard.shape == (n, model.output_width) and leaves.shape == (n, model.trees)
    assert y_train.dtype == y_hard.dtype == np.dtype(dtype) and leaves.dtype == np.int64
    np.testing.assert_array_equal(leaves[clear], naive_ultra.route(model, x)[clear])
    np.testing.assert_allclose(y_train[clear], expected[clear], **TOL[dtype])
    np.testing.assert_allclose(y_hard[clear], expected[clear], **TOL[dtype])
    np.testing.assert_allclose(masked["y"][clear], expected[clear], **TOL[dtype])
    np.testing.assert_array_equal(y_train, y_hard)  # training forward and inference are the same kernels' math
    np.testing.assert_array_equal(model.predict_soft(x), y_hard)
    if n:
        assert (leaves >= 0).all() and (leaves < 2**depth).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("depth", [0, 1, 2, 5, 8])
@pytest.mark.parametrize("n", [0, 1, 7, BIG, HUGE])
def test_kernel_gradients_match_masked_and_naive(depth, n, dtype):
    model, rng = random_model(depth, dtype, seed=1)
    x = rng.normal(size=(n, model.input_width)).astype(dtype)
    g = rng.normal(size=(n, model.output_width)).astype(dtype)
    clear = naive_ultra.min_margin(model, x) > 1e-4
    x, g = x[clear], g[clear]  # identical routes in every implementation
    model.forward(x)
    dx = model.backward(g)
    masked_grads, masked_dx = masked_backward(model.params, masked_forward(model.params, x, depth), g)
    naive_grads, naive_dx = naive_ultra.gradients(model, x, g)
    for name in ("w_in", "b_in", "w_out"):
        assert model.grads[name].shape == model.params[name].shape
        np.testing.assert_allclose(model.grads[name], naive_grads[name], **TOL[dtype], err_msg=name)
        np.testing.assert_allclose(masked_grads[name], naive_grads[name], **TOL[dtype], err_msg=name)
    np.testing.assert_allclose(dx, naive_dx, **TOL[dtype])
    np.testing.assert_allclose(masked_dx, naive_dx, **TOL[dtype])


@pytest.mark.parametrize("activation", ["gelu", "relu", "tanh", "sigmoid", "identity"])
def test_every_activation(activation):
    model, rng = random_model(3, activation=activation, seed=2)
    x = rng.normal(size=(BIG, model.input_width))
    g = rng.normal(size=(BIG, model.output_width))
    np.testing.assert_allclose(model.forward(x), naive_ultra.forward(model, x), rtol=1e-10, atol=1e-12)
    dx = model.backward(g)
    grads, naive_dx = naive_ultra.gradients(model, x, g)
    for name in grads:
        np.testing.assert_allclose(model.grads[name], grads[name], rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(dx, naive_dx, rtol=1e-10, atol=1e-12)


def test_gelu_is_the_exact_erf_form():
    model = UltraFFF(1, 1, 0, dtype="float64", seed=0)
    model.set_params({"w_in": [[[1.0]]], "b_in": [[0.0]], "w_out": [[[1.0]]]})
    z = np.array([[-3.0], [-0.5], [0.7], [2.0]])
    # GELU(0.7) = 0.7 Φ(0.7) = 0.7 * 0.758036... = 0.530625...; the tanh approximation gives 0.530593...
    np.testing.assert_allclose(model.predict(z)[2, 0], 0.5306254, rtol=1e-6)
    np.testing.assert_allclose(model.predict(z)[:, 0], naive.act("gelu", z[:, 0]), rtol=1e-13)


# --- routing rule ------------------------------------------------------------------------------------------------


def test_logit_exactly_zero_goes_left_everywhere():
    model = UltraFFF(2, 2, 3, trees=2, dtype="float64", seed=0)
    model.params["w_in"][...] = 0.0
    model.params["b_in"][...] = 0.0  # every logit is exactly 0: left, left, left
    x = np.ones((BIG, 2))
    np.testing.assert_array_equal(model.route(x), 0)
    np.testing.assert_array_equal(model.route(x[:1]), 0)
    model.forward(x)
    np.testing.assert_array_equal(model._cache["nodes"][0, 0], [0, 1, 3, 7])  # 2n + 1 each time
    logits = masked_forward(model.params, x, 3)["logits"]
    mask = path_mask(logits, 3)
    assert mask[:, :, [0, 1, 3, 7]].all() and mask.sum() == BIG * 2 * 4
    # A tiny positive logit goes right.
    model.params["b_in"][:, 0] = 1e-300
    np.testing.assert_array_equal(model.route(x[:3]), 4)  # right at the root, then left: leaf 0b100


def test_nan_goes_left_and_propagates():
    model, _ = random_model(3, seed=3, trees=2)
    x = np.full((2, model.input_width), np.nan)
    x[1] = 1.0
    assert (model.route(x)[0] == 0).all()
    out = model.predict(x)
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


def test_serial_and_parallel_kernels_agree():
    model, rng = random_model(6, "float32", seed=4, trees=3)
    x = rng.normal(size=(3 * BIG, model.input_width)).astype(np.float32)
    batched = model.predict(x)  # parallel kernel
    one_by_one = np.concatenate([model.predict(row[None]) for row in x])  # serial kernel
    np.testing.assert_array_equal(batched, one_by_one)
    np.testing.assert_array_equal(model.route(x), np.concatenate([model.route(row[None]) for row in x]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_grouped_kernel_equals_per_input_kernel_at_every_split(dtype):
    """Grouping by subtree changes the order of the inputs, never the arithmetic of one input: bitwise equal."""
    model, rng = random_model(5, dtype, seed=15, trees=3)
    model.params["w_in"][...] = rng.normal(size=model.params["w_in"].shape)
    x = rng.normal(size=(300, model.input_width)).astype(dtype)
    shape = (len(x), 3, 6)
    ref = [np.empty(shape, np.int64), np.empty(shape, dtype), np.empty(shape, dtype),
           np.empty((len(x), model.output_width), dtype)]
    kernels._forward_serial(x, *model._weights(), 0, *ref)
    for split, stream in [(s, False) for s in range(6)] + [(3, True)]:
        out = [np.empty_like(a) for a in ref[:3]] + [_aligned_empty(ref[3].shape, dtype)]
        order = np.empty(len(x), np.int64)
        kernels._forward_grouped(x, *model._weights(), 0, split, stream, *out, order)
        for a, b in zip(out, ref):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.sort(order), np.arange(len(x)))  # a permutation
        subtree_roots = out[0][order, 2, split]  # the last tree's inputs come sorted by subtree root
        assert (np.diff(subtree_roots) >= 0).all()


def test_split_level_keeps_subtrees_in_cache():
    row = (768 + 768 + 1) * 4
    assert kernels.split_level(11, row) == 6  # 63-node subtrees of 6 KiB rows: 378 KiB
    assert kernels.split_level(3, row) == 0  # the whole tree fits
    assert kernels.split_level(11, row, cache_bytes=1) == 11


# --- gradients: central differences in float64 ------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
@pytest.mark.parametrize("activation", ["gelu", "tanh"])
def test_gradients_central_differences(depth, activation):
    model = UltraFFF(4, 3, depth, trees=2, activation=activation, dtype="float64", seed=depth)
    rng = np.random.default_rng(depth)
    x = rng.normal(size=(6, 4))
    assert naive_ultra.min_margin(model, x).min() > 1e-3  # finite differences do not cross a boundary
    labels = rng.integers(0, 3, size=6)
    out = model.forward(x)
    dx = model.backward(cross_entropy_grad(out, labels), hardening=0.5)  # hardening: accepted, no effect

    def objective():
        return naive.cross_entropy(naive_ultra.forward(model, x), labels)

    numeric = naive.numerical_gradients(objective, model.params, x)
    for name, analytic in list(model.grads.items()) + [("x", dx)]:
        np.testing.assert_allclose(analytic, numeric[name], rtol=1e-5, atol=1e-8, err_msg=name)


def test_gradients_mse_match_masked_formulation_and_differences():
    model = UltraFFF(3, 2, 3, dtype="float64", seed=5)
    rng = np.random.default_rng(5)
    x, targets = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    assert naive_ultra.min_margin(model, x).min() > 1e-3
    out = model.forward(x)
    dx = model.backward(mean_squared_error_grad(out, targets))
    numeric = naive.numerical_gradients(
        lambda: naive.mse(masked_forward(model.params, x, 3)["y"], targets), model.params, x)
    for name, analytic in list(model.grads.items()) + [("x", dx)]:
        np.testing.assert_allclose(analytic, numeric[name], rtol=1e-5, atol=1e-8, err_msg=name)


def _torch_path_mask(torch, logits, depth):
    """The nodes on each sample's path in every tree, from the logits alone (right iff logit > 0)."""
    n, trees, n_nodes = logits.shape
    mask = torch.zeros(n, trees, n_nodes, dtype=logits.dtype)
    node = torch.zeros(n, trees, dtype=torch.int64)
    for level in range(depth + 1):
        mask.scatter_(2, node[..., None], 1.0)
        if level < depth:
            right = (torch.gather(logits, 2, node[..., None])[..., 0] > 0).long()
            node = 2 * node + 1 + right
    return mask, node - (2**depth - 1)  # the leaf: the last node's place in its level


@pytest.mark.parametrize("depth, trees", [(0, 1), (1, 2), (2, 4), (4, 3), (8, 1)])
@pytest.mark.parametrize("batch", [0, 1, 7, BIG])
def test_outputs_routes_and_gradients_equal_torch_autograd_of_masked_formulation(depth, trees, batch):
    torch = pytest.importorskip("torch")
    model, rng = random_model(depth, "float64", seed=6, trees=trees)
    x = rng.normal(size=(batch, model.input_width))
    g = rng.normal(size=(batch, model.output_width))
    clear = naive_ultra.min_margin(model, x) > 1e-6 if batch else np.ones(0, bool)
    x, g = x[clear], g[clear]
    y_ours = model.forward(x)
    dx = model.backward(g)

    w_in = torch.tensor(model.params["w_in"], requires_grad=True)
    b_in = torch.tensor(model.params["b_in"], requires_grad=True)
    w_out = torch.tensor(model.params["w_out"], requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    logits = torch.einsum("bi,kni->bkn", xt, w_in) + b_in  # every logit, as UltraFastBERT's training code
    mask, leaves = _torch_path_mask(torch, logits.detach(), depth)
    hidden = torch.nn.functional.gelu(logits) * mask
    y = torch.einsum("bkn,kno->bo", hidden, w_out)
    (y * torch.tensor(g)).sum().backward()
    np.testing.assert_array_equal(model.route(x), leaves.numpy().reshape(len(x), trees))
    for name, tensor in (("w_in", w_in), ("b_in", b_in), ("w_out", w_out)):
        np.testing.assert_allclose(model.grads[name], tensor.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y_ours, y.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.predict(x), y.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_input_grad_can_be_skipped_and_grads_are_overwritten():
    model, rng = random_model(3, seed=7)
    x = rng.normal(size=(5, model.input_width))
    model.forward(x)
    model.grads["w_in"][...] = 123.0  # stale values must not leak into the next backward
    assert model.backward(np.ones((5, model.output_width)), input_grad=False) is None
    grads, _ = naive_ultra.gradients(model, x, np.ones((5, model.output_width)))
    np.testing.assert_allclose(model.grads["w_in"], grads["w_in"], rtol=1e-10, atol=1e-12)


def test_training_interface():
    model, rng = random_model(2, seed=8)
    model.forward(rng.normal(size=(3, model.input_width)))
    assert model.hardening_loss() == 0.0
    assert UltraFFF.param_blocks == {}


# --- sizes and init -----------------------------------------------------------------------------------------------


def test_ultrafastbert_1x11_sizes_and_init():
    model = UltraFFF(768, 768, 11, seed=0)
    assert model.n_nodes == 4095 and model.training_width == 4095 and model.inference_size == 12
    assert model.params["w_in"].shape == (1, 4095, 768) and model.params["w_out"].shape == (1, 4095, 768)
    assert model.params["w_in"].dtype == np.float32
    assert np.abs(model.params["w_in"]).max() <= 1 / np.sqrt(768)
    assert np.abs(model.params["w_in"]).max() > 0.95 / np.sqrt(768)
    assert 0.95 / np.sqrt(12) < np.abs(model.params["w_out"]).max() <= 1 / np.sqrt(12)
    wide = UltraFFF(8, 8, 3, trees=4)
    assert wide.inference_size == 16 and wide.training_width == 60
    assert np.abs(wide.params["w_out"]).max() <= 1 / np.sqrt(16)


# --- UltraFastBERT state dicts ------------------------------------------------------------------------------------


class ArrayLike:
    """Something that is not a NumPy array but converts to one (as a CPU torch tensor does)."""

    def __init__(self, value):
        self.value = np.asarray(value)

    def __array__(self, dtype=None, copy=None):
        return self.value if dtype is None else self.value.astype(dtype)


def test_state_dict_of_the_real_shapes():
    rng = np.random.default_rng(9)
    n, width = 4095, 768
    state = {
        "linear_in.weight": ArrayLike(rng.normal(size=(n, width)).astype(np.float32)),
        "linear_in.bias": ArrayLike(rng.normal(size=n).astype(np.float32)),
        "linear_out.weight": ArrayLike(rng.normal(size=(width, n)).astype(np.float32)),
    }
    model = UltraFFF.from_state_dict(state)
    assert (model.depth, model.trees, model.input_width, model.output_width) == (11, 1, 768, 768)
    np.testing.assert_array_equal(model.params["w_in"][0, 17], state["linear_in.weight"].value[17])
    np.testing.assert_array_equal(model.params["w_out"][0, 17], state["linear_out.weight"].value[:, 17])
    back = model.to_state_dict()
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value.value)
        assert isinstance(back[key], np.ndarray)


def test_state_dict_is_tree_major_and_computes_the_same_function():
    model, rng = random_model(3, seed=10, trees=3)
    state = model.to_state_dict()
    n = model.n_nodes
    assert state["linear_in.weight"].shape == (3 * n, model.input_width)
    assert state["linear_out.weight"].shape == (model.output_width, 3 * n)
    np.testing.assert_array_equal(state["linear_in.weight"][2 * n + 5], model.params["w_in"][2, 5])  # row t·N + n
    np.testing.assert_array_equal(state["linear_in.bias"][n + 4], model.params["b_in"][1, 4])
    np.testing.assert_array_equal(state["linear_out.weight"][:, n + 6], model.params["w_out"][1, 6])
    prefixed = {"ffn." + k: v.tolist() for k, v in state.items()}  # nested lists are array-like too
    clone = UltraFFF.from_state_dict(prefixed, trees=3, prefix="ffn.", dtype="float64")
    x = rng.normal(size=(9, model.input_width))
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    # The same function by hand from the state dict: all logits, then the path (UltraFastBERT's layout).
    logits = (x @ state["linear_in.weight"].T + state["linear_in.bias"]).reshape(9, 3, n)
    hidden = naive.act("gelu", logits) * path_mask(logits, 3)
    np.testing.assert_allclose(hidden.reshape(9, 3 * n) @ state["linear_out.weight"].T, model.predict(x), rtol=1e-10)


def test_state_dict_from_torch_tensors():
    torch = pytest.importorskip("torch")
    model, _ = random_model(2, seed=11, trees=2)
    state = {k: torch.tensor(v, requires_grad=True) for k, v in model.to_state_dict().items()}
    state["linear_out.bias"] = torch.zeros(model.output_width)
    clone = UltraFFF.from_state_dict(state, trees=2, dtype="float64")
    for name in model.params:
        np.testing.assert_array_equal(clone.params[name], model.params[name])
    state["linear_in.weight"] = state["linear_in.weight"].to(torch.bfloat16)
    assert UltraFFF.from_state_dict(state, trees=2).depth == 2


@pytest.mark.parametrize(
    "change, kwargs, error, message",
    [
        (dict(w_rows=10), {}, ValueError, r"10 is not 2\*\*\(depth\+1\) - 1 for any depth"),
        (dict(w_rows=14), dict(trees=4), ValueError, "not a multiple of trees=4"),
        (dict(), dict(depth=3), ValueError, r"must have trees·\(2\*\*\(depth\+1\) - 1\) = 15 rows .* got 7"),
        (dict(b_rows=6), {}, ValueError, r"linear_in.bias must have shape \(7,\), got \(6,\)"),
        (dict(out_cols=8), {}, ValueError, r"linear_out.weight must have shape \(output_width, 7\), got \(5, 8\)"),
        (dict(drop="linear_in.bias"), {}, KeyError, "no 'linear_in.bias'"),
        (dict(out_bias=1.0), {}, ValueError, "has no output bias"),
        (dict(w_1d=True), {}, ValueError, "must be 2-D"),
        (dict(strings=True), {}, TypeError, "must hold real numbers"),
        ({}, dict(prefix=3), TypeError, "prefix must be a str"),
        (dict(out_bias=0.0, out_bias_len=99), {}, ValueError, r"linear_out.bias must have shape \(5,\), got \(99,\)"),
        (dict(huge=1e300), {}, ValueError, "linear_in.bias holds values up to 1e\\+300 in magnitude, beyond the "
                                           "largest float32"),
    ],
)
def test_state_dict_errors(change, kwargs, error, message):
    rng = np.random.default_rng(0)
    state = {
        "linear_in.weight": rng.normal(size=(change.get("w_rows", 7), 4)),
        "linear_in.bias": rng.normal(size=change.get("b_rows", 7)),
        "linear_out.weight": rng.normal(size=(5, change.get("out_cols", 7))),
    }
    if "drop" in change:
        del state[change["drop"]]
    if "out_bias" in change:
        state["linear_out.bias"] = np.full(change.get("out_bias_len", 5), change["out_bias"])
    if "huge" in change:
        state["linear_in.bias"][0] = change["huge"]
    if change.get("w_1d"):
        state["linear_in.weight"] = np.zeros(7)
    if change.get("strings"):
        state["linear_in.bias"] = np.array(["a"] * 7)
    with pytest.raises(error, match=message):
        UltraFFF.from_state_dict(state, **kwargs)


def test_state_dict_errors_list_keys_of_any_type():
    with pytest.raises(KeyError, match=r"state dict has no 'linear_in.weight'.* got \['1', 'a'\]"):
        UltraFFF.from_state_dict({1: 2, "a": 3})


def test_state_dict_must_be_a_mapping():
    class Module:  # a torch module passed instead of its state_dict()
        def state_dict(self):
            return {}

    with pytest.raises(TypeError, match=r"pass model.state_dict\(\), not the Module module itself"):
        UltraFFF.from_state_dict(Module())
    with pytest.raises(TypeError, match="expects a mapping of parameter names to tensors or arrays, got ndarray"):
        UltraFFF.from_state_dict(np.zeros(3))


# --- save/load, training ------------------------------------------------------------------------------------------


def test_save_and_load(tmp_path):
    model, rng = random_model(4, "float32", seed=12, trees=2, activation="tanh")
    path = fffcpu.save(model, tmp_path / "ultra")
    loaded = fffcpu.load(path)
    assert isinstance(loaded, UltraFFF) and loaded.config() == model.config()
    x = rng.normal(size=(BIG, model.input_width))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_trains_with_fffcpu_train():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(600, 4))
    labels = (x[:, 0] * x[:, 1] > 0).astype(int) + 2 * (x[:, 2] > 0.5)  # 4 classes, not linearly separable
    model = UltraFFF(4, 4, 4, trees=2, seed=13)
    history = fffcpu.train(model, x, labels, lr=1e-2, epochs=25, batch_size=64, hardening=1.0, seed=0,
                           progress=False)
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert history["train_acc_hard"][-1] > 0.75
    assert history["train_acc_hard"] == history["train_acc_soft"]
    assert history["entropy"] == [0.0] * 25


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(depth=-1), ValueError, "depth must be an integer >= 0, got -1"),
        (dict(trees=0), ValueError, "trees must be an integer >= 1, got 0"),
        (dict(trees=1.5), TypeError, "trees must be an integer"),
        (dict(input_width=0), ValueError, "input_width must be an integer >= 1, got 0"),
        (dict(output_width="3"), TypeError, "output_width must be an integer"),
        (dict(activation="swish"), ValueError, "activation must be one of"),
        (dict(dtype="float16"), ValueError, "dtype must be one of"),
        (dict(depth=41), ValueError, "use depth <= 40"),
        (dict(depth=33), MemoryError, "would need"),
    ],
)
def test_bad_hyperparameters(kwargs, error, message):
    args = dict(input_width=768, output_width=768, depth=3) | kwargs
    with pytest.raises(error, match=message):
        UltraFFF(**args)


def test_set_params_checks_shapes_and_copy_is_independent():
    model, rng = random_model(2, seed=14)
    with pytest.raises(ValueError, match=r"parameter 'w_in' must have shape"):
        model.set_params({"w_in": np.zeros((1, 2, 3)), "b_in": model.params["b_in"], "w_out": model.params["w_out"]})
    clone = model.copy()
    x = rng.normal(size=(5, model.input_width))
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    clone.params["w_out"][...] += 1
    assert not np.array_equal(clone.predict(x), model.predict(x))
    assert "12 used" not in model.summary() and f"{model.inference_size} used per input" in model.summary()


# --- vector primitives and the fast path of predict ---------------------------------------------------------------


@numba.njit
def _call_dot(a, b):
    return kernels._dot(a, b)


@numba.njit
def _call_dot4(a, b):
    return kernels._dot4(a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3])


@numba.njit
def _call_path_output(y, w_out, nodes, acts):
    kernels._path_output(y, w_out, nodes, acts)


@numba.njit
def _call_path_output_stream(y, w_out, nodes, acts):
    kernels._path_output_stream(y, w_out, nodes, acts)
    kernels._store_fence()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("width", [1, 5, 15, 16, 63, 64, 65, 200, 768])
def test_dot_primitives_fixed_order(width, dtype):
    """_dot4 gives the bits of four _dot calls (four independent dot products in one loop) and both are dot
    products."""
    rng = np.random.default_rng(width)
    a = rng.normal(size=(4, width)).astype(dtype)
    b = rng.normal(size=(4, width)).astype(dtype)
    singles = np.array([_call_dot(a[i], b[i]) for i in range(4)])
    quad = np.array(_call_dot4(a, b))
    np.testing.assert_array_equal(np.array(_call_dot4(a, b[[0, 0, 0, 0]])), [_call_dot(a[i], b[0]) for i in range(4)])
    np.testing.assert_array_equal(quad, singles)
    np.testing.assert_allclose(singles, np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64)), **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output_width", [1, 7, 64, 100, 768])
@pytest.mark.parametrize("stream", [False, True])
def test_path_output_sums_in_path_order(output_width, dtype, stream):
    """Both forms (stores through the cache, non-temporal stores into an aligned row) give the same bits."""
    rng = np.random.default_rng(output_width)
    trees, n_nodes, levels = 2, 7, 3
    w_out = rng.normal(size=(trees, n_nodes, output_width)).astype(dtype)
    nodes = np.array([[0, 2, 5], [0, 1, 4]], dtype=np.int64)
    acts = rng.normal(size=(trees, levels)).astype(dtype)
    y = _aligned_empty((output_width,), dtype)
    assert y.ctypes.data % 64 == 0
    (_call_path_output_stream if stream else _call_path_output)(y, w_out, nodes, acts)
    expected = np.zeros(output_width, dtype)
    for t in range(trees):
        for level in range(levels):  # the same order and rounding as the kernel: y = y + a u, from 0
            expected = expected + acts[t, level] * w_out[t, nodes[t, level]]
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("n", [1, 40, HUGE])
def test_predict_into_out(n):
    """predict(x, out=y) writes the same bits into y and returns it, for every kernel's batch size."""
    model, rng = random_model(4, "float32", seed=22, trees=2)
    x = rng.normal(size=(n, model.input_width)).astype(np.float32)
    out = np.full((n, model.output_width), np.nan, np.float32)
    assert model.predict(x, out=out) is out
    np.testing.assert_array_equal(out, model.predict(x))
    assert model.predict(x.astype(np.float64), out=out) is out  # converted input, same output array


def test_predict_refuses_bad_out():
    model, rng = random_model(3, "float32", seed=23)
    x = rng.normal(size=(6, model.input_width)).astype(np.float32)
    good = np.empty((6, model.output_width), np.float32)
    bad = {"shape (6, 1)": np.empty((6, 1), np.float32),
           "dtype float64": np.empty((6, model.output_width)),
           "not C-contiguous": np.empty((model.output_width, 6), np.float32).T,
           "read-only": np.lib.stride_tricks.as_strided(good, writeable=False)}
    for what, out in bad.items():
        with pytest.raises(ValueError, match=re.escape(what)):
            model.predict(x, out=out)
    with pytest.raises(TypeError, match="expected a NumPy array"):
        model.predict(x, out=good.tolist())
    square = UltraFFF(5, 5, 2, seed=0)
    xs = rng.normal(size=(4, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="overlaps x"):
        square.predict(xs, out=xs)


def test_streamed_output_is_bitwise_the_same(monkeypatch):
    """The grouped kernel's non-temporal stores (large aligned outputs) write the same bits as plain stores, and
    they are used only for 64-byte-aligned rows."""
    rng = np.random.default_rng(24)
    model = UltraFFF(40, 80, 5, trees=2, seed=24)  # rows of 80 floats: one 64-float block, then 16 scalars
    x = rng.normal(size=(HUGE, 40)).astype(np.float32)
    plain = model.predict(x)
    assert not kernels.streams(plain)  # far below STREAM_MIN_BYTES
    monkeypatch.setattr(kernels, "STREAM_MIN_BYTES", 0)
    y = model.predict(x)
    assert kernels.streams(y)
    np.testing.assert_array_equal(y, plain)
    shifted = np.empty(HUGE * 80 + 1, np.float32)[1:].reshape(HUGE, 80)  # rows off the 64-byte grid
    assert not kernels.streams(shifted)
    np.testing.assert_array_equal(model.predict(x, out=shifted), plain)


def test_predict_fast_path_equals_checked_path():
    """Already-valid input (C-contiguous, model dtype) skips validation and copies; the result is the same."""
    model, rng = random_model(4, "float32", seed=21, trees=2)
    x = rng.normal(size=(5, model.input_width)).astype(np.float32)
    fast = model.predict(x)
    np.testing.assert_array_equal(model.predict(np.asfortranarray(x)), fast)
    np.testing.assert_array_equal(model.predict(x.tolist()), fast)
    np.testing.assert_array_equal(model.predict(x[:1]), fast[:1])
    np.testing.assert_array_equal(np.concatenate([model.predict(x[i:i + 1]) for i in range(5)]), fast)


# --- bfloat16 weights (inference-only snapshot) ----------------------------------------------------------------------


def test_bfloat16_bits_round_to_nearest_even():
    from fffcpu.models.ultra import from_bfloat16_bits, to_bfloat16_bits

    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.5, 0.0, -0.0, np.inf, -np.inf,
                       np.float32(3.4e38), np.nan], dtype=np.float32)
    bits = to_bfloat16_bits(values)
    # ties go to the even neighbour; above the tie rounds up; the largest finite float32 rounds to inf
    assert bits[:10].tolist() == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC020, 0x0000, 0x8000, 0x7F80, 0xFF80, 0x7F80]
    assert np.isnan(from_bfloat16_bits(bits)[10])
    back = from_bfloat16_bits(bits[:9])
    np.testing.assert_array_equal(back, [1.0, 1.0, 1 + 2**-6, 1 + 2**-7, -2.5, 0.0, -0.0, np.inf, -np.inf])
    rng = np.random.default_rng(0)
    w = rng.normal(size=1000).astype(np.float32)
    rounded = from_bfloat16_bits(to_bfloat16_bits(w))
    np.testing.assert_array_equal(to_bfloat16_bits(rounded), to_bfloat16_bits(w))  # bfloat16 values are fixed
    assert np.all(np.abs(rounded - w) <= np.abs(w) * 2**-8)  # half a unit in the last of 8 significant bits


@pytest.mark.parametrize("n", [0, 1, 7, BIG, HUGE])
@pytest.mark.parametrize("trees", [1, 3])
def test_bfloat16_snapshot_equals_float32_layer_with_rounded_weights(n, trees):
    """to_bfloat16(): the kernels widen the bfloat16 weights exactly, so predict and route give the bits of the
    float32 layer whose weights are the rounded values, for every kernel's batch size."""
    from fffcpu.models.ultra import from_bfloat16_bits

    model, rng = random_model(5, "float32", seed=31, trees=trees)
    model.params["w_in"][...] = rng.normal(size=model.params["w_in"].shape)
    snapshot = model.to_bfloat16()
    rounded = model.copy()
    for name in ("w_in", "w_out"):
        assert snapshot.params[name].dtype == np.uint16
        rounded.params[name][...] = from_bfloat16_bits(snapshot.params[name])
    x = rng.normal(size=(n, model.input_width)).astype(np.float32)
    np.testing.assert_array_equal(snapshot.predict(x), rounded.predict(x))
    np.testing.assert_array_equal(snapshot.route(x), rounded.route(x))
    out = np.empty((n, model.output_width), np.float32)
    assert snapshot.predict(x, out=out) is out
    np.testing.assert_array_equal(out, rounded.predict(x))
    if n:  # close to the float32 layer: the weights moved by at most 2**-8 relative
        same = snapshot.route(x) == model.route(x)
        assert same.mean() > 0.8
        rows = same.all(axis=1)
        np.testing.assert_allclose(snapshot.predict(x)[rows], model.predict(x)[rows], rtol=0.05, atol=0.05)


def test_bfloat16_snapshot_is_a_snapshot_and_checks_input():
    model = UltraFFF(6, 4, 3, seed=0)
    snapshot = model.to_bfloat16()
    assert snapshot.nbytes < 0.6 * sum(a.nbytes for a in model.params.values())
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    before = snapshot.predict(x)
    model.params["w_out"][...] += 1.0  # training the layer later does not reach the snapshot
    np.testing.assert_array_equal(snapshot.predict(x), before)
    with pytest.raises(ValueError, match="6"):
        snapshot.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="float32 layer"):
        UltraFFF(6, 4, 3, dtype="float64", seed=0).to_bfloat16()
    assert "BFloat16UltraFFF(input_width=6" in repr(snapshot)


@pytest.mark.parametrize("stale", [np.nan, np.inf, 123.0])
def test_no_stale_gradient_survives_a_backward(stale):
    # a NaN left in a gradient (e.g. by a step that diverged) must not poison the next backward
    model, rng = random_model(3, seed=7)
    x = rng.normal(size=(5, model.input_width))
    model.forward(x)
    for name in ("w_in", "b_in", "w_out"):
        model.grads[name][...] = stale
    model.backward(np.ones((5, model.output_width)), input_grad=False)
    grads, _ = naive_ultra.gradients(model, x, np.ones((5, model.output_width)))
    for name in ("w_in", "b_in", "w_out"):
        np.testing.assert_allclose(model.grads[name], grads[name], rtol=1e-10, atol=1e-12)


def test_n_jobs_sets_the_threads_of_one_call_and_restores_them():
    model, rng = random_model(5, "float32", seed=4, trees=2)
    x = rng.normal(size=(BIG, model.input_width)).astype(np.float32)  # the parallel per-input kernel
    seen = []
    real = kernels.predict_kernel

    def spy(n):
        seen.append(numba.get_num_threads())
        return real(n)

    before = numba.get_num_threads()
    expected, leaves = model.predict(x), model.route(x)
    kernels.predict_kernel = spy
    try:
        got = model.predict(x, n_jobs=1)
    finally:
        kernels.predict_kernel = real
    assert seen == [1] and numba.get_num_threads() == before
    np.testing.assert_array_equal(got, expected)  # the same bits with any thread count
    np.testing.assert_array_equal(model.route(x, n_jobs=1), leaves)
    np.testing.assert_array_equal(model.to_bfloat16().predict(x, n_jobs=1), model.to_bfloat16().predict(x))
    with pytest.raises(ValueError, match="n_jobs must be None, a positive thread count"):
        model.predict(x, n_jobs=0)
    assert numba.get_num_threads() == before


def test_state_dict_keys_under_a_prefix_suggest_it():
    model = random_model(2, seed=3, trees=1)[0]
    state = {"encoder.layer.0.intermediate." + k: v for k, v in model.to_state_dict().items()}
    with pytest.raises(KeyError, match=r"pass that start as prefix=, e\.g\. "
                                       r"prefix='encoder\.layer\.0\.intermediate\.'"):
        UltraFFF.from_state_dict(state)
    assert UltraFFF.from_state_dict(state, prefix="encoder.layer.0.intermediate.").depth == 2
