"""
=====================================
Plotting PUMA's results with displays
=====================================

:mod:`sklearn_puma.plot` draws PUMA's results the way scikit-learn draws its own
(``RocCurveDisplay``, ``DecisionBoundaryDisplay``): a display is made by
``from_estimator`` or ``from_predictions``, keeps the numbers it draws as attributes,
and draws on the axes given (``ax=``) or on a new figure.

Two stories, one per half:

- **removing a cluster** of the "Radial" data from a fitted neural network, drawn with
  :class:`~sklearn_puma.plot.DecisionRegionsDisplay` (the PUMA paper's Fig. 6);
- **finding flipped labels** in the breast cancer data with
  :class:`~sklearn_puma.plot.MislabelDetectionDisplay` and
  :class:`~sklearn_puma.plot.ValuesDisplay` (the paper's Fig. 5), then patching the most
  harmful rows out and comparing calibration with
  :class:`~sklearn_puma.plot.ReliabilityDisplay`.
"""

# %%
# Radial data: a blob of class 0 ringed by clusters of class 1
# -------------------------------------------------------------
# :func:`~sklearn_puma.make_radial` returns the cluster of every point as well, so we
# can mark one class-1 cluster for removal. A small MLP separates the classes.
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from sklearn_puma import NonConvexWarning, PumaPatcher, flip_labels, make_radial
from sklearn_puma.plot import (
    DecisionRegionsDisplay,
    MislabelDetectionDisplay,
    ReliabilityDisplay,
    ValuesDisplay,
)

X, y, clusters = make_radial(400, random_state=0, return_clusters=True)
mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=2000, random_state=0).fit(X, y)
cluster = clusters == 0
print(f"{len(y)} points, {cluster.sum()} in the cluster to remove; training accuracy "
      f"{mlp.score(X, y):.3f}")

# %%
# Patch the cluster out of the fitted network
# -------------------------------------------
# ``FrozenEstimator`` tells :class:`~sklearn_puma.PumaPatcher` that the network is
# already fitted: ``fit`` only reads its training data, and ``patch`` removes the
# cluster's influence with Newton steps, up-weighting other points so that the loss on
# the kept points worsens by at most ``delta``. A network's loss is not convex, so the
# patcher damps the curvature and says so (a ``NonConvexWarning``, silenced here); it
# also warns that the network, stopped at a tolerance, is not exactly at an optimum.
# More Newton steps than the default bring the patch closer to a retrain. ``mlp``
# itself is never modified: the patched network is ``puma.estimator_``.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", NonConvexWarning)
    puma = PumaPatcher(FrozenEstimator(mlp), n_steps=6).fit(X, y).patch(cluster)
retrained = MLPClassifier(hidden_layer_sizes=(32,), max_iter=2000, random_state=0)
retrained.fit(X[~cluster], y[~cluster])
for name, model in [("fitted", mlp), ("patched", puma), ("retrained", retrained)]:
    print(f"{name:9s}: cluster predicted as class 1: "
          f"{np.mean(model.predict(X[cluster])):.0%}; accuracy on the other points: "
          f"{model.score(X[~cluster], y[~cluster]):.3f}")
print(f"eta = {puma.eta_:.2f} (1 = full removal); loss on the kept points "
      f"{puma.criterion_before_[0]:.4f} -> {puma.criterion_after_[0]:.4f}")

# %%
# The removal, drawn: the plane coloured by the predicted class, training points by
# their class, and the removed points as crosses. The patched network gives the
# cluster's place to class 0, as a network retrained without the cluster does, and
# keeps the other clusters.
regions = DecisionRegionsDisplay.from_estimator(
    {"fitted": mlp, "patched (cluster removed)": puma, "retrained without it": retrained},
    X, y, removed=puma.removed_, grid_resolution=150,
)
regions.figure_.suptitle("Removing a cluster of class 1")
plt.show()

# %%
# Flipped labels in the breast cancer data
# ----------------------------------------
# As in the example on mislabelled rows (``plot_mislabelled_rows.py``): 10% of the
# training labels are flipped, and the values measure the loss on a validation part,
# so that a mislabelled row shows as harmful (negative value).
X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, stratify=y, random_state=0
)
y_noisy, flipped = flip_labels(y_train, 0.1, random_state=0)
X_fit, X_val, y_fit, y_val, flipped_fit, _ = train_test_split(
    X_train, y_noisy, flipped, test_size=0.25, stratify=y_noisy, random_state=0
)
scaler = StandardScaler().fit(X_fit)
X_fit, X_val, X_test = (scaler.transform(a) for a in (X_fit, X_val, X_test))
model = LogisticRegression(max_iter=1000).fit(X_fit, y_fit)
puma = PumaPatcher(FrozenEstimator(model)).fit(X_fit, y_fit, eval_set=(X_val, y_val))

# %%
# How many flipped rows does each order find?
# -------------------------------------------
# Inspecting the rows in order of value (lowest first), against the order of the
# leave-one-out probability of the row's own label (low = the rest of the data
# disagrees with the label; PUMA computes it from influence, without refits). The
# dotted diagonal is what a random order finds on average, the dashed corner the best
# possible order.
loo_proba = puma.loo_predict_proba()
self_confidence = loo_proba[np.arange(len(y_fit)), np.searchsorted(puma.classes_, y_fit)]
detection = MislabelDetectionDisplay.from_estimator(
    puma, flipped_fit, scores={"leave-one-out confidence": self_confidence}
)
for name, recall in detection.recall_at(0.1).items():
    print(f"{name:24s}: {recall:.0%} of the flipped rows in the lowest 10% "
          f"(random order: 10%)")
plt.show()

# %%
# Both orders beat chance by far early on. On this data the leave-one-out confidence
# finds more of the flipped rows: it asks whether the rest of the data agrees with a
# label, while a value measures the harm a row does to the validation loss, which is
# related to having a wrong label but is not the same question.

# %%
# The values of the flipped rows
# ------------------------------
# The flipped rows (in orange, with a tick each along the axis) gather among the
# negative, harmful values.
ValuesDisplay.from_estimator(puma, mark=flipped_fit, mark_label="flipped")
plt.show()

# %%
# Patch the most harmful rows out, and compare calibration
# --------------------------------------------------------
# The reliability diagram bins the test points by the confidence of the prediction and
# plots each bin's accuracy; the legend gives the binned expected calibration error
# (:func:`~sklearn_puma.metrics.expected_calibration_error`) of each model.
n_remove = int(round(0.1 * len(y_fit)))
puma.patch(np.argsort(puma.values_, kind="stable")[:n_remove])
print(f"removed {n_remove} rows, {flipped_fit[puma.removed_].sum()} of them flipped; "
      f"test accuracy {model.score(X_test, y_test):.3f} -> "
      f"{puma.score(X_test, y_test):.3f}")
fig, ax = plt.subplots(figsize=(5, 5))
reliability = ReliabilityDisplay.from_estimator(
    {"before patch": model, "after patch": puma}, X_test, y_test, n_bins=10, ax=ax
)
for name, ece in reliability.ece.items():
    print(f"{name:12s}: test ECE {ece:.3f}")
plt.show()
