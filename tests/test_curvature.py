"""Curvature: Hessian-vector products and every iterative solver against exact ones."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from torch.func import jacrev

from sklearn_puma import NonConvexWarning, SolverWarning
from sklearn_puma import _autodiff as autodiff
from sklearn_puma._adapters import make_adapter
from sklearn_puma._autodiff import (
    gradient,
    hessian_matrix,
    hvp_function,
    output_loss_derivatives,
    quadratic_forms,
    weighted_grams,
)
from sklearn_puma._curvature import (
    CGInverse,
    ExactInverse,
    LissaInverse,
    LowRankInverse,
)


@pytest.mark.parametrize("d, m", [(5, 1), (5, 3), (12, 6), (13, 7), (40, 3)])
def test_gram_matrices_and_quadratic_forms_match_their_definitions(d, m, monkeypatch):
    # (5, 3), (13, 7) take the route through the d(d+1)/2 products of each row, the
    # others one product per matrix; with the operands capped at 2000 floats, 700 rows
    # span several row blocks on either route.
    monkeypatch.setattr(autodiff, "_OPERAND_FLOATS", 2000)
    monkeypatch.setattr(autodiff, "_CACHED_FLOATS", 2000)
    rng = np.random.default_rng(d * m)
    X = torch.as_tensor(rng.standard_normal((700, d)))
    W = torch.as_tensor(rng.standard_normal((700, m)))
    B = torch.as_tensor(rng.standard_normal((m, d, d)))  # not symmetric
    grams = torch.einsum("bj,ba,bc->jac", W, X, X)
    forms = torch.einsum("ba,jac,bc->bj", X, B, X)
    with torch.no_grad():
        assert torch.allclose(weighted_grams(X, W), grams, rtol=1e-12, atol=1e-10)
        assert torch.allclose(quadratic_forms(X, B), forms, rtol=1e-12, atol=1e-10)


@pytest.fixture(scope="module")
def small_mlp(wine):
    X, y = wine
    X = X[:, :5]
    est = MLPClassifier(hidden_layer_sizes=(6,), activation="tanh", alpha=0.1,
                        solver="lbfgs", max_iter=2000, tol=1e-10, random_state=0).fit(X, y)
    adapter = make_adapter(est)
    Xt, yt = adapter.encode_X(X), adapter.encode_y(y)
    s = torch.ones(len(X), dtype=torch.float64)
    H = hessian_matrix(adapter, adapter.theta, Xt, yt, s, len(X))
    return adapter, Xt, yt, s, H


def test_hvp_matches_explicit_hessian_and_finite_differences(small_mlp):
    adapter, X, y, s, H = small_mlp
    n, theta = len(X), adapter.theta
    hvp = hvp_function(adapter, theta, X, y, s, n)
    v = torch.as_tensor(np.random.default_rng(0).standard_normal(adapter.n_params))
    eps = 1e-5
    fd = (gradient(adapter, theta + eps * v, X, y, s, n)
          - gradient(adapter, theta - eps * v, X, y, s, n)) / (2 * eps)
    assert (hvp(v) - fd).norm() <= 1e-5 * fd.norm()
    assert (hvp(v) - H @ v).norm() <= 1e-10 * (H @ v).norm()


def test_gauss_newton_hvp_matches_brute_force(small_mlp):
    adapter, X, y, s, H = small_mlp
    n, theta = len(X), adapter.theta
    J = torch.stack([jacrev(lambda t: adapter.forward(t, X[i:i + 1])[0])(theta)
                     for i in range(n)])  # (n, K, p)
    _, D = output_loss_derivatives(adapter, adapter.forward(theta, X), y)
    penalty_H = torch.func.hessian(lambda t: adapter.penalty(t, n))(theta)
    G = torch.einsum("nkp,nkl,nlq->pq", J, D, J) / n + penalty_H
    v = torch.as_tensor(np.random.default_rng(1).standard_normal(adapter.n_params))
    gn = hvp_function(adapter, theta, X, y, s, n, gauss_newton=True)(v)
    assert (gn - G @ v).norm() <= 1e-10 * (G @ v).norm()
    assert torch.linalg.eigvalsh(G)[0] >= -1e-10  # positive semi-definite


def _cosines(solver, exact, B):
    A, E = solver.solve(B), exact.solve(B)
    return torch.nn.functional.cosine_similarity(A, E, dim=0)


@pytest.mark.parametrize("kind, threshold", [("cg", 0.99), ("lissa", 0.95),
                                             ("lowrank", 0.99)])
def test_iterative_solvers_match_exact(kind, threshold, small_mlp):
    adapter, X, y, s, H = small_mlp
    p = adapter.n_params
    eigvals = torch.linalg.eigvalsh(H)
    # Positive definite after damping, as "auto" would make it, and far from singular:
    # the Neumann series (LiSSA) needs as many terms as the damped condition number.
    damping = max(2 * -float(eigvals[0]), 0.05 * float(eigvals[-1]))
    exact = ExactInverse(H, damping=damping)
    hvp = hvp_function(adapter, adapter.theta, X, y, s, len(X))
    common = dict(dtype=torch.float64, device=torch.device("cpu"), damping=damping,
                  random_state=0)
    solver = {"cg": lambda: CGInverse(hvp, p, **common),
              "lissa": lambda: LissaInverse(hvp, p, **common),
              "lowrank": lambda: LowRankInverse(hvp, p, rank=p // 2, **common)}[kind]()
    # Right-hand sides as the core sees them: per-sample gradients.
    from sklearn_puma._autodiff import per_sample_grads

    B = per_sample_grads(adapter, adapter.theta, X[:8], y[:8]).T
    cos = _cosines(solver, exact, B)
    A, E = solver.solve(B), exact.solve(B)
    rel = float(((A - E).norm(dim=0) / E.norm(dim=0)).max())
    print(f"{kind}: cosine with exact min {cos.min():.4f}, relative error {rel:.2e} "
          f"(damping {damping:.3g})")
    assert cos.min() >= threshold
    # Not only the direction: the size too (a solver off by a factor fails here).
    # Low rank: half of the spectrum (rank p // 2) is discarded and only damped.
    assert rel <= {"cg": 1e-4, "lissa": 1e-3, "lowrank": 0.15}[kind]


def test_auto_damping_estimates_smallest_eigenvalue(small_mlp):
    """Away from the optimum a tanh net's Hessian is indefinite: "auto" must see it."""
    adapter, X, y, s, _ = small_mlp
    rng = np.random.default_rng(3)
    theta = adapter.theta + torch.as_tensor(rng.standard_normal(adapter.n_params))
    H = hessian_matrix(adapter, theta, X, y, s, len(X))
    true_min = float(torch.linalg.eigvalsh(H)[0])
    assert true_min < 0
    hvp = hvp_function(adapter, theta, X, y, s, len(X))
    with pytest.warns(NonConvexWarning, match="smallest eigenvalue"):
        cg = CGInverse(hvp, adapter.n_params, dtype=torch.float64,
                       device=torch.device("cpu"))
    with pytest.warns(NonConvexWarning, match=f"smallest eigenvalue {true_min:.3g}"):
        exact = ExactInverse(H, damping="auto")
    assert cg.min_eigenvalue == pytest.approx(true_min, rel=1e-3)
    assert cg.damping == pytest.approx(2 * -true_min, rel=1e-3)
    assert exact.damping == pytest.approx(2 * -true_min, rel=1e-12)


def test_cg_warns_with_its_residual(small_mlp):
    adapter, X, y, s, H = small_mlp
    hvp = hvp_function(adapter, adapter.theta, X, y, s, len(X))
    cg = CGInverse(hvp, adapter.n_params, dtype=torch.float64, device=torch.device("cpu"),
                   damping=1e-3, max_iter=2)
    with pytest.warns(SolverWarning, match="relative residual"):
        cg.solve(torch.ones(adapter.n_params, dtype=torch.float64))


def _pseudo_inverse(H):
    """The eigen-decomposition route's pseudo-inverse, by numpy (cut-off 1e-10 of the
    largest eigenvalue)."""
    return torch.as_tensor(np.linalg.pinv(H.numpy(), rcond=1e-10, hermitian=True))


def _hessian_of(estimator, X, y):
    adapter = make_adapter(estimator.fit(X, y))
    Xt, yt = adapter.encode_X(X), adapter.encode_y(y)
    s = torch.ones(len(X), dtype=torch.float64)
    return adapter, hessian_matrix(adapter, adapter.theta, Xt, yt, s, len(X))


@pytest.mark.parametrize("C", [1.0, np.inf])
def test_softmax_flat_directions_give_the_pseudo_inverse_by_cholesky(C, wine):
    """Multinomial logistic regression is flat along each class-shared offset of an
    unpenalised column (the intercept; every column without a penalty): the adapter
    names those directions, and the Cholesky route with them deflated must equal the
    pseudo-inverse."""
    X, y = wine
    adapter, H = _hessian_of(LogisticRegression(C=C, max_iter=5000), X[:, :4], y)
    flat = adapter.flat_directions()
    assert flat.shape == (adapter.n_params, 1 if np.isfinite(C) else 5)
    np.testing.assert_allclose(flat.T @ flat, np.eye(flat.shape[1]), atol=1e-12)
    # The adapter's claim, checked on the Hessian itself: H F = 0.
    assert (H @ flat).norm() <= 1e-12 * H.norm()
    inverse = ExactInverse(H, flat=flat)
    assert inverse.method == "cholesky"
    expected = _pseudo_inverse(H)
    assert (inverse.matrix() - expected).norm() <= 1e-8 * expected.norm()
    B = torch.as_tensor(np.random.default_rng(0).standard_normal((adapter.n_params, 3)))
    assert (inverse.solve(B) - expected @ B).norm() <= 1e-8 * (expected @ B).norm()
    # Without the flat directions Cholesky is refused and the eigen-decomposition
    # finds them numerically: the same pseudo-inverse.
    numeric = ExactInverse(H)
    assert numeric.method == "eigh"
    assert (numeric.matrix() - expected).norm() <= 1e-8 * expected.norm()


def test_cholesky_refused_for_an_unknown_flat_direction(diabetes):
    """A duplicated feature makes least squares flat along a direction no adapter
    knows: the certificate must refuse Cholesky, and the eigen-decomposition drop it."""
    X, y = diabetes
    X = np.column_stack([X, X[:, 0]])
    adapter, H = _hessian_of(LinearRegression(), X, y)
    assert adapter.flat_directions() is None
    inverse = ExactInverse(H)
    assert inverse.method == "eigh"
    expected = _pseudo_inverse(H)
    assert (inverse.matrix() - expected).norm() <= 1e-8 * expected.norm()


def test_damped_cholesky_equals_the_damped_eigen_decomposition(small_mlp):
    adapter, X, y, s, H = small_mlp
    damping = 2 * max(-float(torch.linalg.eigvalsh(H)[0]), 0.0) + 0.1
    inverse = ExactInverse(H, damping=damping)
    assert inverse.method == "cholesky"
    expected = torch.linalg.inv(H + damping * torch.eye(len(H), dtype=H.dtype))
    assert (inverse.matrix() - expected).norm() <= 1e-10 * expected.norm()
    assert inverse.damping == damping
