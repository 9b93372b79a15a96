"""
===============================================
Removing one style of handwritten 4 from an MLP
===============================================

The seed's Fig. 7 with scikit-learn's own digits: the 4s are clustered by style with
k-means, one style is patched out of a trained ``MLPClassifier`` without retraining,
and the result is compared with a network retrained from scratch without that style.
The other 4s and the other digits must keep their accuracy.
"""

# %%
# Data, styles and the model
# --------------------------
# Pixels are scaled to [0, 1]. The three k-means clusters of the 4s are three ways of
# writing a 4; we remove the largest.
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.neural_network import MLPClassifier

from sklearn_puma import NonConvexWarning, PumaPatcher

X, y = load_digits(return_X_y=True)
X = X / 16.0
fours = np.flatnonzero(y == 4)
styles = KMeans(3, n_init=10, random_state=0).fit_predict(X[fours])
removed = fours[styles == np.argmax(np.bincount(styles))]
remove = np.zeros(len(X), dtype=bool)
remove[removed] = True
print(f"{len(fours)} fours in {np.bincount(styles).tolist()} styles; removing {len(removed)}")

est = MLPClassifier(hidden_layer_sizes=(16,), alpha=1.0, solver="lbfgs", max_iter=1000,
                    random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    model = clone(est).fit(X, y)
    retrained = clone(est).fit(X[~remove], y[~remove])

# %%
# The patch
# ---------
# ``FrozenEstimator`` marks the model as trained elsewhere: PumaPatcher only reads the
# training data. One criterion row per class keeps every digit's loss within ``delta``.
# A network's Hessian is indefinite in places; the patch damps it and says so.
puma = PumaPatcher(FrozenEstimator(model), criterion="per_class_loss", n_steps=10)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", NonConvexWarning)
    puma.fit(X, y, remove=remove)


def share_of_four(m, idx):
    return np.mean(m.predict(X[idx]) == 4)


def accuracy(m, idx):
    return np.mean(m.predict(X[idx]) == y[idx])


others_4, others = np.setdiff1d(fours, removed), np.flatnonzero(y != 4)
print(f"removed style still read as 4: before {share_of_four(model, removed):.2f}, "
      f"patched {share_of_four(puma, removed):.2f}, retrained {share_of_four(retrained, removed):.2f}")
print(f"accuracy on the other 4s: {accuracy(model, others_4):.3f} -> {accuracy(puma, others_4):.3f}")
print(f"accuracy on other digits: {accuracy(model, others):.3f} -> {accuracy(puma, others):.3f}")
print(f"eta = {puma.eta_:.2f}; curvature solver {puma.hessian_!r}")

# %%
# What the removed 4s became
# --------------------------
# Like the seed's figure, the removed style is now mostly read as other digits.
labels, counts = np.unique(puma.predict(X[removed]), return_counts=True)
print("patched predictions of the removed 4s:", dict(zip(labels.tolist(), counts.tolist())))

try:
    import matplotlib.pyplot as plt
except ImportError:  # matplotlib is optional
    plt = None
if plt is not None:
    fig, axes = plt.subplots(2, 8, figsize=(8, 2.4))
    proba = puma.predict_proba(X[removed[:16]])
    for ax, i, p in zip(axes.ravel(), removed[:16], proba):
        ax.imshow(X[i].reshape(8, 8), cmap="gray_r")
        ax.set_title(f"P{puma.classes_[p.argmax()]} {p.max():.2f}", fontsize=7)
        ax.axis("off")
    fig.suptitle("Removed style of 4: patched prediction and confidence", fontsize=9)
    fig.tight_layout()
