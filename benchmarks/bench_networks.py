"""Patch vs retrain for neural networks, side by side in one run.

Run: python benchmarks/bench_networks.py [--n 50000]

Fits an MLPClassifier on n rows, patches out a random 1% with PumaPatcher, retrains
the same estimator from scratch without those rows, and prints the patch/retrain time
ratio next to the prediction agreement between patch and retrain on held-out rows.
The agreement of the original model with the retrained one is printed too: retraining
from scratch moves a net by more than the removed rows do, so that figure is the
ceiling for any patch.
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from sklearn_puma import PumaPatcher


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=30)
    args = parser.parse_args()
    X, y = make_classification(args.n + 10_000, args.features, n_informative=15,
                               n_classes=4, n_clusters_per_class=2, random_state=0)
    X = StandardScaler().fit_transform(X)
    X, X_test, y, y_test = X[: args.n], X[args.n:], y[: args.n], y[args.n:]
    remove = np.zeros(args.n, dtype=bool)
    remove[np.random.default_rng(0).choice(args.n, args.n // 100, replace=False)] = True

    est = MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model, t_fit = timed(lambda: clone(est).fit(X, y))
        retrained, t_retrain = timed(lambda: clone(est).fit(X[~remove], y[~remove]))
    print(f"MLPClassifier{est.hidden_layer_sizes} on {args.n} rows: fit {t_fit:.1f}s, "
          f"retrain without 1% {t_retrain:.1f}s")
    reference = np.mean(model.predict(X_test) == retrained.predict(X_test))
    for parameters in ("last_layer",):
        puma = PumaPatcher(FrozenEstimator(model), parameters=parameters)
        _, t_prepare = timed(lambda: puma.fit(X, y))
        _, t_patch = timed(lambda: puma.patch(remove))
        agree = np.mean(puma.predict(X_test) == retrained.predict(X_test))
        print(f"  PUMA parameters={parameters!r}: value all rows {t_prepare:.2f}s, "
              f"patch {t_patch:.2f}s (eta {puma.eta_:.2f})")
        print(f"  patch / retrain time ratio: {t_patch / t_retrain:.3f} "
              f"(with valuation: {(t_prepare + t_patch) / t_retrain:.3f})")
        print(f"  held-out agreement patch vs retrain: {agree:.4f} "
              f"(original vs retrain: {reference:.4f}); accuracy original "
              f"{np.mean(model.predict(X_test) == y_test):.4f}, patched "
              f"{np.mean(puma.predict(X_test) == y_test):.4f}")


if __name__ == "__main__":
    main()
