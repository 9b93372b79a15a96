"""Pipelines as users have them: a fitted Pipeline of a ColumnTransformer (text and
numeric columns) and a model, patched without refitting; a raw eval_set; values
labelled by the input's index."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from sklearn_puma import PumaPatcher, UnsupportedEstimatorError

EXACT = dict(solver="newton-cholesky", tol=1e-12, max_iter=1000)


def _table(n, seed):
    """A table with a text column and two numeric ones, on a non-default index."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], n)
    x1 = rng.normal(size=n)
    x2 = rng.normal(3.0, 2.0, size=n)
    logit = 1.5 * x1 - 0.4 * x2 + np.select([colour == "red", colour == "blue"],
                                            [1.0, -1.0], 0.0)
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    index = pd.Index(rng.permutation(np.arange(1000, 1000 + n)), name="row_id")
    X = pd.DataFrame({"colour": colour, "x1": x1, "x2": x2}, index=index)
    return X, pd.Series(y, index=index, name="label")


def _preprocessing():
    return ColumnTransformer([("text", OneHotEncoder(), ["colour"]),
                              ("numbers", StandardScaler(), ["x1", "x2"])])


@pytest.fixture(scope="module")
def data():
    X, y = _table(240, seed=0)
    X_val, y_val = _table(120, seed=1)
    X_other, _ = _table(300, seed=2)
    return X, y, X_val, y_val, X_other


@pytest.fixture
def fitted_pipeline(data):
    """A Pipeline whose preprocessing was fitted on another table than the model's
    training rows: a refit of the preprocessing on X would show."""
    X, y, _, _, X_other = data
    pre = _preprocessing().fit(pd.concat([X, X_other]))
    model = LogisticRegression(**EXACT).fit(pre.transform(X), y)
    return Pipeline([("pre", pre), ("model", model)])


def test_frozen_pipeline_is_patched_without_refitting(data, fitted_pipeline):
    X, y, _, _, X_other = data
    before = pickle.dumps(fitted_pipeline)
    scaler = fitted_pipeline["pre"].named_transformers_["numbers"]
    mean = scaler.mean_.copy()

    puma = PumaPatcher(FrozenEstimator(fitted_pipeline)).fit(X, y)
    harmful = np.argsort(puma.values_)[:15]
    puma.patch(harmful)

    assert pickle.dumps(fitted_pipeline) == before  # the user's pipeline is untouched
    patched = puma.estimator_
    assert type(patched) is Pipeline
    assert [name for name, _ in patched.steps] == ["pre", "model"]
    assert type(patched["model"]) is LogisticRegression
    # The preprocessing is the fitted one, not refitted on X (whose mean differs).
    new_scaler = patched["pre"].named_transformers_["numbers"]
    np.testing.assert_array_equal(new_scaler.mean_, mean)
    assert not np.allclose(StandardScaler().fit(X[["x1", "x2"]]).mean_, mean)
    np.testing.assert_array_equal(
        patched["pre"].named_transformers_["text"].categories_[0],
        fitted_pipeline["pre"].named_transformers_["text"].categories_[0])
    Xt = fitted_pipeline["pre"].transform(X)
    np.testing.assert_array_equal(patched["pre"].transform(X), Xt)
    # Every patch keeps the same fitted preprocessing objects.
    first = patched["pre"]
    puma.patch(harmful[:5])
    assert puma.estimator_["pre"] is first

    # Ground truth: the model refitted on the transformed rows with sample_weight_.
    puma.patch(harmful)
    assert puma.eta_ == 1.0
    refit = LogisticRegression(**EXACT).fit(Xt, y, sample_weight=puma.sample_weight_)
    np.testing.assert_allclose(puma.estimator_["model"].coef_, refit.coef_, rtol=1e-6)
    np.testing.assert_allclose(puma.estimator_["model"].intercept_, refit.intercept_,
                               rtol=1e-6)
    # predict* and score take raw X.
    np.testing.assert_array_equal(puma.predict(X), refit.predict(Xt))
    np.testing.assert_allclose(puma.predict_proba(X), refit.predict_proba(Xt), rtol=1e-6)
    assert puma.score(X, y) == pytest.approx(refit.score(Xt, y))
    assert set(puma.classes_) == {"no", "yes"}
    assert puma.n_features_in_ == 3
    np.testing.assert_array_equal(puma.feature_names_in_, ["colour", "x1", "x2"])


def test_frozen_pipeline_values_equal_the_frozen_model_on_transformed_rows(
        data, fitted_pipeline):
    X, y, X_val, y_val, _ = data
    pre = fitted_pipeline["pre"]
    wrapped = PumaPatcher(FrozenEstimator(fitted_pipeline)).fit(X, y)
    plain = PumaPatcher(FrozenEstimator(fitted_pipeline["model"])).fit(pre.transform(X), y)
    np.testing.assert_allclose(wrapped.values_, plain.values_, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(wrapped.transform(X_val), plain.transform(pre.transform(X_val)),
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(wrapped.value(X_val, y_val),
                               plain.value(pre.transform(X_val), y_val),
                               rtol=1e-10, atol=1e-14)


def test_unfrozen_pipeline_fits_its_preprocessing_on_X(data):
    X, y, _, _, _ = data
    pipe = Pipeline([("pre", _preprocessing()), ("model", LogisticRegression(**EXACT))])
    puma = PumaPatcher(pipe, remove=10).fit(X, y)
    assert not hasattr(pipe["pre"], "transformers_")  # the template is left unfitted
    np.testing.assert_allclose(
        puma.estimator_["pre"].named_transformers_["numbers"].mean_,
        StandardScaler().fit(X[["x1", "x2"]]).mean_)
    Xt = puma.estimator_["pre"].transform(X)
    refit = LogisticRegression(**EXACT).fit(Xt, y, sample_weight=puma.sample_weight_)
    np.testing.assert_allclose(puma.estimator_["model"].coef_, refit.coef_, rtol=1e-6)
    assert len(puma.removed_) == 10


def test_pipeline_ending_in_an_unsupported_model_is_refused(data):
    X, y, _, _, _ = data
    with pytest.raises(UnsupportedEstimatorError, match="KNeighborsClassifier"):
        PumaPatcher(make_pipeline(_preprocessing(), KNeighborsClassifier())).fit(X, y)
    with pytest.raises(UnsupportedEstimatorError, match="passthrough"):
        PumaPatcher(Pipeline([("pre", _preprocessing()), ("m", "passthrough")])).fit(X, y)


def _loo_change(Xt, y, Xt_val, y_val, i):
    """C(theta without i) - C(theta) by refitting, log loss on the evaluation rows."""
    full = LogisticRegression(**EXACT).fit(Xt, y)
    keep = np.arange(len(y)) != i
    without = LogisticRegression(**EXACT).fit(Xt[keep], y.iloc[keep])
    return (log_loss(y_val, without.predict_proba(Xt_val), labels=full.classes_)
            - log_loss(y_val, full.predict_proba(Xt_val), labels=full.classes_))


def test_raw_eval_set_goes_through_the_pipeline(data, fitted_pipeline):
    X, y, X_val, y_val, _ = data
    pre = fitted_pipeline["pre"]
    Xt, Xt_val = pre.transform(X), pre.transform(X_val)
    raw = PumaPatcher(FrozenEstimator(fitted_pipeline), criterion="log_loss").fit(
        X, y, eval_set=(X_val, y_val))
    by_hand = PumaPatcher(FrozenEstimator(fitted_pipeline["model"]),
                          criterion="log_loss").fit(Xt, y, eval_set=(Xt_val, y_val))
    np.testing.assert_allclose(raw.values_, by_hand.values_, rtol=1e-10, atol=1e-14)
    harmful = np.argsort(raw.values_)[:10]
    raw.patch(harmful)
    by_hand.patch(harmful)
    np.testing.assert_allclose(raw.criterion_after_, by_hand.criterion_after_, rtol=1e-10)
    # Against leave-one-out refits: the most harmful and the most helpful point.
    for i in (int(np.argmin(raw.values_)), int(np.argmax(raw.values_))):
        actual = _loo_change(Xt, y, Xt_val, y_val, i)
        assert np.sign(raw.values_[i]) == np.sign(actual)
        assert raw.values_[i] == pytest.approx(actual, rel=0.2)


def test_unfitted_pipeline_takes_a_raw_eval_set(data):
    X, y, X_val, y_val, _ = data
    pipe = Pipeline([("pre", _preprocessing()), ("model", LogisticRegression(**EXACT))])
    puma = PumaPatcher(pipe, criterion="log_loss").fit(X, y, eval_set=(X_val, y_val))
    pre = puma.estimator_["pre"]
    by_hand = PumaPatcher(LogisticRegression(**EXACT), criterion="log_loss").fit(
        pre.transform(X), y, eval_set=(pre.transform(X_val), y_val))
    np.testing.assert_allclose(puma.values_, by_hand.values_, rtol=1e-8, atol=1e-12)


@pytest.mark.filterwarnings("ignore:X has feature names")
def test_as_last_step_a_transformed_eval_set_is_taken_and_a_raw_one_is_refused(data):
    X, y, X_val, y_val, _ = data
    pipe = Pipeline([("pre", _preprocessing()),
                     ("puma", PumaPatcher(LogisticRegression(**EXACT),
                                          criterion="log_loss"))])
    # The preprocessing fitted on the training rows, as the Pipeline fits it.
    pre = clone(pipe["pre"]).fit(X, y)
    pipe.fit(X, y, puma__eval_set=(pre.transform(X_val), y_val))
    wrapped = PumaPatcher(Pipeline([("pre", _preprocessing()),
                                    ("model", LogisticRegression(**EXACT))]),
                          criterion="log_loss").fit(X, y, eval_set=(X_val, y_val))
    np.testing.assert_allclose(pipe["puma"].values_, wrapped.values_, rtol=1e-8,
                               atol=1e-12)
    with pytest.raises(ValueError, match=r"PumaPatcher\(pipeline\)"):
        clone(pipe).fit(X, y, puma__eval_set=(X_val, y_val))


def test_values_are_labelled_by_the_index_of_X(data, fitted_pipeline):
    X, y, X_val, y_val, _ = data
    puma = PumaPatcher(FrozenEstimator(fitted_pipeline)).fit(X, y)
    assert isinstance(puma.value(), np.ndarray)  # numpy unless pandas is asked for
    puma.set_output(transform="pandas")
    values = puma.value()
    assert isinstance(values, pd.Series) and values.name == "loss"
    pd.testing.assert_index_equal(values.index, X.index)
    np.testing.assert_array_equal(values.to_numpy(), puma.values_)
    assert isinstance(puma.values_, np.ndarray)
    # The most harmful rows, found in the table by their labels.
    worst = values.nsmallest(5).index
    pd.testing.assert_frame_equal(X.loc[worst], X.iloc[np.argsort(puma.values_)[:5]])
    # Other rows keep their own index; transform honours set_output as well.
    subset = X_val.iloc[::7]
    pd.testing.assert_index_equal(puma.value(subset, y_val.iloc[::7]).index, subset.index)
    pd.testing.assert_index_equal(puma.value(method="first_order").index, X.index)
    label_free = puma.transform(subset)
    assert isinstance(label_free, pd.DataFrame)
    pd.testing.assert_index_equal(label_free.index, subset.index)
    assert list(label_free.columns) == list(puma.get_feature_names_out())

    # Several criterion rows: a DataFrame with one column per row.
    several = PumaPatcher(FrozenEstimator(fitted_pipeline), criterion="per_class_loss")
    several.set_output(transform="pandas").fit(X, y)
    frame = several.value()
    assert list(frame.columns) == list(several.criterion_names_)
    pd.testing.assert_index_equal(frame.index, X.index)
    np.testing.assert_array_equal(frame.to_numpy(), several.values_)


def test_values_of_a_numpy_X_have_a_default_index(data):
    X, y, _, _, _ = data
    Xt = _preprocessing().fit_transform(X)
    puma = PumaPatcher(LogisticRegression()).set_output(transform="pandas").fit(Xt, y)
    pd.testing.assert_index_equal(puma.value().index, pd.RangeIndex(len(y)))


def test_wrapped_pipeline_of_a_regressor_goes_into_a_grid_search(data):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV

    X, _, _, _, _ = data
    target = 2.0 * X["x1"] + (X["colour"] == "red") + 0.1 * np.arange(len(X)) % 1.0
    puma = PumaPatcher(make_pipeline(_preprocessing(), Ridge()), remove=5)
    search = GridSearchCV(puma, {"estimator__ridge__alpha": [0.1, 10.0]}, cv=2)
    search.fit(X, target)
    best = search.best_estimator_
    assert type(best.estimator_) is Pipeline and len(best.removed_) == 5
    Xt = best.estimator_[0].transform(X)
    refit = Ridge(alpha=search.best_params_["estimator__ridge__alpha"]).fit(
        Xt, target, sample_weight=best.sample_weight_)
    np.testing.assert_allclose(best.estimator_[-1].coef_, refit.coef_, rtol=1e-6, atol=1e-10)
