"""The command line's run: load the table, fit, value, patch, report (``_cli`` parses)."""

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
from threadpoolctl import threadpool_limits

from ._adapters import UnsupportedEstimatorError
from ._cli import DEFAULT_FLIP, MIN_ROWS, TIMING_REPEATS, CLIError
from ._datasets import flip_labels
from ._patcher import PumaPatcher


@dataclass
class Table:
    name: str
    X: pd.DataFrame  # numeric feature columns only
    y: np.ndarray
    target: str


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
def run(args, stream):
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
    # scikit-learn's lbfgs interleaves its OpenMP loss with OpenBLAS products, whose
    # threads then compete for the same cores: on 2 cores one BLAS thread fits a 28k x
    # 40 table 2.7x faster (0.105 s -> 0.039 s) and a 1e5 x 50 multinomial one 2.3x.
    # PUMA's own passes run their chunks in worker threads with one BLAS thread each
    # anyway, so the whole run (fit, patch and the refit it is timed against) takes one.
    with warnings.catch_warnings(record=True) as caught, \
            threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("always", UserWarning)
        try:
            start = time.perf_counter()
            puma.fit(X_fit, y_fit, eval_set=eval_set)
            puma.values_  # computed on first access: part of "fitted and valued"
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


