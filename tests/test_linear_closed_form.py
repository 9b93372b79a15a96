"""The closed-form linear core against the autodiff route it replaces.

For models linear in their parameters, criterion Jacobians and Hessians come from output
derivatives and Gram matrices of the design, and leave-one-out values from quadratic
forms of each row (``_linear``).  The ground truth here is torch.func over theta
(``jacrev``, ``hessian``) and the per-point leave-one-out steps of
``loo_parameter_changes``: they must agree to 1e-10 (relative) on every linear adapter.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    Ridge,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.neural_network import MLPClassifier
from torch.func import hessian, jacrev

import sklearn_puma._influence as influence
from sklearn_puma import PumaPatcher
from sklearn_puma._autodiff import hessian_matrix, objective
from sklearn_puma._linear import criterion_derivatives, criterion_jacobian


def _cases(breast_cancer, wine, diabetes):
    Xb, yb = breast_cancer[0][:160, :6], breast_cancer[1][:160]
    Xw, yw = wine[0][:, :5], wine[1]
    Xr, yr = diabetes[0][:160, :5], diabetes[1][:160]
    return {
        "lr-binary": (LogisticRegression(C=0.5, tol=1e-12, max_iter=5000), Xb, yb,
                      ["loss", "brier", "per_class_loss"]),
        "lr-multinomial": (LogisticRegression(tol=1e-12, max_iter=5000), Xw, yw,
                           ["loss", "log_loss", "accuracy", "per_class_loss"]),
        "lr-unpenalised-no-intercept": (
            LogisticRegression(C=10.0, fit_intercept=False, tol=1e-12, max_iter=5000),
            Xw, yw, ["loss", "brier"]),
        "ridge": (Ridge(alpha=1.0), Xr, yr, ["loss", "squared_error"]),
        "ridge-2-outputs": (Ridge(alpha=1.0), Xr, np.column_stack([yr, Xr[:, 0] - yr]),
                            ["loss", "squared_error"]),
        "linear-regression": (LinearRegression(), Xr, yr, ["squared_error"]),
        "sgd-classifier": (SGDClassifier(loss="log_loss", alpha=0.01, random_state=0,
                                         max_iter=2000, tol=1e-8), Xw, yw,
                           ["loss", "log_loss", "per_class_loss"]),
        "sgd-regressor": (SGDRegressor(alpha=0.01, random_state=0, max_iter=2000,
                                       tol=1e-8), Xr, yr, ["loss"]),
        "mlp-last-layer": (MLPClassifier(hidden_layer_sizes=(4,), alpha=0.1,
                                         solver="lbfgs", max_iter=500, random_state=0),
                           Xb, yb, ["loss", "log_loss", "brier"]),
    }


CASES = ["lr-binary", "lr-multinomial", "lr-unpenalised-no-intercept", "ridge",
         "ridge-2-outputs", "linear-regression", "sgd-classifier", "sgd-regressor",
         "mlp-last-layer"]


def _fitted(case, breast_cancer, wine, diabetes, criterion):
    estimator, X, y, criteria = _cases(breast_cancer, wine, diabetes)[case]
    parameters = "last_layer" if case == "mlp-last-layer" else "all"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SGD's optimality gap is not what is tested
        puma = PumaPatcher(estimator, criterion=criterion or criteria,
                           parameters=parameters).fit(X, y)
    return puma, criteria


def _relative(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("case", CASES)
def test_derivatives_equal_autodiff(case, breast_cancer, wine, diabetes):
    puma, _ = _fitted(case, breast_cancer, wine, diabetes, None)
    problem = puma._problem
    assert problem.adapter.linear_in_params
    criterion = puma._bind_criterion(keep=np.ones(problem.n, dtype=bool))
    theta = problem.theta_hat
    assert _relative(criterion_jacobian(criterion, theta), jacrev(criterion)(theta)) < 1e-10
    G, H = criterion_derivatives(criterion, theta)
    assert _relative(G, jacrev(criterion)(theta)) < 1e-10
    assert _relative(H, hessian(criterion)(theta)) < 1e-10
    # With the training Hessian offered for reuse (the default criterion's shortcut).
    G2, H2 = criterion_derivatives(criterion, theta, problem.data_hessian(theta))
    assert _relative(H2, hessian(criterion)(theta)) < 1e-10
    J = objective(problem.adapter, problem.X, problem.y, problem.s, problem.n)
    assert _relative(hessian_matrix(problem.adapter, theta, problem.X, problem.y,
                                    problem.s, problem.n), hessian(J)(theta)) < 1e-10
    if problem.fused_newton:
        # A Newton step's one pass (the patch's polish), away from the optimum, on
        # uneven weights: gradient, objective and Hessian of the objective the patch
        # minimises (tilted or not), each against autograd.
        weights = problem.s * torch.linspace(0.0, 2.0, problem.n, dtype=problem.s.dtype)
        point = theta + 0.1 * torch.linspace(-1.0, 1.0, len(theta), dtype=theta.dtype)
        J_w = objective(problem.adapter, problem.X, problem.y, weights, problem.n,
                        tilt=problem._patch_tilt)
        g, value, H = problem.grad(point, weights, with_hessian=True)
        assert _relative(g, jacrev(J_w)(point)) < 1e-10
        assert abs(value - float(J_w(point))) <= 1e-12 * abs(float(J_w(point)))
        assert _relative(H, hessian(J_w)(point)) < 1e-10


@pytest.mark.parametrize("case", CASES)
def test_loo_values_equal_autodiff(case, breast_cancer, wine, diabetes, monkeypatch):
    # Budget 0: both routes take the criterion to second order (on these small sets the
    # default evaluates it exactly at every leave-one-out model instead).
    monkeypatch.setattr(influence, "_EXACT_CRITERION_BUDGET", 0)
    puma, _ = _fitted(case, breast_cancer, wine, diabetes, None)
    problem = puma._problem
    criterion = puma._bind_criterion(keep=np.ones(problem.n, dtype=bool))
    args = (problem, problem.inverse_hat, criterion, problem.theta_hat, problem.X,
            problem.y, problem.s)
    closed = influence.loo_values(*args, closed_form=True)
    reference = influence.loo_values(*args, closed_form=False)
    assert closed.shape == reference.shape
    assert _relative(closed, reference) < 1e-10


def test_closed_form_values_track_refits(breast_cancer):
    """The second-order closed form is what fit() uses past the exact budget: its values
    match leave-one-out retraining as the exact evaluation does."""
    X, y = breast_cancer[0][:200], breast_cancer[1][:200]
    make = lambda: LogisticRegression(C=0.5, tol=1e-12, max_iter=5000)  # noqa: E731
    old = influence._EXACT_CRITERION_BUDGET
    try:
        influence._EXACT_CRITERION_BUDGET = 0
        values = PumaPatcher(make()).fit(X, y).values_
    finally:
        influence._EXACT_CRITERION_BUDGET = old
    full = make().fit(X, y)
    rows = np.random.default_rng(0).choice(len(X), 25, replace=False)

    def training_loss(model):
        p = np.clip(model.predict_proba(X)[np.arange(len(X)), y], 1e-300, None)
        return -np.log(p).mean()

    loo = []
    for i in rows:
        keep = np.arange(len(X)) != i
        loo.append(training_loss(make().fit(X[keep], y[keep])) - training_loss(full))
    loo = np.asarray(loo)
    assert np.corrcoef(values[rows], loo)[0, 1] > 0.99
    slope = np.polyfit(loo, values[rows], 1)[0]
    assert 0.9 < slope < 1.1


def test_encoded_training_data_shares_memory():
    """Valuing adds no copy of a float64 X (it can be most of the memory)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4))
    y = (X[:, 0] + rng.standard_normal(300) > 0).astype(int)
    puma = PumaPatcher().fit(X, y)
    assert np.shares_memory(puma._problem.X.numpy(), X)
    assert torch.equal(puma._problem.X, torch.from_numpy(X))


def test_remembered_outputs_are_never_stale(breast_cancer, wine, diabetes):
    """``adapter.outputs`` reuses the outputs at one parameter vector across a patch's
    reads; any in-place change of the parameters, the data or the returned outputs (a
    user's criterion writing into them) must give a fresh forward pass, and the kept
    outputs never travel with a pickle."""
    import pickle

    puma, _ = _fitted("lr-multinomial", breast_cancer, wine, diabetes, None)
    adapter, X = puma._problem.adapter, puma._problem.X
    theta = puma._problem.theta_hat.clone()
    first = adapter.outputs(theta, X)
    assert torch.equal(first, adapter.forward(theta, X))
    assert adapter.outputs(theta, X) is first  # remembered
    first.zero_()  # a caller that writes into them
    assert torch.equal(adapter.outputs(theta, X), adapter.forward(theta, X))
    theta.add_(0.5)  # the parameters changed in place
    assert torch.equal(adapter.outputs(theta, X), adapter.forward(theta, X))
    X2 = X.clone()
    adapter.outputs(theta, X2)
    X2.mul_(2.0)  # the data changed in place
    assert torch.equal(adapter.outputs(theta, X2), adapter.forward(theta, X2))
    assert "_memo" not in pickle.loads(pickle.dumps(adapter)).__dict__
    with torch.enable_grad():  # outputs carrying a graph are not kept
        t = theta.clone().requires_grad_()
        adapter.outputs(t, X)
        assert all(entry[0] is not t for entry in adapter.__dict__.get("_memo", ()))
