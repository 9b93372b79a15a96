"""Small data sets for demos and tests: labels corrupted on purpose, and a 2-D set with
clusters that can be removed."""

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, validate_params


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


@validate_params(
    {
        "n_samples": [Interval(Integral, 2, None, closed="left")],
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "noise": [Interval(Real, 0, None, closed="left")],
        "radius": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
        "return_clusters": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_radial(n_samples=600, *, n_clusters=6, noise=0.15, radius=3.0, random_state=None,
                return_clusters=False):
    """Two classes in the plane: a blob at the centre ringed by clusters of the other.

    The "Radial" data of the PUMA paper, on which one cluster of a class is patched out
    of a fitted model. Class 0 is one isotropic Gaussian blob centred on the origin;
    class 1 is ``n_clusters`` isotropic Gaussian blobs whose centres are evenly spaced
    on the circle of ``radius`` around it, the first at angle 0. The noise is relative
    to the radius, so that ``radius`` only rescales the data: the class-1 clusters have
    standard deviation ``noise * radius`` and the centre blob twice that (with the
    defaults, 0.45 and 0.9, and neighbouring cluster centres 3.0 apart).

    The wider centre blob is what makes a removal visible: its tail reaches the ring, so
    where a class-1 cluster is taken away the nearest data left is class 0, and a model
    retrained without the cluster gives its place to class 0 (with blobs of equal width
    the remaining clusters would still enclose the centre, and a retrained model would
    barely change). A patch that removes the cluster should do the same, while the
    other clusters keep their class.

    Parameters
    ----------
    n_samples : int, default=600
        Number of points. Class 0 gets ``n_samples // 2`` and class 1 the rest, split
        over the clusters as evenly as possible (sizes differ by at most one, the
        first clusters being the larger).
    n_clusters : int, default=6
        Number of class-1 clusters on the circle; each needs at least one point, so
        ``n_samples - n_samples // 2 >= n_clusters``.
    noise : float, default=0.15
        Standard deviation of every blob, as a fraction of ``radius``.
    radius : float, default=3.0
        Distance from the origin to the centres of the class-1 clusters.
    random_state : int, RandomState instance or None, default=None
        Seeds the noise and the order of the rows.
    return_clusters : bool, default=False
        Also return the cluster of every point.

    Returns
    -------
    X : ndarray of shape (n_samples, 2)
        The points, rows in random order.
    y : ndarray of int of shape (n_samples,)
        Class labels, 0 (centre) or 1 (ring).
    clusters : ndarray of int of shape (n_samples,)
        Only with ``return_clusters=True``: the class-1 cluster of each point, numbered
        ``0 .. n_clusters - 1`` counter-clockwise from angle 0, and ``-1`` for class 0.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_puma import make_radial
    >>> X, y, clusters = make_radial(200, n_clusters=4, random_state=0,
    ...                              return_clusters=True)
    >>> X.shape, np.bincount(y).tolist(), np.bincount(clusters + 1).tolist()
    ((200, 2), [100, 100], [100, 25, 25, 25, 25])
    >>> bool(np.all(y[clusters == 2] == 1)), bool(np.all(clusters[y == 0] == -1))
    (True, True)
    """
    n_centre = n_samples // 2
    n_ring = n_samples - n_centre
    if n_ring < n_clusters:
        raise ValueError(
            f"make_radial needs at least one point per cluster: n_samples={n_samples} "
            f"puts {n_ring} points in class 1, fewer than n_clusters={n_clusters}; use "
            f"n_samples >= {2 * n_clusters - 1} or fewer clusters."
        )
    rng = check_random_state(random_state)
    sizes = np.full(n_clusters, n_ring // n_clusters)
    sizes[: n_ring % n_clusters] += 1
    clusters = np.concatenate([np.full(n_centre, -1),
                               np.repeat(np.arange(n_clusters), sizes)])
    angles = 2 * np.pi * np.arange(n_clusters) / n_clusters
    ring = radius * np.column_stack([np.cos(angles), np.sin(angles)])
    centres = np.vstack([np.zeros((1, 2)), ring])[clusters + 1]
    scale = np.where(clusters < 0, 2 * noise * radius, noise * radius)[:, None]
    X = centres + scale * rng.normal(size=(n_samples, 2))
    # Rows come out shuffled, like scikit-learn's generators, so that a plain head/tail
    # split does not separate the classes.
    order = rng.permutation(n_samples)
    X, clusters = X[order], clusters[order]
    y = (clusters >= 0).astype(np.int64)
    if return_clusters:
        return X, y, clusters.astype(np.int64)
    return X, y


@validate_params(
    {
        "n_samples": [Interval(Integral, 2, None, closed="left")],
        "n_features": [Interval(Integral, 2, None, closed="left")],
        "words_per_document": [Interval(Real, 1, None, closed="left")],
        "n_informative": [Interval(Integral, 2, None, closed="left")],
        "label_noise": [Interval(Real, 0, 1, closed="both")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_bag_of_words(n_samples=2000, n_features=100_000, *, words_per_document=60,
                      n_informative=2000, label_noise=0.1, random_state=None):
    """A two-class text table as TF-IDF rows: sparse, with a vocabulary of any size.

    Words are drawn from a Zipf law over the vocabulary (word ``j`` with probability
    proportional to ``1 / (j + 1)^1.05``, as in natural text), and each document also
    draws about a sixth as many words from ``n_informative`` class-marked words, half
    of them marking each class.  The counts go through scikit-learn's
    ``TfidfTransformer(sublinear_tf=True)`` (``(1 + log count) * idf``, smoothed idf,
    rows L2-normalised): what ``TfidfVectorizer(sublinear_tf=True)`` gives on real
    text.  A ``label_noise`` fraction of the labels is then flipped.

    Parameters
    ----------
    n_samples : int, default=2000
        The number of documents (rows).
    n_features : int, default=100000
        The vocabulary size (columns); most never occur in a small corpus.
    words_per_document : float, default=60
        Mean number of common words per document (Poisson).
    n_informative : int, default=2000
        Class-marked words; must not exceed ``n_features``.
    label_noise : float in [0, 1], default=0.1
        The probability that each label is flipped after the documents are drawn.
    random_state : int, RandomState instance or None, default=None
        Seed of the draws, for reproducible tables.

    Returns
    -------
    X : scipy.sparse.csr_matrix of shape (n_samples, n_features)
        The TF-IDF rows.
    y : ndarray of int of shape (n_samples,)
        The labels, 0 or 1, each flipped with probability ``label_noise``.

    Examples
    --------
    >>> from sklearn_puma import make_bag_of_words
    >>> X, y = make_bag_of_words(100, 5000, random_state=0)
    >>> X.shape, X.format, bool(X.nnz < 100 * 100)
    ((100, 5000), 'csr', True)
    """
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfTransformer

    if n_informative > n_features:
        raise ValueError(f"n_informative={n_informative} exceeds n_features={n_features}.")
    rng = check_random_state(random_state)
    frequency = 1.0 / np.arange(1, n_features + 1) ** 1.05
    frequency /= frequency.sum()
    informative = rng.choice(n_features, n_informative, replace=False)
    marks = np.array_split(informative, 2)
    y = rng.randint(0, 2, n_samples)
    common = rng.poisson(words_per_document, n_samples) + 1
    marked = rng.poisson(words_per_document / 6, n_samples) + 1
    # All draws at once (one cumulative table), then each document's marked words.
    words = np.searchsorted(np.cumsum(frequency), rng.random_sample(common.sum()))
    words = np.minimum(words, n_features - 1)
    owner = np.repeat(np.arange(n_samples), marked)
    marked_words = np.empty(len(owner), dtype=np.int64)
    for label, vocabulary in enumerate(marks):
        mine = y[owner] == label
        marked_words[mine] = vocabulary[rng.randint(0, len(vocabulary), mine.sum())]
    rows = np.concatenate([np.repeat(np.arange(n_samples), common), owner])
    columns = np.concatenate([words, marked_words])
    # Repeated (row, word) pairs are summed into counts on conversion to CSR.
    counts = sp.csr_matrix((np.ones(len(rows)), (rows, columns)),
                           shape=(n_samples, n_features))
    X = TfidfTransformer(sublinear_tf=True).fit_transform(counts).tocsr()
    flip = rng.random_sample(n_samples) < label_noise
    return X, np.where(flip, 1 - y, y).astype(np.int64)
