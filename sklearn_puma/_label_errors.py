"""Rank training rows by how likely their label is wrong, from one fitted PumaPatcher."""

import numpy as np
from sklearn.base import is_classifier
from sklearn.utils.validation import check_is_fitted

from ._patcher import PumaPatcher

_METHODS = ("auto", "self_confidence", "confident_learning", "cleanlab", "self_influence",
            "values")

# cleanlab's fuzzy comparison of probabilities (cleanlab.internal.constants): a point
# whose probability equals a threshold up to rounding counts as confident, and a given
# label tied with the top class counts as predicted.
_TOLERANCE = 1e-6


def rank_label_errors(puma, *, method="auto", return_scores=False):
    """Rank the training rows of a fitted PumaPatcher by how likely their label is wrong.

    Every method reads the model fitted once by ``puma``: no refits, no
    cross-validation. Where a method needs out-of-sample class probabilities it takes
    :meth:`PumaPatcher.loo_predict_proba`, each row's probabilities under the model
    trained without it, which is what ``cross_val_predict`` approximates with K refits.

    Parameters
    ----------
    puma : PumaPatcher
        A PumaPatcher fitted on the labelled data to check, around a classifier.
    method : {"auto", "self_confidence", "confident_learning", "cleanlab", \
"self_influence", "values"}, default="auto"
        - ``"self_confidence"``: each row's leave-one-out probability of its given
          label, lowest first: equivalently its leave-one-out loss on its own label,
          highest first. When labels are flipped uniformly at random to other classes
          and the model's probabilities are calibrated, the chance that a row's label
          was flipped falls as this probability rises, so no other function of the
          probabilities ranks better (the Bayes-optimal ranking).
        - ``"values"``: the rows with the lowest ``values_`` (summed over the criterion
          rows) first, the most harmful to the criterion. Meant for a criterion
          measured on clean held-out data (``eval_set``): measured on the training
          rows themselves, a mislabelled row's own loss, which would rise without it,
          makes it look helpful.
        - ``"self_influence"``: the rows whose own loss rises most when they are left
          out first (:meth:`PumaPatcher.self_influence`): rows the model fits only
          because they are in the training set.
        - ``"confident_learning"``: the rule of Northcutt et al. (2021), on the
          leave-one-out probabilities. Class ``k``'s threshold ``t_k`` is the mean
          probability of ``k`` over the rows labelled ``k``; a row is confidently of
          class ``j`` when its probability of ``j`` reaches ``t_j`` (the most probable
          such class when several do). The rows counted off the diagonal of this
          confident joint, confidently of a class other than their label and not
          predicted as their label, are flagged. Flagged rows come first, then the
          rest; each part by the probability of the given label, lowest first.
        - ``"cleanlab"``: cleanlab's own ``cleanlab.filter.find_label_issues`` (its
          default ``filter_by="prune_by_noise_rate"``) on the leave-one-out
          probabilities, ordered like ``"confident_learning"`` with cleanlab's
          self-confidence scores (``cleanlab.rank.get_label_quality_scores``). Needs
          cleanlab (``pip install cleanlab``).
        - ``"auto"``: ``"self_confidence"``, the best detector we measured. With 10%
          of the labels flipped on nine tables (scikit-learn's breast cancer, digits
          and wine, noisy two moons under an MLP, and five real tables shipped by
          palmerpenguins, statsmodels and vega_datasets; ``benchmarks/bench_mislabel.py``,
          flip seeds 0-19) it found 0.57-1.00 of the flipped rows in the first 20% of
          its ranking: within one standard error of cleanlab on 5-fold
          cross-validated probabilities and of Data-OOB (50 bootstrap fits) on every
          table, ahead of both pooled (+0.011 and +0.050), in one fit. Confident
          learning's flags ranked first cost up to 0.08 where the model is weak (they
          include every confidently misclassified clean row); ``"values"`` finds harm
          to a criterion, not a bad fit to the label (0.00-0.63 with the default
          criterion on the training rows).
    return_scores : bool, default=False
        Also return the score each row was ranked by.

    Returns
    -------
    order : ndarray of int of shape (n_samples,)
        Training row indices, the most suspicious first.
    scores : ndarray of float of shape (n_samples,)
        Returned when ``return_scores`` is True. One score per training row, lower is
        more suspicious (``order`` sorts them, ties kept in row order), so they plot
        directly with :class:`~sklearn_puma.plot.MislabelDetectionDisplay`: the
        leave-one-out probability of the given label for ``"self_confidence"`` (and
        ``"auto"``), ``values_`` summed over criterion rows for ``"values"``, minus the self
        influence for ``"self_influence"``, and for the two confident-learning
        methods the leave-one-out probability of the given label, minus 1 on the
        flagged rows (so the flagged rows are exactly those scoring below 0).

    Raises
    ------
    ValueError
        For an unknown method, or a PumaPatcher around a regressor or a multilabel
        classifier (label errors are wrong classes).
    ImportError
        For ``method="cleanlab"`` when cleanlab is not installed.

    References
    ----------
    C. G. Northcutt, L. Jiang and I. L. Chuang, "Confident learning: estimating
    uncertainty in dataset labels", Journal of Artificial Intelligence Research 70
    (2021), pp. 1373-1411.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_puma import PumaPatcher, flip_labels, rank_label_errors
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> y_noisy, flipped = flip_labels(y, 0.1, random_state=0)
    >>> puma = PumaPatcher().fit(scale(X), y_noisy)
    >>> order = rank_label_errors(puma)
    >>> inspected = order[: len(y) // 5]  # look at 20% of the rows
    >>> found = flipped[inspected].sum() / flipped.sum()
    >>> bool(found > 0.9)
    True
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}; got {method!r}.")
    labels = _training_labels(puma)
    if method in ("auto", "self_confidence"):
        scores = _given_label_proba(labels, _loo_proba(puma))
    elif method == "confident_learning":
        proba = _loo_proba(puma)
        quality = _given_label_proba(labels, proba)
        scores = quality - _confident_learning_issues(labels, proba)
    elif method == "cleanlab":
        scores = _cleanlab_scores(labels, _loo_proba(puma))
    elif method == "self_influence":
        scores = -puma.self_influence()
    else:
        values = puma.values_
        scores = values if values.ndim == 1 else values.sum(axis=1)
    order = np.argsort(scores, kind="stable")
    return (order, scores) if return_scores else order


def _training_labels(puma, what="rank_label_errors"):
    """The training labels as class indices 0..K-1, after checking ``puma`` can have
    label errors at all (``what`` names the caller in the errors)."""
    if not isinstance(puma, PumaPatcher):
        raise TypeError(
            f"rank_label_errors takes a fitted PumaPatcher; got {type(puma).__name__}."
        )
    check_is_fitted(puma)
    model = type(puma._problem.adapter.estimator).__name__
    if not is_classifier(puma):
        raise ValueError(
            f"{what} needs a PumaPatcher around a classifier: label errors are "
            f"wrong classes, and {model} is a regressor. To "
            "find a regressor's harmful rows, sort puma.values_ or puma.self_influence()."
        )
    # PumaPatcher keeps the encoded training labels with the rest of the training data;
    # asking the user to pass y again would invite a y that is not the one fitted on.
    labels = np.asarray(puma._problem.y.cpu())
    if labels.ndim != 1:
        raise ValueError(
            f"{what} needs one class per row; this "
            f"{model} was fitted on multilabel targets."
        )
    return labels


def _loo_proba(puma):
    # Only the probabilities are read, to rank: the check of the longest leave-one-out
    # steps against their refits' optima (run, and warned from, by values_ and patch)
    # would be a fifth of a digits ranking's time and change no rank. Exact refits:
    # tests/test_label_errors.py (the farthest-moving row 0.018 off, ranks equal).
    return puma._loo_proba(check_far_steps=False)


def _given_label_proba(labels, proba):
    return proba[np.arange(len(labels)), labels]


def _confident_learning_issues(labels, proba):
    """Boolean mask of the rows off the diagonal of the confident joint (Northcutt et
    al. 2021, section 3.1), less those whose given label is still the predicted one."""
    n, n_classes = proba.shape
    counts = np.bincount(labels, minlength=n_classes)
    sums = np.bincount(labels, weights=_given_label_proba(labels, proba),
                       minlength=n_classes)
    # A class no row carries gets an unreachable threshold: nothing is confidently in it.
    thresholds = np.divide(sums, counts, out=np.full(n_classes, np.inf), where=counts > 0)
    confident = proba >= thresholds - _TOLERANCE
    true_guess = np.where(confident, proba, -np.inf).argmax(axis=1)
    off_diagonal = confident.any(axis=1) & (true_guess != labels)
    # As cleanlab does: a row the model still predicts as its given label is not flagged,
    # however confident another class is (a row can reach several thresholds).
    lifted = proba.copy()
    lifted[np.arange(n), labels] += _TOLERANCE
    return off_diagonal & (lifted.argmax(axis=1) != labels)


def _cleanlab_scores(labels, proba):
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as exc:
        raise ImportError(
            "rank_label_errors(method='cleanlab') needs cleanlab: pip install cleanlab. "
            "method='confident_learning' applies the same rule without it."
        ) from exc
    # n_jobs=1: cleanlab's per-class multiprocessing costs more than it saves for the
    # handful of classes of a scikit-learn classifier, and forks inside a library call.
    issues = find_label_issues(labels, proba, n_jobs=1)
    quality = get_label_quality_scores(labels, proba, method="self_confidence")
    return quality - issues


def flagged_label_errors(puma):
    """``remove="label_errors"``: the rows confident learning flags on the leave-one-out
    probabilities (those ``method="confident_learning"`` ranks first), and each row's
    leave-one-out probability of its label (lowest: most suspect), from one pass."""
    labels = _training_labels(puma, what='remove="label_errors"')
    proba = _loo_proba(puma)
    return _confident_learning_issues(labels, proba), _given_label_proba(labels, proba)
