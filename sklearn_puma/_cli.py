"""Command line: value every training row of a classification table, patch out the most
harmful ones, and report what that did to held-out accuracy, the criteria and the time.

``sklearn-puma`` (or ``python -m sklearn_puma``) with no arguments runs on scikit-learn's
breast cancer data with 10% of the training labels flipped; ``--data FILE --target COL``
runs on the user's own CSV table.
"""

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from ._adapters import UnsupportedEstimatorError
from ._criteria import CRITERION_NAMES, GROUP_CRITERIA
from ._datasets import flip_labels
from ._patcher import PumaPatcher

DEFAULT_FLIP = 0.1
MIN_ROWS = 20
TIMING_REPEATS = 3

DESCRIPTION = """\
Value every training row of a classification table with PUMA, patch the most harmful
rows out of the fitted model without retraining, and report held-out accuracy, the
criteria before and after, and the time of the patch against a refit.

Model: StandardScaler + LogisticRegression(max_iter=1000). The training part of the
table is split into the rows the model is fitted on (the rows that are valued and may be
patched out) and validation rows the criteria are measured on (--eval-size); a test
part (--test-size) measures accuracy. Values: positive = the row helps the criterion,
negative = it hurts; the lowest values are the most harmful rows.

Without --data, runs on scikit-learn's breast cancer data with 10% of the training
labels flipped at random (--flip, --seed), and reports how many flipped rows the values
find. Only classification targets are supported from the command line for now (a
continuous target is rejected); regressors (Ridge, LinearRegression, ...) are available
from Python through PumaPatcher."""

EPILOG = """\
exit status: 0 on success, 2 on a usage or data error (message on stderr).
examples:
  sklearn-puma
  sklearn-puma --criterion per_class_loss --remove 20 --top 5
  sklearn-puma --data table.csv --target label --flip 0.05 --output values.csv"""


class CLIError(Exception):
    """A problem with the user's input: printed as one message, exit status 2."""


@dataclass
class Table:
    name: str
    X: pd.DataFrame  # numeric feature columns only
    y: np.ndarray
    target: str


# ------------------------------------------------------------------------- arguments
def _remove_arg(text):
    """An int count (>= 1) or a float fraction in (0, 1)."""
    try:
        count = int(text)
    except ValueError:
        pass
    else:
        if count < 1:
            raise argparse.ArgumentTypeError(f"a count must be at least 1; got {text}")
        return count
    try:
        fraction = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction in (0, 1) or a count; got {text!r}"
        ) from None
    if not 0 < fraction < 1:
        raise argparse.ArgumentTypeError(f"a fraction must be in (0, 1); got {text}")
    return fraction


def _fraction_arg(low_closed, high_closed):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
        ok_low = value >= 0 if low_closed else value > 0
        ok_high = value <= 1 if high_closed else value < 1
        if not (ok_low and ok_high):
            interval = f"{'[' if low_closed else '('}0, 1{']' if high_closed else ')'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}; got {text}")
        return value

    return parse


def _non_negative(kind, expected):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
        return value

    return parse


_non_negative_float = _non_negative(float, "a number")
_non_negative_int = _non_negative(int, "an integer")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="sklearn-puma",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", metavar="FILE.csv",
        help="CSV table with a header row; every column but the target must be numeric "
             "(default: scikit-learn's breast cancer data with flipped training labels)",
    )
    data.add_argument("--target", metavar="COLUMN",
                      help="the class label column of --data (required with --data)")
    data.add_argument(
        "--flip", type=_fraction_arg(True, False), metavar="FRACTION",
        help=f"flip this fraction of the training labels to another class, to see how "
             f"many the values find (default: {DEFAULT_FLIP} without --data, none with "
             f"--data)",
    )
    data.add_argument("--test-size", type=_fraction_arg(False, False), default=0.25,
                      metavar="FRACTION",
                      help="fraction of the rows held out to measure accuracy "
                           "(stratified; default: %(default)s)")
    data.add_argument(
        "--eval-size", type=_fraction_arg(True, False), default=0.25, metavar="FRACTION",
        help="fraction of the training rows held out as the validation set the criteria "
             "are measured on (stratified; default: %(default)s). 0 measures them on the "
             "fitted rows themselves, where a mislabelled row tends to look helpful: "
             "removing it raises its own loss",
    )
    data.add_argument("--seed", type=int, default=0,
                      help="seed of the splits and the label flips (default: %(default)s)")

    puma = parser.add_argument_group("PUMA")
    puma.add_argument(
        "--criterion", default="loss",
        # The fairness criteria need a sensitive attribute, which a CSV row lacks here.
        choices=[c for c in CRITERION_NAMES if c not in GROUP_CRITERIA],
        help="criterion the rows are valued against and the patch protects, lower is "
             "better (default: %(default)s). For this classifier: loss (its own log "
             "loss), log_loss, brier, ece (smooth calibration error), accuracy (smooth "
             "error rate), per_class_loss (one row per class); squared_error is for "
             "regressors and is rejected",
    )
    puma.add_argument(
        "--remove", type=_remove_arg, default=0.1, metavar="N_OR_FRACTION",
        help="how many of the most harmful fitted rows to patch out: a count (e.g. 20) "
             "or a fraction in (0, 1) (default: %(default)s)",
    )
    puma.add_argument("--delta", type=_non_negative_float, default=0.05,
                      help="largest allowed worsening of any criterion row, measured "
                           "after the patch (default: %(default)s)")
    puma.add_argument("--alpha", type=_fraction_arg(True, True), default=0.01,
                      help="sparsity of the compensation weights in [0, 1]: 1 = plain "
                           "removal, 0 = least squares (default: %(default)s)")

    output = parser.add_argument_group("output")
    output.add_argument("--top", type=_non_negative_int, default=10,
                        help="most harmful rows to show (default: %(default)s)")
    output.add_argument(
        "--output", default="puma_values.csv", metavar="FILE.csv",
        help="CSV of the values, one line per fitted row: row (0-based position of the "
             "data row in the input table), label, original_label and flipped (when "
             "labels were flipped), value (and value_<row> per criterion row), removed "
             "(default: %(default)s)",
    )
    output.add_argument("--quiet", action="store_true",
                        help="print a one-line summary instead of the report")
    return parser


# ----------------------------------------------------------------------------- data
def _load_default():
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    return Table("breast cancer (scikit-learn)", bunch.data, bunch.target.to_numpy(),
                 "target")


def _load_csv(path, target):
    path = Path(path)
    if not path.exists():
        raise CLIError(f"no such file: {path}")
    if path.is_dir():
        raise CLIError(f"{path} is a directory, not a CSV file")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise CLIError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise CLIError(f"cannot read {path} as CSV: {exc}") from None
    if target not in frame.columns:
        available = ", ".join(map(str, frame.columns))
        raise CLIError(
            f"target column {target!r} not found in {path}; available columns: {available}"
        )
    X = frame.drop(columns=[target])
    if X.shape[1] == 0:
        raise CLIError(f"{path} has no feature column besides the target {target!r}")
    non_numeric = [
        str(c) for c in X.columns
        if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]))
    ]
    if non_numeric:
        raise CLIError(
            f"non-numeric feature column(s) in {path}: {', '.join(non_numeric)}; encode "
            "them as numbers or drop them (every column but the target must be numeric)"
        )
    X = X.astype(np.float64)
    missing = [str(c) for c in X.columns if X[c].isna().any()]
    if missing:
        raise CLIError(f"missing values in feature column(s): {', '.join(missing)}; "
                       "fill or drop them first")
    infinite = [str(c) for c in X.columns if not np.isfinite(X[c].to_numpy()).all()]
    if infinite:
        raise CLIError(f"infinite values in feature column(s): {', '.join(infinite)}")
    y = frame[target]
    if y.isna().any():
        raise CLIError(f"target column {target!r} has {int(y.isna().sum())} missing "
                       "value(s); drop those rows first")
    return Table(str(path), X, _class_labels(y, target), target)


def _class_labels(y, target):
    """Class labels from the target column; reject a continuous (regression) target."""
    if pd.api.types.is_bool_dtype(y):
        return y.to_numpy()
    if pd.api.types.is_numeric_dtype(y):
        values = y.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise CLIError(f"target column {target!r} has infinite values")
        if np.any(values != np.round(values)):
            raise CLIError(
                f"target column {target!r} is continuous ({y.nunique()} distinct values, "
                "not all integers): the command line supports classification tables only "
                "for now. For regression use PumaPatcher(Ridge()) or "
                "PumaPatcher(LinearRegression()) from Python."
            )
        return values.astype(np.int64)
    return y.astype(str).to_numpy()


def _label(value):
    """A class label as the user wrote it (no numpy repr)."""
    value = value.item() if isinstance(value, np.generic) else value
    return repr(value) if isinstance(value, str) else str(value)


def _check_classes(table, eval_size):
    classes, counts = np.unique(table.y, return_counts=True)
    if len(classes) < 2:
        raise CLIError(
            f"target column {table.target!r} has a single class ({_label(classes[0])}); a "
            "classifier needs at least two"
        )
    n = len(table.y)
    if n < MIN_ROWS:
        raise CLIError(f"too few rows: {n}; need at least {MIN_ROWS}")
    # One row per class in the test part, one in the validation part, two to fit.
    need = 4 if eval_size > 0 else 3
    rare = [f"class {_label(c)} has {k}" for c, k in zip(classes, counts) if k < need]
    if rare:
        raise CLIError(
            f"too few rows per class: {', '.join(rare)}; the stratified "
            f"{'train/validation/test' if eval_size > 0 else 'train/test'} split needs "
            f"at least {need} rows of every class"
        )


def _split(y, size, seed, what):
    rows = np.arange(len(y))
    try:
        return train_test_split(rows, test_size=size, stratify=y, random_state=seed)
    except ValueError as exc:
        raise CLIError(f"too few rows for the {what} split: {exc}") from None


# --------------------------------------------------------------------------- report
def _fmt_table(header, rows, align):
    """Columns aligned: ``align`` is a string of '<' / '>' per column."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    return [
        "  " + "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths)).rstrip()
        for row in cells
    ]


def _fmt_seconds(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _best_time(func, repeats=TIMING_REPEATS):
    """(best wall time of ``repeats`` calls, the last call's result)."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


class _Report:
    def __init__(self, quiet, stream):
        self.quiet, self.stream = quiet, stream

    def __call__(self, *lines):
        if not self.quiet:
            for line in lines:
                print(line, file=self.stream)


# ------------------------------------------------------------------------------ run
def _run(args, stream):
    say = _Report(args.quiet, stream)
    if args.data is None:
        if args.target is not None:
            raise CLIError("--target needs --data (the default data has its own target)")
        table = _load_default()
        flip = DEFAULT_FLIP if args.flip is None else args.flip
    else:
        if args.target is None:
            raise CLIError("--data needs --target COLUMN (the class label column)")
        table = _load_csv(args.data, args.target)
        flip = 0.0 if args.flip is None else args.flip
    _check_classes(table, args.eval_size)

    # Test rows keep their true labels: accuracy is measured against the truth.
    y_true = table.y
    train, test = _split(y_true, args.test_size, args.seed, "train/test")
    y = y_true.copy()
    flipped = np.zeros(len(y), dtype=bool)
    if flip > 0:
        y[train], flipped[train] = flip_labels(y_true[train], flip, random_state=args.seed)
    if args.eval_size > 0:
        fit_pos, val_pos = _split(y[train], args.eval_size, args.seed,
                                  "fit/validation")
        fit, val = train[fit_pos], train[val_pos]
    else:
        fit, val = train, train[:0]
    n_fit = len(fit)
    if len(np.unique(y[fit])) < 2:
        raise CLIError("too few rows: the fitted rows hold a single class")

    scaler = StandardScaler().fit(table.X.iloc[fit])
    X = scaler.transform(table.X)  # a plain array: the report speaks of row numbers
    X_fit, y_fit = X[fit], y[fit]
    X_test, y_test = X[test], y_true[test]
    eval_set = (X[val], y[val]) if len(val) else None
    measured_on = "validation rows" if len(val) else "fitted rows"

    if isinstance(args.remove, int):
        k = args.remove
        if k >= n_fit:
            raise CLIError(f"--remove {k} is not below the {n_fit} fitted rows")
    else:
        k = max(1, int(round(args.remove * n_fit)))

    estimator = LogisticRegression(max_iter=1000)
    puma = PumaPatcher(estimator, criterion=args.criterion, delta=args.delta,
                       alpha=args.alpha)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            start = time.perf_counter()
            puma.fit(X_fit, y_fit, eval_set=eval_set)
            fit_time = time.perf_counter() - start
        except (ValueError, UnsupportedEstimatorError) as exc:
            raise CLIError(str(exc)) from None
        values = puma.values_
        total = values if values.ndim == 1 else values.sum(axis=1)
        order = np.argsort(total, kind="stable")
        harmful = order[:k]
        acc_before = puma.score(X_test, y_test)

        try:
            patch_time, _ = _best_time(lambda: puma.patch(harmful))
        except ValueError as exc:
            raise CLIError(f"cannot patch out the {k} most harmful rows: {exc}") from None
        refit_time, refit = _best_time(
            lambda: clone(estimator).fit(X_fit, y_fit, sample_weight=puma.sample_weight_)
        )
    # Each timing repeat warns alike: keep one copy of each message.
    notes = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    acc_after = puma.score(X_test, y_test)
    acc_refit = refit.score(X_test, y_test)

    # ---- the report
    classes = puma.classes_
    names = list(puma.criterion_names_)
    crit_rows_text = "" if names == [args.criterion] else f" (rows: {', '.join(names)})"
    n_flip_fit = int(flipped[fit].sum())
    flip_text = (f"{flip:.0%} of the training labels flipped (seed {args.seed})"
                 if flip > 0 else "labels as given")
    say(f"sklearn-puma: {table.name}, {flip_text}",
        f"  rows: {len(y)} = {n_fit} fitted + {len(val)} validation + {len(test)} test; "
        f"{table.X.shape[1]} features; classes {', '.join(map(str, classes))}",
        f"  model: StandardScaler + {estimator!r}, fitted and valued in "
        f"{_fmt_seconds(fit_time)}",
        f"  criterion: {args.criterion}{crit_rows_text}, measured on the {measured_on}; "
        f"delta={args.delta:g}, alpha={args.alpha:g}")
    if flip > 0:
        say(f"  flipped labels: {n_flip_fit} of the {n_fit} fitted rows, "
            f"{int(flipped[val].sum())} of the {len(val)} validation rows")

    if args.top:
        multi = values.ndim == 2
        header = ["rank", "row", "label", "value"]
        if multi:
            header += [f"value[{name}]" for name in puma.criterion_names_]
        if flip > 0:
            header += ["flipped"]
        rows = []
        for rank, i in enumerate(order[: args.top], start=1):
            row = [rank, table.X.index[fit[i]], y_fit[i], f"{total[i]:+.3e}"]
            if multi:
                row += [f"{v:+.3e}" for v in values[i]]
            if flip > 0:
                row += [f"yes (was {y_true[fit[i]]})" if flipped[fit[i]] else ""]
            rows.append(row)
        align = "".join(">" if h in ("rank", "row") or h.startswith("value") else "<"
                        for h in header)
        say("", "Most harmful fitted rows (value: predicted change of the criterion if the "
                "row were left out; < 0 = harmful)",
            *_fmt_table(header, rows, align))

    if flip > 0:
        hits = int(flipped[fit][harmful].sum())
        recall = hits / n_flip_fit if n_flip_fit else float("nan")
        say("", f"Flipped rows among the {k} most harmful: {hits} "
                f"(precision {hits / k:.0%}; recall {hits}/{n_flip_fit} = {recall:.0%}, "
                f"against {k / n_fit:.0%} expected from {k} rows picked at random)")

    eta_text = ("full removal" if puma.eta_ >= 1
                else "PARTIAL removal: the step was shortened to respect delta")
    n_up = int((puma.lambda_ > 0).sum())
    crit_rows = [
        [name, f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}"]
        for name, b, a in zip(puma.criterion_names_, puma.criterion_before_,
                              puma.criterion_after_)
    ]
    ratio = patch_time / refit_time
    verdict = (f"the patch took {ratio:.2f}x the refit time" if ratio >= 1
               else f"the patch was {1 / ratio:.1f}x faster than the refit")
    say("", f"Patch: removed the {k} most harmful rows, up-weighted {n_up}; "
            f"eta = {puma.eta_:.3f} ({eta_text})",
        *_fmt_table(["criterion", "before", "after", "change"], crit_rows, "<>>>"),
        f"  held-out accuracy ({len(test)} test rows): before {acc_before:.3f}, "
        f"after the patch {acc_after:.3f}, refit on sample_weight_ {acc_refit:.3f}",
        f"  wall time (best of {TIMING_REPEATS}): patch {_fmt_seconds(patch_time)}, "
        f"refit on sample_weight_ {_fmt_seconds(refit_time)}: {verdict}")
    for note in notes:
        say(f"  warning: {note}")

    # ---- the CSV
    out = pd.DataFrame({"row": table.X.index[fit], "label": y_fit})
    if flip > 0:
        out["original_label"] = y_true[fit]
        out["flipped"] = flipped[fit]
    out["value"] = total
    if values.ndim == 2:
        for j, name in enumerate(puma.criterion_names_):
            out[f"value_{name}"] = values[:, j]
    out["removed"] = np.isin(np.arange(n_fit), puma.removed_)
    out = out.sort_values("row", kind="stable")
    try:
        out.to_csv(args.output, index=False)
    except OSError as exc:
        raise CLIError(f"cannot write {args.output}: {exc}") from None
    say("", f"Values of the {n_fit} fitted rows written to {args.output}")
    if args.quiet:
        summary = (f"sklearn-puma: removed {k} of {n_fit} rows, eta={puma.eta_:.3f}, "
                   f"accuracy {acc_before:.3f} -> {acc_after:.3f}")
        if flip > 0:
            summary += f", {int(flipped[fit][harmful].sum())} of them flipped"
        print(f"{summary}; values in {args.output}", file=stream)
    return 0


def main(argv=None):
    """Run the command line; returns the exit status (0 success, 2 usage/data error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed
        return int(exc.code or 0)
    try:
        return _run(args, sys.stdout)
    except CLIError as exc:
        print(f"sklearn-puma: error: {exc}", file=sys.stderr)
        return 2
