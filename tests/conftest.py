import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

# The suite runs one process per core (pytest-xdist): torch's own thread pool on top of
# that oversubscribes the cores, and its spinning workers slow small ops a hundredfold.
torch.set_num_threads(1)
# BLAS too (numpy, scipy, scikit-learn): multi-threaded BLAS on a core another worker
# also uses makes a 0.05 s fit take seconds.
threadpool_limits(1)

# Tests call torch.func's forward mode (hessian, jvp) directly, as ground truths, not
# through the library's forward_mode_section: its one-off, noisy first-call imports
# (a DeprecationWarning, which setup.cfg makes an error) are made quietly here.
from sklearn_puma._autodiff import quiet_torch_func  # noqa: E402

quiet_torch_func()


def _scaled(loader):
    X, y = loader(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="session")
def breast_cancer():
    return _scaled(load_breast_cancer)


@pytest.fixture(scope="session")
def wine():
    return _scaled(load_wine)


@pytest.fixture(scope="session")
def diabetes():
    X, y = _scaled(load_diabetes)
    return X, (y - y.mean()) / y.std()


def cluster_mask(X, fraction, seed):
    """The ``fraction`` of rows nearest to a random row: a compact cluster to remove."""
    rng = np.random.default_rng(seed)
    centre = X[rng.integers(len(X))]
    order = np.argsort(np.linalg.norm(X - centre, axis=1))
    mask = np.zeros(len(X), dtype=bool)
    mask[order[: int(round(fraction * len(X)))]] = True
    return mask
