"""The FFF model against the per-sample references of tests/naive.py, and its gradients against central differences."""

import re

import numpy as np
import pytest

import fffcpu
from fffcpu import FF, FFF
from fffcpu.functional import cross_entropy, cross_entropy_grad, mean_squared_error, mean_squared_error_grad

import naive

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def random_model(depth, dtype="float64", seed=0, **kw):
    rng = np.random.default_rng(seed + 100 * depth)
    input_width, leaf_width, output_width = rng.integers(1, 7, size=3)
    model = FFF(int(input_width), int(leaf_width), int(output_width), depth, dtype=dtype, seed=seed, **kw)
    # Spread the biases so routes are not all decided by the same sign pattern.
    model.params["node_biases"][...] = rng.normal(size=model.n_nodes) * 0.5
    return model, rng


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("depth", range(7))
@pytest.mark.parametrize("n", [0, 1, 7])
def test_soft_and_hard_forward_match_reference(depth, n, dtype):
    model, rng = random_model(depth, dtype)
    x = rng.normal(size=(n, model.input_width))
    np.testing.assert_allclose(model.forward(x), naive.fff_soft(model, x), **TOL[dtype])
    np.testing.assert_allclose(model.predict_soft(x), naive.fff_soft(model, x), **TOL[dtype])
    clear = naive.fff_min_margin(model, x) > 1e-4
    np.testing.assert_array_equal(model.route(x)[clear], naive.fff_route(model, x)[clear])
    np.testing.assert_allclose(model.predict(x)[clear], naive.fff_hard(model, x)[clear], **TOL[dtype])
    assert model.route(x).dtype == np.int64
    assert model.predict(x).dtype == np.dtype(dtype)


def test_predict_soft_in_chunks(monkeypatch):
    model, rng = random_model(4, "float64")
    x = rng.normal(size=(11, model.input_width))
    whole = model.predict_soft(x)
    for chunk_size in (1, 3, 11, 100):
        np.testing.assert_allclose(model.predict_soft(x, chunk_size=chunk_size), whole, rtol=1e-13, atol=1e-15)
    # on a machine whose quarter of memory holds the arrays of 2 samples, chunks of 2 whatever chunk_size says
    sizes = []
    forward = model._soft_forward
    monkeypatch.setattr(model, "_soft_forward", lambda x, **kw: sizes.append(len(x)) or forward(x, **kw))
    monkeypatch.setattr("fffcpu.models.fff.physical_memory_bytes", lambda: 4 * 2 * model._forward_bytes_per_sample())
    np.testing.assert_allclose(model.predict_soft(x), whole, rtol=1e-13, atol=1e-15)
    assert sizes == [2, 2, 2, 2, 2, 1]
    for bad in (0, -3):
        with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
            model.predict_soft(x, chunk_size=bad)
    with pytest.raises(TypeError, match="chunk_size"):
        model.predict_soft(x, chunk_size=2.5)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid", "identity"])
def test_every_activation_matches_reference(activation):
    model, rng = random_model(3, activation=activation)
    x = rng.normal(size=(5, model.input_width))
    np.testing.assert_allclose(model.forward(x), naive.fff_soft(model, x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.predict(x), naive.fff_hard(model, x), rtol=1e-10, atol=1e-12)


def test_mixture_weights_sum_to_one_and_the_hard_path_takes_the_heavier_child():
    model, rng = random_model(5)
    x = rng.normal(size=(9, model.input_width))
    model.forward(x)
    c = model._cache["reach_levels"][-1]
    np.testing.assert_allclose(c.sum(axis=1), 1.0)
    np.testing.assert_allclose(c, naive.fff_mixture(model, x), atol=1e-12)
    # at every node of its path, the hard route goes to the child of larger mixture weight (the leaf it ends in
    # need not be the heaviest leaf: a decision of 0.51 followed by three of 0.5 weighs less than one of 0.49)
    levels, hard, rows = model._cache["reach_levels"], model.route(x), np.arange(len(x))
    for level in range(1, model.depth + 1):
        child = hard >> (model.depth - level)
        assert (levels[level][rows, child] >= levels[level][rows, child ^ 1]).all(), level


def test_depth_zero_is_a_plain_ff():
    fff = FFF(6, 5, 3, 0, dtype="float64", seed=1)
    ff = FF(6, 5, 3, dtype="float64", seed=2)
    ff.set_params({"w1": fff.params["w1s"][0], "b1": fff.params["b1s"][0],
                   "w2": fff.params["w2s"][0], "b2": fff.params["b2s"][0]})
    x = np.random.default_rng(0).normal(size=(4, 6))
    for out in (fff.forward(x), fff.predict(x), fff.predict_soft(x)):
        np.testing.assert_allclose(out, ff.predict(x), rtol=1e-12)
    np.testing.assert_array_equal(fff.route(x), 0)
    assert fff.hardening_loss() == 0.0
    fff.backward(np.ones((4, 3)))
    assert fff.grads["node_weights"].shape == (0, 6)


def test_logit_exactly_zero_goes_right_in_predict_and_hard_training():
    model = FFF(2, 2, 2, 2, train_hardened=True, dtype="float64", seed=0)
    model.params["node_weights"][...] = 0.0
    model.params["node_biases"][...] = 0.0  # every logit is exactly 0
    x = np.ones((3, 2))
    assert (model.route(x) == 3).all()  # right, right
    np.testing.assert_array_equal(model.forward(x), model.predict(x))
    np.testing.assert_allclose(model.predict(x), naive.fff_hard(model, x))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("depth", [0, 1, 3, 6])
def test_hard_training_forward_equals_predict_exactly(depth, dtype):
    model, rng = random_model(depth, dtype, train_hardened=True)
    x = rng.normal(size=(33, model.input_width))
    y_train = model.forward(x)
    np.testing.assert_array_equal(y_train, model.predict(x))  # near-ties too: the same routing kernel
    # b2 is part of the hard output (the PyTorch package's eval_forward forgets it).
    model.params["b2s"][...] += 1.0
    np.testing.assert_allclose(model.predict(x), y_train + 1.0, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("depth", [1, 4])
def test_hard_training_routes_near_ties_as_predict(depth, dtype):
    # Inputs on the root's hyperplane up to rounding: a matrix product of the logits (another summation order
    # than the routing kernel's) sent hundreds of them to the other leaf in hard training than in predict.
    model = FFF(37, 3, 2, depth, dtype=dtype, train_hardened=True, straight_through=True, seed=depth)
    rng = np.random.default_rng(depth)
    w, b = model.params["node_weights"][0].astype(np.float64), float(model.params["node_biases"][0])
    x = rng.normal(size=(2000, model.input_width))
    x[:, 0] = -(x[:, 1:] @ w[1:] + b) / w[0]
    x = x.astype(dtype)
    leaves = model.route(x)
    assert 0 < np.mean(leaves < model.n_leaves // 2) < 1  # both sides of the root
    np.testing.assert_array_equal(model.forward(x), model.predict(x))
    np.testing.assert_array_equal(model.batch_usage["leaf_hard"], np.bincount(leaves, minlength=model.n_leaves))
    for start in range(0, 2000, 250):  # a sample's path does not depend on the batch it is in
        part = slice(start, start + 250)
        np.testing.assert_array_equal(model.forward(x[part]), model.predict(x[part]))
    # Region leak swaps the root's children: every sample goes to the other side of the root than in predict.
    flips = np.zeros((len(x), model.n_nodes), dtype=bool)
    flips[:, 0] = True
    model.forward(x, flips=flips)
    side = model.batch_usage["leaf_hard"].reshape(2, -1).sum(axis=1)
    np.testing.assert_array_equal(side, [np.sum(leaves >= model.n_leaves // 2), np.sum(leaves < model.n_leaves // 2)])


# --- gradients: central differences in float64 ----------------------------------------------


def check_gradients(model, x, loss_of_output, dloss, *, hardening=0.0, reference=None, rtol=1e-5, atol=1e-7):
    """Compare model.backward with central differences of ``loss(reference(x)) + hardening * entropy``."""
    reference = reference or (lambda m, xx: m.forward(xx))
    out = model.forward(x)
    dx = model.backward(dloss(out), hardening=hardening)

    def objective():
        value = loss_of_output(reference(model, x))
        if hardening:
            value += hardening * naive.fff_entropy(model, x)
        return value

    numeric = naive.numerical_gradients(objective, model.params, x)
    for name, analytic in list(model.grads.items()) + [("x", dx)]:
        np.testing.assert_allclose(analytic, numeric[name], rtol=rtol, atol=atol, err_msg=name)


def ce_loss(labels):
    return (lambda out: naive.cross_entropy(out, labels)), (lambda out: cross_entropy_grad(out, labels))


def mse_loss(targets):
    return (lambda out: naive.mse(out, targets)), (lambda out: mean_squared_error_grad(out, targets))


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "identity"])
def test_soft_gradients_cross_entropy(depth, activation):
    model = FFF(4, 3, 3, depth, activation=activation, dtype="float64", seed=depth)
    rng = np.random.default_rng(depth)
    x = rng.normal(size=(5, 4))
    labels = rng.integers(0, 3, size=5)
    check_gradients(model, x, *ce_loss(labels), reference=naive.fff_soft)


@pytest.mark.parametrize("depth", [1, 3])
def test_soft_gradients_mse_with_hardening(depth):
    model = FFF(3, 2, 2, depth, activation="sigmoid", dtype="float64", seed=3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 3))
    targets = rng.normal(size=(6, 2))
    check_gradients(model, x, *mse_loss(targets), hardening=0.7, reference=naive.fff_soft)


def test_hardening_term_alone():
    model = FFF(3, 2, 2, 3, dtype="float64", seed=5)
    x = np.random.default_rng(5).normal(size=(4, 3))
    model.forward(x)
    assert model.hardening_loss() == pytest.approx(naive.fff_entropy(model, x), rel=1e-12)
    assert 0 < model.hardening_loss() <= np.log(2)
    check_gradients(model, x, lambda out: 0.0, lambda out: np.zeros_like(out), hardening=1.3,
                    reference=naive.fff_soft)


def test_region_leak_gradients_with_fixed_flips():
    model = FFF(4, 2, 3, 3, region_leak=0.5, dtype="float64", seed=7)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 4))
    labels = rng.integers(0, 3, size=5)
    flips = rng.random((5, model.n_nodes)) < 0.5
    assert flips.any() and not flips.all()
    loss, dloss = ce_loss(labels)
    out = model.forward(x, flips=flips)
    np.testing.assert_allclose(out, naive.fff_soft(model, x, flips=flips), rtol=1e-12)
    dx = model.backward(dloss(out), hardening=0.3)

    def objective():
        return loss(naive.fff_soft(model, x, flips=flips)) + 0.3 * naive.fff_entropy(model, x)

    numeric = naive.numerical_gradients(objective, model.params, x)
    for name, analytic in list(model.grads.items()) + [("x", dx)]:
        np.testing.assert_allclose(analytic, numeric[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_region_leak_is_seeded_and_changes_training_forward_only():
    a = FFF(4, 2, 2, 4, region_leak=0.3, dtype="float64", seed=11)
    b = FFF(4, 2, 2, 4, region_leak=0.3, dtype="float64", seed=11)
    x = np.random.default_rng(0).normal(size=(50, 4))
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    assert np.abs(a.forward(x) - a.predict_soft(x)).max() > 1e-3
    np.testing.assert_allclose(a.predict_soft(x), naive.fff_soft(a, x), rtol=1e-10)
    flips = a._cache["flips"]
    assert 0.2 < flips.mean() < 0.4


def test_plain_hard_training_gives_nodes_only_the_hardening_gradient():
    model = FFF(4, 3, 3, 3, train_hardened=True, straight_through=False, dtype="float64", seed=13)
    rng = np.random.default_rng(13)
    x = rng.normal(size=(6, 4))
    labels = rng.integers(0, 3, size=6)
    assert naive.fff_min_margin(model, x).min() > 1e-4  # finite differences do not cross a boundary
    check_gradients(model, x, *ce_loss(labels), hardening=0.5)
    model.forward(x)
    model.backward(cross_entropy_grad(model.forward(x), labels), hardening=0.0)
    assert not model.grads["node_weights"].any()


def test_hard_training_evaluates_leaves_on_the_calling_thread(monkeypatch):
    # Parallel Numba workers between the BLAS calls of a training step compete with spinning BLAS threads: on 2
    # cores, hard training on digits took 16x as long with the parallel leaf evaluation.
    from fffcpu import engine

    methods = []
    real = engine.leaf_outputs
    monkeypatch.setattr(engine, "leaf_outputs", lambda *a, **k: methods.append(k.get("method")) or real(*a, **k))
    model = FFF(6, 3, 2, 3, train_hardened=True, seed=0)
    x = np.random.default_rng(0).normal(size=(512, 6)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), model.predict(x))
    assert methods == ["serial"]


def test_hard_training_gives_nodes_the_prediction_gradient_by_default(tmp_path):
    # Spec §4: the PyTorch package's hard training gives node weights no gradient from the prediction loss.
    model = FFF(4, 3, 3, 3, train_hardened=True, seed=13)
    assert model.straight_through and not FFF(4, 3, 3, 3).straight_through
    x = np.random.default_rng(13).normal(size=(32, 4)).astype(np.float32)
    model.backward(ce_loss(np.arange(32) % 3)[1](model.forward(x)))  # no hardening term
    assert np.abs(model.grads["node_weights"]).max() > 1e-3
    paper = FFF(4, 3, 3, 3, train_hardened=True, straight_through=False, seed=13)  # the paper's version, on demand
    paper.backward(ce_loss(np.arange(32) % 3)[1](paper.forward(x)))
    assert not paper.grads["node_weights"].any()
    fffcpu.save(paper, tmp_path / "paper.npz")
    assert fffcpu.load(tmp_path / "paper.npz").straight_through is False


def test_straight_through_gradients():
    """The straight-through gradient is the gradient of the surrogate p = hard(z0) + σ(z) - σ(z0) at z = z0."""
    model = FFF(4, 3, 3, 3, train_hardened=True, straight_through=True, dtype="float64", seed=17)
    rng = np.random.default_rng(17)
    x = rng.normal(size=(6, 4))
    labels = rng.integers(0, 3, size=6)
    assert naive.fff_min_margin(model, x).min() > 1e-4
    p0 = naive.params64(model)
    z0 = {(b, node): naive.node_logit(p0, node, x[b]) for b in range(len(x)) for node in range(model.n_nodes)}

    def surrogate(z, b, node):
        return float(z0[b, node] >= 0) + naive.sigmoid(z) - naive.sigmoid(z0[b, node])

    def reference(m, xx):
        return naive.fff_soft(m, xx, decision=lambda z, b, node: surrogate(z, b, node))

    check_gradients(model, x, *ce_loss(labels), hardening=0.2, reference=reference)
    assert np.abs(model.grads["node_weights"]).max() > 1e-6


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_ff_gradients_both_losses(activation):
    model = FF(4, 5, 3, activation=activation, dtype="float64", seed=19)
    rng = np.random.default_rng(19)
    x = rng.normal(size=(6, 4))
    np.testing.assert_allclose(model.forward(x), naive.ff_forward(model, x), rtol=1e-12)
    check_gradients(model, x, *ce_loss(rng.integers(0, 3, 6)), reference=lambda m, xx: naive.ff_forward(m, xx))
    check_gradients(model, x, *mse_loss(rng.normal(size=(6, 3))), reference=lambda m, xx: naive.ff_forward(m, xx))


def test_input_grad_can_be_skipped():
    model, rng = random_model(3)
    x = rng.normal(size=(4, model.input_width))
    model.forward(x)
    assert model.backward(np.ones((4, model.output_width)), input_grad=False) is None
    assert np.abs(model.grads["w1s"]).sum() > 0


# --- usage ---------------------------------------------------------------------------------


def test_usage_counts_soft_and_hard():
    model = FFF(3, 2, 2, 3, dtype="float64", seed=23)
    x = np.random.default_rng(23).normal(size=(40, 3))
    model.forward(x)
    c = naive.fff_mixture(model, x)
    leaves = naive.fff_route(model, x)
    np.testing.assert_allclose(model.batch_usage["leaf_soft"], c.sum(axis=0))
    np.testing.assert_array_equal(model.batch_usage["leaf_hard"], np.bincount(leaves, minlength=8))
    assert model.batch_usage["node_hard"][0] == 40 and model.batch_usage["node_soft"][0] == pytest.approx(40)
    # node 1 (left child of the root) is reached by the samples of leaves 0..3
    assert model.batch_usage["node_hard"][1] == np.isin(leaves, [0, 1, 2, 3]).sum()
    assert model.batch_usage["node_soft"][2] == pytest.approx(c[:, 4:].sum())
    model.forward(x)
    np.testing.assert_allclose(model.usage["leaf_soft"], 2 * c.sum(axis=0))
    model.reset_usage()
    assert model.usage["leaf_hard"].sum() == 0


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(depth=-1), ValueError, "depth must be an integer >= 0, got -1"),
        (dict(leaf_width=0), ValueError, "leaf_width must be an integer >= 1, got 0"),
        (dict(input_width=-3), ValueError, "input_width"),
        (dict(output_width=2.5), TypeError, "output_width must be an integer"),
        (dict(region_leak=1.5), ValueError, r"region_leak must be in \[0, 1\], got 1.5"),
        (dict(activation="swish"), ValueError, "activation must be one of"),
        (dict(dtype="float16"), ValueError, "dtype must be one of"),
        (dict(depth=35), MemoryError, "would need"),
        (dict(straight_through=True), ValueError, "train_hardened=True"),
    ],
)
def test_bad_hyperparameters(kwargs, error, message):
    args = dict(input_width=784, leaf_width=8, output_width=10, depth=3) | kwargs
    with pytest.raises(error, match=message):
        FFF(**args)


def test_huge_depth_refused_before_allocating():
    with pytest.raises(MemoryError, match=r"would need .* more than this machine"):
        FFF(784, 16, 10, 30)


def test_predict_lets_nan_propagate():
    model = FFF(3, 2, 2, 2, dtype="float64", seed=0)
    x = np.array([[np.nan, 0.0, 0.0], [1.0, 2.0, 3.0]])
    out = model.predict(x)
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
    assert model.route(x)[0] == 0  # NaN logits compare false with 0: left at every level


@pytest.mark.parametrize("n", [1, 5, 40, 300])
def test_predict_into_out(n):
    """predict(x, out=y) writes the bits of predict(x) into y and returns it, on every path (batch 1 and small
    batches take the serial path, 300 the grouped one)."""
    model = FFF(20, 16, 3, 4, dtype="float32", seed=1)
    x = np.random.default_rng(n).normal(size=(n, 20)).astype(np.float32)
    out = np.full((n, 3), np.nan, np.float32)
    assert model.predict(x, out=out, n_jobs=2) is out
    np.testing.assert_array_equal(out, model.predict(x))
    out[:] = np.nan
    assert model.predict(x.astype(np.float64), out=out) is out  # converted input, same output array
    np.testing.assert_array_equal(out, model.predict(x))


def test_predict_refuses_bad_out_and_leaves_it_untouched():
    model = FFF(5, 4, 3, 2, dtype="float32", seed=0)
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    for n in (1, 6):  # the batch-1 path and the checked one
        good = np.full((n, 3), 7.0, np.float32)
        bad = {f"shape ({n}, 1)": np.full((n, 1), 7.0, np.float32),
               "dtype float64": np.full((n, 3), 7.0),
               "not C-contiguous": np.full((3, n), 7.0, np.float32).T,
               "read-only": np.lib.stride_tricks.as_strided(good, writeable=False)}
        for what, out in bad.items():
            if what == "not C-contiguous" and n == 1:
                continue  # a (1, 3) transpose is C-contiguous too
            with pytest.raises(ValueError, match=re.escape(what)):
                model.predict(x[:n], out=out)
            assert (out == 7.0).all()
        with pytest.raises(TypeError, match="expected a NumPy array"):
            model.predict(x[:n], out=good.tolist())
    square = FFF(3, 2, 3, 2, dtype="float32", seed=0)
    xs = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    for rows in (xs[:1], xs):
        with pytest.raises(ValueError, match="overlaps x"):
            square.predict(rows, out=rows)


def test_losses_match_reference():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 4)) * 30, rng.integers(0, 4, 5)
    assert cross_entropy(logits, labels) == pytest.approx(naive.cross_entropy(logits, labels), rel=1e-12)
    out, tgt = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    assert mean_squared_error(out, tgt) == pytest.approx(naive.mse(out, tgt), rel=1e-12)
    huge = np.array([[1000.0, -1000.0], [-1e4, 1e4]], dtype=np.float32)
    assert np.isfinite(cross_entropy(huge, np.array([1, 0])))
    assert np.isfinite(cross_entropy_grad(huge, np.array([1, 0]))).all()


def test_copy_is_independent_and_equal():
    model, rng = random_model(3)
    clone = model.copy()
    x = rng.normal(size=(5, model.input_width))
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    clone.params["b2s"][...] += 1
    assert not np.array_equal(clone.predict(x), model.predict(x))


def test_sizes_from_the_paper():
    model = FFF(784, 8, 10, 4)
    assert model.training_width == 128 and model.inference_size == 12
    assert fffcpu.tree.training_size(4, 8) == 15 + 128
    assert FF(784, 128, 10).training_width == 128


@pytest.mark.parametrize("depth", range(6))
def test_heap_index_arithmetic(depth):
    tree = fffcpu.tree
    assert tree.n_nodes(depth) == 2 ** depth - 1 and tree.n_leaves(depth) == 2 ** depth
    levels = [range(tree.n_nodes(depth))[tree.level_slice(k)] for k in range(depth)]
    assert [i for level in levels for i in level] == list(range(tree.n_nodes(depth)))  # levels tile the nodes
    for leaf in range(tree.n_leaves(depth)):
        turns = tree.path_directions(leaf, depth)
        assert tree.leaf_of_path(turns) == leaf
        assert turns.tolist() == [bool(leaf >> (depth - 1 - k) & 1) for k in range(depth)]  # root = top bit
        node, walked = 0, []
        for right in turns:  # children of i are 2i + 1 (left) and 2i + 2 (right)
            walked.append(node)
            node = 2 * node + (2 if right else 1)
        assert tree.path_nodes(leaf, depth).tolist() == walked
        assert all(walked[k] in levels[k] for k in range(depth))
        assert node - tree.n_nodes(depth) == leaf  # leaf id = final node - (2**d - 1)
    assert tree.inference_size(depth, 8) == depth + 8 and tree.inference_width(depth, 8) == 8


def test_heap_index_arithmetic_refuses_bad_arguments():
    tree = fffcpu.tree
    for call in (lambda: tree.n_leaves(-1), lambda: tree.n_nodes(-2), lambda: tree.path_nodes(0, -1),
                 lambda: tree.level_slice(-1), lambda: tree.training_width(-1, 8)):
        with pytest.raises(ValueError, match=r"(depth|level) must be an integer >= 0, got -"):
            call()
    with pytest.raises(TypeError, match="depth must be an integer >= 0, got 2.5"):
        tree.n_leaves(2.5)
    with pytest.raises(ValueError, match="leaf_width must be an integer >= 1, got 0"):
        tree.training_size(3, 0)
    with pytest.raises(ValueError, match=r"leaf must be in \[0, 8\) for depth 3, got 8"):
        tree.path_nodes(8, 3)


def test_initialisation_follows_the_package():
    model = FFF(100, 4, 3, 5, seed=0)
    p = model.params
    for name in ("node_weights", "node_biases", "w1s", "b1s"):
        assert 0.09 < np.abs(p[name]).max() <= 0.1, name  # U(±1/√input_width)
    for name in ("w2s", "b2s"):
        assert 0.4 < np.abs(p[name]).max() <= 0.5, name  # U(±1/√leaf_width)
    assert abs(p["w1s"].mean()) < 0.01
    np.testing.assert_array_equal(FFF(100, 4, 3, 5, seed=0).params["w1s"], p["w1s"])  # seeded


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sharpen_keeps_routes_and_moves_soft_towards_hard(dtype):
    """A power-of-two factor multiplies every logit exactly: routes and hard outputs keep their bits, node
    parameters are scaled, and predict_soft approaches predict as the factor grows (and moves away below 1)."""
    model = FFF(12, 3, 4, 5, dtype=dtype, seed=1)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 12)).astype(dtype)
    x[0] = 0.0  # logit = bias only
    leaves, hard = model.route(x), model.predict(x)
    nodes = model.params["node_weights"].copy(), model.params["node_biases"].copy()
    distances = []
    for factor in (0.25, 1.0, 4.0, 64.0, 2.0**20):
        clone = model.copy()
        assert clone.sharpen(factor) is clone
        np.testing.assert_array_equal(clone.params["node_weights"], nodes[0] * np.asarray(factor, dtype))
        np.testing.assert_array_equal(clone.params["node_biases"], nodes[1] * np.asarray(factor, dtype))
        np.testing.assert_array_equal(clone.route(x), leaves)
        np.testing.assert_array_equal(clone.predict(x), hard)
        for name in ("w1s", "b1s", "w2s", "b2s"):
            np.testing.assert_array_equal(clone.params[name], model.params[name])
        distances.append(float(np.abs(clone.predict_soft(x) - hard).max()))
    assert distances == sorted(distances, reverse=True) and distances[0] > distances[1]
    assert distances[-1] < 1e-3 * distances[1]


def test_sharpen_rejects_bad_factors_and_leaves_the_model_unchanged():
    model = FFF(6, 2, 3, 3, seed=0)
    model.params["node_biases"][1] = 10.0
    before = {k: v.copy() for k, v in model.params.items()}
    for bad, error, match in ((0.0, ValueError, "positive finite"), (-2.0, ValueError, "positive finite"),
                              (np.inf, ValueError, "positive finite"), ("2", TypeError, "positive number"),
                              (1e39, ValueError, "would overflow float32"),
                              (1e38, ValueError, "largest node parameter is 10; .*at most 3.4")):
        with pytest.raises(error, match=match):
            model.sharpen(bad)
    for name, value in before.items():
        np.testing.assert_array_equal(model.params[name], value)
    model.sharpen(1e30)  # representable: the largest node parameter is 10
    assert np.isfinite(model.params["node_weights"]).all()


def test_fastfeedforward_state_dict_round_trip_and_refusals():
    model, rng = random_model(3, "float32")
    state = model.to_fastfeedforward()
    assert state["node_biases"].shape == (7, 1) and int(state["depth"]) == 3
    clone = FFF.from_fastfeedforward(state)
    x = rng.normal(size=(9, model.input_width)).astype(np.float32)
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    counts = {"node_usage": np.arange(7.0), "leaf_usage": np.arange(8.0) + 10}
    for mode, other in (("soft", "hard"), ("hard", "soft")):
        loaded = FFF.from_fastfeedforward({**state, **counts}, usage_mode=mode)
        np.testing.assert_array_equal(loaded.usage[f"node_{mode}"], counts["node_usage"])
        np.testing.assert_array_equal(loaded.usage[f"leaf_{mode}"], counts["leaf_usage"])
        assert not loaded.usage[f"node_{other}"].any() and not loaded.usage[f"leaf_{other}"].any()

    class Module:  # what a torch module looks like to from_fastfeedforward: it has a state_dict() method
        def state_dict(self):
            return state

    with pytest.raises(TypeError, match=r"pass model.state_dict\(\), not the Module module itself"):
        FFF.from_fastfeedforward(Module())
    with pytest.raises(TypeError, match="expects a mapping of parameter names to tensors or arrays, got list"):
        FFF.from_fastfeedforward(list(state.items()))
    bad = [({"w1s": state["w1s"][:0]}, r"w1s has 0 leaves, which is not a power of two"),
           ({"leaf_usage": np.zeros(3, np.float32)}, r"state_dict\['leaf_usage'\] must hold 8 values"),
           ({"depth": np.array([3, 3])}, r"state_dict\['depth'\] must be one integer"),
           ({"depth": np.array(2)}, "state_dict says depth=2 but w1s has 8 leaves")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            FFF.from_fastfeedforward({**state, **change})
    with pytest.raises(ValueError, match="usage_mode must be 'soft' or 'hard', got 'x'"):
        FFF.from_fastfeedforward(state, usage_mode="x")


@pytest.mark.parametrize("x", [np.zeros((2, 5), np.float32), np.zeros((2, 5)), np.zeros((300, 5), np.float32),
                               np.zeros((0, 5), np.float32), [[0.0] * 5]], ids=["small", "f64", "large", "empty",
                                                                              "list"])
@pytest.mark.parametrize("n_jobs, error", [(0, ValueError), ("2", TypeError), (2.0, TypeError), (True, TypeError)])
def test_n_jobs_is_checked_on_every_path(x, n_jobs, error):
    for model in (FFF(5, 3, 2, 3, seed=0), FFF(5, 3, 2, 0, seed=0)):
        with pytest.raises(error, match="n_jobs must be"):
            model.predict(x, n_jobs=n_jobs)
        with pytest.raises(error, match="n_jobs must be"):
            model.route(x, n_jobs=n_jobs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"seed": -1}, ValueError, "seed must be None or an integer >= 0, got -1"),
    ({"seed": 1.5}, TypeError, r"seed must be None or an integer >= 0, got 1.5 \(float\)"),
    ({"seed": True}, TypeError, "seed must be None or an integer >= 0, got True"),
    ({"dtype": None}, TypeError, "dtype must be one of .*, got None"),
    ({"straight_through": "no", "train_hardened": True}, TypeError, "straight_through must be True or False"),
])
def test_constructor_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        FFF(4, 3, 3, 2, **kwargs)
    if "straight_through" not in kwargs:
        with pytest.raises(error, match=match):
            fffcpu.UltraFFF(4, 3, 2, **kwargs)


def test_numpy_integer_seeds_are_plain_ints_that_save(tmp_path):
    model = FFF(4, 3, 3, 2, seed=np.int64(3))
    assert type(model.seed) is int and model.config()["seed"] == 3
    assert fffcpu.load(fffcpu.save(model, tmp_path / "m")).seed == 3


def test_widths_too_large_for_memory_are_refused_with_the_size():
    with pytest.raises(MemoryError, match=r"FFF parameters and gradients \(1,900,000,000,000,000,000,059 values\) "
                                          "would need"):
        FFF(10**20, 4, 2, 2)


def test_warmup_takes_one_dtype_name_or_several_and_refuses_others():
    fffcpu.warmup("float32", parallel=False)
    fffcpu.warmup(("float64",), parallel=False)
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\), got 'float16'"):
        fffcpu.warmup(("float16",))
    with pytest.raises(TypeError, match="dtypes must be a dtype name .* or a list or tuple of them, got 5"):
        fffcpu.warmup(5)


def test_set_params_and_train_name_what_they_expected():
    model = FFF(4, 2, 3, 2, seed=0)
    with pytest.raises(TypeError, match="params must be a dict of parameter name -> array .* got NoneType"):
        model.set_params(None)
    with pytest.raises(TypeError, match=r"train expects a trainable fffcpu model \(FFF, UltraFFF or FF\), got str"):
        fffcpu.train("model", np.zeros((4, 4)), np.zeros(4, int))


def test_backward_and_forward_refuse_what_they_cannot_use():
    from fffcpu.optim import Adam

    model = FFF(4, 3, 2, 2, seed=0)
    x = np.zeros((2, 4), np.float32)
    model.forward(x)
    with pytest.raises(TypeError, match="dy must hold real numbers, got dtype <U1"):
        model.backward(np.full((2, 2), "a"))
    with pytest.raises(TypeError, match=r"dy must hold real numbers, got dtype complex128 \(complex values"):
        model.backward(np.zeros((2, 2), complex))
    with pytest.raises(TypeError, match="dy must hold real numbers, got dtype object"):
        model.backward(np.array([[None, 1.0], [1.0, 1.0]], dtype=object))
    with pytest.raises(TypeError, match="hardening must be a number >= 0, got 'x'"):
        model.backward(np.zeros((2, 2)), hardening="x")
    with pytest.raises(TypeError, match="flips must be a bool array .* got dtype float64"):
        model.forward(x, flips=np.full((2, 3), 0.5))
    with pytest.raises(TypeError, match=r"betas must be a pair \(beta1, beta2\)"):
        Adam(model.params, betas=(0.9, 0.9, 0.9))


def test_inputs_from_pandas_nullable_columns_masked_arrays_and_ragged_lists():
    model = FFF(2, 3, 2, 2, seed=0)
    x = np.array([[0.5, -1.0], [2.0, 3.0]])
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": pd.array([0.5, 2.0], dtype="Float32"), "b": pd.array([-1, 3], dtype="Int64")})
    np.testing.assert_array_equal(model.predict(frame), model.predict(x))
    with pytest.raises(ValueError, match="X contains 1 NaN or Inf"):  # NA becomes NaN, which training refuses
        fffcpu.train(model, frame.astype({"a": "Float32"}).where(frame > 0), [0, 1], epochs=1, progress=False)
    masked = np.ma.masked_array(x, mask=[[False, True], [False, False]])
    with pytest.raises(ValueError, match=r"masked array with 1 masked value\(s\): fill them first"):
        model.predict(masked)
    np.testing.assert_array_equal(model.predict(np.ma.masked_array(x)), model.predict(x))
    with pytest.raises(ValueError, match="x must be a 2-D array .* rows of different lengths"):
        model.predict([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("labels, message", [
    ([0, 1, -1], r"labels must be in \[0, 3\) for 3 classes, got values from -1 to 1"),
    ([0, 1, 5], r"labels must be in \[0, 3\) for 3 classes, got values from 0 to 5"),
    ([0.0, 1.0, 2.0], r"labels must be 3 integer class indices .* got dtype float64"),
    ([0, 1], r"labels must be 3 integer class indices .* shape \(2,\)"),
])
def test_cross_entropy_refuses_labels_that_index_no_class(labels, message):
    # a label of -1 would silently pick the last class
    for f in (cross_entropy, cross_entropy_grad):
        with pytest.raises(ValueError, match=message):
            f(np.zeros((3, 3)), np.array(labels))


def test_dtype_in_another_byte_order_is_the_native_float():
    model = FFF(4, 2, 3, 2, dtype=">f4", seed=0)
    assert model.dtype == np.float32 and model.dtype.isnative
    np.testing.assert_array_equal(model.predict(np.ones((2, 4))), FFF(4, 2, 3, 2, seed=0).predict(np.ones((2, 4))))
