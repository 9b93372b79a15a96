"""skorch nets: scikit-learn's estimator checks, and the adapters against ground truths."""

import numpy as np
import pytest
import torch

skorch = pytest.importorskip("skorch")

from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from sklearn_puma import PumaPatcher  # noqa: E402
from sklearn_puma._adapters import make_adapter  # noqa: E402
from sklearn_puma._autodiff import gradient, hvp_function, objective  # noqa: E402

from .skorch_modules import LazyMLP  # noqa: E402

# float64 modules: the sample-weight equivalence check compares predictions to 1e-7,
# below float32's resolution.  Full-batch training keeps fits short and deterministic.
COMMON = dict(module=LazyMLP, module__dtype=torch.float64, max_epochs=20, lr=0.1,
              train_split=None, verbose=0)
CLASSIFIER = PumaPatcher(NeuralNetClassifier(module__n_out=3, **COMMON), random_state=0)
REGRESSOR = PumaPatcher(NeuralNetRegressor(module__n_out=1, module__output="logits",
                                           **COMMON), random_state=0)

# The classifier's output layer has 3 units: checks that train it on another number
# of classes cannot pass, whatever wraps the net.
CLASS_COUNT = "the module's output layer has a fixed number (3) of classes"
EXPECTED_FAILED_CHECKS = {
    repr(CLASSIFIER): {
        "check_classifiers_train": CLASS_COUNT + "; the check trains on 2",
        "check_dtype_object": CLASS_COUNT + "; the check trains on 4",
    },
}


@parametrize_with_checks([CLASSIFIER, REGRESSOR],
                         expected_failed_checks=lambda e: EXPECTED_FAILED_CHECKS.get(
                             repr(e), {}))
def test_skorch_nets_are_sklearn_compatible(estimator, check):
    check(estimator)
