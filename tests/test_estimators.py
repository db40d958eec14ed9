"""The scikit-learn estimators: scikit-learn's own conformance checks, and what they do on real data."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fffcpu  # noqa: E402
from fffcpu import FFF, UltraFFF  # noqa: E402
from fffcpu.datasets import load_digits, train_test_split  # noqa: E402
from fffcpu.estimators import FFFClassifier, FFFRegressor, UltraFFFRegressor  # noqa: E402
from fffcpu.functional import softmax  # noqa: E402

@pytest.fixture(autouse=True, scope="module")
def one_numba_thread():
    """These models are small: one Numba thread is as fast, and does not wait for cores other test runs hold."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


# --- scikit-learn's check_estimator -------------------------------------------------------------------------------
# The checks fit a few hundred small models; 8 epochs at lr=0.03 pass them all (as do the defaults, 30 epochs at
# lr=0.01, in about 30 s of CPU) and keep this module fast.
FAST = {"epochs": 8, "lr": 0.03}


def _expected_failures(estimator):
    if getattr(estimator, "proba", "hard") == "soft":
        # By design: the soft probabilities are the mixture over all leaves, predict routes hard, and the check
        # wants argmax(predict_proba) == predict on every sample.
        return {"check_classifiers_train": "proba='soft' is the soft mixture; predict is hard routing"}
    return {}


CHECKED = [FFFClassifier(**FAST), FFFRegressor(**FAST), UltraFFFRegressor(**FAST), FFFClassifier(proba="soft", **FAST)]


@parametrize_with_checks(CHECKED, expected_failed_checks=_expected_failures)
def test_sklearn_conventions(estimator, check):
    check(estimator)


def test_sklearn_array_api_dispatch_leaves_results_unchanged():
    # scikit-learn's check_array_api_input (fit and every method with array-API dispatch on and NumPy inputs; with
    # check_values, the fitted attributes and outputs must equal those of a plain fit) only runs where
    # SCIPY_ARRAY_API=1 was set before SciPy was imported, so in this process it skips; a fresh process with it set
    # runs it for every estimator checked above
    code = "\n".join([
        "import numba",
        "numba.set_num_threads(1)",
        "from sklearn.utils.estimator_checks import check_array_api_input",
        "from fffcpu.estimators import FFFClassifier, FFFRegressor, UltraFFFRegressor",
        *(f"check_array_api_input({type(est).__name__!r}, {est!r}, array_namespace='numpy', "
          "check_values=True)" for est in CHECKED),
        "print('checked', " + str(len(CHECKED)) + ")",
    ])
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SCIPY_ARRAY_API": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["checked", str(len(CHECKED))]


# --- classification on digits -------------------------------------------------------------------------------------

NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


@pytest.fixture(scope="module")
def digits():
    """Digits split 75/25, with string labels (sorted, they are not in digit order)."""
    X, y = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, seed=0)
    return X_train, X_test, NAMES[y_train], NAMES[y_test]


@pytest.fixture(scope="module")
def fitted(digits):
    X_train, _, y_train, _ = digits
    return FFFClassifier(leaf_width=8, depth=4, random_state=0).fit(X_train, y_train)


def test_classifier_learns_digits(fitted, digits):
    _, X_test, _, y_test = digits
    assert fitted.score(X_test, y_test) >= 0.9
    assert list(fitted.classes_) == sorted(NAMES)
    assert isinstance(fitted.model_, FFF)
    assert (fitted.model_.input_width, fitted.model_.output_width) == (64, 10)
    assert (fitted.model_.depth, fitted.model_.leaf_width) == (4, 8)
    assert fitted.n_features_in_ == 64 and not hasattr(fitted, "feature_names_in_")
    assert fitted.n_iter_ == 30 == len(fitted.loss_curve_) == fitted.history_.epochs
    assert fitted.loss_curve_ == fitted.history_["loss"]
    assert fitted.loss_curve_[-1] < 0.5 * fitted.loss_curve_[0]


def test_predict_is_the_hard_model_output_mapped_to_classes(fitted, digits):
    _, X_test, _, _ = digits
    expected = fitted.classes_[fitted.model_.predict(X_test).argmax(axis=1)]
    assert np.array_equal(fitted.predict(X_test), expected)
    assert fitted.predict(X_test).dtype == fitted.classes_.dtype


def test_predict_proba_hard_and_soft(fitted, digits):
    _, X_test, _, _ = digits
    proba = fitted.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(proba, softmax(fitted.model_.predict(X_test).astype(np.float64)), rtol=1e-12)
    assert np.array_equal(fitted.classes_[proba.argmax(axis=1)], fitted.predict(X_test))

    soft = clone(fitted).set_params(proba="soft")  # proba only changes predict_proba: reuse the fitted model
    soft.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_") or k.startswith("_")})
    soft_proba = soft.predict_proba(X_test)
    np.testing.assert_allclose(soft_proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(soft_proba, softmax(fitted.model_.predict_soft(X_test).astype(np.float64)),
                               rtol=1e-12)
    assert not np.allclose(soft_proba, proba)  # a different quantity
    assert np.mean(soft_proba.argmax(axis=1) == proba.argmax(axis=1)) > 0.9  # but mostly the same decision


def test_pickle_round_trip_predicts_identically(fitted, digits):
    _, X_test, _, _ = digits
    again = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(again.predict(X_test), fitted.predict(X_test))
    assert np.array_equal(again.predict_proba(X_test), fitted.predict_proba(X_test))
    assert again.get_params() == fitted.get_params()
    # The optimizer still updates the model's own arrays: training goes on after unpickling.
    X_train, _, y_train, _ = digits
    before = again.model_.params["w1s"].copy()
    again.partial_fit(X_train, y_train)
    assert again.n_iter_ == fitted.n_iter_ + 1 and not np.array_equal(again.model_.params["w1s"], before)


def test_integer_labels_of_any_values():
    rng = np.random.default_rng(1)
    centers = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    labels = np.array([42, -7, 1000])
    which = rng.integers(0, 3, 240)
    X = centers[which] + 0.5 * rng.normal(size=(240, 2))
    y = labels[which]
    clf = FFFClassifier(leaf_width=4, depth=2, random_state=0, **FAST).fit(X, y)
    assert np.array_equal(clf.classes_, [-7, 42, 1000])
    assert np.mean(clf.predict(X) == y) > 0.95


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="at least 2 classes, got 1 class"):
        FFFClassifier(**FAST).fit(np.zeros((5, 2)), ["a"] * 5)


# --- partial_fit ----------------------------------------------------------------------------------------------------


def test_classifier_partial_fit(digits):
    X_train, X_test, y_train, y_test = digits
    clf = FFFClassifier(depth=3, random_state=0, lr=0.02)
    with pytest.raises(ValueError, match="classes must be given on the first call"):
        clf.partial_fit(X_train, y_train)
    assert not hasattr(clf, "model_")
    first = y_train != "nine"  # the first batch need not show every class
    clf.partial_fit(X_train[first][:300], y_train[first][:300], classes=NAMES)
    assert clf.n_iter_ == 1 and list(clf.classes_) == sorted(NAMES)
    start = clf.score(X_test, y_test)
    weights = clf.model_.params["w1s"]
    for epoch in range(9):
        clf.partial_fit(X_train, y_train)
    assert clf.model_.params["w1s"] is weights  # the same model, trained on
    assert clf.n_iter_ == 10 == len(clf.loss_curve_)
    assert clf.score(X_test, y_test) > max(0.7, start + 0.2)
    with pytest.raises(ValueError, match="not in classes"):
        clf.partial_fit(X_train[:5], ["ten"] * 5)
    with pytest.raises(ValueError, match="differs from classes_"):
        clf.partial_fit(X_train[:5], y_train[:5], classes=NAMES[:5])
    with pytest.raises(ValueError, match="X has 63 features, but FFFClassifier is expecting 64"):
        clf.partial_fit(X_train[:5, :63], y_train[:5])


@pytest.mark.parametrize("classes, message", [
    ([0, 1, np.nan], "classes must be labels of one kind .*NaN"),
    ([[0, 1], [1, 0]], r"classes must be a 1-D array of labels, got shape \(2, 2\)"),
    ([0, 1, None], "classes must be labels of one kind"),
    ([1, 1], "needs at least 2 classes, got 1 class in classes"),
])
def test_partial_fit_checks_classes(classes, message):
    X, y = np.random.default_rng(0).random((20, 4)), np.arange(20) % 2
    clf = FFFClassifier(depth=1, epochs=1)
    with pytest.raises(ValueError, match=message):
        clf.partial_fit(X, y, classes=classes)
    assert not hasattr(clf, "n_features_in_")


@pytest.mark.parametrize("make", [lambda: FFFClassifier(depth=1), lambda: FFFRegressor(depth=1)])
def test_a_failed_first_partial_fit_leaves_the_estimator_unfitted(make):
    X = np.random.default_rng(0).random((20, 4))
    est = make()
    bad_y = np.full(20, 5) if isinstance(est, FFFClassifier) else np.full(20, np.nan)
    with pytest.raises(ValueError):
        est.partial_fit(X, bad_y, **({"classes": [0, 1]} if isinstance(est, FFFClassifier) else {}))
    assert not hasattr(est, "n_features_in_") and not hasattr(est, "model_")
    with pytest.raises(NotFittedError):
        est.predict(X)


def test_partial_fit_after_fit_continues_and_fit_restarts():
    X, y = _sine(200)
    reg = FFFRegressor(depth=1, random_state=0, **FAST).fit(X, y)
    model = reg.model_
    reg.partial_fit(X, y)
    assert reg.model_ is model and reg.n_iter_ == FAST["epochs"] + 1
    reg.fit(X, y)
    assert reg.model_ is not model and reg.n_iter_ == FAST["epochs"]
    with pytest.raises(ValueError, match="y has 2 outputs, but FFFRegressor was trained with 1"):
        reg.partial_fit(X, np.c_[y, y])


# --- regression -----------------------------------------------------------------------------------------------------


def _sine(n, seed=0):
    X = np.random.default_rng(seed).uniform(-2, 2, (n, 1))
    return X, np.sin(2 * X[:, 0])


def test_regressor_fits_a_smooth_function():
    X, y = _sine(400)
    X_test = np.linspace(-2, 2, 201)[:, None]
    y_test = np.sin(2 * X_test[:, 0])
    reg = FFFRegressor(train_hardened=True, straight_through=True, random_state=0).fit(X, y)
    prediction = reg.predict(X_test)
    assert prediction.shape == (201,) and prediction.dtype == np.float64
    assert np.mean((prediction - y_test) ** 2) < 0.01  # the variance of y is 0.5
    np.testing.assert_array_equal(prediction, reg.model_.predict(X_test)[:, 0])
    assert reg.n_outputs_ == 1 and reg.history_["train_mse_hard"][-1] < 0.01


def test_soft_trained_regressor_lags_in_hard_prediction_as_documented():
    # FFFRegressor's docstring: 0.003 after hard training (the default); soft, 3.3 (its mixture 0.001) and
    # 0.04 with hardening=1.
    X, y = _sine(400)
    X_test = np.linspace(-2, 2, 201)[:, None]
    y_test = np.sin(2 * X_test[:, 0])

    def mse(**kwargs):
        reg = FFFRegressor(random_state=0, **kwargs).fit(X, y)
        soft = reg.model_.predict_soft(X_test)[:, 0]
        return np.mean((reg.predict(X_test) - y_test) ** 2), np.mean((soft - y_test) ** 2)

    assert mse()[0] < 0.006
    hard, soft = mse(train_hardened=False)
    assert hard > 1 and soft < 0.003
    assert 0.02 < mse(train_hardened=False, hardening=1.0)[0] < 0.08


def test_regressors_with_several_outputs():
    X, y = _sine(400)
    Y = np.c_[y, np.cos(2 * X[:, 0])]
    X_test = np.linspace(-2, 2, 101)[:, None]
    Y_test = np.c_[np.sin(2 * X_test[:, 0]), np.cos(2 * X_test[:, 0])]
    reg = UltraFFFRegressor(depth=3, trees=4, epochs=60, lr=0.02, random_state=0).fit(X, Y)
    assert isinstance(reg.model_, UltraFFF) and reg.n_outputs_ == 2
    prediction = reg.predict(X_test)
    assert prediction.shape == (101, 2)
    assert np.mean((prediction - Y_test) ** 2) < 0.02
    assert reg.score(X_test, Y_test) > 0.95
    column = FFFRegressor(random_state=0, **FAST).fit(X, y[:, None])
    assert column.predict(X_test).shape == (101, 1)  # y of shape (n, 1) predicts (n, 1)


def test_same_random_state_same_model_different_state_different_model():
    X, y = _sine(100)
    a = FFFRegressor(random_state=3, **FAST).fit(X, y).predict(X)
    b = FFFRegressor(random_state=3, **FAST).fit(X, y).predict(X)
    c = FFFRegressor(random_state=4, **FAST).fit(X, y).predict(X)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# --- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator, error, match", [
    (FFFClassifier(depth=-1), ValueError, "depth must be an integer >= 0, got -1"),
    (FFFClassifier(leaf_width=0), ValueError, "leaf_width must be an integer >= 1, got 0"),
    (FFFClassifier(depth=2.5), TypeError, "depth must be an integer"),
    (FFFClassifier(lr=0), ValueError, "lr must be a positive finite number, got 0"),
    (FFFClassifier(epochs=0), ValueError, "epochs must be an integer >= 1, got 0"),
    (FFFClassifier(batch_size=None), TypeError, "batch_size must be an integer"),
    (FFFClassifier(hardening=-1.0), ValueError, "hardening must be a finite number >= 0"),
    (FFFClassifier(region_leak=1.5), ValueError, r"region_leak must be in \[0, 1\]"),
    (FFFClassifier(activation="swish"), ValueError, "activation must be one of"),
    (FFFClassifier(optimizer="adagrad"), ValueError, "optimizer must be one of"),
    (FFFClassifier(optimizer="local_adam", local_batch_size=-1), ValueError, "local_batch_size must be"),
    (FFFClassifier(optimizer="local_adam", usage_counts="some"), ValueError, "usage_counts must be one of"),
    (FFFClassifier(dtype="float16"), ValueError, "dtype must be one of"),
    (FFFClassifier(proba="maybe"), ValueError, "proba must be one of"),
    (FFFClassifier(train_hardened=False, straight_through=True), ValueError,
     "straight_through=True only applies to hard training"),
    (FFFRegressor(depth=-1), ValueError, "depth must be an integer >= 0, got -1"),
    (UltraFFFRegressor(depth=-1), ValueError, "depth must be an integer >= 0, got -1"),
    (UltraFFFRegressor(trees=0), ValueError, "trees must be an integer >= 1, got 0"),
    (UltraFFFRegressor(optimizer="local_adam"), ValueError, r"optimizer must be one of \['adam', 'sgd'\]"),
])
def test_bad_hyperparameters_fail_at_fit_naming_the_parameter(estimator, error, match):
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    estimator = clone(estimator)  # construction accepts anything (scikit-learn's convention); fit checks
    with pytest.raises(error, match=match):
        estimator.fit(X, y)
    assert not hasattr(estimator, "model_")
    with pytest.raises(error, match=match):
        estimator.partial_fit(X, y, **({"classes": [0, 1]} if isinstance(estimator, FFFClassifier) else {}))


def test_sklearn_error_messages():
    clf = FFFClassifier(**FAST)
    with pytest.raises(NotFittedError):
        clf.predict(np.zeros((2, 3)))
    clf.fit(np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2)
    with pytest.raises(ValueError, match="X has 2 features, but FFFClassifier is expecting 3 features as input"):
        clf.predict(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        clf.predict(np.zeros(3))
    with pytest.raises(ValueError, match="Input X contains NaN"):
        clf.predict(np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="Unknown label type"):
        clf.fit(np.zeros((20, 3)), np.linspace(0, 1, 20))


# --- DataFrames, progress, lazy import ------------------------------------------------------------------------------


def test_dataframe_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = _sine(50)
    frame = pd.DataFrame({"x": X[:, 0], "noise": np.zeros(50)})
    reg = FFFRegressor(random_state=0, **FAST).fit(frame, y)
    assert list(reg.feature_names_in_) == ["x", "noise"] and reg.n_features_in_ == 2
    with pytest.warns(UserWarning, match="X does not have valid feature names"):  # scikit-learn's warning
        array_prediction = reg.predict(frame.to_numpy())
    assert np.array_equal(reg.predict(frame), array_prediction)
    with pytest.raises(ValueError, match="feature names"):
        reg.predict(frame.rename(columns={"noise": "other"}))


def test_verbose_shows_a_progress_bar(capsys):
    pytest.importorskip("tqdm")
    X, y = _sine(50)
    FFFRegressor(random_state=0, **FAST).fit(X, y)
    assert capsys.readouterr().err == ""
    FFFRegressor(random_state=0, verbose=1, **FAST).fit(X, y)
    assert f"{FAST['epochs']}/{FAST['epochs']}" in capsys.readouterr().err


def test_estimators_are_lazy_attributes_of_fffcpu():
    assert fffcpu.FFFClassifier is FFFClassifier
    assert fffcpu.FFFRegressor is FFFRegressor and fffcpu.UltraFFFRegressor is UltraFFFRegressor
    assert "FFFClassifier" in dir(fffcpu)
    with pytest.raises(AttributeError, match="has no attribute 'FFFClassifer'"):
        fffcpu.FFFClassifer  # noqa: B018
    code = "import sys, fffcpu; assert 'sklearn' not in sys.modules, 'import fffcpu imported scikit-learn'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_refit_that_diverges_keeps_the_earlier_fit():
    rng = np.random.default_rng(0)
    X, y = rng.random((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    clf = FFFClassifier(epochs=2, random_state=0).fit(X, y)
    model, history, predictions = clf.model_, clf.history_, clf.predict(X)
    with pytest.raises(fffcpu.TrainingDiverged):
        clf.set_params(lr=1e30).fit(X, y)
    assert clf.model_ is model and clf.history_ is history and clf.n_iter_ == 2
    np.testing.assert_array_equal(clf.predict(X), predictions)
    with pytest.raises(ValueError):  # bad data: the earlier fit stays too
        clf.set_params(lr=0.01).fit(X[:, :3].tolist() + [[np.nan] * 3], list(y) + [0])
    assert clf.model_ is model and clf.n_features_in_ == 4


def test_partial_fit_that_diverges_records_the_epochs_that_finished():
    rng = np.random.default_rng(0)
    X, y = rng.random((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    clf = FFFClassifier(random_state=0, batch_size=8).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(fffcpu.TrainingDiverged):
        clf.set_params(lr=1e30).partial_fit(X, y)
    assert clf.n_iter_ == len(clf.loss_curve_) == clf.history_.epochs >= 1


@pytest.mark.parametrize("make", [FFFClassifier, FFFRegressor])
def test_soft_training_needs_no_straight_through_argument(make):
    rng = np.random.default_rng(0)
    X, y = rng.random((40, 4)), rng.integers(0, 3, 40)
    est = make(train_hardened=False, epochs=1, random_state=0).fit(X, y)
    assert not est.model_.train_hardened and not est.model_.straight_through
    assert make(epochs=1, random_state=0).fit(X, y).model_.straight_through  # None: on with hard training


def test_hyperparameters_reach_the_model_and_the_optimizer():
    X, y = np.random.default_rng(0).random((40, 4)), np.arange(40) % 2
    clf = FFFClassifier(depth=2, epochs=1, region_leak=0.3, optimizer="local_adam", usage_counts="hard",
                        batch_size=8, random_state=0).fit(X, y)
    assert clf.model_.region_leak == 0.3
    assert clf._optimizer.counts == "hard" and clf._optimizer.local_batch_size == 8  # the batch size by default
    clf = FFFClassifier(depth=2, epochs=1, optimizer="local_sgd", local_batch_size=5, random_state=0).fit(X, y)
    assert clf._optimizer.local_batch_size == 5 and clf._optimizer.counts == "soft"


def test_random_state_also_draws_the_minibatch_order(monkeypatch):
    # the same initial weights under two random states: the first minibatch must still differ
    X, y = np.random.default_rng(0).random((40, 4)), np.arange(40) % 2
    first_batches = []
    real_forward = FFF.forward

    def forward(self, x, **kwargs):
        if len(first_batches) < len(seen_models) and self is seen_models[-1]:
            first_batches.append(np.array(x))
        return real_forward(self, x, **kwargs)

    seen_models = []
    real_build = FFFClassifier._build_model

    def build(self, n_features, n_outputs, seed):
        seen_models.append(real_build(self, n_features, n_outputs, 0))  # one model whatever the random state
        return seen_models[-1]

    monkeypatch.setattr(FFF, "forward", forward)
    monkeypatch.setattr(FFFClassifier, "_build_model", build)
    for state in (3, 4):
        FFFClassifier(depth=1, epochs=1, batch_size=8, random_state=state).fit(X, y)
    assert len(first_batches) == 2 and not np.array_equal(*first_batches)
