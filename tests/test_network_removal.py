"""A network's all-parameter patch removes the marked rows (issue 12).

Ground truth: the same net retrained from its fitted weights on ``sample_weight_``
(removed rows at weight 0, up-weighted rows at theirs) by a generic optimiser, scipy's
L-BFGS on the net's objective to a gradient of 1e-9 (``test_networks.retrain``, which
checks it converged): the "warm retrain".  Completeness is the share of the way from
the fitted net to the warm retrain that the patch covers on the removed rows'
predictions, ``1 - gap(patch, warm) / gap(fitted, warm)``, ``gap`` the mean absolute
difference of predicted probabilities (or predictions).  Each net is first driven to
a tight optimum of its own objective, as influence assumes.  Patches run at default
settings; the removals are compact k-means-like clusters, the hard case for a patch
(the region they leave is then held by no data).  Where the warm retrain and the patch
settle in different minima of the (non-convex) reweighted objective, the patch passes
only if its minimum is at least as low and a warm retrain started at it stays there.
"""

import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification, make_regression
from sklearn.frozen import FrozenEstimator
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler

from sklearn_puma import PartialRemovalWarning, PumaPatcher
from sklearn_puma._adapters import make_adapter
from sklearn_puma._autodiff import objective

from .conftest import cluster_mask
from .test_networks import retrain


def _tight(model, X, y, **adapter_kw):
    adapter = make_adapter(model, **adapter_kw)
    return adapter.build(retrain(adapter, adapter.theta, X, y, np.ones(len(X))))


def _completeness(model, X, y, remove, **adapter_kw):
    """Patch ``model`` (at a tight optimum) at default settings; return the patcher,
    its completeness against the warm retrain, the partial-removal warnings, and
    ``ambiguous``: where completeness is low or the patch says the removal is not
    unique, whether the ground truth itself has several answers: the patch is another
    local minimum of the reweighted objective at least as low as the warm retrain's (a
    warm retrain started at the patch stays there), or scipy's L-BFGS-B from the
    fitted weights with 10 or 100 secant pairs ends less than 0.8 of the way to the
    30-pair warm retrain."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        puma = PumaPatcher(FrozenEstimator(model)).fit(X, y, remove=remove)
    partial = [w for w in caught if issubclass(w.category, PartialRemovalWarning)]
    adapter = make_adapter(model, **adapter_kw)
    warm_theta = retrain(adapter, adapter.theta, X, y, puma.sample_weight_)
    warm = adapter.build(warm_theta)

    def outputs(m):
        method = getattr(m, "predict_proba", None)
        if method is None or not hasattr(m, "classes_"):
            return np.asarray(m.predict(X[remove]), dtype=np.float64)
        return method(X[remove])

    gap_fit = np.abs(outputs(model) - outputs(warm)).mean()
    gap_patch = np.abs(outputs(puma) - outputs(warm)).mean()
    completeness = 1 - gap_patch / gap_fit
    print(f"gaps: fit {gap_fit:.3g}, patch {gap_patch:.3g}; "
          f"completeness {completeness:.4f}; removal_residual_ {puma.removal_residual_:.3g}"
          f"; eta_ {puma.eta_}; {int(remove.sum())} of {len(X)} rows removed")
    ambiguous = False
    if completeness < 0.8 or _not_unique(partial):
        patched = make_adapter(puma.estimator_, **adapter_kw)
        J = objective(adapter, adapter.encode_X(X), adapter.encode_y(y),
                      torch.as_tensor(puma.sample_weight_, dtype=torch.float64), len(X))
        settled = adapter.build(retrain(adapter, patched.theta, X, y, puma.sample_weight_))
        stays = np.abs(outputs(settled) - outputs(puma)).mean() \
            <= 0.01 * np.abs(outputs(puma) - outputs(model)).mean()
        lower = float(J(patched.theta)) <= float(J(warm_theta)) + 1e-12
        others = [adapter.build(retrain(adapter, adapter.theta, X, y, puma.sample_weight_,
                                        maxcor=maxcor)) for maxcor in (10, 100)]
        agreements = [1 - np.abs(outputs(m) - outputs(warm)).mean() / gap_fit
                      for m in others]
        print(f"J_w at the patch {float(J(patched.theta)):.9g}, at the warm retrain "
              f"{float(J(warm_theta)):.9g}; a retrain from the patch stays: {stays}; the "
              f"10- and 100-pair retrains' agreement with the warm retrain: "
              f"{agreements[0]:.3f}, {agreements[1]:.3f}")
        # Which ground truth has several answers: the retrains' ("retrains"), or the
        # patch's minimum next to the warm retrain's ("minimum").
        ambiguous = ("retrains" if min(agreements) < 0.8 else
                     "minimum" if stays and lower else "")
    gradient_share = _gradient_share(adapter, make_adapter(puma.estimator_, **adapter_kw),
                                     X, y, puma.sample_weight_)
    return puma, completeness, partial, ambiguous, gradient_share


def _objective_gradient(adapter, X, y, theta, weights):
    """``grad J_w(theta)`` by autograd on the test's objective."""
    theta = theta.detach().clone().requires_grad_(True)
    J = objective(adapter, adapter.encode_X(X), adapter.encode_y(y),
                  torch.as_tensor(weights, dtype=torch.float64), len(X))
    return torch.autograd.grad(J(theta), theta)[0]


def _gradient_share(adapter, patched, X, y, sample_weight):
    """The reweighted objective's gradient at the patch over the removal's own at the
    fitted model (``grad J_w - grad J`` there), by autograd on the test's objective:
    what an unwarned network patch claims is at most 1e-4."""
    removal = (_objective_gradient(adapter, X, y, adapter.theta, sample_weight)
               - _objective_gradient(adapter, X, y, adapter.theta, np.ones(len(X))))
    at_patch = _objective_gradient(adapter, X, y, patched.theta, sample_weight)
    return float(at_patch.norm() / removal.norm())


def _not_unique(partial):
    return [w for w in partial if "not unique" in str(w.message)]


def _check(puma, completeness, partial, ambiguous, gradient_share, may_stop_short=False):
    assert puma.eta_ == 1.0
    said = _not_unique(partial)
    other = [w for w in partial if w not in said]
    if other and may_stop_short:
        # A polish that stopped on a bound says so, with the figure it measured: true
        # to the gradient measured here, past the tolerance it quotes (1e-4, or 1e-5
        # on a near-exact fit).
        # (with "and" the output share's tolerance, where it was measured)
        quoted = float(re.search(r"\(converged: ([0-9.e+-]+?)(?: and|\))",
                                 str(other[0].message)).group(1))
        assert quoted in (1e-4, 1e-5)
        assert gradient_share > quoted
        assert puma.removal_residual_ >= gradient_share * (1 - 1e-6)
        assert f"{puma.removal_residual_:.3g}" in str(other[0].message)
        assert completeness >= 0.8 or ambiguous
        return
    assert not other, str(other[0].message)
    # Converged as the polish's rule says (README): the gradient at 1e-4 of the
    # removal's, measured here, and a further step's predicted move under 1e-2 of the
    # patch's (removal_residual_ is the larger of the two shares).
    assert gradient_share <= 1e-4 * (1 + 1e-6)
    assert gradient_share * (1 - 1e-6) <= puma.removal_residual_ <= 1e-2
    # A net's reweighted objective can have several minima near the fitted model; the
    # warm retrain's path and the patch's can end in different ones (measured: the
    # classifier below on an AMD EPYC CPU, completeness 0.62, the patch's J_w 0.0047589
    # under the warm retrain's 0.0047605, removed rows' accuracy 0.94 under both, 1.0
    # before).  That is a removal as complete as a retrain's, not a partial one.  A
    # patch that says the removal is not unique must be right: it is incomplete, or
    # scipy's own retrains disagree.
    if said:
        # Also right where the patch took the warm retrain's path's end, lower than
        # where its own path converged: the two paths did end apart.
        took_lower = all("The patch is the warm retrain's path's end" in str(w.message)
                         for w in said)
        assert completeness < 0.8 or ambiguous == "retrains" or took_lower
    else:
        assert completeness >= 0.8 or ambiguous


def test_mlp_classifier_cluster_removal_is_complete():
    X, y = make_classification(1000, 12, n_informative=8, n_classes=3, random_state=0)
    X = StandardScaler().fit_transform(X)
    est = MLPClassifier((24,), activation="tanh", solver="lbfgs", alpha=1e-2,
                        max_iter=2000, random_state=0).fit(X, y)
    model = _tight(est, X, y)
    _check(*_completeness(model, X, y, cluster_mask(X, 0.05, 0)))


def test_mlp_regressor_cluster_removal_is_complete():
    X, y = make_regression(1000, 8, n_informative=6, noise=60.0, random_state=1)
    X = StandardScaler().fit_transform(X)
    y = (y - y.mean()) / y.std()
    est = MLPRegressor(hidden_layer_sizes=(32,), activation="tanh", solver="lbfgs",
                       alpha=1e-1, max_iter=2000, random_state=0).fit(X, y)
    model = _tight(est, X, y)
    _check(*_completeness(model, X, y, cluster_mask(X, 0.05, 1)))


def test_skorch_net_cluster_removal_is_complete():
    pytest.importorskip("skorch")
    from skorch import NeuralNetClassifier

    from .skorch_modules import LazyMLP

    X, y = make_classification(1000, 10, n_informative=6, n_classes=3, random_state=2)
    X = StandardScaler().fit_transform(X)
    torch.manual_seed(0)
    net = NeuralNetClassifier(LazyMLP, module__n_out=3, module__hidden=32,
                              module__output="logits", module__dtype=torch.float64,
                              criterion=torch.nn.CrossEntropyLoss,
                              optimizer__weight_decay=1e-3, max_epochs=30, lr=0.1,
                              train_split=None, verbose=0).fit(X, y)
    model = _tight(net, X, y, n_features=X.shape[1])
    _check(*_completeness(model, X, y, cluster_mask(X, 0.05, 2),
                          n_features=X.shape[1]))


def test_penguins_species_removal_is_complete():
    """A real table shipped offline: Palmer penguins, a k-means-like tenth of the
    birds (one region of bill and flipper measurements) removed."""
    palmerpenguins = pytest.importorskip("palmerpenguins")
    frame = palmerpenguins.load_penguins().dropna()
    columns = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    X = StandardScaler().fit_transform(frame[columns].to_numpy(dtype=np.float64))
    y = frame["species"].to_numpy()
    est = MLPClassifier((64,), activation="tanh", solver="lbfgs", alpha=1e-1,
                        max_iter=2000, random_state=0).fit(X, y)
    model = _tight(est, X, y)
    _check(*_completeness(model, X, y, cluster_mask(X, 0.1, 3)))



@pytest.mark.parametrize("seed", [0, 1])
def test_interpolating_mlp_removal_is_complete_or_said_not_unique(seed):
    """A 2,000-row, 771-parameter tanh MLP fitted to training accuracy 1.0 (log loss
    6-7e-5 of a constant prediction's, driven to its optimum), a 5% cluster removed.  Its reweighted objective
    can have several minima near the fit, and then no single warm retrain is the
    ground truth: which minimum a retrain reaches depends on its path.  Data seed 100:
    scipy's retrains with 10, 30 and 100 pairs agree, and the patch reaches them
    (completeness 0.9999, unwarned).  Seed 101: they end 0.22 and 0.29 of the way to
    each other, and the patch converges (residual 9e-5) 0.62 of the way to the 30-pair
    one; its second path agrees with it on 0.24 of the move, and it says the removal
    is not unique (before that check, it passed unwarned).  Which minimum each path
    reaches can move with the CPU's floating-point kernels (on an AVX-512 EPYC, data
    seed 100's retrains with 10 and 100 pairs agree with the warm retrain on only 0.48
    and 0.32 of the move, and the patch's polish ends on its bound at 5.1e-3 of the
    removal's gradient, J_w 0.0005008 under the warm retrain's 0.0005026, warned), so
    both seeds assert only what holds whichever it is: complete, or warned with a true
    figure, or retrains that disagree (this
    last branch passes with or without the warning; the warning itself is measured in
    the CHANGELOG, and ``test_unexplained_share_is_the_loss_over_a_constant_s`` checks
    the figure that decides when the check runs).  With the gradient written out
    (equal to autograd's to rounding) its polish took yet another path, into a minimum
    2% under the warm retrain's, and stopped on its 2,000-iteration bound at 1.2e-3 of
    the removal's gradient: warned, with that figure, checked here."""
    X, y = make_classification(2000, 20, n_informative=10, n_classes=3,
                               random_state=100 + seed)
    X = StandardScaler().fit_transform(X)
    est = MLPClassifier((32,), activation="tanh", solver="lbfgs", alpha=1e-3,
                        max_iter=3000, random_state=seed).fit(X, y)
    model = _tight(est, X, y)
    _check(*_completeness(model, X, y, cluster_mask(X, 0.05, seed)), may_stop_short=True)


class _TanhMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(10, 32, dtype=torch.float64), torch.nn.Tanh(),
            torch.nn.Linear(32, 3, dtype=torch.float64))

    def forward(self, X):
        return self.net(X)


def test_indefinite_reweighted_curvature_follows_the_warm_retrain():
    """Once a cluster is removed, a net's reweighted Hessian at the fit is often
    indefinite, and damping="auto" makes its inverse long along the negative
    directions.  Preconditioned by it, this skorch net's patch crossed into another
    minimum of J_w, 6e-4 higher than the warm retrain's: completeness 0.67, reported
    converged, with no warning.  Plain L-BFGS from the fitted model, the warm
    retrain's own path, reaches it."""
    pytest.importorskip("skorch")
    from skorch import NeuralNetClassifier

    X, y = make_classification(1500, 10, n_informative=6, n_classes=3, random_state=13)
    X = StandardScaler().fit_transform(X)
    torch.manual_seed(0)
    net = NeuralNetClassifier(_TanhMLP, criterion=torch.nn.CrossEntropyLoss,
                              optimizer__weight_decay=1e-3, max_epochs=30, lr=0.1,
                              train_split=None, verbose=0).fit(X, y)
    model = _tight(net, X, y, n_features=X.shape[1])
    _check(*_completeness(model, X, y, cluster_mask(X, 0.05, 4), n_features=X.shape[1]))


@pytest.mark.parametrize("kind", ["multinomial", "binary", "regressor"])
def test_unexplained_share_is_the_loss_over_a_constant_s(kind):
    """The figure that decides when a patch is checked against a second path: the
    fitted net's training loss over the best constant prediction's, on the kept rows
    and their weights, against scikit-learn's log loss (over the weighted class
    frequencies') and 1 - R^2 (pooled over the outputs)."""
    from sklearn.metrics import log_loss

    from sklearn_puma._influence import _unexplained_share

    rng = np.random.default_rng(0)
    if kind == "regressor":
        X, y = make_regression(300, 5, n_targets=2, noise=10.0, random_state=0)
        y = y / y.std(0)
        model = MLPRegressor(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=300,
                             random_state=0)
    else:
        X, y = make_classification(300, 5, n_informative=3,
                                   n_classes=3 if kind == "multinomial" else 2,
                                   random_state=0)
        model = MLPClassifier((8,), solver="lbfgs", max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
        puma = PumaPatcher(FrozenEstimator(model)).fit(X, y)
    weights = rng.uniform(0.5, 2.0, len(X))
    weights[:30] = 0  # removed rows
    kept = weights > 0
    share = _unexplained_share(puma._problem, torch.as_tensor(weights))
    if kind == "regressor":
        w = weights[kept][:, None]
        residual = (w * (model.predict(X[kept]) - y[kept]) ** 2).sum()
        spread = (w * (y[kept] - np.average(y[kept], axis=0, weights=w[:, 0])) ** 2).sum()
        expected = residual / spread
    else:
        w = weights[kept]
        prior = np.bincount(y[kept], weights=w) / w.sum()
        expected = log_loss(y[kept], model.predict_proba(X[kept]), sample_weight=w) / \
            log_loss(y[kept], np.tile(prior, (kept.sum(), 1)), sample_weight=w)
    assert share == pytest.approx(expected, rel=1e-9)


def test_a_patch_never_stays_silently_in_a_higher_minimum():
    """A 1,500-row two-class tanh MLP (16 units, alpha=1, training accuracy 0.994: no
    near-exact fit), a 5% cluster removed.  Its reweighted curvature at the fitted
    model is convex, so the patch starts with the influence step, and that path
    converged (residual 1e-4, unwarned) in a minimum 3% higher than scipy's warm
    retrains' (J_w 0.09564 against 0.09271 for all three of 10, 30 and 100 pairs).  A
    plain L-BFGS path from the fitted model, the warm retrain's own, is now run beside
    every such patch and its end taken where its reweighted objective is lower: here
    the retrains' minimum, to 1e-10, with a warning that the two paths disagree.
    Asserted against scipy's retrains: the patch is at least as low as each, or says
    the removal is not unique (on another fit of the same net, whose retrains split
    between two minima, the patch took the lower one)."""
    X, y = make_classification(1500, 15, n_informative=8, n_classes=2, random_state=1)
    X = StandardScaler().fit_transform(X)
    est = MLPClassifier((16,), activation="tanh", solver="lbfgs", alpha=1.0,
                        max_iter=3000, random_state=0).fit(X, y)
    model = _tight(est, X, y)
    remove = cluster_mask(X, 0.05, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        puma = PumaPatcher(FrozenEstimator(model)).fit(X, y, remove=remove)
    partial = [w for w in caught if issubclass(w.category, PartialRemovalWarning)]
    adapter = make_adapter(model)
    J = objective(adapter, adapter.encode_X(X), adapter.encode_y(y),
                  torch.as_tensor(puma.sample_weight_, dtype=torch.float64), len(X))
    J_patch = float(J(make_adapter(puma.estimator_).theta))
    J_retrains = [float(J(retrain(adapter, adapter.theta, X, y, puma.sample_weight_,
                                  maxcor=maxcor))) for maxcor in (10, 30, 100)]
    print(f"J_w at the patch {J_patch:.10g}; at scipy's retrains (10, 30, 100 pairs) "
          f"{', '.join(f'{v:.10g}' for v in J_retrains)}; warned not unique: "
          f"{bool(_not_unique(partial))}")
    assert puma.eta_ == 1.0
    assert puma.removal_residual_ <= 1e-4
    # At least as low as every retrain's minimum, or, where the retrains themselves
    # split between minima, said to be one of several.
    assert J_patch <= min(J_retrains) * (1 + 1e-8) or (
        _not_unique(partial) and max(J_retrains) > min(J_retrains) * (1 + 1e-8))


def test_a_patch_that_finishes_a_fit_into_a_near_exact_one_is_checked(wine):
    """scikit-learn's default Adam MLP (logistic units) on wine stops at a loss 8% of
    the constant prediction's, so it was not a near-exact fit and its patch was not
    checked by a second path; but the patch, finishing that training, ends at 1e-4 of
    it, where the reweighted objective has several minima.  8 random rows removed: it
    converged, unwarned, 0.77 of the way to the warm retrain.  Now the check reads the
    loss where the patch ended too: complete, or said not to be."""
    from sklearn.exceptions import ConvergenceWarning

    X, y = wine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(activation="logistic", random_state=1).fit(X, y)
    remove = np.zeros(len(X), dtype=bool)
    remove[np.random.default_rng(1).choice(len(X), 8, replace=False)] = True
    puma, completeness, partial, _, _ = _completeness(model, X, y, remove)
    assert puma.eta_ == 1.0
    assert completeness >= 0.8 or partial


def test_a_net_past_the_second_path_size_is_polished_on_ekfac(monkeypatch):
    """Past the size whose paths the second path checks, a polish with no explicit
    convex curvature is preconditioned by EK-FAC of the reweighted Gauss-Newton
    curvature (plain L-BFGS stopped on its bound there: bench_networks' 50,000-row
    MLPClassifier) and still lands on the warm retrain's optimum.  The bound is lowered
    here so that a 1,000-row net counts as large."""
    import sklearn_puma._influence as influence

    built = []

    class Spy(influence.EKFACInverse):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(influence, "_SECOND_PATH_SIZE", 0)
    monkeypatch.setattr(influence, "EKFACInverse", Spy)
    X, y = make_classification(1000, 12, n_informative=8, n_classes=3, random_state=0)
    X = StandardScaler().fit_transform(X)
    # Not the near-exact fit of alpha=1e-2 above, where the second path runs at any
    # size (and found this path's end another optimum than its own, 0.58 apart).
    est = MLPClassifier((24,), activation="tanh", solver="lbfgs", alpha=1e-1,
                        max_iter=2000, random_state=0).fit(X, y)
    model = _tight(est, X, y)
    # hessian="cg": no explicit curvature, so the polish falls to EK-FAC.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        puma = PumaPatcher(FrozenEstimator(model), hessian="cg",
                           curvature="gauss_newton").fit(X, y)
        built.clear()
        puma.patch(cluster_mask(X, 0.05, 0))
    assert [b.damping > 0 and b._hvp is None for b in built] == [True]
    assert not [w for w in caught if issubclass(w.category, PartialRemovalWarning)]
    assert puma.eta_ == 1.0 and puma.removal_residual_ <= 1e-4
    adapter = make_adapter(model)
    warm = adapter.build(retrain(adapter, adapter.theta, X, y, puma.sample_weight_))
    remove = cluster_mask(X, 0.05, 0)
    gap_fit = np.abs(model.predict_proba(X[remove]) - warm.predict_proba(X[remove])).mean()
    gap = np.abs(puma.predict_proba(X[remove]) - warm.predict_proba(X[remove])).mean()
    assert 1 - gap / gap_fit >= 0.99  # measured 1.0000


@pytest.mark.parametrize("table, seed", [("wine", 1), ("iris", 2)])
def test_an_unfinished_fit_s_patch_is_measured_against_the_removal_s_own_gradient(
        table, seed):
    """A net its trainer left short of an optimum (Adam's 100 epochs: its own gradient
    3-10 times the removal's) is patched on its reweighted objective, whose gradient
    at the fitted model holds both.  The patch's residual is its gradient over the
    removal's own, ``grad J_w - grad J`` at the fitted model (both computed here on
    the test's objective): a patch silent about its removal has that below the
    polish's tolerance, and the residual it reports is that ratio.  Relative to
    ``grad J_w`` instead, these patches stopped silent at 4-5e-4 of the removal's
    gradient (and Carseats, a table not in the tests, at completeness 0.72)."""
    from sklearn.datasets import load_iris, load_wine

    data = {"wine": load_wine, "iris": load_iris}[table]()
    X, y = StandardScaler().fit_transform(data.data), data.target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Adam's ConvergenceWarning: the point here
        model = MLPClassifier((16,), max_iter=100, random_state=seed).fit(X, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        puma = PumaPatcher(model).fit(X, y, remove=cluster_mask(X, 0.05, seed))
    partial = [w for w in caught if issubclass(w.category, PartialRemovalWarning)]
    adapter = make_adapter(model)
    own = _objective_gradient(adapter, X, y, adapter.theta, np.ones(len(X)))
    removal = float((_objective_gradient(adapter, X, y, adapter.theta, puma.sample_weight_)
                     - own).norm())
    ratio = _gradient_share(adapter, make_adapter(puma.estimator_), X, y,
                            puma.sample_weight_)
    print(f"fit's own gradient {float(own.norm()) / removal:.3g} of the removal's; at "
          f"the patch {ratio:.3g}; removal_residual_ {puma.removal_residual_:.3g}; "
          f"warned: {bool(partial)}")
    assert float(own.norm()) > removal  # an unfinished fit (measured 6-7 times)
    assert puma.removal_residual_ >= ratio * (1 - 1e-6)
    if not partial:
        assert ratio <= 1e-4 * (1 + 1e-6)
    else:
        assert str(f"{puma.removal_residual_:.3g}") in str(partial[0].message)


def test_a_near_exact_fit_is_polished_a_decade_further(breast_cancer):
    """A net whose training loss is under 1% of a constant prediction's has a flat
    reweighted objective along the valley its removed rows leave, and its polish stops
    at 1e-5 of the removal's gradient, not 1e-4: on ISLP's Caravan (1,000 rows, loss
    0.55% of the constant's, 5% random rows) 1e-4 had stopped, unwarned, 0.56-0.60 of
    the way to warm retrains that agree among themselves, in no minimum (a retrain from
    the patch moved its removed rows a further 0.62 of its move); 1e-5 reached
    0.85-0.93.  Here the gradient where the patch ended, measured with the objective
    written apart, is under 1e-5 of the removal's (it was 4.7e-5)."""
    X, y = breast_cancer
    est = MLPClassifier((16,), activation="tanh", solver="lbfgs", alpha=1e-3,
                        max_iter=3000, random_state=0).fit(X, y)
    model = _tight(est, X, y)
    prior = np.bincount(y) / len(y)
    p = model.predict_proba(X)[np.arange(len(y)), y]
    assert -np.log(p).mean() < 1e-2 * -np.log(prior[y]).mean()  # near-exact
    remove = np.zeros(len(y), dtype=bool)
    remove[np.random.default_rng(0).choice(len(y), len(y) // 20, replace=False)] = True
    puma, completeness, partial, ambiguous, gradient_share = _completeness(model, X, y,
                                                                          remove)
    assert not partial
    assert gradient_share <= 1e-5 * (1 + 1e-6)
    assert completeness >= 0.999


def test_a_patch_in_one_of_several_minima_is_said_on_a_net_fitted_by_its_trainer():
    """ISLP's Default (2,000 rows), an MLPClassifier(16) tanh fitted by scikit-learn's
    lbfgs alone, a k-means cell of 121 rows removed: neither near-exact nor started
    elsewhere, so its patch was not checked, and it converged silently in a true
    minimum while a warm retrain by scipy's L-BFGS-B with 10 pairs goes on to one 3%
    lower (completeness 0.46 against it, measured by a user).  Every net of its size is
    now checked by a second path, and this one is said not to be unique."""
    from scipy.optimize import minimize
    from sklearn.cluster import KMeans

    ISLP = pytest.importorskip("ISLP")
    frame = ISLP.load_data("Default").sample(2000, random_state=0)
    X = StandardScaler().fit_transform(np.c_[frame["balance"], frame["income"],
                                             (frame["student"] == "Yes").astype(float)])
    y = frame["default"].to_numpy()
    cells = KMeans(15, n_init=3, random_state=1).fit(X).labels_
    remove = cells == np.argsort(np.bincount(cells))[7]  # the median-sized cell
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MLPClassifier((16,), activation="tanh", solver="lbfgs", alpha=1e-3,
                              max_iter=500, random_state=0).fit(X, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        puma = PumaPatcher(FrozenEstimator(model)).fit(X, y)
        puma.patch(remove)
    said = _not_unique([w for w in caught if issubclass(w.category, PartialRemovalWarning)])
    assert said, [str(w.message)[:120] for w in caught]

    # Independently: scipy's 10-pair warm retrain on sample_weight_ ends lower than the
    # patch, elsewhere on the removed rows.
    adapter = make_adapter(model)
    J = objective(adapter, adapter.encode_X(X), adapter.encode_y(y),
                  torch.as_tensor(puma.sample_weight_, dtype=torch.float64), len(X))

    def f(t):
        t = torch.as_tensor(t, dtype=torch.float64).requires_grad_(True)
        value = J(t)
        return value.item(), torch.autograd.grad(value, t)[0].numpy()

    other = minimize(f, adapter.theta.numpy(), jac=True, method="L-BFGS-B",
                     options=dict(ftol=0, gtol=1e-10, maxiter=5000, maxcor=10))
    patched = make_adapter(puma.estimator_).theta
    J_patch = float(J(patched))
    print(f"J_w at the patch {J_patch:.8g}, at scipy's 10-pair retrain {other.fun:.8g}")
    assert other.fun < J_patch * (1 - 1e-2)
    retrained = adapter.build(torch.as_tensor(other.x)).predict_proba(X[remove])
    moved = np.abs(puma.predict_proba(X[remove]) - model.predict_proba(X[remove])).mean()
    apart = np.abs(puma.predict_proba(X[remove]) - retrained).mean()
    assert apart > 0.3 * moved
