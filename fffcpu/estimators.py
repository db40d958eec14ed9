"""scikit-learn estimators around the fffcpu models: ``FFFClassifier``, ``FFFRegressor``, ``UltraFFFRegressor``.

A face of the library (see the layout in the README): each estimator builds a model of ``fffcpu.models`` in
``fit`` and trains it with ``fffcpu.train``; nothing here computes a forward or backward pass itself.
The estimators follow scikit-learn's conventions, so they work in pipelines, grid searches, ``clone`` and
``check_estimator``:

- ``__init__`` stores the hyperparameters unchanged; they are checked in ``fit``/``partial_fit``, with the
  library's error messages (``depth must be an integer >= 0, got -1``).
- Everything learnt ends with an underscore: ``model_`` (the fitted ``FFF`` or ``UltraFFF``),
  ``history_`` (a ``fffcpu.History``: one entry per epoch), ``loss_curve_``, ``n_iter_``, ``n_features_in_``,
  ``feature_names_in_`` (DataFrame input), ``classes_`` (classifier), ``n_outputs_`` (regressors).
- Input checks are scikit-learn's (``validate_data``, ``check_is_fitted``), so the messages are the ones
  scikit-learn users know (``X has 3 features, but FFFClassifier is expecting 4 features as input``).

Prediction is *hard*, the point of an FFF (arXiv 2308.14711 §2): each sample goes down one root-to-leaf path
and only that leaf is evaluated (``model_.predict``). ``FFFClassifier.predict_proba`` is, by default, the softmax
of those hard outputs, so ``predict`` is always its argmax; ``proba="soft"`` gives the softmax of the training-time
mixture over all leaves (``model_.predict_soft``) instead.

scikit-learn is an optional dependency: ``fffcpu`` imports this module only when one of the estimator names is
first used (``fffcpu.FFFClassifier``), so ``import fffcpu`` does not import scikit-learn.
"""

from __future__ import annotations

import contextlib

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as err:  # pragma: no cover - exercised only without scikit-learn >= 1.6
    # validate_data and __sklearn_tags__ are the estimator API of scikit-learn 1.6 and later.
    raise ImportError(
        "fffcpu's estimators (FFFClassifier, FFFRegressor, UltraFFFRegressor) need scikit-learn >= 1.6: "
        "pip install 'fffcpu[data]' (or pip install 'scikit-learn>=1.6')"
    ) from err

from ._validation import (check_dtype, check_nonnegative_float, check_positive_float, check_positive_int,
                          check_probability)
from .functional import get_activation, softmax
from .models import FFF, UltraFFF
from .optim import make_optimizer
from .train import History, TrainingDiverged, train

__all__ = ["FFFClassifier", "FFFRegressor", "UltraFFFRegressor"]

#: Input dtypes kept as they are; anything else (ints, bools, objects holding numbers) becomes float64.
#: The model then works in its own ``dtype``.
_FLOAT_DTYPES = (np.float64, np.float32)
_SEED_RANGE = np.iinfo(np.int32).max


def _check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


# --- the shared machinery -----------------------------------------------------------------------------------------


class _Estimator(BaseEstimator):
    """Hyperparameter checks, model building and the training call shared by the three estimators.

    A subclass sets ``_loss`` ("cross_entropy" or "mse") and ``_optimizers``, and defines ``_check_model_params``
    and ``_build_model``. Its ``__init__`` lists the hyperparameters explicitly (``get_params`` reads the
    signature).
    """

    _loss: str = ""
    _optimizers: tuple = ("adam", "sgd")

    # --- hyperparameters ----------------------------------------------------------------------------------------
    def _check_model_params(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_model(self, n_features: int, n_outputs: int, seed: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_params(self) -> dict:
        """Check every hyperparameter (before any data is looked at) and return the training options.

        The messages are the library's and name the parameter: ``depth must be an integer >= 0, got -1``.
        """
        self._check_model_params()
        check_dtype(self.dtype)
        optimizer = _check_choice(self.optimizer, "optimizer", self._optimizers)
        batch_size = check_positive_int(self.batch_size, "batch_size")
        options = {
            "optimizer": optimizer,
            "lr": check_positive_float(self.lr, "lr"),
            "epochs": check_positive_int(self.epochs, "epochs"),
            "batch_size": batch_size,
            # UltraFFF makes no soft decisions, so its estimator has no hardening parameter.
            "hardening": check_nonnegative_float(getattr(self, "hardening", 0.0), "hardening"),
        }
        if optimizer.startswith("local_"):
            local = self.local_batch_size
            options["local_batch_size"] = (batch_size if local is None
                                           else check_positive_float(local, "local_batch_size"))
            options["usage_counts"] = _check_choice(self.usage_counts, "usage_counts", ("soft", "hard"))
        return options

    # --- training -----------------------------------------------------------------------------------------------
    def _start(self, n_features: int, n_outputs: int, options: dict) -> None:
        """A new model, optimizer and shuffling stream, all drawn from ``random_state``."""
        rng = check_random_state(self.random_state)
        model = self._build_model(n_features, n_outputs, int(rng.randint(_SEED_RANGE)))
        optimizer = make_optimizer(options["optimizer"], model, options["lr"],
                                   local_batch_size=options.get("local_batch_size"),
                                   counts=options.get("usage_counts", "soft"))
        self.model_, self._optimizer = model, optimizer
        self._shuffle_rng = np.random.default_rng(int(rng.randint(_SEED_RANGE)))
        self.history_ = History()

    def _train(self, X: np.ndarray, targets: np.ndarray, epochs: int, options: dict) -> None:
        """Train ``model_`` for ``epochs`` more epochs and extend ``history_``, ``loss_curve_``, ``n_iter_``.

        The optimizer (and its state) lives as long as the model: ``partial_fit`` continues where the last
        call stopped. ``lr`` is read at every call, so ``set_params(lr=...)`` between calls takes effect.
        On ``fffcpu.TrainingDiverged`` the model keeps the last weights whose loss was finite.
        """
        self._optimizer.lr = options["lr"]
        try:
            history = train(self.model_, X, targets, loss=self._loss, optimizer=self._optimizer, epochs=epochs,
                            batch_size=options["batch_size"], hardening=options["hardening"],
                            seed=int(self._shuffle_rng.integers(2**63)), progress=bool(self.verbose))
        except TrainingDiverged as error:
            self._record(error.history)  # the epochs that did finish
            raise
        self._record(history)

    def _record(self, history: History) -> None:
        for key, values in history.items():
            self.history_.setdefault(key, []).extend(values)
        self.loss_curve_ = list(self.history_.get("loss", []))
        self.n_iter_ = self.history_.epochs

    @contextlib.contextmanager
    def _all_or_nothing(self):
        """Undo every attribute change of the block if it raises: a ``fit`` that fails (bad data, or
        ``TrainingDiverged`` with a new ``lr``) leaves the estimator as it was, its earlier fit included."""
        before = self.__dict__.copy()
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _is_started(self) -> bool:
        return hasattr(self, "model_")

    def _check_X(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, dtype=_FLOAT_DTYPES, reset=False)


class _FFFModel:
    """The ``FFF`` of the FFF estimators, built from their tree hyperparameters."""

    _optimizers = ("adam", "sgd", "local_adam", "local_sgd")

    def _check_model_params(self) -> None:
        # The FFF constructor checks these again (and the rest); checking here fails before any data is validated.
        check_positive_int(self.leaf_width, "leaf_width")
        check_positive_int(self.depth, "depth", minimum=0)
        get_activation(self.activation)
        check_probability(self.region_leak, "region_leak")

    def _build_model(self, n_features: int, n_outputs: int, seed: int) -> FFF:
        return FFF(n_features, self.leaf_width, n_outputs, self.depth, activation=self.activation,
                   region_leak=self.region_leak, train_hardened=self.train_hardened,
                   straight_through=(self.train_hardened if self.straight_through is None  # see the docstring
                                     else self.straight_through), dtype=self.dtype, seed=seed)


# --- docstring pieces shared by the estimators --------------------------------------------------------------------

_TREE_PARAMS = """\
    leaf_width : int, default=8
        Neurons ℓ in the hidden layer of each leaf.
    depth : int, default=3
        Depth d >= 0 of the tree: 2**d leaves and 2**d - 1 routing nodes. One sample touches d nodes and
        ℓ leaf neurons; training touches all 2**d · ℓ.
    activation : {"relu", "gelu", "tanh", "sigmoid", "identity"}, default="relu"
        Activation of the leaf hidden layers.
    hardening : float, default=0.0
        Weight h of the hardening term: training minimises ``loss + h · mean node entropy`` (§3.2; see
        ``FFF.hardening_loss`` for the relation to the paper's sum). It pushes the soft routing of training
        towards the hard routing of prediction; with soft training (``train_hardened=False``) use h ≈ 1–10,
        and check how many leaves are still in use (``np.unique(est.model_.route(X))``): strong hardening
        can send every sample to a few leaves.
    region_leak : float in [0, 1], default=0.0
        Training only (§3.3): probability that a node swaps its children for a sample.
    train_hardened : bool, default=True
        Train with hard routing, exactly as prediction routes, so the model that is trained is the one that
        predicts. ``False`` trains the soft mixture of the paper.
    straight_through : bool or None, default=None
        With ``train_hardened=True``: pass σ'(z) through each hard decision so the nodes keep learning. None
        means True with ``train_hardened=True`` and False with ``train_hardened=False`` (where it does not
        apply: True there is refused)."""

_TRAINING_PARAMS = """\
    optimizer : {{{optimizers}}}, default="adam"
{optimizer_note}    lr : float, default=0.01
        Learning rate.
    epochs : int, default={epochs}
        Passes over the training set in ``fit``. ``partial_fit`` runs one pass per call.
    batch_size : int, default=64
        Samples per minibatch (a batch larger than the training set is the whole set).
{local}    dtype : {{"float32", "float64"}}, default="float32"
        Floating-point type of the weights; inputs are converted to it.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the order of the minibatches (and the region-leak draws of an FFF); an
        int makes ``fit`` reproducible.
    verbose : int or bool, default=0
        Show a progress bar (one step per epoch) while training."""

_LOCAL_NOTE = """\
        ``local_*`` are the localized optimizers of §3.3 (a node or leaf is updated once the samples that
        reached it add up to ``local_batch_size``).
"""

_LOCAL_PARAMS = """\
    local_batch_size : float or None, default=None
        For the ``local_*`` optimizers: the usage a node or leaf must accumulate before it is updated (its
        accumulated gradient is then rescaled by ``local_batch_size / usage``). None means ``batch_size``: each
        update is then the mean gradient of the samples that reached the block.
    usage_counts : {"soft", "hard"}, default="soft"
        For the ``local_*`` optimizers: count usage as summed reach probabilities or as hard paths.
"""

_ATTRIBUTES = """\
    model_ : {model}
        The fitted model. ``model_.predict`` is the hard inference behind ``predict``.
    history_ : fffcpu.History
        Per-epoch metrics of every epoch trained so far (``fit`` starts it afresh, ``partial_fit`` extends it):
        ``loss``, ``entropy``, ``objective``, {metrics}, ``seconds``.
    loss_curve_ : list of float
        ``history_["loss"]``: the mean training loss of each epoch.
    n_iter_ : int
        Epochs trained so far.
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of str, shape (n_features_in_,)
        Column names, when ``X`` was a DataFrame with string column names."""


# --- classification -----------------------------------------------------------------------------------------------


class FFFClassifier(ClassifierMixin, _FFFModel, _Estimator):
    __doc__ = f"""Classifier on a fast feedforward network (``fffcpu.FFF``, arXiv 2308.14711).

    Trained with softmax cross-entropy, by default hard (each sample routed to one leaf as in prediction, the
    nodes learning through straight-through gradients; ``train_hardened=False`` trains the paper's soft mixture
    of every leaf); predicts hard (one leaf per sample). Labels may be any sortable values (ints, strings);
    they are mapped to 0..k-1 in the order of ``classes_``.

    Parameters
    ----------
{_TREE_PARAMS}
{_TRAINING_PARAMS.format(optimizers='"adam", "sgd", "local_adam", "local_sgd"', optimizer_note=_LOCAL_NOTE,
                         epochs=30, local=_LOCAL_PARAMS)}
    proba : {{"hard", "soft"}}, default="hard"
        What ``predict_proba`` returns: ``"hard"``, the softmax of the hard outputs (``model_.predict``),
        whose argmax is always ``predict``; ``"soft"``, the softmax of the training-time mixture over all
        leaves (``model_.predict_soft``), whose argmax can differ from ``predict`` where routing is not yet
        hard.

    Attributes
    ----------
    classes_ : ndarray, shape (n_classes,)
        The class labels; output j of ``model_`` is ``classes_[j]``.
{_ATTRIBUTES.format(model="fffcpu.FFF", metrics="``train_acc_soft``, ``train_acc_hard``")}

    Examples
    --------
    >>> from fffcpu import FFFClassifier
    >>> from fffcpu.datasets import load_digits, train_test_split
    >>> X, y = load_digits()
    >>> X_train, X_test, y_train, y_test = train_test_split(X, y, seed=0)
    >>> clf = FFFClassifier(leaf_width=8, depth=4, random_state=0).fit(X_train, y_train)
    >>> clf.score(X_test, y_test) > 0.9
    True
    """

    _loss = "cross_entropy"

    def __init__(self, leaf_width=8, depth=3, *, activation="relu", hardening=0.0, region_leak=0.0,
                 train_hardened=True, straight_through=None, optimizer="adam", lr=0.01, epochs=30,
                 batch_size=64, local_batch_size=None, usage_counts="soft", dtype="float32", proba="hard",
                 random_state=None, verbose=0):
        self.leaf_width = leaf_width
        self.depth = depth
        self.activation = activation
        self.hardening = hardening
        self.region_leak = region_leak
        self.train_hardened = train_hardened
        self.straight_through = straight_through
        self.optimizer = optimizer
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.local_batch_size = local_batch_size
        self.usage_counts = usage_counts
        self.dtype = dtype
        self.proba = proba
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y):
        """Build a new model and train it for ``epochs`` epochs.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        y : array-like, shape (n_samples,)
            Class labels; at least two distinct ones.

        Returns
        -------
        self
        """
        options = self._check_params()
        with self._all_or_nothing():
            X, y = validate_data(self, X, y, dtype=_FLOAT_DTYPES)
            check_classification_targets(y)
            classes = np.unique(y)
            self._check_n_classes(classes, "y")
            self._start(X.shape[1], len(classes), options)
            self.classes_ = classes
            self._train(X, self._encode(y, classes), options["epochs"], options)
        return self

    def partial_fit(self, X, y, classes=None):
        """Train for one epoch on ``(X, y)``, starting from the current model (a new one on the first call).

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        y : array-like, shape (n_samples,)
        classes : array-like, shape (n_classes,)
            Every label the estimator will see. Required on the first call (the labels of one batch need
            not cover them all); optional afterwards, and then it must equal ``classes_``.

        Returns
        -------
        self

        Notes
        -----
        The model and the optimizer (tree shape, ``optimizer``, ``dtype``, ...) are those of the first call, or
        of the last ``fit``; ``lr``, ``batch_size`` and ``hardening`` are read at every call.
        """
        first = not self._is_started()
        if first and classes is None:
            raise ValueError("classes must be given on the first call to partial_fit: every label y will take, "
                             "e.g. partial_fit(X, y, classes=np.unique(y_all))")
        options = self._check_params()
        if classes is not None:
            classes = self._check_classes(classes)
            if not first and not np.array_equal(classes, self.classes_):
                raise ValueError(f"classes={classes.tolist()} differs from classes_={self.classes_.tolist()} "
                                 "of the first call to partial_fit")
        # a first call that fails leaves the estimator unfitted (no n_features_in_ either)
        with self._all_or_nothing() if first else contextlib.nullcontext():
            X, y = validate_data(self, X, y, dtype=_FLOAT_DTYPES, reset=first)
            check_classification_targets(y)
            if first:
                codes = self._encode(y, classes)
                self._start(X.shape[1], len(classes), options)
                self.classes_ = classes
            else:
                codes = self._encode(y, self.classes_)
            self._train(X, codes, 1, options)
        return self

    def _check_classes(self, classes) -> np.ndarray:
        """``classes`` of ``partial_fit``: a 1-D array of at least two distinct labels, sorted and unique."""
        classes = np.asarray(classes)
        if classes.ndim != 1:
            raise ValueError(f"classes must be a 1-D array of labels, got shape {classes.shape}")
        try:
            with np.errstate(invalid="ignore"):  # (scikit-learn's check casts None to a number)
                check_classification_targets(classes)
            classes = np.unique(classes)
        except (TypeError, ValueError) as err:
            raise ValueError(f"classes must be labels of one kind (integers or strings, no NaN or None): "
                             f"{err}") from None
        self._check_n_classes(classes, "classes")
        return classes

    def predict(self, X):
        """Hard prediction: the label of the largest output of the one leaf each sample reaches.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray, shape (n_samples,), labels from ``classes_``
        """
        X = self._check_X(X)
        return self.classes_[np.argmax(self.model_.predict(X), axis=1)]

    def predict_proba(self, X):
        """Class probabilities: the softmax of the hard outputs (``proba="hard"``) or of the soft ones.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray of float64, shape (n_samples, n_classes); rows sum to 1, columns follow ``classes_``
        """
        proba = _check_choice(self.proba, "proba", ("hard", "soft"))
        X = self._check_X(X)
        outputs = self.model_.predict(X) if proba == "hard" else self.model_.predict_soft(X)
        return softmax(outputs.astype(np.float64))

    # --- helpers ------------------------------------------------------------------------------------------------
    def _check_params(self) -> dict:
        _check_choice(self.proba, "proba", ("hard", "soft"))
        return super()._check_params()

    def _check_n_classes(self, classes: np.ndarray, name: str) -> None:
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes, got 1 class in {name} "
                             f"({classes.tolist()}); a classifier cannot learn from one label")

    @staticmethod
    def _encode(y: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Labels -> their indices in the sorted labels ``known``; a label not in ``known`` is an error."""
        codes = np.searchsorted(known, y)
        found = codes < len(known)
        found[found] = known[codes[found]] == y[found]
        if not found.all():
            unknown = np.unique(y[~found])
            raise ValueError(f"y contains labels {unknown.tolist()} that are not in classes {known.tolist()}")
        return codes.astype(np.int64)


# --- regression ---------------------------------------------------------------------------------------------------


class _Regression(RegressorMixin, _Estimator):
    """fit/partial_fit/predict of the regressors: MSE on targets of shape (n,) or (n, k)."""

    _loss = "mse"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        """Build a new model and train it for ``epochs`` epochs.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        y : array-like, shape (n_samples,) or (n_samples, n_outputs)

        Returns
        -------
        self
        """
        options = self._check_params()
        with self._all_or_nothing():
            X, y = validate_data(self, X, y, dtype=_FLOAT_DTYPES, multi_output=True, y_numeric=True)
            targets = y.reshape(len(y), -1)
            self._start(X.shape[1], targets.shape[1], options)
            self.n_outputs_, self._y_ndim = targets.shape[1], y.ndim
            self._train(X, targets, options["epochs"], options)
        return self

    def partial_fit(self, X, y):
        """Train for one epoch on ``(X, y)``, starting from the current model (a new one on the first call).

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        y : array-like, shape (n_samples,) or (n_samples, n_outputs)
            The same number of outputs at every call.

        Returns
        -------
        self

        Notes
        -----
        The model and the optimizer (tree shape, ``optimizer``, ``dtype``, ...) are those of the first call, or
        of the last ``fit``; ``lr``, ``batch_size`` and ``hardening`` are read at every call.
        """
        first = not self._is_started()
        options = self._check_params()
        with self._all_or_nothing() if first else contextlib.nullcontext():
            X, y = validate_data(self, X, y, dtype=_FLOAT_DTYPES, multi_output=True, y_numeric=True, reset=first)
            targets = y.reshape(len(y), -1)
            if first:
                self._start(X.shape[1], targets.shape[1], options)
                self.n_outputs_, self._y_ndim = targets.shape[1], y.ndim
            elif targets.shape[1] != self.n_outputs_:
                raise ValueError(f"y has {targets.shape[1]} outputs, but {type(self).__name__} was trained with "
                                 f"{self.n_outputs_} outputs")
            self._train(X, targets, 1, options)
        return self

    def predict(self, X):
        """Hard prediction: the output of the one leaf (or path) each sample reaches.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray of float64, shape (n_samples,) when ``y`` was 1-D in ``fit``, else (n_samples, n_outputs_)
        """
        X = self._check_X(X)
        outputs = self.model_.predict(X).astype(np.float64)  # scikit-learn's regressors predict float64
        return outputs.ravel() if self._y_ndim == 1 else outputs


class FFFRegressor(_FFFModel, _Regression):
    __doc__ = f"""Regressor on a fast feedforward network (``fffcpu.FFF``, arXiv 2308.14711).

    Trained with the mean squared error (``fffcpu.functional.mean_squared_error``), by default hard (each sample
    routed to one leaf as in prediction, with straight-through gradients for the nodes); predicts hard (one
    leaf per sample). Targets of shape (n,) or (n, k). The targets are used as given: scale them to unit
    variance (e.g. with ``sklearn.compose.TransformedTargetRegressor``) when they are large.

    On smooth targets the hard prediction of a soft-trained tree (``train_hardened=False``) can lag its soft
    mixture (``history_`` shows both, ``train_mse_hard`` and ``train_mse_soft``): each leaf learns to be right
    *mixed with its neighbours*. Hard training, the default, trains exactly the function ``predict`` computes.
    On sin(2x) over [-2, 2] (400 samples, 30 epochs, the other parameters at their defaults) the hard prediction
    had a mean squared error of 0.003 after hard training; after soft training 3.3 without hardening (its soft
    mixture: 0.001) and 0.04 with ``hardening=1``.

    Parameters
    ----------
{_TREE_PARAMS}
{_TRAINING_PARAMS.format(optimizers='"adam", "sgd", "local_adam", "local_sgd"', optimizer_note=_LOCAL_NOTE,
                         epochs=30, local=_LOCAL_PARAMS)}

    Attributes
    ----------
    n_outputs_ : int
        Number of targets per sample.
{_ATTRIBUTES.format(model="fffcpu.FFF", metrics="``train_mse_soft``, ``train_mse_hard``")}
    """

    def __init__(self, leaf_width=8, depth=3, *, activation="relu", hardening=0.0, region_leak=0.0,
                 train_hardened=True, straight_through=None, optimizer="adam", lr=0.01, epochs=30,
                 batch_size=64, local_batch_size=None, usage_counts="soft", dtype="float32", random_state=None,
                 verbose=0):
        self.leaf_width = leaf_width
        self.depth = depth
        self.activation = activation
        self.hardening = hardening
        self.region_leak = region_leak
        self.train_hardened = train_hardened
        self.straight_through = straight_through
        self.optimizer = optimizer
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.local_batch_size = local_batch_size
        self.usage_counts = usage_counts
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose


class UltraFFFRegressor(_Regression):
    __doc__ = f"""Regressor on UltraFastBERT's fast feedforward layer (``fffcpu.UltraFFF``, arXiv 2311.10770).

    Every node is one neuron and the neurons on a sample's path add up; training is hard (no soft routing,
    so there is no hardening term) and touches only the trees · (depth + 1) neurons of each path. Trained with
    the mean squared error; targets of shape (n,) or (n, k), used as given.

    Parameters
    ----------
    depth : int, default=3
        Depth D >= 0 of each tree: 2**(D + 1) - 1 neurons, D + 1 of them used per sample.
    trees : int, default=1
        Number of parallel trees whose outputs add up ("UltraFastBERT-KxD").
    activation : {{"gelu", "relu", "tanh", "sigmoid", "identity"}}, default="gelu"
        Activation of every neuron (exact-erf GELU, as UltraFastBERT).
{_TRAINING_PARAMS.format(optimizers='"adam", "sgd"', optimizer_note="", epochs=30, local="")}

    Attributes
    ----------
    n_outputs_ : int
        Number of targets per sample.
{_ATTRIBUTES.format(model="fffcpu.UltraFFF",
                    metrics="``train_mse_soft``, ``train_mse_hard`` (equal: training is hard)")}
    """

    def __init__(self, depth=3, *, trees=1, activation="gelu", optimizer="adam", lr=0.01, epochs=30, batch_size=64,
                 dtype="float32", random_state=None, verbose=0):
        self.depth = depth
        self.trees = trees
        self.activation = activation
        self.optimizer = optimizer
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    def _check_model_params(self) -> None:
        check_positive_int(self.depth, "depth", minimum=0)
        check_positive_int(self.trees, "trees")
        get_activation(self.activation)

    def _build_model(self, n_features: int, n_outputs: int, seed: int) -> UltraFFF:
        return UltraFFF(n_features, n_outputs, self.depth, trees=self.trees, activation=self.activation,
                        dtype=self.dtype, seed=seed)
