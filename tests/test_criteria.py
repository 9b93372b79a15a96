"""Criteria against independent ground truths.

* every criterion's gradient in theta against central finite differences (float64);
* each criterion's value against scikit-learn's metric, this package's binned metric,
  or a hand computation with numpy on the model's own predict_proba;
* the smooth ECE against the binned ECE across models of varying calibration;
* groups reaching the fairness criteria directly, through an eval_set and through a
  Pipeline's metadata routing.
"""

import warnings

import numpy as np
import pytest
import sklearn
import torch
from scipy.stats import spearmanr
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_puma import CRITERION_NAMES, PumaPatcher, PumaWarning
from sklearn_puma._criteria import BoundCriterion
from sklearn_puma.metrics import expected_calibration_error


def _groups(X):
    return np.where(X[:, 1] > 0, "a", "b")


def _bound(puma, spec, X, y, groups=None):
    adapter = puma._problem.adapter
    Xt, yt = adapter.encode_X(X), adapter.encode_y(puma._io.encode_y(y))
    return BoundCriterion(spec, adapter, Xt, yt, puma._problem.ones(len(X)), groups)


def _models(breast_cancer, wine):
    Xb, yb = breast_cancer
    Xw, yw = wine
    return {
        "binary": (LogisticRegression(C=0.3), Xb[:150], yb[:150]),
        "multiclass": (LogisticRegression(C=0.3), Xw, yw),
        "mlp": (MLPClassifier((5,), activation="tanh", max_iter=300, random_state=0),
                Xb[:120, :6], yb[:120]),
    }


CLASSIFIER_CRITERIA = ["loss", "log_loss", "brier", "ece", "accuracy", "per_class_loss"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("model", ["binary", "multiclass", "mlp"])
def test_gradients_match_finite_differences(model, breast_cancer, wine):
    est, X, y = _models(breast_cancer, wine)[model]
    specs = CLASSIFIER_CRITERIA + (["demographic_parity", "equalized_odds"]
                                   if model != "multiclass" else [])
    puma = PumaPatcher(est).fit(X, y)
    theta = puma._problem.theta_hat.clone()
    theta = theta + 0.05 * torch.as_tensor(np.random.default_rng(0).standard_normal(len(theta)))
    eye = torch.eye(len(theta), dtype=torch.float64)
    eps = 1e-6
    errors = {}
    for spec in specs:
        C = _bound(puma, spec, X, y, _groups(X))
        G = torch.func.jacrev(C)(theta)
        G_fd = torch.stack([(C(theta + eps * e) - C(theta - eps * e)) / (2 * eps)
                            for e in eye], dim=1)
        errors[spec] = float((G - G_fd).norm() / G.norm())
    print(f"\n[{model}] relative error against central differences: "
          + ", ".join(f"{spec} {error:.1e}" for spec, error in errors.items()))
    for spec, error in errors.items():
        assert error <= 1e-5, f"{model} {spec}: relative error {error:.2e}"


def test_regression_criteria_gradients(diabetes):
    X, y = diabetes
    puma = PumaPatcher(Ridge()).fit(X, y)
    theta = puma._problem.theta_hat + 0.1
    eye = torch.eye(len(theta), dtype=torch.float64)
    for spec in ["loss", "squared_error"]:
        C = _bound(puma, spec, X, y)
        G = torch.func.jacrev(C)(theta)
        G_fd = torch.stack([(C(theta + 1e-6 * e) - C(theta - 1e-6 * e)) / 2e-6
                            for e in eye], dim=1)
        error = float((G - G_fd).norm() / G.norm())
        print(f"\n[Ridge] {spec}: relative error against central differences {error:.1e}")
        assert error <= 1e-5


@pytest.mark.parametrize("data", ["breast_cancer", "wine"])
def test_values_match_scikit_learn_metrics(data, request):
    X, y = request.getfixturevalue(data)
    puma = PumaPatcher(LogisticRegression(C=0.1)).fit(X, y)
    proba = puma.predict_proba(X)
    ones = np.ones(len(y))
    C = _bound(puma, ["log_loss", "brier", "accuracy"], X, y)(puma._problem.theta_hat)
    np.testing.assert_allclose(float(C[0]), log_loss(y, proba), rtol=1e-10)
    brier = brier_score_loss(y, proba[:, 1] if proba.shape[1] == 2 else proba,
                             sample_weight=ones)
    np.testing.assert_allclose(float(C[1]), brier, rtol=1e-10)
    # The smooth error rate: a softened indicator, within a few points of the 0-1 error.
    assert abs(float(C[2]) - (1 - accuracy_score(y, puma.predict(X)))) <= 0.03


def test_smooth_ece_tracks_binned_ece(breast_cancer):
    """Across models from over- to under-confident (inverse regularisation strength C
    from 1e-3 to 1e3, and MLPs trained for longer and longer), the smooth ECE ranks the
    models as the binned ECE does."""
    X, y = breast_cancer
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    train, test = order[:300], order[300:]
    smooth, binned = [], []
    models = [LogisticRegression(C=c, max_iter=5000) for c in np.logspace(-3, 3, 9)]
    models += [MLPClassifier((8,), max_iter=n, random_state=0) for n in (5, 20, 80, 400)]
    for est in models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            puma = PumaPatcher(est, criterion="ece").fit(
                X[train], y[train], eval_set=(X[test], y[test]))
        smooth.append(float(puma.criterion_before_[0]))
        binned.append(expected_calibration_error(y[test], puma.predict_proba(X[test])))
    rho = spearmanr(smooth, binned).statistic
    print(f"binned ECE {np.round(binned, 3)}; smooth {np.round(smooth, 3)}; Spearman {rho:.3f}")
    assert np.ptp(binned) > 0.05  # the models really differ in calibration
    assert rho >= 0.9


def test_fairness_criteria_by_hand(breast_cancer):
    X, y = breast_cancer
    groups = _groups(X)
    puma = PumaPatcher(LogisticRegression(C=0.05),
                       criterion=["demographic_parity", "equalized_odds"]).fit(
        X, y, groups=groups)
    p1 = puma.predict_proba(X)[:, 1]
    dp = abs(p1[groups == "a"].mean() - p1[groups == "b"].mean())
    tpr = abs(p1[(groups == "a") & (y == 1)].mean() - p1[(groups == "b") & (y == 1)].mean())
    fpr = abs(p1[(groups == "a") & (y == 0)].mean() - p1[(groups == "b") & (y == 0)].mean())
    assert puma.criterion_names_ == ["demographic_parity", "equalized_odds[tpr]",
                                     "equalized_odds[fpr]"]
    # sqrt(d^2 + eps^2) smooths |d| by at most eps = 1e-3.
    np.testing.assert_allclose(puma.criterion_before_, [dp, tpr, fpr], atol=1e-3)


def test_equalized_odds_leaves_out_a_group_with_no_point_of_an_outcome(breast_cancer):
    """Evaluation points where group "b" has no positive: its true-positive rate does
    not exist, and was read as 0 (a made-up gap of group "a"'s whole rate).  The row
    compares no two groups: zero, with a warning; the false-positive row is unchanged."""
    X, y = breast_cancer
    groups = _groups(X)
    rows = ~((groups == "b") & (y == 1))
    with pytest.warns(PumaWarning, match=r"group\(s\) \['b'\] have no evaluation point "
                                         r"labelled 1, so no true-positive rate"):
        puma = PumaPatcher(LogisticRegression(C=0.05), criterion="equalized_odds").fit(
            X, y, groups=groups, eval_set=(X[rows], y[rows], groups[rows]))
    p1 = puma.predict_proba(X[rows])[:, 1]
    g, t = groups[rows], y[rows]
    fpr = abs(p1[(g == "a") & (t == 0)].mean() - p1[(g == "b") & (t == 0)].mean())
    assert p1[(g == "a") & (t == 1)].mean() > 0.5  # the gap the old rows made up
    np.testing.assert_allclose(puma.criterion_before_, [0.0, fpr], atol=1e-3)


def test_repeated_criterion_names_are_numbered(breast_cancer):
    X, y = breast_cancer
    puma = PumaPatcher(criterion=["loss", "loss", lambda out, y: out[:, 1].mean(),
                                  lambda out, y: out[:, 0].mean()]).fit(X, y)
    assert puma.criterion_names_ == ["loss", "loss_2", "<lambda>", "<lambda>_2"]
    assert len(set(puma.get_feature_names_out())) == len(puma.get_feature_names_out())
    named = lambda out, y: out[:, 1].mean()  # noqa: E731
    named.__name__ = "loss_2"  # a given name that a numbering would repeat
    puma = PumaPatcher(criterion=[named, "loss", "loss"]).fit(X, y)
    assert puma.criterion_names_ == ["loss_2", "loss", "loss_3"]


def test_groups_reach_the_criterion_through_eval_set_and_pipeline(breast_cancer):
    X, y = breast_cancer
    groups = _groups(X)
    direct = PumaPatcher(criterion="demographic_parity").fit(X, y, groups=groups)
    # An eval_set carries its own groups; here the same rows, so the same figure.
    evaluated = PumaPatcher(criterion="demographic_parity").fit(
        X, y, groups=groups[::-1], eval_set=(X, y, groups))
    np.testing.assert_allclose(evaluated.criterion_before_, direct.criterion_before_)
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(
            StandardScaler(),
            PumaPatcher(criterion="demographic_parity").set_fit_request(groups=True))
        pipe.fit(X, y, groups=groups)
    np.testing.assert_allclose(pipe[-1].criterion_before_, direct.criterion_before_,
                               rtol=1e-6)


def test_a_torch_callable_is_a_criterion(breast_cancer):
    X, y = breast_cancer
    groups = _groups(X)

    def positive_rate_gap(output, y, groups):
        a = torch.as_tensor(groups == "a")
        return output[a, 1].mean() - output[~a, 1].mean()

    def squared_confidence(output, y, sample_weight):
        return torch.stack([(sample_weight * output[:, 0] ** 2).mean(),
                            (sample_weight * output[:, 1] ** 2).mean()])

    puma = PumaPatcher(criterion=[positive_rate_gap, squared_confidence, "log_loss"]).fit(
        X, y, groups=groups)
    p = puma.predict_proba(X)
    assert puma.criterion_names_ == ["positive_rate_gap", "squared_confidence[0]",
                                     "squared_confidence[1]", "log_loss"]
    expected = [p[groups == "a", 1].mean() - p[groups == "b", 1].mean(),
                (p[:, 0] ** 2).mean(), (p[:, 1] ** 2).mean(), log_loss(y, p)]
    np.testing.assert_allclose(puma.criterion_before_, expected, rtol=1e-8)
    assert puma.values_.shape == (len(X), 4)
    # A patch protects a callable's rows like any other.
    patched = PumaPatcher(criterion=positive_rate_gap, remove=0.05, delta=0.01).fit(
        X, y, groups=groups)
    assert patched.criterion_after_[0] - patched.criterion_before_[0] <= 0.01 + 1e-9


def test_criterion_errors(breast_cancer, wine):
    X, y = breast_cancer
    with pytest.raises(ValueError, match="needs the sensitive group of each point"):
        PumaPatcher(criterion="demographic_parity").fit(X, y)
    with pytest.raises(ValueError, match="groups must hold one group label per row"):
        PumaPatcher(criterion="demographic_parity").fit(X, y, groups=[0, 1])
    with pytest.raises(ValueError, match="only 1 group"):
        PumaPatcher(criterion="equalized_odds").fit(X, y, groups=np.zeros(len(y)))
    Xw, yw = wine
    with pytest.raises(ValueError, match="defined for binary classifiers"):
        PumaPatcher(criterion="demographic_parity").fit(Xw, yw, groups=_groups(Xw))
    with pytest.raises(TypeError, match="must return a torch tensor"):
        PumaPatcher(criterion=lambda output, y: 0.5).fit(X, y)
    with pytest.raises(ValueError, match="'ece' applies to classifiers only"):
        PumaPatcher(Ridge(), criterion="ece").fit(X, y.astype(float))
    with pytest.raises(ValueError, match="eval_set must be a tuple"):
        PumaPatcher().fit(X, y, eval_set=(X, y, y, y))
    assert set(CRITERION_NAMES) >= {"brier", "ece", "accuracy", "demographic_parity",
                                    "equalized_odds"}
