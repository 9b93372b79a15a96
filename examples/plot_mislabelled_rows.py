"""
==================================================
Finding and patching out mislabelled training rows
==================================================

We flip 10% of the training labels of scikit-learn's breast cancer data, value every
training row of a logistic regression with :class:`~sklearn_puma.PumaPatcher`, look at
the most harmful rows (how many of them are the flipped ones?), patch them out of the
fitted model without retraining, and compare held-out accuracy and wall time with a
model refitted on the same reweighted data.

The example prints its results; when matplotlib is installed it also draws the values
of the flipped and the clean rows.
"""

# %%
# Data with label noise
# ---------------------
# Three stratified parts: the rows the model is fitted on, a validation part the
# criterion is measured on, and a test part that keeps its true labels to measure
# accuracy. 10% of the training labels (fitted and validation rows) are flipped.
import time

import numpy as np
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from sklearn_puma import PumaPatcher, flip_labels

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
print(f"{len(y_fit)} fitted rows ({flipped_fit.sum()} flipped), {len(y_val)} validation "
      f"rows, {len(y_test)} test rows")

# %%
# Value every training row
# ------------------------
# A value is the predicted change of the criterion (here the model's own log loss,
# lower is better) if the row were left out of training: positive = the row helps,
# negative = it hurts. ``eval_set`` says where the criterion is measured.
estimator = LogisticRegression(max_iter=1000)
puma = PumaPatcher(estimator, criterion="loss").fit(X_fit, y_fit, eval_set=(X_val, y_val))
values = puma.values_
print(f"values of {values.shape[0]} rows; {np.sum(values < 0)} are negative (harmful)")

# %%
# Where the criterion is measured matters. Measured on the fitted rows themselves
# (``eval_set`` omitted), the loss includes each row's own loss: leaving a mislabelled
# row out makes the model even worse on it, so it tends to look *helpful*.
on_train = PumaPatcher(estimator).fit(X_fit, y_fit).values_
k = int(round(0.1 * len(y_fit)))
for name, v in [("validation rows", values), ("fitted rows", on_train)]:
    order = np.argsort(v, kind="stable")
    print(f"criterion on the {name:15s}: flipped among the {k} lowest values: "
          f"{flipped_fit[order[:k]].sum():2d}, among the {k} highest: "
          f"{flipped_fit[order[-k:]].sum():2d}")

# %%
# The most harmful rows
# ---------------------
# The rows with the lowest values, with their (possibly flipped) label.
order = np.argsort(values, kind="stable")
harmful = order[:k]
print(" rank   row  label      value  flipped")
for rank, i in enumerate(order[:10], start=1):
    print(f"{rank:5d} {i:5d} {y_fit[i]:6d} {values[i]:+10.2e}  "
          f"{'yes' if flipped_fit[i] else ''}")
hits = flipped_fit[harmful].sum()
print(f"{hits} of the {k} most harmful rows are flipped: recall "
      f"{hits / flipped_fit.sum():.0%}, against {k / len(y_fit):.0%} for {k} rows picked "
      "at random")

# %%
# Patch them out
# --------------
# ``patch`` removes the rows' influence from the fitted model with Newton steps on the
# reweighted objective, up-weighting other rows where needed so that the criterion
# worsens by at most ``delta``. ``eta_`` is the fraction of the step taken (1 = full
# removal), and ``sample_weight_`` the weights the patched model is optimal for.
accuracy_before = puma.score(X_test, y_test)
start = time.perf_counter()
puma.patch(harmful)
patch_time = time.perf_counter() - start
print(f"eta = {puma.eta_:.3f}; criterion {puma.criterion_names_[0]}: "
      f"{puma.criterion_before_[0]:.4f} -> {puma.criterion_after_[0]:.4f}")

# %%
# Compare with a refit
# --------------------
# The ground truth of a patch is the estimator refitted with ``sample_weight_``: the
# two models should agree, and we time both in the same run.
start = time.perf_counter()
refit = clone(estimator).fit(X_fit, y_fit, sample_weight=puma.sample_weight_)
refit_time = time.perf_counter() - start
print(f"held-out accuracy: before {accuracy_before:.3f}, after the patch "
      f"{puma.score(X_test, y_test):.3f}, refit {refit.score(X_test, y_test):.3f}")
print(f"largest coefficient difference patch vs refit: "
      f"{np.abs(puma.estimator_.coef_ - refit.coef_).max():.2e}")
print(f"wall time: patch {patch_time * 1e3:.1f} ms, refit {refit_time * 1e3:.1f} ms "
      f"(ratio {patch_time / refit_time:.2f}); for a model this small a refit is cheap")

# %%
# Values of flipped and clean rows
# --------------------------------
# Drawn only when matplotlib is installed (it is not a dependency of sklearn-puma).
try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(values.min(), values.max(), 40)
    ax.hist(values[~flipped_fit], bins=bins, alpha=0.6, label="clean rows")
    ax.hist(values[flipped_fit], bins=bins, alpha=0.6, label="flipped rows")
    ax.set_xlabel("value (predicted change of validation loss; < 0 = harmful)")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    plt.show()
