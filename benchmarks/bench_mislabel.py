"""Mislabelled rows: PUMA against cleanlab and Data-OOB on real tables (Fig. 5).

Run: python benchmarks/bench_mislabel.py [--seeds 20] [--first-seed 0] [--large-seeds 3]
[--tables penguins fair ...]
(needs the benchmarks extra: ``pip install ".[benchmarks]"``)

10% of the labels of each table are flipped to another class (``flip_labels``, one
flip per seed) and each method ranks the rows, most suspicious first. ``recall@20%``
is the fraction of the flipped rows among the first 20% of the ranking (``@10%``: the
first 10%), mean +- standard error over the flip seeds (rows with tied scores count as
inspected in random order). ``PUMA - cleanlab`` and ``PUMA - Data-OOB`` are the mean
paired per-seed differences with their standard errors; ``W/T/L`` counts the seeds on
which PUMA found more, as many, or fewer flipped rows than cleanlab. The last lines say,
table by table and pooled over every (table, seed), whether PUMA is at least as good as
each peer within one standard error, and faster.

The tables: scikit-learn's breast cancer, digits and wine; noisy two moons under an
MLP; and real tables shipped inside packages on the package index (read offline):
palmerpenguins' penguins (species), statsmodels' ``fair`` (any affair; 6,366 rows) and
``anes96`` (the 1996 vote), and vega_datasets' ``cars`` (origin) and ``seattle-weather``
(the day's weather, 5 classes, the hardest: a linear model gets 59% of it right). Each
table's rows are put in one random order first (the same for every method):
statsmodels' ``fair`` is sorted by its source, and cross-validation's unshuffled folds
then split along that order, which flatters cross-validated probabilities (recall
0.586 against 0.568 with the rows shuffled, measured on seeds 0-9).

The methods, each a whole pipeline from the labelled table (``s``: its wall time, the
median over the seeds of the best of up to 3 runs, the same threads for every method):

- PUMA: ``PumaPatcher(estimator).fit(X, y)`` (the model fit included), then
  ``rank_label_errors(puma)``: each row's leave-one-out probability of its given
  label, lowest first, from that one fit (no refits).
- cleanlab: 5-fold ``cross_val_predict(..., method="predict_proba")`` (five refits),
  then ``cleanlab.filter.find_label_issues`` (its default ``prune_by_noise_rate``); the
  rows it flags come first, each part ordered by cleanlab's self-confidence
  (``cleanlab.rank.get_label_quality_scores``), as ``find_label_issues(...,
  return_indices_ranked_by="self_confidence")`` orders the flagged ones.
- Data-OOB (Kwon & Zou 2023): ``DataOOB(estimator, n_estimators=50)``, each row's
  accuracy under the bootstrap fits that left it out, lowest first (50 refits).

Untimed, on the same fits: PUMA's confident-learning rule on its leave-one-out
probabilities (``method="confident_learning"``), cleanlab's score without its flags
(CV self-confidence), the fitted model's own probability of the label (in-sample),
PUMA's self-influence, and PUMA's ``values_`` for the default criterion (the training
loss), lowest first: the seed's detector, which measures harm to a criterion, not a
wrong label. A generated 100,000-row, 4-class table (``--large-seeds`` flip seeds)
shows the cost where the refits are longest.

By default every pipeline runs on one thread (BLAS, torch, and PUMA's own passes:
``n_jobs=1``): all get the same compute, and on a shared machine BLAS threads spinning
against each other swamp timings this short. ``--threads default`` runs every method
with the thread settings a user gets instead (no limits; PUMA's passes on one worker
thread per CPU, cleanlab's and Data-OOB's fits with their own defaults).
"""

import argparse
import warnings

import numpy as np
import pandas as pd
import torch
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.datasets import (
    make_classification,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from _measure import recall_at, timed  # benchmarks/ is on the path of a script run here
from _tables import TABLES
from sklearn_puma import PumaPatcher, PumaWarning, flip_labels, rank_label_errors
from sklearn_puma.valuation import DataOOB

FLIP = 0.1
INSPECTED = (0.1, 0.2)


def datasets(names, large):
    """(name, X, y, estimator, PumaPatcher settings per PUMA row, seeds to run on: None
    for all), the rows of each table in one seeded random order."""
    linear = LogisticRegression(max_iter=1000)
    if large:
        # 100,000 rows: where the peers' refits cost most.
        X, y = make_classification(n_samples=100_000, n_features=40, n_informative=20,
                                   n_classes=4, n_clusters_per_class=1, random_state=0)
        yield ("generated 100k", StandardScaler().fit_transform(X), y, linear,
               {"all": {}}, large)
    for name in names:
        X, y = TABLES[name]()
        _, y = np.unique(y, return_inverse=True)
        order = np.random.default_rng(0).permutation(len(y))
        X, y = StandardScaler().fit_transform(X[order]), y[order]
        if name == "two moons":
            mlp = MLPClassifier((32,), max_iter=3000, random_state=0)
            yield (name, X, y, mlp, {"all": {"parameters": "all"},
                                     "last layer": {"parameters": "last_layer"}}, None)
        else:
            yield name, X, y, linear, {"all": {}}, None


# PUMA's passes: 1 (one thread, like the peers' fits under --threads one) or None (its
# default, one worker thread per CPU, under --threads default).
PUMA_N_JOBS = 1


def puma_pipeline(estimator, settings, X, y):
    puma = PumaPatcher(estimator, n_jobs=PUMA_N_JOBS, **settings).fit(X, y)
    return puma, rank_label_errors(puma, return_scores=True)[1]


def cleanlab_pipeline(estimator, X, y):
    proba = cross_val_predict(estimator, X, y, cv=5, method="predict_proba")
    flagged = find_label_issues(y, proba, n_jobs=1)
    quality = get_label_quality_scores(y, proba, method="self_confidence")
    return quality - flagged, quality


def data_oob_pipeline(estimator, X, y, seed):
    # Kwon & Zou (2023): out-of-bag accuracy over 50 bootstrap fits of the same model,
    # lowest first.
    return DataOOB(estimator, n_estimators=50, random_state=seed).fit(X, y).values_


TIMED = ["PUMA", "cleanlab", "Data-OOB"]
UNTIMED = ["PUMA conf. learning", "CV self-conf.", "in-sample self-conf.",
           "PUMA self-infl.", "PUMA values_"]


def one_seed(estimator, puma_rows, X, y, seed):
    """Per PUMA setting: each method's recalls (scores: lower is more suspicious) and
    the timed ones' wall times. The peers run once per seed, whatever PUMA's settings."""
    y_noisy, flipped = flip_labels(y, FLIP, random_state=seed)
    (cl_scores, cv_quality), cl_time = timed(
        lambda: cleanlab_pipeline(estimator, X, y_noisy))
    oob_scores, oob_time = timed(lambda: data_oob_pipeline(estimator, X, y_noisy, seed))
    rows = {}
    for label, settings in puma_rows.items():
        (puma, puma_scores), puma_time = timed(
            lambda: puma_pipeline(estimator, settings, X, y_noisy))  # noqa: B023
        values = puma.values_
        scores = {
            "PUMA": puma_scores, "cleanlab": cl_scores, "Data-OOB": oob_scores,
            "PUMA conf. learning": rank_label_errors(puma, method="confident_learning",
                                                     return_scores=True)[1],
            "CV self-conf.": cv_quality,
            "in-sample self-conf.": puma.predict_proba(X)[np.arange(len(y)), y_noisy],
            "PUMA self-infl.": -puma.self_influence(),
            "PUMA values_": values if values.ndim == 1 else values.sum(axis=1),
        }
        row = {f"{method} @{share:.0%}": recall_at(s, flipped, share)
               for method, s in scores.items() for share in INSPECTED}
        row.update({"PUMA s": puma_time, "cleanlab s": cl_time, "Data-OOB s": oob_time})
        rows[label] = row
    return rows


def _mean_se(series):
    se = series.sem() if len(series) > 1 else 0.0
    return series.mean(), se


def _fmt(series):
    mean, se = _mean_se(series)
    return f"{mean:.3f} +- {se:.3f}"


def run(names, seeds, large_seeds):
    per_seed = []
    for name, X, y, estimator, puma_rows, n_seeds in datasets(names, large_seeds):
        # One untimed run of each pipeline first: one-off costs (lazy imports, torch's
        # first calls) belong to no method.
        puma_pipeline(estimator, next(iter(puma_rows.values())), X, y)
        cleanlab_pipeline(estimator, X, y)
        model = type(estimator).__name__
        for seed in seeds[:n_seeds]:
            for label, row in one_seed(estimator, puma_rows, X, y, seed).items():
                per_seed.append({"data": name, "model": model if len(puma_rows) == 1
                                 else f"{model} ({label})", "n": len(y), "seed": seed,
                                 **row})
            print(".", end="", flush=True)
    print()
    return pd.DataFrame(per_seed)


def summarise(per_seed):
    groups = per_seed.groupby(["data", "model", "n"], sort=False)
    recalls, comparisons = [], []
    for (name, model, n), table in groups:
        recalls.append({"data": name, "model": model, "n": n, "seeds": len(table),
                        **{column: _fmt(table[column]) for column in table.columns
                           if "@" in column}})
        row = {"data": name, "model": model}
        for share in INSPECTED:
            puma = table[f"PUMA @{share:.0%}"]
            tie = 0.5 / round(FLIP * n)  # recalls are multiples of 1/flipped
            for peer in ("cleanlab", "Data-OOB"):
                diff = puma - table[f"{peer} @{share:.0%}"]
                row[f"PUMA - {peer} @{share:.0%}"] = _fmt(diff)
                if share == max(INSPECTED):
                    row[f"W/T/L vs {peer}"] = (f"{(diff > tie).sum()}/"
                                               f"{(diff.abs() <= tie).sum()}/"
                                               f"{(diff < -tie).sum()}")
        for method in TIMED:
            row[f"{method} s"] = f"{table[f'{method} s'].median():.3f}"
        comparisons.append(row)
    return pd.DataFrame(recalls), pd.DataFrame(comparisons)


def verdicts(per_seed):
    """One line per table and peer, then pooled: at least as good within one standard
    error (of the paired difference) at 20% inspected, and faster (median times). A
    difference of exactly minus one standard error counts as within it (the two are
    the same float up to rounding: one seed one flipped row behind, the rest tied)."""
    lines = []
    top = f"@{max(INSPECTED):.0%}"
    for (name, model), table in per_seed.groupby(["data", "model"], sort=False):
        for peer in ("cleanlab", "Data-OOB"):
            mean, se = _mean_se(table[f"PUMA {top}"] - table[f"{peer} {top}"])
            fast_puma, fast_peer = table["PUMA s"].median(), table[f"{peer} s"].median()
            lines.append(
                f"{name}, {model}: PUMA >= {peer} within 1 SE: "
                f"{'yes' if mean + se >= -1e-12 else 'NO'} (difference {mean:+.4f} +- "
                f"{se:.4f}); faster: {'yes' if fast_puma < fast_peer else 'NO'} "
                f"({fast_puma:.3f} s vs {fast_peer:.3f} s, {fast_peer / fast_puma:.1f}x)")
    for peer in ("cleanlab", "Data-OOB"):
        mean, se = _mean_se(per_seed[f"PUMA {top}"] - per_seed[f"{peer} {top}"])
        lines.append(f"pooled over {len(per_seed)} (table, seed) runs: PUMA - {peer} "
                     f"{mean:+.4f} +- {se:.4f} ({'ahead' if mean > 0 else 'NOT ahead'})")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20,
                        help="number of flip seeds (default: %(default)s)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first flip seed (default: %(default)s)")
    parser.add_argument("--large-seeds", type=int, default=3,
                        help="flip seeds on the generated 100,000-row table (0: skip "
                             "it; default: %(default)s)")
    parser.add_argument("--threads", choices=["one", "default"], default="one",
                        help="one thread for every method, or every method with its "
                             "default threads (default: %(default)s)")
    parser.add_argument("--tables", nargs="+", choices=list(TABLES), default=list(TABLES),
                        help="tables to run (default: all)")
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    # PUMA's notes on the MLP (its optimality gap; with all parameters, the damping of
    # a non-convex Hessian) and sklearn's convergence notes would interleave with the
    # table; they do not change what is measured.
    warnings.simplefilter("ignore", PumaWarning)
    warnings.simplefilter("ignore", ConvergenceWarning)
    if args.threads == "one":
        torch.set_num_threads(1)
        with threadpool_limits(1):  # every BLAS loaded by now: numpy's, scipy's
            per_seed = run(args.tables, seeds, args.large_seeds)
    else:
        global PUMA_N_JOBS
        PUMA_N_JOBS = None
        per_seed = run(args.tables, seeds, args.large_seeds)
    recalls, comparisons = summarise(per_seed)
    print(f"Recall of flipped rows ({FLIP:.0%} of the labels) after inspecting 10% and "
          f"20% of the rows, mean +- standard error over flip seeds {seeds.start}-"
          f"{seeds.stop - 1}")
    with pd.option_context("display.width", 250, "display.max_columns", None,
                           "display.max_colwidth", 40):
        for share in INSPECTED:
            columns = ["data", "model", "n", "seeds"] + [
                f"{method} @{share:.0%}" for method in TIMED + UNTIMED]
            print(f"\nrecall @{share:.0%}")
            print(recalls[columns].to_string(index=False))
        print("\nPaired differences (mean +- standard error), W/T/L at 20% (seeds on "
              "which PUMA found more / as many / fewer), wall time in seconds (median, "
              f"{'one thread' if args.threads == 'one' else 'default threads'})")
        print(comparisons.to_string(index=False))
    print()
    print("\n".join(verdicts(per_seed)))


if __name__ == "__main__":
    main()
