"""Adapters against independent ground truths.

* per-sample losses against the estimator's own predict_proba / predict;
* the mean-form objective against the estimator's optimality (its gradient vanishes at
  the fitted parameters of a converged solver);
* gradients and the Hessian against central finite differences;
* writing parameters back against the estimator's own predictions.
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
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.neural_network._base import LOSS_FUNCTIONS
from sklearn.tree import DecisionTreeClassifier

from sklearn_puma import UnsupportedEstimatorError
from sklearn_puma._adapters import make_adapter
from sklearn_puma._autodiff import (
    gradient,
    hessian_matrix,
    objective,
    penalty_curvature,
    per_sample_grads_times,
)

TIGHT_LR = dict(tol=1e-12, max_iter=10_000)


def _classification(wine, breast_cancer, kind):
    if kind == "binary":
        X, y = breast_cancer
        return X[:150, :6], y[:150]
    X, y = wine
    return X[:, :5], y


def _multilabel(breast_cancer):
    X, y = breast_cancer
    X = X[:150, :6]
    return X, np.column_stack([y[:150], (X[:, 0] > 0).astype(int)])


def _mlp(cls, activation="tanh", **kw):
    return lambda: cls(hidden_layer_sizes=(5,), activation=activation, alpha=0.01,
                       solver="lbfgs", max_iter=300, random_state=0, **kw)


def _regression(diabetes, outputs):
    X, y = diabetes
    X, y = X[:200], y[:200]
    if outputs == 2:
        y = np.column_stack([y, X[:, 0] - 0.5 * y])
    return X, y


CASES = {
    "lr-binary": (lambda d: _classification(*d[:2], "binary"),
                  lambda: LogisticRegression(C=0.7, **TIGHT_LR), True),
    "lr-binary-no-intercept": (lambda d: _classification(*d[:2], "binary"),
                               lambda: LogisticRegression(fit_intercept=False, **TIGHT_LR),
                               True),
    "lr-binary-class-weight": (lambda d: _classification(*d[:2], "binary"),
                               lambda: LogisticRegression(class_weight="balanced",
                                                          **TIGHT_LR), True),
    "lr-multinomial": (lambda d: _classification(*d[:2], "multi"),
                       lambda: LogisticRegression(C=0.3, **TIGHT_LR), True),
    "lr-multinomial-unpenalised": (lambda d: _classification(*d[:2], "multi"),
                                   lambda: LogisticRegression(C=np.inf, **TIGHT_LR), False),
    "ridge": (lambda d: _regression(d[2], 1), lambda: Ridge(alpha=3.0), True),
    "ridge-2-outputs": (lambda d: _regression(d[2], 2), lambda: Ridge(alpha=3.0), True),
    "ridge-no-intercept": (lambda d: _regression(d[2], 1),
                           lambda: Ridge(alpha=1.0, fit_intercept=False), True),
    "linear-regression": (lambda d: _regression(d[2], 1), LinearRegression, True),
    "sgd-classifier-binary": (lambda d: _classification(*d[:2], "binary"),
                              lambda: SGDClassifier(loss="log_loss", random_state=0), False),
    "sgd-classifier-ovr": (lambda d: _classification(*d[:2], "multi"),
                           lambda: SGDClassifier(loss="log_loss", random_state=0), False),
    "sgd-regressor": (lambda d: _regression(d[2], 1),
                      lambda: SGDRegressor(random_state=0), False),
    "mlp-binary-tanh": (lambda d: _classification(*d[:2], "binary"),
                        _mlp(MLPClassifier), False),
    "mlp-multiclass-relu": (lambda d: _classification(*d[:2], "multi"),
                            _mlp(MLPClassifier, "relu"), False),
    "mlp-multilabel-logistic": (lambda d: _multilabel(d[1]),
                                _mlp(MLPClassifier, "logistic"), False),
    "mlp-regressor-2-outputs-identity": (lambda d: _regression(d[2], 2),
                                         _mlp(MLPRegressor, "identity"), False),
    "mlp-regressor-tanh": (lambda d: _regression(d[2], 1), _mlp(MLPRegressor), False),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, wine, breast_cancer, diabetes):
    data, make, converges = CASES[request.param]
    X, y = data((wine, breast_cancer, diabetes))
    rng = np.random.default_rng(0)
    sample_weight = rng.uniform(0.5, 2.0, len(X))
    est = make().fit(X, y, sample_weight=sample_weight)
    adapter = make_adapter(est)
    Xt, yt = adapter.encode_X(X), adapter.encode_y(y)
    s = adapter.training_weights(y, sample_weight)
    return request.param, est, adapter, X, y, Xt, yt, s, converges


def test_sample_loss_matches_estimator(case):
    name, est, adapter, X, y, Xt, yt, s, _ = case
    out = adapter.forward(adapter.theta, Xt)
    loss = adapter.sample_loss(out, yt).numpy()
    if isinstance(est, (MLPClassifier, MLPRegressor)):
        expected = _mlp_sample_losses(est, X, y)
        np.testing.assert_allclose(loss, expected, rtol=1e-8, atol=1e-12)
        # The whole objective, as scikit-learn's own loss functions compute it.
        name = est.loss
        prob = est.predict_proba(X) if adapter.is_classifier else est.predict(X)
        target = y
        if adapter.is_classifier:
            target = est._label_binarizer.transform(y)
            if est.out_activation_ == "logistic":
                name = "binary_log_loss"
                prob = prob if adapter.multilabel else prob[:, 1:]
        sk_loss = LOSS_FUNCTIONS[name](target.reshape(len(X), -1), prob.reshape(len(X), -1),
                                       sample_weight=s.numpy())
        sk_loss += 0.5 * est.alpha * sum((c**2).sum() for c in est.coefs_) / s.sum().item()
        J = objective(adapter, Xt, yt, s, len(X))(adapter.theta).item()
        # Mean form divides by n, scikit-learn by the weight sum.
        assert abs(J * len(X) / s.sum().item() - sk_loss) <= 1e-8 * abs(sk_loss)
    elif adapter.is_classifier:
        # The trained loss in numpy, from the estimator's own decision function.
        d = est.decision_function(X)
        idx = np.searchsorted(est.classes_, y)
        if d.ndim == 1:  # binary: one logit for classes_[1]
            expected = np.logaddexp(0, -np.where(idx == 1, 1.0, -1.0) * d)
        elif isinstance(est, SGDClassifier):  # one-vs-rest: sum of binary log-losses
            sign = np.where(np.arange(d.shape[1]) == idx[:, None], 1.0, -1.0)
            expected = np.logaddexp(0, -sign * d).sum(axis=1)
        else:  # multinomial
            expected = np.logaddexp.reduce(d, axis=1) - d[np.arange(len(y)), idx]
        np.testing.assert_allclose(loss, expected, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(adapter.log_proba(out).exp().numpy(),
                                   est.predict_proba(X), rtol=1e-7, atol=1e-8)
    else:
        pred = est.predict(X).reshape(len(X), -1)
        scale = 0.5 if isinstance(est, SGDRegressor) else 1.0
        expected = scale * ((y.reshape(len(X), -1) - pred) ** 2).sum(axis=1)
        np.testing.assert_allclose(loss, expected, rtol=1e-8, atol=1e-10)


def _mlp_sample_losses(est, X, y):
    """Per-sample losses in numpy from the estimator's own predictions."""
    if isinstance(est, MLPRegressor):
        return 0.5 * ((y.reshape(len(X), -1) - est.predict(X).reshape(len(X), -1)) ** 2
                      ).mean(axis=1)
    proba = est.predict_proba(X)
    if est._label_binarizer.y_type_ == "multilabel-indicator":
        return -(y * np.log(proba) + (1 - y) * np.log1p(-proba)).sum(axis=1)
    return -np.log(proba[np.arange(len(y)), np.searchsorted(est.classes_, y)])


def test_objective_is_stationary_at_fit(case):
    """Penalty scaling and weights are right iff the converged fit is a stationary point."""
    name, est, adapter, X, y, Xt, yt, s, converges = case
    if not converges:
        pytest.skip("stochastic or unpenalised solver: no tight optimum to test against")
    g = gradient(adapter, adapter.theta, Xt, yt, s, len(X))
    # Scale: the gradient of the data term alone (far from zero at the optimum).
    J_data = objective(adapter, Xt, yt, s, len(X))
    g_data = torch.func.grad(lambda t: J_data(t) - adapter.penalty(t, len(X)))(adapter.theta)
    assert g.norm() <= 1e-5 * max(g_data.norm(), 1e-3), (float(g.norm()), float(g_data.norm()))


def test_penalty_is_the_weighted_sum_of_squares_the_closed_forms_assume(case):
    """penalty_curvature's ``diag(2 c)`` against torch.func's full Hessian of the
    penalty, at a point away from the fit (a penalty that is not a weighted sum of
    squares has off-diagonal or theta-dependent curvature and fails here)."""
    name, est, adapter, X, y, Xt, yt, s, _ = case
    n = len(X)
    theta = adapter.theta + torch.as_tensor(
        np.random.default_rng(2).standard_normal(adapter.n_params))
    H = torch.func.hessian(lambda t: adapter.penalty(t, n))(theta)
    diagonal = penalty_curvature(adapter, theta, n)
    torch.testing.assert_close(torch.diag(diagonal), H, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(adapter.penalty(theta, n), 0.5 * (diagonal * theta**2).sum(),
                               rtol=1e-12, atol=1e-15)


def test_gradient_and_hessian_match_finite_differences(case):
    name, est, adapter, X, y, Xt, yt, s, _ = case
    n = len(X)
    J = objective(adapter, Xt, yt, s, n)
    rng = np.random.default_rng(1)
    theta = adapter.theta + 0.1 * torch.as_tensor(rng.standard_normal(adapter.n_params))
    g = gradient(adapter, theta, Xt, yt, s, n)
    H = hessian_matrix(adapter, theta, Xt, yt, s, n)
    eps = 1e-5
    eye = torch.eye(adapter.n_params, dtype=torch.float64)
    g_fd = torch.stack([(J(theta + eps * e) - J(theta - eps * e)) / (2 * eps) for e in eye])
    H_fd = torch.stack([
        (gradient(adapter, theta + eps * e, Xt, yt, s, n)
         - gradient(adapter, theta - eps * e, Xt, yt, s, n)) / (2 * eps)
        for e in eye
    ])
    assert (g - g_fd).norm() <= 1e-5 * g.norm()
    assert (H - H_fd).norm() <= 1e-5 * H.norm()
    # Hessian-vector products against finite differences of the gradient along v.
    v = torch.as_tensor(rng.standard_normal(adapter.n_params))
    hv_fd = (gradient(adapter, theta + eps * v, Xt, yt, s, n)
             - gradient(adapter, theta - eps * v, Xt, yt, s, n)) / (2 * eps)
    assert (H @ v - hv_fd).norm() <= 1e-5 * hv_fd.norm()


def test_per_sample_gradient_products_match_autodiff(case):
    # For linear models the product skips the per-sample gradients; here it meets them
    # computed by autodiff of each sample's loss.
    name, est, adapter, X, y, Xt, yt, s, _ = case
    rng = np.random.default_rng(3)
    theta = adapter.theta + 0.1 * torch.as_tensor(rng.standard_normal(adapter.n_params))
    S = torch.as_tensor(rng.standard_normal((adapter.n_params, 3)))

    def loss_one(t, x, target):
        return adapter.sample_loss(adapter.forward(t, x[None]), target[None])[0]

    G = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(
        theta, Xt[:50], yt[:50])
    torch.testing.assert_close(per_sample_grads_times(adapter, theta, Xt[:50], yt[:50], S),
                               G @ S, rtol=1e-10, atol=1e-12)


def test_closed_form_output_derivatives_match_autodiff(case):
    # The closed forms (softmax, sigmoid, squared error) replace a per-sample autodiff
    # Hessian in the Gram-matrix Hessian; here they meet that autodiff route directly.
    name, est, adapter, X, y, Xt, yt, s, _ = case
    rng = np.random.default_rng(2)
    out = adapter.forward(adapter.theta, Xt[:50])
    out = out + torch.as_tensor(rng.standard_normal(out.shape))
    closed_form = adapter.output_derivatives(out, yt[:50])
    assert closed_form is not None, f"{name}: no closed form for {adapter.loss}"

    def loss_of_output(f, target):
        return adapter.sample_loss(f[None], target[None])[0]

    first = torch.func.vmap(torch.func.grad(loss_of_output))(out, yt[:50])
    second = torch.func.vmap(torch.func.hessian(loss_of_output))(out, yt[:50])
    torch.testing.assert_close(closed_form[0], first, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed_form[1], second, rtol=1e-10, atol=1e-12)


def _data_term_by_autograd(adapter, theta, Xt, yt, s, n):
    leaf = theta.clone().requires_grad_(True)
    value = (s * adapter.sample_loss(adapter.forward(leaf, Xt), yt)).sum() / n
    return torch.autograd.grad(value, leaf)[0], float(value.detach())


def test_written_out_backpropagation_matches_autograd(case):
    """An adapter's back-propagation written out (what a network's polish reads at
    every point) against autograd of its forward pass and loss, weights included, at a
    point away from the fit; None where the adapter has none."""
    name, est, adapter, X, y, Xt, yt, s, _ = case
    theta = adapter.theta + 0.3 * torch.as_tensor(
        np.random.default_rng(4).standard_normal(adapter.n_params))
    written_out = adapter.backpropagate(theta, Xt, yt, s, len(X))
    if not name.startswith("mlp"):
        assert written_out is None
        return
    g, value = written_out
    g_auto, value_auto = _data_term_by_autograd(adapter, theta, Xt, yt, s, len(X))
    torch.testing.assert_close(g, g_auto, rtol=1e-10,
                               atol=1e-13 * float(g_auto.abs().max()))
    assert float(value) == pytest.approx(value_auto, rel=1e-12)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_deep_backpropagation_matches_finite_differences(activation, wine):
    """Two hidden layers, each activation: the written-out gradient against central
    finite differences of the data term (relu's kinks are measure-zero at a random
    point)."""
    X, y = wine
    X = (X - X.mean(0)) / X.std(0)
    est = MLPClassifier((6, 4), activation=activation, max_iter=50, random_state=0)
    with pytest.warns(Warning):  # 50 Adam epochs: not converged, and need not be
        est.fit(X, y)
    adapter = make_adapter(est)
    Xt, yt = adapter.encode_X(X), adapter.encode_y(y)
    s = torch.as_tensor(np.random.default_rng(5).uniform(0.5, 2.0, len(X)))
    g, _ = adapter.backpropagate(adapter.theta, Xt, yt, s, len(X))

    def value(t):
        return float(adapter.backpropagate(t, Xt, yt, s, len(X))[1])

    eps = 1e-6
    eye = torch.eye(adapter.n_params, dtype=torch.float64)
    g_fd = torch.tensor([(value(adapter.theta + eps * e) - value(adapter.theta - eps * e))
                         / (2 * eps) for e in eye], dtype=torch.float64)
    assert float((g - g_fd).norm()) <= 1e-6 * float(g.norm())


def test_build_writes_parameters_back(case):
    name, est, adapter, X, y, Xt, yt, s, _ = case
    rng = np.random.default_rng(2)
    theta = adapter.theta + torch.as_tensor(rng.standard_normal(adapter.n_params))
    patched = adapter.build(theta)
    assert type(patched) is type(est)
    assert patched is not est
    np.testing.assert_allclose(make_adapter(patched).theta.numpy(), theta.numpy())
    out = adapter.forward(theta, Xt).numpy()
    if isinstance(patched, MLPClassifier) and adapter.multilabel:
        np.testing.assert_allclose(patched.predict_proba(X), 1 / (1 + np.exp(-out)),
                                   rtol=1e-10)
    elif adapter.is_classifier:
        np.testing.assert_allclose(patched.predict_proba(X),
                                   adapter.log_proba(torch.as_tensor(out)).exp().numpy(),
                                   rtol=1e-10, atol=1e-12)
    else:
        np.testing.assert_allclose(patched.predict(X).reshape(len(X), -1), out, rtol=1e-10)
    # The original estimator is untouched.
    np.testing.assert_allclose(make_adapter(est).theta.numpy(), adapter.theta.numpy())


@pytest.mark.parametrize(
    "est, match",
    [
        (DecisionTreeClassifier(), "DecisionTreeClassifier is not supported"),
        (LogisticRegression(l1_ratio=1.0, solver="saga"), "l1_ratio=1.0 has an L1 part"),
        pytest.param(LogisticRegression(penalty="l1", solver="saga"),
                     "penalty='l1' has an L1 part",  # the deprecated spelling, still in use
                     marks=pytest.mark.filterwarnings("ignore:'penalty' was deprecated")),
        (LogisticRegression(solver="liblinear"), "liblinear"),
        (SGDClassifier(loss="hinge"), "log_loss"),
        (SGDRegressor(loss="huber"), "squared_error"),
        (Ridge(positive=True), "bound constraints"),
    ],
)
def test_unsupported_estimators_are_named(est, match, breast_cancer):
    X, y = breast_cancer
    est.fit(X[:100], y[:100])
    with pytest.raises(UnsupportedEstimatorError, match=match) as info:
        make_adapter(est)
    assert "LogisticRegression" in str(info.value)  # the supported list is shown


@pytest.mark.parametrize("est", [
    MLPClassifier((8,), early_stopping=True, max_iter=50, random_state=0),
    SGDClassifier(loss="log_loss", early_stopping=True, random_state=0),
    SGDRegressor(early_stopping=True, random_state=0),
])
def test_early_stopping_is_refused(est, breast_cancer):
    """Early stopping trains on a random 90% of the rows; the other 10% never trained
    the model, yet would be valued and patched as if they had."""
    X, y = breast_cancer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    with pytest.raises(UnsupportedEstimatorError, match="early_stopping=True trained it "
                                                        "on a random 90% of the rows"):
        make_adapter(est)


def test_early_stopping_is_ignored_by_lbfgs(breast_cancer):
    X, y = breast_cancer
    est = MLPClassifier((4,), solver="lbfgs", early_stopping=True, max_iter=50,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    assert make_adapter(est).n_params == X.shape[1] * 4 + 4 + 4 + 1
