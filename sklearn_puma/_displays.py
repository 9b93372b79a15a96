"""Displays: the plots of PUMA's results, in scikit-learn's Display pattern.

Each display holds the numbers it draws (computed by ``from_estimator`` or
``from_predictions``, or passed to the constructor) and draws them with
``plot(ax=None, ...)``, which returns the display with ``ax_`` (or ``axes_``),
``figure_`` and its artists set. matplotlib is imported only inside ``plot``, so that
sklearn-puma runs without it.
"""

from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._rows import row_mask
from .metrics import expected_calibration_error


# ----------------------------------------------------------------------------- helpers
def _pyplot(caller):
    """matplotlib.pyplot, imported on first use with an error that says how to get it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            f"{caller} requires matplotlib, which sklearn-puma does not install: "
            "`pip install matplotlib` (or `pip install \"sklearn-puma[plot]\"`)."
        ) from exc
    return plt


def _axes(ax, caller):
    """The axes to draw on (a new figure's when ``ax`` is None) and their figure."""
    plt = _pyplot(caller)
    if ax is None:
        _, ax = plt.subplots()
    return ax, ax.figure


def _select_row(values, row, names):
    """One criterion row of a values array, and its name (None when ``names`` is None).

    ``values`` is 1-D (one row) or 2-D (one column per row); ``row`` is a position or,
    when ``names`` are known, a row name; ``None`` is only allowed for a single row.
    """
    values = check_array(values, ensure_2d=False, dtype=np.float64, input_name="values")
    if values.ndim == 1:
        values = values[:, None]
    n_rows = values.shape[1]
    named = f" {list(names)}" if names is not None else ""
    if row is None:
        if n_rows > 1:
            raise ValueError(
                f"values has {n_rows} criterion rows{named}; choose one with row="
                f"{' (its position or its name)' if names is not None else ''}."
            )
        row = 0
    if names is not None and isinstance(row, str) and row in names:
        index = list(names).index(row)
    elif isinstance(row, Integral) and not isinstance(row, bool) and 0 <= row < n_rows:
        index = int(row)
    else:
        raise ValueError(
            f"unknown row {row!r}: values has {n_rows} criterion rows{named}; pass a "
            f"position in 0..{n_rows - 1}"
            f"{' or one of the names' if names is not None else ''}."
        )
    return values[:, index], None if names is None else names[index]


def _named(models, what, example):
    """A copy of a non-empty mapping name -> item as a dict, with clear errors."""
    if not isinstance(models, Mapping):
        raise TypeError(
            f"{what} must be a dict name -> {example}; got {type(models).__name__}."
        )
    if not models:
        raise ValueError(f"{what} is empty; give at least one {example}.")
    return dict(models)


def _named_estimators(estimators):
    if isinstance(estimators, Mapping):
        return _named(estimators, "estimators", "fitted estimator")
    return {type(estimators).__name__: estimators}


def _check_fitted_puma(puma, caller):
    check_is_fitted(puma)
    if not hasattr(puma, "values_"):
        raise TypeError(
            f"{caller} takes a fitted PumaPatcher; {type(puma).__name__} has no values_."
        )


# ---------------------------------------------------------------------- ValuesDisplay
class ValuesDisplay:
    """Distribution of data values, with marked points (removed, flipped...) apart.

    A histogram of the values of the unmarked points and, in another colour, one of the
    marked points on the same bins, with a rug of the marked values along the x axis
    (a handful of marked points is visible even among thousands). A vertical line at 0
    separates harmful (negative) from helpful (positive) points.

    Use :meth:`from_estimator` (a fitted :class:`~sklearn_puma.PumaPatcher`) or
    :meth:`from_predictions` (a values array) to create one.

    Parameters
    ----------
    values : ndarray of shape (n_samples,)
        One value per point (one criterion row).
    mark : ndarray of bool of shape (n_samples,), default=None
        The points drawn apart; ``None`` marks none.
    value_name : str, default=None
        Name of the criterion row, shown in the x label.
    mark_label : str, default="marked"
        Legend label of the marked points.

    Attributes
    ----------
    bin_edges_ : ndarray of shape (n_bins + 1,)
        The bins shared by both histograms.
    hist_ : matplotlib BarContainer
        Histogram of the unmarked points.
    marked_hist_ : matplotlib BarContainer or None
        Histogram of the marked points (None when no point is marked).
    rug_ : matplotlib Line2D or None
        The marked values as ticks along the x axis (None without marked points or
        with ``rug=False``).
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_puma.plot import ValuesDisplay
    >>> values = np.array([-0.3, -0.1, 0.0, 0.1, 0.2, 0.4])
    >>> disp = ValuesDisplay.from_predictions(values, mark=[0, 1], bins=3)
    >>> disp.rug_.get_xdata().tolist()
    [-0.3, -0.1]
    """

    def __init__(self, values, *, mark=None, value_name=None, mark_label="marked"):
        self.values = values
        self.mark = mark
        self.value_name = value_name
        self.mark_label = mark_label

    def plot(self, ax=None, *, bins=30, rug=True, **kwargs):
        """Draw the histograms.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure's when None.
        bins : int or sequence, default=30
            Bins, as for :func:`numpy.histogram_bin_edges` over all the values.
        rug : bool, default=True
            Draw the marked values as ticks along the x axis.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.hist` for the unmarked points.

        Returns
        -------
        display : ValuesDisplay
            The display, with its figure drawn (``figure_``).
        """
        self.ax_, self.figure_ = _axes(ax, "ValuesDisplay.plot")
        values = np.asarray(self.values, dtype=np.float64)
        mark = (np.zeros(len(values), dtype=bool) if self.mark is None
                else np.asarray(self.mark, dtype=bool))
        self.bin_edges_ = np.histogram_bin_edges(values, bins=bins)
        others = "all points" if not mark.any() else "other points"
        hist_kwargs = {"color": "C0", "alpha": 0.6, "label": f"{others} ({np.sum(~mark)})",
                       **kwargs}
        self.hist_ = self.ax_.hist(values[~mark], bins=self.bin_edges_, **hist_kwargs)[2]
        self.marked_hist_ = self.rug_ = None
        if mark.any():
            self.marked_hist_ = self.ax_.hist(
                values[mark], bins=self.bin_edges_, color="C1", alpha=0.8,
                label=f"{self.mark_label} ({np.sum(mark)})",
            )[2]
            if rug:
                # Ticks in axes coordinates along y, at the bottom whatever the counts.
                self.rug_ = self.ax_.plot(
                    values[mark], np.full(np.sum(mark), 0.02), linestyle="", marker="|",
                    markersize=10, color="C1", transform=self.ax_.get_xaxis_transform(),
                )[0]
        self.ax_.axvline(0.0, color="0.3", linewidth=0.8, linestyle="--")
        criterion = f"{self.value_name}; " if self.value_name else ""
        self.ax_.set(xlabel=f"value ({criterion}< 0 harmful, > 0 helpful)", ylabel="points")
        self.ax_.legend()
        return self

    @classmethod
    def from_predictions(cls, values, *, mark=None, row=None, mark_label="marked",
                         ax=None, bins=30, rug=True, **kwargs):
        """Plot the distribution of a values array.

        Parameters
        ----------
        values : array-like of shape (n_samples,) or (n_samples, n_rows)
            Data values, e.g. ``PumaPatcher.values_`` or ``PumaPatcher.value(X, y)``.
        mark : array-like of bool or int, default=None
            The points to draw apart: a boolean mask or indices.
        row : int, default=None
            The column of a 2-D ``values`` to draw (required then).
        mark_label : str, default="marked"
            Legend label of the marked points.
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure's when None.
        bins : int or sequence, default=30
            Bins, as for :func:`numpy.histogram_bin_edges`.
        rug : bool, default=True
            Draw the marked values as ticks along the x axis.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.hist` for the unmarked points.

        Returns
        -------
        display : ValuesDisplay
            The display, with its figure drawn (``figure_``).
        """
        column, _ = _select_row(values, row, None)
        mask = None if mark is None else row_mask(mark, len(column), "mark", row="point")
        return cls(column, mark=mask, mark_label=mark_label).plot(ax=ax, bins=bins,
                                                                  rug=rug, **kwargs)

    @classmethod
    def from_estimator(cls, puma, *, mark=None, row=None, mark_label=None, ax=None,
                       bins=30, rug=True, **kwargs):
        """Plot the distribution of a fitted PumaPatcher's training values.

        Parameters
        ----------
        puma : PumaPatcher
            A fitted patcher; its ``values_`` are drawn.
        mark : array-like of bool or int, default=None
            The training points to draw apart (mask or indices); by default the removed
            points ``puma.removed_``, if any.
        row : int or str, default=None
            The criterion row to draw, by position or by name (``criterion_names_``);
            required when there are several.
        mark_label : str, default=None
            Legend label of the marked points: "removed" for the default mark, else
            "marked".
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure's when None.
        bins : int or sequence, default=30
            Bins, as for :func:`numpy.histogram_bin_edges`.
        rug : bool, default=True
            Draw the marked values as ticks along the x axis.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.hist` for the unmarked points.

        Returns
        -------
        display : ValuesDisplay
            The display, with its figure drawn (``figure_``).
        """
        _check_fitted_puma(puma, "ValuesDisplay.from_estimator")
        column, name = _select_row(puma.values_, row, puma.criterion_names_)
        if mark is None and len(puma.removed_):
            mark, default_label = puma.removed_, "removed"
        else:
            default_label = "marked"
        mask = None if mark is None else row_mask(mark, len(column), "mark", row="point")
        return cls(column, mark=mask, value_name=name,
                   mark_label=default_label if mark_label is None else mark_label,
                   ).plot(ax=ax, bins=bins, rug=rug, **kwargs)


# ------------------------------------------------------------ MislabelDetectionDisplay
def _inspection_curve(is_mislabelled, score):
    """Fraction inspected and recall of mislabelled points, lowest score first.

    Points with tied scores have no order among themselves: only the end of each run of
    ties is kept, so that the straight line between two kept points is the expected
    recall when the tie is inspected in random order.
    """
    order = np.argsort(score, kind="stable")
    found = np.cumsum(is_mislabelled[order])
    sorted_score = score[order]
    ends = np.r_[np.flatnonzero(sorted_score[1:] != sorted_score[:-1]), len(score) - 1]
    n = len(score)
    return np.r_[0.0, (ends + 1) / n], np.r_[0.0, found[ends] / found[-1]]


class MislabelDetectionDisplay:
    """Mislabelled points found against the fraction of the data inspected.

    Each method orders the points by a score, lowest (most suspicious) first; its curve
    is the fraction of the mislabelled points found (recall) after inspecting each
    fraction of the data. The diagonal is the expected curve of a random order, and the
    dashed corner the best possible one (every inspected point mislabelled until all are
    found). The seed's Fig. 5.

    Use :meth:`from_predictions` (scores) or :meth:`from_estimator` (a fitted
    :class:`~sklearn_puma.PumaPatcher`'s values) to create one.

    Parameters
    ----------
    fraction_inspected : dict of str to ndarray
        Per method, the fractions of the data inspected, increasing from 0 to 1.
    recall : dict of str to ndarray
        Per method, the fraction of mislabelled points found at each
        ``fraction_inspected``.
    mislabelled_fraction : float
        Fraction of the points that are mislabelled (where the best curve reaches 1).

    Attributes
    ----------
    lines_ : dict of str to matplotlib Line2D
        The curve of each method.
    random_line_ : matplotlib Line2D or None
        The diagonal of a random order.
    ideal_line_ : matplotlib Line2D or None
        The best possible curve.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_puma.plot import MislabelDetectionDisplay
    >>> is_mislabelled = np.array([True, False, True, False, False])
    >>> score = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    >>> disp = MislabelDetectionDisplay.from_predictions(is_mislabelled, {"s": score})
    >>> disp.recall["s"].tolist()
    [0.0, 0.5, 0.5, 1.0, 1.0, 1.0]
    >>> disp.recall_at(0.6)
    {'s': 1.0}
    """

    def __init__(self, fraction_inspected, recall, *, mislabelled_fraction):
        self.fraction_inspected = fraction_inspected
        self.recall = recall
        self.mislabelled_fraction = mislabelled_fraction

    def recall_at(self, fraction):
        """The fraction of mislabelled points each method finds in a fraction of the data.

        Between the points of a curve the recall is interpolated linearly (which is
        exact for tied scores inspected in random order).

        Parameters
        ----------
        fraction : float in [0, 1]
            Fraction of the data inspected.

        Returns
        -------
        recalls : dict of str to float
            Each method's recall after inspecting that fraction.
        """
        if not isinstance(fraction, Real) or not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be a number in [0, 1]; got {fraction!r}.")
        return {name: float(np.interp(fraction, self.fraction_inspected[name], recall))
                for name, recall in self.recall.items()}

    def plot(self, ax=None, *, ref_lines=True, **kwargs):
        """Draw one curve per method.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure's when None.
        ref_lines : bool, default=True
            Draw the random diagonal and the best possible curve.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for every curve.

        Returns
        -------
        display : MislabelDetectionDisplay
            The display, with its figure drawn (``figure_``).
        """
        self.ax_, self.figure_ = _axes(ax, "MislabelDetectionDisplay.plot")
        self.random_line_ = self.ideal_line_ = None
        if ref_lines:
            self.random_line_ = self.ax_.plot([0, 1], [0, 1], color="0.5", linestyle=":",
                                              label="random order")[0]
            p = self.mislabelled_fraction
            self.ideal_line_ = self.ax_.plot([0, p, 1], [0, 1, 1], color="0.5",
                                             linestyle="--", label="best possible")[0]
        self.lines_ = {
            name: self.ax_.plot(self.fraction_inspected[name], recall, label=str(name),
                                **kwargs)[0]
            for name, recall in self.recall.items()
        }
        self.ax_.set(xlabel="fraction of the data inspected (lowest score first)",
                     ylabel="fraction of mislabelled points found", xlim=(0, 1),
                     ylim=(0, 1.02))
        self.ax_.legend(loc="lower right")
        return self

    @classmethod
    def from_predictions(cls, is_mislabelled, scores, *, ax=None, ref_lines=True,
                         **kwargs):
        """Plot the detection curves of scores, lowest score inspected first.

        Parameters
        ----------
        is_mislabelled : array-like of bool of shape (n_samples,)
            True on the points whose label is wrong (e.g. ``flip_labels``' second
            output).
        scores : dict of str to array-like of shape (n_samples,)
            Per method, a score per point, lower = more suspicious: PUMA values,
            the predicted probability of the given label, random numbers...
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure's when None.
        ref_lines : bool, default=True
            Draw the random diagonal and the best possible curve.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for every curve.

        Returns
        -------
        display : MislabelDetectionDisplay
            The display, with its figure drawn (``figure_``).
        """
        is_mislabelled = column_or_1d(is_mislabelled)
        if is_mislabelled.dtype != bool:
            if not np.isin(is_mislabelled, [0, 1]).all():
                raise ValueError(
                    "is_mislabelled must be a boolean mask (or 0/1); got values "
                    f"{np.unique(is_mislabelled)[:5].tolist()}."
                )
            is_mislabelled = is_mislabelled.astype(bool)
        if not is_mislabelled.any():
            raise ValueError("is_mislabelled marks no point: there is nothing to find.")
        n = len(is_mislabelled)
        fractions, recalls = {}, {}
        for name, score in _named(scores, "scores", "score array").items():
            score = check_array(score, ensure_2d=False, dtype=np.float64,
                                input_name=f"scores[{name!r}]")
            if score.shape != (n,):
                raise ValueError(
                    f"scores[{name!r}] must have one score per point ({n},); got shape "
                    f"{score.shape}."
                )
            fractions[name], recalls[name] = _inspection_curve(is_mislabelled, score)
        return cls(fractions, recalls,
                   mislabelled_fraction=float(is_mislabelled.mean())).plot(
            ax=ax, ref_lines=ref_lines, **kwargs)

    @classmethod
    def from_estimator(cls, puma, is_mislabelled, *, row=None, name="PUMA values",
                       scores=None, ax=None, ref_lines=True, **kwargs):
        """Plot how well a fitted PumaPatcher's training values find mislabelled points.

        Parameters
        ----------
        puma : PumaPatcher
            A fitted patcher; its ``values_`` are the score (lowest = most harmful).
        is_mislabelled : array-like of bool of shape (n_samples,)
            True on the training points whose label is wrong.
        row : int or str, default=None
            The criterion row to use, by position or by name; required when there are
            several.
        name : str, default="PUMA values"
            Legend name of the values' curve.
        scores : dict of str to array-like, default=None
            Other methods' scores to compare with, as in :meth:`from_predictions`.
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure's when None.
        ref_lines : bool, default=True
            Draw the random diagonal and the best possible curve.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for every curve.

        Returns
        -------
        display : MislabelDetectionDisplay
            The display, with its figure drawn (``figure_``).
        """
        _check_fitted_puma(puma, "MislabelDetectionDisplay.from_estimator")
        column, _ = _select_row(puma.values_, row, puma.criterion_names_)
        others = {} if scores is None else _named(scores, "scores", "score array")
        return cls.from_predictions(is_mislabelled, {name: column, **others}, ax=ax,
                                    ref_lines=ref_lines, **kwargs)


# ------------------------------------------------------------------ ReliabilityDisplay
def _reliability_bins(y_true, proba, n_bins, classes):
    """Per-bin mean confidence, accuracy and count, binned as the ECE bins them."""
    y_true = column_or_1d(y_true)
    proba = check_array(proba, ensure_2d=False, dtype=np.float64, input_name="proba")
    if proba.ndim == 1:
        proba = np.column_stack([1 - proba, proba])
    if len(proba) != len(y_true):
        raise ValueError(
            f"the probabilities have {len(proba)} rows but y_true has {len(y_true)}."
        )
    ece = expected_calibration_error(y_true, proba, n_bins=n_bins, classes=classes)
    classes = np.unique(y_true) if classes is None else np.asarray(classes)
    confidence = proba.max(axis=1)
    correct = classes[proba.argmax(axis=1)] == y_true
    # The same bins as expected_calibration_error: (b/B, (b+1)/B], 0 joining bin 0.
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_confidence = np.bincount(bins, confidence, minlength=n_bins) / count
        bin_accuracy = np.bincount(bins, correct, minlength=n_bins) / count
    return bin_confidence, bin_accuracy, count, ece


def _per_quantity(bins):
    """{name: (confidence, accuracy, count, ece)} -> one dict name -> value per quantity."""
    return tuple({name: quantities[k] for name, quantities in bins.items()}
                 for k in range(4))


class ReliabilityDisplay:
    """Reliability diagram of one or several classifiers: accuracy against confidence.

    The top-label confidence (largest predicted probability) is cut into ``n_bins``
    equal-width bins; each model's curve joins the mean confidence and the accuracy of
    its non-empty bins. The diagonal is perfect calibration, and each legend label
    gives the binned expected calibration error
    (:func:`~sklearn_puma.metrics.expected_calibration_error`), e.g. before and after a
    patch.

    Use :meth:`from_estimator` or :meth:`from_predictions` to create one.

    Parameters
    ----------
    bin_confidence : dict of str to ndarray of shape (n_bins,)
        Per model, the mean confidence in each bin (NaN for an empty bin).
    bin_accuracy : dict of str to ndarray of shape (n_bins,)
        Per model, the fraction of each bin whose most probable class is the true one
        (NaN for an empty bin).
    bin_count : dict of str to ndarray of int of shape (n_bins,)
        Per model, the number of points in each bin.
    ece : dict of str to float
        Per model, the binned expected calibration error.

    Attributes
    ----------
    lines_ : dict of str to matplotlib Line2D
        Each model's curve.
    ref_line_ : matplotlib Line2D or None
        The diagonal of perfect calibration.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_puma.plot import ReliabilityDisplay
    >>> y = np.array([0, 1, 1, 0])
    >>> proba = np.array([[0.95, 0.05], [0.25, 0.75], [0.35, 0.65], [0.3, 0.7]])
    >>> disp = ReliabilityDisplay.from_predictions(y, {"model": proba}, n_bins=5)
    >>> disp.bin_count["model"].tolist(), round(disp.ece["model"], 4)
    ([0, 0, 0, 3, 1], 0.0375)
    >>> disp.lines_["model"].get_label()
    'model (ECE 0.037)'
    """

    def __init__(self, bin_confidence, bin_accuracy, bin_count, ece):
        self.bin_confidence = bin_confidence
        self.bin_accuracy = bin_accuracy
        self.bin_count = bin_count
        self.ece = ece

    def plot(self, ax=None, *, ref_line=True, **kwargs):
        """Draw one curve per model.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure's when None.
        ref_line : bool, default=True
            Draw the diagonal of perfect calibration.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for every curve.

        Returns
        -------
        display : ReliabilityDisplay
            The display, with its figure drawn (``figure_``).
        """
        self.ax_, self.figure_ = _axes(ax, "ReliabilityDisplay.plot")
        self.ref_line_ = None
        if ref_line:
            self.ref_line_ = self.ax_.plot([0, 1], [0, 1], color="0.5", linestyle=":",
                                           label="perfectly calibrated")[0]
        self.lines_ = {}
        for name, count in self.bin_count.items():
            filled = np.asarray(count) > 0
            line_kwargs = {"marker": "o", "label": f"{name} (ECE {self.ece[name]:.3f})",
                           **kwargs}
            self.lines_[name] = self.ax_.plot(
                np.asarray(self.bin_confidence[name])[filled],
                np.asarray(self.bin_accuracy[name])[filled], **line_kwargs)[0]
        self.ax_.set(xlabel="confidence (largest predicted probability)",
                     ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
        self.ax_.legend(loc="upper left")
        return self

    @classmethod
    def from_predictions(cls, y_true, probas, *, n_bins=10, classes=None, ax=None,
                         ref_line=True, **kwargs):
        """Plot the reliability diagrams of predicted probabilities.

        Parameters
        ----------
        y_true : array-like of shape (n_samples,)
            True labels.
        probas : dict of str to array-like of shape (n_samples, n_classes)
            Per model, its predicted class probabilities, columns in the order of
            ``classes`` (a 1-D array is the probability of the second class of a
            binary problem).
        n_bins : int, default=10
            Number of equal-width confidence bins on [0, 1].
        classes : array-like of shape (n_classes,), default=None
            Labels of the probability columns; by default ``np.unique(y_true)``.
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure's when None.
        ref_line : bool, default=True
            Draw the diagonal of perfect calibration.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for every curve.

        Returns
        -------
        display : ReliabilityDisplay
            The display, with its figure drawn (``figure_``).
        """
        bins = {name: _reliability_bins(y_true, proba, n_bins, classes)
                for name, proba in _named(probas, "probas", "probability array").items()}
        return cls(*_per_quantity(bins)).plot(ax=ax, ref_line=ref_line, **kwargs)

    @classmethod
    def from_estimator(cls, estimators, X, y, *, n_bins=10, ax=None, ref_line=True,
                       **kwargs):
        """Plot the reliability diagrams of fitted classifiers on labelled data.

        Parameters
        ----------
        estimators : classifier or dict of str to classifier
            Fitted classifiers with ``predict_proba`` and ``classes_`` (e.g.
            ``{"before": model, "after patch": puma}``); a single one is named by its
            class.
        X : array-like of shape (n_samples, n_features)
            Points to predict.
        y : array-like of shape (n_samples,)
            Their true labels.
        n_bins : int, default=10
            Number of equal-width confidence bins on [0, 1].
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure's when None.
        ref_line : bool, default=True
            Draw the diagonal of perfect calibration.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for every curve.

        Returns
        -------
        display : ReliabilityDisplay
            The display, with its figure drawn (``figure_``).
        """
        bins = {}
        for name, estimator in _named_estimators(estimators).items():
            if not hasattr(estimator, "predict_proba"):
                raise ValueError(
                    f"estimator {name!r} ({type(estimator).__name__}) has no "
                    "predict_proba; a reliability diagram needs class probabilities."
                )
            bins[name] = _reliability_bins(y, estimator.predict_proba(X), n_bins,
                                           estimator.classes_)
        return cls(*_per_quantity(bins)).plot(ax=ax, ref_line=ref_line, **kwargs)


# -------------------------------------------------------------- DecisionRegionsDisplay
class DecisionRegionsDisplay:
    """Decision regions of 2-D classifiers side by side, removed points crossed out.

    One panel per model (e.g. before and after patching points out): the plane coloured
    by the predicted class, the training points coloured by their class, and the removed
    points drawn as crosses. The seed's Fig. 6.

    Use :meth:`from_estimator` to create one.

    Parameters
    ----------
    xx0, xx1 : ndarray of shape (grid_resolution, grid_resolution)
        The grid's first and second feature (as from :func:`numpy.meshgrid`).
    predictions : dict of str to ndarray of shape (grid_resolution, grid_resolution)
        Per model, the predicted label at each grid point.
    X : ndarray of shape (n_samples, 2)
        The training points.
    y : ndarray of shape (n_samples,)
        Their labels.
    removed : ndarray of bool of shape (n_samples,), default=None
        The removed training points, drawn as crosses.
    feature_names : list of str, default=None
        Names of the two features, for the axis labels.

    Attributes
    ----------
    classes_ : ndarray
        The labels, in the order of their colours (``"C0"``, ``"C1"``, ...).
    surfaces_ : dict of str to matplotlib QuadMesh
        Each model's regions.
    scatters_ : dict of str to matplotlib PathCollection
        Each panel's kept training points.
    removed_scatters_ : dict of str to matplotlib PathCollection
        Each panel's removed points (empty without removed points).
    axes_ : ndarray of matplotlib Axes of shape (n_models,)
        One panel per model, in the order of ``predictions``.
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn_puma import make_radial
    >>> from sklearn_puma.plot import DecisionRegionsDisplay
    >>> X, y = make_radial(100, random_state=0)
    >>> model = LogisticRegression().fit(X, y)
    >>> disp = DecisionRegionsDisplay.from_estimator(model, X, y, grid_resolution=50)
    >>> disp.predictions["LogisticRegression"].shape, disp.axes_.shape
    ((50, 50), (1,))
    """

    def __init__(self, xx0, xx1, predictions, X, y, *, removed=None, feature_names=None):
        self.xx0 = xx0
        self.xx1 = xx1
        self.predictions = predictions
        self.X = X
        self.y = y
        self.removed = removed
        self.feature_names = feature_names

    def plot(self, ax=None, *, alpha=0.35, **kwargs):
        """Draw one panel per model.

        Parameters
        ----------
        ax : matplotlib Axes or array-like of Axes, default=None
            One Axes per model; a new figure with a row of panels when None.
        alpha : float, default=0.35
            Opacity of the regions (the points are opaque).
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.pcolormesh` for the regions.

        Returns
        -------
        display : DecisionRegionsDisplay
            The display, with its figure drawn (``figure_``).
        """
        plt = _pyplot("DecisionRegionsDisplay.plot")
        from matplotlib.colors import ListedColormap
        from matplotlib.lines import Line2D

        n_models = len(self.predictions)
        if ax is None:
            _, ax = plt.subplots(1, n_models, figsize=(4.5 * n_models, 4.2), sharex=True,
                                 sharey=True, squeeze=False, layout="constrained")
        axes = np.ravel(np.asarray(ax, dtype=object))
        if len(axes) != n_models:
            raise ValueError(
                f"ax must hold one Axes per model ({n_models}); got {len(axes)}."
            )
        self.axes_, self.figure_ = axes, axes[0].figure

        X, y = np.asarray(self.X), np.asarray(self.y)
        removed = (np.zeros(len(y), dtype=bool) if self.removed is None
                   else np.asarray(self.removed, dtype=bool))
        self.classes_ = np.unique(np.concatenate(
            [y, *(np.ravel(p) for p in self.predictions.values())]))
        colours = [f"C{k % 10}" for k in range(len(self.classes_))]
        cmap = ListedColormap(colours)
        y_colour = np.asarray(colours)[np.searchsorted(self.classes_, y)]
        names = self.feature_names or ["feature 0", "feature 1"]

        self.surfaces_, self.scatters_, self.removed_scatters_ = {}, {}, {}
        for axis, (name, labels) in zip(axes, self.predictions.items()):
            codes = np.searchsorted(self.classes_, labels)
            mesh_kwargs = {"cmap": cmap, "alpha": alpha, "shading": "auto", **kwargs}
            # vmin/vmax pin class k to colour k whichever classes a panel predicts.
            self.surfaces_[name] = axis.pcolormesh(
                self.xx0, self.xx1, codes, vmin=-0.5, vmax=len(self.classes_) - 0.5,
                **mesh_kwargs)
            self.scatters_[name] = axis.scatter(
                X[~removed, 0], X[~removed, 1], c=y_colour[~removed], s=14,
                edgecolors="k", linewidths=0.4)
            if removed.any():
                self.removed_scatters_[name] = axis.scatter(
                    X[removed, 0], X[removed, 1], c=y_colour[removed], marker="x", s=36,
                    linewidths=1.5)
            axis.set(title=str(name), xlabel=names[0], ylabel=names[1])
        handles = [Line2D([], [], linestyle="", marker="o", color=c, markeredgecolor="k",
                          label=f"class {label}")
                   for label, c in zip(self.classes_, colours)]
        if removed.any():
            handles.append(Line2D([], [], linestyle="", marker="x", color="k",
                                  label="removed"))
        axes[0].legend(handles=handles, loc="best", fontsize="small")
        return self

    @classmethod
    def from_estimator(cls, estimators, X, y, *, removed=None, grid_resolution=200,
                       margin=0.05, ax=None, alpha=0.35, **kwargs):
        """Plot the decision regions of fitted 2-D classifiers with their training data.

        Parameters
        ----------
        estimators : classifier or dict of str to classifier
            Fitted classifiers of 2 features, one panel each in the dict's order (e.g.
            ``{"before": model, "after removal": puma}``); a single one is named by its
            class.
        X : array-like of shape (n_samples, 2)
            The training points (a DataFrame's column names are kept for prediction
            and the axis labels).
        y : array-like of shape (n_samples,)
            Their labels.
        removed : array-like of bool or int, default=None
            The removed training points (mask or indices, e.g. ``puma.removed_``),
            drawn as crosses.
        grid_resolution : int, default=200
            Grid points along each axis.
        margin : float, default=0.05
            Space around the data, as a fraction of each feature's range.
        ax : matplotlib Axes or array-like of Axes, default=None
            One Axes per model; a new figure with a row of panels when None.
        alpha : float, default=0.35
            Opacity of the regions.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.pcolormesh` for the regions.

        Returns
        -------
        display : DecisionRegionsDisplay
            The display, with its figure drawn (``figure_``).
        """
        models = _named_estimators(estimators)
        columns = getattr(X, "columns", None)
        X = check_array(X, dtype=np.float64, input_name="X")
        if X.shape[1] != 2:
            raise ValueError(
                f"DecisionRegionsDisplay draws 2-D data: X must have exactly 2 features; "
                f"got {X.shape[1]}."
            )
        y = column_or_1d(y)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}.")
        if (not isinstance(grid_resolution, Integral) or isinstance(grid_resolution, bool)
                or grid_resolution < 2):
            raise ValueError(
                f"grid_resolution must be an integer >= 2; got {grid_resolution!r}."
            )
        if not isinstance(margin, Real) or margin < 0:
            raise ValueError(f"margin must be a non-negative number; got {margin!r}.")
        removed = None if removed is None else row_mask(removed, len(X), "removed", row="point")

        low, high = X.min(axis=0), X.max(axis=0)
        pad = margin * np.where(high > low, high - low, 1.0)
        xx0, xx1 = np.meshgrid(
            np.linspace(low[0] - pad[0], high[0] + pad[0], grid_resolution),
            np.linspace(low[1] - pad[1], high[1] + pad[1], grid_resolution))
        grid = np.column_stack([xx0.ravel(), xx1.ravel()])
        if columns is not None:
            # Models fitted on a DataFrame warn when predicting on unnamed columns.
            import pandas as pd

            grid = pd.DataFrame(grid, columns=columns)
        predictions = {name: np.asarray(model.predict(grid)).reshape(xx0.shape)
                       for name, model in models.items()}
        feature_names = None if columns is None else [str(c) for c in columns]
        return cls(xx0, xx1, predictions, X, y, removed=removed,
                   feature_names=feature_names).plot(ax=ax, alpha=alpha, **kwargs)
