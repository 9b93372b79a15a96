"""make_radial: shapes, seeding, the documented balance and geometry, clear errors."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from sklearn_puma import make_radial


def test_shapes_and_types():
    X, y, clusters = make_radial(120, n_clusters=4, random_state=0, return_clusters=True)
    assert X.shape == (120, 2) and X.dtype == np.float64
    assert y.shape == clusters.shape == (120,)
    assert np.issubdtype(y.dtype, np.integer) and np.issubdtype(clusters.dtype, np.integer)
    assert set(np.unique(y)) == {0, 1}
    assert set(np.unique(clusters)) == {-1, 0, 1, 2, 3}


def test_same_seed_same_data_and_return_clusters_changes_nothing_else():
    X1, y1, c1 = make_radial(100, random_state=3, return_clusters=True)
    X2, y2 = make_radial(100, random_state=3)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    X3, _ = make_radial(100, random_state=4)
    assert not np.allclose(X1, X3)
    rng = np.random.RandomState(3)
    np.testing.assert_array_equal(make_radial(100, random_state=rng)[0], X1)


def test_balance_as_documented():
    # Class 0 gets n // 2, class 1 the rest; cluster sizes differ by at most one, the
    # first clusters the larger: 301 = 6 * 50 + 1.
    _, y, clusters = make_radial(601, n_clusters=6, random_state=0, return_clusters=True)
    assert np.bincount(y).tolist() == [300, 301]
    assert np.bincount(clusters[clusters >= 0]).tolist() == [51, 50, 50, 50, 50, 50]


def test_cluster_ids_match_classes_and_geometry():
    radius, noise = 5.0, 0.1
    X, y, clusters = make_radial(4000, n_clusters=5, noise=noise, radius=radius,
                                 random_state=0, return_clusters=True)
    np.testing.assert_array_equal(y, (clusters >= 0).astype(int))
    # Each cluster sits where the docstring puts it: centres on the circle, counter-
    # clockwise from angle 0, spread noise * radius (twice that for the centre blob).
    for k in range(5):
        points = X[clusters == k]
        angle = 2 * np.pi * k / 5
        centre = radius * np.array([np.cos(angle), np.sin(angle)])
        tolerance = 4 * noise * radius / np.sqrt(len(points))
        np.testing.assert_allclose(points.mean(axis=0), centre, atol=tolerance)
        np.testing.assert_allclose(points.std(axis=0), noise * radius, rtol=0.15)
    centre_points = X[clusters == -1]
    np.testing.assert_allclose(centre_points.mean(axis=0), 0.0,
                               atol=4 * 2 * noise * radius / np.sqrt(len(centre_points)))
    np.testing.assert_allclose(centre_points.std(axis=0), 2 * noise * radius, rtol=0.1)


def test_a_removed_cluster_leaves_its_place_to_the_centre_class():
    # The design's claim: once a class-1 cluster is gone, the nearest data left there is
    # class 0 (the centre blob's tail), so a model fitted without it says class 0.
    X, y, clusters = make_radial(600, random_state=0, return_clusters=True)
    removed = clusters == 2
    knn = KNeighborsClassifier(n_neighbors=5).fit(X[~removed], y[~removed])
    assert np.mean(knn.predict(X[removed]) == 0) > 0.9
    kept = KNeighborsClassifier(n_neighbors=5).fit(X, y)
    assert np.mean(kept.predict(X[removed]) == 1) > 0.9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_samples": 1}, "'n_samples' parameter of make_radial"),
        ({"n_samples": 10.5}, "'n_samples' parameter of make_radial"),
        ({"n_clusters": 0}, "'n_clusters' parameter of make_radial"),
        ({"noise": -0.1}, "'noise' parameter of make_radial"),
        ({"radius": 0.0}, "'radius' parameter of make_radial"),
        ({"return_clusters": "yes"}, "'return_clusters' parameter of make_radial"),
        ({"random_state": "seed"}, "'random_state' parameter of make_radial"),
        ({"n_samples": 10, "n_clusters": 6},
         "at least one point per cluster.*n_samples >= 11"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_radial(**kwargs)


def test_smallest_valid_size():
    _, y, clusters = make_radial(11, n_clusters=6, random_state=0, return_clusters=True)
    assert np.bincount(y).tolist() == [5, 6]
    assert np.bincount(clusters[clusters >= 0]).tolist() == [1] * 6
