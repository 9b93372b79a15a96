"""Displays: the numbers they draw, checked against hand computations and the models."""

import importlib.util
import sys
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from sklearn.datasets import make_moons  # noqa: E402
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402

from sklearn_puma import PumaPatcher, _displays, flip_labels  # noqa: E402
from sklearn_puma.metrics import expected_calibration_error  # noqa: E402
from sklearn_puma.plot import (  # noqa: E402
    DecisionRegionsDisplay,
    MislabelDetectionDisplay,
    ReliabilityDisplay,
    ValuesDisplay,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def moons():
    """200 noisy moons, 10% of the labels flipped, a logistic regression fitted on them,
    and a patcher of that (frozen) model that removed the 10 lowest-valued points."""
    X, y = make_moons(200, noise=0.2, random_state=0)
    y_noisy, flipped = flip_labels(y, 0.1, random_state=0)
    model = LogisticRegression().fit(X, y_noisy)
    puma = PumaPatcher(FrozenEstimator(model), remove=10).fit(X, y_noisy)
    return X, y_noisy, flipped, model, puma


def heights(bars):
    return np.array([bar.get_height() for bar in bars])


# ---------------------------------------------------------------------- ValuesDisplay
def test_values_histograms_split_marked_from_other_points():
    values = np.random.default_rng(0).normal(size=300)
    mark = np.zeros(300, dtype=bool)
    mark[[3, 50, 51, 299]] = True
    disp = ValuesDisplay.from_predictions(values, mark=mark, bins=12)
    edges = np.histogram_bin_edges(values, bins=12)
    np.testing.assert_array_equal(disp.bin_edges_, edges)
    np.testing.assert_array_equal(heights(disp.hist_),
                                  np.histogram(values[~mark], edges)[0])
    np.testing.assert_array_equal(heights(disp.marked_hist_),
                                  np.histogram(values[mark], edges)[0])
    # The rug is exactly the marked values.
    np.testing.assert_array_equal(disp.rug_.get_xdata(), values[mark])
    labels = disp.ax_.get_legend_handles_labels()[1]
    assert labels == ["other points (296)", "marked (4)"]
    # Indices mark the same points as the mask.
    by_index = ValuesDisplay.from_predictions(values, mark=[3, 50, 51, 299], bins=12)
    np.testing.assert_array_equal(by_index.rug_.get_xdata(), values[mark])


def test_values_without_mark_draw_one_histogram():
    values = np.arange(10.0)
    disp = ValuesDisplay.from_predictions(values, bins=5)
    assert disp.marked_hist_ is None and disp.rug_ is None
    np.testing.assert_array_equal(heights(disp.hist_), [2, 2, 2, 2, 2])
    assert disp.ax_.get_legend_handles_labels()[1] == ["all points (10)"]


def test_values_from_estimator_marks_removed_points(moons):
    _, _, _, _, puma = moons
    disp = ValuesDisplay.from_estimator(puma)
    np.testing.assert_array_equal(np.sort(disp.rug_.get_xdata()),
                                  np.sort(puma.values_[puma.removed_]))
    assert disp.ax_.get_legend_handles_labels()[1][1] == "removed (10)"
    assert "loss" in disp.ax_.get_xlabel()


def test_values_from_estimator_with_a_user_mark(moons):
    _, _, flipped, _, puma = moons
    disp = ValuesDisplay.from_estimator(puma, mark=flipped, mark_label="flipped")
    np.testing.assert_array_equal(disp.rug_.get_xdata(), puma.values_[flipped])
    assert disp.ax_.get_legend_handles_labels()[1][1] == f"flipped ({flipped.sum()})"


def test_values_row_selection(moons):
    X, y, _, _, _ = moons
    puma = PumaPatcher(LogisticRegression(), criterion=["loss", "per_class_loss"]).fit(X, y)
    names = puma.criterion_names_
    disp = ValuesDisplay.from_estimator(puma, row=names[2])
    np.testing.assert_array_equal(heights(disp.hist_),
                                  np.histogram(puma.values_[:, 2], disp.bin_edges_)[0])
    assert names[2] in disp.ax_.get_xlabel()
    by_position = ValuesDisplay.from_predictions(puma.values_, row=2)
    np.testing.assert_array_equal(heights(by_position.hist_), heights(disp.hist_))
    with pytest.raises(ValueError, match="3 criterion rows.*choose one with row="):
        ValuesDisplay.from_estimator(puma)
    with pytest.raises(ValueError, match="unknown row 'gini'.*one of the names"):
        ValuesDisplay.from_estimator(puma, row="gini")
    with pytest.raises(ValueError, match=r"unknown row 3.*position in 0\.\.2\.$"):
        ValuesDisplay.from_predictions(puma.values_, row=3)
    with pytest.raises(ValueError, match="3 criterion rows; choose one with row="):
        ValuesDisplay.from_predictions(puma.values_)


def test_values_bad_mark():
    with pytest.raises(ValueError, match=r"one entry per point \(5\)"):
        ValuesDisplay.from_predictions(np.arange(5.0), mark=np.ones(4, dtype=bool))
    with pytest.raises(IndexError, match=r"out of range for 5 points \(0 to 4\): \[7\]"):
        ValuesDisplay.from_predictions(np.arange(5.0), mark=[1, 7])
    with pytest.raises(ValueError, match="mark must be a boolean mask or integer indices"):
        ValuesDisplay.from_predictions(np.arange(5.0), mark=[0.5])


# ----------------------------------------------------------- MislabelDetectionDisplay
def test_mislabel_recall_at_matches_hand_computation():
    is_mislabelled = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    score = np.array([0.5, 0.1, 0.2, 0.9, 0.3, 0.05, 0.6, 0.7, 0.8, 0.4])
    # Inspection order (lowest score first): rows 5 (mislabelled), 1, 2 (mislabelled),
    # 4, 9, 0 (mislabelled), then the clean rows 6, 7, 8, 3.
    disp = MislabelDetectionDisplay.from_predictions(is_mislabelled, {"s": score})
    np.testing.assert_allclose(disp.fraction_inspected["s"], np.linspace(0, 1, 11))
    np.testing.assert_allclose(disp.recall["s"],
                               np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]) / 3)
    for fraction, expected in [(0.1, 1 / 3), (0.25, 1 / 2), (0.3, 2 / 3), (0.55, 5 / 6),
                               (0.6, 1.0), (1.0, 1.0), (0.0, 0.0)]:
        assert disp.recall_at(fraction)["s"] == pytest.approx(expected)
    np.testing.assert_allclose(disp.lines_["s"].get_ydata(), disp.recall["s"])
    assert disp.mislabelled_fraction == pytest.approx(0.3)


def test_mislabel_ties_count_as_random_order():
    # Rows 0 and 1 are tied; inspecting one of the two finds the mislabelled row 0 with
    # probability 1/2.
    disp = MislabelDetectionDisplay.from_predictions([1, 0, 0, 0], {"s": [0, 0, 1, 2]})
    np.testing.assert_allclose(disp.fraction_inspected["s"], [0, 0.5, 0.75, 1])
    assert disp.recall_at(0.25)["s"] == pytest.approx(0.5)


def test_mislabel_perfect_and_random_scores():
    rng = np.random.default_rng(0)
    n = 5000
    is_mislabelled = np.zeros(n, dtype=bool)
    is_mislabelled[rng.choice(n, 500, replace=False)] = True
    scores = {"perfect": (~is_mislabelled).astype(float), "random": rng.random(n)}
    disp = MislabelDetectionDisplay.from_predictions(is_mislabelled, scores)
    recalls = disp.recall_at(0.1)
    assert recalls["perfect"] == 1.0
    assert disp.recall_at(0.05)["perfect"] == pytest.approx(0.5)
    # A random order finds the mislabelled rows in proportion to the rows inspected.
    x, y = disp.fraction_inspected["random"], disp.recall["random"]
    assert np.max(np.abs(y - x)) < 0.06
    assert recalls["random"] == pytest.approx(0.1, abs=0.03)
    np.testing.assert_allclose(disp.random_line_.get_xydata(), [[0, 0], [1, 1]])
    np.testing.assert_allclose(disp.ideal_line_.get_xydata(), [[0, 0], [0.1, 1], [1, 1]])
    labels = disp.ax_.get_legend_handles_labels()[1]
    assert labels == ["random order", "best possible", "perfect", "random"]


def test_mislabel_from_estimator_uses_values(moons):
    _, _, flipped, _, puma = moons
    other = np.random.default_rng(1).random(len(flipped))
    disp = MislabelDetectionDisplay.from_estimator(puma, flipped, scores={"random": other})
    direct = MislabelDetectionDisplay.from_predictions(
        flipped, {"PUMA values": puma.values_, "random": other})
    assert list(disp.recall) == ["PUMA values", "random"]
    for name in direct.recall:
        np.testing.assert_array_equal(disp.recall[name], direct.recall[name])
        np.testing.assert_array_equal(disp.fraction_inspected[name],
                                      direct.fraction_inspected[name])


def test_mislabel_bad_input():
    with pytest.raises(ValueError, match=r"scores\['s'\] must have one score per point"):
        MislabelDetectionDisplay.from_predictions([1, 0, 0], {"s": [0.1, 0.2]})
    with pytest.raises(ValueError, match="marks no point"):
        MislabelDetectionDisplay.from_predictions([0, 0, 0], {"s": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="boolean mask"):
        MislabelDetectionDisplay.from_predictions([0, 2, 1], {"s": [0.1, 0.2, 0.3]})
    with pytest.raises(TypeError, match="scores must be a dict"):
        MislabelDetectionDisplay.from_predictions([1, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="scores is empty"):
        MislabelDetectionDisplay.from_predictions([1, 0, 0], {})
    disp = MislabelDetectionDisplay.from_predictions([1, 0, 0], {"s": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match=r"fraction must be a number in \[0, 1\]"):
        disp.recall_at(1.5)


# ----------------------------------------------------------------- ReliabilityDisplay
def test_reliability_bins_match_hand_computation():
    y = np.array([0, 1, 1, 0, 1, 0])
    proba = np.array([[0.95, 0.05], [0.25, 0.75], [0.35, 0.65], [0.30, 0.70],
                      [0.55, 0.45], [0.90, 0.10]])
    # Five bins (b/5, (b+1)/5]: confidence 0.55 (wrong) in bin 2; 0.75 and 0.65 (right)
    # and 0.70 (wrong) in bin 3; 0.95 and 0.90 (both right) in bin 4.
    disp = ReliabilityDisplay.from_predictions(y, {"2-D": proba, "1-D": proba[:, 1]},
                                               n_bins=5)
    nan = np.nan
    for name in ("2-D", "1-D"):
        np.testing.assert_array_equal(disp.bin_count[name], [0, 0, 1, 3, 2])
        np.testing.assert_allclose(disp.bin_confidence[name], [nan, nan, 0.55, 0.7, 0.925])
        np.testing.assert_allclose(disp.bin_accuracy[name], [nan, nan, 0.0, 2 / 3, 1.0])
        # (1 * 0.55 + 3 * |2/3 - 0.7| + 2 * |1 - 0.925|) / 6
        assert disp.ece[name] == pytest.approx(0.8 / 6)
        assert disp.ece[name] == expected_calibration_error(y, proba, n_bins=5)
        np.testing.assert_allclose(disp.lines_[name].get_xydata(),
                                   [[0.55, 0.0], [0.7, 2 / 3], [0.925, 1.0]])
    assert disp.lines_["2-D"].get_label() == "2-D (ECE 0.133)"
    np.testing.assert_allclose(disp.ref_line_.get_xydata(), [[0, 0], [1, 1]])


def test_reliability_from_estimator_before_and_after_patch(moons):
    X, y, _, model, puma = moons
    disp = ReliabilityDisplay.from_estimator({"before": model, "after patch": puma}, X, y,
                                             n_bins=8)
    labels = disp.ax_.get_legend_handles_labels()[1]
    for name, estimator in [("before", model), ("after patch", puma)]:
        proba = estimator.predict_proba(X)
        ece = expected_calibration_error(y, proba, n_bins=8)
        assert disp.ece[name] == ece
        assert f"{name} (ECE {ece:.3f})" in labels
        # The weighted gaps of the stored bins add up to the metric.
        filled = disp.bin_count[name] > 0
        gaps = np.abs(disp.bin_accuracy[name] - disp.bin_confidence[name])[filled]
        assert np.sum(gaps * disp.bin_count[name][filled]) / len(y) == pytest.approx(ece)
        assert disp.bin_count[name].sum() == len(y)
    single = ReliabilityDisplay.from_estimator(model, X, y)
    assert list(single.ece) == ["LogisticRegression"]


def test_reliability_bad_input(moons):
    X, y, *_ = moons
    proba = np.full((4, 2), 0.5)
    with pytest.raises(ValueError, match="have 4 rows but y_true has 3"):
        ReliabilityDisplay.from_predictions([0, 1, 0], {"m": proba})
    with pytest.raises(ValueError, match="3 columns but there are 2 classes"):
        ReliabilityDisplay.from_predictions([0, 1, 0, 1], {"m": np.full((4, 3), 1 / 3)})
    with pytest.raises(TypeError, match="probas must be a dict"):
        ReliabilityDisplay.from_predictions([0, 1, 0, 1], proba)
    with pytest.raises(ValueError, match="has no predict_proba"):
        ReliabilityDisplay.from_estimator(LinearRegression().fit(X, y), X, y)


# ------------------------------------------------------------- DecisionRegionsDisplay
def test_decision_regions_are_the_models_predictions(moons):
    X, y, _, model, puma = moons
    disp = DecisionRegionsDisplay.from_estimator(
        {"before": model, "after removal": puma}, X, y, removed=puma.removed_,
        grid_resolution=30)
    assert disp.xx0.shape == disp.xx1.shape == (30, 30)
    grid = np.column_stack([disp.xx0.ravel(), disp.xx1.ravel()])
    # The grid covers the data.
    assert grid[:, 0].min() < X[:, 0].min() and grid[:, 0].max() > X[:, 0].max()
    assert grid[:, 1].min() < X[:, 1].min() and grid[:, 1].max() > X[:, 1].max()
    removed = np.zeros(len(X), dtype=bool)
    removed[puma.removed_] = True
    class_colour = {0: to_rgba("C0"), 1: to_rgba("C1")}
    for axis, (name, estimator) in zip(disp.axes_, [("before", model),
                                                    ("after removal", puma)]):
        expected = estimator.predict(grid).reshape(30, 30)
        np.testing.assert_array_equal(disp.predictions[name], expected)
        # The drawn colours are the predicted classes' indices.
        drawn = np.asarray(disp.surfaces_[name].get_array()).reshape(30, 30)
        np.testing.assert_array_equal(drawn, np.searchsorted(disp.classes_, expected))
        np.testing.assert_array_equal(disp.scatters_[name].get_offsets(), X[~removed])
        np.testing.assert_allclose(disp.scatters_[name].get_facecolors(),
                                   [class_colour[c] for c in y[~removed]])
        np.testing.assert_array_equal(disp.removed_scatters_[name].get_offsets(),
                                      X[removed])
        assert axis.get_title() == name
    # The patch changed some of the regions (the two panels are not the same picture).
    assert np.any(disp.predictions["before"] != disp.predictions["after removal"])
    legend = [t.get_text() for t in disp.axes_[0].get_legend().get_texts()]
    assert legend == ["class 0", "class 1", "removed"]


def test_decision_regions_keep_dataframe_names_and_string_labels():
    X, y = make_moons(60, noise=0.2, random_state=1)
    frame = pd.DataFrame(X, columns=["width", "height"])
    labels = np.array(["cat", "dog"])[y]
    model = LogisticRegression().fit(frame, labels)
    with warnings.catch_warnings():
        # A grid without the column names would warn here.
        warnings.simplefilter("error")
        disp = DecisionRegionsDisplay.from_estimator(model, frame, labels,
                                                     grid_resolution=10)
    assert disp.axes_[0].get_xlabel() == "width" and disp.axes_[0].get_ylabel() == "height"
    np.testing.assert_array_equal(disp.classes_, ["cat", "dog"])
    assert disp.removed_scatters_ == {}
    legend = [t.get_text() for t in disp.axes_[0].get_legend().get_texts()]
    assert legend == ["class cat", "class dog"]


def test_decision_regions_bad_input(moons):
    X, y, _, model, _ = moons
    X3 = np.column_stack([X, X[:, 0]])
    with pytest.raises(ValueError, match="exactly 2 features; got 3"):
        DecisionRegionsDisplay.from_estimator(model, X3, y)
    with pytest.raises(ValueError, match="X has 200 rows but y has 199"):
        DecisionRegionsDisplay.from_estimator(model, X, y[:-1])
    with pytest.raises(ValueError, match="grid_resolution must be an integer >= 2"):
        DecisionRegionsDisplay.from_estimator(model, X, y, grid_resolution=1)
    with pytest.raises(ValueError, match=r"removed as a boolean mask must have one entry"):
        DecisionRegionsDisplay.from_estimator(model, X, y, removed=np.ones(3, dtype=bool))
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"one Axes per model \(2\); got 1"):
        DecisionRegionsDisplay.from_estimator({"a": model, "b": model}, X, y, ax=ax)


# ------------------------------------------------------------------ shared behaviour
def test_every_display_draws_on_the_given_axes(moons):
    X, y, flipped, model, puma = moons
    fig, axes = plt.subplots(2, 3)
    displays = [
        (ValuesDisplay.from_estimator(puma, ax=axes[0, 0]), axes[0, 0]),
        (MislabelDetectionDisplay.from_estimator(puma, flipped, ax=axes[0, 1]), axes[0, 1]),
        (ReliabilityDisplay.from_estimator(model, X, y, ax=axes[0, 2]), axes[0, 2]),
    ]
    for disp, ax in displays:
        assert disp.ax_ is ax and disp.figure_ is fig
    regions = DecisionRegionsDisplay.from_estimator(
        {"before": model, "after": puma}, X, y, grid_resolution=10, ax=axes[1, :2])
    assert list(regions.axes_) == list(axes[1, :2]) and regions.figure_ is fig
    # plot() draws a display again elsewhere, returning the display.
    _, other = plt.subplots()
    disp = displays[0][0]
    assert disp.plot(ax=other) is disp and disp.ax_ is other


def test_fitted_patcher_required(moons):
    X, y, flipped, model, _ = moons
    with pytest.raises(TypeError, match="takes a fitted PumaPatcher"):
        ValuesDisplay.from_estimator(model)
    with pytest.raises(TypeError, match="takes a fitted PumaPatcher"):
        MislabelDetectionDisplay.from_estimator(model, flipped)


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch):
    disp = ValuesDisplay(np.arange(3.0))
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        disp.plot()


def test_displays_import_without_matplotlib(monkeypatch):
    # A fresh copy of the module, loaded while matplotlib cannot be imported: only
    # plot() may need it.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    spec = importlib.util.spec_from_file_location("sklearn_puma._displays_without_mpl",
                                                  _displays.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    disp = module.ReliabilityDisplay({}, {}, {}, {})
    with pytest.raises(ImportError, match="ReliabilityDisplay.plot requires matplotlib"):
        disp.plot()
