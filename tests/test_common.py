"""Every public estimator through scikit-learn's own estimator checks."""

from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, SGDClassifier
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_puma import PumaPatcher
from sklearn_puma.unlearning import SISA, AmnesiacMLP, UnrollingSGDMLP

# Instances under test, and the checks each is allowed to fail, with the reason.
INSTANCES = [
    PumaPatcher(),
    PumaPatcher(LogisticRegression()),
    PumaPatcher(Ridge()),
    PumaPatcher(LinearRegression()),
    PumaPatcher(SGDClassifier(loss="log_loss")),
    PumaPatcher(MLPClassifier(hidden_layer_sizes=(8,), max_iter=300, random_state=0)),
    PumaPatcher(MLPRegressor(hidden_layer_sizes=(8,), max_iter=300, random_state=0)),
    # The unlearning baselines are estimators too.
    SISA(LogisticRegression(), n_shards=2, random_state=0),
    SISA(Ridge(), n_shards=2, random_state=0),
    SISA(SGDClassifier(random_state=0), n_shards=2, n_slices=2, slice_epochs=5,
         random_state=0),
    AmnesiacMLP(n_epochs=20, random_state=0),
    UnrollingSGDMLP(n_epochs=20, random_state=0),
]
EXPECTED_FAILED_CHECKS = {
    # SGDClassifier fails this check on its own and scikit-learn's test table lists it:
    # SGD's objective is normalised by n, not by the weight sum, and its sample order is
    # random, so integer weights are not the same as repeated rows.  PumaPatcher with
    # remove=None returns that very model and cannot make it equivalent without
    # changing the objective the user chose.
    repr(PumaPatcher(SGDClassifier(loss="log_loss"))): {
        "check_sample_weight_equivalence_on_dense_data": (
            "SGDClassifier: sample_weight is not equivalent to removing/repeating samples"
        ),
        # The same on sparse X, which PumaPatcher takes now that SGDClassifier does.
        "check_sample_weight_equivalence_on_sparse_data": (
            "SGDClassifier: sample_weight is not equivalent to removing/repeating samples"
        ),
    },
}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED_CHECKS.get(repr(estimator), {})


@parametrize_with_checks(INSTANCES, expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
