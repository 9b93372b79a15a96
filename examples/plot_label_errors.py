"""
===========================================
Finding label errors with one fit, no folds
===========================================

Confident learning (Northcutt et al., 2021; the `cleanlab` library) finds mislabelled
rows from *out-of-sample* class probabilities, usually those of K-fold
cross-validation: K refits. :meth:`~sklearn_puma.PumaPatcher.loo_predict_proba` gives
each training row's leave-one-out probabilities from the one fitted model (a
leverage-corrected Newton step per row, exact up to that step for linear models).
:func:`~sklearn_puma.rank_label_errors` ranks the rows by the leave-one-out
probability of their own label, lowest first, and its ``"confident_learning"`` method
flags the rows confident learning would.

The loop of this example: **detect** (rank the rows), **inspect** (look at the most
suspicious images), **patch** (remove the flagged rows' influence from the fitted
model, no retraining) and **verify** (against a model retrained without them).
"""

# %%
# Digits with 10% of the labels flipped
# -------------------------------------
# :func:`~sklearn_puma.flip_labels` flips a seeded 10% of the training labels to
# another class and returns which ones, so that every detector can be scored.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict, train_test_split
from sklearn.preprocessing import StandardScaler

from sklearn_puma import PumaPatcher, flip_labels, rank_label_errors
from sklearn_puma.plot import MislabelDetectionDisplay

digits = load_digits()
X_train, X_test, y_train, y_test, images_train, _ = train_test_split(
    digits.data, digits.target, digits.images, test_size=0.3, stratify=digits.target,
    random_state=0,
)
scaler = StandardScaler().fit(X_train)
X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
y_noisy, flipped = flip_labels(y_train, 0.1, random_state=0)
print(f"{len(y_noisy)} training rows, {flipped.sum()} of them with a flipped label")

# %%
# Detect: one fit, then the leave-one-out probabilities
# -----------------------------------------------------
# The ranking reads only the leave-one-out probabilities, not ``values_``, so the
# cheaper first-order values are enough at fit. ``rank_label_errors`` orders every row
# by the leave-one-out probability of its label (the score); confident learning on the
# same probabilities flags the rows another class claims confidently (a score below 0).
model = LogisticRegression(max_iter=1000)
puma = PumaPatcher(model, value_method="first_order").fit(X_train, y_noisy)
order, scores = rank_label_errors(puma, return_scores=True)
_, cl_scores = rank_label_errors(puma, method="confident_learning", return_scores=True)
flagged = cl_scores < 0
print(f"PUMA (one fit): {flagged.sum()} rows flagged, {flipped[flagged].sum()} of them "
      f"truly flipped; {flagged[flipped].mean():.0%} of the flipped rows flagged")

# %%
# The usual route: 5-fold cross-validated probabilities (five fits), then cleanlab's
# ``find_label_issues`` when cleanlab is installed (``pip install cleanlab``;
# ``rank_label_errors(puma, method="cleanlab")`` runs it on PUMA's probabilities).
# ``benchmarks/bench_mislabel.py`` times both routes and scores them over 30 flips.
cv_proba = cross_val_predict(clone(model), X_train, y_noisy, cv=5,
                             method="predict_proba")
try:
    from cleanlab.filter import find_label_issues

    cv_flagged = find_label_issues(y_noisy, cv_proba, n_jobs=1)
    cv_name = "cleanlab on 5-fold probabilities"
except ImportError:  # as many rows as PUMA flags, lowest 5-fold confidence first
    cv_confidence = cv_proba[np.arange(len(y_noisy)), y_noisy]
    cv_flagged = np.zeros(len(y_noisy), dtype=bool)
    cv_flagged[np.argsort(cv_confidence)[: flagged.sum()]] = True
    cv_name = "lowest 5-fold confidence"
print(f"{cv_name}: {cv_flagged.sum()} rows flagged, {flipped[cv_flagged].sum()} of "
      f"them truly flipped; {cv_flagged[flipped].mean():.0%} of the flipped rows flagged")

# %%
# The two flag different sets on purpose: PUMA's ``"confident_learning"`` flags the
# rows off the diagonal of the confident joint (Northcutt et al., section 3.1), while
# cleanlab's default, ``prune_by_noise_rate``, flags as many rows as it estimates are
# mislabelled, so more of them, less precisely. A reviewer works down a ranking anyway.

# %%
# Ranked rows, not only flags: how many flipped rows does each order find as more of
# the data is inspected? Lowest score first: PUMA's ranking (the leave-one-out
# confidence in the given label), the same rows with confident learning's flags first,
# the cross-validated confidence, PUMA's self-influence (how much a row's own loss
# rises when it is left out) and the in-sample confidence. The model behind the last
# one was trained on each row's own label: the blatant flips still stand out, but the
# rows it learned to fit with their wrong label hide, and it is the one order that has
# not found them all by 20% of the data.
in_sample = puma.predict_proba(X_train)[np.arange(len(y_noisy)), y_noisy]
detection = MislabelDetectionDisplay.from_predictions(flipped, {
    "PUMA rank_label_errors": scores,
    "PUMA confident learning": cl_scores,
    "5-fold confidence": cv_proba[np.arange(len(y_noisy)), y_noisy],
    "PUMA self-influence": -puma.self_influence(),
    "in-sample confidence": in_sample,
})
detection.ax_.set_xlim(0, 0.3)
for name, recall in detection.recall_at(0.1).items():
    print(f"{name:25s}: {recall:.0%} of the flipped rows in the first 10% of the rows, "
          f"{detection.recall_at(0.2)[name]:.0%} in the first 20%")
plt.show()

# %%
# Inspect the most suspicious rows
# --------------------------------
# The eight lowest scores, each with its recorded label and the class the rest of the
# data votes for (the leave-one-out prediction). A reviewer would fix these first.
loo_proba = puma.loo_predict_proba()
fig, axes = plt.subplots(1, 8, figsize=(10, 2))
for ax, i in zip(axes, order[:8]):
    ax.imshow(images_train[i], cmap="gray_r")
    ax.set_title(f"label {y_noisy[i]}\nvote {loo_proba[i].argmax()}"
                 + ("\n(flipped)" if flipped[i] else ""), fontsize=8)
    ax.axis("off")
fig.suptitle("Most suspicious training rows")
plt.show()

# %%
# Patch the flagged rows out and verify
# -------------------------------------
# :meth:`~sklearn_puma.PumaPatcher.patch` removes their influence from the fitted
# model with Newton steps, up-weighting other rows so that the loss on the kept rows
# worsens by at most ``delta``. The ground truth is the model retrained without them.
before = puma.score(X_test, y_test)  # patch() replaces puma.estimator_
puma.patch(flagged)
retrained = clone(model).fit(X_train[~flagged], y_noisy[~flagged])
clean = clone(model).fit(X_train, y_train)
print(f"{'trained on the noisy labels':36s}: held-out accuracy {before:.3f}")
for name, est in [("patched (flagged rows removed)", puma),
                  ("retrained without the flagged rows", retrained),
                  ("trained on the true labels", clean)]:
    print(f"{name:36s}: held-out accuracy {est.score(X_test, y_test):.3f}")
print(f"eta = {puma.eta_:.2f}; the patched and retrained models agree on "
      f"{np.mean(puma.predict(X_test) == retrained.predict(X_test)):.1%} of the "
      "held-out digits")
