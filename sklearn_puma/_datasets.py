"""Small helpers to corrupt labelled data on purpose, for demos and tests."""

from numbers import Real

import numpy as np
from sklearn.utils import check_random_state


def flip_labels(y, fraction, random_state=None):
    """Flip a seeded random fraction of the labels to a different class.

    Each flipped label becomes one of the *other* classes present in ``y``, chosen
    uniformly at random, so every flip is a real label error (binary and multiclass).

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels (numbers or strings).
    fraction : float in [0, 1]
        Fraction of the rows to flip; ``round(fraction * n_samples)`` rows are flipped.
    random_state : int, RandomState instance or None, default=None
        Seeds the choice of rows and of their new labels.

    Returns
    -------
    y_flipped : ndarray of shape (n_samples,)
        A copy of ``y`` with the chosen labels flipped.
    flipped : ndarray of bool of shape (n_samples,)
        True on the rows whose label was flipped.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_puma._datasets import flip_labels
    >>> y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    >>> y_flipped, flipped = flip_labels(y, 0.3, random_state=0)
    >>> int(flipped.sum()), bool(np.all(y_flipped[flipped] != y[flipped]))
    (3, True)
    >>> bool(np.all(y_flipped[~flipped] == y[~flipped]))
    True
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be one-dimensional; got shape {y.shape}.")
    if not isinstance(fraction, Real) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1]; got {fraction!r}.")
    classes = np.unique(y)
    n = len(y)
    n_flip = int(round(fraction * n))
    if n_flip and len(classes) < 2:
        raise ValueError(
            f"Cannot flip labels of a target with a single class ({classes.tolist()})."
        )
    rng = check_random_state(random_state)
    rows = rng.choice(n, size=n_flip, replace=False)
    y_flipped = y.copy()
    class_index = np.searchsorted(classes, y[rows])
    # Shifting the class index by 1..K-1 (mod K) draws uniformly among the other classes.
    shift = rng.randint(1, len(classes), size=n_flip) if n_flip else np.zeros(0, int)
    y_flipped[rows] = classes[(class_index + shift) % len(classes)]
    flipped = np.zeros(n, dtype=bool)
    flipped[rows] = True
    return y_flipped, flipped
