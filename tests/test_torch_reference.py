"""Cross-checks against the PyTorch package ``fastfeedforward`` 0.2.1 (skipped where torch is absent).

``make torch`` installs torch 2.13.0 (CPU) and the package; CI always runs these.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
fastfeedforward = pytest.importorskip("fastfeedforward")

from fffcpu import FFF  # noqa: E402

pytestmark = pytest.mark.torch


def torch_model(depth, input_width=7, leaf_width=3, output_width=4, seed=0, **kw):
    torch.manual_seed(seed)
    return fastfeedforward.FFF(input_width, leaf_width, output_width, depth, **kw)


def to_torch(state):
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def test_the_module_itself_is_refused_with_a_hint():
    with pytest.raises(TypeError, match=r"pass model.state_dict\(\), not the FFF module itself"):
        FFF.from_fastfeedforward(torch_model(2))


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
def test_soft_forward_and_gradients_equal_autograd(depth):
    reference = torch_model(depth, seed=depth)
    model = FFF.from_fastfeedforward(reference.state_dict())
    assert model.depth == depth and model.dtype == np.float32
    rng = np.random.default_rng(depth)
    x = rng.normal(size=(9, 7)).astype(np.float32)
    labels = rng.integers(0, 4, size=9)
    h = 0.3

    xt = torch.tensor(x, requires_grad=True)
    out_t, entropies = reference.training_forward(xt, return_entropies=True)
    loss_t = torch.nn.functional.cross_entropy(out_t, torch.tensor(labels))
    if depth > 0:
        loss_t = loss_t + h * entropies.mean()
    loss_t.backward()

    from fffcpu.functional import cross_entropy_grad

    out = model.forward(x)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-5, atol=1e-6)
    if depth > 0:
        assert model.hardening_loss() == pytest.approx(entropies.mean().item(), rel=1e-5)
    dx = model.backward(cross_entropy_grad(out, labels), hardening=h)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    for name, grad in model.grads.items():
        torch_grad = getattr(reference, name).grad  # None for the empty node arrays at depth 0
        expected = np.zeros(grad.shape) if torch_grad is None else torch_grad.numpy().reshape(grad.shape)
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_predict_is_eval_forward_plus_the_b2_it_forgets(depth):
    reference = torch_model(depth, input_width=10, leaf_width=4, output_width=3, seed=depth).eval()
    model = FFF.from_fastfeedforward(reference.state_dict())
    x = np.random.default_rng(depth).normal(size=(50, 10)).astype(np.float32)
    with torch.no_grad():
        theirs = reference.eval_forward(torch.from_numpy(x)).numpy()
    leaves = model.route(x)
    np.testing.assert_allclose(model.predict(x), theirs + model.params["b2s"][leaves], rtol=1e-5, atol=1e-6)
    assert np.abs(model.params["b2s"][leaves]).max() > 1e-3  # the difference is real, not zero


def test_depth_zero_predicts_where_the_package_fails():
    reference = torch_model(0).eval()
    model = FFF.from_fastfeedforward(reference.state_dict())
    x = np.ones((2, 7), dtype=np.float32)
    with pytest.raises(Exception):
        reference.eval_forward(torch.from_numpy(x))
    with torch.no_grad():
        expected = reference.training_forward(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)


def test_ties_go_right_here_and_left_in_the_package():
    reference = torch_model(2, seed=1, train_hardened=True)
    with torch.no_grad():
        reference.node_weights.zero_()
        reference.node_biases.zero_()  # every logit is 0, p = 0.5
    model = FFF.from_fastfeedforward(reference.state_dict(), train_hardened=True)
    x = np.ones((1, 7), dtype=np.float32)
    with torch.no_grad():
        theirs = reference.training_forward(torch.from_numpy(x)).numpy()
    assert model.route(x)[0] == 3  # right, right
    p = model.params
    leaf0 = np.maximum(x @ p["w1s"][0] + p["b1s"][0], 0) @ p["w2s"][0] + p["b2s"][0]
    np.testing.assert_allclose(theirs, leaf0, rtol=1e-5)  # round(0.5) = 0: the package goes left
    np.testing.assert_array_equal(model.forward(x), model.predict(x))


def test_package_hard_training_gives_node_weights_no_gradient_straight_through_does():
    reference = torch_model(3, seed=2, train_hardened=True)
    x = np.random.default_rng(0).normal(size=(16, 7)).astype(np.float32)
    labels = np.arange(16) % 4
    out = reference.training_forward(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(out, torch.from_numpy(labels)).backward()
    assert reference.node_weights.grad is None or not reference.node_weights.grad.any()

    from fffcpu.functional import cross_entropy_grad

    model = FFF.from_fastfeedforward(reference.state_dict(), train_hardened=True, straight_through=True)
    model.backward(cross_entropy_grad(model.forward(x), labels))
    assert np.abs(model.grads["node_weights"]).max() > 1e-4


@pytest.mark.parametrize("depth", [0, 3])
def test_state_dict_round_trip(depth):
    model = FFF(6, 2, 3, depth, seed=4)
    x = np.random.default_rng(1).normal(size=(20, 6)).astype(np.float32)
    model.forward(x)
    reference = torch_model(depth, input_width=6, leaf_width=2, output_width=3, usage_mode="soft")
    reference.load_state_dict(to_torch(model.to_fastfeedforward(usage_mode="soft")))
    back = FFF.from_fastfeedforward(reference.state_dict())
    with torch.no_grad():  # (the package's training_forward adds to its usage buffers)
        np.testing.assert_allclose(reference.training_forward(torch.from_numpy(x)).numpy(), model.predict_soft(x),
                                   rtol=1e-5, atol=1e-6)
    for name, value in model.params.items():
        np.testing.assert_array_equal(back.params[name], value)
    np.testing.assert_allclose(back.usage["leaf_soft"], model.usage["leaf_soft"], rtol=1e-6)


def test_bad_state_dicts():
    state = FFF(6, 2, 3, 2).to_fastfeedforward()
    with pytest.raises(ValueError, match=r"lacks \['w2s'\]"):
        FFF.from_fastfeedforward({k: v for k, v in state.items() if k != "w2s"})
    with pytest.raises(ValueError, match="depth=3 but w1s has 4 leaves"):
        FFF.from_fastfeedforward(dict(state, depth=np.array(3)))
    with pytest.raises(ValueError, match="not a power of two"):
        FFF.from_fastfeedforward(dict(state, w1s=np.zeros((3, 6, 2))))


def test_local_sgd_rescales_the_accumulated_gradient_as_the_package():
    # Spec §1: a block is updated once its usage reaches local_batch_size, with its accumulated gradient rescaled
    # by local_batch_size / usage. The package's LocalSGD (without momentum, whose buffer lags a step there) does
    # this with the gradients autograd accumulates until its zero_grad clears the updated blocks.
    from fastfeedforward.optim import LocalSGD as PackageLocalSGD

    from fffcpu.optim import LocalSGD

    rng = np.random.default_rng(5)
    start = {"w1s": rng.normal(size=(4, 3, 2)), "node_weights": rng.normal(size=(3, 5))}
    kinds = {"w1s": "leaf", "node_weights": "node"}
    ours = LocalSGD({k: v.copy() for k, v in start.items()}, kinds, lr=0.1, local_batch_size=6)
    tensors = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in start.items()}
    usage = {"leaf": torch.zeros(4, dtype=torch.float64), "node": torch.zeros(3, dtype=torch.float64)}
    theirs = PackageLocalSGD([{"params": [tensors[k]], "usage": usage[kind], "local_batch_size": 6}
                              for k, kind in kinds.items()], lr=0.1)
    updated = 0
    for _ in range(8):
        grads = {k: rng.normal(size=v.shape) for k, v in start.items()}
        batch_usage = {"leaf": rng.integers(0, 5, 4).astype(float), "node": rng.integers(0, 5, 3).astype(float)}
        due = ours.step(grads, batch_usage)
        updated += sum(int(d.sum()) for d in due.values())
        for k, t in tensors.items():
            t.grad = torch.from_numpy(grads[k]) if t.grad is None else t.grad + torch.from_numpy(grads[k])
        for kind, u in usage.items():
            u += torch.from_numpy(batch_usage[kind])
        theirs.step()
        theirs.zero_grad()
        for k, t in tensors.items():
            np.testing.assert_allclose(ours.params[k], t.detach().numpy(), rtol=1e-12, atol=1e-15, err_msg=k)
    assert updated >= 4  # several blocks were due, at several usages above local_batch_size
