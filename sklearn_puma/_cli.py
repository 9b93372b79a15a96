"""Command line: value every training row of a table, patch out the most suspect ones,
and report what that did to held-out performance, the criteria and the time.

``sklearn-puma`` (or ``python -m sklearn_puma``) with no arguments runs on scikit-learn's
breast cancer data with 10% of the training labels flipped; ``--data FILE --target COL``
runs on the user's own CSV table (classification or regression).
"""

import argparse
import os
import stat
import sys

# Nothing heavy at import: ``--help``, ``--version`` and a usage error must answer at
# once, so numpy, pandas, scikit-learn and torch come in with the run itself (``_demo``).
from . import __version__
from ._names import CRITERION_NAMES, GROUP_CRITERIA

DEFAULT_FLIP = 0.1
MIN_ROWS = 20
# Timings repeat while they are cheap: best of up to this many calls of each side,
# within this budget for both.
TIMING_REPEATS = 50
TIMING_BUDGET_S = 1.0

# Task detection from the target column (``--task auto``). A whole-number target is a set
# of classes unless it has more than MAX_AUTO_CLASSES distinct values, or fewer than
# MIN_ROWS_PER_AUTO_CLASS rows per distinct value on average (too few for the stratified
# train/validation/test split a classifier gets: such a column is a count or a measure).
MAX_AUTO_CLASSES = 20
MIN_ROWS_PER_AUTO_CLASS = 4

# Bounds on the table, checked on the header (columns) or while reading (rows, bytes).
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_COLUMNS = 10_000
DEFAULT_MAX_BYTES = 2**30

# The criteria by task (``_criteria`` holds the same split; a test checks they agree).
CLASSIFICATION_CRITERIA = ("loss", "log_loss", "brier", "ece", "accuracy",
                           "per_class_loss")
REGRESSION_CRITERIA = ("loss", "squared_error")
# --model NAME -> the estimator per task (``_demo`` builds them).
MODELS = {
    "logistic": {"classification": "LogisticRegression(max_iter=1000)"},
    "ridge": {"regression": "Ridge()"},
    "mlp": {"classification": "MLPClassifier(hidden_layer_sizes=(16,), max_iter=500, "
                              "random_state=SEED)",
            # adam needs more epochs for a target on its own scale (not standardised).
            "regression": "MLPRegressor(hidden_layer_sizes=(16,), max_iter=2000, "
                          "random_state=SEED)"},
}
DEFAULT_MODEL = {"classification": "logistic", "regression": "ridge"}

DESCRIPTION = f"""\
Value every training row of a table with PUMA, patch the most suspect rows out of the
fitted model without retraining, and report held-out performance (accuracy or R^2),
the criteria before and after, and the time of the patch against a refit.

Table: a CSV file with a header row (--data, --target), plain or gzip/bzip2/xz
compressed. By default its columns are prepared by a ColumnTransformer fitted on the
fitted rows: numeric columns get median imputation and standard scaling, text and
true/false columns most-frequent imputation and one-hot encoding (categories unseen in
the fitted rows are ignored). --no-preprocess gives the columns to the model as they
are: they must then be numeric and complete.

Task (--task auto): a target of text or true/false values is classification; numbers
with a fractional part are regression; whole numbers are classes when there are at
most {MAX_AUTO_CLASSES} distinct values and at least {MIN_ROWS_PER_AUTO_CLASS} rows per \
distinct value on average, and
regression otherwise (a count, a price in whole units). --task classification or
--task regression overrides the rule.

Model (--model): logistic = LogisticRegression(max_iter=1000) (classification, the
default); ridge = Ridge() (regression, the default); mlp = MLPClassifier(max_iter=500)
or MLPRegressor(max_iter=2000), one hidden layer of 16 units, random_state=--seed.
The training part of the table is split into the rows the model is fitted on (the rows
that are valued and may be patched out) and validation rows the criteria are measured
on (--eval-size); a test part (--test-size) measures accuracy (classification) or R^2
(regression). Splits are stratified by class for classification. Values: positive =
the row helps the criterion, negative = it hurts; the lowest are the most harmful rows.
Ranking (--rank-by): for classification the rows most likely mislabelled come first
(rank_label_errors: each row's probability of its own label under the model fitted
without it, lowest first), for regression the most harmful rows; the first --remove of
the ranking are patched out, at most a quarter of any class.

Without --data, runs on scikit-learn's breast cancer data with 10% of the fitted rows'
labels flipped at random (--flip, --seed), and reports how many flipped rows the
ranking finds. Nothing is written to disk unless --output or --save-model is given."""

EPILOG = f"""\
output: a text report on stdout (progress lines on stderr; --quiet: one summary line).
  --output FILE writes the values of the fitted rows (CSV, or JSON for a .json name or
  --format json). --format without --output prints that CSV or JSON on stdout in place
  of the report. In CSV, text cells starting with = + - @ tab or carriage return get a
  leading ' so that a spreadsheet does not run them as formulas.
safety: --output and --save-model never replace an existing file unless --force, and
  never the input table. Input must be a regular file of at most --max-bytes (after
  decompression), --max-rows rows and --max-columns columns (checked on the header),
  without duplicate column names.
exit status: 0 on success, 2 on a usage or data error (one line on stderr).
examples:
  sklearn-puma
  sklearn-puma --criterion per_class_loss --remove 20 --top 5
  sklearn-puma --data penguins.csv --target species --flip 0.05 --output values.csv
  sklearn-puma --data houses.csv --target price --model mlp --format json > values.json
  sklearn-puma --data table.csv --target label --save-model patched.skops
version {__version__}"""


class CLIError(Exception):
    """A problem with the user's input: printed as one message, exit status 2."""


def short_list(names, limit=5):
    """Up to ``limit`` names, then "and N more": a message stays one short line."""
    names = [repr(str(n)) if not isinstance(n, str) else repr(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


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


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {text}")
    return value


_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def _size_arg(text):
    """Bytes, with an optional binary suffix K, M or G (1K = 1024)."""
    number, unit = text.strip(), ""
    if number[-1:].upper() in _SIZE_UNITS:
        number, unit = number[:-1], number[-1].upper()
    try:
        value = int(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of bytes such as 500M or 2G; got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte; got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, like the data errors: the usage block is what --help is for.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = _Parser(
        prog="sklearn-puma",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__}")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", metavar="FILE.csv",
        help="CSV table with a header row, plain or gzip/bzip2/xz compressed "
             "(default: scikit-learn's breast cancer data with flipped training labels)",
    )
    data.add_argument("--target", metavar="COLUMN",
                      help="the column to predict (required with --data)")
    data.add_argument(
        "--task", choices=["auto", "classification", "regression"], default="auto",
        help="what the target is (default: %(default)s, the rule above)",
    )
    data.add_argument(
        "--no-preprocess", dest="preprocess", action="store_false",
        help="give the columns to the model as they are, without imputation, scaling or "
             "one-hot encoding (every feature column must then be numeric and complete)",
    )
    data.add_argument(
        "--flip", type=_fraction_arg(True, False), metavar="FRACTION",
        help=f"classification only: flip this fraction of the fitted rows' labels to "
             f"another class (the validation and test rows keep theirs), to see how many "
             f"the ranking finds (default: {DEFAULT_FLIP} without --data, none with "
             f"--data)",
    )
    data.add_argument("--test-size", type=_fraction_arg(False, False), default=0.25,
                      metavar="FRACTION",
                      help="fraction of the rows held out to measure accuracy or R^2 "
                           "(default: %(default)s)")
    data.add_argument(
        "--eval-size", type=_fraction_arg(True, False), default=0.25, metavar="FRACTION",
        help="fraction of the training rows held out as the validation set the criteria "
             "are measured on (default: %(default)s). 0 measures them on the fitted rows "
             "themselves, where a mislabelled row tends to look helpful: removing it "
             "raises its own loss",
    )
    data.add_argument("--seed", type=int, default=0,
                      help="seed of the splits, the label flips and the mlp's initial "
                           "weights (default: %(default)s)")
    data.add_argument("--max-rows", type=_positive_int, default=DEFAULT_MAX_ROWS,
                      metavar="N",
                      help="refuse a table with more data rows (default: %(default)s)")
    data.add_argument("--max-columns", type=_positive_int, default=DEFAULT_MAX_COLUMNS,
                      metavar="N",
                      help="refuse a table with more columns, checked on the header "
                           "before the rows are read (default: %(default)s)")
    data.add_argument("--max-bytes", type=_size_arg, default=DEFAULT_MAX_BYTES,
                      metavar="SIZE",
                      help="refuse a table larger than this once decompressed, e.g. 500M "
                           "(default: 1G)")

    puma = parser.add_argument_group("model and PUMA")
    puma.add_argument(
        "--model", choices=list(MODELS),
        help="logistic (classification), ridge (regression) or mlp (either); default: "
             "logistic for classification, ridge for regression",
    )
    puma.add_argument(
        "--criterion", default="loss",
        # The fairness criteria need a sensitive attribute, which a CSV row lacks here.
        choices=[c for c in CRITERION_NAMES if c not in GROUP_CRITERIA],
        help="criterion the rows are valued against and the patch protects, lower is "
             "better (default: %(default)s, the model's own training loss). "
             "Classification: loss, log_loss, brier, ece (smooth calibration error), "
             "accuracy (smooth error rate), per_class_loss (one row per class). "
             "Regression: loss, squared_error",
    )
    puma.add_argument(
        "--remove", type=_remove_arg, default=0.1, metavar="N_OR_FRACTION",
        help="how many of the first fitted rows of the ranking (--rank-by) to patch out, "
             "at most a quarter of any class: a count (e.g. 20) "
             "or a fraction in (0, 1) (default: %(default)s)",
    )
    puma.add_argument(
        "--rank-by", choices=["auto", "label_errors", "values"], default="auto",
        help="how the fitted rows are ranked, the first --remove of them patched out: "
             "label_errors = rank_label_errors, each row's leave-one-out probability of "
             "its own label, lowest first (classification; the better detector of wrong "
             "labels); values = the values against --criterion, most harmful first; "
             "auto = label_errors for classification, values for regression "
             "(default: %(default)s)",
    )
    puma.add_argument("--delta", type=_non_negative_float, default=0.05,
                      help="largest allowed worsening of any criterion row, in the "
                           "criterion's units (for regression: the target's units "
                           "squared), measured after the patch (default: %(default)s)")
    puma.add_argument("--alpha", type=_fraction_arg(True, True), default=0.01,
                      help="sparsity of the compensation weights in [0, 1]: 1 = plain "
                           "removal, 0 = least squares (default: %(default)s)")

    output = parser.add_argument_group("output")
    output.add_argument("--top", type=_non_negative_int, default=10,
                        help="first rows of the ranking to show (default: %(default)s)")
    output.add_argument(
        "--output", metavar="FILE",
        help="write the values, one record per fitted row: row (0-based position of the "
             "data row in the input table), label (classification) or target "
             "(regression), original_label and flipped (when labels were flipped), "
             "label_proba_left_out (with --rank-by label_errors: the probability of the "
             "row's label under the model fitted without it), value (and value_<row> "
             "per criterion row), removed. Nothing is written without it",
    )
    output.add_argument(
        "--format", choices=["csv", "json"],
        help="format of the values: csv, or json (an object with a 'summary' of the run "
             "and 'rows', one object per fitted row). Default: json for an --output "
             "name ending in .json, else csv. Without --output, prints them on stdout "
             "in place of the report",
    )
    output.add_argument(
        "--save-model", metavar="FILE.skops",
        help="save the patched model in skops format (no code runs on loading; needs "
             "the skops package): a scikit-learn Pipeline of the fitted preprocessing "
             "and the patched estimator, whose predict takes the table's columns. Load "
             "with skops.io.load(FILE, trusted=skops.io.get_untrusted_types(file=FILE)) "
             "after reviewing those types",
    )
    output.add_argument("--force", action="store_true",
                        help="let --output and --save-model replace existing files "
                             "(never the input table)")
    output.add_argument("--quiet", action="store_true",
                        help="print a one-line summary instead of the report, and no "
                             "progress lines")
    return parser


# ------------------------------------------------------------------ option checks
def check_task_options(args, task):
    """Reject options that do not apply to the task (known up front or detected)."""
    if task == "regression":
        if args.flip:
            raise CLIError("--flip applies to classification only (it flips class labels); "
                           "this is a regression target")
        if args.rank_by == "label_errors":
            raise CLIError("--rank-by label_errors applies to classification only (label "
                           "errors are wrong classes); rank a regression's rows by values")
    allowed = CLASSIFICATION_CRITERIA if task == "classification" else REGRESSION_CRITERIA
    if args.criterion not in allowed:
        other = "regressors" if task == "classification" else "classifiers"
        raise CLIError(
            f"--criterion {args.criterion} is for {other} only; for {task} use one of: "
            f"{', '.join(allowed)}"
        )
    if args.model is not None and task not in MODELS[args.model]:
        fits = [name for name, tasks in MODELS.items() if task in tasks]
        raise CLIError(f"--model {args.model} does not do {task}; for {task} use "
                       f"{' or '.join(fits)}")


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_paths(args):
    """Output paths: never the input, never an existing file without --force."""
    outputs = [(flag, path) for flag, path in
               (("--output", args.output), ("--save-model", args.save_model)) if path]
    if len(outputs) == 2 and _same_file(outputs[0][1], outputs[1][1]):
        raise CLIError("--output and --save-model name the same file")
    for flag, path in outputs:
        if args.data is not None and _same_file(path, args.data):
            raise CLIError(f"{flag} {path} is the input table: refusing to overwrite it "
                           "(even with --force)")
        try:
            info = os.stat(path)
        except FileNotFoundError:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise CLIError(f"{flag} {path}: no such directory {parent}") from None
            continue
        except OSError as exc:
            raise CLIError(f"{flag} {path}: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise CLIError(f"{flag} {path} exists and is not a regular file")
        if not args.force:
            raise CLIError(f"{flag} {path} already exists; pass --force to replace it")


def check_save_model_available(args):
    import importlib.util

    if args.save_model and importlib.util.find_spec("skops") is None:
        raise CLIError("--save-model needs the skops package: pip install skops "
                       "(or pip install 'sklearn-puma[cli]')")


class Progress:
    """One line per phase on stderr, so that a long run shows where it is."""

    def __init__(self, quiet):
        self.quiet = quiet

    def __call__(self, text):
        if not self.quiet:
            print(f"sklearn-puma: {text} ...", file=sys.stderr, flush=True)


def main(argv=None):
    """Run the command line; returns the exit status (0 success, 2 usage/data error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2): printed
        return int(exc.code or 0)
    try:
        if args.data is None:
            if args.target is not None:
                raise CLIError("--target needs --data (the default data has its own "
                               "target)")
            if args.task == "regression":
                raise CLIError("--task regression needs --data: the default data is a "
                               "classification table")
        elif args.target is None:
            raise CLIError("--data needs --target COLUMN (the column to predict)")
        if args.data is None or args.task != "auto":
            check_task_options(args, "classification" if args.data is None else args.task)
        check_paths(args)
        check_save_model_available(args)
        progress = Progress(args.quiet)
        source = None
        if args.data is not None:
            # Before pandas, scikit-learn and torch are imported (seconds): a table
            # refused on its file or header is refused at once.
            from ._table import open_table

            progress(f"reading {args.data}")
            source = open_table(args.data, args.target, max_columns=args.max_columns,
                                max_bytes=args.max_bytes)
        from ._demo import run

        return run(args, sys.stdout, source, progress)
    except CLIError as exc:
        print(f"sklearn-puma: error: {exc}", file=sys.stderr)
        return 2
