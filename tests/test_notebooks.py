"""The notebooks in examples/notebooks (jupytext percent scripts) run start to end, and
their plots show the numbers they computed. tests/test_examples.py runs only
examples/*.py, so these run once, here."""

import runpy
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("palmerpenguins")
matplotlib = pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "examples" / "notebooks"


@pytest.fixture(scope="module")
def tabular():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace = runpy.run_path(str(NOTEBOOKS / "tabular_workflow.py"),
                               run_name="notebook")
    yield namespace
    plt.close("all")


def test_tabular_workflow_values_plot_shows_the_values(tabular):
    puma, values = tabular["puma"], tabular["values"]
    np.testing.assert_array_equal(values.to_numpy(), puma.values_)
    np.testing.assert_array_equal(values.index, tabular["X_train"].index)
    ax_sorted, ax_hist = tabular["fig_values"].axes
    (line,) = ax_sorted.get_lines()[:1]
    np.testing.assert_array_equal(line.get_ydata(), np.sort(puma.values_))
    flipped = tabular["flipped"].to_numpy()
    points = ax_sorted.collections[0].get_offsets()
    np.testing.assert_array_equal(np.sort(points[:, 1]), np.sort(puma.values_[flipped]))
    # The histogram counts every row once.
    heights = sum(patch.get_height() for patch in ax_hist.patches)
    assert heights == len(puma.values_)


def test_tabular_workflow_inspects_and_patches_by_the_table_index(tabular):
    puma, table = tabular["puma"], tabular["most_harmful"]
    positions = np.argsort(puma.values_, kind="stable")[:tabular["n_remove"]]
    np.testing.assert_array_equal(table.index, tabular["X_train"].index[positions])
    np.testing.assert_array_equal(np.sort(puma.removed_), np.sort(positions))
    assert table["flipped"].sum() >= tabular["n_remove"] // 2


def test_tabular_workflow_verification_plot_shows_the_checks(tabular):
    ax_acc, ax_coef = tabular["fig_verify"].axes
    heights = [bar.get_height() for bar in ax_acc.patches]
    assert heights == [tabular["accuracy_before"], tabular["accuracy_after"]]
    assert tabular["accuracy_after"] >= tabular["accuracy_before"]
    offsets = ax_coef.collections[0].get_offsets()
    np.testing.assert_array_equal(offsets[:, 0], tabular["coef_refit"])
    np.testing.assert_array_equal(offsets[:, 1], tabular["coef_patched"])
    np.testing.assert_allclose(tabular["coef_patched"], tabular["coef_refit"], rtol=1e-6,
                               atol=1e-8)
    assert tabular["puma"].eta_ == 1.0
