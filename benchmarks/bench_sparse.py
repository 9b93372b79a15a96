"""Values of a sparse text model (TF-IDF, 10^5 features and more) against its fit and
against leave-one-out refits.

For each table from ``make_bag_of_words``, in one process with the same thread settings
on both sides:

* fit: ``LogisticRegression(C).fit(X, y)`` on the CSR matrix;
* values: ``PumaPatcher(FrozenEstimator(model)).fit(X, y).values_``, everything PUMA
  adds to that fit (the curvature in kernel form, leverages, every training point's
  leave-one-out value), and its ratio to the fit;
* agreement: Pearson correlation of 20 random points' values with the change in the
  training loss (and in a held-out loss) when the model is refitted without each.

    python benchmarks/bench_sparse.py            # 2000 and 4000 rows
    python benchmarks/bench_sparse.py --quick    # the 2000-row table only
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression

from sklearn_puma import PumaPatcher, make_bag_of_words

TABLES = [(2000, 100_000, 10.0), (2000, 100_000, 1.0), (4000, 150_000, 10.0)]


def _loss(model, X, y):
    p = model.predict_proba(X)[np.arange(len(y)), y]
    return -np.log(np.clip(p, 1e-300, None)).mean()


def run(n, d, C, n_points=20, seed=0):
    X_all, y_all = make_bag_of_words(n + 1000, d, random_state=seed)
    X, y, X_val, y_val = X_all[:n], y_all[:n], X_all[n:], y_all[n:]

    def model():
        return LogisticRegression(C=C, max_iter=2000, tol=1e-10)

    start = time.perf_counter()
    fitted = model().fit(X, y)
    fit_s = time.perf_counter() - start
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        puma = PumaPatcher(FrozenEstimator(fitted)).fit(X, y)
        values = puma.values_
        values_s = time.perf_counter() - start
        held_out = PumaPatcher(FrozenEstimator(fitted)).fit(
            X, y, eval_set=(X_val, y_val)).values_
    points = np.random.default_rng(seed + 1).choice(n, n_points, replace=False)
    base = _loss(fitted, X, y), _loss(fitted, X_val, y_val)
    refits = []
    for i in points:
        keep = np.arange(n) != i
        m = model().fit(X[keep], y[keep])
        refits.append((_loss(m, X, y) - base[0], _loss(m, X_val, y_val) - base[1]))
    refits = np.array(refits)
    return {
        "table": f"{n} x {d}, nnz/row {X.nnz / n:.0f}, C={C:g}",
        "solver": puma.hessian_,
        "fit_s": fit_s,
        "values_s": values_s,
        "ratio": values_s / fit_s,
        "pearson_train": np.corrcoef(values[points], refits[:, 0])[0, 1],
        "pearson_held_out": np.corrcoef(held_out[points], refits[:, 1])[0, 1],
        "warnings": sorted({type(w.message).__name__ for w in caught}),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first table only")
    args = parser.parse_args()
    print(f"{'table':<38} {'solver':>6} {'fit s':>7} {'values s':>9} {'ratio':>6} "
          f"{'r train':>8} {'r held-out':>10}")
    for n, d, C in TABLES[:1] if args.quick else TABLES:
        row = run(n, d, C)
        print(f"{row['table']:<38} {row['solver']:>6} {row['fit_s']:>7.2f} "
              f"{row['values_s']:>9.2f} {row['ratio']:>6.2f} {row['pearson_train']:>8.4f} "
              f"{row['pearson_held_out']:>10.4f}"
              + (f"  warnings: {row['warnings']}" if row["warnings"] else ""))


if __name__ == "__main__":
    main()
