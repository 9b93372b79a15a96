"""Command line: value every training row of a classification table, patch out the most
harmful ones, and report what that did to held-out accuracy, the criteria and the time.

``sklearn-puma`` (or ``python -m sklearn_puma``) with no arguments runs on scikit-learn's
breast cancer data with 10% of the training labels flipped; ``--data FILE --target COL``
runs on the user's own CSV table.
"""

import argparse
import sys

# Nothing heavy at import: ``--help`` and a usage error must answer at once, so numpy,
# pandas, scikit-learn and torch come in with the run itself (``_demo``).
from ._names import CRITERION_NAMES, GROUP_CRITERIA

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
def main(argv=None):
    """Run the command line; returns the exit status (0 success, 2 usage/data error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed
        return int(exc.code or 0)
    from ._demo import run

    try:
        return run(args, sys.stdout)
    except CLIError as exc:
        print(f"sklearn-puma: error: {exc}", file=sys.stderr)
        return 2
