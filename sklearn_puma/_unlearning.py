"""Unlearning baselines that PUMA is compared with: each removes chosen training points'
influence from a model, at the price of changing how the model is trained.

* :class:`SISA`: Sharded, Isolated, Sliced, Aggregated training (Bourtoule et al.
  2021).  Exact: ``forget`` retrains only the shards (from the affected slice's
  checkpoint) that held the points.  Any scikit-learn estimator (``partial_fit`` for
  slices); the model is an ensemble of shard models, each trained on ``1/n_shards`` of
  the data.
* :class:`AmnesiacMLP`: Amnesiac Machine Learning (Graves et al. 2021).  A torch MLP
  trained by minibatch SGD that records every batch's parameter update; ``forget``
  subtracts the updates of the batches that held the points, then optionally
  fine-tunes on the kept data.  Approximate; one parameter vector stored per step.
* :class:`UnrollingSGDMLP`: single-gradient unlearning from unrolled SGD (Thudi et al.
  2022).  The same SGD-trained MLP, recording only which rows each batch held;
  ``forget`` adds back the forgotten points' first-order contribution, their gradients
  at the initial weights.  Approximate; good for small learning rates and short
  training.

PUMA patches a model trained in the ordinary way; these three must be used *at training
time* (a sharded ensemble, recorded updates, recorded batches from known initial
weights).  That is their cost, and the one PUMA avoids.

Indices passed to ``forget`` are rows of the training data given to ``fit`` (integer
indices or a boolean mask).  Rows already forgotten are ignored; forgetting every
training row is an error.  :meth:`AmnesiacMLP.replay_without` (and the same method of
:class:`UnrollingSGDMLP`) retrains from the same initial weights through the same
batches without the rows: the exact reference both approximations are measured against.
"""

import copy
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    MetaEstimatorMixin,
    _fit_context,
    clone,
    is_classifier,
)
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils import check_random_state, get_tags
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._rows import row_mask

__all__ = ["SISA", "AmnesiacMLP", "UnrollingSGDMLP"]


def _forget_mask(indices, n, forgotten):
    """The rows ``indices`` newly forgets (a boolean mask over the ``n`` training rows),
    with clear errors; rows in ``forgotten`` (already forgotten) are left out."""
    mask = row_mask(indices, n, "indices")
    if np.all(mask | forgotten):
        raise ValueError(
            "Forgetting these rows would forget every training sample; nothing would be "
            "left to learn from. Fit a new model instead."
        )
    return mask & ~forgotten


# ---------------------------------------------------------------------------------- SISA
class _SingleClassShard(ClassifierMixin, BaseEstimator):
    """The model of a SISA shard holding a single class: it predicts that class (a
    scikit-learn classifier refuses to fit on one class; ``partial_fit`` is told them
    all and needs no stand-in)."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.repeat(self.classes_, len(X))

    def predict_proba(self, X):
        return np.ones((len(X), 1))


def _sisa_has(attr):
    def check(self):
        return is_classifier(self) and (attr != "predict_proba" or self.voting == "hard"
                                        or hasattr(self.estimator, "predict_proba"))

    return check


class SISA(MetaEstimatorMixin, BaseEstimator):
    """Sharded, Isolated, Sliced and Aggregated training (Bourtoule et al., IEEE S&P 2021).

    The training rows are split at random into ``n_shards`` disjoint shards, and one
    clone of ``estimator`` is trained on each, in isolation. With ``n_slices > 1`` each
    shard is further split into slices and its model is trained incrementally with
    ``partial_fit``: at step ``r`` it makes ``slice_epochs`` passes over slices
    ``0..r`` together, and a copy of the model (a checkpoint) is kept after every step.
    ``forget(indices)`` is *exact* unlearning: only the shards holding the points are
    retrained, without them, starting from the checkpoint taken before the earliest
    slice that held one (from scratch with ``n_slices=1``). The result is the model this
    class would have trained had the points never been given, shard by shard.

    Predictions aggregate the shard models: ``voting="hard"`` (the paper's label
    aggregation) takes the majority of the shards' predicted labels, ties going to the
    class listed first in ``classes_``, and ``predict_proba`` gives the fraction of shard
    votes per class; ``voting="soft"`` averages the shards' ``predict_proba`` and
    predicts its argmax. A regressor's prediction is the mean of the shards'. A
    classifier shard left with a single class (by the split or by forgetting) predicts
    that class, since classifiers refuse to fit on one.

    Cost, and what it cannot do: each shard model sees only ``1 / n_shards`` of the data,
    so the ensemble is usually less accurate than one model trained on everything (the
    price of cheap exact unlearning); training must be done this way from the start; the
    training data (and with slices ``n_shards * n_slices`` model checkpoints) are kept
    in memory; a forget costs the retraining of each affected shard, which tends to
    every shard as the forgotten rows spread out. It unlearns; it does not value data or
    bound the change in performance.

    Parameters
    ----------
    estimator : estimator
        Any scikit-learn classifier or regressor, cloned for each shard; it needs
        ``partial_fit`` when ``n_slices > 1`` (e.g. ``SGDClassifier``). Use a fixed
        ``random_state`` in it when its training is random, or a retrained shard will
        differ from a from-scratch one by that randomness.
    n_shards : int, default=5
        Number of disjoint shards (one model each).
    n_slices : int, default=1
        Slices per shard. Above 1, shard models are trained with ``partial_fit`` and
        checkpointed after each slice.
    slice_epochs : int, default=1
        ``partial_fit`` passes per slice step (``n_slices > 1`` only); the rows of slice
        ``r`` are seen ``slice_epochs * (n_slices - r)`` times.
    voting : {"hard", "soft"}, default="hard"
        How classifier shards are aggregated (see above); ``"soft"`` needs
        ``predict_proba`` in the estimator.
    random_state : int, RandomState instance or None, default=None
        Draws the shard and slice assignment.

    Attributes
    ----------
    estimators_ : list of estimators
        The fitted shard models; ``None`` for a shard whose every row was forgotten
        (it takes no part in predictions).
    shard_of_ : ndarray of shape (n_samples,)
        Shard index of each training row.
    slice_of_ : ndarray of shape (n_samples,)
        Slice index of each training row within its shard.
    forgotten_ : ndarray of bool, shape (n_samples,)
        Training rows forgotten so far.
    n_retrained_ : int
        Shards retrained by the last ``forget`` (0 after ``fit``).
    classes_ : ndarray of shape (n_classes,)
        Class labels (classifiers).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Defined when X has feature names that are all strings.

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_puma.unlearning import SISA
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> sisa = SISA(LogisticRegression(), n_shards=4, random_state=0).fit(scale(X), y)
    >>> sisa.forget([0, 1]).n_retrained_ <= 2
    True
    >>> int(sisa.forgotten_.sum())
    2
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit", "predict"])],
        "n_shards": [Interval(Integral, 1, None, closed="left")],
        "n_slices": [Interval(Integral, 1, None, closed="left")],
        "slice_epochs": [Interval(Integral, 1, None, closed="left")],
        "voting": [StrOptions({"hard", "soft"})],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator, *, n_shards=5, n_slices=1, slice_epochs=1,
                 voting="hard", random_state=None):
        self.estimator = estimator
        self.n_shards = n_shards
        self.n_slices = n_slices
        self.slice_epochs = slice_epochs
        self.voting = voting
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        tags.target_tags.required = True
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = inner.input_tags.allow_nan
        return tags

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y):
        """Split the rows into shards (and slices) and train one model per shard.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data, one sample per row.
        y : array-like of shape (n_samples,)
            Labels (or targets) of ``X``.

        Returns
        -------
        self : SISA
            The estimator itself.
        """
        classifier = is_classifier(self.estimator)
        # A copy: forget retrains on these rows later, whatever the caller does to X.
        X, y = validate_data(self, X, y, y_numeric=not classifier, copy=True,
                             ensure_all_finite=not get_tags(self).input_tags.allow_nan)
        n = len(X)
        if self.n_shards * self.n_slices > n:
            raise ValueError(
                f"SISA needs at least n_shards * n_slices = "
                f"{self.n_shards * self.n_slices} samples (one per slice); got {n} "
                "sample(s)."
            )
        if self.n_slices > 1 and not hasattr(self.estimator, "partial_fit"):
            raise ValueError(
                f"n_slices > 1 trains shard models slice by slice with partial_fit, which "
                f"{type(self.estimator).__name__} does not have; use n_slices=1 or an "
                "estimator with partial_fit (SGDClassifier, SGDRegressor, "
                "MLPClassifier, ...)."
            )
        if self.voting == "soft" and classifier and not hasattr(self.estimator,
                                                                "predict_proba"):
            raise ValueError(
                f"voting='soft' averages predict_proba, which "
                f"{type(self.estimator).__name__} does not have; use voting='hard'."
            )
        if classifier:
            check_classification_targets(y)
            self.classes_ = np.unique(y)
        elif hasattr(self, "classes_"):
            del self.classes_
        order = check_random_state(self.random_state).permutation(n)
        self.shard_of_ = np.empty(n, dtype=np.intp)
        self.slice_of_ = np.empty(n, dtype=np.intp)
        for k, shard_rows in enumerate(np.array_split(order, self.n_shards)):
            self.shard_of_[shard_rows] = k
            for r, slice_rows in enumerate(np.array_split(shard_rows, self.n_slices)):
                self.slice_of_[slice_rows] = r
        self._X, self._y = X, y
        self.forgotten_ = np.zeros(n, dtype=bool)
        self.estimators_ = [None] * self.n_shards
        self._checkpoints = [[None] * self.n_slices for _ in range(self.n_shards)]
        for k in range(self.n_shards):
            self._train_shard(k, first_slice=0)
        self.n_retrained_ = 0
        return self

    def _train_shard(self, k, first_slice):
        """(Re)train shard ``k`` without the forgotten rows, from the checkpoint taken
        before ``first_slice``."""
        kept = (self.shard_of_ == k) & ~self.forgotten_
        if not kept.any():
            self.estimators_[k] = None
            self._checkpoints[k] = [None] * self.n_slices
            return
        if self.n_slices == 1:
            rows = np.flatnonzero(kept)
            single = is_classifier(self) and len(np.unique(self._y[rows])) == 1
            model = _SingleClassShard() if single else clone(self.estimator)
            self.estimators_[k] = model.fit(self._X[rows], self._y[rows])
            return
        model = None if first_slice == 0 else copy.deepcopy(
            self._checkpoints[k][first_slice - 1])
        extra = {"classes": self.classes_} if is_classifier(self) else {}
        for r in range(first_slice, self.n_slices):
            rows = np.flatnonzero(kept & (self.slice_of_ <= r))
            if len(rows):  # slices 0..r may all have been forgotten
                if model is None:
                    model = clone(self.estimator)
                for _ in range(self.slice_epochs):
                    model.partial_fit(self._X[rows], self._y[rows], **extra)
            self._checkpoints[k][r] = copy.deepcopy(model)
        self.estimators_[k] = model

    def forget(self, indices):
        """Unlearn training rows exactly: retrain only the shards that held them.

        Parameters
        ----------
        indices : array-like of int or of bool
            Training rows (indices into the ``X`` given to ``fit``, or a boolean mask
            over them). Rows already forgotten are ignored.

        Returns
        -------
        self : SISA
            The estimator itself.
        """
        check_is_fitted(self)
        new = _forget_mask(indices, len(self.shard_of_), self.forgotten_)
        shards = np.unique(self.shard_of_[new])
        self.forgotten_ = self.forgotten_ | new
        for k in shards:
            self._train_shard(k, first_slice=int(self.slice_of_[new & (self.shard_of_ == k)]
                                                 .min()))
        self.n_retrained_ = len(shards)
        return self

    def _active(self):
        return [est for est in self.estimators_ if est is not None]

    def _class_scores(self, X):
        """Votes (hard) or mean probabilities (soft) per class, columns in classes_."""
        X = validate_data(self, X, reset=False,
                          ensure_all_finite=not get_tags(self).input_tags.allow_nan)
        scores = np.zeros((len(X), len(self.classes_)))
        models = self._active()
        for est in models:
            if self.voting == "hard":
                cols = np.searchsorted(self.classes_, est.predict(X))
                scores[np.arange(len(X)), cols] += 1.0
            else:
                cols = np.searchsorted(self.classes_, est.classes_)
                scores[:, cols] += est.predict_proba(X)
        return scores / len(models)

    def predict(self, X):
        """Predict by aggregating the shards' models.

        Majority vote (hard), argmax of mean probabilities (soft), or the mean of the
        shards' predictions (regressors).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data, one sample per row.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted labels (or targets).
        """
        check_is_fitted(self)
        if is_classifier(self):
            return self.classes_[np.argmax(self._class_scores(X), axis=1)]
        X = validate_data(self, X, reset=False,
                          ensure_all_finite=not get_tags(self).input_tags.allow_nan)
        return np.mean([est.predict(X) for est in self._active()], axis=0)

    @available_if(_sisa_has("predict_proba"))
    def predict_proba(self, X):
        """Return the fraction of shard votes per class, or the mean probabilities.

        Hard voting counts the shards' votes; soft voting averages the shards'
        ``predict_proba``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data, one sample per row.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Class probabilities, columns in the order of ``classes_``.
        """
        check_is_fitted(self)
        return self._class_scores(X)

    def score(self, X, y, sample_weight=None):
        """Accuracy (classifiers) or R^2 (regressors) of the aggregated prediction.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data, one sample per row.
        y : array-like of shape (n_samples,)
            Labels (or targets) of ``X``.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples of ``X``.

        Returns
        -------
        score : float
            Accuracy or R^2 of the prediction against ``y``.
        """
        metric = accuracy_score if is_classifier(self) else r2_score
        return metric(y, self.predict(X), sample_weight=sample_weight)


# ------------------------------------------------- an SGD-trained MLP that records batches
class _SGDTrainedMLP(ClassifierMixin, BaseEstimator):
    """A small torch MLP classifier trained by plain minibatch SGD from seeded initial
    weights through a seeded batch schedule that it records: what Amnesiac ML and
    unrolling SGD both build on.

    The parameters are one flat float64 vector (layer by layer: weights of shape
    (n_in, n_out), row-major, then biases); the loss is the softmax cross-entropy,
    averaged over each batch, with no regularisation beyond ``std_reg`` (the SD loss of
    Thudi et al., off by default); the step is ``w <- w - learning_rate * grad``.
    """

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like"],
        "activation": [StrOptions({"tanh", "relu"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_epochs": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, hidden_layer_sizes=(16,), *, activation="tanh", learning_rate=0.3,
                 batch_size=32, n_epochs=50, random_state=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.random_state = random_state

    _std_reg = 0.0  # the SD-loss weight; UnrollingSGDMLP exposes it as std_reg
    _records_updates = False

    # -------------------------------------------------------------- the maths, flat
    def _layers(self):
        sizes = [self.n_features_in_, *self._hidden, len(self.classes_)]
        return list(zip(sizes[:-1], sizes[1:]))

    def _logits(self, theta, X):
        start, out = 0, X
        layers = self._layers()
        for depth, (a, b) in enumerate(layers):
            W = theta[start:start + a * b].reshape(a, b)
            bias = theta[start + a * b:start + a * b + b]
            start += a * b + b
            out = out @ W + bias
            if depth < len(layers) - 1:
                out = torch.tanh(out) if self.activation == "tanh" else torch.relu(out)
        return out

    def _sample_losses(self, theta, X, y):
        logits = self._logits(theta, X)
        losses = -torch.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]
        if self._std_reg and logits.shape[1] > 1:
            # Thudi et al.'s SD loss: the logits' spread per sample, over the classes.
            losses = losses + self._std_reg * logits.std(dim=1) / logits.shape[1]
        return losses

    def _sgd(self, theta, batches, excluded):
        """Run SGD from ``theta`` through ``batches`` without the ``excluded`` rows;
        returns the final parameters and the update of each step (None for a step left
        with no rows, which is skipped)."""
        theta = theta.detach().clone()
        updates = []
        for rows in batches:
            rows = rows[~excluded[rows]]
            if not len(rows):
                updates.append(None)
                continue
            theta.requires_grad_(True)
            loss = self._sample_losses(theta, self._Xt[rows], self._yt[rows]).mean()
            (grad,) = torch.autograd.grad(loss, theta)
            update = -self.learning_rate * grad
            theta = (theta.detach() + update).detach()
            updates.append(update if self._records_updates else None)
        return theta, updates

    def _schedule(self, rows, n_epochs, seed):
        rng = np.random.default_rng(seed)
        batches = []
        for _ in range(n_epochs):
            perm = rows[rng.permutation(len(rows))]
            batches.extend(perm[i:i + self.batch_size]
                           for i in range(0, len(perm), self.batch_size))
        return batches

    def _initial_params(self, seed):
        """Glorot-uniform weights and zero biases (as scikit-learn's MLP), seeded."""
        rng = np.random.default_rng(seed)
        parts = []
        for a, b in self._layers():
            bound = np.sqrt(6.0 / (a + b))
            parts += [rng.uniform(-bound, bound, a * b), np.zeros(b)]
        return torch.as_tensor(np.concatenate(parts), dtype=torch.float64)

    # ---------------------------------------------------------------- sklearn API
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Train by minibatch SGD, recording the batch schedule.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data, one sample per row.
        y : array-like of shape (n_samples,)
            Labels (or targets) of ``X``.

        Returns
        -------
        self : object
            The estimator itself.
        """
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        hidden = np.atleast_1d(np.asarray(self.hidden_layer_sizes))
        if hidden.size and (hidden.ndim != 1 or not np.all(hidden == np.round(hidden))
                            or hidden.min() < 1):
            raise ValueError(f"hidden_layer_sizes must be positive integers; got "
                             f"{self.hidden_layer_sizes!r}.")
        self._hidden = tuple(int(h) for h in hidden)
        self._Xt = torch.tensor(X, dtype=torch.float64)
        self._yt = torch.as_tensor(y_index, dtype=torch.long)
        self._seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        n = len(X)
        self.initial_params_ = self._initial_params(self._seed).numpy()
        self.batches_ = self._schedule(np.arange(n), self.n_epochs, self._seed)
        self.forgotten_ = np.zeros(n, dtype=bool)
        self._trained_without = self.forgotten_.copy()
        theta, updates = self._sgd(torch.as_tensor(self.initial_params_), self.batches_,
                                   self.forgotten_)
        self._theta = theta
        self._after_fit(updates)
        return self

    def _after_fit(self, updates):
        pass

    @property
    def params_(self):
        """The fitted parameters as one flat vector (a copy)."""
        check_is_fitted(self)
        return self._theta.numpy().copy()

    @property
    def coefs_(self):
        """Weight matrices, layer by layer, shape (n_in, n_out) (as MLPClassifier)."""
        return [W for W, _ in self._unflat()]

    @property
    def intercepts_(self):
        """Bias vectors, layer by layer (as MLPClassifier)."""
        return [b for _, b in self._unflat()]

    def _unflat(self):
        theta, start, out = self.params_, 0, []
        for a, b in self._layers():
            out.append((theta[start:start + a * b].reshape(a, b),
                        theta[start + a * b:start + a * b + b]))
            start += a * b + b
        return out

    def predict_proba(self, X):
        """Class probabilities (softmax of the network's output).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data, one sample per row.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Class probabilities, columns in the order of ``classes_``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        with torch.no_grad():
            logits = self._logits(self._theta, torch.tensor(X, dtype=torch.float64))
            return torch.softmax(logits, dim=1).numpy()

    def predict(self, X):
        """Most probable class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data, one sample per row.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted labels (or targets).
        """
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def replay_without(self, indices):
        """Exact retraining without rows: a copy trained from the same initial weights
        through the same batches of ``fit``, the rows (and any already forgotten)
        dropped from each batch, each batch's loss averaged over the rows left, a batch
        left empty skipped.  The reference the approximate ``forget`` is measured
        against; it costs a whole training run.

        Parameters
        ----------
        indices : array-like of int or of bool
            Training rows to leave out.

        Returns
        -------
        model : estimator of the same class
            A new fitted model; ``self`` is unchanged.
        """
        check_is_fitted(self)
        new = _forget_mask(indices, len(self.forgotten_), self.forgotten_)
        model = copy.deepcopy(self)
        model.forgotten_ = self.forgotten_ | new
        model._trained_without = model.forgotten_.copy()
        theta, updates = model._sgd(torch.as_tensor(self.initial_params_),
                                    self.batches_, model.forgotten_)
        model._theta = theta
        model._after_fit(updates)
        return model

    def _check_forget(self, indices):
        check_is_fitted(self)
        return _forget_mask(indices, len(self.forgotten_), self.forgotten_)


_MLP_PARAMETERS = """
    Parameters
    ----------
    hidden_layer_sizes : array-like of int, default=(16,)
        Units per hidden layer; ``()`` gives multinomial logistic regression.
    activation : {"tanh", "relu"}, default="tanh"
        The hidden layers' activation function.
    learning_rate : float, default=0.3
        The constant SGD step size.
    batch_size : int, default=32
        Minibatch size of the SGD training.
    n_epochs : int, default=50
        Passes over the training data, each in a new seeded random order."""
_RANDOM_STATE = """
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights and the batch order."""


class AmnesiacMLP(_SGDTrainedMLP):
    __doc__ = """Amnesiac Machine Learning (Graves, Nagisetty & Ganesh, AAAI 2021).

    A small torch MLP classifier trained by plain minibatch SGD (softmax cross-entropy,
    constant learning rate, no momentum) that records, for every step, which training
    rows its batch held and the parameter update it made. ``forget(indices)`` subtracts
    the updates of every batch that held one of the rows (the whole batch's update: the
    other rows in those batches lose their contribution too), then optionally
    fine-tunes for ``fine_tune_epochs`` epochs of the same SGD on the kept rows to
    repair the accuracy lost. Fine-tuning steps are recorded like training steps, so a
    later ``forget`` undoes them too where they touch its rows.

    Cost, and what it can and cannot do: the model must be trained this way from the
    start; it stores **one parameter vector per SGD step** (``n_epochs *
    ceil(n_samples / batch_size)`` vectors of ``n_params`` float64 numbers, see
    ``updates_``) besides the training data; ``forget`` itself is a sum of stored
    vectors, plus the fine-tuning. It is approximate: later steps were taken from
    parameters the undone steps had moved, so the result is not the model retrained
    without the rows (``replay_without`` gives that), and with many forgotten rows
    most batches are undone and the model falls back towards its initial weights.
    Nothing bounds the change in performance; fine-tuning repairs it without a
    guarantee. It does not value data.
""" + _MLP_PARAMETERS + _RANDOM_STATE + """

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    params_ : ndarray of shape (n_params,)
        The current parameters, one flat vector; ``coefs_`` and ``intercepts_`` give
        them layer by layer.
    initial_params_ : ndarray of shape (n_params,)
    batches_ : list of ndarray of int
        Training rows of each SGD step of ``fit``.
    updates_ : ndarray of shape (n_steps, n_params)
        The parameter update of every recorded step (``fit``'s, then fine-tuning's):
        the memory cost of the method.
    undone_ : ndarray of bool, shape (n_steps,)
        Steps whose updates have been subtracted.
    forgotten_ : ndarray of bool, shape (n_samples,)
        Training rows forgotten so far.
    n_undone_ : int
        Steps undone by the last ``forget``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Defined when X has feature names that are all strings.

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from sklearn_puma.unlearning import AmnesiacMLP
    >>> X, y = make_moons(200, noise=0.2, random_state=0)
    >>> model = AmnesiacMLP(n_epochs=20, random_state=0).fit(X, y)
    >>> model.updates_.shape  # one parameter vector per SGD step
    (140, 82)
    >>> model.forget([0, 1, 2], fine_tune_epochs=1).n_undone_  # steps that held them
    51
    """

    _records_updates = True

    def _after_fit(self, updates):
        p = len(self.initial_params_)
        self._step_rows = list(self.batches_)
        self.updates_ = np.stack([np.zeros(p) if u is None else u.numpy()
                                  for u in updates]) if updates else np.zeros((0, p))
        # A step that ran on no rows (all forgotten, in a replay) changed nothing.
        self.undone_ = np.array([u is None for u in updates], dtype=bool)
        self.n_undone_ = 0
        self._n_forgets = 0

    def forget(self, indices, fine_tune_epochs=0):
        """Subtract the updates of the batches that held the rows; then fine-tune.

        Parameters
        ----------
        indices : array-like of int or of bool
            Training rows (indices into the ``X`` given to ``fit``, or a boolean mask
            over them). Rows already forgotten are ignored.
        fine_tune_epochs : int, default=0
            Epochs of SGD on the kept rows after the subtraction (seeded, recorded).

        Returns
        -------
        self : AmnesiacMLP
            The estimator itself.
        """
        if not (isinstance(fine_tune_epochs, Integral) and fine_tune_epochs >= 0):
            raise ValueError(
                f"fine_tune_epochs must be a non-negative int; got {fine_tune_epochs!r}."
            )
        new = self._check_forget(indices)
        touched = np.array([not done and bool(new[rows].any())
                            for rows, done in zip(self._step_rows, self.undone_)],
                           dtype=bool)
        theta = self._theta - torch.as_tensor(self.updates_[touched].sum(axis=0))
        self.undone_ = self.undone_ | touched
        self.n_undone_ = int(touched.sum())
        self.forgotten_ = self.forgotten_ | new
        self._n_forgets += 1
        if fine_tune_epochs:
            batches = self._schedule(np.flatnonzero(~self.forgotten_), fine_tune_epochs,
                                     [self._seed, self._n_forgets])
            theta, updates = self._sgd(theta, batches, self.forgotten_)
            self._step_rows += batches
            self.updates_ = np.concatenate([self.updates_,
                                            np.stack([u.numpy() for u in updates])])
            self.undone_ = np.concatenate([self.undone_, np.zeros(len(batches), bool)])
        self._theta = theta
        return self


class UnrollingSGDMLP(_SGDTrainedMLP):
    __doc__ = """Single-gradient unlearning by unrolling SGD (Thudi et al., EuroS&P 2022).

    Thudi, Deza, Chandrasekaran & Papernot, IEEE EuroS&P 2022.

    The same small torch MLP classifier trained by plain minibatch SGD as
    :class:`AmnesiacMLP`, recording only its initial weights ``w_0`` and which rows
    each batch held. Unrolling ``T`` steps of SGD and expanding every gradient to first
    order around ``w_0`` gives ``w_T ~ w_0 - eta sum_t (1/|B_t|) sum_(j in B_t)
    grad l_j(w_0)``. The paper's single-gradient unlearning reads a row's contribution
    off this sum, ``eta grad l_i(w_0) / |B_t|`` for every step ``t`` whose batch
    ``B_t`` held it, and adds it back: ``forget(indices,
    estimate="single_gradient")``. Retraining without the rows, though, also divides
    each batch by the rows it has left, which shifts the other rows' weights by as much
    as the forgotten row's own; the default ``estimate="batch_mean"`` applies the same
    first-order unrolling to that retraining (the difference of the two unrolled sums)
    and is the one that approaches :meth:`replay_without`. Both coincide when the
    forgotten rows fill whole batches, as in the paper's experiments.

    Cost, and what it can and cannot do: training must start from the recorded
    ``w_0`` and the batch membership must be recorded (integers, far less than
    Amnesiac's parameter vector per step), and the training data kept; ``forget`` is
    one backward pass at ``w_0`` over the forgotten rows (``"single_gradient"``) or
    over every row that shared a batch with one (``"batch_mean"``), no training. The
    estimate drops every term of second order (the Hessian along the trajectory); its
    error, the paper's unlearning error, grows like ``eta^2 T ||w_T - w_0|| sigma``
    (``sigma`` the largest Hessian singular value), so it is close to retraining for
    small learning rates and short training, and worse than doing nothing for a model
    trained long from random weights. ``std_reg`` adds the paper's SD loss (the
    standard deviation of each sample's logits, divided by the number of classes) to
    the training loss, which the paper reports to lower that error (on CIFAR and IMDb
    models); on a 16-unit MLP on two moons it kept the weights nearer ``w_0`` but did
    not bring the estimate nearer retraining. Nothing bounds the change in
    performance. It does not value data.
""" + _MLP_PARAMETERS + """
    std_reg : float, default=0.0
        Weight of the SD loss (Thudi et al.'s regulariser); 0 trains on the plain
        cross-entropy.""" + _RANDOM_STATE + """

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    params_ : ndarray of shape (n_params,)
        The current parameters, one flat vector; ``coefs_`` and ``intercepts_`` give
        them layer by layer.
    initial_params_ : ndarray of shape (n_params,)
        ``w_0``, the expansion point.
    batches_ : list of ndarray of int
        Training rows of each SGD step.
    forgotten_ : ndarray of bool, shape (n_samples,)
        Training rows forgotten so far.
    correction_ : ndarray of shape (n_params,)
        The parameter change made by the last ``forget``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Defined when X has feature names that are all strings.

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from sklearn_puma.unlearning import UnrollingSGDMLP
    >>> X, y = make_moons(200, noise=0.2, random_state=0)
    >>> model = UnrollingSGDMLP(n_epochs=5, random_state=0).fit(X, y)
    >>> model.forget([0, 1, 2]).correction_.shape
    (82,)
    >>> int(model.forgotten_.sum())
    3
    """

    _parameter_constraints = {
        **_SGDTrainedMLP._parameter_constraints,
        "std_reg": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, hidden_layer_sizes=(16,), *, activation="tanh", learning_rate=0.3,
                 batch_size=32, n_epochs=50, std_reg=0.0, random_state=None):
        super().__init__(hidden_layer_sizes, activation=activation,
                         learning_rate=learning_rate, batch_size=batch_size,
                         n_epochs=n_epochs, random_state=random_state)
        self.std_reg = std_reg

    @property
    def _std_reg(self):
        return self.std_reg

    def forget(self, indices, *, estimate="batch_mean"):
        """Add back the forgotten rows' first-order contributions to the weights.

        Parameters
        ----------
        indices : array-like of int or of bool
            Training rows (indices into the ``X`` given to ``fit``, or a boolean mask
            over them). Rows already forgotten are ignored.
        estimate : {"batch_mean", "single_gradient"}, default="batch_mean"
            Which retraining the first-order estimate aims at.

            - ``"single_gradient"``: the paper's formula as printed, ``w + eta
              sum_(t: i in B_t) grad l_i(w_0) / |B_t|``: the first-order estimate of
              retraining with the forgotten rows' losses dropped from each batch but
              each batch still divided by its full size ``|B_t|``. Needs only the
              forgotten rows.
            - ``"batch_mean"``: the same unrolling applied to retraining with each
              batch's loss averaged over the rows it has left (what
              :meth:`replay_without` does, and what retraining without the rows means):
              ``w + eta sum_t (mean_(B_t) - mean_(B_t without F)) grad l(w_0)``. Also
              needs the gradients at ``w_0`` of the kept rows that shared a batch with
              a forgotten one. Removing a row from a batch of ``b`` also raises the
              others' weight from ``1/b`` to ``1/(b-1)``, an effect as large as the
              row's own; ``"single_gradient"`` leaves it out, so against that
              retraining it does worse than doing nothing (see the tests).

            Both agree when the forgotten rows fill whole batches (the paper's
            experiments); after a single SGD step each is exact for its retraining.

        Returns
        -------
        self : UnrollingSGDMLP
            The estimator itself.
        """
        if estimate not in ("batch_mean", "single_gradient"):
            raise ValueError(
                f"estimate must be 'batch_mean' or 'single_gradient'; got {estimate!r}."
            )
        new = self._check_forget(indices)
        old, now = self.forgotten_, self.forgotten_ | new
        trained = ~self._trained_without
        # w_T ~ w_0 - eta sum_t sum_(j in B_t) c_tj grad l_j(w_0) to first order, with
        # c_tj the weight row j had in step t's loss; the correction is the change in
        # those weights, gathered per row.
        coef = np.zeros(len(new))
        for rows in self.batches_:
            rows = rows[trained[rows]]  # the rows the step really trained on
            if not new[rows].any():
                continue
            if estimate == "single_gradient":
                coef[rows[new[rows]]] += 1.0 / len(rows)
            else:
                before, after = rows[~old[rows]], rows[~now[rows]]
                coef[before] += 1.0 / len(before)
                if len(after):  # a batch left empty is a step not taken
                    coef[after] -= 1.0 / len(after)
        # sum_j c_j grad l_j(w_0) is the gradient of sum_j c_j l_j at w_0: one backward
        # pass, no per-sample gradients.
        rows = np.flatnonzero(coef)
        w0 = torch.tensor(self.initial_params_, requires_grad=True)
        weighted = (torch.as_tensor(coef[rows])
                    * self._sample_losses(w0, self._Xt[rows], self._yt[rows])).sum()
        (correction,) = torch.autograd.grad(weighted, w0)
        correction = self.learning_rate * correction
        self._theta = self._theta + correction
        self.correction_ = correction.numpy()
        self.forgotten_ = now
        return self
