"""Valuation baselines against exact ground truths.

* KNN-Shapley's closed form against brute-force Shapley over all 2^10 subsets;
* TMC-Shapley's Monte Carlo estimate converging to that same exact answer;
* exact leave-one-out against refits done here by hand;
* first-order influence against PumaPatcher's first-order values, and both against
  real leave-one-out retraining;
* representer points' decomposition against scikit-learn's own bias-free fit.
"""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.base import BaseEstimator, clone
from sklearn.datasets import load_digits, make_moons
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from sklearn_puma import PumaPatcher, flip_labels
from sklearn_puma.valuation import (
    DVRL,
    GradientShapley,
    InfluenceFunctions,
    KNNShapley,
    LeaveOneOut,
    RepresenterPoints,
    TMCShapley,
)

K = 3


def _knn_utility(X_train, y_train, X_eval, y_eval, k=K):
    """Jia et al.'s utility: share of the k nearest training points (fewer if the
    subset is smaller; still divided by k) that carry the evaluation label."""
    if len(X_train) == 0:
        return 0.0
    total = 0.0
    for x, label in zip(X_eval, y_eval):
        order = np.argsort(np.linalg.norm(X_train - x, axis=1), kind="stable")
        total += np.sum(y_train[order[:k]] == label) / k
    return total / len(X_eval)


class _KNNUtilityModel(BaseEstimator):
    """Remembers its data; ``_knn_scorer`` reads it. Neither classifier nor regressor,
    so that TMC fits every coalition, single-class ones included."""

    def fit(self, X, y):
        self.X_, self.y_ = X, y
        return self


def _knn_scorer(model, X, y):
    return _knn_utility(model.X_, model.y_, X, y)


@pytest.fixture(scope="module")
def digits_small():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X[:300]), y[:300]


@pytest.fixture(scope="module")
def ten_points():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 2))
    y = (X[:, 0] + 0.8 * rng.normal(size=10) > 0).astype(int)
    X_eval = rng.normal(size=(6, 2))
    y_eval = (X_eval[:, 0] > 0).astype(int)
    return X, y, X_eval, y_eval


@pytest.fixture(scope="module")
def exact_shapley(ten_points):
    """Shapley values by definition: weighted marginal gains over all subsets."""
    X, y, X_eval, y_eval = ten_points
    n = len(X)
    utility = {}
    for size in range(n + 1):
        for subset in itertools.combinations(range(n), size):
            rows = list(subset)
            utility[subset] = _knn_utility(X[rows], y[rows], X_eval, y_eval)
    values = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                values[i] += weight * (utility[tuple(sorted(subset + (i,)))] - utility[subset])
    return values


def test_knn_shapley_equals_brute_force(ten_points, exact_shapley):
    X, y, X_eval, y_eval = ten_points
    values = KNNShapley(n_neighbors=K).fit(X, y, eval_set=(X_eval, y_eval)).values_
    np.testing.assert_allclose(values, exact_shapley, atol=1e-12)
    # Efficiency: the values share out the utility of the whole set.
    np.testing.assert_allclose(values.sum(), _knn_utility(X, y, X_eval, y_eval))


def test_tmc_shapley_converges_to_exact_values(ten_points, exact_shapley):
    X, y, X_eval, y_eval = ten_points
    tmc = TMCShapley(_KNNUtilityModel(), scoring=_knn_scorer, truncation_tolerance=0.0,
                     convergence_tolerance=0.0, max_iter=600, empty_score=0.0,
                     random_state=0)
    with pytest.warns(UserWarning, match="have not converged"):
        tmc.fit(X, y, eval_set=(X_eval, y_eval))
    rho = spearmanr(tmc.values_, exact_shapley).statistic
    error = np.abs(tmc.values_ - exact_shapley).max()
    print(f"TMC-Shapley ({tmc.n_iter_} permutations) vs exact: Spearman {rho:.3f}, "
          f"largest error {error:.3f}")
    assert rho >= 0.9
    assert error <= 0.03
    # Each permutation's gains add up to v(all) - v(empty): so do the averages.
    np.testing.assert_allclose(tmc.values_.sum(), _knn_utility(X, y, X_eval, y_eval))


def test_tmc_truncation_stops_early_and_keeps_the_ranking(breast_cancer):
    X, y = breast_cancer
    X, y, X_eval, y_eval = X[:24], y[:24], X[300:400], y[300:400]
    est = LogisticRegression(C=0.1)
    fits = []

    def counting_scorer(model, X, y):
        fits.append(1)
        return model.score(X, y)

    runs = {}
    for tolerance in (0.0, 0.02):
        fits.clear()
        runs[tolerance] = TMCShapley(
            est, scoring=counting_scorer, truncation_tolerance=tolerance, max_iter=8,
            convergence_window=1000, random_state=0).fit(X, y, eval_set=(X_eval, y_eval))
        runs[tolerance].n_fits = len(fits)
    plain, truncated = runs[0.0], runs[0.02]
    assert truncated.n_fits < plain.n_fits
    # The same permutations: truncation only drops the late, small gains.
    assert spearmanr(plain.values_, truncated.values_).statistic >= 0.6
    gap = truncated.score_ - truncated.empty_score_ - truncated.values_.sum()
    assert abs(gap) <= 0.02 * abs(truncated.score_)


def test_leave_one_out_equals_refits(breast_cancer):
    X, y = breast_cancer
    X, y, X_eval, y_eval = X[:60], y[:60], X[300:], y[300:]
    est = LogisticRegression(C=0.5)
    loo = LeaveOneOut(est, scoring="neg_log_loss").fit(
        X, y, eval_set=(X_eval, y_eval))
    full = log_loss(y_eval, clone(est).fit(X, y).predict_proba(X_eval))
    for i in (0, 17, 42):
        keep = np.arange(len(X)) != i
        without = log_loss(y_eval, clone(est).fit(X[keep], y[keep]).predict_proba(X_eval))
        # score = -log loss: value = score(all) - score(without i) = loss(without) - loss(all)
        np.testing.assert_allclose(loo.values_[i], without - full, rtol=1e-6, atol=1e-12)


def test_influence_functions_are_pumas_first_order_values(breast_cancer):
    X, y = breast_cancer
    X, y, X_eval, y_eval = X[:200], y[:200], X[300:], y[300:]
    est = LogisticRegression(C=0.5)
    influence = InfluenceFunctions(est).fit(X, y, eval_set=(X_eval, y_eval))
    puma = PumaPatcher(est, criterion="loss", value_method="first_order").fit(
        X, y, eval_set=(X_eval, y_eval))
    np.testing.assert_allclose(influence.values_, puma.values_, rtol=1e-10)
    # And both predict real leave-one-out changes of the evaluation loss.
    points = np.random.default_rng(0).choice(len(X), 25, replace=False)
    full = log_loss(y_eval, clone(est).fit(X, y).predict_proba(X_eval))
    actual = [log_loss(y_eval, clone(est).fit(np.delete(X, i, 0), np.delete(y, i))
                       .predict_proba(X_eval)) - full for i in points]
    assert pearsonr(influence.values_[points], actual).statistic >= 0.95


def test_bad_input_is_named():
    X = np.zeros((4, 2))
    with pytest.raises(ValueError, match="eval_set must be a tuple"):
        KNNShapley().fit(X, [0, 1, 0, 1], eval_set=X)
    with pytest.raises(ValueError, match="n_neighbors"):
        KNNShapley(n_neighbors=0).fit(X, [0, 1, 0, 1])


def test_representer_points_reconstruct_the_pre_activations(breast_cancer, wine):
    """Yeh et al.'s identity against scikit-learn's own fit: a bias-free logistic
    regression with C has the refit's L2 strength 1/(2 C n), so the training points'
    contributions must add up to its decision_function."""
    for X, y in (breast_cancer, wine):
        X_train, y_train, X_test = X[::2], y[::2], X[1::2]
        C = 0.5
        reference = LogisticRegression(C=C, fit_intercept=False, tol=1e-12,
                                       max_iter=10_000).fit(X_train, y_train)
        rp = RepresenterPoints(LogisticRegression(C=C)).fit(X_train, y_train)
        assert rp.lam_ == pytest.approx(1 / (2 * C * len(X_train)))
        logits = rp.decompose(X_test).sum(axis=0)
        expected = reference.decision_function(X_test)
        expected = expected[:, None] if expected.ndim == 1 else expected
        scale = np.abs(expected).max()
        assert np.abs(logits - expected).max() <= 1e-6 * scale


def test_representer_points_of_an_mlp_last_layer(digits_small):
    X, y = digits_small
    mlp = MLPClassifier((16,), alpha=1e-2, max_iter=2000, random_state=0).fit(X, y)
    rp = RepresenterPoints(FrozenEstimator(mlp)).fit(X, y)
    hidden = np.tanh(X @ mlp.coefs_[0] + mlp.intercepts_[0]) if mlp.activation == "tanh" \
        else np.maximum(X @ mlp.coefs_[0] + mlp.intercepts_[0], 0)
    logits = rp.decompose(X[:20]).sum(axis=0)
    np.testing.assert_allclose(logits, hidden[:20] @ rp.coef_.T, rtol=1e-6, atol=1e-8)
    # The values credit points that support their own class: mostly positive.
    assert np.mean(rp.values_ > 0) > 0.5


def test_gradient_shapley_against_all_permutations(breast_cancer):
    """Four points, every one of the 24 SGD orders run by hand in numpy (logistic loss
    plus ||w||^2 / (2 C n), one step per point from zero): the exact G-Shapley values,
    which the Monte Carlo estimate must approach."""
    X, y = breast_cancer
    X, y, X_eval, y_eval = X[:4, :3], np.array([0, 1, 1, 0]), X[300:, :3], y[300:]
    rate, C, n = 0.5, 1.0, 4

    def neg_log_loss(w):
        z = X_eval @ w[:3] + w[3]
        p = 1 / (1 + np.exp(-z))
        return np.mean(y_eval * np.log(p) + (1 - y_eval) * np.log(1 - p))

    exact = np.zeros(n)
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        w, previous = np.zeros(4), neg_log_loss(np.zeros(4))
        for i in order:
            p = 1 / (1 + np.exp(-(X[i] @ w[:3] + w[3])))
            step = np.append((p - y[i]) * X[i] + w[:3] / (C * n), p - y[i])
            w = w - rate * step
            current = neg_log_loss(w)
            exact[i] += (current - previous) / len(orders)
            previous = current
    gs = GradientShapley(LogisticRegression(C=C), scoring="neg_log_loss",
                         learning_rate=rate, truncation_tolerance=0.0,
                         convergence_tolerance=0.0, convergence_window=10_000, max_iter=400,
                         random_state=0).fit(X, y, eval_set=(X_eval, y_eval))
    print(f"G-Shapley {np.round(gs.values_, 4)} vs exact {np.round(exact, 4)}")
    assert np.abs(gs.values_ - exact).max() <= 0.1 * np.abs(exact).max()
    assert spearmanr(gs.values_, exact).statistic >= 0.8


def test_gradient_shapley_ranks_flipped_labels_low(breast_cancer):
    X, y = breast_cancer
    y_flipped, flipped = flip_labels(y[:150], 0.1, random_state=0)
    gs = GradientShapley(scoring="accuracy", max_iter=10, convergence_window=1000,
                         random_state=0).fit(X[:150], y_flipped, eval_set=(X[300:], y[300:]))
    found = flipped[np.argsort(gs.values_, kind="stable")[:30]].sum() / flipped.sum()
    print(f"G-Shapley finds {found:.2f} of the flipped labels in the lowest 20%")
    assert found >= 0.4  # random inspection finds 0.2


def test_dvrl_ranks_flipped_labels_low_on_noisy_moons():
    X, y = make_moons(700, noise=0.2, random_state=0)
    X_train, y_train, X_val, y_val = X[:500], y[:500], X[500:], y[500:]
    y_flipped, flipped = flip_labels(y_train, 0.1, random_state=0)
    dvrl = DVRL(n_iter=150, batch_size=500, random_state=0).fit(
        X_train, y_flipped, eval_set=(X_val, y_val))
    found = flipped[np.argsort(dvrl.values_, kind="stable")[:100]].sum() / flipped.sum()
    print(f"DVRL finds {found:.2f} of the flipped labels in the lowest 20% "
          f"(selection probability {dvrl.selection_probability_[flipped].mean():.2f} "
          f"flipped, {dvrl.selection_probability_[~flipped].mean():.2f} clean)")
    assert found >= 0.5  # random inspection finds 0.2
    assert dvrl.selection_probability_[flipped].mean() < dvrl.selection_probability_[~flipped].mean()


def test_data_oob_is_the_mean_out_of_bag_score_of_its_fits(breast_cancer):
    """Against the definition, recomputed from the bootstrap samples alone: a model
    refit by hand on each sample (same estimator, same seed) scores the points it left
    out, and each value is the mean of those scores."""
    from sklearn.ensemble import BaggingClassifier
    from sklearn.tree import DecisionTreeClassifier

    from sklearn_puma.valuation import DataOOB

    X, y = breast_cancer
    X, y = X[:200], y[:200]
    oob = DataOOB(n_estimators=30, random_state=0).fit(X, y)
    bagging = BaggingClassifier(DecisionTreeClassifier(), n_estimators=30,
                                random_state=0).fit(X, y)
    total, counts = np.zeros(len(y)), np.zeros(len(y))
    for model, rows in zip(bagging.estimators_, bagging.estimators_samples_):
        out = np.setdiff1d(np.arange(len(y)), rows)
        total[out] += model.predict(X[out]) == y[out]
        counts[out] += 1
    np.testing.assert_array_equal(oob.oob_counts_, counts)
    np.testing.assert_allclose(oob.values_, total / counts)
    # The definition does not depend on what the classes are called.
    named = DataOOB(n_estimators=30, random_state=0).fit(X, np.where(y == 1, "b", "a"))
    np.testing.assert_array_equal(named.values_, oob.values_)


def test_data_oob_ranks_flipped_labels_lowest(breast_cancer):
    from sklearn.metrics import roc_auc_score

    from sklearn_puma import flip_labels
    from sklearn_puma.valuation import DataOOB

    X, y = breast_cancer
    noisy, flipped = flip_labels(y, 0.1, random_state=0)
    is_flipped = np.zeros(len(y), dtype=bool)
    is_flipped[flipped] = True
    values = DataOOB(LogisticRegression(), n_estimators=50, random_state=0).fit(
        X, noisy).values_
    assert roc_auc_score(is_flipped, -values) >= 0.9


def test_data_oob_for_a_regressor_and_its_refusals(diabetes):
    from sklearn.linear_model import Ridge

    from sklearn_puma.valuation import DataOOB

    X, y = diabetes
    values = DataOOB(Ridge(), n_estimators=20, random_state=0).fit(X, y).values_
    assert np.all(values <= 0) and np.isfinite(values).all()
    with pytest.raises(ValueError, match="takes no eval_set"):
        DataOOB().fit(X, y, eval_set=(X, y))
    with pytest.raises(ValueError, match="raise n_estimators"):
        DataOOB(Ridge(), n_estimators=1, random_state=0).fit(X[:5], y[:5])
