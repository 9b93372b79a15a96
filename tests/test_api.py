"""The scikit-learn surface: pipelines and grid search, pandas, transform, errors."""

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_puma import PumaPatcher, PumaWarning, UnsupportedEstimatorError


@pytest.fixture(scope="module")
def raw_breast_cancer():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True)


# ----------------------------------------------------------- pipelines, grid search


def test_grid_search_over_delta_and_alpha(raw_breast_cancer):
    X, y = raw_breast_cancer
    pipe = make_pipeline(StandardScaler(),
                         PumaPatcher(LogisticRegression(), remove=0.05))
    grid = GridSearchCV(pipe, {"pumapatcher__delta": [0.01, 0.1],
                               "pumapatcher__alpha": [0.01, 1.0]}, cv=3)
    grid.fit(X, y)
    assert set(grid.cv_results_["param_pumapatcher__alpha"]) == {0.01, 1.0}
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    best = grid.best_estimator_[-1]
    assert len(best.removed_) == round(0.05 * len(X))


def test_removal_mask_is_split_like_sample_weight(raw_breast_cancer):
    X, y = raw_breast_cancer
    mask = np.zeros(len(X), dtype=bool)
    mask[::17] = True
    pipe = make_pipeline(StandardScaler(), PumaPatcher(LogisticRegression(), remove=0.05))
    cv = KFold(3, shuffle=True, random_state=0)
    result = cross_validate(pipe, X, y, cv=cv, params={"pumapatcher__remove": mask},
                            return_estimator=True, return_indices=True)
    for est, train in zip(result["estimator"], result["indices"]["train"]):
        np.testing.assert_array_equal(est[-1].removed_, np.flatnonzero(mask[train]))

    grid = GridSearchCV(pipe, {"pumapatcher__delta": [0.01, 0.1],
                               "pumapatcher__alpha": [0.01, 0.1]}, cv=cv)
    grid.fit(X, y, pumapatcher__remove=mask)
    np.testing.assert_array_equal(grid.best_estimator_[-1].removed_, np.flatnonzero(mask))


def test_pandas_round_trip(raw_breast_cancer):
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True)
    X = pd.DataFrame(StandardScaler().fit_transform(frame.data), columns=frame.data.columns)
    y = frame.target.map({0: "malignant", 1: "benign"})
    puma = PumaPatcher(remove=10).set_output(transform="pandas").fit(X, y)
    values = puma.transform(X)
    assert isinstance(values, pd.DataFrame)
    assert list(values.columns) == ["value_benign", "value_malignant"]
    assert list(puma.feature_names_in_) == list(X.columns)
    assert set(puma.predict(X)) <= {"benign", "malignant"}
    # The value of each training point under its own label is its first-order value.
    own = values.to_numpy()[np.arange(len(y)), np.searchsorted(puma.classes_, y)]
    np.testing.assert_allclose(own, puma.value(method="first_order"), rtol=1e-9,
                               atol=1e-15)


def test_transform_of_regressor_and_several_criteria(diabetes):
    X, y = diabetes
    puma = PumaPatcher(Ridge(), criterion=["loss", "squared_error"]).fit(X, y)
    Z = puma.transform(X[:5])
    assert Z.shape == (5, 2)
    assert list(puma.get_feature_names_out()) == ["value_0_loss", "value_0_squared_error"]
    assert puma.values_.shape == (len(X), 2)


def test_frozen_estimator_is_not_refitted(breast_cancer):
    X, y = breast_cancer
    model = LogisticRegression(C=0.3).fit(X[:300], y[:300])  # "trained elsewhere"
    before = copy.deepcopy(model.coef_)
    puma = PumaPatcher(FrozenEstimator(model)).fit(X[:300], y[:300])
    np.testing.assert_array_equal(puma.estimator_.coef_, before)
    direct = PumaPatcher(LogisticRegression(C=0.3)).fit(X[:300], y[:300])
    np.testing.assert_allclose(puma.values_, direct.values_, rtol=1e-5, atol=1e-10)
    puma.patch(np.arange(10))
    np.testing.assert_array_equal(model.coef_, before)  # the user's model untouched
    assert not np.allclose(puma.estimator_.coef_, before)


def test_user_estimator_is_never_modified(breast_cancer):
    X, y = breast_cancer
    est = LogisticRegression()
    PumaPatcher(est, remove=5).fit(X, y)
    assert not hasattr(est, "coef_")


def test_remove_policies(breast_cancer):
    X, y = breast_cancer
    values = PumaPatcher().fit(X, y).values_
    assert len(PumaPatcher(remove=12).fit(X, y).removed_) == 12
    np.testing.assert_array_equal(PumaPatcher(remove=12).fit(X, y).removed_,
                                  np.sort(np.argsort(values, kind="stable")[:12]))
    auto = PumaPatcher(remove="auto").fit(X, y)
    q1, q3 = np.percentile(values, [25, 75])
    np.testing.assert_array_equal(
        auto.removed_, np.flatnonzero((values < 0) & (values < q1 - 1.5 * (q3 - q1))))
    by_callable = PumaPatcher(remove=lambda v: v < np.quantile(v, 0.02)).fit(X, y)
    np.testing.assert_array_equal(by_callable.removed_,
                                  np.flatnonzero(values < np.quantile(values, 0.02)))
    assert len(PumaPatcher(remove=0.1).fit(X, y).removed_) == round(0.1 * len(X))


def test_upweight_set_is_respected(breast_cancer):
    X, y = breast_cancer
    allowed = np.zeros(len(X), dtype=bool)
    allowed[y == 0] = True
    puma = PumaPatcher(criterion="per_class_loss", upweight=allowed)
    puma.fit(X, y, remove=np.flatnonzero(y == 0)[:60])
    assert puma.lambda_.sum() > 0
    assert np.all(puma.lambda_[~allowed] == 0)
    assert np.all(puma.lambda_[puma.removed_] == 0)


# -------------------------------------------------------------------------- errors


def test_unsupported_estimator_is_named(breast_cancer):
    X, y = breast_cancer
    with pytest.raises(UnsupportedEstimatorError,
                       match="(?s)RandomForestClassifier is not supported.*LogisticRegression"):
        PumaPatcher(RandomForestClassifier()).fit(X, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_input(bad, breast_cancer):
    X, y = breast_cancer
    X = X.copy()
    X[3, 2] = bad
    with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
        PumaPatcher().fit(X, y)
    X_eval = breast_cancer[0][:20].copy()
    X_eval[0, 0] = bad
    with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
        PumaPatcher().fit(breast_cancer[0], y, eval_set=(X_eval, y[:20]))


def test_removal_indices_out_of_range(breast_cancer):
    X, y = breast_cancer
    with pytest.raises(IndexError,
                       match=r"out of range for 569 training samples \(0 to 568\): \[569\]"):
        PumaPatcher().fit(X, y, remove=[0, 569])
    puma = PumaPatcher().fit(X, y)
    with pytest.raises(IndexError, match="out of range"):
        puma.patch([-600])


def test_row_selections_that_would_name_other_rows_are_refused_or_looked_up(breast_cancer):
    """A 0/1 integer mask would be read as the indices {0, 1}, -1 would wrap to the last
    row, and a pandas Index of row labels (``value().nsmallest(k).index`` on a shuffled
    table) would be read as positions: each removed other rows than meant, silently."""
    X, y = breast_cancer
    puma = PumaPatcher().fit(X, y)
    with pytest.raises(ValueError, match="all 0 or 1, one per training sample"):
        puma.patch((y == 0).astype(int))
    with pytest.raises(IndexError, match=r"out of range for 569 training samples \(0 to 568\)"):
        puma.patch([-1])
    frame = pd.DataFrame(X).sample(frac=1.0, random_state=0)  # labels != positions
    puma = PumaPatcher().set_output(transform="pandas").fit(frame, y[frame.index])
    worst = puma.value().nsmallest(5).index
    assert not np.array_equal(np.sort(frame.index.get_indexer(worst)), np.sort(worst))
    puma.patch(worst)
    assert sorted(frame.index[puma.removed_]) == sorted(worst)
    with pytest.raises(ValueError, match=r"not in the training table's index: \[5000\]"):
        puma.patch(pd.Index([5000]))
    # A boolean Series is aligned on its index, as pandas aligns it.
    meant = pd.Series(frame.index.isin(worst), index=frame.index)
    puma.patch(meant.sort_index())
    assert sorted(frame.index[puma.removed_]) == sorted(worst)
    with pytest.raises(ValueError, match="boolean Series whose index is not the training"):
        puma.patch(meant.iloc[:-1])
    first = np.zeros(len(y), dtype=bool)
    first[:3] = True
    puma.patch(pd.Index(first).astype("boolean"))  # a mask, not labels
    np.testing.assert_array_equal(puma.removed_, [0, 1, 2])
    with pytest.raises(ValueError, match=r"missing values \(NA\)"):
        puma.patch(pd.Series(first, index=frame.index).astype("boolean").where(first))
    # Fitted on an array, value() labels the rows 0 to n - 1, and a Series aligns on them.
    puma = PumaPatcher().set_output(transform="pandas").fit(X, y)
    low = puma.value() < puma.value().quantile(0.02)
    puma.patch(low.sort_values())
    np.testing.assert_array_equal(puma.removed_, np.flatnonzero(low.to_numpy()))


def test_policies_choose_among_the_rows_that_trained_the_model(breast_cancer):
    """A row of weight zero is not in the fit (its value is rounding, about 0): the
    count and fraction policies never spend their count on one."""
    X, y = breast_cancer
    weight = np.ones(len(y))
    weight[:40] = 0
    for remove in (10, 0.02, "auto"):
        puma = PumaPatcher(remove=remove).fit(X, y, sample_weight=weight)
        assert not np.isin(puma.removed_, np.arange(40)).any(), remove
        if remove != "auto":
            assert len(puma.removed_) == (10 if remove == 10 else round(0.02 * 529))
    # The quarter a policy may take of a class is of its rows that trained the model.
    weight = np.ones(len(y))
    weight[np.flatnonzero(y == 0)[:180]] = 0
    with pytest.warns(PumaWarning, match="class 0: [0-9]+ of 32 marked, 8 removed"):
        puma = PumaPatcher(remove=0.3).fit(X, y, sample_weight=weight)
    assert (y[puma.removed_] == 0).sum() == 8
    # Emptying a class of string labels is refused with the message, not a crash.
    with pytest.raises(ValueError, match=r"class\(es\) \['neg'\]"):
        PumaPatcher().fit(X, np.where(y == 0, "neg", "pos").astype(object),
                          remove=np.flatnonzero(y == 0))


def test_removal_that_empties_a_class(breast_cancer):
    X, y = breast_cancer
    with pytest.raises(ValueError, match=r"leaves no training point of class\(es\) \[0\]"):
        PumaPatcher().fit(X, y, remove=y == 0)


def test_value_and_patch_before_fit(breast_cancer):
    X, y = breast_cancer
    puma = PumaPatcher()
    with pytest.raises(NotFittedError, match="not fitted yet"):
        puma.value()
    with pytest.raises(NotFittedError, match="not fitted yet"):
        puma.patch([0])
    with pytest.raises(NotFittedError, match="not fitted yet"):
        puma.transform(X)


def test_wrong_length_mask(breast_cancer):
    X, y = breast_cancer
    with pytest.raises(ValueError, match=r"one entry per training sample \(569\); got "
                                         r"shape \(568,\)"):
        PumaPatcher().fit(X, y, remove=np.zeros(568, dtype=bool))


def test_other_bad_input(breast_cancer):
    X, y = breast_cancer
    with pytest.raises(ValueError, match="'criterion' parameter of PumaPatcher must be a str among"):
        PumaPatcher(criterion="calibration").fit(X, y)
    with pytest.raises(ValueError, match="'squared_error' applies to regressors only"):
        PumaPatcher(criterion="squared_error").fit(X, y)
    with pytest.raises(ValueError, match="eval_set must be a tuple"):
        PumaPatcher().fit(X, y, eval_set=X)
    with pytest.raises(ValueError, match="labels \\[7\\] that the estimator was not"):
        PumaPatcher().fit(X, y, eval_set=(X[:3], [0, 1, 7]))
    with pytest.raises(ValueError, match="boolean mask or integer indices"):
        PumaPatcher().fit(X, y, remove=[0.5, 1.5])
    puma = PumaPatcher().fit(X, y)
    with pytest.raises(ValueError, match="needs the labels y"):
        puma.value(X[:3])
    with pytest.raises(ValueError, match="X has 3 features, but PumaPatcher is expecting 30"):
        puma.value(X[:3, :3], y[:3])


def test_value_of_new_points_matches_adding_them(breast_cancer):
    """A point outside the training set: its value is minus the change of adding it,
    measured by refitting with the point added."""
    from sklearn.base import clone

    X, y = breast_cancer
    train, new, held = np.arange(150), np.arange(150, 180), np.arange(300, 569)
    est = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000)
    puma = PumaPatcher(est, criterion="log_loss").fit(X[train], y[train],
                                                      eval_set=(X[held], y[held]))
    values = puma.value(X[new], y[new])

    def eval_loss(model):
        proba = model.predict_proba(X[held])
        return -np.mean(np.log(proba[np.arange(len(held)), y[held]]))

    base = eval_loss(puma.estimator_)
    added = [eval_loss(clone(est).fit(X[np.r_[train, i]], y[np.r_[train, i]])) - base
             for i in new]
    r = np.corrcoef(values, -np.asarray(added))[0, 1]
    print(f"new points: correlation with minus the added-point change {r:.4f}")
    assert r >= 0.95


def test_n_jobs_gives_the_same_answers(breast_cancer):
    from sklearn.neural_network import MLPClassifier

    X, y = breast_cancer
    X = np.repeat(X, 20, axis=0)[:9000]  # more rows than one chunk of a sum
    y = np.repeat(y, 20)[:9000]
    for est, params in [(LogisticRegression(), {}),
                        (MLPClassifier((4,), max_iter=30, random_state=0), {"hessian": "cg"})]:
        one = PumaPatcher(est, remove=20, **params).fit(X, y)
        two = PumaPatcher(est, remove=20, n_jobs=2, **params).fit(X, y)
        np.testing.assert_allclose(two.values_, one.values_, rtol=1e-6, atol=1e-14)
        # Chunks summed in another order stop the patch's polish at another point of
        # its 1e-8 relative tolerance: probabilities agree to 1e-12 absolute (those of
        # 1e-14 differ relatively).
        np.testing.assert_allclose(two.predict_proba(X), one.predict_proba(X), rtol=1e-6,
                                   atol=1e-12)


@pytest.mark.parametrize("hessian", ["exact", "cg"])
def test_fitted_patcher_pickles(hessian, breast_cancer):
    import pickle

    X, y = breast_cancer
    puma = PumaPatcher(hessian=hessian).fit(X, y)
    copy_ = pickle.loads(pickle.dumps(puma))
    np.testing.assert_allclose(copy_.transform(X[:5]), puma.transform(X[:5]), rtol=1e-6)
    copy_.patch(np.arange(5))


def test_multilabel_mlp(breast_cancer):
    from sklearn.neural_network import MLPClassifier

    X, y = breast_cancer
    Y = np.column_stack([y, X[:, 0] > 0])
    est = MLPClassifier((4,), max_iter=50, random_state=0)
    puma = PumaPatcher(est, remove=10).fit(X, Y)
    assert len(puma.removed_) == 10
    assert puma.transform(X[:3]).shape == (3, 2)
    with pytest.raises(ValueError, match="'log_loss' needs one label per sample"):
        PumaPatcher(est, criterion="log_loss").fit(X, Y)


def test_balanced_class_weight_cannot_be_patched(breast_cancer):
    X, y = breast_cancer
    puma = PumaPatcher(LogisticRegression(class_weight="balanced")).fit(X, y)
    assert puma.values_.shape == (len(X),)
    with pytest.raises(ValueError, match="class_weight='balanced' is recomputed"):
        puma.patch([0, 1])


def test_loo_predict_proba_of_a_network_is_first_order(breast_cancer):
    from sklearn.neural_network import MLPClassifier

    X, y = breast_cancer
    puma = PumaPatcher(MLPClassifier((4,), max_iter=200, random_state=0)).fit(X, y)
    proba = puma.loo_predict_proba()
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-10)
    # Leaving a point out lowers its own label's probability (or keeps it).
    own = np.searchsorted(puma.classes_, y)
    in_sample = puma.predict_proba(X)[np.arange(len(X)), own]
    assert np.mean(proba[np.arange(len(X)), own] <= in_sample + 1e-12) >= 0.99


def test_nothing_removable_within_delta(breast_cancer):
    from sklearn_puma import PartialRemovalWarning

    X, y = breast_cancer
    remove = np.flatnonzero(y == 0)[:80]
    with pytest.warns(PartialRemovalWarning, match="Nothing could be removed"):
        puma = PumaPatcher(criterion="per_class_loss", alpha=1.0, delta=0.0).fit(
            X, y, remove=remove)
    assert puma.eta_ == 0.0
    np.testing.assert_allclose(puma.criterion_after_, puma.criterion_before_)


def test_values_are_computed_on_first_access_for_the_criterion_at_fit(breast_cancer):
    X, y = breast_cancer
    X = (X - X.mean(0)) / X.std(0)
    assert not hasattr(PumaPatcher(), "values_")  # unfitted: no attribute, no work
    puma = PumaPatcher(criterion="loss").fit(X, y)
    puma.set_params(criterion="brier")  # after fit: values_ keeps the fitted meaning
    loss_values = PumaPatcher(criterion="loss").fit(X, y).values_
    np.testing.assert_array_equal(puma.values_, loss_values)
    assert puma.values_ is puma.values_  # computed once, then kept


def test_verbose_shows_a_progress_bar_over_long_passes(capsys, monkeypatch):
    """Passes of PROGRESS_MIN_ROWS rows or more draw a tqdm bar under verbose (on
    stderr), counting every row; without verbose nothing is drawn."""
    import sklearn_puma._threads as threads

    monkeypatch.setattr(threads, "PROGRESS_MIN_ROWS", 2000)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12000, 5))
    y = (X[:, 0] + rng.normal(size=12000) > 0).astype(int)
    PumaPatcher(LogisticRegression(), n_jobs=1).fit(X, y).values_
    assert "rows" not in capsys.readouterr().err
    PumaPatcher(LogisticRegression(), n_jobs=1, verbose=1).fit(X, y).values_
    err = capsys.readouterr().err
    assert "sklearn-puma" in err and "/12000" in err and "rows" in err


def test_warnings_point_at_the_user_s_line(breast_cancer):
    """Warnings reached through the method wrappers (threads, scikit-learn's fit
    context) were attributed to ``_threads.py`` or ``_patcher.py``, so a user could
    neither see which line raised them nor filter them by module."""
    X, y = breast_cancer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        puma = PumaPatcher(LogisticRegression(C=1e4, tol=1e-1)).fit(X, y)  # far
        puma.values_
        puma.patch(np.flatnonzero(y == 0)[:200])  # most of a class: capped, warned
        puma.value()
        make_pipeline(StandardScaler(), PumaPatcher(LogisticRegression(C=1e4, tol=1e-1))
                      ).fit(X, y)  # through a Pipeline
    ours = [w for w in caught if issubclass(w.category, PumaWarning)]
    assert ours
    assert all(w.filename == __file__ for w in ours), {(w.filename, w.lineno) for w in ours}


@pytest.mark.parametrize("labels, match", [
    (lambda y: (y == "yes").astype(int), r"labels of types \['int'\].*cannot be the estimator's "
                                         r"classes \['no', 'yes'\]"),
    (lambda y: np.where(y == "yes", "maybe", y), r"labels \['maybe'\] that the estimator "
                                                r"was not trained on"),
    (lambda y: np.where(y == "yes", 1, y).astype(object),
     r"labels of types \['int', 'str'\].*cannot be the estimator's classes"),
])
def test_eval_set_labels_that_are_not_the_classes_are_named(labels, match, breast_cancer):
    """0/1 evaluation labels beside 'no'/'yes' training ones stopped on numpy's "'<' not
    supported between instances of 'str' and 'int'", naming neither eval_set nor the
    classes."""
    X, y = breast_cancer
    y = np.where(y == 1, "yes", "no").astype(object)  # as pandas' strings are
    with pytest.raises(ValueError, match=match):
        PumaPatcher(LogisticRegression()).fit(X, y, eval_set=(X[:50], labels(y[:50])))


def test_values_asked_during_a_patch_in_another_thread_wait_for_it(breast_cancer,
                                                                    monkeypatch):
    """A patch changes the objective the fitted model is read on while it runs
    (``Problem.tilted_for``, on a fit far from its optimum: its tilt and cached
    objective), so any other method of the same fitted patcher run from another
    thread meanwhile (another patch, values, self-influence) could read that state
    half-made.  They ran at once; now one waits for the other, and gets what it gets
    after it."""
    import threading

    from sklearn_puma import _influence

    X, y = breast_cancer
    inside, release = threading.Event(), threading.Event()
    real = _influence._patch

    def held(*args, **kwargs):
        inside.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(_influence, "_patch", held)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PumaWarning)
        puma = PumaPatcher(LogisticRegression(C=1e4, tol=1e-1)).fit(X, y)  # far: tilted
        patching = threading.Thread(target=puma.patch, args=(np.arange(20),))
        patching.start()
        assert inside.wait(30)
        got = []
        valuing = threading.Thread(target=lambda: got.append(puma.value()))
        valuing.start()
        valuing.join(1.0)
        waited = valuing.is_alive() and not got
        release.set()
        patching.join(60)
        valuing.join(60)
        assert waited, "value() ran while the patch was under way"
        np.testing.assert_allclose(got[0], puma.value(), rtol=1e-12)


@pytest.mark.parametrize("missing", ["text NaN", "categorical NaN", "object None"])
def test_group_labels_with_a_missing_value_are_named(missing, breast_cancer):
    """Groups from a text or categorical column holding NaN (or None) stopped deep in
    numpy ("'<' not supported between instances of 'str' and 'float'"); only float
    groups were checked."""
    X, y = breast_cancer
    labels = np.where(np.arange(len(y)) % 2, "a", "b").astype(object)
    labels[[3, 7]] = None if missing == "object None" else np.nan
    groups = {"text NaN": pd.Series(labels).astype("str").where(pd.notna(labels)),
              "categorical NaN": pd.Series(labels, dtype="category"),
              "object None": labels}[missing]
    with pytest.raises(ValueError, match=r"groups has no group label .* at 2 row\(s\) "
                                         r"\[3, 7\]"):
        PumaPatcher(LogisticRegression(), criterion="demographic_parity").fit(
            X, y, groups=groups)


def test_sample_weight_as_a_pandas_series_raises_no_torch_warning(breast_cancer):
    """pandas' copy-on-write hands out read-only arrays: a Series of weights made torch
    warn "The given NumPy array is not writable", which LogisticRegression alone does
    not."""
    X, y = breast_cancer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PumaPatcher(LogisticRegression(max_iter=1000)).fit(
            X, y, sample_weight=pd.Series(np.linspace(0.5, 1.5, len(y))))


@pytest.mark.parametrize("estimator", [Ridge(), LinearRegression()])
def test_removing_every_row_of_a_regressor_is_refused(estimator, breast_cancer):
    """A regressor's patch of every row had reported eta_=1 and a complete removal,
    with the fitted coefficients kept (LinearRegression) or the intercept
    (Ridge), which a refit on sample_weight_ (all zero) cannot check: classifiers
    already refused it."""
    X, _ = breast_cancer
    y = X[:, 0] + X[:, 1]
    puma = PumaPatcher(estimator).fit(X[:, 2:], y)
    with pytest.raises(ValueError, match="leaves no training point of positive weight"):
        puma.patch(np.ones(len(y), dtype=bool))
