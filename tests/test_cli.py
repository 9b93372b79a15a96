"""The ``sklearn-puma`` command line and the ``flip_labels`` helper it demonstrates."""

import csv
import gzip
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LogisticRegression

import sklearn_puma
from sklearn_puma import CRITERION_NAMES, flip_labels
from sklearn_puma._cli import (
    CLASSIFICATION_CRITERIA,
    MAX_AUTO_CLASSES,
    REGRESSION_CRITERIA,
    build_parser,
    main,
)
from sklearn_puma._criteria import GROUP_CRITERIA

REPO = Path(__file__).resolve().parents[1]


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
def test_default_run_reports_and_writes_no_file(tmp_path, monkeypatch, capsys):
    """The README's first command: the demo's report, and nothing left on disk."""
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    captured = capsys.readouterr()
    report = captured.out
    assert "eta" in report and "accuracy" in report
    assert "Flipped rows among the" in report and "wall time" in report
    assert "Values not written" in report
    assert list(tmp_path.iterdir()) == []
    # One progress line per phase, on stderr.
    for phase in ["reading", "fitting", "valuing", "patching"]:
        assert f"sklearn-puma: {phase}" in captured.err


def test_default_run_output_csv(tmp_path, capsys):
    out = tmp_path / "puma_values.csv"
    assert main(["--output", str(out), "--top", "0"]) == 0
    assert "written to" in capsys.readouterr().out
    values = pd.read_csv(out)
    n_fit = _n_fitted(569)
    assert len(values) == n_fit
    assert list(values.columns) == [
        "row", "label", "original_label", "flipped", "label_proba_left_out", "value",
        "removed"
    ]
    assert values["row"].is_unique and values["row"].between(0, 568).all()
    # Ground truth: the true labels of the data set, and the flips are real flips.
    y_true = load_breast_cancer().target
    assert np.array_equal(values["original_label"], y_true[values["row"]])
    assert np.array_equal(values["flipped"], values["label"] != values["original_label"])
    assert values["flipped"].any()
    # --remove 0.1 patches out the 10% of the rows whose label is least probable
    # under the model fitted without them (--rank-by auto: label errors).
    k = round(0.1 * n_fit)
    lowest = values.nsmallest(k, "label_proba_left_out").index
    assert values["removed"].sum() == k and values.loc[lowest, "removed"].all()
    assert values["label_proba_left_out"].between(0, 1).all()


def test_rank_by_values_removes_the_lowest_values(tmp_path, capsys):
    out = tmp_path / "values.csv"
    assert main(["--rank-by", "values", "--output", str(out), "--top", "0"]) == 0
    report = capsys.readouterr().out
    assert "ranking: values, the most harmful first" in report
    values = pd.read_csv(out)
    assert "label_proba_left_out" not in values.columns
    k = round(0.1 * len(values))
    lowest = values.nsmallest(k, "value").index
    assert values["removed"].sum() == k and values.loc[lowest, "removed"].all()


def test_default_ranking_finds_more_flipped_rows_than_values(capsys):
    # The flips are the ground truth. On the demo's seed the label-error ranking puts
    # 29 of the 32 flipped fitted rows first, the values (against the validation
    # rows' loss) 26; before the validation rows kept their labels, the values 18.
    found = {}
    for rank_by in ["auto", "values"]:
        assert main(["--rank-by", rank_by, "--format", "json"]) == 0
        summary = json.loads(capsys.readouterr().out)["summary"]
        assert summary["rank_by"] == ("label_errors" if rank_by == "auto" else "values")
        found[rank_by] = summary["flipped"]["among_removed"]
        assert summary["flipped"]["fitted_rows"] == 32
    assert found["auto"] >= 28 and found["auto"] > found["values"]



# ------------------------------------------------------------------------ user CSV
def test_user_csv_run(wine_csv, tmp_path, capsys):
    out = tmp_path / "wine_values.csv"
    assert main(["--data", str(wine_csv), "--target", "target", "--remove", "5",
                 "--top", "3", "--output", str(out)]) == 0
    report = capsys.readouterr().out
    assert "labels as given" in report and "eta" in report and "accuracy" in report
    values = pd.read_csv(out)
    assert len(values) == _n_fitted(178)
    assert list(values.columns) == ["row", "label", "label_proba_left_out", "value",
                                    "removed"]
    y_true = load_wine().target
    assert np.array_equal(values["label"], y_true[values["row"]])
    assert values["removed"].sum() == 5


def test_a_ranking_that_would_empty_a_small_class_is_capped(tmp_path, capsys):
    """A class of 12 rows among 400: the default run's first 10% of the ranking held all
    its fitted rows, and the run stopped ("leaves no training point of class(es)").  It
    takes at most a quarter of any class, as the remove= policies do, and says so."""
    X, y = load_wine(return_X_y=True)
    rng = np.random.default_rng(0)
    rows = np.r_[rng.choice(np.flatnonzero(y != 2), 388), np.flatnonzero(y == 2)[:12]]
    frame = pd.DataFrame(X[rows], columns=[f"x{j}" for j in range(X.shape[1])])
    frame["target"] = y[rows]
    data = tmp_path / "small_class.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "values.csv"
    assert main(["--data", str(data), "--target", "target", "--remove", "0.3",
                 "--output", str(out), "--top", "0"]) == 0
    report = capsys.readouterr().out
    assert "The first" in report and "only their first-ranked are removed" in report
    values = pd.read_csv(out)
    for label, count in values.groupby("label")["removed"].sum().items():
        assert count <= 0.25 * (values["label"] == label).sum(), label


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


def _write_text(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _write_bytes(tmp_path, data, name="data.csv"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _wine_frame():
    return load_wine(as_frame=True).frame


def _diabetes_int_frame():
    """A regression table whose target holds whole numbers (214 distinct in 442 rows)."""
    frame = load_diabetes(as_frame=True, scaled=False).frame
    return frame.assign(target=frame["target"].round().astype(int))


def _error_lines(err):
    """stderr without the progress lines: what an error leaves for the user."""
    return [line for line in err.splitlines()
            if not (line.startswith("sklearn-puma: ") and line.endswith(" ..."))]


ERRORS = {
    "missing file": (lambda p: ["--data", str(p / "nope.csv"), "--target", "target"],
                     ["no such file", "nope.csv"]),
    "missing column": (
        lambda p: ["--data", _write(p, _wine_frame()), "--target", "quality"],
        ["'quality' not found", "available columns", "'alcohol'", "and 6 more"],
    ),
    "non-numeric feature without preprocessing": (
        lambda p: ["--data", _write(p, _wine_frame().assign(colour="red", region="x")),
                   "--target", "target", "--no-preprocess"],
        ["non-numeric feature column", "colour", "region", "--no-preprocess"],
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
    "continuous target as classes": (
        lambda p: ["--data", _write(p, _wine_frame().assign(target=lambda f: f.alcohol)),
                   "--target", "target", "--task", "classification"],
        ["continuous", "classification"],
    ),
    "text target as regression": (
        lambda p: ["--data", _write(p, _wine_frame().assign(
            target=lambda f: "x" + f.target.astype(str))),
                   "--target", "target", "--task", "regression"],
        ["not numeric", "regression"],
    ),
    "missing values without preprocessing": (
        lambda p: ["--data", _write(p, _wine_frame().assign(ash=lambda f: f.ash.where(
            f.index != 3))), "--target", "target", "--no-preprocess"],
        ["missing values", "ash", "--no-preprocess"],
    ),
    "infinite values": (
        lambda p: ["--data", _write(p, _wine_frame().assign(ash=lambda f: f.ash.where(
            f.index != 3, np.inf))), "--target", "target"],
        ["infinite values", "ash"],
    ),
    "missing target values": (
        lambda p: ["--data", _write(p, _wine_frame().assign(
            target=lambda f: f.target.where(f.index != 5))), "--target", "target"],
        ["'target' has 1 missing"],
    ),
    "data without target": (lambda p: ["--data", _write(p, _wine_frame())],
                            ["--target"]),
    "regressor criterion": (lambda p: ["--criterion", "squared_error"],
                            ["regressors only"]),
    "classifier criterion on regression": (
        lambda p: ["--data", _write(p, _diabetes_int_frame()), "--target", "target",
                   "--criterion", "brier"],
        ["--criterion brier is for classifiers only", "loss, squared_error"],
    ),
    "regressor model on classes": (lambda p: ["--model", "ridge"],
                                   ["--model ridge does not do classification",
                                    "logistic or mlp"]),
    "classifier model on regression": (
        lambda p: ["--data", _write(p, _diabetes_int_frame()), "--target", "target",
                   "--model", "logistic"],
        ["--model logistic does not do regression", "ridge or mlp"],
    ),
    "flip on regression": (
        lambda p: ["--data", _write(p, _diabetes_int_frame()), "--target", "target",
                   "--flip", "0.1"],
        ["--flip applies to classification only"],
    ),
    "label-error ranking on regression": (
        lambda p: ["--data", _write(p, _diabetes_int_frame()), "--target", "target",
                   "--rank-by", "label_errors"],
        ["--rank-by label_errors applies to classification only"],
    ),
    "regression task without data": (lambda p: ["--task", "regression"],
                                     ["--task regression needs --data"]),
    "directory as data": (lambda p: ["--data", str(p), "--target", "target"],
                          ["is a directory"]),
    "empty file": (lambda p: ["--data", _write_text(p, ""), "--target", "target"],
                   ["is empty"]),
    "header only": (lambda p: ["--data", _write_text(p, "a,target\n"), "--target",
                               "target"],
                    ["no data rows"]),
    "not UTF-8": (lambda p: ["--data", _write_bytes(p, b"a,target\n\xff\xfe,1\n"),
                             "--target", "target"],
                  ["not UTF-8"]),
    "row longer than the header": (
        lambda p: ["--data", _write_text(p, "a,target\n" + "1,2,3\n" * 30),
                   "--target", "target"],
        ["cannot read"],
    ),
    "zip input": (lambda p: ["--data", _write_bytes(p, b"PK\x03\x04" + b"\0" * 40),
                             "--target", "target"],
                  ["zip-compressed", "decompress it first"]),
    "max rows": (lambda p: ["--data", _write(p, _wine_frame()), "--target", "target",
                            "--max-rows", "100"],
                 ["more than --max-rows 100"]),
    "max columns": (lambda p: ["--data", _write(p, _wine_frame()), "--target", "target",
                               "--max-columns", "5"],
                    ["14 columns, more than --max-columns 5"]),
    "max bytes": (lambda p: ["--data", _write(p, _wine_frame()), "--target", "target",
                             "--max-bytes", "1K"],
                  ["larger than --max-bytes 1K"]),
    "bad max bytes": (lambda p: ["--max-bytes", "lots"], ["--max-bytes", "500M"]),
    "remove too many": (lambda p: ["--remove", "10000"], ["--remove 10000"]),
    "bad remove": (lambda p: ["--remove", "1.5"], ["--remove", "(0, 1)"]),
    # A ';'-separated file read as one column had listed that column as "available".
    "semicolons": (lambda p: ["--data", _write_text(p, _wine_frame().to_csv(
        sep=";", index=False)), "--target", "target"],
        ["looks ';'-separated", "reads comma-separated files", "sep=';'"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_exit_2_with_a_message(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_argv, expected = ERRORS[case]
    assert main(make_argv(tmp_path)) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.out == ""
    lines = _error_lines(captured.err)
    assert len(lines) == 1, lines  # one line, whatever the cause
    assert lines[0].startswith("sklearn-puma: error:")
    assert len(lines[0]) < 400
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


def test_help_lists_the_new_options_and_the_task_rule():
    text = " ".join(build_parser().format_help().split())
    for option in ["--task", "--model", "--format", "--save-model", "--force",
                   "--no-preprocess", "--max-rows", "--max-columns", "--max-bytes",
                   "--version"]:
        assert option in text
    assert f"at most {MAX_AUTO_CLASSES} distinct values" in text
    assert "puma_values.csv" not in text  # no file is written by default any more


def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sklearn-puma {sklearn_puma.__version__}"


def test_help_version_and_usage_errors_import_nothing_heavy():
    """--help, --version and a usage error answer before numpy, pandas, scikit-learn or
    torch is imported (a cold start of those costs seconds)."""
    code = (
        "import sys\n"
        "from sklearn_puma._cli import main\n"
        "codes = [main(['--help']), main(['--version']), main(['--remove', '7.5']),\n"
        "         main(['--model', 'ridge'])]\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} &\n"
        "               {'numpy', 'pandas', 'sklearn', 'scipy', 'torch', 'skops'})\n"
        "print('RESULT', codes, heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert "RESULT [0, 0, 2, 2] []" in result.stdout, (result.stdout, result.stderr)


# -------------------------------------------------------------------- real tables
def _penguins_like(n=300, seed=0):
    """Text columns species/island/sex, numeric ones with missing values, as the
    palmerpenguins table has them."""
    rng = np.random.default_rng(seed)
    species = rng.choice(["Adelie", "Chinstrap", "Gentoo"], size=n, p=[0.45, 0.2, 0.35])
    centre = {"Adelie": (38.8, 18.3, 190.0, 3700.0),
              "Chinstrap": (48.8, 18.4, 196.0, 3733.0),
              "Gentoo": (47.5, 15.0, 217.0, 5076.0)}
    spread = np.array([2.5, 1.1, 6.5, 450.0])
    numbers = np.array([centre[s] for s in species]) + rng.normal(size=(n, 4)) * spread
    island = np.where(species == "Gentoo", "Biscoe",
                      np.where(species == "Chinstrap", "Dream",
                               rng.choice(["Biscoe", "Dream", "Torgersen"], size=n)))
    frame = pd.DataFrame({
        "species": species, "island": island,
        "bill_length_mm": numbers[:, 0].round(1), "bill_depth_mm": numbers[:, 1].round(1),
        "flipper_length_mm": numbers[:, 2].round(), "body_mass_g": numbers[:, 3].round(),
        "sex": rng.choice(["male", "female"], size=n),
        "year": rng.choice([2007, 2008, 2009], size=n),
    })
    for column, count in [("bill_length_mm", 4), ("body_mass_g", 3), ("sex", 12)]:
        frame.loc[rng.choice(n, size=count, replace=False), column] = np.nan
    return frame


@pytest.fixture(scope="module")
def penguins_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("penguins") / "penguins.csv"
    _penguins_like().to_csv(path, index=False)
    return path


def test_text_columns_and_missing_values_are_preprocessed(penguins_csv, tmp_path, capsys):
    """Before, a text column or a missing cell was an error; now a ColumnTransformer
    fitted on the fitted rows imputes and one-hot encodes them."""
    out = tmp_path / "values.csv"
    assert main(["--data", str(penguins_csv), "--target", "species", "--output",
                 str(out)]) == 0
    report = capsys.readouterr().out
    assert "classification of 'species' (text values)" in report
    assert "2 text column(s) imputed (most frequent) and one-hot encoded" in report
    assert "19 missing cell(s) imputed" in report
    # 5 numeric columns + island (3 categories) + sex (2) = 10 features.
    assert "7 feature columns -> 10 features" in report
    values = pd.read_csv(out)
    table = pd.read_csv(penguins_csv)
    assert len(values) == _n_fitted(len(table))
    assert np.array_equal(values["label"], table["species"].to_numpy()[values["row"]])
    held_out = float(report.split("held-out accuracy")[1].split("before ")[1].split(",")[0])
    assert held_out > 0.9  # the species are well separated in the generated table


def test_saved_preprocessing_is_fitted_on_the_fitted_rows_only(penguins_csv, tmp_path):
    """Ground truth: the medians and means of the fitted rows, as read from the values
    file's row positions (validation and test rows must not leak into them)."""
    skops_io = pytest.importorskip("skops.io")
    out, model_path = tmp_path / "values.csv", tmp_path / "model.skops"
    assert main(["--data", str(penguins_csv), "--target", "species", "--quiet",
                 "--output", str(out), "--save-model", str(model_path)]) == 0
    model = skops_io.load(model_path, trusted=skops_io.get_untrusted_types(file=model_path))
    table = pd.read_csv(penguins_csv)
    fitted = table.iloc[pd.read_csv(out)["row"]]
    imputer, scaler = model.named_steps["preprocess"].named_transformers_["numeric"]
    numeric = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g",
               "year"]
    assert np.allclose(imputer.statistics_, fitted[numeric].median())
    imputed = fitted[numeric].fillna(fitted[numeric].median())
    assert np.allclose(scaler.mean_, imputed.mean())


def test_real_palmerpenguins_table_finds_flipped_labels(tmp_path, capsys):
    """The palmerpenguins package ships the CSV in its wheel (no download at run time)."""
    pytest.importorskip("palmerpenguins")
    from importlib.resources import files

    path = files("palmerpenguins") / "data" / "penguins.csv"
    out = tmp_path / "values.csv"
    assert main(["--data", str(path), "--target", "species", "--flip", "0.05",
                 "--output", str(out), "--top", "3"]) == 0
    report = capsys.readouterr().out
    assert "2 text column(s) imputed (most frequent) and one-hot encoded" in report
    values = pd.read_csv(out)
    table = pd.read_csv(str(path))
    species = table["species"].to_numpy()
    assert np.array_equal(values["original_label"], species[values["row"]])
    # Ground truth: the flips the run made. The values rank them far above chance.
    removed = values["removed"]
    hits = int(values.loc[removed, "flipped"].sum())
    expected_at_random = removed.sum() * values["flipped"].mean()
    assert hits >= 3 * expected_at_random and hits >= 3


def test_integer_target_regression_runs_end_to_end(tmp_path, capsys):
    """Before, a whole-number target was always read as classes (214 of them here),
    and a regression table was rejected."""
    data = _write(tmp_path, _diabetes_int_frame())
    out = tmp_path / "values.json"
    assert main(["--data", data, "--target", "target", "--output", str(out)]) == 0
    report = capsys.readouterr().out
    assert "regression of 'target' (whole numbers with 214 distinct values" in report
    assert "Ridge()" in report and "held-out R^2" in report
    document = json.loads(out.read_text())
    summary = document["summary"]
    assert summary["task"] == "regression" and summary["model"] == "Ridge()"
    assert summary["criterion_rows"] == ["loss"] and summary["test_metric"] == "r2"
    rows = pd.DataFrame(document["rows"])
    y_true = _diabetes_int_frame()["target"].to_numpy()
    assert list(rows.columns) == ["row", "target", "value", "removed"]
    assert np.array_equal(rows["target"], y_true[rows["row"]])
    assert all(isinstance(row["target"], int) for row in document["rows"])
    assert rows["removed"].sum() == summary["removed"] == round(0.1 * len(rows))
    # Ground truth for the R^2: Ridge refitted on sample_weight_ scores as the patch.
    assert abs(summary["test_score"]["after_patch"] - summary["test_score"]["refit"]) < 1e-6


def test_regression_squared_error_criterion_and_mlp(tmp_path, capsys):
    data = _write(tmp_path, _diabetes_int_frame())
    assert main(["--data", data, "--target", "target", "--criterion", "squared_error",
                 "--model", "mlp", "--format", "json", "--quiet", "--top", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["model"].startswith("MLPRegressor(") and "random_state=0" in \
        summary["model"]
    assert summary["criterion_rows"] == ["squared_error"]


def test_mlp_classifier_model(wine_csv, capsys):
    assert main(["--data", str(wine_csv), "--target", "target", "--model", "mlp",
                 "--format", "json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["model"].startswith("MLPClassifier(")
    assert summary["task"] == "classification" and summary["test_score"]["before"] > 0.8


def _column(values):
    return pd.Series(values, name="y")


@pytest.mark.parametrize("y, task", [
    (["a", "b"] * 20, "classification"),
    ([True, False] * 20, "classification"),
    ([0, 1, 2, 3] * 10, "classification"),
    ([0.0, 1.0, 2.0] * 10, "classification"),  # whole numbers written as floats
    (list(range(21)) * 4, "regression"),        # more than 20 distinct values
    (list(range(12)) * 3, "regression"),        # 3 rows per value: too few for classes
    ([0.5, 1.0, 2.0] * 10, "regression"),       # a fractional part
], ids=["text", "bool", "4 ints", "int floats", "21 ints", "12 ints in 36 rows",
        "fractions"])
def test_task_detection_rule(y, task):
    from sklearn_puma._demo import _detect_task

    assert _detect_task(_column(y))[0] == task


def test_task_override_runs_a_few_whole_numbers_as_regression(tmp_path, capsys):
    frame = _wine_frame()  # target 0, 1, 2: classes by the rule
    data = _write(tmp_path, frame)
    assert main(["--data", data, "--target", "target", "--format", "json",
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["task"] == "classification"
    assert main(["--data", data, "--target", "target", "--task", "regression",
                 "--format", "json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["task"] == "regression" and summary["task_reason"] == "--task"


def test_criterion_split_by_task_matches_the_criteria_registry():
    from sklearn_puma._criteria import _CRITERIA

    for name, criterion in _CRITERIA.items():
        if name in GROUP_CRITERIA:
            continue
        assert (name in CLASSIFICATION_CRITERIA) == (criterion.classifier is not False)
        assert (name in REGRESSION_CRITERIA) == (criterion.classifier is not True)


# ------------------------------------------------------------------- output formats
def test_format_json_parses_with_values_per_row_and_a_summary(wine_csv, tmp_path, capsys):
    csv_out, json_out = tmp_path / "values.csv", tmp_path / "values.json"
    argv = ["--data", str(wine_csv), "--target", "target", "--flip", "0.1", "--quiet"]
    assert main(argv + ["--output", str(csv_out)]) == 0
    assert main(argv + ["--output", str(json_out)]) == 0  # json from the name
    capsys.readouterr()
    document = json.loads(json_out.read_text())
    assert document["sklearn_puma_version"] == sklearn_puma.__version__
    summary = document["summary"]
    for key in ["task", "model", "criterion", "rows", "removed", "eta", "criterion_before",
                "criterion_after", "test_score", "flipped", "seconds", "warnings"]:
        assert key in summary
    rows = pd.DataFrame(document["rows"])
    values = pd.read_csv(csv_out)
    assert list(rows.columns) == list(values.columns)
    assert np.array_equal(rows["row"], values["row"])
    assert np.allclose(rows["value"], values["value"], rtol=1e-12, atol=0)
    assert summary["rows"]["fitted"] == len(rows)
    hits = int(rows.loc[rows["removed"], "flipped"].sum())
    assert summary["flipped"]["among_removed"] == hits


def test_format_without_output_prints_the_values_instead_of_the_report(wine_csv, capsys):
    assert main(["--data", str(wine_csv), "--target", "target", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    values = pd.read_csv(io.StringIO(captured.out))
    assert list(values.columns) == ["row", "label", "label_proba_left_out", "value",
                                    "removed"]
    assert len(values) == _n_fitted(178)
    assert "sklearn-puma: fitting" in captured.err  # progress stays on stderr


def test_quiet_suppresses_progress(wine_csv, capsys):
    assert main(["--data", str(wine_csv), "--target", "target", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.strip().splitlines()) == 1


def test_csv_output_escapes_formula_cells_but_not_numbers(tmp_path, capsys):
    """OWASP CSV injection: text cells starting with = + - @ tab or CR get a leading
    quote; numbers, negative ones included, stay numbers."""
    frame = _wine_frame()
    labels = {0: "=HYPERLINK(\"http://x\")", 1: "+cmd|' /C calc'!A0", 2: "@SUM(1+1)"}
    frame["target"] = frame["target"].map(labels)
    data, out = _write(tmp_path, frame), tmp_path / "values.csv"
    assert main(["--data", data, "--target", "target", "--flip", "0.1", "--quiet",
                 "--output", str(out)]) == 0
    with open(out, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        for column in ["label", "original_label"]:
            assert row[column].startswith("'") and row[column][1:] in labels.values()
        float(row["value"])  # a plain number
    assert any(row["value"].startswith("-") for row in rows)  # negative, not escaped
    # Every escaped prefix, and a plain text cell untouched.
    from sklearn_puma._demo import _csv_text

    text = _csv_text(pd.DataFrame({"t": ["=1", "+1", "-1", "@1", "\t1", "\r1", "ok"],
                                   "x": [-1.5, 2, 3, 4, 5, 6, 7]}))
    cells = list(csv.reader(io.StringIO(text, newline="")))
    assert [c[0] for c in cells[1:]] == ["'=1", "'+1", "'-1", "'@1", "'\t1", "'\r1", "ok"]
    assert cells[1][1] == "-1.5"


def test_save_model_round_trip_predicts_identically(penguins_csv, tmp_path, monkeypatch,
                                                    capsys):
    skops_io = pytest.importorskip("skops.io")
    import sklearn_puma._demo as demo

    patchers = []

    class Recording(demo.PumaPatcher):
        def fit(self, X, y, **kw):
            patchers.append((self, X, y))
            return super().fit(X, y, **kw)

    monkeypatch.setattr(demo, "PumaPatcher", Recording)
    path, out = tmp_path / "patched.skops", tmp_path / "values.csv"
    assert main(["--data", str(penguins_csv), "--target", "species", "--alpha", "1",
                 "--delta", "10", "--save-model", str(path), "--output", str(out)]) == 0
    assert "Patched model written to" in capsys.readouterr().out
    model = skops_io.load(path, trusted=skops_io.get_untrusted_types(file=path))
    (puma, X_fit, y_fit), = patchers
    table = pd.read_csv(penguins_csv)
    features = table.drop(columns=["species"])
    # The saved pipeline predicts exactly what the patched estimator of the run does.
    assert np.array_equal(model.predict_proba(features),
                          puma.predict_proba(model[:-1].transform(features)))
    assert np.array_equal(model[-1].coef_, puma.estimator_.coef_)
    # Ground truth: alpha=1 up-weights nobody, so the patched model is the model
    # retrained without the removed rows.
    values = pd.read_csv(out)
    assert puma.eta_ == 1 and values["removed"].sum() == len(puma.removed_)
    keep = puma.sample_weight_ > 0
    retrained = LogisticRegression(max_iter=1000, tol=1e-10).fit(X_fit[keep], y_fit[keep])
    assert np.allclose(model.predict_proba(features),
                       retrained.predict_proba(model[:-1].transform(features)), atol=1e-5)


# ------------------------------------------------------------------------- safety
def test_output_never_replaces_a_file_without_force(wine_csv, tmp_path, capsys):
    out, model = tmp_path / "values.csv", tmp_path / "model.skops"
    out.write_text("keep me\n")
    argv = ["--data", str(wine_csv), "--target", "target", "--quiet"]
    assert main(argv + ["--output", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    assert main(argv + ["--output", str(out), "--force"]) == 0
    assert pd.read_csv(out).columns[0] == "row"
    if importlib.util.find_spec("skops") is not None:
        model.write_text("keep me\n")
        assert main(argv + ["--save-model", str(model)]) == 2
        assert model.read_text() == "keep me\n"
    assert main(argv + ["--output", str(out), "--save-model", str(out), "--force"]) == 2
    assert "the same file" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--output", "--save-model"])
def test_output_never_replaces_the_input_even_with_force(flag, tmp_path, capsys):
    data = _write(tmp_path, _wine_frame())
    before = open(data, "rb").read()
    link = tmp_path / "link.csv"
    link.symlink_to(data)
    for target in [data, str(link)]:
        assert main(["--data", data, "--target", "target", flag, target, "--force"]) == 2
        assert "is the input table" in capsys.readouterr().err
    assert open(data, "rb").read() == before


def test_duplicate_column_names_are_rejected(tmp_path, capsys):
    rows = "".join(f"{i},{i % 3},{i % 5},{i % 7},{i % 2}\n" for i in range(40))
    # pandas alone would rename the second "ash" to "ash.1" and carry on.
    data = _write_text(tmp_path, "alcohol,ash,hue,ash,target\n" + rows)
    assert main(["--data", data, "--target", "target"]) == 2
    err = capsys.readouterr().err
    assert "duplicate column names" in err and "'ash'" in err
    # The target twice: the second copy would be a feature that is the answer.
    leak = _write_text(tmp_path, "alcohol,target,hue,ash,target\n" + rows,
                       name="leak.csv")
    assert main(["--data", leak, "--target", "target"]) == 2
    err = capsys.readouterr().err
    assert "'target' appears 2 times" in err and "leak the target" in err


def test_many_duplicate_names_give_a_short_message(tmp_path, capsys):
    names = [f"c{i}" for i in range(200)]
    data = _write_text(tmp_path, ",".join(names + names + ["y"]) + "\n" +
                       ",".join(["1"] * 401) + "\n")
    assert main(["--data", data, "--target", "y"]) == 2
    err = capsys.readouterr().err
    # Short whatever the temporary folder's name (longer under pytest-xdist).
    assert "'c0', 'c1', 'c2', 'c3', 'c4' and 195 more" in err
    assert len(err.replace(str(data), "")) < 300


@pytest.mark.parametrize("name_length", [1, 8], ids=["short names", "long names"])
def test_a_million_column_header_fails_fast(name_length, tmp_path):
    """Checked on the header before any row is read, and before pandas or torch is
    imported: a fresh process answers well under 2 s, in one short line (the names are
    never echoed)."""
    names = ["a" * name_length] * 1_000_000 if name_length == 1 else [
        f"col{i:05d}"[:name_length] for i in range(1_000_000)]
    data = _write_text(tmp_path, ",".join(names) + ",y\n" + "1," * 1_000_000 + "2\n")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sklearn_puma", "--data", data,
                             "--target", "y", "--quiet"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    elapsed = time.perf_counter() - start
    assert result.returncode == 2 and result.stdout == ""
    assert elapsed < 1.5, elapsed
    assert len(result.stderr.splitlines()) == 1 and len(result.stderr) < 300
    assert "--max-columns 10000" in result.stderr


def test_a_fifo_is_rejected_without_blocking(tmp_path, capsys):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    fifo = tmp_path / "table.csv"
    os.mkfifo(fifo)  # no writer: opening it for reading would wait forever
    result = []
    thread = threading.Thread(target=lambda: result.append(
        main(["--data", str(fifo), "--target", "y"])), daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive() and result == [2]
    assert "not a regular file" in capsys.readouterr().err


def test_compressed_input_is_read_and_bounded(penguins_csv, tmp_path, capsys):
    # A gzip file runs like the plain one, whatever its name says.
    packed = tmp_path / "penguins.csv"
    packed.write_bytes(gzip.compress(penguins_csv.read_bytes()))
    assert main(["--data", str(packed), "--target", "species", "--quiet"]) == 0
    capsys.readouterr()
    # A gzip bomb: 64 MiB of one field behind a valid header, 64 KiB compressed.
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = squeeze.compress(b"a,y\n1,")
    for _ in range(64):
        bomb += squeeze.compress(b"1" * 2**20)
    bomb += squeeze.flush()
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(bomb)
    assert len(bomb) < 2**20
    start = time.perf_counter()
    assert main(["--data", str(path), "--target", "y", "--max-bytes", "16M"]) == 2
    assert time.perf_counter() - start < 5
    err = _error_lines(capsys.readouterr().err)
    assert err == [f"sklearn-puma: error: {path} (decompressed) is larger than "
                   "--max-bytes 16M"]
    # Many short rows: bounded by bytes too (before pandas holds any of them).
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    rows = squeeze.compress(b"a,y\n") + b"".join(
        squeeze.compress(b"1,2\n" * 2**18) for _ in range(32)) + squeeze.flush()
    path.write_bytes(rows)
    assert main(["--data", str(path), "--target", "y", "--max-bytes", "8M"]) == 2
    assert "larger than --max-bytes 8M" in capsys.readouterr().err


def test_save_model_without_skops_is_refused_before_the_run(tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.setitem(sys.modules, "skops", None)  # as if not installed
    path = tmp_path / "model.skops"
    assert main(["--save-model", str(path)]) == 2
    captured = capsys.readouterr()
    assert "--save-model needs the skops package" in captured.err
    assert captured.out == "" and "fitting" not in captured.err and not path.exists()


def test_an_empty_column_is_said_dropped_not_imputed(tmp_path, capsys):
    """A column with no value at all was dropped by the imputer, silently, while the
    report counted its cells as "missing cell(s) imputed"."""
    frame = _wine_frame().assign(empty=np.nan)
    frame.loc[:4, "alcohol"] = np.nan
    assert main(["--data", _write(tmp_path, frame), "--target", "target"]) == 0
    report = capsys.readouterr().out
    assert "13 numeric column(s) imputed (median) and scaled" in report
    assert "5 missing cell(s) imputed" in report
    assert "1 empty column(s) dropped: 'empty'" in report
