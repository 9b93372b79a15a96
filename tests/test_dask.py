"""Chunked passes on a Dask cluster through joblib: the same answers as serially."""

import warnings

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression, Ridge

from sklearn_puma import PumaPatcher

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        # distributed's own start-up chatter (ports, dashboards) is not under test.
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                           processes=True, dashboard_address=None)
        client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.mark.parametrize("estimator", [LogisticRegression(max_iter=500), Ridge(alpha=1.0)],
                         ids=["logistic", "ridge"])
def test_values_and_patch_on_a_local_cluster_equal_serial(client, estimator):
    # Enough rows for several chunks in every pass (one chunk would never leave the
    # client), so that the cluster really computes them.
    X, y = make_classification(n_samples=20_000, n_features=30, random_state=0)
    if isinstance(estimator, Ridge):
        y = y.astype(float)
    removed = np.arange(0, 20_000, 97)
    serial = PumaPatcher(estimator, n_jobs=1).fit(X, y)
    serial.patch(removed)

    with distributed.get_task_stream(client) as stream, joblib.parallel_config("dask"):
        on_cluster = PumaPatcher(estimator).fit(X, y)
        # values_ is computed on first read: read here, its passes run on the cluster
        # (read after the block they ran locally, and a leave-one-out chunk function
        # that could not be sent to a worker went unnoticed).
        values = on_cluster.values_
        on_cluster.patch(removed)
    workers = {task["worker"] for task in stream.data}
    assert len(stream.data) >= 10 and len(workers) == 2

    scale = np.abs(serial.values_).max()
    np.testing.assert_allclose(values, serial.values_, rtol=0,
                               atol=1e-12 * scale)
    np.testing.assert_array_equal(on_cluster.sample_weight_, serial.sample_weight_)
    coef = serial.estimator_.coef_
    np.testing.assert_allclose(on_cluster.estimator_.coef_, coef, rtol=0,
                               atol=1e-12 * np.abs(coef).max())
