"""The training loop: it learns, it hardens, it validates its input and it stops cleanly on divergence."""

import numpy as np
import pytest

import fffcpu
from fffcpu import FF, FFF, TrainingDiverged, train
from fffcpu.datasets import load_digits, train_test_split

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    return train_test_split(X, y, test_size=0.25, seed=0)


def test_fff_learns_digits_and_hardens(digits):
    X_train, X_test, y_train, y_test = digits
    model = FFF(64, 8, 10, 4, seed=0)
    history = train(model, X_train, y_train, lr=1e-2, epochs=40, batch_size=64, hardening=10.0,
                    validation=(X_test, y_test), seed=0, progress=False)
    hard = np.mean(model.predict(X_test).argmax(axis=1) == y_test)
    soft = np.mean(model.predict_soft(X_test).argmax(axis=1) == y_test)
    assert hard >= 0.90
    assert abs(hard - soft) <= 0.01
    assert history["val_acc_hard"][-1] == pytest.approx(hard)
    assert history["entropy"][-1] < history["entropy"][0]
    assert history.epochs == 40 and len(history["seconds"]) == 40
    assert set(history) >= {"loss", "entropy", "objective", "train_acc_soft", "train_acc_hard", "val_loss",
                            "val_acc_soft", "val_acc_hard"}


def test_without_hardening_the_tree_stays_soft(digits):
    X_train, _, y_train, _ = digits
    model = FFF(64, 8, 10, 4, seed=0)
    history = train(model, X_train, y_train, lr=1e-2, epochs=5, batch_size=64, seed=0, progress=False)
    assert history["train_acc_soft"][-1] > history["train_acc_hard"][-1]


def test_dense_ff_and_mse_regression():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = np.sin(X[:, :1]) + X[:, 1:2] * X[:, 2:3]
    model = FF(3, 32, 1, activation="tanh", dtype="float64", seed=0)
    history = train(model, X, y[:, 0], loss="mse", lr=1e-2, epochs=60, batch_size=32, seed=0, progress=False)
    assert history["train_mse_hard"][-1] < 0.25 * history["train_mse_hard"][0]
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("optimizer", ["sgd", "local_sgd", "local_adam"])
def test_other_optimizers_reduce_the_loss(digits, optimizer):
    X_train, _, y_train, _ = digits
    model = FFF(64, 4, 10, 3, seed=1)
    options = {"lr": 0.1, "momentum": 0.9} if "sgd" in optimizer else {"lr": 1e-2}
    if optimizer.startswith("local_"):
        options["local_batch_size"] = 64
    history = train(model, X_train, y_train, optimizer=optimizer, epochs=6, batch_size=64, seed=0, progress=False,
                    **options)
    assert history["loss"][-1] < 0.6 * history["loss"][0]


def test_training_is_reproducible(digits):
    X_train, _, y_train, _ = digits
    runs = []
    for _ in range(2):
        model = FFF(64, 2, 10, 3, region_leak=0.1, seed=3)
        train(model, X_train[:300], y_train[:300], epochs=2, seed=4, progress=False)
        runs.append(model.params["w1s"].copy())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_callback_sees_every_epoch(digits):
    X_train, _, y_train, _ = digits
    seen = []
    train(FFF(64, 2, 10, 2, seed=0), X_train[:100], y_train[:100], epochs=3, progress=False,
          callback=lambda epoch, history, model: seen.append((epoch, history.epochs)))
    assert seen == [(0, 1), (1, 2), (2, 3)]


def test_progress_bar_prints_to_stderr(digits, capsys):
    X_train, _, y_train, _ = digits
    train(FFF(64, 2, 10, 2, seed=0), X_train[:100], y_train[:100], epochs=2, progress=True)
    assert "training" in capsys.readouterr().err
    train(FFF(64, 2, 10, 2, seed=0), X_train[:100], y_train[:100], epochs=2, progress=False)
    assert capsys.readouterr().err == ""


def test_divergence_stops_with_last_finite_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)) * 1e3
    y = rng.normal(size=(64, 1)) * 1e18
    model = FF(3, 4, 1, activation="identity", seed=0)
    with pytest.raises(TrainingDiverged, match="Try a smaller lr") as info:
        train(model, X, y, loss="mse", optimizer="sgd", lr=10.0, epochs=50, batch_size=8, progress=False)
    for p in model.params.values():
        assert np.isfinite(p).all()
    assert isinstance(info.value.history, fffcpu.History)


@pytest.mark.parametrize("make", [lambda: FFF(4, 2, 3, 2, seed=0), lambda: FF(4, 8, 3, seed=0),
                                  lambda: fffcpu.UltraFFF(4, 3, 2, seed=0)])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_divergence_in_the_last_update_is_caught(make, optimizer):
    # one batch, one epoch: no later batch checks the update, which makes every weight non-finite
    rng = np.random.default_rng(0)
    X, y = rng.random((40, 4)), rng.integers(0, 3, 40)
    model = make()
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(TrainingDiverged, match="last update of epoch 1; the model keeps the weights before it"):
        train(model, X, y, optimizer=optimizer, lr=1e300, epochs=1, batch_size=40, progress=False)
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize(
    "X, y, kwargs, error, message",
    [
        (np.zeros((0, 4)), np.zeros(0, int), {}, ValueError, "the training set is empty"),
        (np.zeros((5, 3)), np.zeros(5, int), {}, ValueError, "X has 3 features, the model was built for input_width=4"),
        (np.zeros(4), np.zeros(1, int), {}, ValueError, "X must be 2-D"),
        (np.full((5, 4), np.nan), np.zeros(5, int), {}, ValueError, "X contains 20 NaN or Inf"),
        (np.zeros((5, 4)), np.zeros(4, int), {}, ValueError, "y must be 1-D class labels of length 5, got shape"),
        (np.zeros((5, 4)), np.array([0, 1, 2, 3, 9]), {}, ValueError, r"labels in \[0, 9\].*output_width=3"),
        (np.zeros((5, 4)), np.array([0, 1, -1, 0, 0]), {}, ValueError, "labels must be in"),
        (np.zeros((5, 4)), np.array([0, 1, np.nan, 0, 0]), {}, ValueError, "y contains NaN"),
        (np.zeros((5, 4)), np.array([0, 0.5, 1, 0, 0]), {}, ValueError, "integer class labels"),
        (np.zeros((5, 4)), np.zeros(5, int), {"lr": 0}, ValueError, "lr must be a positive finite number, got 0"),
        (np.zeros((5, 4)), np.zeros(5, int), {"lr": -1e-3}, ValueError, "lr must be a positive"),
        (np.zeros((5, 4)), np.zeros(5, int), {"epochs": 0}, ValueError, "epochs must be an integer >= 1"),
        (np.zeros((5, 4)), np.zeros(5, int), {"loss": "hinge"}, ValueError, "loss must be one of"),
        (np.zeros((5, 4)), np.zeros((5, 2)), {"loss": "mse"}, ValueError, r"y must have shape \(5, 3\)"),
        (np.zeros((5, 4)), np.full((5, 3), np.inf), {"loss": "mse"}, ValueError, "y contains NaN or Inf"),
        (np.zeros((5, 4)), np.zeros(5, int), {"validation": np.zeros(3)}, TypeError, "validation must be a pair"),
        (np.zeros((5, 4), dtype=complex), np.zeros(5, int), {}, TypeError, "complex"),
        (np.zeros((5, 4)), np.zeros(5, int), {"optimizer": "local_adam", "local_batch_size": 11, "epochs": 2},
         ValueError, "local_batch_size=11 is more than the 10 samples that 2 epoch"),
        (np.zeros((5, 4)), np.zeros(5, int), {"local_batch_size": 4}, ValueError,
         "local_batch_size only applies to the localized optimizers .'local_adam'., not to optimizer='adam'"),
        (np.zeros((5, 4)), np.zeros(5, int), {"usage_counts": "x"}, ValueError,
         "counts must be 'soft' or 'hard', got 'x'"),
        # a misspelt argument is train's error, not the optimizer's, with the closest names
        (np.zeros((5, 4)), np.zeros(5, int), {"epoch": 3}, TypeError,
         r"train\(\) got unexpected keyword argument 'epoch' \(did you mean 'epochs'\?\): train takes loss, "
         r"optimizer, lr, epochs, .* and optimizer='adam' also takes betas, eps, weight_decay, decoupled_weight_decay"),
        (np.zeros((5, 4)), np.zeros(5, int), {"optimizer": "sgd", "momentun": 0.9, "betas": (0.9, 0.99)}, TypeError,
         r"unexpected keyword arguments 'betas', 'momentun' \(did you mean 'momentum'\?\): .* optimizer='sgd' "
         r"also takes momentum, weight_decay$"),
    ],
)
def test_bad_training_input(X, y, kwargs, error, message):
    model = FFF(4, 2, 3, 2, seed=0)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(error, match=message):
        train(model, X, y, progress=False, **kwargs)
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])  # nothing the user had is touched


def test_integer_features_are_converted():
    X = np.random.default_rng(0).integers(0, 16, size=(50, 4))
    history = train(FFF(4, 2, 3, 2, seed=0), X, np.arange(50) % 3, epochs=1, progress=False)
    assert np.isfinite(history["loss"][0])


def test_straight_through_hard_training_uses_many_leaves(digits):
    """Soft training with a strong hardening weight can route every test image to one leaf; hard training with
    straight-through gradients keeps the tree in use and is accurate where it is deployed (hard)."""
    X_train, X_test, y_train, y_test = digits
    model = FFF(64, 8, 10, 4, train_hardened=True, straight_through=True, seed=0)
    train(model, X_train, y_train, lr=1e-2, epochs=40, batch_size=64, seed=0, progress=False)
    assert np.mean(model.predict(X_test).argmax(axis=1) == y_test) >= 0.93
    assert len(np.unique(model.route(X_test))) >= 4


def test_linear_ramp_values():
    from fffcpu.train import linear_ramp

    ramp = linear_ramp(3.0, 4)
    assert [ramp(e) for e in range(6)] == [0.75, 1.5, 2.25, 3.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="hardening"):
        linear_ramp(-1.0, 4)


def test_hardening_schedule_sets_each_epochs_weight(digits):
    """A callable hardening gives each epoch its weight: the objective of the history uses it, and a run whose
    schedule is constant equals the run with that constant."""
    X_train, _, y_train, _ = digits
    seen = []

    def schedule(epoch):
        seen.append(epoch)
        return [0.0, 5.0, 50.0][epoch]

    model = FFF(64, 4, 10, 2, seed=0)
    history = train(model, X_train[:300], y_train[:300], lr=1e-2, epochs=3, hardening=schedule, seed=0,
                    progress=False)
    assert seen[-3:] == [0, 1, 2]
    for epoch, h in enumerate([0.0, 5.0, 50.0]):
        assert history["objective"][epoch] == pytest.approx(history["loss"][epoch] + h * history["entropy"][epoch])
    constant = [train(FFF(64, 4, 10, 2, seed=0), X_train[:300], y_train[:300], lr=1e-2, epochs=2, hardening=h,
                      seed=0, progress=False) for h in (2.0, lambda epoch: 2.0)]
    assert constant[0]["loss"] == constant[1]["loss"] and constant[0]["entropy"] == constant[1]["entropy"]


def test_hardening_schedule_changes_the_training_only_from_its_epoch(digits):
    """Weight 0 in epoch 0, then a strong weight: epoch 0 equals training without hardening, later epochs harden."""
    X_train, _, y_train, _ = digits
    runs = [train(FFF(64, 4, 10, 2, seed=0), X_train, y_train, lr=1e-2, epochs=4, batch_size=64, hardening=h,
                  seed=0, progress=False) for h in (0.0, lambda epoch: 0.0 if epoch == 0 else 30.0)]
    assert runs[1]["loss"][0] == runs[0]["loss"][0] and runs[1]["entropy"][0] == runs[0]["entropy"][0]
    assert runs[1]["entropy"][-1] < 0.5 * runs[0]["entropy"][-1]


def test_bad_hardening_schedule_is_rejected(digits):
    X_train, _, y_train, _ = digits
    with pytest.raises(ValueError, match="hardening"):
        train(FFF(64, 4, 10, 2, seed=0), X_train, y_train, epochs=2, hardening=lambda epoch: -1.0, progress=False)


def test_sharpening_ramp_values():
    from fffcpu.train import sharpening_ramp

    ramp = sharpening_ramp(16.0, 4)
    assert [ramp(e) for e in range(6)] == [2.0, 2.0, 2.0, 2.0, 1.0, 1.0]
    assert np.prod([sharpening_ramp(4096.0, 7)(e) for e in range(7)]) == pytest.approx(4096.0)
    with pytest.raises(ValueError, match="total"):
        sharpening_ramp(0.0, 4)
    with pytest.raises(ValueError, match="epochs"):
        sharpening_ramp(2.0, 0)


def test_sharpening_scales_nodes_after_each_epoch_and_is_recorded(digits):
    """With lr so small that the optimizer barely moves the nodes, the node parameters after training are the
    initial ones times the product of the epochs' factors (the optimizer's changes come on top); the history
    records that product; hard and soft accuracy of the last epoch are evaluated after the epoch's sharpening."""
    X_train, X_test, y_train, y_test = digits
    model = FFF(64, 2, 10, 3, seed=0)
    start = model.params["node_weights"].copy()
    history = train(model, X_train, y_train, optimizer="sgd", lr=1e-12, epochs=3, batch_size=256, seed=0,
                    sharpening=lambda e: [2.0, 4.0, 0.5][e], validation=(X_test, y_test), progress=False)
    assert history["node_scale"] == [2.0, 8.0, 4.0]
    np.testing.assert_allclose(model.params["node_weights"], 4.0 * start, rtol=1e-5, atol=1e-9)
    soft = np.mean(model.predict_soft(X_test).argmax(axis=1) == y_test)
    assert history["val_acc_soft"][-1] == pytest.approx(soft)


def test_sharpening_closes_the_soft_hard_gap_of_a_thin_leaf_tree(digits):
    """ℓ=1, depth 5: trained soft with the hardening weight ramped to 1, the soft model is better than its hard
    routing (by 34-47 points over seeds 0-2); with the nodes sharpened 4096x over the same epochs the two agree
    within a point, and the hard model is far better (85-87% against 48-63%)."""
    from fffcpu.train import linear_ramp, sharpening_ramp

    X_train, X_test, y_train, y_test = digits
    acc = lambda out: float(np.mean(out.argmax(axis=1) == y_test))  # noqa: E731
    gaps, hards = {}, {}
    for name, sharpening in (("plain", None), ("sharpened", sharpening_ramp(4096.0, 60))):
        model = FFF(64, 1, 10, 5, seed=0)
        train(model, X_train, y_train, lr=1e-2, epochs=60, batch_size=256, hardening=linear_ramp(1.0, 60),
              sharpening=sharpening, seed=0, progress=False)
        hards[name] = acc(model.predict(X_test))
        gaps[name] = acc(model.predict_soft(X_test)) - hards[name]
    assert gaps["plain"] > 0.2
    assert abs(gaps["sharpened"]) <= 0.01
    assert hards["sharpened"] >= 0.8 and hards["sharpened"] > hards["plain"] + 0.1


def test_sharpening_needs_an_fff_and_positive_factors(digits):
    X_train, _, y_train, _ = digits
    with pytest.raises(ValueError, match="FF has no sharpen"):
        train(FF(64, 8, 10, seed=0), X_train, y_train, epochs=1, sharpening=2.0, progress=False)
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="sharpening"):
            train(FFF(64, 2, 10, 2, seed=0), X_train, y_train, epochs=1, sharpening=bad, progress=False)
    with pytest.raises(ValueError, match="sharpening"):  # checked at the epoch that returns it
        train(FFF(64, 2, 10, 2, seed=0), X_train, y_train, epochs=2, sharpening=lambda e: [2.0, -1.0][e],
              progress=False)


def _small_problem():
    rng = np.random.default_rng(0)
    return rng.random((40, 4)).astype(np.float32), rng.integers(0, 3, 40)


def test_an_optimizer_built_on_another_model_is_refused():
    from fffcpu.optim import Adam

    X, y = _small_problem()
    model, other = FFF(4, 3, 3, 2, seed=0), FFF(4, 3, 3, 2, seed=1)
    before = {k: v.copy() for k, v in other.params.items()}
    with pytest.raises(ValueError, match="the optimizer updates other arrays than this model's parameters"):
        train(model, X, y, optimizer=Adam(other.params), epochs=1, progress=False)
    with pytest.raises(ValueError, match="build it on this model"):
        train(model, X, y, optimizer=Adam(FFF(4, 3, 3, 6).params), epochs=1, progress=False)
    for k, v in before.items():
        np.testing.assert_array_equal(other.params[k], v)


def test_lr_and_options_with_an_optimizer_object_are_refused_not_ignored():
    from fffcpu.optim import Adam

    X, y = _small_problem()
    model = FFF(4, 3, 3, 2, seed=0)
    with pytest.raises(TypeError, match="lr only apply to an optimizer named by a string"):
        train(model, X, y, optimizer=Adam(model.params), lr=0.5, epochs=1, progress=False)
    with pytest.raises(TypeError, match="momentum only apply"):
        train(model, X, y, optimizer=Adam(model.params), momentum=0.9, epochs=1, progress=False)
    history = train(model, X, y, optimizer=Adam(model.params, lr=0.01), epochs=1, progress=False)
    assert history.epochs == 1


@pytest.mark.parametrize("kwargs, error, match", [
    ({"callback": 5}, TypeError, "callback must be a function"),
    ({"hardening": lambda e: -1.0 if e == 1 else 0.0}, ValueError, "hardening must be a finite number >= 0"),
    ({"sharpening": lambda e: 0.0 if e == 2 else 1.0}, ValueError, "sharpening must be a positive finite number"),
    ({"seed": -1}, ValueError, "seed must be None or an integer >= 0, got -1"),
    ({"seed": 1.5}, TypeError, "seed must be None or an integer >= 0, got 1.5"),
])
def test_arguments_that_would_fail_in_a_later_epoch_fail_before_training(kwargs, error, match):
    X, y = _small_problem()
    model = FFF(4, 3, 3, 2, seed=0)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(error, match=match):
        train(model, X, y, epochs=3, progress=False, **kwargs)
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v)


def test_values_beyond_the_model_dtype_and_labels_beyond_int64_are_reported_as_given():
    X, y = _small_problem()
    model = FFF(4, 3, 3, 2, seed=0)
    with pytest.raises(ValueError, match=r"X has values up to 1e\+300 in magnitude, beyond the largest float32"):
        train(model, np.full((40, 4), 1e300), y, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"y has values up to 1e\+300 in magnitude, beyond the largest float32"):
        train(FFF(4, 3, 1, 2, seed=0), X, np.full(40, 1e300), loss="mse", epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"labels in \[1e\+20, 1e\+20\]"):
        train(model, X, np.full(40, 1e20), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"labels in \[0, 9223372036854775813\]"):
        train(model, X, np.array([0] * 39 + [2**63 + 5], dtype=np.uint64), epochs=1, progress=False)


def test_val_loss_is_the_loss_of_the_outputs_training_computes():
    from fffcpu.functional import cross_entropy

    X, y = _small_problem()
    for hard in (True, False):
        model = FFF(4, 3, 3, 2, train_hardened=hard, straight_through=hard, seed=0)
        history = train(model, X, y, epochs=2, validation=(X[:20], y[:20]), progress=False)
        outputs = model.predict(X[:20]) if hard else model.predict_soft(X[:20])
        assert history["val_loss"][-1] == cross_entropy(outputs, y[:20])


def test_a_diverged_hard_training_keeps_finite_weights():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 6)).astype(np.float32), rng.integers(0, 3, 200)
    model = FFF(6, 3, 3, 2, train_hardened=True, seed=0)
    with pytest.raises(TrainingDiverged):
        train(model, X, y, optimizer="sgd", lr=1e38, hardening=1e3, batch_size=50, epochs=3, seed=0, progress=False)
    assert all(np.isfinite(p).all() for p in model.params.values())


def test_sharpening_that_would_overflow_raises_training_diverged_with_the_history():
    X, y = _small_problem()
    model = FFF(4, 2, 3, 2, seed=0)
    with pytest.raises(TrainingDiverged, match=r"after epoch \d+: sharpening by 1e\+06 would overflow float32") as err:
        train(model, X, y, epochs=8, sharpening=1e6, progress=False)
    assert err.value.history.epochs >= 1 and all(np.isfinite(p).all() for p in model.params.values())


def test_divergence_restores_the_weights_before_the_update_that_diverged():
    # the weights whose loss was the last finite one, not just some finite weights
    from fffcpu.optim import SGD

    class Recording(SGD):
        def step(self, grads, rows=None):
            self.before.append({k: v.copy() for k, v in self.params.items()})
            super().step(grads, rows)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)) * 1e3
    y = rng.normal(size=(64, 1)) * 1e18
    model = FF(3, 4, 1, activation="identity", seed=0)
    opt = Recording(model.params, lr=10.0)
    opt.before = []
    with np.errstate(all="ignore"):
        with pytest.raises(TrainingDiverged, match="the loss became") as info:
            train(model, X, y, loss="mse", optimizer=opt, epochs=50, batch_size=8, progress=False)
    assert opt.before and "the model keeps the last weights with a finite loss" in str(info.value)
    # the loss after the last update was not finite: the model holds the weights before that update
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, opt.before[-1][k])


@pytest.mark.parametrize("make, loss", [(lambda: FF(4, 8, 3, seed=0), "cross_entropy"),
                                        (lambda: FFF(4, 2, 3, 2, seed=0), "mse")])
def test_history_reports_the_mean_loss_and_the_metrics_it_names(make, loss):
    # 50 samples in batches of 16 (the last one of 2): the epoch's loss is the mean over samples, not batches
    from fffcpu.functional import LOSSES

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4))
    y = rng.integers(0, 3, 50) if loss == "cross_entropy" else rng.normal(size=(50, 3))
    model = make()
    start = model.copy()
    history = train(model, X, y, loss=loss, optimizer="sgd", lr=1e-30, epochs=1, batch_size=16, seed=0,
                    progress=False)
    loss_fn = LOSSES[loss][0]
    order = np.random.default_rng(0).permutation(50)  # the order train's seed gives
    batches = [order[s:s + 16] for s in range(0, 50, 16)]
    expected = sum(loss_fn(start.forward(X[b]), y[b]) * len(b) for b in batches) / 50
    np.testing.assert_allclose(history["loss"][0], expected, rtol=1e-6)
    if loss == "mse":  # the mean squared error over every output of every sample
        np.testing.assert_allclose(history["train_mse_hard"][0], np.mean((start.predict(X) - y) ** 2), rtol=1e-5)
        np.testing.assert_allclose(history["train_mse_soft"][0], np.mean((start.predict_soft(X) - y) ** 2),
                                   rtol=1e-5)
    else:
        assert history["train_acc_hard"][0] == np.mean(start.predict(X).argmax(axis=1) == y)
