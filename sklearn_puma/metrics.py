"""Plain (non-differentiable) metrics that PUMA's smooth criteria stand in for.

The criteria in ``criterion=`` are smooth so that they can be differentiated; these are
the quantities users report, measured on predictions: the binned expected calibration
error and the fairness gaps.  Each takes numpy arrays and returns a float.
"""

import numpy as np
from sklearn.utils.validation import check_consistent_length, column_or_1d


def expected_calibration_error(y_true, y_prob, *, n_bins=10, classes=None):
    """Binned top-label expected calibration error (ECE).

    ``ECE = sum_b (|B_b| / n) |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width bins
    of the confidence (the largest predicted probability), where ``acc`` is the fraction
    of the bin whose most probable class is the true one.  0 is perfect calibration;
    units are probability.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_prob : array-like of shape (n_samples, n_classes) or (n_samples,)
        Predicted class probabilities, columns in the order of ``classes``; a 1-D array
        is the probability of the second class of a binary problem.
    n_bins : int, default=10
        Number of equal-width confidence bins on [0, 1].
    classes : array-like of shape (n_classes,), default=None
        Labels of the columns of ``y_prob``; by default ``np.unique(y_true)`` (which
        must then have one entry per column).

    Returns
    -------
    ece : float
        The expected calibration error, in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_puma.metrics import expected_calibration_error
    >>> y = np.array([0, 1, 1, 0])
    >>> proba = np.array([[0.95, 0.05], [0.25, 0.75], [0.35, 0.65], [0.3, 0.7]])
    >>> round(expected_calibration_error(y, proba, n_bins=5), 4)
    0.0375
    """
    y_true = column_or_1d(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_prob.ndim == 1:
        y_prob = np.column_stack([1 - y_prob, y_prob])
    check_consistent_length(y_true, y_prob)
    classes = np.unique(y_true) if classes is None else np.asarray(classes)
    if y_prob.shape[1] != len(classes):
        raise ValueError(
            f"y_prob has {y_prob.shape[1]} columns but there are {len(classes)} classes "
            f"{classes.tolist()}; pass classes= in the column order of y_prob."
        )
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}.")
    confidence = y_prob.max(axis=1)
    correct = classes[y_prob.argmax(axis=1)] == y_true
    # Bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 joins bin 0.
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    n = len(y_true)
    gaps = [abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.sum(bins == b)
            for b in range(n_bins) if np.any(bins == b)]
    return float(np.sum(gaps) / n)


def _group_rates(values, groups, where=None):
    groups = column_or_1d(groups)
    keep = np.ones(len(values), dtype=bool) if where is None else where
    labels = np.unique(groups)
    if len(labels) < 2:
        raise ValueError(
            f"groups must hold at least two groups to compare; got {labels.tolist()}."
        )
    rates = {}
    for g in labels:
        members = keep & (groups == g)
        if members.any():
            rates[g] = float(values[members].mean())
    return rates


def _positive(y, pos_label):
    y = column_or_1d(y)
    if pos_label is None:
        labels = np.unique(y)
        if len(labels) > 2:
            raise ValueError(
                f"fairness gaps here are for binary outcomes; got labels {labels.tolist()}."
            )
        pos_label = labels.max()
    return (y == pos_label).astype(float), pos_label


def demographic_parity_difference(y_pred, groups, *, pos_label=None):
    """Largest difference between groups in the rate of positive predictions.

    ``max_g P(y_pred = pos | g) - min_g P(y_pred = pos | g)``, in [0, 1]; 0 is parity.

    Parameters
    ----------
    y_pred : array-like of shape (n_samples,)
        Predicted labels of a binary problem.
    groups : array-like of shape (n_samples,)
        The sensitive group of each sample; any number of groups.
    pos_label : int, float, bool or str, default=None
        The positive label; by default the larger of the two labels.

    Returns
    -------
    gap : float
        The demographic parity difference, in [0, 1].

    Examples
    --------
    >>> from sklearn_puma.metrics import demographic_parity_difference
    >>> demographic_parity_difference([1, 1, 0, 1, 0, 0], ["a", "a", "a", "b", "b", "b"])
    0.3333333333333333
    """
    positive, _ = _positive(y_pred, pos_label)
    check_consistent_length(positive, groups)
    rates = _group_rates(positive, groups)
    return max(rates.values()) - min(rates.values())


def equalized_odds_difference(y_true, y_pred, groups, *, pos_label=None):
    """The larger of the between-group gaps in true- and false-positive rates.

    ``max(TPR gap, FPR gap)``, each ``max_g - min_g`` over groups, in [0, 1].

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels of a binary problem.
    y_pred : array-like of shape (n_samples,)
        Predicted labels.
    groups : array-like of shape (n_samples,)
        The sensitive group of each sample; any number of groups.
    pos_label : int, float, bool or str, default=None
        The positive label; by default the larger of the two labels of ``y_true``.

    Returns
    -------
    gap : float
        The equalized odds difference, in [0, 1]; 0 when no outcome has two groups.

    Examples
    --------
    >>> from sklearn_puma.metrics import equalized_odds_difference
    >>> equalized_odds_difference([1, 0, 1, 0], [1, 0, 0, 0], ["a", "a", "b", "b"])
    1.0
    """
    y_true = column_or_1d(y_true)
    check_consistent_length(y_true, y_pred, groups)
    truth, pos_label = _positive(y_true, pos_label)
    predicted, _ = _positive(y_pred, pos_label)
    gaps = []
    for outcome in (1.0, 0.0):
        rates = _group_rates(predicted, groups, where=truth == outcome)
        if len(rates) >= 2:
            gaps.append(max(rates.values()) - min(rates.values()))
    return max(gaps) if gaps else 0.0
