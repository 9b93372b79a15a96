"""
=====================================================
Patching a miscalibrated network back to calibration
=====================================================

Label noise leaves a neural network miscalibrated: here 30% of one class of the two
moons is recorded as the other, so the network learns that this class is at most ~70%
likely anywhere, and on clean data it is under-confident. We value every training point
of a fitted :class:`~sklearn.neural_network.MLPClassifier` against the (smooth) expected
calibration error and error rate measured on a small trusted validation set, patch the
most harmful points out of the fitted model without retraining, and compare reliability
diagrams before and after on clean held-out data (the seed's Figs. 8-9).

The example prints its results; when matplotlib is installed it also draws the training
points with the removed ones crossed out, and the two reliability diagrams.
"""

# %%
# Data with asymmetric label noise
# --------------------------------
# 800 training points whose class-1 labels are recorded as class 0 three times in ten,
# 200 trusted validation points with their true labels (the criteria are measured on
# them), and 2000 clean test points.
import numpy as np
from sklearn.datasets import make_moons
from sklearn.frozen import FrozenEstimator
from sklearn.neural_network import MLPClassifier

from sklearn_puma import PumaPatcher
from sklearn_puma.metrics import expected_calibration_error

X, y = make_moons(3000, noise=0.2, random_state=0)
X_train, y_train = X[:800], y[:800].copy()
X_val, y_val = X[800:1000], y[800:1000]
X_test, y_test = X[1000:], y[1000:]
rng = np.random.default_rng(0)
ones = np.flatnonzero(y_train == 1)
flipped = np.zeros(len(y_train), dtype=bool)
flipped[rng.choice(ones, int(round(0.3 * len(ones))), replace=False)] = True
y_train[flipped] = 0
print(f"{len(y_train)} training points ({flipped.sum()} of class 1 recorded as 0), "
      f"{len(y_val)} trusted validation points, {len(y_test)} clean test points")

# %%
# A network fitted on the noisy labels
# ------------------------------------
# Its binned expected calibration error (ECE, the gap between confidence and accuracy
# averaged over confidence bins) on clean data is large: where class 1 is certain, the
# network still says about 0.7.
model = MLPClassifier((16,), alpha=0.1, solver="lbfgs", max_iter=1000, tol=1e-6,
                      random_state=0).fit(X_train, y_train)


def ece_and_accuracy(clf):
    proba = clf.predict_proba(X_test)
    return (expected_calibration_error(y_test, proba, classes=clf.classes_),
            clf.score(X_test, y_test))


ece_before, acc_before = ece_and_accuracy(model)
print(f"before: clean test ECE {ece_before:.3f}, accuracy {acc_before:.3f}")

# %%
# Value and patch
# ---------------
# Two criterion rows, both measured on the trusted validation set: ``"ece"`` (a smooth,
# differentiable ECE) and ``"accuracy"`` (a smooth error rate). A point's value per row
# is the predicted change of that row if the point were left out: negative = the point
# hurts. ``remove="auto"`` patches out the points whose summed value is negative and an
# outlier (below the lower Tukey fence); ``delta=0.01`` lets no row worsen by more than
# 0.01, with ``eta_`` the fraction of the patch step taken. The model is fitted already,
# so it is wrapped in :class:`~sklearn.frozen.FrozenEstimator`. A network's Hessian is
# often slightly indefinite at the fitted weights: PUMA then damps it and says so with a
# ``NonConvexWarning`` (``curvature="gauss_newton"`` is positive semi-definite instead).
puma = PumaPatcher(FrozenEstimator(model), criterion=["ece", "accuracy"],
                   remove="auto", delta=0.01)
puma.fit(X_train, y_train, eval_set=(X_val, y_val))
removed = np.zeros(len(y_train), dtype=bool)
removed[puma.removed_] = True
print(f"values_ shape {puma.values_.shape}, rows {puma.criterion_names_}")
print(f"removed {removed.sum()} points, {flipped[removed].sum()} of them mislabelled "
      f"(of {flipped.sum()} mislabelled in all); up-weighted "
      f"{np.count_nonzero(puma.lambda_)}; eta_ = {puma.eta_:.2f}")
for name, before, after in zip(puma.criterion_names_, puma.criterion_before_,
                               puma.criterion_after_):
    print(f"validation {name:10s}: {before:.3f} -> {after:.3f}")

# %%
# Removing the mislabelled points improves both rows at once, so no other point needs
# up-weighting (``lambda_`` is zero): the compensation only cancels a predicted
# *worsening*. The patched model on clean held-out data:
ece_after, acc_after = ece_and_accuracy(puma)
print(f"after:  clean test ECE {ece_after:.3f} ({1 - ece_after / ece_before:.0%} lower), "
      f"accuracy {acc_after:.3f} ({acc_after - acc_before:+.3f})")

# %%
# Symmetric noise, for comparison
# -------------------------------
# With 10% of *all* labels flipped (the seed's setting) the network is nearly calibrated
# against equally noisy labels (its confidence is capped near 0.9, as is the accuracy on
# noisy labels), so there is little to gain there. Against clean labels it is
# under-confident, and the same patch with trusted labels calibrates it; measured
# against the noisy labels the patched network then looks *worse*: it is calibrated to
# the true labels, no longer to the noise.
y_sym = y[:800].copy()
sym_rows = np.random.default_rng(0).choice(800, 80, replace=False)
y_sym[sym_rows] = 1 - y_sym[sym_rows]
y_test_noisy = y_test.copy()
noisy_rows = np.random.default_rng(1).choice(len(y_test), len(y_test) // 10,
                                             replace=False)
y_test_noisy[noisy_rows] = 1 - y_test_noisy[noisy_rows]
model_sym = MLPClassifier((16,), alpha=0.1, solver="lbfgs", max_iter=1000, tol=1e-6,
                          random_state=0).fit(X_train, y_sym)
puma_sym = PumaPatcher(FrozenEstimator(model_sym), criterion=["ece", "accuracy"],
                       remove="auto", delta=0.01).fit(X_train, y_sym,
                                                      eval_set=(X_val, y_val))
for labels, y_eval in [("noisy", y_test_noisy), ("clean", y_test)]:
    before, after = (expected_calibration_error(y_eval, m.predict_proba(X_test))
                     for m in (model_sym, puma_sym))
    print(f"symmetric noise, ECE on {labels} test labels: before {before:.3f}, "
          f"after the patch {after:.3f}")

# %%
# Removed points and reliability diagrams
# ---------------------------------------
# Left: the training points with their recorded labels, the removed ones crossed out,
# and the decision regions before and after. Right: accuracy against confidence on the
# clean test data, ECE in the legend. Drawn only when matplotlib is installed (it is not
# a dependency of sklearn-puma).
try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    from sklearn_puma.plot import DecisionRegionsDisplay, ReliabilityDisplay

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), layout="constrained")
    DecisionRegionsDisplay.from_estimator(
        {"before": model, "after the PUMA patch": puma}, X_train, y_train,
        removed=removed, grid_resolution=100, ax=axes[:2])
    ReliabilityDisplay.from_estimator(
        {"before": model, "after the PUMA patch": puma}, X_test, y_test, ax=axes[2])
    axes[2].set_title("reliability on clean test data")
    plt.show()
