"""PumaPatcher: the scikit-learn face of PUMA (validation, delegation, set_output)."""

import copy
import warnings
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
from sklearn.base import (
    BaseEstimator,
    MetaEstimatorMixin,
    TransformerMixin,
    _fit_context,
    clone,
    is_classifier,
)
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, r2_score
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state, get_tags
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import (
    _check_sample_weight,
    _check_y,
    check_array,
    check_consistent_length,
    check_is_fitted,
    validate_data,
)

from ._adapters import (
    _unsupported,
    check_supported,
    estimator_io,
    is_skorch,
    make_adapter,
)
from ._criteria import CRITERION_NAMES, BoundCriterion, plain_label, resolve_criteria
from ._influence import (
    _NET_OUTPUT_RTOL,
    _SECOND_PATH_AGREEMENT,
    Problem,
    _np,
    compute_values,
    label_free_values,
    loo_log_proba,
    patch,
    self_influence,
)
from ._rows import row_mask
from ._threads import claim_cores, on_fitted_model, using_n_jobs
from ._warnings import PartialRemovalWarning, PumaWarning, user_stacklevel

# The largest share of any class (or group) a remove= policy takes; more is cut back
# to the lowest-valued, with a warning.
MAX_POLICY_SHARE = 0.25

_CLASSIFIER_METHODS = ("predict_proba", "predict_log_proba", "decision_function",
                       "loo_predict_proba")


_NON_FINITE_VALUES = (
    "the criteria or the model's outputs are not finite there (features so large "
    "that the outputs overflow, or a criterion returning NaN), or the curvature solve "
    "failed; scale the features, check the criterion, or set damping")
_NON_FINITE_OUTPUTS = (
    "the model's outputs overflow on those rows; scale the features")


# A patch whose last Newton decrement is above this share of its first (squared: a
# tenth of the way left) has not removed the marked points, whatever eta_ says.
_UNCONVERGED = 0.1


def _check_finite(array, what, cause):
    """``array`` (numpy or torch) if every entry is finite, else a FloatingPointError
    saying how many are not, where, and the likely ``cause``: a number the library
    returns is never NaN or infinite silently."""
    finite = np.isfinite(_np(array) if isinstance(array, torch.Tensor) else array)
    if finite.all():
        return array
    rows = np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1)) \
        if finite.ndim else np.array([0])
    raise FloatingPointError(
        f"{int((~finite).sum())} of the {finite.size} {what} are not finite (rows "
        f"{rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}): {cause}.")


def _unfrozen(estimator):
    return estimator.estimator if isinstance(estimator, FrozenEstimator) else estimator


def _final_step(estimator):
    """The model PUMA differentiates: the last step of a (possibly frozen) Pipeline,
    else the (possibly frozen) estimator itself."""
    inner = _unfrozen(estimator)
    if not isinstance(inner, Pipeline):
        return estimator
    final = inner.steps[-1][1]
    if final is None or final == "passthrough":
        raise _unsupported(inner, "its last step is 'passthrough'; PumaPatcher needs "
                                  "the model as the Pipeline's last step")
    return final


def _estimator_has(attr):
    def check(self):
        est = getattr(self, "estimator_", None)
        if est is None:
            est = self._get_estimator()
            est = est.estimator if isinstance(est, FrozenEstimator) else est
        if attr in _CLASSIFIER_METHODS and not is_classifier(est):
            # skorch's regressor inherits predict_proba from NeuralNet; a regressor
            # has no class probabilities to delegate.
            return False
        return hasattr(est, attr)

    return check


def _unfinished_fit(share, tolerance):
    """Where a network's fitted model is itself further from its optimum than the
    patch's tolerance (``share``: its own gradient over the removal's at the fitted
    model, as the patch measured them), the advice that says so: the polish
    then has to finish the fit's convergence too, part of what held it back
    (measured: the 50,000-row MLP of benchmarks/bench_networks.py, its own gradient
    0.01 of a random 1% removal's after scipy's 3,000-iteration drive, its polish
    stopped on the iteration bound at 0.0065; driven to a gradient of 9e-9 first, at
    0.0015, the rest being the objective's conditioning); else an empty string."""
    if not share > tolerance:
        return ""
    return (f"The fitted model itself is not at its optimum to the polish's tolerance "
            f"({tolerance:g}): its own gradient is {share:.2g} times the removal's "
            "there, so the patch had to finish the fit's convergence too; "
            "train it further (more iterations, a tighter tol) before patching. ")


class PumaPatcher(TransformerMixin, MetaEstimatorMixin, BaseEstimator):
    """Value training points against a performance criterion and patch them out.

    PUMA (Performance Unchanged Model Augmentation) measures how much each training
    point helps or hurts any differentiable criterion (``value``), and removes the
    influence of marked points from the fitted model without retraining, up-weighting
    the other points so that every criterion worsens by at most ``delta`` (``patch``).

    Parameters
    ----------
    estimator : estimator, default=None
        A differentiable scikit-learn model (LogisticRegression, LinearRegression,
        Ridge, SGDClassifier(loss="log_loss"), SGDRegressor, MLPClassifier,
        MLPRegressor) or a skorch NeuralNetClassifier, NeuralNetBinaryClassifier or
        NeuralNetRegressor around any torch module, or a Pipeline ending in one of
        them (its preprocessing is kept, the last step valued and patched). ``None``
        means ``LogisticRegression()``. Wrap a model or Pipeline fitted elsewhere in
        :class:`~sklearn.frozen.FrozenEstimator` to patch it without refitting.
    criterion : str, callable or list of them, default="loss"
        The performance criteria values and patches are measured against, lower is
        better: ``"loss"`` (the model's own loss), ``"log_loss"``, ``"brier"``,
        ``"ece"`` (smooth expected calibration error), ``"accuracy"`` (smooth error
        rate), ``"squared_error"``, ``"per_class_loss"`` (one row per class),
        ``"demographic_parity"`` and ``"equalized_odds"`` (two rows; both need
        ``groups`` in ``fit``), a torch callable ``f(output, y)`` (class probabilities
        or predictions of the evaluation points; scalar or 1-D result), or a list of
        them. Formulas and units: :data:`sklearn_puma.CRITERION_NAMES` and the user
        guide.
    remove : None, int, float, "auto", "label_errors" or callable, default=None
        Which points ``fit`` patches out: ``None`` (none), an int count or a float
        fraction of the lowest-valued points, ``"auto"`` (points whose value is negative
        and below the lower Tukey fence ``Q1 - 1.5 IQR`` of all values),
        ``"label_errors"`` (classifiers: the points whose label is probably wrong, as
        :func:`~sklearn_puma.rank_label_errors` finds them; see below), or a callable
        ``values -> mask or indices``. The count, fraction, ``"auto"`` and
        ``"label_errors"`` policies take at most a quarter of any class (and of any
        group given to ``fit``): beyond that, only the lowest-ranked quarter is removed,
        with a warning. A ``remove`` passed to ``fit`` (a mask or indices) overrides the
        policy and is not capped.

        Values measure harm to the criterion, which is not the same as a wrong label:
        measured on the training rows themselves (no ``eval_set``), a mislabelled
        point's own loss, which would rise without it, makes it look helpful (10% of
        the labels flipped on nine tables, ``benchmarks/bench_mislabel.py``: the 20%
        lowest values held 0.00-0.65 of the flipped rows, where the leave-one-out
        probability of the given label held 0.57-1.00). To remove mislabelled points,
        use ``"label_errors"``: the points confident learning (Northcutt et al. 2021)
        flags on their leave-one-out probabilities, those another class claims
        confidently and that the model left without them would not predict as
        labelled; or measure the criterion on trusted held-out data (``eval_set``),
        against which harmful points are mostly the mislabelled ones.
    delta : float, default=0.05
        The largest allowed worsening of any criterion row (absolute, in the
        criterion's units), measured after the patch. Measured rounds of compensation
        try to hold it within ``max_weight`` (a penalised solve: a lower ``alpha``
        spends more weight); where they end above it the step is shortened
        (``eta_ < 1``, with a warning giving the best worsening reached).
    alpha : float in [0, 1], default=0.01
        Sparsity of the compensation weights, as a fraction of the smallest penalty that
        gives no compensation: ``1`` is plain influence removal, ``0`` least squares.
    solver : "lasso" or regressor, default="lasso"
        ``"lasso"`` solves the bounded Lasso problem exactly; any scikit-learn linear
        regressor with ``coef_`` (Lasso, ElasticNet, LassoLars, ...) is accepted, its
        ``alpha`` set from ``alpha`` and its weights clipped to ``[0, max_weight]``.
    max_weight : float, default=3.0
        Upper bound on each compensation weight ``lambda_j`` (a point's weight becomes at
        most ``1 + max_weight`` times its own). Replacing a removed share ``r`` of a
        class by its remaining members takes ``r / (1 - r)`` (1.5 for 60%); the default
        admits shares up to 75%. Where the compensation ends above ``delta`` the
        removal is partial, and the warning counts the points at the bound.
    upweight : None, float, array-like or callable, default=None
        The points that may be up-weighted: ``None`` for every kept point, a float in
        (0, 1) for that fraction of the kept points with the highest values (summed
        over criterion rows), a mask or indices, or a callable
        ``values -> mask or indices``.
    hessian : {"auto", "exact", "dual", "cg", "lissa", "lowrank", "ekfac"}, \
            default="auto"
        Inverse-curvature solver: "exact" builds the Hessian and inverts it in the
        basis where each parameter has unit curvature (so features on very different
        scales, or a penalty that swamps the intercept, lose nothing): by Cholesky when
        certified well-conditioned, a softmax's flat directions set aside, else by an
        eigen-decomposition, pseudo-inverting flat directions
        (``IllConditionedWarning`` with the condition number where a direction the
        data do determine is too small to invert); "dual" inverts it
        exactly through the n x n kernel of the rows (a linear model with one output
        and more parameters than rows, e.g. sparse text: leave-one-out values with
        their leverage correction); "cg" (conjugate gradients), "lissa" (Neumann
        series) and "lowrank" (top eigenpairs by Lanczos, the rest damped) use
        Hessian-vector products only; CG and LiSSA stop at their iteration bound or
        after 300 s (``_curvature.MAX_SOLVE_SECONDS``), with a ``SolverWarning``
        giving the residual. "ekfac" (networks of dense layers: MLPClassifier,
        MLPRegressor, skorch nets whose trainable parameters are all in
        ``torch.nn.Linear`` layers with elementwise activations between them;
        ``parameters="all"``) inverts the eigenvalue-corrected Kronecker-factored
        approximation of the Gauss-Newton curvature (George et al. 2018), one block
        per layer, built in two passes over the data, and uses it to precondition
        conjugate gradients on the exact Gauss-Newton products (whatever
        ``curvature`` says) to a relative residual of 1e-3 (and EK-FAC's norm of the
        residual fallen by 1e-4): no p x p matrix, so it
        reaches nets far past the explicit Hessian, at one pass over the data per
        iteration (EK-FAC alone had cosines of 0.16-0.87 with the exact solve on
        the tests' nets, the refined solves 0.95-1.00, 0.97-0.99 on a digits MLP
        fitting its data almost exactly; solves of one
        right-hand side per training row, self-influence and label errors, take
        EK-FAC alone); a ``SolverWarning`` gives the residual where the iterations
        stop short (an unpenalised net's singular curvature: pass a damping); other
        models raise a ``ValueError``.
        "auto" is "exact" up to 3000 parameters, else "dual"
        where it applies (at most 5000 rows), else "cg" (``hessian_`` says which).
    damping : "auto" or float, default="auto"
        Added to the curvature's diagonal. "auto" adds nothing to a positive
        semi-definite curvature and shifts an indefinite one by twice its (estimated)
        most negative eigenvalue, with a warning giving that figure.
    curvature : {"hessian", "gauss_newton"}, default="hessian"
        The curvature inverted: the Hessian of the training objective, or its
        Gauss-Newton part (positive semi-definite for any net with a convex loss).
    parameters : {"all", "last_layer"}, default="all"
        The parameters the patch may change. "last_layer" freezes every layer of a
        network but the last, which then is a linear model on the last hidden features:
        values get the exact leave-one-out correction and the curvature is small, so
        large nets patch fast. Linear models have one layer.
    n_steps : int or "auto", default="auto"
        Newton steps of the patch, each re-linearising values and weights before the
        last. For a model linear in its parameters the last set of weights is then
        converged on until the reweighted objective's gradient is negligible (chord
        steps on the fitted Hessian, updated over the changed rows, where it is
        explicit), so the patch is the refit on ``sample_weight_`` at a fraction of
        its cost; a warning gives the figure if that is not reached. A network's
        patch re-solves the weights in its first ``n_steps - 1`` Newton steps (five
        at most), then converges on the last weights by L-BFGS on the reweighted
        objective (see Notes), stopping once converged, after 2,000 iterations or at
        600 s (``_influence.MAX_PATCH_SECONDS``); a polish stopped on a bound gives a
        ``SolverWarning`` and a ``PartialRemovalWarning`` with the figure. "auto" is
        1 (the weights are solved once at the fitted model; where the converged
        patch, measured, still worsens a criterion, the measured rounds correct them,
        so a re-linearised prediction would only cost passes over the data).
    value_method : {"auto", "loo", "first_order"}, default="auto"
        "loo": leverage-corrected leave-one-out values with the criterion's curvature;
        "first_order": the seed's influence values; "auto": "loo" where it is exact
        (models linear in their parameters), else "first_order".

        A network's values on every parameter are first-order (``"loo"`` raises): they
        rank warm leave-one-out refits of a converged net well where its penalty keeps
        each refit near the fitted minimum (Spearman 0.84-0.99 with ``alpha=1`` on
        three real tables, a 16-unit ``MLPClassifier``), loosely under weak penalties
        (0.24-0.72 with ``alpha`` 1e-2 and 1e-4, where removing one row moves the net
        out of the fitted minimum's quadratic neighbourhood, up to 40 times farther
        than its first-order step), with no warning: the fit is converged and its
        Hessian positive definite there. With
        ``parameters="last_layer"`` they are the exact leave-one-out values of the last
        layer refitted alone. See ``benchmarks/bench_network_values.py`` and the user
        guide's section on networks.
    random_state : int, RandomState instance or None, default=None
        Seeds the estimator when its own ``random_state`` is None (SGD models) and a
        compensation solver that takes one.
    n_jobs : int, default=None
        Worker threads for the chunked passes over samples.  None: joblib's configured
        ``n_jobs`` if one is set (``joblib.parallel_config``), else one per available
        CPU for the closed-form passes of linear models (whose BLAS and torch kernels
        are then held to one thread each, so that no two thread pools compete) and one
        for autograd passes; -1: every CPU.  Under an external joblib backend
        (``joblib.parallel_config("dask")``) the passes run on its workers.
    verbose : int, default=0
        Print progress when positive: a line per stage, and a progress bar (tqdm) over
        each pass of 200,000 rows or more. In a Jupyter notebook the bars show
        whatever ``verbose`` is.

    Attributes
    ----------
    estimator_ : estimator
        The patched model, of the same class as ``estimator`` (for a Pipeline: a
        Pipeline with the same fitted preprocessing and the patched last step).
    values_ : ndarray of shape (n_samples,) or (n_samples, n_rows)
        Training values: the predicted change of each criterion row if the point were
        left out. Positive = helpful, negative = harmful. Computed on first access,
        for the criterion as it was at fit, and kept.
    removed_ : ndarray of int
        Indices of the removed training points.
    lambda_ : ndarray of shape (n_samples,)
        Compensation weights (zero outside the up-weight set).
    sample_weight_ : ndarray of shape (n_samples,)
        Per-point weights the patched model is optimal for: with ``eta_ == 1``,
        retraining with them (to a tight tolerance, from a fitted model that was at an
        optimum) reproduces the patch, and they are 0 on removed points. With
        ``eta_ < 1`` they are the first-order interpolation ``s + eta_ (w - s)`` between
        the original and the full patch's weights, which a retrain matches only roughly
        (on a network, whose optimum moves along a curve, it can end far from the
        patch: the warning says so).
    eta_ : float
        Fraction of the patch step taken; below 1 the removal is partial.
    removal_residual_ : float
        How far from the model optimal for its final weights the full patch (before
        any shortening by ``eta_``) stopped, measured where it ended. A model linear
        in its parameters: the square root of the reweighted objective's Newton
        decrement there over the patch's first (0: converged; about 1e-8; 1: no closer
        than it started); above 0.1 with ``eta_=1`` a ``PartialRemovalWarning`` gives
        the figure. A network: the larger of the reweighted gradient's norm over the
        removal's gradient at the fitted model (the reweighted one less the fit's
        own, which a trainer stopped short of an optimum leaves) and the share of
        the removed rows' move (mean change of their predicted probabilities or
        outputs) that a further quasi-Newton step still predicts; its polish
        converges at 1e-4 (1e-5 on a near-exact fit) and 1e-2 of those, and a
        patch that did not gives a
        ``PartialRemovalWarning`` with the figure. (With ``eta_ < 1`` the
        shortening's own warning says the removal is partial.)
    hessian_ : str
        The curvature solver used ("auto" resolved).
    damping_ : float
        The damping used ("auto" resolved).
    optimality_gap_ : float
        The training objective's gradient at the fitted model relative to a typical
        per-sample gradient: near zero at an optimum, which influence assumes (a
        warning above 1e-2). A model linear in its parameters (with an explicit
        curvature) is also measured by a Newton step to its optimum, in typical
        influence steps: past 5 it is warned about with that figure and patched on
        the tilted objective (see ``patch``); short of it, values that one Newton
        step would change by more than 30% are warned about.
    criterion_before_, criterion_after_ : ndarray of shape (n_rows,)
        Criteria measured before and after the patch.
    criterion_names_ : list of str
        Names of the criterion rows.
    classes_ : ndarray
        Class labels (classifiers).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Defined when X has feature names that are all strings.

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_puma import PumaPatcher
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> puma = PumaPatcher(remove=0.05).fit(scale(X), y)
    >>> puma.values_.shape, len(puma.removed_), puma.eta_
    ((569,), 28, 1.0)
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit"]), None],
        "criterion": [StrOptions(set(CRITERION_NAMES)), callable, list, tuple],
        "remove": [
            None,
            Interval(Integral, 0, None, closed="left"),
            Interval(Real, 0, 1, closed="neither"),
            StrOptions({"auto", "label_errors"}),
            callable,
        ],
        "delta": [Interval(Real, 0, None, closed="both")],
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "solver": [StrOptions({"lasso"}), HasMethods(["fit"])],
        "max_weight": [Interval(Real, 0, None, closed="neither")],
        "upweight": [None, Interval(Real, 0, 1, closed="neither"), "array-like", callable],
        "hessian": [StrOptions({"auto", "exact", "dual", "cg", "lissa", "lowrank",
                                 "ekfac"})],
        "curvature": [StrOptions({"hessian", "gauss_newton"})],
        "parameters": [StrOptions({"all", "last_layer"})],
        "damping": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "n_steps": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "value_method": [StrOptions({"auto", "loo", "first_order"})],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        estimator=None,
        *,
        criterion="loss",
        remove=None,
        delta=0.05,
        alpha=0.01,
        solver="lasso",
        max_weight=3.0,
        upweight=None,
        hessian="auto",
        damping="auto",
        curvature="hessian",
        parameters="all",
        n_steps="auto",
        value_method="auto",
        random_state=None,
        n_jobs=None,
        verbose=0,
    ):
        self.estimator = estimator
        self.criterion = criterion
        self.remove = remove
        self.delta = delta
        self.alpha = alpha
        self.solver = solver
        self.max_weight = max_weight
        self.upweight = upweight
        self.hessian = hessian
        self.damping = damping
        self.curvature = curvature
        self.parameters = parameters
        self.n_steps = n_steps
        self.value_method = value_method
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose

    def _get_estimator(self):
        return LogisticRegression() if self.estimator is None else self.estimator

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self._get_estimator())
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        tags.target_tags = inner.target_tags
        # Sparse X where the wrapped model takes it (its products then stay sparse).
        tags.input_tags.sparse = inner.input_tags.sparse
        if isinstance(_unfrozen(self._get_estimator()), Pipeline):
            # Raw X goes to the Pipeline's preprocessing, which says what it takes
            # (text columns, missing values).
            tags.input_tags.allow_nan = inner.input_tags.allow_nan
            tags.input_tags.string = inner.input_tags.string
        else:
            tags.input_tags.allow_nan = False
        return tags

    def _check_X(self, X, **kwargs):
        return validate_data(self, X, accept_sparse=self._sparse_formats(), **kwargs)

    def _sparse_formats(self):
        # CSR is what the row chunks read; other formats are converted to it.
        model = _unfrozen(_final_step(self._get_estimator()))
        return "csr" if get_tags(model).input_tags.sparse else False

    def _model_X(self, X, *, reset=False):
        """X as the differentiated model sees it, float64: through the fitted
        preprocessing of a wrapped Pipeline (raw X is checked for its width and
        column names only, and is never forced to float before it), else validated."""
        if getattr(self, "_preprocess", None) is None:
            return self._check_X(X, reset=reset, dtype=np.float64)
        validate_data(self, X, reset=reset, skip_check_array=True)
        return self._transformed(self._preprocess.transform(X))

    def _transformed(self, X_model):
        return check_array(X_model, dtype=np.float64, accept_sparse=self._sparse_formats(),
                           input_name="X after the Pipeline's preprocessing")

    def _delegate_X(self, X):
        """X for the patched estimator's own predict*: raw for a wrapped Pipeline
        (``estimator_`` is that Pipeline, preprocessing included)."""
        if getattr(self, "_preprocess", None) is not None:
            validate_data(self, X, reset=False, skip_check_array=True)
            return X
        return self._io.X(X, self._check_X(X, reset=False))

    # ------------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=False)
    @using_n_jobs
    def fit(self, X, y, *, remove=None, eval_set=None, sample_weight=None, groups=None):
        """Fit the estimator (unless frozen), value every training point, and patch.

        When ``estimator`` is a Pipeline (or a frozen one) ending in a supported model,
        its preprocessing (every step but the last) is fitted on X here, or kept as
        fitted when frozen, and the last step is valued and patched on the transformed
        X; ``estimator_`` is then a Pipeline of that preprocessing and the patched
        model, and every method taking X takes it raw. ``sample_weight`` weighs the
        last step only (the preprocessing is fitted unweighted).

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Training targets: class labels or regression targets.
        remove : array-like of bool (mask) or int (indices), default=None
            Points to patch out; overrides the ``remove`` policy. A boolean mask is
            sample-aligned, so cross-validation splits it like ``sample_weight``;
            indices are positions in this ``X``, which cross-validation passes
            unchanged to every fold, where they name other rows: use a mask there. A
            pandas Index holds row labels of ``X``'s index.
        eval_set : tuple (X_eval, y_eval) or (X_eval, y_eval, groups_eval), default=None
            Data the criteria are measured on; by default the training data (for a patch:
            the kept training points). X_eval is raw data, like X: when ``estimator``
            is a Pipeline, it goes through the same fitted preprocessing as X. As the
            last step of a user's Pipeline, PumaPatcher sees only the preprocessed X
            and a Pipeline does not transform ``eval_set`` (its ``transform_input``
            would transform y_eval too): wrap the whole Pipeline in PumaPatcher
            instead, or pass X_eval already transformed by the fitted preprocessing; a
            raw X_eval there is refused with a message saying so.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the training points, passed to the estimator's fit
            and weighing each point's loss in the values and the patch.
        groups : array-like of shape (n_samples,), default=None
            The sensitive group of each training point, for the fairness criteria
            ("demographic_parity", "equalized_odds") and callables taking ``groups``.
            Sample-aligned: in a Pipeline, request it with
            ``PumaPatcher(...).set_fit_request(groups=True)`` under
            ``sklearn.set_config(enable_metadata_routing=True)``.

        Returns
        -------
        self : PumaPatcher
            The fitted (and, if anything was removed, patched) meta-estimator.
        """
        resolve_criteria(self.criterion)
        self._solver()  # an unusable solver is refused now, not at the first patch
        est = self._get_estimator()
        if isinstance(_unfrozen(est), Pipeline):
            # Raw X (text columns, missing values) is the preprocessing's to read: only
            # its width and column names are recorded here.
            validate_data(self, X, skip_check_array=True)
            y_checked = _check_y(y, multi_output=True, y_numeric=False)
            check_consistent_length(X, y_checked)
            self._preprocess, est, X_model = self._fit_preprocessing(est, X, y)
            X_checked = self._transformed(X_model)
        else:
            self._pipeline = self._preprocess = None
            X_checked, y_checked = validate_data(
                self, X, y, multi_output=True, dtype=np.float64, y_numeric=False,
                accept_sparse=self._sparse_formats(),
            )
            X_model = X
        # The input's row labels, for value() under set_output(transform="pandas").
        self._train_index = X.index if hasattr(X, "columns") and hasattr(X, "index") \
            else None
        n = X_checked.shape[0]
        if sample_weight is not None:
            # A negative weight turns a loss into a reward: the objective is no longer
            # bounded below, and neither values nor patches mean anything.
            sample_weight = _check_sample_weight(sample_weight, X_checked, dtype=np.float64,
                                                 ensure_non_negative=True)
        removal_spec = self._check_fit_removal(remove, n)
        self._groups = None if groups is None else self._check_groups(groups, n, "groups")
        fitted = self._fit_estimator(est, X_model, y, sample_weight, X_checked.shape[1])
        adapter = make_adapter(fitted, self.parameters, n_features=X_checked.shape[1])
        claim_cores(adapter)
        self._base_sample_weight = (
            np.ones(n) if sample_weight is None else np.asarray(sample_weight, float)
        )
        y_model = self._io.encode_y(y_checked)
        self._problem = Problem(
            adapter,
            adapter.encode_X(X_checked),
            adapter.encode_y(y_model),
            adapter.training_weights(y_model, sample_weight),
            hessian=self.hessian,
            damping=self.damping,
            gauss_newton=self.curvature == "gauss_newton",
            random_state=self.random_state,
            n_jobs=self.n_jobs,
        )
        self.hessian_ = self._problem.hessian_kind
        self.damping_ = self._problem.inverse_hat.damping
        self.optimality_gap_ = self._problem.optimality_gap
        self._eval = None if eval_set is None else self._check_eval_set(eval_set)
        self._base_estimator = self._wrap(fitted)
        if adapter.is_classifier:
            self.classes_ = adapter.classes if self._io.classes is None else self._io.classes
        elif hasattr(self, "classes_"):
            del self.classes_  # left by an earlier fit as a classifier
        self._log(f"fitted {type(fitted).__name__}; {adapter.n_params} parameters; "
                  f"curvature solver {self.hessian_!r}, damping {self.damping_:.3g}")

        criterion = self._bind_criterion(keep=np.ones(n, dtype=bool))
        self.criterion_names_ = criterion.names
        at_fit = _np(criterion(self._problem.theta_hat))
        if not np.all(np.isfinite(at_fit)):
            bad = [name for name, c in zip(criterion.names, at_fit) if not np.isfinite(c)]
            raise FloatingPointError(
                f"criterion row(s) {bad} are not finite at the fitted model "
                f"({at_fit.tolist()}): values and patches need finite criteria. A "
                "log of a zero probability, a division by an empty group, or outputs "
                "overflowing on unscaled features give this.")
        # Valued on first access (a detector reading only leave-one-out probabilities,
        # or an explicit removal, never pays for it), against the criterion bound now:
        # a later set_params cannot change what values_ means.
        self._training_values = None
        self._values_of = (criterion, self._value_method(adapter))

        mask = self._removal_mask(self.remove if removal_spec is None else removal_spec)
        if mask.any():
            self._patch(mask, self.upweight)
        else:
            self._no_patch(criterion, before=at_fit)
        return self

    def _fit_preprocessing(self, est, X, y):
        """``(preprocessing, final model, X transformed)`` of a wrapped Pipeline.

        Frozen: a deep copy of the fitted Pipeline, its preprocessing only applied to X
        (never refitted) and its last step frozen in turn. Otherwise a clone, whose
        preprocessing is fitted on X, y here (without sample weights) and whose last
        step is fitted like any wrapped model.
        """
        frozen = isinstance(est, FrozenEstimator)
        pipeline = copy.deepcopy(est.estimator) if frozen else clone(est)
        final = _final_step(pipeline)
        check_supported(_unfrozen(final))
        preprocess = pipeline[:-1]
        if frozen:
            check_is_fitted(pipeline)
            X_model = preprocess.transform(X)
            final = FrozenEstimator(_unfrozen(final))
        else:
            X_model = preprocess.fit_transform(X, y)
        self._pipeline = pipeline
        return preprocess, final, X_model

    def _wrap(self, model):
        """``estimator_`` for a fitted (or patched) model: for a wrapped Pipeline, a
        Pipeline of the same class and parameters with the fitted preprocessing and
        ``model`` as its last step; else ``model`` itself."""
        if self._preprocess is None:
            return model
        pipeline = copy.copy(self._pipeline)
        pipeline.steps = [*self._preprocess.steps, (self._pipeline.steps[-1][0], model)]
        return pipeline

    def _fit_estimator(self, est, X, y, sample_weight, n_features):
        if isinstance(est, FrozenEstimator):
            fitted = copy.deepcopy(est.estimator)
            check_supported(fitted)
            check_is_fitted(fitted)
            n_in = getattr(fitted, "n_features_in_", n_features)
            if n_in != n_features:
                raise ValueError(
                    f"X has {n_features} features, but the frozen "
                    f"{type(fitted).__name__} was trained on {n_in}: pass the data it "
                    "was trained on."
                )
            self._io = estimator_io(fitted)
            # Not fitted here, but the I/O still learns the target's shape and, for a
            # skorch net, its dtype and labels.
            self._io.fit_args(X, y, fitted=fitted)
            return fitted
        check_supported(est)
        est = clone(est)
        self._io = estimator_io(est)
        if self.random_state is not None and est.get_params().get("random_state", 0) is None:
            # An unseeded stochastic estimator (SGD*) takes our seed, so that a seeded
            # PumaPatcher is reproducible end to end.
            est.set_params(random_state=self.random_state)
        if self.random_state is not None and is_skorch(est):
            # A skorch net draws its initial weights from torch's global generator: seed
            # it for this fit only, leaving the user's generator state as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(check_random_state(self.random_state).randint(2**31))
                return self._io.fit(est, *self._io.fit_args(X, y), sample_weight)
        return self._io.fit(est, *self._io.fit_args(X, y), sample_weight)

    def _check_groups(self, groups, n, what):
        groups = np.asarray(groups)
        if groups.ndim != 1 or len(groups) != n:
            raise ValueError(
                f"{what} must hold one group label per row ({n}); got shape "
                f"{groups.shape}."
            )
        # Any dtype: a text or categorical column's missing labels (NaN, None) had
        # stopped deep in numpy, comparing 'str' with 'float'.
        bad = np.asarray(pd.isna(groups), dtype=bool)
        if groups.dtype.kind == "f":
            bad |= ~np.isfinite(groups)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(
                f"{what} has no group label (NaN, None or infinity) at {len(rows)} row(s) "
                f"{rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}; every row needs "
                "one. Fill them (for example with a group of their own) or drop those "
                "rows.")
        return groups

    def _check_eval_set(self, eval_set):
        if not (isinstance(eval_set, (tuple, list)) and len(eval_set) in (2, 3)):
            raise ValueError(
                "eval_set must be a tuple (X_eval, y_eval) or (X_eval, y_eval, "
                f"groups_eval); got {type(eval_set).__name__}"
                + (f" of length {len(eval_set)}." if isinstance(eval_set, (tuple, list))
                   else ".")
            )
        X_eval, y_eval = eval_set[:2]
        try:
            X_eval = self._model_X(X_eval)
        except ValueError as err:
            # Columns that are not the model's (names, count, text): most likely raw
            # data given to PumaPatcher as a Pipeline's last step.
            if self._preprocess is not None or not any(
                    clue in str(err) for clue in ("feature", "convert string")):
                raise
            raise ValueError(
                f"eval_set's X_eval is not data this model reads ({err}). As the last "
                "step of a Pipeline, PumaPatcher sees the preprocessed X, and a Pipeline "
                "does not transform eval_set: wrap the whole Pipeline instead, "
                "PumaPatcher(pipeline) (or PumaPatcher(FrozenEstimator(fitted_pipeline)))"
                ", which takes a raw eval_set, or pass X_eval transformed by the fitted "
                "preprocessing."
            ) from err
        y_eval = np.asarray(y_eval)
        if len(y_eval) != X_eval.shape[0]:
            raise ValueError(
                f"eval_set has {X_eval.shape[0]} rows in X_eval but {len(y_eval)} in "
                "y_eval."
            )
        if y_eval.dtype.kind in "fc" and not np.all(np.isfinite(y_eval)):
            raise ValueError("eval_set's y_eval contains NaN or infinity.")
        groups_eval = None
        if len(eval_set) == 3:
            groups_eval = self._check_groups(eval_set[2], X_eval.shape[0],
                                             "eval_set's groups")
        adapter = self._problem.adapter
        return (adapter.encode_X(X_eval), adapter.encode_y(self._io.encode_y(y_eval)),
                groups_eval)

    def _bind_criterion(self, keep):
        problem = self._problem
        if self._eval is not None:
            X, y, groups = self._eval
            return BoundCriterion(self.criterion, problem.adapter, X, y,
                                  problem.ones(len(X)), groups)
        weights = problem.s * torch.as_tensor(keep, device=problem.s.device)
        return BoundCriterion(self.criterion, problem.adapter, problem.X, problem.y, weights,
                              self._groups)

    def _loo_exists(self):
        # The leave-one-out correction is exact for models linear in their parameters
        # and needs the explicit inverse Hessian.
        adapter = self._problem.adapter
        return adapter.linear_in_params and self._problem.hessian_kind in ("exact",
                                                                           "dual")

    def _value_method_check(self, method):
        if method == "loo" and not self._loo_exists():
            raise ValueError(
                "Leave-one-out values need a model linear in its parameters (or "
                "parameters='last_layer') and hessian='exact' or 'dual' (or 'auto' "
                "resolving to one of them); use 'first_order' or 'auto'."
            )

    def _value_method(self, adapter):
        if self.value_method == "auto":
            return "loo" if self._loo_exists() else "first_order"
        self._value_method_check(self.value_method)
        return self.value_method

    @property
    def values_(self):
        if "_values_of" not in self.__dict__:
            raise AttributeError(f"This {type(self).__name__} is not fitted: values_ "
                                 "exists after fit.")
        if self._training_values is None:
            self._training_values = self._value_training_points()
        return self._training_values

    @on_fitted_model
    def _value_training_points(self):
        criterion, method = self._values_of
        problem = self._problem
        values = self._shape_values(compute_values(problem, criterion, problem.X,
                                                   problem.y, problem.s, method))
        self._log(f"valued {problem.n} training points on {len(criterion.names)} "
                  "criterion row(s)")
        return values

    def _shape_values(self, values):
        values = _check_finite(_np(values), "values", _NON_FINITE_VALUES)
        return values[:, 0] if values.shape[1] == 1 else values

    # -------------------------------------------------------------------- removal
    def _check_fit_removal(self, remove, n):
        if remove is None:
            return None
        return self._as_mask(remove, n, "remove")

    def _as_mask(self, spec, n, what):
        """``spec`` as a mask over the training rows.  A pandas Index (say
        ``patcher.value().nsmallest(5).index``) holds row labels: they are looked up in
        the training table's index, not read as positions (which would remove other
        rows, silently, wherever the table was shuffled or split); a boolean Series is
        aligned on that index."""
        index = self.__dict__.get("_train_index")
        if index is None:  # fitted on an array: value() labels its rows 0 to n - 1
            index = pd.RangeIndex(n)
        if isinstance(spec, (pd.Series, pd.Index)) and pd.api.types.is_bool_dtype(spec):
            # A mask, not labels.  A Series is aligned on its index, as pandas aligns it
            # (say ``forget.sort_index()`` of a shuffled table): read by position it
            # would mark other rows.
            if spec.isna().any():
                raise ValueError(f"{what} is a boolean {type(spec).__name__} holding "
                                 "missing values (NA); fill them first.")
            if isinstance(spec, pd.Series) and not spec.index.equals(index):
                if not (spec.index.is_unique and len(spec) == len(index)
                        and spec.index.isin(index).all()):
                    raise ValueError(
                        f"{what} is a boolean Series whose index is not the training "
                        "table's row labels; align it on them (series.reindex(X.index)) "
                        "or pass a numpy mask.")
                spec = spec.reindex(index)
            spec = spec.to_numpy(dtype=bool)
        elif isinstance(spec, pd.Index):
            try:
                positions = index.get_indexer(spec)
            except pd.errors.InvalidIndexError:
                raise ValueError(
                    f"{what} is a pandas Index of row labels, but the training table's "
                    "row labels are not unique; pass positions (a numpy array) or a "
                    "boolean mask.") from None
            missing = spec[positions < 0]
            if len(missing):
                raise ValueError(
                    f"{what} has row labels that are not in the training table's index: "
                    f"{missing[:5].tolist()}. A pandas Index is read as row labels; pass "
                    "positions as a numpy array.")
            spec = positions
        return row_mask(spec, n, what)

    def _removal_mask(self, spec):
        n = self._problem.n
        if spec is None:
            return np.zeros(n, dtype=bool)
        if isinstance(spec, np.ndarray) and spec.dtype == bool:
            return spec
        trained = self._trained_rows()
        if isinstance(spec, str) and spec == "label_errors":
            from ._label_errors import flagged_label_errors  # it imports this module

            mask, quality = flagged_label_errors(self)
            return self._capped(mask & trained, quality)
        total = self.values_ if self.values_.ndim == 1 else self.values_.sum(axis=1)
        if callable(spec):
            return self._as_mask(spec(self.values_), n, "the remove callable's result")
        if isinstance(spec, str):  # "auto"
            q1, q3 = np.percentile(total[trained], [25, 75])
            mask = trained & (total < 0) & (total < q1 - 1.5 * (q3 - q1))
        else:
            count = min(int(spec), int(trained.sum())) if isinstance(spec, Integral) \
                else int(round(float(spec) * trained.sum()))
            mask = np.zeros(n, dtype=bool)
            mask[np.argsort(np.where(trained, total, np.inf), kind="stable")[:count]] = True
        return self._capped(mask, total)

    def _trained_rows(self):
        """The rows that trained the model: one of weight zero is not in the fit (its
        value is rounding), so the policies neither choose nor count it."""
        return _np(self._problem.s) > 0

    def _capped(self, mask, total, source=None):
        """A policy's removal with at most ``MAX_POLICY_SHARE`` of any class (and of any
        group given to ``fit``) taken: a policy ranks points by value, and a minority
        class's points each weigh more in the values, so "the lowest-valued" can
        empty it (and the model then stops predicting it, which the criteria on the
        kept points cannot see).  The lowest-ranked by ``total`` of each stay marked (a
        class of three or fewer loses none); a warning, naming ``source`` (the removal's
        origin, by default the ``remove`` policy), says where the cap cut it."""
        partitions = []
        adapter = self._problem.adapter
        if adapter.is_classifier and not adapter.multilabel:
            partitions.append(("class", self.classes_,
                               self.classes_[_np(self._problem.y).astype(int)]))
        if self._groups is not None:
            partitions.append(("group", np.unique(self._groups), self._groups))
        cut = []
        trained = self._trained_rows()
        for kind, labels, of_point in partitions:
            for label in labels:
                members = np.flatnonzero((of_point == label) & trained)
                chosen = members[mask[members]]
                limit = int(MAX_POLICY_SHARE * len(members))
                if len(chosen) > limit:
                    spared = chosen[np.argsort(total[chosen], kind="stable")[limit:]]
                    mask[spared] = False
                    cut.append(f"{kind} {plain_label(label)!r}"
                               f": {len(chosen)} of {len(members)} marked, {limit} removed")
        if cut:
            warnings.warn(
                f"{source or f'The remove={self.remove!r} policy'} would take more than "
                f"{MAX_POLICY_SHARE:.0%} of some classes or groups ({'; '.join(cut[:5])}"
                f"{f'; and {len(cut) - 5} more' if len(cut) > 5 else ''}); "
                "only their first-ranked are removed. Removing most of a class changes "
                "what the model predicts for it, which criteria on the kept points do "
                "not measure."
                + (" Pass a mask or indices to remove more." if source is None else ""),
                PumaWarning, stacklevel=user_stacklevel())
        return mask

    def _check_classes_survive(self, mask):
        adapter = self._problem.adapter
        keep = ~mask & (_np(self._problem.s) > 0)
        if not keep.any():
            # A regressor's patch had reported the removal of every row complete,
            # eta_=1, with the fitted coefficients unchanged (LinearRegression) or the
            # intercept kept (Ridge): no model is fitted on no data.
            raise ValueError(
                f"Removing these {int(mask.sum())} points leaves no training point of "
                "positive weight; a model cannot be fitted on no data. Remove fewer "
                "points.")
        if not adapter.is_classifier or adapter.multilabel:
            return
        present = set(_np(self._problem.y)[keep].astype(int).tolist())
        emptied = [plain_label(self.classes_[k]) for k in range(len(self.classes_))
                   if k not in present]
        if emptied:
            raise ValueError(
                f"Removing these {int(mask.sum())} points leaves no training point of "
                f"class(es) {list(emptied)}; a model cannot keep a class it has no data "
                "for. Remove fewer points of that class."
            )

    # ---------------------------------------------------------------------- patch
    @on_fitted_model
    def patch(self, remove, *, upweight=None):
        """Patch the fitted model so that the points in ``remove`` lose their influence.

        Always starts from the model as fitted, so ``remove`` is the whole set to remove.

        Parameters
        ----------
        remove : array-like of bool or int, or pandas Index
            Mask or indices (positions, 0 to n - 1) of training points to remove; a
            pandas Index (say ``value().nsmallest(5).index``) holds row labels of the
            training table's index, looked up there.
        upweight : None, float, array-like or callable, default=None
            Overrides the ``upweight`` parameter for this patch.

        Returns
        -------
        self : PumaPatcher
            The patched meta-estimator (``estimator_``, ``removed_``, ``eta_`` and the
            other patch attributes updated).

        Notes
        -----
        A model linear in its parameters is patched to the refit on
        ``sample_weight_`` (Newton and chord steps on its convex objective) where it
        was fitted near its optimum. Where it was not (``optimality_gap_`` past 1e-2,
        or a Newton step to its optimum past 5 typical influence steps: warned at
        fit), the patch keeps the fit's own error (a tilted objective,
        ``H_w delta`` with ``delta`` that Newton step): it moves the model by the
        reweighting's effect, exactly for a quadratic loss, to first order otherwise;
        unless that effect's first step is ten times the fit's distance, when it too
        is the refit. A
        network's all-parameter patch is the net retrained from its fitted weights on
        ``sample_weight_`` (the "warm retrain"), reached without a pass over the data
        per step of a retrain from scratch: its own objective (not tilted, even where
        the fit stopped short of an optimum: a tilted net objective is unbounded below
        along the unpenalised intercepts) is minimised from the fitted model by
        L-BFGS.  Its initial curvature, and so its first step the influence step, is
        the reweighted Hessian at the fitted model (the fitted Hessian updated over
        the rows whose weight changed) only where that is explicit (up to 3,000
        parameters) and measured positive semi-definite, its quasi-Newton pairs
        correcting it as the patch moves (where a step on it must be cut below 1/16
        by the line search, a ReLU net's kinks that its Hessian does not see,
        L-BFGS goes on from a scaled identity).  Elsewhere (indefinite, as a removed
        cluster often leaves it, or solved iteratively: "cg", "lowrank", "ekfac")
        the patch is plain L-BFGS from the fitted model, the warm retrain's own
        path, except on nets of more than 10^7 rows times parameters made of dense
        layers, where plain L-BFGS stopped on its bound and EK-FAC of the reweighted
        Gauss-Newton curvature (damped by a hundredth of its mean eigenvalue)
        preconditions it: a step on a damped indefinite inverse, long along the negative
        directions, crossed into other minima (a skorch net: 6e-4 higher than the
        warm retrain's, completeness 0.67, reported converged; plain: 0.9999), and
        so did the influence step on a CG solve whose Lanczos estimate called the
        curvature convex (0.41).  The line search only accepts steps that lower the
        reweighted objective, so a non-convex objective is descended, never climbed.
        It stops when the reweighted gradient is 1e-4 of the removal's own at the
        fitted model (1e-5 where the fit's loss is under 1% of a constant
        prediction's: its objective is flat along the valley the removed points
        leave; the reweighted gradient less the fit's) *and* a further step would
        move the removed rows' predictions by under 1% of what the patch moved them
        (the gradient alone can stop early where the objective is flat). Neither test
        tells two minima of a flat objective apart:
        a 2,000-row tanh MLP that interpolates its training data passed both at 0.62
        of the way (where scipy's L-BFGS-B itself, from the same fitted weights,
        lands 0.22-0.29 of the way with 10 or 100 pairs instead of 30). So a
        converged patch is checked against a second path, plain L-BFGS from the
        fitted model (the warm retrain's own): where its own path started
        elsewhere, with the influence step or Newton steps (``n_steps > 1``), with
        the polish's memory, on nets of up to 10^7 rows times parameters (past
        that the plain path costs several patches); and where the net fits its
        training data almost exactly, its loss under 1% of a constant prediction's,
        with 10 pairs (as scikit-learn's lbfgs). Where the second path converges to a reweighted
        objective lower by more than rounding, with criteria no worse, the patch
        takes its end (a two-class MLP whose influence-step path converged in a
        minimum 3% higher than scipy's retrains' now reaches theirs): a lower
        objective, which can be farther from one particular retrain. Where the two
        ends agree on less than 0.8 of the removed rows' move, a
        ``PartialRemovalWarning`` says the removal is not unique and gives the
        figure (0.24 on the interpolating net; 1.000 on its neighbour, whose
        retrains agree). The check costs a second polish (with
        ``curvature="gauss_newton"``, whose curvature is always convex, on every
        converged patch), and is skipped where the patch's time bound is reached.
        Measured (``tests/test_network_removal.py``): completeness against the warm
        retrain 0.9994-1.0000 on tanh MLPClassifier, MLPRegressor, skorch and Palmer
        penguins nets; on another CPU the classifier's warm retrain ended in a
        different minimum (completeness 0.62), higher than the patch's (a retrain
        from the patch stays there): the reweighted objective of a net is not convex,
        and two optimisers from the same start may settle apart. Near-interpolating
        ReLU nets may stop on the iteration bound, with a ``PartialRemovalWarning``
        giving ``removal_residual_``; on a flat
        objective a warm retrain by another optimiser may also stop elsewhere in the
        valley, so compare with ``sample_weight_`` retrains, not from-scratch ones.
        """
        check_is_fitted(self)
        mask = self._as_mask(remove, self._problem.n, "remove")
        self._patch(mask, self.upweight if upweight is None else upweight)
        return self

    def _patch(self, mask, upweight):
        if not mask.any():
            # Nothing to remove: the fitted model, exactly (a solve from a fitted model
            # that is not at its optimum, an SGD's, would otherwise move it).
            self._no_patch(self._bind_criterion(keep=~mask))
            return
        self._check_classes_survive(mask)
        problem = self._problem
        if getattr(problem.adapter.estimator, "class_weight", None) == "balanced":
            raise ValueError(
                "class_weight='balanced' is recomputed from the sample weights at every "
                "refit, so no fixed sample_weight_ could reproduce a patch. Pass the "
                "balanced weights as an explicit dict (sklearn.utils.class_weight."
                "compute_class_weight) to patch this model."
            )
        up_mask = ~mask
        if isinstance(upweight, Real) and not isinstance(upweight, bool):
            up_mask = self._most_valuable(upweight, ~mask)
        elif upweight is not None:
            spec = upweight(self.values_) if callable(upweight) else upweight
            up_mask = self._as_mask(spec, problem.n, "upweight") & ~mask
        criterion = self._bind_criterion(keep=~mask)
        result = patch(
            problem, criterion, mask, up_mask,
            alpha=self.alpha, max_weight=self.max_weight, solver=self._solver(),
            n_steps=self._n_steps(), delta=self.delta,
        )
        _check_finite(result.theta, "patched parameters",
                     f"the curvature solve (hessian={self.hessian_!r}, damping="
                     f"{self.damping_:g}) or the criteria went non-finite; the model "
                     "is left as it was")
        self.estimator_ = self._wrap(problem.adapter.build(result.theta))
        self.removed_ = np.flatnonzero(mask)
        self.lambda_ = result.lam
        self.sample_weight_ = self._user_weights(result.sample_weight)
        self.eta_ = float(result.eta)
        self.removal_residual_ = float(result.residual)
        linear = problem.adapter.linear_in_params
        if result.eta == 1.0 and not (result.converged
                                      and self.removal_residual_ <= _UNCONVERGED):
            measure = ("reweighted objective's Newton decrement where it ended is "
                       f"{self.removal_residual_:.3g} of the removal's first step"
                       if linear else
                       "larger of the reweighted objective's gradient where its L-BFGS "
                       "polish ended (over the removal's gradient at the fitted "
                       "model) and the share "
                       "of the removed rows' move a further step still predicts is "
                       f"{self.removal_residual_:.3g} (converged: {result.gradient_tol:g} and "
                       f"{_NET_OUTPUT_RTOL:g})"
                       if result.share_measured else
                       "reweighted objective's gradient where its L-BFGS polish ended "
                       f"is {self.removal_residual_:.3g} of the removal's gradient at "
                       f"the fitted model (converged: {result.gradient_tol:g}); a "
                       "gradient ratio, not the share of the removal still to come, "
                       "which no curvature was at hand to measure and can be far "
                       "larger (measured on real tables: up to 0.5 left at a ratio "
                       "of 2e-4)")
            advice = ("Raise n_steps." if linear else
                      _unfinished_fit(result.fit_share, result.gradient_tol) +
                      "A near-interpolating or ReLU net's objective is flat or kinked "
                      "where the removed points were; parameters='last_layer' "
                      "converges.")
            warnings.warn(
                f"The patch stopped short of the model optimal for sample_weight_: the "
                f"{measure} (removal_residual_), so the marked points' influence is "
                f"only partly removed although eta_=1. {advice}",
                PartialRemovalWarning, stacklevel=user_stacklevel())
        checked = result.second_path
        if checked is not None and checked.agreement < _SECOND_PATH_AGREEMENT:
            ended = ("converged" if checked.reason == "converged" else
                     f"stopped on its {checked.reason} bound")
            taken = (" The patch is the warm retrain's path's end: the path it started "
                     "on (with the influence step, or Newton steps) converged in a "
                     f"minimum {checked.lower_by:.2g} (relative) higher."
                     if checked.lower_by > 0 else
                     " The removal is complete against a retrain that takes the "
                     "patch's path, and may not be against another.")
            warnings.warn(
                "The removal is not unique on this net: two paths from the fitted "
                "model towards the model optimal for sample_weight_ end apart (the "
                f"second, plain L-BFGS with {checked.memory} pairs as a warm retrain "
                f"by L-BFGS goes, {ended} at a relative gradient of "
                f"{checked.residual:.2g}), agreeing on only {checked.agreement:.2f} "
                "of the removed rows' move (measured on their predictions). The "
                "reweighted objective has several minima near the fit, and which one "
                f"a retrain reaches depends on the optimiser.{taken} "
                "parameters='last_layer' has a single optimum.",
                PartialRemovalWarning, stacklevel=user_stacklevel())
        self.criterion_before_ = result.before
        self.criterion_after_ = result.after
        if self.verbose:  # formatting the arrays costs a tenth of a small patch
            self._log(
                f"removed {mask.sum()} points, up-weighted {(result.lam > 0).sum()}, "
                f"eta={self.eta_:.3f}; criteria {result.before} -> {result.after}"
            )

    def _n_steps(self):
        if self.n_steps != "auto":
            return self.n_steps
        return 1

    def _most_valuable(self, fraction, kept):
        if not 0 < fraction < 1:
            raise ValueError(f"upweight as a fraction must lie in (0, 1); got {fraction}.")
        total = self.values_ if self.values_.ndim == 1 else self.values_.sum(axis=1)
        candidates = np.flatnonzero(kept)
        count = max(1, int(round(fraction * len(candidates))))
        chosen = candidates[np.argsort(-total[candidates], kind="stable")[:count]]
        mask = np.zeros(len(kept), dtype=bool)
        mask[chosen] = True
        return mask

    def _no_patch(self, criterion, before=None):
        problem = self._problem
        self.estimator_ = self._base_estimator
        self.removed_ = np.array([], dtype=np.int64)
        self.lambda_ = np.zeros(problem.n)
        self.sample_weight_ = self._base_sample_weight.copy()
        self.eta_ = 1.0
        self.removal_residual_ = 0.0
        # ``before``: the criteria fit() just measured at the fitted model.
        self.criterion_before_ = (_np(criterion(problem.theta_hat)) if before is None
                                  else before)
        self.criterion_after_ = self.criterion_before_.copy()

    def _user_weights(self, training_weights):
        # Training weights include class_weight, which the estimator re-applies itself.
        s = _np(self._problem.s)
        ratio = np.divide(training_weights, s, out=np.zeros_like(s), where=s > 0)
        return self._base_sample_weight * ratio

    def _solver(self):
        if isinstance(self.solver, str):
            return self.solver
        if is_classifier(self.solver):
            raise ValueError(
                f"solver must be 'lasso' or a linear regressor whose fit(V, target) "
                f"gives coef_ (Lasso, ElasticNet, LinearRegression(positive=True), ...); "
                f"got {type(self.solver).__name__}, a classifier (the target is "
                "continuous)."
            )
        solver = clone(self.solver)
        if "random_state" in solver.get_params():
            solver.set_params(random_state=self.random_state)
        return solver

    def _log(self, message):
        if self.verbose:
            print(f"[PumaPatcher] {message}")

    # --------------------------------------------------------------------- values
    @on_fitted_model
    def value(self, X=None, y=None, *, method=None):
        """Compute the values of labelled points (the training set by default).

        A value is the predicted change of each criterion row if the point were removed
        from training. Positive = helpful, negative = harmful.

        Parameters
        ----------
        X, y : array-like, default=None
            Points to value; by default the training set (then a copy of ``values_``).
            A point outside the training set is valued as if it had been in it: the
            first-order value is minus the predicted change of adding it.
        method : {"loo", "first_order"}, default=None
            Training points: the fitted ``value_method``. Other points: "first_order"
            (the leave-one-out correction is for points the model was trained on).

        Returns
        -------
        values : ndarray of shape (n,) or (n, n_rows), or pandas Series or DataFrame
            The value of each point: one column per criterion row, squeezed to shape
            ``(n,)`` when there is one row. Under ``set_output(transform="pandas")``, a
            pandas Series (one criterion row, named after it) or DataFrame (columns
            ``criterion_names_``) indexed like X: the training DataFrame's index by
            default. ``values_`` itself stays an ndarray; ``value()`` is the labelled
            view of it.
        """
        check_is_fitted(self)
        problem = self._problem
        default = self._value_method(problem.adapter)
        if method is None:
            method = default if X is None else "first_order"
        if method not in ("loo", "first_order"):
            raise ValueError(f"method must be 'loo' or 'first_order'; got {method!r}.")
        if method == "loo":
            self._value_method_check("loo")
        if X is None and y is None and method == default:
            return self._labelled_output(self.values_.copy(), self._train_index)
        criterion = self._bind_criterion(keep=np.ones(problem.n, dtype=bool))
        values = self._shape_values(
            compute_values(problem, criterion, *self._labelled(X, y, "value"), method))
        return self._labelled_output(
            values, self._train_index if X is None else getattr(X, "index", None))

    def _labelled_output(self, values, index):
        """``values`` as pandas, labelled by the rows' index and the criterion rows'
        names, where ``set_output(transform="pandas")`` asks for pandas; else as is."""
        if _get_output_config("transform", self)["dense"] != "pandas":
            return values
        import pandas as pd

        if values.ndim == 1:
            return pd.Series(values, index=index, name=self.criterion_names_[0])
        return pd.DataFrame(values, index=index, columns=list(self.criterion_names_))

    def _labelled(self, X, y, method):
        """``(X, y, weights)`` encoded for the adapter: the training set (with its
        weights) when X is None, else the given labelled points at unit weight."""
        problem = self._problem
        if X is None:
            if y is not None:
                raise ValueError(f"{method}(y=...) needs the points X that the labels "
                                 "belong to.")
            return problem.X, problem.y, problem.s
        if y is None:
            raise ValueError(f"{method}(X, y) needs the labels y of the points in X.")
        X = self._model_X(X)
        y = np.asarray(y)
        if len(y) != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {len(y)}.")
        if y.dtype.kind in "fc" and not np.all(np.isfinite(y)):
            bad = np.flatnonzero(~np.isfinite(y).reshape(len(y), -1).all(axis=1))
            raise ValueError(
                f"{method}(X, y): y has NaN or infinite labels at rows "
                f"{bad[:5].tolist()}{' ...' if len(bad) > 5 else ''}; a point is valued "
                "by its loss at its label, which must be finite.")
        adapter = problem.adapter
        return (adapter.encode_X(X), adapter.encode_y(self._io.encode_y(y)),
                problem.ones(X.shape[0]))

    @available_if(_estimator_has("predict_proba"))
    def loo_predict_proba(self, X=None, y=None):
        """Leave-one-out class probabilities of labelled training points, without refits.

        Each row is the model's probability for the point as if it had been trained
        without that point (one leverage-corrected Newton step), what
        ``cross_val_predict(..., method="predict_proba")`` approximates with K refits.

        Parameters
        ----------
        X, y : array-like, default=None
            Labelled points to treat as training points; by default the training set.

        Returns
        -------
        proba : ndarray of shape (n, n_classes)
            Each point's class probabilities from the model trained without it, columns
            in the order of ``classes_``.
        """
        check_is_fitted(self)
        return self._loo_proba(X, y)

    @on_fitted_model
    def _loo_proba(self, X=None, y=None, check_far_steps=True):
        # check_far_steps=False: rank_label_errors, which reads only the order of these
        # probabilities, does not pay for the check of the longest leave-one-out steps
        # against their refits' optima (values_ and patch run it, and warn from it).
        proba = _np(loo_log_proba(self._problem,
                                  *self._labelled(X, y, "loo_predict_proba"),
                                  check_far_steps=check_far_steps).exp())
        return _check_finite(proba, "leave-one-out probabilities", _NON_FINITE_OUTPUTS)

    @on_fitted_model
    def self_influence(self, X=None, y=None):
        """How much each labelled training point's own loss rises when it is left out.

        ``l_i(theta without i) - l_i(theta)``, in units of the estimator's loss, from
        the same leave-one-out step as :meth:`loo_predict_proba` (no refits). Points the
        model fits only because they are in the training set (mislabelled or atypical
        rows) score high; points the rest of the data explains score near zero. Unlike
        ``values_`` it ignores the criterion: it is the classic "self-influence" score
        of influence-function debugging, offered for comparison and ranking.

        Parameters
        ----------
        X, y : array-like, default=None
            Labelled points to treat as training points; by default the training set.

        Returns
        -------
        scores : ndarray of shape (n,)
            Each point's self-influence, in units of the estimator's loss.
        """
        check_is_fitted(self)
        scores = _np(self_influence(self._problem, *self._labelled(X, y, "self_influence")))
        return _check_finite(scores, "self-influence scores", _NON_FINITE_OUTPUTS)

    @on_fitted_model
    def transform(self, X):
        """Compute label-free values: one per possible label or unit residual.

        For a classifier, the value of each point under each possible label; for a
        regressor, the value of a unit residual on each output. First-order, at unit
        weight.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Points to value; they need no labels.

        Returns
        -------
        values : ndarray of shape (n_samples, n_classes * n_rows) or \
(n_samples, n_outputs * n_rows)
            The values, columns named by :meth:`get_feature_names_out`.
        """
        check_is_fitted(self)
        X = self._model_X(X)
        problem = self._problem
        criterion = self._bind_criterion(keep=np.ones(problem.n, dtype=bool))
        return _check_finite(
            _np(label_free_values(problem, criterion, problem.adapter.encode_X(X))),
            "label-free values", _NON_FINITE_VALUES)

    def get_feature_names_out(self, input_features=None):
        """Get the names of the transform's columns: ``value_<label>[_<criterion row>]``.

        Parameters
        ----------
        input_features : array-like of str, default=None
            Ignored: the columns are named after the labels (or outputs) and the
            criterion rows, not the input features. Accepted for the scikit-learn API.

        Returns
        -------
        feature_names_out : ndarray of str objects
            One name per column of :meth:`transform`'s output.
        """
        check_is_fitted(self)
        adapter = self._problem.adapter
        labels = adapter.classes if adapter.is_classifier else range(adapter.n_outputs)
        rows = self.criterion_names_
        suffix = [""] if len(rows) == 1 else [f"_{r}" for r in rows]
        return np.asarray([f"value_{label}{s}" for label in labels for s in suffix],
                          dtype=object)

    # ----------------------------------------------------------------- delegation
    @available_if(_estimator_has("predict"))
    def predict(self, X):
        """Predict with the patched estimator.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predicted labels or targets.
        """
        check_is_fitted(self)
        return self._io.decode(self.estimator_.predict(self._delegate_X(X)))

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        """Class probabilities of the patched estimator.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Class probabilities, columns in the order of ``classes_``.
        """
        check_is_fitted(self)
        return self.estimator_.predict_proba(self._delegate_X(X))

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X):
        """Log class probabilities of the patched estimator.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log class probabilities, columns in the order of ``classes_``.
        """
        check_is_fitted(self)
        return self.estimator_.predict_log_proba(self._delegate_X(X))

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X):
        """Decision function of the patched estimator.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
            The patched estimator's decision function.
        """
        check_is_fitted(self)
        return self.estimator_.decision_function(self._delegate_X(X))

    @available_if(_estimator_has("score"))
    def score(self, X, y, sample_weight=None):
        """Return the accuracy (classifiers) or R^2 (regressors) of the patched estimator.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Test data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            True labels or targets of ``X``.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the test points.

        Returns
        -------
        score : float
            Accuracy or R^2 of ``self.predict(X)`` against ``y``.
        """
        check_is_fitted(self)
        metric = accuracy_score if is_classifier(self) else r2_score
        return metric(y, self.predict(X), sample_weight=sample_weight)
