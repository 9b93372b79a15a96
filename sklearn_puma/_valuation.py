"""Data-valuation baselines that PUMA is compared with, behind PumaPatcher's interface.

Every method is an estimator with ``fit(X, y, *, eval_set=None)`` and ``values_`` in
PumaPatcher's sign convention: **positive = helpful**, in units of the performance
metric; the metric is measured on ``eval_set`` when given, else on the training data.

* :class:`LeaveOneOut`: exact refits without each point (joblib).  Any metric.
* :class:`TMCShapley`: Truncated Monte Carlo Shapley (Ghorbani & Zou 2019).  Any metric.
* :class:`GradientShapley`: G-Shapley, one SGD step per point instead of refits
  (Ghorbani & Zou 2019).  Any metric.
* :class:`KNNShapley`: exact Shapley values of a K-nearest-neighbour utility in closed
  form (Jia et al. 2019).  The KNN utility only.
* :class:`DataOOB`: out-of-bag accuracy over bootstrap fits (Kwon & Zou 2023).  Its
  own score (higher = helpful), no evaluation set.
* :class:`InfluenceFunctions`: first-order influence on the training loss (Koh & Liang
  2017); PUMA's first-order values with ``criterion="loss"``.  The training loss only.
* :class:`DVRL`: a data-value estimator trained with REINFORCE (Yoon et al. 2020).
  Any metric; its values are selection probabilities, not metric units.
* :class:`RepresenterPoints`: the decomposition of an L2-regularised last layer over
  the training points (Yeh et al. 2018).  Support for the true-class logit only.

The metric is a scikit-learn scorer (higher is better: a name such as ``"accuracy"`` or
``"neg_log_loss"``, or a callable ``scorer(estimator, X, y)``).  A point's value is
``score(model on all data) - score(model without it)`` in expectation over the method's
coalitions: positive when the point helps.
"""

import warnings
from numbers import Integral, Real

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.metrics import check_scoring
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_consistent_length, validate_data

from ._warnings import PumaWarning, user_stacklevel


class _Valuation(BaseEstimator):
    """What the valuation methods share: data checks and the evaluation set."""

    def _check_data(self, X, y, eval_set):
        X, y = validate_data(self, X, y, dtype=np.float64)
        if eval_set is None:
            return X, y, X, y
        if not (isinstance(eval_set, (tuple, list)) and len(eval_set) == 2):
            raise ValueError(
                f"eval_set must be a tuple (X_eval, y_eval); got {type(eval_set).__name__}."
            )
        X_eval = validate_data(self, eval_set[0], reset=False, dtype=np.float64)
        y_eval = np.asarray(eval_set[1])
        check_consistent_length(X_eval, y_eval)
        return X, y, X_eval, y_eval


def _refit_score(estimator, scorer, X, y, rows, X_eval, y_eval, empty_score):
    """Score of the estimator refit on ``rows``; ``empty_score`` where it cannot be fit
    (no rows, or a classifier given a single class)."""
    if len(rows) == 0 or (is_classifier(estimator) and len(np.unique(y[rows])) < 2):
        return empty_score(y[rows])
    try:
        model = clone(estimator).fit(X[rows], y[rows])
        return scorer(model, X_eval, y_eval)
    except ValueError:
        # Some estimators refuse tiny training sets (K neighbours from fewer than K
        # points): such a coalition knows no more than its labels.  A failure on half
        # the data or more is a real error, not a small coalition.
        if len(rows) >= len(y) // 2:
            raise
        return empty_score(y[rows])


def _constant_predictor_score(scorer, estimator, X_eval, y_eval, y_train):
    """The score of a model that learnt nothing beyond its training labels' frequencies
    (uniform over the evaluation classes without any), or their mean for a regressor
    (zero without any): what coalitions too small to fit are credited with."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    features = np.zeros((1, X_eval.shape[1]))
    if is_classifier(estimator):
        # Every evaluation class gets a sliver of prior mass, so that the dummy knows
        # them all and log loss stays finite.
        classes = np.unique(y_eval)
        labels = np.concatenate([y_train, classes])
        weights = np.concatenate([np.ones(len(y_train)), np.full(len(classes), 1e-3)])
        dummy = DummyClassifier(strategy="prior").fit(
            np.repeat(features, len(labels), axis=0), labels, sample_weight=weights)
    else:
        target = np.zeros(1) if len(y_train) == 0 else y_train
        dummy = DummyRegressor().fit(np.repeat(features, len(target), axis=0), target)
    return scorer(dummy, X_eval, y_eval)


def _structure_of(estimator, X, y, parameters="all"):
    """A PumaPatcher fitted on (X, y), read for its adapter (the model's structure and
    fitted parameters) only.  Its optimality warning is moot here: the methods using it
    train from scratch (G-Shapley) or refit the last layer to its optimum (representer
    points)."""
    from ._patcher import PumaPatcher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PumaWarning)
        return PumaPatcher(estimator, parameters=parameters).fit(X, y)


class LeaveOneOut(_Valuation):
    """Exact leave-one-out values: one refit without each training point.

    ``values_[i] = score(fit on all) - score(fit without i)``: positive when leaving the
    point out lowers the score. Cost: ``n`` refits (in parallel with ``n_jobs``). Any
    metric; the ground truth influence-based values approximate.

    Parameters
    ----------
    estimator : estimator
        Any scikit-learn estimator, refit with ``clone``.
    scoring : str or callable, default=None
        A scorer (higher is better); None uses the estimator's ``score``.
    n_jobs : int, default=None
        Parallel refits (joblib).

    Attributes
    ----------
    values_ : ndarray of shape (n_samples,)
    score_ : float
        The score of the model fit on all training points.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn_puma.valuation import LeaveOneOut
    >>> X, y = load_iris(return_X_y=True)
    >>> loo = LeaveOneOut(LogisticRegression(max_iter=1000)).fit(X[::5], y[::5])
    >>> loo.values_.shape
    (30,)
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit"])],
        "scoring": [None, str, callable],
        "n_jobs": [Integral, None],
    }

    def __init__(self, estimator, *, scoring=None, n_jobs=None):
        self.estimator = estimator
        self.scoring = scoring
        self.n_jobs = n_jobs

    def fit(self, X, y, *, eval_set=None):
        """Refit without each point and score it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Training labels (or targets).
        eval_set : tuple (X_eval, y_eval), default=None
            Where the metric is measured; by default the training data.

        Returns
        -------
        self : object
            The fitted valuation, with ``values_`` set.
        """
        self._validate_params()
        X, y, X_eval, y_eval = self._check_data(X, y, eval_set)
        scorer = check_scoring(self.estimator, scoring=self.scoring)
        n = len(X)

        def empty(y_rows):
            return _constant_predictor_score(scorer, self.estimator, X_eval, y_eval, y_rows)

        self.score_ = _refit_score(self.estimator, scorer, X, y, np.arange(n), X_eval,
                                   y_eval, empty)
        scores = Parallel(n_jobs=self.n_jobs)(
            delayed(_refit_score)(self.estimator, scorer, X, y, np.delete(np.arange(n), i),
                                  X_eval, y_eval, empty)
            for i in range(n)
        )
        self.values_ = self.score_ - np.asarray(scores, dtype=float)
        return self


class TMCShapley(_Valuation):
    """Truncated Monte Carlo Shapley values (Ghorbani & Zou, ICML 2019).

    Each iteration draws a random permutation of the training points, refits on every
    growing prefix and credits each point with the score gained when it joined. A
    permutation is truncated once the prefix scores within ``truncation_tolerance`` of
    the full-data score (later marginal gains are taken as zero), and iterations stop
    when the values' mean relative change over the last ``convergence_window``
    iterations falls below ``convergence_tolerance`` (the paper's 5% over 100), or at
    ``max_iter``.  Prefixes too small to fit score as a constant predictor of their
    labels. Cost: up to ``n`` refits per iteration. Any metric.

    Parameters
    ----------
    estimator : estimator
        The model refitted on each prefix of a permutation; any scikit-learn estimator.
    scoring : str or callable, default=None
        The metric, higher is better: a scorer name or callable, as :func:`sklearn.metrics.check_scoring` takes; None uses the estimator's ``score``.
    truncation_tolerance : float, default=0.01
        Relative: truncate when ``|score(prefix) - score(all)| < tol * |score(all)|``;
        0 disables truncation (plain Monte Carlo Shapley).
    convergence_tolerance : float, default=0.05
        Stop when the values' mean relative change over the last ``convergence_window`` permutations falls below this (the paper's 5%).
    convergence_window : int, default=100
        The number of permutations that change is averaged over (the paper's 100).
    max_iter : int, default=1000
        Permutations at most.
    empty_score : float, default=None
        The score of the empty coalition; None scores a constant predictor (the class
        frequencies, or zero for a regressor).
    random_state : int, RandomState instance or None, default=None
        Seed of the random draws, for reproducible values.

    Attributes
    ----------
    values_ : ndarray of shape (n_samples,)
    n_iter_ : int
        Permutations used.
    score_ : float
    empty_score_ : float
        The score credited to the empty coalition.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> from sklearn_puma.valuation import TMCShapley
    >>> X, y = load_iris(return_X_y=True)
    >>> tmc = TMCShapley(KNeighborsClassifier(3), max_iter=20, random_state=0)
    >>> tmc.fit(X[::10], y[::10]).values_.shape
    (15,)
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit"])],
        "scoring": [None, str, callable],
        "truncation_tolerance": [Interval(Real, 0, None, closed="left")],
        "convergence_tolerance": [Interval(Real, 0, None, closed="left")],
        "convergence_window": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "empty_score": [None, Real],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator, *, scoring=None, truncation_tolerance=0.01,
                 convergence_tolerance=0.05, convergence_window=100, max_iter=1000,
                 empty_score=None, random_state=None):
        self.estimator = estimator
        self.scoring = scoring
        self.truncation_tolerance = truncation_tolerance
        self.convergence_tolerance = convergence_tolerance
        self.convergence_window = convergence_window
        self.max_iter = max_iter
        self.empty_score = empty_score
        self.random_state = random_state

    def fit(self, X, y, *, eval_set=None):
        """Run permutations until the values converge (or ``max_iter``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Training labels (or targets).
        eval_set : tuple (X_eval, y_eval), default=None
            Where the metric is measured; by default the training data.

        Returns
        -------
        self : object
            The fitted valuation, with ``values_`` set.
        """
        self._validate_params()
        X, y, X_eval, y_eval = self._check_data(X, y, eval_set)
        scorer = check_scoring(self.estimator, scoring=self.scoring)
        rng = check_random_state(self.random_state)
        n = len(X)

        def empty(y_rows):
            return _constant_predictor_score(scorer, self.estimator, X_eval, y_eval, y_rows)

        self.score_ = _refit_score(self.estimator, scorer, X, y, np.arange(n), X_eval,
                                   y_eval, empty)
        self.empty_score_ = (empty(y[:0]) if self.empty_score is None
                             else float(self.empty_score))
        tolerance = self.truncation_tolerance * abs(self.score_)
        history = []  # running means after each permutation
        total = np.zeros(n)
        for iteration in range(1, self.max_iter + 1):
            order = rng.permutation(n)
            previous = self.empty_score_
            for j, point in enumerate(order):
                if tolerance > 0 and abs(self.score_ - previous) < tolerance:
                    break  # the rest of this permutation adds (about) nothing
                current = _refit_score(self.estimator, scorer, X, y, order[: j + 1],
                                       X_eval, y_eval, empty)
                total[point] += current - previous
                previous = current
            history.append(total / iteration)
            change = self._mean_relative_change(history)
            if change < self.convergence_tolerance:
                break
        else:
            if len(history) > self.convergence_window:
                warnings.warn(
                    f"TMCShapley stopped at max_iter={self.max_iter} permutations with a "
                    f"mean relative change of {change:.3g} over the last "
                    f"{self.convergence_window} (tolerance {self.convergence_tolerance}): "
                    "the values have not converged; raise max_iter.",
                    PumaWarning, stacklevel=user_stacklevel())
        self.values_ = history[-1]
        self.n_iter_ = iteration
        return self

    def _mean_relative_change(self, history):
        """Ghorbani & Zou's rule: the mean over the last ``window`` iterations of the
        average relative change of each value since then (inf while too few)."""
        window = self.convergence_window
        if len(history) <= window:
            return np.inf
        last = history[-1]
        scale = np.abs(last) + 1e-12
        return float(np.mean([np.mean(np.abs(last - old) / scale)
                              for old in history[-window - 1:-1]]))


class GradientShapley(TMCShapley):
    """Gradient Shapley (G-Shapley; Ghorbani & Zou, ICML 2019).

    TMC-Shapley with the refits replaced by a single pass of stochastic gradient
    descent: for each random permutation the model starts from ``theta_0`` and takes one
    gradient step on each point in turn (the estimator's own loss and regulariser, batch
    size one), and each point is credited with the score gained by its step.  Truncation
    and convergence follow :class:`TMCShapley`.  Cost: one gradient step and one
    scoring per point and permutation, no refits; the values describe a model trained
    by one epoch of SGD, not the fitted one.  Any metric.  Models PumaPatcher supports
    (their adapters give the gradients); ``theta_0`` is zero for linear models, a small
    seeded random vector for networks (zero is a saddle point of a net).

    Parameters
    ----------
    estimator : estimator, default=None
        A model PumaPatcher supports; None means LogisticRegression().
    scoring : str or callable, default=None
        The metric, higher is better: a scorer name or callable, as :func:`sklearn.metrics.check_scoring` takes; None uses the estimator's ``score``.
    learning_rate : float or "auto", default="auto"
        The step size; "auto" tries ``10**k`` for k in -3..1 on one permutation and
        keeps the one whose single pass scores best (the paper tunes it the same way).
    truncation_tolerance : float, default=0.01
        As in :class:`TMCShapley`.
    convergence_tolerance : float, default=0.05
        As in :class:`TMCShapley`.
    convergence_window : int, default=100
        As in :class:`TMCShapley`.
    max_iter : int, default=1000
        As in :class:`TMCShapley`.
    random_state : int, RandomState instance or None, default=None
        As in :class:`TMCShapley`.

    Attributes
    ----------
    values_ : ndarray of shape (n_samples,)
    learning_rate_ : float
    n_iter_ : int
    score_ : float
        The score of the fitted model on all data (the truncation reference).
    empty_score_ : float
        The score at ``theta_0``.

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_puma.valuation import GradientShapley
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> gs = GradientShapley(scoring="accuracy", max_iter=5, random_state=0)
    >>> gs.fit(scale(X[:60]), y[:60]).values_.shape
    (60,)
    """

    _parameter_constraints = {
        **{k: v for k, v in TMCShapley._parameter_constraints.items()
           if k not in ("estimator", "empty_score")},
        "estimator": [HasMethods(["fit"]), None],
        "learning_rate": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, estimator=None, *, scoring=None, learning_rate="auto",
                 truncation_tolerance=0.01, convergence_tolerance=0.05,
                 convergence_window=100, max_iter=1000, random_state=None):
        super().__init__(estimator, scoring=scoring,
                         truncation_tolerance=truncation_tolerance,
                         convergence_tolerance=convergence_tolerance,
                         convergence_window=convergence_window, max_iter=max_iter,
                         random_state=random_state)
        self.learning_rate = learning_rate

    def fit(self, X, y, *, eval_set=None):
        """Run one-epoch SGD passes over random permutations until the values converge.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Training labels (or targets).
        eval_set : tuple (X_eval, y_eval), default=None
            Where the metric is measured; by default the training data.

        Returns
        -------
        self : object
            The fitted valuation, with ``values_`` set.
        """
        import torch

        from ._autodiff import gradient

        self._validate_params()
        X, y, X_eval, y_eval = self._check_data(X, y, eval_set)
        puma = _structure_of(self.estimator, X, y)
        adapter = puma._problem.adapter
        scorer = check_scoring(puma.estimator_, scoring=self.scoring)
        rng = check_random_state(self.random_state)
        Xt, yt, s = puma._problem.X, puma._problem.y, puma._problem.s
        n = len(X)
        theta_0 = torch.zeros_like(adapter.theta)
        if not adapter.linear_in_params:
            theta_0 = 0.1 * torch.as_tensor(rng.standard_normal(len(theta_0))).to(theta_0)

        def score(theta):
            return scorer(adapter.build(theta), X_eval, y_eval)

        def one_pass(order, rate, tolerance):
            """Marginal score gains along one SGD pass (zero after truncation)."""
            gains = np.zeros(n)
            theta, previous = theta_0, self.empty_score_
            for point in order:
                if tolerance > 0 and abs(self.score_ - previous) < tolerance:
                    break
                rows = slice(point, point + 1)
                # The stochastic gradient of J = (1/n) sum s_i l_i + r at one point:
                # s_i grad l_i + grad r (weight s_i n over n).
                step = gradient(adapter, theta, Xt[rows], yt[rows], s[rows] * n, n)
                theta = theta - rate * step
                current = score(theta)
                gains[point], previous = current - previous, current
            return gains

        self.score_ = scorer(puma.estimator_, X_eval, y_eval)
        self.empty_score_ = score(theta_0)
        if self.learning_rate == "auto":
            probe = rng.permutation(n)
            finals = {rate: one_pass(probe, rate, 0.0).sum() for rate in 10.0 ** np.arange(-3, 2)}
            self.learning_rate_ = max(finals, key=finals.get)
        else:
            self.learning_rate_ = float(self.learning_rate)
        tolerance = self.truncation_tolerance * abs(self.score_)
        history, total = [], np.zeros(n)
        for iteration in range(1, self.max_iter + 1):
            total += one_pass(rng.permutation(n), self.learning_rate_, tolerance)
            history.append(total / iteration)
            if self._mean_relative_change(history) < self.convergence_tolerance:
                break
        self.values_ = history[-1]
        self.n_iter_ = iteration
        return self


class KNNShapley(_Valuation):
    """Exact Shapley values of the K-nearest-neighbour utility (Jia et al., VLDB 2019).

    The utility of a training subset S for an evaluation point ``(x, y)`` is the share
    of its K nearest neighbours in S that carry the label y,
    ``(1/K) sum_{k <= min(K, |S|)} [y_{alpha_k(S)} = y]``, averaged over the evaluation
    points.  Its Shapley values have a closed form: sort the training points by
    distance, then ``s_N = [y_N = y] / N`` and
    ``s_i = s_{i+1} + ([y_i = y] - [y_{i+1} = y]) / K * min(K, i) / i``.
    Cost: one sort per evaluation point, ``O(n_eval n log n)``, no model fits. It
    values the data for a KNN classifier only; no other metric.

    Parameters
    ----------
    n_neighbors : int, default=5
        K, the number of nearest neighbours in the utility.
    metric : str, default="euclidean"
        Any metric of :func:`sklearn.metrics.pairwise_distances`.

    Attributes
    ----------
    values_ : ndarray of shape (n_samples,)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_puma.valuation import KNNShapley
    >>> X = np.array([[0.0], [1.0], [5.0]]); y = np.array([0, 0, 1])
    >>> KNNShapley(n_neighbors=1).fit(X, y, eval_set=(np.array([[0.2]]), [0])).values_
    array([0.5, 0.5, 0. ])
    """

    _parameter_constraints = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "metric": [str, callable],
    }

    def __init__(self, n_neighbors=5, *, metric="euclidean"):
        self.n_neighbors = n_neighbors
        self.metric = metric

    def fit(self, X, y, *, eval_set=None):
        """Closed-form values against the evaluation points.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Training labels (or targets).
        eval_set : tuple (X_eval, y_eval), default=None
            The points whose KNN accuracy is the utility; by default the training data
            (then each point is among its own neighbours).

        Returns
        -------
        self : object
            The fitted valuation, with ``values_`` set.
        """
        from sklearn.metrics import pairwise_distances

        self._validate_params()
        X, y, X_eval, y_eval = self._check_data(X, y, eval_set)
        n, K = len(X), self.n_neighbors
        distances = pairwise_distances(X_eval, X, metric=self.metric)
        values = np.zeros(n)
        ranks = np.arange(1, n + 1)
        for d, label in zip(distances, y_eval):
            order = np.argsort(d, kind="stable")
            match = (y[order] == label).astype(float)
            s = np.zeros(n)
            s[-1] = match[-1] / n
            step = (match[:-1] - match[1:]) / K * np.minimum(K, ranks[:-1]) / ranks[:-1]
            # s_i = s_{i+1} + step_i, from the farthest point inwards.
            s[:-1] = s[-1] + np.cumsum(step[::-1])[::-1]
            values[order] += s
        self.values_ = values / len(X_eval)
        return self


class DataOOB(_Valuation):
    """Data-OOB: each point's out-of-bag score over bootstrap fits (Kwon & Zou, ICML 2023).

    ``n_estimators`` copies of ``estimator`` are fitted on bootstrap samples of the
    training data (scikit-learn's bagging); a point's value is the mean, over the fits
    whose sample left it out (about 37% of them), of how well that fit predicts it: the
    accuracy ``[f_b(x_i) = y_i]`` for a classifier, minus the squared error
    ``-(y_i - f_b(x_i))^2`` for a regressor.  A mislabelled or atypical point is one
    that models trained without it get wrong, so it scores low.  No evaluation set and
    no influence functions: the cost is ``n_estimators`` fits (on the full-size
    bootstrap samples) and their out-of-bag predictions.  Limits: the values say how
    predictable a point is from the others, not what it does to a criterion (a helpful
    rare point scores as low as a harmful one); with few estimators each point is out of
    bag only ``0.37 n_estimators`` times, so the values are coarse (multiples of
    ``1 / that count`` for a classifier).

    Parameters
    ----------
    estimator : estimator, default=None
        The model fitted on each bootstrap sample; None: a
        ``DecisionTreeClassifier`` or ``DecisionTreeRegressor`` (the weak learners of
        the paper's random forest), chosen by the target.
    n_estimators : int, default=50
        Bootstrap fits (the paper's default; its experiments use 800 trees).
    max_samples : float in (0, 1], default=1.0
        Size of each bootstrap sample as a fraction of the training rows.
    random_state : int, RandomState instance or None, default=None
        Seeds the bootstrap samples (and the trees).
    n_jobs : int, default=None
        Parallel fits, as in :class:`sklearn.ensemble.BaggingClassifier`.

    Attributes
    ----------
    values_ : ndarray of shape (n_samples,)
        Out-of-bag accuracy (classifier) or minus the out-of-bag squared error
        (regressor) of each training point; higher = more helpful.
    oob_counts_ : ndarray of shape (n_samples,)
        How many fits each point was out of bag for.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_puma.valuation import DataOOB
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((60, 2)); y = (X[:, 0] > 0).astype(int)
    >>> y[:3] = 1 - y[:3]  # three flipped labels
    >>> values = DataOOB(n_estimators=40, random_state=0).fit(X, y).values_
    >>> bool(values[:3].mean() < values[3:].mean())
    True
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit", "predict"]), None],
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "max_samples": [Interval(Real, 0, 1, closed="right")],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
    }

    def __init__(self, estimator=None, *, n_estimators=50, max_samples=1.0,
                 random_state=None, n_jobs=None):
        self.estimator = estimator
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X, y, *, eval_set=None):
        """Fit the bootstrap models and score each point out of bag.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Training labels (or targets).
        eval_set : None
            Not taken: every point is scored by the fits that did not see it. Passing
            one is an error rather than silently ignored.

        Returns
        -------
        self : object
            The fitted valuation, with ``values_`` and ``oob_counts_`` set.
        """
        from sklearn.ensemble import BaggingClassifier, BaggingRegressor
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
        from sklearn.utils.multiclass import type_of_target

        self._validate_params()
        if eval_set is not None:
            raise ValueError(
                "DataOOB scores each point by the bootstrap fits that left it out; it "
                "takes no eval_set."
            )
        X, y, _, _ = self._check_data(X, y, None)
        classify = (is_classifier(self.estimator) if self.estimator is not None
                    else type_of_target(y) in ("binary", "multiclass"))
        if self.estimator is not None:
            base = clone(self.estimator)
        else:
            base = DecisionTreeClassifier() if classify else DecisionTreeRegressor()
        Bagging = BaggingClassifier if classify else BaggingRegressor
        bagging = Bagging(base, n_estimators=self.n_estimators,
                          max_samples=self.max_samples, bootstrap=True,
                          random_state=self.random_state, n_jobs=self.n_jobs).fit(X, y)
        n = len(y)
        total, counts = np.zeros(n), np.zeros(n)
        for model, rows, features in zip(bagging.estimators_,
                                         bagging.estimators_samples_,
                                         bagging.estimators_features_):
            out = np.ones(n, dtype=bool)
            out[rows] = False
            if not out.any():
                continue
            predicted = model.predict(X[out][:, features])
            if classify:
                # Bagging fits its members on encoded labels (0 .. K-1).
                predicted = bagging.classes_[np.asarray(predicted, dtype=int)]
                total[out] += predicted == y[out]
            else:
                total[out] -= (y[out] - predicted) ** 2
            counts[out] += 1
        never = counts == 0
        if never.any():
            raise ValueError(
                f"{int(never.sum())} point(s) were in every bootstrap sample, so no fit "
                f"scores them out of bag (rows {np.flatnonzero(never)[:5].tolist()}); "
                "raise n_estimators or lower max_samples."
            )
        self.values_ = total / counts
        self.oob_counts_ = counts.astype(np.int64)
        return self


class InfluenceFunctions(_Valuation):
    """First-order influence functions (Koh & Liang, ICML 2017) on the training loss.

    ``values_[i] = (1/n) grad L_eval^T H^{-1} grad l_i``: the first-order change of the
    mean evaluation loss when point i is left out (positive = helpful), for a model
    PumaPatcher supports. Influence is tied to the training objective: the metric is the
    estimator's own loss and nothing else (PumaPatcher lifts that restriction). Cost:
    one inverse-Hessian solve and one pass over the data.

    Parameters
    ----------
    estimator : estimator
        A model PumaPatcher supports (fit here unless wrapped in FrozenEstimator).
    hessian : {"auto", "exact", "cg", "lissa", "lowrank", "ekfac"}, default="auto"
        The inverse-Hessian solver, as ``hessian`` of :class:`~sklearn_puma.PumaPatcher`.
    damping : "auto" or float, default="auto"
        Added to the Hessian's diagonal, as ``damping`` of :class:`~sklearn_puma.PumaPatcher`.

    Attributes
    ----------
    values_ : ndarray of shape (n_samples,)
    estimator_ : estimator
        The fitted model.

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_puma.valuation import InfluenceFunctions
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> InfluenceFunctions().fit(scale(X), y).values_.shape
    (569,)
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit"]), None],
        "hessian": [StrOptions({"auto", "exact", "cg", "lissa", "lowrank", "ekfac"})],
        "damping": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, estimator=None, *, hessian="auto", damping="auto"):
        self.estimator = estimator
        self.hessian = hessian
        self.damping = damping

    def fit(self, X, y, *, eval_set=None):
        """Fit the model and compute first-order influence on the evaluation loss.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Training labels (or targets).
        eval_set : tuple (X_eval, y_eval), default=None
            Where the metric is measured; by default the training data.

        Returns
        -------
        self : object
            The fitted valuation, with ``values_`` set.
        """
        from ._patcher import PumaPatcher

        self._validate_params()
        puma = PumaPatcher(self.estimator, criterion="loss", value_method="first_order",
                           hessian=self.hessian, damping=self.damping)
        puma.fit(X, y, eval_set=eval_set)
        self.values_ = puma.values_
        self.estimator_ = puma.estimator_
        self.n_features_in_ = puma.n_features_in_
        return self


class RepresenterPoints(_Valuation):
    """Representer point values (Yeh et al., NeurIPS 2018).

    The last layer ``Theta`` (no bias) of a classifier is refit to a stationary point of
    ``(1/n) sum_i L(Theta f_i, y_i) + lam ||Theta||^2`` on the features ``f_i`` it sees
    (the inputs of a linear model, the last hidden layer of an MLP).  There,
    ``Theta = sum_i alpha_i f_i^T`` with ``alpha_i = -1/(2 lam n) dL/dz_i``, so every
    pre-activation decomposes over the training points:
    ``Theta f_t = sum_i alpha_i (f_i . f_t)``.  A point's value is its mean contribution
    to the true-class pre-activation of the evaluation points,
    ``values_[i] = mean_t alpha_i[y_t] (f_i . f_t)`` (positive = supports the right
    class).  Cost: one convex refit of the last layer and one Gram product.  The
    values are tied to the training loss and measured in logits: no other metric.

    Parameters
    ----------
    estimator : estimator, default=None
        A LogisticRegression or MLPClassifier PumaPatcher supports (fitted here unless
        wrapped in FrozenEstimator); None means LogisticRegression().
    lam : float, default=None
        The L2 strength of the refit; None takes the estimator's own
        (``1/(2 C n)`` for LogisticRegression, ``alpha/(2n)`` for an MLP).

    Attributes
    ----------
    values_ : ndarray of shape (n_samples,)
    alpha_ : ndarray of shape (n_samples, n_outputs)
        The representer coefficients.
    coef_ : ndarray of shape (n_outputs, n_features_last)
        The refit last layer (at its optimum, ``sum_i alpha_i f_i^T``).
    lam_ : float

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_puma.valuation import RepresenterPoints
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> RepresenterPoints().fit(scale(X), y).alpha_.shape
    (569, 1)
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit"]), None],
        "lam": [None, Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, estimator=None, *, lam=None):
        self.estimator = estimator
        self.lam = lam

    def fit(self, X, y, *, eval_set=None):
        """Refit the last layer, decompose it over the training points, value them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Training labels (or targets).
        eval_set : tuple (X_eval, y_eval), default=None
            Where the metric is measured; by default the training data.

        Returns
        -------
        self : object
            The fitted valuation, with ``values_`` set.
        """
        import torch
        from scipy.optimize import minimize

        from ._autodiff import forward_mode_section, quiet_torch_func

        quiet_torch_func()  # before torch.func's first gradient below

        self._validate_params()
        X, y, X_eval, y_eval = self._check_data(X, y, eval_set)
        puma = _structure_of(self.estimator, X, y, parameters="last_layer")
        adapter = puma._problem.adapter
        if not adapter.is_classifier or adapter.multilabel:
            raise ValueError(
                "RepresenterPoints decomposes a classifier's last layer; "
                f"{type(adapter.estimator).__name__} is not a single-label classifier."
            )
        F = adapter.encode_X(X)
        codes = adapter.encode_y(puma._io.encode_y(y))
        n, d, K = len(F), F.shape[1], adapter.n_outputs
        self.lam_ = float(self.lam) if self.lam is not None else self._own_strength(adapter, n)

        def loss(w):
            W = w.reshape(K, d)
            return adapter.sample_loss(F @ W.T, codes).mean() + self.lam_ * (W ** 2).sum()

        def value_and_grad(w):
            g, value = torch.func.grad_and_value(loss)(torch.as_tensor(w))
            return float(value), g.numpy()

        start = adapter.theta.detach().reshape(K, -1)[:, :d].numpy().ravel()
        result = minimize(value_and_grad, start, jac=True, method="L-BFGS-B",
                          options={"maxiter": 10_000, "gtol": 1e-10})
        # The identity holds at the exact optimum: Newton steps (the problem is strongly
        # convex and small) take L-BFGS's answer to machine precision.
        w = torch.as_tensor(result.x)
        for _ in range(20):
            g = torch.func.grad(loss)(w)
            if float(g.abs().max()) <= 1e-14:
                break
            with forward_mode_section():
                w = w - torch.linalg.solve(torch.func.hessian(loss)(w), g)
        W = w.reshape(K, d)
        first, _ = adapter.output_derivatives(F @ W.T, codes, curvature=False)
        alpha = -first / (2 * self.lam_ * n)
        self.alpha_ = alpha.numpy()
        self.coef_ = W.numpy()
        stationarity = float(torch.func.grad(loss)(w).abs().max())
        if stationarity > 1e-8:
            warnings.warn(f"The last layer's refit stopped with a gradient of "
                          f"{stationarity:.3g}: the decomposition is approximate.",
                          PumaWarning, stacklevel=user_stacklevel())
        F_eval = adapter.encode_X(X_eval)
        codes_eval = adapter.encode_y(puma._io.encode_y(y_eval)).numpy()
        gram = (F @ F_eval.T).numpy()  # (n, n_eval)
        # Binary models have one logit, for classes_[1]: the true class's side is its sign.
        if K == 1:
            support = self.alpha_[:, 0][:, None] * np.where(codes_eval == 1, 1.0, -1.0)
        else:
            support = self.alpha_[:, codes_eval]
        self.values_ = (support * gram).mean(axis=1)
        self._features = adapter.encode_X
        self._train_features = F.numpy()
        return self

    @staticmethod
    def _own_strength(adapter, n):
        # The adapter's penalty is sum(c_j theta_j^2) / n on the weights (not the bias).
        coef = adapter._penalty_weights.reshape(adapter.n_outputs, -1)[:, : adapter.n_features]
        strength = float(coef.max()) / n
        if strength <= 0:
            raise ValueError(
                "RepresenterPoints needs an L2-regularised last layer; this estimator has "
                "none. Pass lam=... (the strength of the refit's L2 penalty)."
            )
        return strength

    def decompose(self, X):
        """Split the refit last layer's outputs on ``X`` over the training points.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The points whose pre-activations are decomposed.

        Returns
        -------
        contributions : ndarray of shape (n_samples_train, n_samples, n_outputs)
            Summed over the training points: the refit last layer's outputs on ``X``,
            ``features(X) @ coef_.T``.
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        F_train = self._train_features
        F = self._features(X).numpy()
        gram = F_train @ F.T  # (n, m)
        return gram[:, :, None] * self.alpha_[:, None, :]


class DVRL(_Valuation):
    """Data valuation using reinforcement learning (Yoon, Arik & Pfister, ICML 2020).

    A data-value estimator (a small torch MLP on each point's features, one-hot label,
    and the gap between that label and the class probabilities of a model fit on the
    evaluation set) gives each training point a selection probability.  Each iteration
    samples a batch, draws a selection vector from those probabilities, fits the
    ``predictor`` on the selected points, and rewards the estimator by the predictor's
    score on the evaluation set minus a moving average of past scores (REINFORCE), with
    the paper's penalty keeping the mean selection probability between ``1 - epsilon``
    and ``epsilon``.  ``values_`` are the final selection probabilities minus their
    mean: positive = selected more often than average = helpful.  They rank points but
    are probabilities, not units of the metric.  Cost: ``n_iter`` predictor fits.  Any
    metric and any classifier; the predictor need not be differentiable.

    Parameters
    ----------
    predictor : estimator, default=None
        Fit on the selected points of each draw; None means LogisticRegression().
    scoring : str or callable, default="neg_log_loss"
        The reward (higher is better). Log-likelihood moves with every selected point,
        where accuracy on a small validation set moves in coarse steps: a
        lower-variance reward for REINFORCE.
    n_iter : int, default=300
        The number of REINFORCE iterations, one predictor fit each.
    batch_size : int, default=256
        Points sampled per iteration (all when fewer).
    hidden : int, default=100
        Width of the estimator's two hidden layers.
    learning_rate : float, default=0.01
        Adam's step size for the estimator.
    epsilon : float, default=0.9
        Bounds of the mean selection probability, ``[1 - epsilon, epsilon]``.
    penalty : float, default=1e3
        Weight of that bound's hinge penalty (the reference implementation's 1e3).
    moving_average_window : int, default=20
        The reward baseline averages this many past scores.
    random_state : int, RandomState instance or None, default=None
        Seed of the random draws, for reproducible values.

    Attributes
    ----------
    values_ : ndarray of shape (n_samples,)
    selection_probability_ : ndarray of shape (n_samples,)

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from sklearn_puma.valuation import DVRL
    >>> X, y = make_moons(200, noise=0.2, random_state=0)
    >>> DVRL(n_iter=5, random_state=0).fit(X, y).values_.shape
    (200,)
    """

    _parameter_constraints = {
        "predictor": [HasMethods(["fit"]), None],
        "scoring": [str, callable],
        "n_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "hidden": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "epsilon": [Interval(Real, 0.5, 1, closed="both")],
        "penalty": [Interval(Real, 0, None, closed="left")],
        "moving_average_window": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, predictor=None, *, scoring="neg_log_loss", n_iter=300, batch_size=256,
                 hidden=100, learning_rate=0.01, epsilon=0.9, penalty=1e3,
                 moving_average_window=20, random_state=None):
        self.predictor = predictor
        self.scoring = scoring
        self.n_iter = n_iter
        self.batch_size = batch_size
        self.hidden = hidden
        self.learning_rate = learning_rate
        self.epsilon = epsilon
        self.penalty = penalty
        self.moving_average_window = moving_average_window
        self.random_state = random_state

    def fit(self, X, y, *, eval_set=None):
        """Train the data-value estimator by REINFORCE and read off its probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Training labels (or targets).
        eval_set : tuple (X_eval, y_eval), default=None
            The (ideally clean) validation data of the reward; by default the training
            data, which rewards fitting the noise too: pass one.

        Returns
        -------
        self : object
            The fitted valuation, with ``values_`` set.
        """
        import torch
        from sklearn.linear_model import LogisticRegression

        self._validate_params()
        X, y, X_eval, y_eval = self._check_data(X, y, eval_set)
        predictor = LogisticRegression() if self.predictor is None else self.predictor
        scorer = check_scoring(predictor, scoring=self.scoring)
        rng = check_random_state(self.random_state)
        generator = torch.Generator().manual_seed(int(rng.randint(2**31)))
        classes = np.unique(y)
        onehot = (y[:, None] == classes).astype(np.float64)
        # Yoon et al.'s extra input: how far each label is from what a model of the
        # clean evaluation data predicts there.
        reference = clone(predictor).fit(X_eval, y_eval)
        proba = np.zeros_like(onehot)
        proba[:, np.searchsorted(classes, reference.classes_)] = reference.predict_proba(X)
        inputs = torch.as_tensor(np.hstack([X, onehot, np.abs(onehot - proba)]))
        # The layers draw their initial weights from torch's global generator: seeded
        # for this construction only, the user's generator left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.randint(2**31)))
            estimator = torch.nn.Sequential(
                torch.nn.Linear(inputs.shape[1], self.hidden), torch.nn.ReLU(),
                torch.nn.Linear(self.hidden, self.hidden), torch.nn.ReLU(),
                torch.nn.Linear(self.hidden, 1), torch.nn.Sigmoid()).double()
        optimizer = torch.optim.Adam(estimator.parameters(), lr=self.learning_rate)
        n = len(X)
        size = min(self.batch_size, n)
        baseline = scorer(clone(predictor).fit(X, y), X_eval, y_eval)
        recent = [baseline]
        for _ in range(self.n_iter):
            batch = rng.choice(n, size, replace=False)
            p = estimator(inputs[batch])[:, 0].clamp(1e-6, 1 - 1e-6)
            selected = torch.bernoulli(p.detach(), generator=generator)
            chosen = batch[selected.numpy() > 0]
            if len(np.unique(y[chosen])) < len(classes):
                # A predictor missing a class cannot be scored on data that has it (log
                # loss needs every column): no reward to learn from this draw.
                continue
            model = clone(predictor).fit(X[chosen], y[chosen])
            reward = scorer(model, X_eval, y_eval) - np.mean(recent)
            recent = (recent + [reward + np.mean(recent)])[-self.moving_average_window:]
            log_likelihood = (selected * torch.log(p) + (1 - selected) * torch.log(1 - p)).sum()
            mean = p.mean()
            loss = (-reward * log_likelihood
                    + self.penalty * (torch.relu(mean - self.epsilon)
                                      + torch.relu((1 - self.epsilon) - mean)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            probability = estimator(inputs)[:, 0].numpy()
        self.selection_probability_ = probability
        self.values_ = probability - probability.mean()
        return self
