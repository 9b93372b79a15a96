"""The ``sklearn-puma`` command line and the ``flip_labels`` helper it demonstrates."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine

from sklearn_puma import CRITERION_NAMES, flip_labels
from sklearn_puma._cli import main
from sklearn_puma._criteria import GROUP_CRITERIA


def _n_fitted(n_rows, test_size=0.25, eval_size=0.25):
    # train_test_split puts ceil(size * n) rows in the held-out part.
    n_train = n_rows - math.ceil(test_size * n_rows)
    return n_train - math.ceil(eval_size * n_train)


@pytest.fixture(scope="module")
def wine_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "wine.csv"
    load_wine(as_frame=True).frame.to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------- flip_labels
@pytest.mark.parametrize("n_classes", [2, 3])
def test_flip_labels_flips_the_asked_fraction_to_other_classes(n_classes):
    y = np.arange(300) % n_classes
    y_flipped, flipped = flip_labels(y, 0.1, random_state=0)
    assert flipped.dtype == bool and flipped.sum() == 30
    assert np.all(y_flipped[flipped] != y[flipped])
    assert np.array_equal(y_flipped[~flipped], y[~flipped])
    assert set(np.unique(y_flipped)) <= set(np.unique(y))
    again, flipped_again = flip_labels(y, 0.1, random_state=0)
    assert np.array_equal(again, y_flipped) and np.array_equal(flipped_again, flipped)


def test_flip_labels_multiclass_reaches_every_other_class():
    y = np.zeros(600, dtype=int)
    y[200:400], y[400:] = 1, 2
    y_flipped, flipped = flip_labels(y, 0.5, random_state=1)
    # Flipped class-0 labels land on both 1 and 2, in roughly equal numbers.
    new = y_flipped[flipped & (y == 0)]
    counts = np.bincount(new, minlength=3)
    assert counts[0] == 0 and counts[1] > 0.3 * len(new) and counts[2] > 0.3 * len(new)


def test_flip_labels_strings_zero_fraction_and_single_class():
    y = np.array(["a", "b", "c"] * 10)
    y_flipped, flipped = flip_labels(y, 0.2, random_state=0)
    assert flipped.sum() == 6 and np.all(y_flipped[flipped] != y[flipped])
    y_same, none = flip_labels(y, 0.0, random_state=0)
    assert not none.any() and np.array_equal(y_same, y)
    with pytest.raises(ValueError, match="single class"):
        flip_labels(np.ones(10), 0.1)
    with pytest.raises(ValueError, match="fraction"):
        flip_labels(y, 1.5)


# --------------------------------------------------------------------- default run
def test_default_run_reports_and_writes_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    report = capsys.readouterr().out
    assert "eta" in report and "accuracy" in report
    assert "Flipped rows among the" in report and "wall time" in report

    values = pd.read_csv(tmp_path / "puma_values.csv")
    n_fit = _n_fitted(569)
    assert len(values) == n_fit
    assert list(values.columns) == [
        "row", "label", "original_label", "flipped", "value", "removed"
    ]
    assert values["row"].is_unique and values["row"].between(0, 568).all()
    # Ground truth: the true labels of the data set, and the flips are real flips.
    y_true = load_breast_cancer().target
    assert np.array_equal(values["original_label"], y_true[values["row"]])
    assert np.array_equal(values["flipped"], values["label"] != values["original_label"])
    assert values["flipped"].any()
    # --remove 0.1 patches out the 10% lowest values.
    k = round(0.1 * n_fit)
    lowest = values.nsmallest(k, "value").index
    assert values["removed"].sum() == k and values.loc[lowest, "removed"].all()


# ------------------------------------------------------------------------ user CSV
def test_user_csv_run(wine_csv, tmp_path, capsys):
    out = tmp_path / "wine_values.csv"
    assert main(["--data", str(wine_csv), "--target", "target", "--remove", "5",
                 "--top", "3", "--output", str(out)]) == 0
    report = capsys.readouterr().out
    assert "labels as given" in report and "eta" in report and "accuracy" in report
    values = pd.read_csv(out)
    assert len(values) == _n_fitted(178)
    assert list(values.columns) == ["row", "label", "value", "removed"]
    y_true = load_wine().target
    assert np.array_equal(values["label"], y_true[values["row"]])
    assert values["removed"].sum() == 5


def test_user_csv_string_labels_flip_and_several_criterion_rows(tmp_path, capsys):
    frame = load_wine(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    data, out = tmp_path / "wine_named.csv", tmp_path / "values.csv"
    frame.to_csv(data, index=False)
    assert main(["--data", str(data), "--target", "target", "--flip", "0.1",
                 "--criterion", "per_class_loss", "--quiet", "--output", str(out)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1  # --quiet: one line
    values = pd.read_csv(out)
    row_columns = [c for c in values.columns if c.startswith("value_")]
    assert len(row_columns) == 3  # one per class
    assert np.allclose(values["value"], values[row_columns].sum(axis=1))
    assert values["flipped"].any()
    assert np.all(values.loc[values["flipped"], "label"]
                  != values.loc[values["flipped"], "original_label"])


# -------------------------------------------------------------------------- errors
def _write(tmp_path, frame, name="data.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def _wine_frame():
    return load_wine(as_frame=True).frame


ERRORS = {
    "missing file": (lambda p: ["--data", str(p / "nope.csv"), "--target", "target"],
                     ["no such file", "nope.csv"]),
    "missing column": (
        lambda p: ["--data", _write(p, _wine_frame()), "--target", "quality"],
        ["'quality' not found", "available columns", "alcohol", "proline", "target"],
    ),
    "non-numeric feature": (
        lambda p: ["--data", _write(p, _wine_frame().assign(colour="red", region="x")),
                   "--target", "target"],
        ["non-numeric feature column", "colour", "region"],
    ),
    "one class": (
        lambda p: ["--data", _write(p, _wine_frame().assign(target=1)),
                   "--target", "target"],
        ["single class"],
    ),
    "too few rows": (
        lambda p: ["--data", _write(p, _wine_frame().iloc[[0, 1, 2, 3, 4, 60, 61, 62, 63,
                                                             64, 130, 131, 132, 133]]),
                   "--target", "target"],
        ["too few rows: 14"],
    ),
    "too few rows of a class": (
        lambda p: ["--data", _write(p, _wine_frame().iloc[list(range(120)) + [130, 131]]),
                   "--target", "target"],
        ["too few rows per class", "class 2 has 2"],
    ),
    "continuous target": (
        lambda p: ["--data", _write(p, _wine_frame().assign(target=lambda f: f.alcohol)),
                   "--target", "target"],
        ["continuous", "classification"],
    ),
    "missing values": (
        lambda p: ["--data", _write(p, _wine_frame().assign(ash=lambda f: f.ash.where(
            f.index != 3))), "--target", "target"],
        ["missing values", "ash"],
    ),
    "data without target": (lambda p: ["--data", _write(p, _wine_frame())],
                            ["--target"]),
    "regressor criterion": (lambda p: ["--criterion", "squared_error"],
                            ["regressors only"]),
    "remove too many": (lambda p: ["--remove", "10000"], ["--remove 10000"]),
    "bad remove": (lambda p: ["--remove", "1.5"], ["--remove", "(0, 1)"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_exit_2_with_a_message(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_argv, expected = ERRORS[case]
    assert main(make_argv(tmp_path)) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.out == ""
    for text in expected:
        assert text in captured.err, (case, captured.err)
    assert not (tmp_path / "puma_values.csv").exists()


# -------------------------------------------------------------------------- --help
def test_python_m_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "sklearn_puma", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sklearn-puma")
    for option in ["--data", "--target", "--criterion", "--remove", "--delta", "--alpha",
                   "--flip", "--test-size", "--eval-size", "--seed", "--top", "--output",
                   "--quiet"]:
        assert option in result.stdout
    for name in CRITERION_NAMES:
        # The fairness criteria need a sensitive attribute, which the CLI does not take.
        assert (name in result.stdout) == (name not in GROUP_CRITERIA)
