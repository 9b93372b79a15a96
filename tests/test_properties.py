"""Properties over generated inputs (hypothesis), each against a ground truth that does
not use the library: refits by scikit-learn, the input's own permutation.  Bounded to a
few examples each, so the file runs in well under a minute."""

import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402

from sklearn_puma import PumaPatcher  # noqa: E402

BOUNDED = settings(max_examples=25, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tables(draw, classification=True):
    """A small dense table: 20-60 rows, 1-5 features on scales from 1e-2 to 1e2, and
    labels that are not separable (a noisy linear rule)."""
    n = draw(st.integers(20, 60))
    p = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-2, 2, size=p)
    X = rng.standard_normal((n, p)) * scales
    signal = (X / scales) @ rng.standard_normal(p) + rng.standard_normal(n)
    if not classification:
        return X, signal
    y = (signal > np.median(signal)).astype(int)
    return X, y


def _params(model):
    return np.r_[np.ravel(model.coef_), np.atleast_1d(model.intercept_)]


@BOUNDED
@given(tables(), st.randoms(use_true_random=False))
def test_values_follow_a_permutation_of_the_rows(table, random):
    X, y = table
    order = np.array(random.sample(range(len(y)), len(y)))
    values = PumaPatcher(LogisticRegression()).fit(X, y).values_
    permuted = PumaPatcher(LogisticRegression()).fit(X[order], y[order]).values_
    np.testing.assert_allclose(permuted, values[order], rtol=1e-6,
                               atol=1e-9 * np.abs(values).max())


@BOUNDED
@given(tables(), st.data())
def test_a_patch_is_the_refit_on_its_sample_weight(table, data):
    """Any removal (leaving both classes) from a logistic regression: the patched model
    is scikit-learn's Newton-Cholesky refit on ``sample_weight_``."""
    X, y = table
    n = len(y)
    removed = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n // 4,
                                 unique=True))
    kept = np.setdiff1d(np.arange(n), removed)
    hypothesis.assume(len(np.unique(y[kept])) == 2)
    estimator = LogisticRegression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partial-removal and leverage notices
        puma = PumaPatcher(estimator, delta=1e3).fit(X, y, remove=removed)
    refit = LogisticRegression(solver="newton-cholesky", tol=1e-12, max_iter=1000).fit(
        X, y, sample_weight=puma.sample_weight_)
    scale = np.abs(_params(refit)).max()
    assert np.abs(_params(puma.estimator_) - _params(refit)).max() <= 1e-6 * scale


@BOUNDED
@given(tables(classification=False))
def test_ridge_values_are_the_leave_one_out_refits(table):
    """Least squares is quadratic: the leave-one-out values are exact, every point."""
    X, y = table
    estimator = Ridge(alpha=1.0)
    values = PumaPatcher(estimator).fit(X, y).values_
    base = np.mean((estimator.fit(X, y).predict(X) - y) ** 2)
    loo = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        refit = Ridge(alpha=1.0).fit(X[keep], y[keep])
        loo[i] = np.mean((refit.predict(X) - y) ** 2) - base
    np.testing.assert_allclose(values, loo, rtol=1e-6, atol=1e-9 * np.abs(loo).max())


@BOUNDED
@given(tables(), st.data())
def test_a_mask_and_its_indices_give_the_same_patch(table, data):
    X, y = table
    n = len(y)
    removed = data.draw(st.lists(st.integers(0, n - 1), min_size=0, max_size=3,
                                 unique=True))
    mask = np.zeros(n, dtype=bool)
    mask[removed] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_index = PumaPatcher(LogisticRegression()).fit(X, y, remove=removed)
        by_mask = PumaPatcher(LogisticRegression()).fit(X, y, remove=mask)
    assert np.array_equal(by_index.removed_, np.flatnonzero(mask))
    np.testing.assert_array_equal(_params(by_index.estimator_), _params(by_mask.estimator_))
    if not removed:  # nothing removed: exactly the fitted model
        fitted = LogisticRegression().fit(X, y)
        np.testing.assert_array_equal(_params(by_index.estimator_), _params(fitted))
