"""Patch vs retrain, and values vs leave-one-out refits, for linear models.

Run: python benchmarks/bench_linear.py [--n 20000] [--features 50]

Everything is measured side by side in one run; the script prints ratios, not
absolute targets.  For a linear model a refit is already cheap, so the patch's worth
here is its exactness and the performance limit; the leave-one-out comparison is where
the time goes (n refits against one pass).
"""

import argparse
import time

import numpy as np
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from sklearn_puma import PumaPatcher
from sklearn_puma._adapters import make_adapter


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def cluster(X, fraction, seed=0):
    rng = np.random.default_rng(seed)
    order = np.argsort(np.linalg.norm(X - X[rng.integers(len(X))], axis=1))
    mask = np.zeros(len(X), dtype=bool)
    mask[order[: int(fraction * len(X))]] = True
    return mask


def bench(name, est, X, y, n_loo):
    remove = cluster(X, 0.01)
    fitted, t_fit = timed(lambda: clone(est).fit(X, y))

    def value():
        puma = PumaPatcher(est).fit(X, y)
        puma.values_  # computed on first access
        return puma

    puma, t_value = timed(value)
    _, t_patch = timed(lambda: puma.patch(remove))
    kept = ~remove
    retrained, t_retrain = timed(lambda: clone(est).fit(X[kept], y[kept]))
    # The parameter error is against a retrain to a tight tolerance: the patch lands on
    # the optimum, which a default-tol retrain misses by its own tolerance.
    tight = clone(est).set_params(tol=1e-12, **({"max_iter": 100_000}
                                               if "max_iter" in est.get_params() else {}))
    retrained = tight.fit(X[kept], y[kept])
    theta = [make_adapter(e).theta.numpy() for e in (fitted, puma.estimator_, retrained)]
    rel_err = np.linalg.norm(theta[1] - theta[2]) / np.linalg.norm(theta[0] - theta[2])
    agree = np.mean(puma.predict(X) == retrained.predict(X)) if hasattr(est, "classes_") \
        or hasattr(est, "predict_proba") else np.nan

    rng = np.random.default_rng(0)
    points = rng.choice(len(X), n_loo, replace=False)

    def loo_refits():
        for i in points:
            keep = np.arange(len(X)) != i
            clone(est).fit(X[keep], y[keep])

    _, t_loo = timed(loo_refits)
    t_loo_all = t_loo / n_loo * len(X)
    print(f"\n{name}: n={len(X)}, p={theta[0].size}")
    print(f"  fit {t_fit:.3f}s | fit+value all points {t_value:.3f}s | "
          f"patch 1% cluster {t_patch:.3f}s | retrain without it {t_retrain:.3f}s")
    print(f"  patch / retrain time ratio: {t_patch / t_retrain:.2f}")
    print(f"  patch vs tight retrain: relative parameter error {rel_err:.2e}"
          + ("" if np.isnan(agree) else f", prediction agreement {agree:.4f}"))
    print(f"  values for all {len(X)} points: {t_value:.2f}s vs exact leave-one-out "
          f"refits (extrapolated from {n_loo}): {t_loo_all:.1f}s -> "
          f"{t_loo_all / t_value:.0f}x faster")


def bench_compensation(X, y, share=0.5):
    """Half of class 1 forgotten under criterion="per_class_loss": the compensation
    (first solve, then measured rounds) has work to do.  Patch against the refit on
    its sample_weight_ (what the patch must equal) and against the plain retrain."""
    rng = np.random.default_rng(1)
    ones = np.flatnonzero(y == 1)
    remove = np.zeros(len(y), dtype=bool)
    remove[rng.choice(ones, int(share * len(ones)), replace=False)] = True
    est = LogisticRegression(max_iter=1000)
    puma = PumaPatcher(est, criterion="per_class_loss").fit(X, y)
    _, t_patch = timed(lambda: puma.patch(remove))
    _, t_refit = timed(lambda: clone(est).fit(X, y, sample_weight=puma.sample_weight_))
    kept = ~remove
    _, t_retrain = timed(lambda: clone(est).fit(X[kept], y[kept]))
    change = puma.criterion_after_ - puma.criterion_before_
    print(f"\nLogisticRegression, {share:.0%} of class 1 forgotten, per_class_loss: "
          f"eta {puma.eta_:.3f}, {int((puma.lambda_ > 0).sum())} up-weighted, worst "
          f"row {change.max():+.4f} (delta {puma.delta})")
    print(f"  patch {t_patch:.3f}s | refit on sample_weight_ {t_refit:.3f}s | plain "
          f"retrain {t_retrain:.3f}s")
    print(f"  patch / refit time ratio: {t_patch / t_refit:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--loo", type=int, default=20, help="refits timed for LOO")
    args = parser.parse_args()
    X, y = make_classification(args.n, args.features, n_informative=10, random_state=0)
    X = StandardScaler().fit_transform(X)
    bench("LogisticRegression", LogisticRegression(max_iter=1000), X, y, args.loo)
    bench_compensation(X, y)
    Xr, yr = make_regression(args.n, args.features, noise=5.0, random_state=0)
    bench("Ridge", Ridge(alpha=1.0), StandardScaler().fit_transform(Xr), yr, args.loo)


if __name__ == "__main__":
    main()
