"""
=====================================================
Patching a demographic-parity gap out of a classifier
=====================================================

Training labels recorded by a biased process teach a model to treat two groups
differently, even when the sensitive attribute is not one of its features. We value
every training point of a logistic regression by its influence on the demographic
parity gap with :class:`~sklearn_puma.PumaPatcher`, patch the most harmful points out
of the fitted model without retraining, and check on held-out data that the gap
between the groups' positive rates shrinks while accuracy stays within a budget.

The example prints its results; when matplotlib is installed it also draws each group's
positive rate before and after the patch.
"""

# %%
# Data with a biased label process
# --------------------------------
# Five features and a binary sensitive attribute ``a`` that the model never sees, but
# that shifts feature 0: feature 0 is a proxy of the group. The clean label depends on
# features 1-3 only, so the clean process treats both groups alike. The labels we get
# to see, though, were recorded with a bias: 40% of group 1's positives were recorded
# as negatives. Validation and test data come from the same biased process, as they
# would in practice; we keep the clean test labels aside to show what the bias hides.
import numpy as np
from sklearn.linear_model import LogisticRegression

from sklearn_puma import PumaPatcher
from sklearn_puma.metrics import demographic_parity_difference

rng = np.random.default_rng(0)


def make_biased(n, bias=0.4):
    a = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 5))
    X[:, 0] += 1.5 * (2 * a - 1)
    y_clean = (1.5 * X[:, 1] - X[:, 2] + 0.5 * X[:, 3] + 0.5 * rng.normal(size=n) > 0)
    y_clean = y_clean.astype(int)
    dropped = (a == 1) & (y_clean == 1) & (rng.random(n) < bias)
    return X, np.where(dropped, 0, y_clean), y_clean, a


X, y, y_clean, a = make_biased(1500)
X_val, y_val, _, a_val = make_biased(750)
X_test, y_test, y_test_clean, a_test = make_biased(5000)
biased = y != y_clean
print(f"{len(y)} training points, {biased.sum()} of them with a biased label; "
      f"recorded positive rate: group 0 {y[a == 0].mean():.2f}, "
      f"group 1 {y[a == 1].mean():.2f} (clean: {y_clean[a == 0].mean():.2f}, "
      f"{y_clean[a == 1].mean():.2f})")

# %%
# Value every training point against demographic parity
# -----------------------------------------------------
# ``criterion`` takes a list: each entry gives rows of the criterion that values and
# patches are measured against, lower is better. ``"demographic_parity"`` is the gap
# between the groups' mean predicted probability of the positive class (it needs
# ``groups``); ``"accuracy"`` is a smooth error rate. Both are measured on the
# validation split passed as ``eval_set=(X, y, groups)``. A value is the predicted
# change of each row if the point were left out of training: negative = harmful.
puma = PumaPatcher(LogisticRegression(), criterion=["demographic_parity", "accuracy"],
                   delta=0.02)
puma.fit(X, y, groups=a, eval_set=(X_val, y_val, a_val))
print("criterion rows:", puma.criterion_names_, "measured:",
      np.round(puma.criterion_before_, 3))
parity_values = puma.values_[:, 0]
harmful = np.argsort(parity_values, kind="stable")[: len(y) // 10]
print(f"{biased[harmful].sum()} of the {len(harmful)} points most harmful to parity "
      f"have a biased label ({biased[harmful].mean():.0%}, against "
      f"{biased.mean():.0%} of all points)")

# %%
# The rest of the 10% most harmful points are mostly group-0 positives, which pull
# the two groups' predictions apart from the other side.
others = np.setdiff1d(harmful, np.flatnonzero(biased))
print(f"the other {len(others)}: {np.mean(a[others] == 0):.0%} in group 0, "
      f"{np.mean(y[others] == 1):.0%} labelled positive")

# %%
# Patch them out
# --------------
# ``patch`` removes the points' influence from the fitted model. ``delta`` bounds the
# worsening of *every* criterion row, measured after the patch: the parity row
# improves, and the error-rate row may worsen by at most 0.02 (other points are
# up-weighted to hold it). ``eta_ < 1`` would mean the step had to be shortened.
before = puma.predict(X_test)
puma.patch(harmful)
after = puma.predict(X_test)
print(f"eta = {puma.eta_:.2f}; validation rows {np.round(puma.criterion_before_, 3)} "
      f"-> {np.round(puma.criterion_after_, 3)}")

# %%
# Held-out parity gap and accuracy
# --------------------------------
# The gap is measured on hard predictions of the test split, with
# :func:`~sklearn_puma.metrics.demographic_parity_difference`. Accuracy against the
# recorded (biased) labels is what a user can measure; against the clean labels, it
# rises, since the patch undoes part of the bias.
gap_before = demographic_parity_difference(before, a_test)
gap_after = demographic_parity_difference(after, a_test)
print(f"held-out parity gap: {gap_before:.3f} -> {gap_after:.3f}")
print(f"held-out accuracy (recorded labels): {np.mean(before == y_test):.3f} -> "
      f"{np.mean(after == y_test):.3f}")
print(f"held-out accuracy (clean labels):    {np.mean(before == y_test_clean):.3f} -> "
      f"{np.mean(after == y_test_clean):.3f}")

# %%
# Positive rate of each group
# ---------------------------
# Drawn only when matplotlib is installed (it is not a dependency of sklearn-puma).
try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    rates = {
        "clean labels": [y_test_clean[a_test == g].mean() for g in (0, 1)],
        "before the patch": [before[a_test == g].mean() for g in (0, 1)],
        "after the patch": [after[a_test == g].mean() for g in (0, 1)],
    }
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.25
    for i, (name, r) in enumerate(rates.items()):
        ax.bar(np.arange(2) + (i - 1) * width, r, width, label=name)
    ax.set_xticks([0, 1], ["group 0", "group 1"])
    ax.set_ylabel("positive rate on the test split")
    ax.set_title(f"parity gap {gap_before:.3f} -> {gap_after:.3f}")
    ax.set_ylim(0, 0.75)
    ax.legend(loc="upper center", ncol=3, fontsize="small")
    fig.tight_layout()
    plt.show()
