"""Adapters: the only code that knows a model family.

An adapter turns a fitted estimator into pure functions over one flat parameter
vector ``theta`` (a torch tensor on the model's device, in its dtype) and writes a
parameter vector back into a copy of the estimator.  Everything downstream (curvature,
values, the patch) sees only these:

* ``forward(theta, X) -> outputs``  raw model outputs (logits or predictions), (n, K);
* ``sample_loss(outputs, y) -> (n,)`` the per-sample loss the estimator minimises;
* ``penalty(theta, n)``             the regulariser ``r`` of DESIGN section 1, a weighted
                                    sum of squares of the parameters (its Hessian is
                                    diagonal);
* ``log_proba(outputs)``            classifiers: log class probabilities as the
                                    estimator's ``predict_proba`` gives them;
* ``build(theta)``                  a deep copy of the estimator carrying ``theta``.

The training objective in mean form is ``J = (1/n) sum_i s_i l_i + r``.
"""

import copy
import functools
import math
import threading
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import has_fit_parameter

from ._sparse import SparseRows, as_design, with_ones
from ._warnings import PumaWarning, user_stacklevel

SUPPORTED_ESTIMATORS = (
    "LogisticRegression (penalty 'l2' or None, solver other than 'liblinear')",
    "LinearRegression",
    "Ridge",
    "SGDClassifier(loss='log_loss', penalty 'l2' or None)",
    "SGDRegressor(loss='squared_error', penalty 'l2' or None)",
    "MLPClassifier, MLPRegressor",
    "skorch NeuralNetClassifier (NLLLoss on probabilities or CrossEntropyLoss on logits), "
    "NeuralNetBinaryClassifier (BCEWithLogitsLoss), NeuralNetRegressor (MSELoss)",
)


class UnsupportedEstimatorError(TypeError):
    """Raised for an estimator (or an estimator setting) PUMA cannot differentiate.

    The message names what is unsupported and lists ``SUPPORTED_ESTIMATORS``. It is a
    ``TypeError``, so code that catches scikit-learn's wrong-estimator errors catches
    it too.

    Examples
    --------
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> from sklearn_puma import PumaPatcher, UnsupportedEstimatorError
    >>> try:
    ...     PumaPatcher(KNeighborsClassifier(n_neighbors=1)).fit([[0.0], [1.0]], [0, 1])
    ... except UnsupportedEstimatorError as error:
    ...     print(str(error).splitlines()[0])
    KNeighborsClassifier is not supported by PumaPatcher: ...
    """


def _unsupported(estimator, why):
    supported = "\n  - ".join(SUPPORTED_ESTIMATORS)
    return UnsupportedEstimatorError(
        f"{type(estimator).__name__} is not supported by PumaPatcher: {why}. "
        f"Supported estimators:\n  - {supported}"
    )


# --------------------------------------------------------------------------- losses
# Each loss works on raw outputs (n, K) and encoded targets; they are the exact
# pointwise losses of the estimators' solvers, so that J's minimiser is the fitted model.


def _log1p_exp(x):
    """log(1 + e^x), exact with finite derivatives of every order at any |x|.

    Not softplus (linear cut-off at x > 20: a 2e-9 error), logaddexp (NaN second
    derivatives at |x| ~ 1e4, which SGD on unscaled data reaches) or logsigmoid (its
    backward resizes an output buffer under vmap, with a warning).  The clamps keep the
    branch torch.where discards finite, so its zero gradient stays zero.
    """
    pos, neg = x.clamp(min=0), x.clamp(max=0)
    return torch.where(x > 0, pos + torch.log1p(torch.exp(-pos)), torch.log1p(torch.exp(neg)))


def _log_sigmoid(x):
    return -_log1p_exp(-x)


def _binary_logistic_loss(out, y):
    # y holds class indices 0/1; one logit for the positive class (classes_[1]).
    # log(1 + e^{-f}) for y = 1 and log(1 + e^{f}) for y = 0: no cancellation.
    f = out[:, 0]
    return _log1p_exp((1 - 2 * y).to(f.dtype) * f)


def _binary_logistic_log_proba(out):
    f = out[:, 0]
    return torch.stack([_log_sigmoid(-f), _log_sigmoid(f)], dim=1)


def _multinomial_loss(out, y):
    return torch.logsumexp(out, dim=1) - out.gather(1, y[:, None])[:, 0]


def _multinomial_log_proba(out):
    return torch.log_softmax(out, dim=1)


def _ovr_signs(y, n_outputs, dtype):
    # A comparison, not F.one_hot: one_hot is data-dependent and breaks vmap.
    return 1 - 2 * (y[:, None] == torch.arange(n_outputs, device=y.device)).to(dtype)


def _ovr_logistic_loss(out, y):
    # SGDClassifier trains one binary log-loss model per class (one-vs-rest).
    return _log1p_exp(_ovr_signs(y, out.shape[1], out.dtype) * out).sum(dim=1)


def _ovr_log_proba(out):
    # scikit-learn's _predict_proba_lr: per-class sigmoids, normalised to sum to one.
    log_sig = _log_sigmoid(out)
    return log_sig - torch.logsumexp(log_sig, dim=1, keepdim=True)


def _multilabel_loss(out, y):
    # y is the 0/1 label-indicator matrix; one binary log-loss per label.
    return _log1p_exp((1 - 2 * y) * out).sum(dim=1)


def _squared_loss(out, y, scale):
    return scale * ((y - out) ** 2).sum(dim=1)


def _binary_logistic_derivatives(out, y, curvature):
    f = out[:, :1]
    sign = (1 - 2 * y[:, None]).to(f.dtype)
    sigma = torch.sigmoid(f)
    second = (sigma * (1 - sigma))[:, :, None] if curvature else None
    return sign * torch.sigmoid(sign * f), second


def _multinomial_derivatives(out, y, curvature):
    p = torch.softmax(out, dim=1)
    first = p - (y[:, None] == torch.arange(out.shape[1], device=y.device)).to(p.dtype)
    if not curvature:
        return first, None
    return first, torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def _logistic_per_output_derivatives(out, sign, curvature):
    sigma = torch.sigmoid(out)
    second = torch.diag_embed(sigma * (1 - sigma)) if curvature else None
    return sign * torch.sigmoid(sign * out), second


def _ovr_logistic_derivatives(out, y, curvature):
    return _logistic_per_output_derivatives(out, _ovr_signs(y, out.shape[1], out.dtype),
                                            curvature)


def _multilabel_derivatives(out, y, curvature):
    return _logistic_per_output_derivatives(out, 1 - 2 * y, curvature)


def _squared_derivatives(out, y, curvature, scale):
    if not curvature:
        return 2 * scale * (out - y), None
    eye = torch.eye(out.shape[1], dtype=out.dtype, device=out.device)
    return 2 * scale * (out - y), (2 * scale * eye).expand(len(out), -1, -1)


# Per-sample first and second derivatives of each loss in the model outputs, in closed
# form: the autodiff route (vmap of a per-sample Hessian) costs more than the Gram
# products that use them.  Losses not listed here fall back to autodiff.
_OUTPUT_DERIVATIVES = {
    _binary_logistic_loss: _binary_logistic_derivatives,
    _multinomial_loss: _multinomial_derivatives,
    _ovr_logistic_loss: _ovr_logistic_derivatives,
    _multilabel_loss: _multilabel_derivatives,
    _squared_loss: _squared_derivatives,
}


# ----------------------------------------------------------------------- adapters


def class_codes(classes, y):
    """Indices of the labels ``y`` in the sorted ``classes``; unknown labels are an error."""
    y = np.asarray(y).ravel()
    try:
        codes = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
    except TypeError:  # labels of another type than the classes (0/1 for 'No'/'Yes')
        raise ValueError(
            f"y holds labels of types {sorted({type(v).__name__ for v in y.tolist()})} "
            f"({list(dict.fromkeys(y.tolist()))[:5]}...), which cannot be the "
            f"estimator's classes {classes.tolist()}."
        ) from None
    unknown = classes[codes] != y
    if np.any(unknown):
        raise ValueError(
            f"y contains labels {np.unique(y[unknown]).tolist()} that the estimator was "
            f"not trained on; known classes: {classes.tolist()}."
        )
    return codes


_MEMO_LOCK = threading.Lock()


def _memoisable(theta):
    return (type(theta) is torch.Tensor and not theta.requires_grad
            and torch._C._functorch.peek_interpreter_stack() is None)


class Adapter:
    """What every adapter shares: data encoding on the model's device and dtype."""

    linear_in_params = False
    # Whether ``forward`` leaves shared state alone, so that worker threads may run it
    # on chunks of rows at once (see ``_autodiff.objective_value``).
    pure_forward = True
    sparse_design = False  # whether sparse X stays sparse (see _sparse)
    dtype, device = torch.float64, torch.device("cpu")
    multilabel = False

    def __init__(self, estimator, *, loss, log_proba=None, classes=None,
                 balance_by_weight=False):
        self.estimator = estimator
        self.loss = loss
        self._log_proba = log_proba
        self.classes = classes
        self.is_classifier = classes is not None
        self._balance_by_weight = balance_by_weight

    @property
    def n_params(self):
        return self.theta.numel()

    # Outputs over a whole data set kept for reuse (see ``outputs``), most recent last.
    _MEMO_SIZE = 2

    def outputs(self, theta, X):
        """``forward(theta, X)``, remembered for the last few ``(theta, X)`` pairs.

        A patch reads the outputs at one parameter vector several times (the criteria,
        their Jacobian, the values, the gradient); each read is a pass over X, which at
        10^6 rows costs more than everything else the step does.  Keyed on the objects
        themselves and their version counters, so an in-place change of either is a
        miss; never under autograd or a torch.func transform (the outputs would carry a
        graph or a wrapped tensor out of it).
        """
        hit = self._memo_lookup(theta, X)
        if hit is not None:
            return hit
        out = self.forward(theta, X)
        self.remember(theta, X, out)
        return out

    def remember(self, theta, X, out):
        """Keep ``out = forward(theta, X)``, computed elsewhere (a gradient pass that
        made the outputs on its way), for ``outputs``."""
        if not _memoisable(theta) or out.requires_grad:
            return
        entry = (theta, theta._version, X, getattr(X, "_version", None), out,
                 out._version)
        with _MEMO_LOCK:
            memo = [e for e in self.__dict__.get("_memo", ()) if e[0] is not theta
                    or e[2] is not X][-(self._MEMO_SIZE - 1):]
            self._memo = memo + [entry]

    def _memo_lookup(self, theta, X):
        if not _memoisable(theta):
            return None
        for t, t_version, x, x_version, out, out_version in self.__dict__.get("_memo", ()):
            # A caller that wrote into the outputs (a user's criterion) spoils them.
            if t is theta and x is X and t_version == theta._version \
                    and x_version == getattr(X, "_version", None) \
                    and out_version == out._version:
                return out
        return None

    def __getstate__(self):
        # Remembered outputs are n-sized and rebuilt on demand: never pickled or copied.
        state = self.__dict__.copy()
        state.pop("_memo", None)
        return state

    def sample_loss(self, out, y):
        return self.loss(out, y)

    def flat_directions(self):
        """Directions the objective is flat along on any data, (p, q) orthonormal, or
        None where none are known (the inverse then finds them numerically)."""
        return None

    def log_proba(self, out):
        return self._log_proba(out)

    def predictions(self, out):
        """What the model predicts from its outputs: class probabilities (one
        independent probability per label for a multilabel net), else the outputs."""
        if not self.is_classifier:
            return out
        if self.multilabel:
            return torch.sigmoid(out)
        return self.log_proba(out).exp()

    def linear_layers(self):
        """The model as a stack of dense layers, for Kronecker-factored curvature:
        per layer ``(index, bias)``, ``index`` a (rows, n_out) LongTensor of positions
        in theta laid out as the layer's weight matrix acting on ``[a, 1]`` (``a`` its
        input, the last row the bias where ``bias``), or None where the model is not
        such a stack (see ``traced_forward``)."""
        return None

    def traced_forward(self, theta, X, probes):
        """``(outputs, inputs)``: ``forward(theta, X)`` with ``probes[l]`` (b, n_out_l)
        added to layer l's pre-activation output, and each layer's input (b, n_in_l),
        for the layers of ``linear_layers``."""
        raise NotImplementedError

    @property
    def _loss_function(self):
        """The pointwise loss without its bound keywords (``functools.partial``)."""
        return self.loss.func if isinstance(self.loss, functools.partial) else self.loss

    @property
    def closed_form(self):
        """Whether the per-sample derivatives are closed forms (a model linear in theta
        and a loss in ``_OUTPUT_DERIVATIVES``): passes over samples are then plain
        linear algebra, with no torch.func transform, and may run in worker threads."""
        return self.linear_in_params and self._loss_function in _OUTPUT_DERIVATIVES

    @property
    def quadratic(self):
        """Whether the objective is quadratic in theta (squared loss, linear model)."""
        return self.linear_in_params and self._loss_function in (_squared_loss,
                                                                 _mean_squared_loss)

    def output_derivatives(self, out, y, curvature=True):
        """``(dl/df, d2l/df2)`` per sample in closed form (the second None without
        ``curvature``), or None where the loss has no closed form here."""
        loss, keywords = self.loss, {}
        if isinstance(loss, functools.partial):
            loss, keywords = loss.func, loss.keywords
        closed_form = _OUTPUT_DERIVATIVES.get(loss)
        return None if closed_form is None else closed_form(out, y, curvature, **keywords)

    def backpropagate(self, theta, X, y, weights, n):
        """``(grad, value)`` of the data term ``sum_i w_i l_i / n`` from a
        back-propagation written out, or None where the adapter has none (autograd
        then: ``_autodiff.value_and_gradient``)."""
        return None

    def encode_X(self, X):
        if sp.issparse(X):
            # Models linear in theta read sparse rows through their products (the
            # passes only ever multiply X); the rest take them dense, a bounded copy.
            if self.sparse_design:
                return as_design(X, self.dtype, self.device)
            X = SparseRows(X).to_dense().numpy()
        X = np.asarray(X, dtype=np.float64)
        if (self.dtype == torch.float64 and self.device.type == "cpu"
                and X.flags.c_contiguous and X.flags.writeable):
            # Shared, not copied (X can be most of the memory): nothing writes to it.
            return torch.from_numpy(X)
        # A copy: torch cannot wrap read-only (memory-mapped) arrays safely.
        return torch.tensor(X, dtype=self.dtype, device=self.device)

    def encode_y(self, y):
        """Targets as the loss expects them: class indices, or an (n, K) float array."""
        y = np.asarray(y)
        if self.is_classifier and not self.multilabel:
            return torch.as_tensor(class_codes(self.classes, y), dtype=torch.long,
                                   device=self.device)
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if not y.flags.writeable:
            # pandas 3 hands out read-only views (copy-on-write); torch warns on those.
            y = y.copy()
        if y.shape[1] != self.n_outputs:
            raise ValueError(
                f"y has {y.shape[1]} target column(s); the estimator predicts "
                f"{self.n_outputs}."
            )
        return torch.as_tensor(y, dtype=self.dtype, device=self.device)

    def training_weights(self, y, sample_weight):
        """Per-sample weights s_i the estimator used: sample_weight times class_weight."""
        n = len(y)
        # A copy: pandas' copy-on-write hands out read-only arrays, which torch warns of.
        s = np.ones(n) if sample_weight is None else np.array(sample_weight, float)
        class_weight = getattr(self.estimator, "class_weight", None)
        if class_weight is not None:
            # LogisticRegression balances classes by weighted counts, SGD by raw counts.
            counts_weight = sample_weight if self._balance_by_weight else None
            per_class = compute_class_weight(class_weight, classes=self.classes,
                                             y=np.ravel(y), sample_weight=counts_weight)
            s = s * per_class[np.searchsorted(self.classes, np.ravel(y))]
        return torch.as_tensor(s, dtype=self.dtype, device=self.device)

    def label_grid(self, out):
        """Hypothetical labels for label-free values: every class (multilabel: each label
        alone), or a unit residual on each output."""
        n = out.shape[0]
        if self.is_classifier and not self.multilabel:
            return [torch.full((n,), k, dtype=torch.long, device=self.device)
                    for k in range(len(self.classes))]
        eye = torch.eye(self.n_outputs, dtype=out.dtype, device=out.device)
        if self.multilabel:
            return [eye[k].expand(n, -1) for k in range(self.n_outputs)]
        return [out + eye[k] for k in range(self.n_outputs)]


class LinearAdapter(Adapter):
    """A fitted linear model with outputs ``f = X W[:, :d]^T + W[:, d]``.

    ``theta`` is ``W.ravel()`` with ``W`` of shape (n_outputs, n_features + fit_intercept);
    the intercept column is never penalised.  The per-point Hessian of every loss here is
    ``J_i^T D_i J_i`` exactly (outputs are linear in theta), which is what makes the
    leave-one-out correction of the values exact up to one Newton step.
    """

    linear_in_params = True
    sparse_design = True
    # Whether the estimator's solver centres the data (``refit_norm``); last layers of
    # nets, which set their layer themselves, do not.
    _centres = False

    def __init__(self, estimator, *, loss, log_proba=None, penalty_coef=0.0,
                 penalty_scales_with_n=True, classes=None, balance_by_weight=False,
                 centres=False):
        super().__init__(estimator, loss=loss, log_proba=log_proba, classes=classes,
                         balance_by_weight=balance_by_weight)
        self._centres = centres
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        self._coef_shape = np.shape(estimator.coef_)
        self._intercept_shape = np.shape(estimator.intercept_)
        coef2d = coef.reshape(-1, coef.shape[-1]) if coef.ndim > 1 else coef[None, :]
        intercept = None
        if getattr(estimator, "fit_intercept", True):
            intercept = np.broadcast_to(
                np.asarray(estimator.intercept_, dtype=np.float64).ravel(),
                (len(coef2d),)).copy()
        self._set_layer(torch.as_tensor(coef2d), intercept, penalty_coef,
                        scales_with_n=penalty_scales_with_n)

    def _set_layer(self, W, b, weight_penalty, bias_penalty=0.0, scales_with_n=True):
        """theta = ``[W | b]`` row by row (no column without ``b``) and the penalty
        ``r = sum(weight_penalty W^2) + sum(bias_penalty b^2)``, over n if it scales."""
        W = torch.as_tensor(W)
        self.n_outputs, self.n_features = W.shape
        self.fit_intercept = b is not None
        columns = [W] if b is None else [W, torch.as_tensor(b).to(W)[:, None]]
        self.theta = torch.cat(columns, dim=1).reshape(-1).clone()
        mask = torch.zeros(self.n_outputs, self.n_features + self.fit_intercept,
                           dtype=W.dtype, device=W.device)
        mask[:, : self.n_features] = torch.as_tensor(
            np.asarray(weight_penalty, dtype=np.float64).ravel(), dtype=W.dtype,
            device=W.device).expand(self.n_outputs)[:, None]
        if self.fit_intercept:
            mask[:, self.n_features] = bias_penalty
        self._penalty_weights = mask.reshape(-1)
        self._penalty_scales_with_n = scales_with_n

    def forward(self, theta, X):
        W = theta.reshape(self.n_outputs, -1)
        out = X @ W[:, : self.n_features].T
        if self.fit_intercept:
            out = out + W[:, self.n_features]
        return out

    def flat_directions(self):
        """Orthonormal columns (p, q) along which the objective is flat on any data, or
        None: with a softmax, adding one vector to every class's row of ``W`` changes
        no probability, and on the columns without a penalty (the intercept's; all of
        them unpenalised) nothing else sees it either."""
        K, width = self.n_outputs, self.n_features + self.fit_intercept
        if self.loss is not _multinomial_loss or K < 2:
            return None
        free = torch.nonzero((self._penalty_weights.reshape(K, width) == 0).all(dim=0))
        if len(free) == 0:
            return None
        q = len(free)
        F = torch.zeros(K, width, q, dtype=self.theta.dtype, device=self.theta.device)
        F[:, free[:, 0], torch.arange(q, device=F.device)] = K ** -0.5
        return F.reshape(K * width, q)

    def refit_norm(self):
        """(p,) 0/1: the parameters whose norm a refit from scratch keeps least along
        directions its data do not determine.  Solvers that centre the data first
        (LinearRegression's least squares; Ridge's lsqr, sag and sparse_cg at alpha=0,
        not its cholesky or svd, which return huge coefficients on a singular design)
        return the minimum-norm coefficients, the intercept set by the means; iterative ones started at zero
        (L-BFGS, SGD) never move along a direction no row's gradient has, so every
        parameter's component there stays zero."""
        norm = torch.ones(self.n_outputs, self.n_features + self.fit_intercept,
                          dtype=self.theta.dtype, device=self.theta.device)
        # Adapters pickled before the flag: LinearRegression's and Ridge's solvers centre.
        centres = self.__dict__.get("_centres", type(self.estimator).__name__ in (
            "LinearRegression", "Ridge"))
        if centres and self.fit_intercept:
            norm[:, self.n_features] = 0
        return norm.reshape(-1)

    def design(self, X):
        """``[X, 1]``: outputs are ``design(X) @ W.T``."""
        if not self.fit_intercept:
            return X
        if isinstance(X, SparseRows):
            return with_ones(X)
        return torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype, device=X.device)], dim=1)

    def penalty(self, theta, n):
        r = (self._penalty_weights * theta**2).sum()
        return r / n if self._penalty_scales_with_n else r

    def build(self, theta):
        est = copy.deepcopy(self.estimator)
        W = theta.detach().cpu().numpy().astype(np.float64).reshape(self.n_outputs, -1)
        dtype = np.asarray(self.estimator.coef_).dtype
        est.coef_ = W[:, : self.n_features].reshape(self._coef_shape).astype(dtype)
        if self.fit_intercept:
            intercept = W[:, self.n_features]
            if self._intercept_shape == ():
                est.intercept_ = float(intercept[0])
            else:
                est.intercept_ = intercept.reshape(self._intercept_shape).astype(dtype)
        return est


def _identity(z):
    return z


def _logistic_slope(h):
    return h * (1 - h)


def _tanh_slope(h):
    return 1 - h * h


def _relu_slope(h):
    return (h > 0).to(h.dtype)  # 0 at 0, as autograd's


# Module-level functions, not lambdas: the adapter keeps them, and is pickled with a
# fitted PumaPatcher.
_ACTIVATIONS = {
    "identity": _identity,
    "logistic": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
}
# Each activation's derivative in terms of its output h (scikit-learn's DERIVATIVES),
# None for the identity's 1.
_ACTIVATION_SLOPES = {
    "identity": None,
    "logistic": _logistic_slope,
    "tanh": _tanh_slope,
    "relu": _relu_slope,
}


class MLPAdapter(Adapter):
    """scikit-learn's MLPClassifier / MLPRegressor.

    ``theta`` concatenates, layer by layer, ``coefs_[i].ravel()`` then ``intercepts_[i]``.
    The objective is scikit-learn's: the (weighted) mean loss plus
    ``alpha ||W||^2 / (2 n)`` on the weights (not the intercepts); the regression loss is
    half the squared error averaged over outputs.
    """

    def __init__(self, estimator, *, loss, log_proba=None, classes=None,
                 multilabel=False):
        super().__init__(estimator, loss=loss, log_proba=log_proba, classes=classes)
        self.multilabel = multilabel
        self._shapes = [(c.shape, b.shape) for c, b in
                        zip(estimator.coefs_, estimator.intercepts_)]
        parts, mask = [], []
        for c, b in zip(estimator.coefs_, estimator.intercepts_):
            parts += [np.ravel(c), np.ravel(b)]
            mask += [np.ones(c.size), np.zeros(b.size)]
        self.theta = torch.as_tensor(np.concatenate(parts), dtype=torch.float64)
        self._weight_mask = torch.as_tensor(np.concatenate(mask), dtype=torch.float64)
        self.n_outputs = estimator.coefs_[-1].shape[1]
        self._activation = _ACTIVATIONS[estimator.activation]
        self._alpha = float(estimator.alpha)
        # scikit-learn divides the penalty by the weight sum of the batch it is applied
        # to: the whole data for lbfgs, a mini-batch for sgd and adam.
        self._batch = None
        if estimator.solver != "lbfgs":
            batch = estimator.batch_size
            self._batch = 200 if batch == "auto" else int(batch)

    def _layers(self, theta):
        start = 0
        for coef_shape, bias_shape in self._shapes:
            # math.prod, not np.prod: a polish reads the layers at every point it tries
            n_coef, n_bias = math.prod(coef_shape), math.prod(bias_shape)
            W = theta[start:start + n_coef].reshape(coef_shape)
            b = theta[start + n_coef:start + n_coef + n_bias]
            start += n_coef + n_bias
            yield W, b

    def forward(self, theta, X):
        layers = list(self._layers(theta))
        h = X
        for W, b in layers[:-1]:
            h = self._activation(h @ W + b)
        W, b = layers[-1]
        return h @ W + b

    def backpropagate(self, theta, X, y, weights, n):
        # Written out as scikit-learn's _backprop is: autograd's fixed cost per pass,
        # not the products, was most of a small net's (see the CHANGELOG).
        out, inputs = self.traced_forward(theta, X)
        derivatives = self.output_derivatives(out, y, curvature=False)
        if derivatives is None:  # a loss with no closed form: autograd
            return None
        value = (weights * self.sample_loss(out, y)).sum() / n
        delta = derivatives[0] * (weights / n)[:, None]
        slope = _ACTIVATION_SLOPES[self.estimator.activation]
        layers, parts = list(self._layers(theta)), []
        for i in range(len(layers) - 1, -1, -1):
            parts += [delta.sum(0), (inputs[i].T @ delta).reshape(-1)]
            if i:
                delta = delta @ layers[i][0].T
                if slope is not None:
                    delta = delta * slope(inputs[i])
        return torch.cat(parts[::-1]), value

    def penalty(self, theta, n):
        batch = n if self._batch is None else min(self._batch, n)
        return 0.5 * self._alpha * (self._weight_mask * theta**2).sum() / batch

    def linear_layers(self):
        # coefs_[i] (n_in, n_out) row by row, then intercepts_[i]: the layer's block of
        # theta is the (n_in + 1, n_out) matrix [W; b], read row by row.
        layers, start = [], 0
        for (n_in, n_out), _ in self._shapes:
            size = (n_in + 1) * n_out
            layers.append((torch.arange(start, start + size).reshape(n_in + 1, n_out),
                           True))
            start += size
        return layers

    def traced_forward(self, theta, X, probes=None):
        layers = list(self._layers(theta))
        h, inputs = X, []
        for i, (W, b) in enumerate(layers):
            inputs.append(h)
            s = torch.addmm(b, h, W) if probes is None else h @ W + b + probes[i]
            h = self._activation(s) if i < len(layers) - 1 else s
        return h, inputs

    def build(self, theta):
        est = copy.deepcopy(self.estimator)
        values = theta.detach().cpu().numpy()
        dtype = est.coefs_[0].dtype
        layers = list(self._layers(torch.as_tensor(values)))
        est.coefs_ = [W.numpy().astype(dtype).copy() for W, _ in layers]
        est.intercepts_ = [b.numpy().astype(dtype).copy() for _, b in layers]
        return est


class MLPLastLayerAdapter(LinearAdapter):
    """An MLP with every layer but the last frozen: a linear model on its last hidden
    features, so that values get the exact leave-one-out correction and the curvature
    is the small last-layer block.  ``encode_X`` maps inputs to those features once.
    """

    def __init__(self, mlp_adapter):
        est = mlp_adapter.estimator
        Adapter.__init__(self, est, loss=mlp_adapter.loss,
                         log_proba=mlp_adapter._log_proba, classes=mlp_adapter.classes)
        self.multilabel = mlp_adapter.multilabel
        self._mlp = mlp_adapter
        self._set_layer(torch.as_tensor(est.coefs_[-1].T, dtype=torch.float64),
                        est.intercepts_[-1], 0.5 * est.alpha)
        self._batch = mlp_adapter._batch

    def penalty(self, theta, n):
        batch = n if self._batch is None else min(self._batch, n)
        return (self._penalty_weights * theta**2).sum() / batch

    def encode_X(self, X):
        h = super().encode_X(X)
        for W, b in list(self._mlp._layers(self._mlp.theta))[:-1]:
            h = self._mlp._activation(h @ W + b)
        return h

    def build(self, theta):
        W = theta.detach().cpu().numpy().reshape(self.n_outputs, -1)
        full = self._mlp.theta.clone()
        last = W[:, : self.n_features].T.ravel(), W[:, self.n_features]
        full[-(last[0].size + last[1].size):] = torch.as_tensor(np.concatenate(last))
        return self._mlp.build(full)


class SkorchAdapter(Adapter):
    """A skorch net around any torch module, on the module's own device and dtype.

    ``theta`` concatenates the module's trainable parameters in ``named_parameters``
    order; ``forward`` is ``torch.func.functional_call`` on the fitted module (in eval
    mode, buffers as they are).  The objective is the criterion's mean plus the
    optimizer's ``weight_decay`` as ``weight_decay / 2 ||theta||^2``.  ``build`` writes
    parameters back with ``load_state_dict`` into a deep copy of the net.
    """

    # functional_call swaps the given tensors into the shared module for the call and
    # back after it: two threads interleaving that left the module holding plain
    # tensors, its parameters gone (measured: a 50,000-row net patched with a second
    # path, whose objective passes ran in two threads, came back with no trainable
    # parameter).
    pure_forward = False

    def __init__(self, net, *, loss, log_proba=None, classes=None, n_outputs):
        super().__init__(net, loss=loss, log_proba=log_proba, classes=classes)
        module = net.module_
        module.eval()  # dropout off, batch-norm statistics frozen
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        self._names = [name for name, _ in named]
        self._shapes = [p.shape for _, p in named]
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in named])
        self.dtype, self.device = self.theta.dtype, self.theta.device
        self._buffers = {name: b for name, b in module.named_buffers()}
        self._module = module
        self.n_outputs = n_outputs
        groups = net.optimizer_.param_groups
        decays = {group.get("weight_decay", 0.0) for group in groups}
        if any((group.get("decoupled_weight_decay")
                or isinstance(net.optimizer_, torch.optim.AdamW))  # torch before 2.6
               and group.get("weight_decay") for group in groups):
            # AdamW's decay shrinks the weights outside the adaptive step: its fixed
            # point is no optimum of the loss plus any L2 penalty.
            raise _unsupported(net, f"{type(net.optimizer_).__name__}'s decoupled "
                                    "weight decay is not the gradient of a penalty; "
                                    "use Adam or SGD with weight_decay (an L2 "
                                    "penalty), or weight_decay=0")
        if len(decays) > 1:
            raise _unsupported(net, "parameter groups with different weight decays")
        self._weight_decay = float(decays.pop()) if decays else 0.0

    def _params(self, theta):
        out, start = {}, 0
        for name, shape in zip(self._names, self._shapes):
            size = shape.numel()
            out[name] = theta[start:start + size].reshape(shape)
            start += size
        return out

    def forward(self, theta, X):
        out = torch.func.functional_call(self._module, (self._params(theta), self._buffers),
                                         (X,))
        return out.reshape(len(X), -1)

    def penalty(self, theta, n):
        return 0.5 * self._weight_decay * (theta**2).sum()

    def _linear_modules(self):
        """``(name, module)`` of each module holding trainable parameters, or None
        where one is not a ``torch.nn.Linear`` (with its weight trainable)."""
        owners = [(name, m) for name, m in self._module.named_modules()
                  if any(p.requires_grad for p in m.parameters(recurse=False))]
        for _, m in owners:
            if not isinstance(m, torch.nn.Linear) or not m.weight.requires_grad:
                return None
        return owners

    def linear_layers(self):
        owners = self._linear_modules()
        if owners is None:
            return None
        offsets = dict(zip(self._names, np.cumsum([0] + [s.numel() for s in self._shapes])))
        layers = []
        for name, m in owners:
            n_out, n_in = m.weight.shape
            # weight (n_out, n_in) row by row: position o * n_in + i holds W[i, o] of
            # the (n_in, n_out) layout.
            rows = [int(offsets[f"{name}.weight"]) + torch.arange(n_out * n_in).reshape(
                n_out, n_in).T]
            bias = m.bias is not None and m.bias.requires_grad
            if bias:
                rows.append(int(offsets[f"{name}.bias"]) + torch.arange(n_out)[None, :])
            layers.append((torch.cat(rows), bias))
        return layers

    def traced_forward(self, theta, X, probes):
        owners = self._linear_modules()
        inputs = [None] * len(owners)
        calls = [0] * len(owners)

        def hook(i):
            def record(module, args, result):
                calls[i] += 1
                inputs[i] = args[0]
                if args[0].ndim != 2:
                    raise ValueError(
                        f"hessian='ekfac' needs each Linear layer applied to (batch, "
                        f"features) inputs; {owners[i][0]!r} got shape "
                        f"{tuple(args[0].shape)}.")
                return result + probes[i]
            return record

        handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(owners)]
        try:
            out = self.forward(theta, X)
        finally:
            for handle in handles:
                handle.remove()
        if calls != [1] * len(owners):
            used = {name: c for (name, _), c in zip(owners, calls) if c != 1}
            raise ValueError(
                "hessian='ekfac' needs each Linear layer used exactly once per forward "
                f"pass; calls per layer: {used}.")
        return out, inputs

    def build(self, theta):
        net = copy.deepcopy(self.estimator)
        state = net.module_.state_dict()
        for name, value in self._params(theta.detach()).items():
            state[name] = value.to(state[name].dtype)
        net.module_.load_state_dict(state)
        return net


class SkorchLastLayerAdapter(LinearAdapter):
    """A skorch net with every layer but its last ``torch.nn.Linear`` frozen.

    The inputs of that layer (the last hidden features) are computed once, by a forward
    hook, so the patch is a linear model on them: exact leave-one-out values and a small
    curvature.  What follows the layer must be the identity (logits, regression), a
    softmax (probabilities for NLLLoss) or a squeeze; it is identified on a probe input
    and folded into the loss: NLL of softmax(z) becomes cross-entropy on z (skorch's
    ``log(p + eps)`` differs by at most eps / p).
    """

    sparse_design = False  # the frozen layers take dense tensors

    def __init__(self, adapter, n_features):
        net = adapter.estimator
        module = net.module_
        leaves = [(name, m) for name, m in module.named_modules()
                  if any(p.requires_grad for p in m.parameters(recurse=False))]
        name, layer = leaves[-1]
        if not isinstance(layer, torch.nn.Linear) or layer.bias is None:
            raise _unsupported(net, "parameters='last_layer' needs the module's last "
                                    "layer to be a torch.nn.Linear with a bias")
        Adapter.__init__(self, net, loss=adapter.loss, log_proba=adapter._log_proba,
                         classes=adapter.classes)
        self._full, self._layer = adapter, layer
        self._slots = [adapter._names.index(f"{name}.weight"),
                       adapter._names.index(f"{name}.bias")]
        self.dtype, self.device = adapter.dtype, adapter.device
        # torch's weight decay covers the bias too.
        decay = 0.5 * adapter._weight_decay
        self._set_layer(layer.weight.detach(), layer.bias.detach(), decay, decay,
                        scales_with_n=False)
        self._fold_output(n_features)

    def _fold_output(self, n_features):
        generator = torch.Generator(device=self.device).manual_seed(0)
        probe = torch.randn(16, n_features, dtype=self.dtype, device=self.device,
                            generator=generator)
        z = self._features(probe, output=True)
        out = self._full._module(probe).reshape(len(probe), -1)
        if out.shape == z.shape and torch.allclose(out, z, rtol=1e-5, atol=1e-6):
            return
        if out.shape == z.shape and torch.allclose(out, torch.softmax(z, dim=1),
                                                   rtol=1e-5, atol=1e-6):
            if self.loss is _nll_on_probabilities:
                self.loss, self._log_proba = _multinomial_loss, _multinomial_log_proba
                return
        raise _unsupported(self.estimator, "parameters='last_layer' needs the net's output "
                                           "to be its last Linear layer's output (or its "
                                           "softmax, with NLLLoss)")

    def _features(self, X, output=False):
        captured = {}

        def hook(module, args, result):
            captured["h"], captured["z"] = args[0], result

        handle = self._layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                self._full._module(X)
        finally:
            handle.remove()
        return captured["z"].reshape(len(X), -1) if output else captured["h"]

    def design(self, X):
        return torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype, device=X.device)], dim=1)

    def encode_X(self, X):
        X = super().encode_X(X)
        return torch.cat([self._features(X[i:i + 8192]) for i in range(0, len(X), 8192)])

    def build(self, theta):
        W = theta.detach().reshape(self.n_outputs, -1)
        params = self._full._params(self._full.theta.clone())
        names = self._full._names
        params[names[self._slots[0]]] = W[:, : self.n_features]
        params[names[self._slots[1]]] = W[:, self.n_features]
        return self._full.build(torch.cat([params[n].reshape(-1) for n in names]))


def _nll_on_probabilities(out, y):
    # skorch's get_loss takes log(p + eps) before NLLLoss.
    eps = torch.finfo(out.dtype).eps
    return -torch.log(out.gather(1, y[:, None])[:, 0] + eps)


def _log_of_probabilities(out):
    return torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))


def _mean_squared_loss(out, y):
    return ((y - out) ** 2).mean(dim=1)


def _mean_squared_derivatives(out, y, curvature):
    return _squared_derivatives(out, y, curvature, scale=1.0 / out.shape[1])


_OUTPUT_DERIVATIVES[_mean_squared_loss] = _mean_squared_derivatives


def _skorch_classifier(net, n_features):
    criterion = net.criterion_
    classes = np.asarray(net.classes_)
    if isinstance(criterion, torch.nn.NLLLoss):
        loss, log_proba = _nll_on_probabilities, _log_of_probabilities
    elif isinstance(criterion, torch.nn.CrossEntropyLoss):
        loss, log_proba = _multinomial_loss, _multinomial_log_proba
    else:
        raise _unsupported(net, f"criterion {type(criterion).__name__} is not supported; "
                                "use NLLLoss (module returns probabilities) or "
                                "CrossEntropyLoss (module returns logits)")
    _check_criterion(net)
    _check_width(net, n_features, len(classes), f"one per class ({len(classes)})")
    return SkorchAdapter(net, loss=loss, log_proba=log_proba, classes=classes,
                         n_outputs=len(classes))


def _skorch_binary_classifier(net, n_features):
    if not isinstance(net.criterion_, torch.nn.BCEWithLogitsLoss):
        raise _unsupported(net, f"criterion {type(net.criterion_).__name__} is not "
                                "supported; use BCEWithLogitsLoss")
    _check_criterion(net)
    _check_width(net, n_features, 1, "one logit")
    return SkorchAdapter(net, loss=_binary_logistic_loss, log_proba=_binary_logistic_log_proba,
                         classes=np.asarray(net.classes_), n_outputs=1)


def _skorch_regressor(net, n_features):
    if not isinstance(net.criterion_, torch.nn.MSELoss):
        raise _unsupported(net, f"criterion {type(net.criterion_).__name__} is not "
                                "supported; use MSELoss")
    _check_criterion(net)
    return SkorchAdapter(net, loss=_mean_squared_loss,
                         n_outputs=_output_width(net, n_features))


def _output_width(net, n_features):
    """The number of outputs the module gives one row."""
    module = net.module_
    param, training = next(module.parameters()), module.training
    module.eval()  # one row through batch norm in training mode is an error
    try:
        with torch.no_grad():
            probe = module(torch.zeros(1, n_features, dtype=param.dtype,
                                       device=param.device))
    finally:
        module.train(training)
    return probe.reshape(1, -1).shape[1]


def _check_width(net, n_features, expected, what):
    """Said, not refused: outputs no class was trained on change neither the loss nor
    its derivatives, but skorch's own predict_proba then has columns ``classes_``
    lacks (scikit-learn's checks train such a fixed-width module on fewer classes)."""
    width = _output_width(net, n_features)
    if width != expected:
        warnings.warn(f"The {type(net).__name__}'s module gives {width} outputs a row "
                      f"where the classes need {what}: its predict_proba has "
                      f"{width} columns beside {expected} classes_.", PumaWarning,
                      stacklevel=user_stacklevel())


def _check_criterion(net):
    """Refuse the criterion options the per-sample losses here do not carry: with them
    the net was trained on another objective than the one differentiated, and a patch
    would converge on the wrong one (a class-weighted net: completeness 0.42, unwarned)."""
    criterion = net.criterion_
    name = type(criterion).__name__
    if getattr(criterion, "reduction", "mean") != "mean":
        raise _unsupported(net, "the criterion must average over the batch "
                                "(reduction='mean')")
    for option in ("weight", "pos_weight"):
        if getattr(criterion, option, None) is not None:
            raise _unsupported(net, f"{name}({option}=...) weighs the classes, which the "
                                    "objective PUMA differentiates does not; train "
                                    f"without {option} (weights per row go in "
                                    "sample_weight)")
    if getattr(criterion, "label_smoothing", 0.0):
        raise _unsupported(net, f"{name}(label_smoothing={criterion.label_smoothing}) "
                                "trains on smoothed targets; train with "
                                "label_smoothing=0.0")


# ---------------------------------------------------------------------- factories


def _logistic_regression(est):
    penalty, l1_ratio = est.penalty, est.l1_ratio
    # scikit-learn >= 1.8 spells the penalty with l1_ratio; the old `penalty` still works.
    l1_part = {"l1": 1.0, "l2": 0.0, None: 0.0}.get(penalty, l1_ratio or 0.0)
    if l1_part != 0:
        # Name the setting that carries the L1 part: the old penalty="l1", or l1_ratio.
        setting = (f"penalty={penalty!r}" if penalty == "l1"
                   else f"l1_ratio={l1_ratio!r}"
                   + (f" (penalty={penalty!r})" if penalty == "elasticnet" else ""))
        raise _unsupported(est, f"{setting} has an L1 part, which is not differentiable; "
                                "use an L2 penalty (l1_ratio=0) or C=np.inf (no "
                                "penalty)")
    if est.solver == "liblinear":
        raise _unsupported(est, "solver='liblinear' penalises the intercept and fits "
                                "one-vs-rest; use solver='lbfgs'")
    no_penalty = penalty is None or est.C == np.inf
    penalty_coef = 0.0 if no_penalty else 1.0 / (2.0 * est.C)
    classes = est.classes_
    binary = len(classes) == 2
    return LinearAdapter(
        est,
        loss=_binary_logistic_loss if binary else _multinomial_loss,
        log_proba=_binary_logistic_log_proba if binary else _multinomial_log_proba,
        penalty_coef=penalty_coef,
        classes=classes,
        balance_by_weight=True,
    )


def _check_sgd_penalty(est):
    if est.penalty not in ("l2", None) and not (
        est.penalty == "elasticnet" and est.l1_ratio == 0
    ):
        raise _unsupported(est, f"penalty={est.penalty!r} is not differentiable; use "
                                "penalty='l2' or None")
    return 0.0 if est.penalty is None else est.alpha / 2.0


def _check_every_row_trained(est):
    """Early stopping holds out a random ``validation_fraction`` of the rows, which
    then never trained the model (MLP*'s only with solver 'sgd' or 'adam')."""
    if getattr(est, "early_stopping", False) and getattr(est, "solver", None) != "lbfgs":
        raise _unsupported(est, "early_stopping=True trained it on a random "
                                f"{1 - est.validation_fraction:.0%} of the rows, which "
                                "PUMA cannot tell from the rest; fit with "
                                "early_stopping=False")


def _sgd_classifier(est):
    _check_every_row_trained(est)
    if est.loss != "log_loss":
        raise _unsupported(est, f"loss={est.loss!r} has no probabilistic model; use "
                                "loss='log_loss'")
    classes = est.classes_
    binary = len(classes) == 2
    return LinearAdapter(
        est,
        loss=_binary_logistic_loss if binary else _ovr_logistic_loss,
        log_proba=_binary_logistic_log_proba if binary else _ovr_log_proba,
        penalty_coef=_check_sgd_penalty(est),
        penalty_scales_with_n=False,
        classes=classes,
    )


def _sgd_regressor(est):
    _check_every_row_trained(est)
    if est.loss != "squared_error":
        raise _unsupported(est, f"loss={est.loss!r} is not supported; use "
                                "loss='squared_error'")
    return LinearAdapter(
        est,
        loss=functools.partial(_squared_loss, scale=0.5),
        penalty_coef=_check_sgd_penalty(est),
        penalty_scales_with_n=False,
    )


def _ridge(est):
    if est.positive:
        raise _unsupported(est, "positive=True adds bound constraints")
    # sum_i (y_i - f_i)^2 + alpha ||w||^2, i.e. mean form with r = alpha ||w||^2 / n.
    alpha = np.asarray(est.alpha, dtype=np.float64)
    if np.any(alpha < 0):
        raise ValueError(f"Ridge alpha must be non-negative, got {est.alpha!r}.")
    return LinearAdapter(est, loss=functools.partial(_squared_loss, scale=1.0),
                         penalty_coef=alpha, centres=True)


def _linear_regression(est):
    if est.positive:
        raise _unsupported(est, "positive=True adds bound constraints")
    return LinearAdapter(est, loss=functools.partial(_squared_loss, scale=1.0),
                         centres=True)


def _mlp_classifier(est):
    _check_every_row_trained(est)
    if est.loss != "log_loss":
        raise _unsupported(est, f"loss={est.loss!r} is not supported; use 'log_loss'")
    kind = est.out_activation_
    if kind == "softmax":
        return MLPAdapter(est, loss=_multinomial_loss, log_proba=_multinomial_log_proba,
                          classes=est.classes_)
    if est._label_binarizer.y_type_ == "multilabel-indicator":
        return MLPAdapter(est, loss=_multilabel_loss, classes=est.classes_,
                          multilabel=True)
    return MLPAdapter(est, loss=_binary_logistic_loss, log_proba=_binary_logistic_log_proba,
                      classes=est.classes_)


def _mlp_regressor(est):
    _check_every_row_trained(est)
    if est.loss != "squared_error":
        raise _unsupported(est, f"loss={est.loss!r} is not supported; use "
                                "'squared_error'")
    # Half the squared error, averaged over the outputs.
    return MLPAdapter(est, loss=functools.partial(_squared_loss,
                                                  scale=0.5 / est.n_outputs_))


def _registry():
    from sklearn.linear_model import (
        LinearRegression,
        LogisticRegression,
        Ridge,
        SGDClassifier,
        SGDRegressor,
    )
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    return _skorch_registry() + [
        (LogisticRegression, _logistic_regression),
        (SGDClassifier, _sgd_classifier),
        (SGDRegressor, _sgd_regressor),
        (Ridge, _ridge),
        (LinearRegression, _linear_regression),
        (MLPClassifier, _mlp_classifier),
        (MLPRegressor, _mlp_regressor),
    ]


def _skorch_registry():
    try:
        from skorch import (
            NeuralNetBinaryClassifier,
            NeuralNetClassifier,
            NeuralNetRegressor,
        )
    except ImportError:  # skorch is optional
        return []
    # The binary classifier first: it is no subclass of the others, but keep the
    # most specific first anyway.
    return [
        (NeuralNetBinaryClassifier, _skorch_binary_classifier),
        (NeuralNetClassifier, _skorch_classifier),
        (NeuralNetRegressor, _skorch_regressor),
    ]


def is_skorch(estimator):
    return type(estimator).__module__.startswith("skorch")


class EstimatorIO:
    """How data reaches an estimator: scikit-learn models take it as it is."""

    classes = None

    def fit(self, estimator, X, y, sample_weight=None):
        if sample_weight is None:
            return estimator.fit(X, y)
        if not has_fit_parameter(estimator, "sample_weight"):
            raise ValueError(
                f"{type(estimator).__name__}.fit takes no sample_weight, so PumaPatcher "
                "cannot train it with sample weights. Train it yourself and wrap it in "
                "FrozenEstimator, or fit without sample_weight."
            )
        return estimator.fit(X, y, sample_weight=sample_weight)

    def fit_args(self, X, y, fitted=None):
        return X, y

    def X(self, X_original, X_checked):
        return X_original

    def encode_y(self, y):
        return y

    def decode(self, predictions):
        return predictions


class SkorchIO(EstimatorIO):
    """skorch nets take float32 arrays and class codes 0..K-1 (float 0/1 for the binary
    classifier), regressors a 2-D target; predictions are mapped back to the labels and
    target shape the user gave."""

    def __init__(self, net):
        from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier

        self._net = net
        self._binary = isinstance(net, NeuralNetBinaryClassifier)
        self._classifier = self._binary or isinstance(net, NeuralNetClassifier)
        self._dtype = np.float32
        self._ravel = False

    def fit_args(self, X, y, fitted=None):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected; it was "
                "flattened.",
                DataConversionWarning,
                stacklevel=user_stacklevel(),
            )
            y = y.ravel()
        if self._classifier:
            check_classification_targets(y)
        if fitted is not None:  # a frozen net: its labels and dtype are given
            self._dtype = _numpy_dtype(next(fitted.module_.parameters()).dtype)
            self.classes = np.asarray(getattr(fitted, "classes_", None)) \
                if self._classifier else None
        else:
            # The module's own dtype (float32 unless it says otherwise), read from its
            # initialised parameters (LazyLinear's included).
            self._net.initialize()
            self._dtype = _numpy_dtype(next(self._net.module_.parameters()).dtype)
            if self._classifier:
                self.classes = np.unique(y.ravel())
        if not self._classifier:
            self._ravel = y.ndim == 1
            y = np.asarray(y, dtype=self._dtype).reshape(len(y), -1)
        else:
            y = self.encode_y(y).astype(self._dtype if self._binary else np.int64)
        return np.asarray(X, dtype=self._dtype), y

    def X(self, X_original, X_checked):
        return np.asarray(X_checked, dtype=self._dtype)

    def fit(self, net, X, y, sample_weight=None):
        """Fit the net; sample weights make its loss the weighted mean over each batch.

        skorch has no sample_weight: the weights travel beside X in a dict (skorch slices
        dicts per batch), ``get_loss`` is swapped on this instance for one that weighs the
        criterion's per-sample losses, and ``infer`` hands the module X alone.  Both swaps
        are removed after the fit, leaving a plain net of the user's class.
        """
        if sample_weight is None:
            return net.fit(X, y)
        key = "_puma_sample_weight"
        plain_get_loss, plain_infer = net.get_loss, net.infer

        def infer(x, **fit_params):
            if isinstance(x, dict) and key in x:
                x = x["X"]
            return plain_infer(x, **fit_params)

        def get_loss(y_pred, y_true, X=None, training=False):
            if not (isinstance(X, dict) and key in X):
                return plain_get_loss(y_pred, y_true, X=X, training=training)
            criterion = net.criterion_
            reduction, criterion.reduction = criterion.reduction, "none"
            try:
                losses = plain_get_loss(y_pred, y_true, X=X, training=training)
            finally:
                criterion.reduction = reduction
            w = torch.as_tensor(X[key], dtype=losses.dtype, device=losses.device)
            return (w * losses.reshape(len(w), -1).mean(dim=1)).sum() / w.sum()

        net.infer, net.get_loss = infer, get_loss
        try:
            net.fit({"X": X, key: np.asarray(sample_weight, dtype=self._dtype)}, y)
        finally:
            del net.infer, net.get_loss
        return net

    def encode_y(self, y):
        if not self._classifier:
            return y
        return class_codes(self.classes, y)

    def decode(self, predictions):
        predictions = np.asarray(predictions)
        if self._classifier:
            return self.classes[predictions.astype(np.int64)]
        return predictions.ravel() if self._ravel else predictions


def _numpy_dtype(torch_dtype):
    return torch.empty(0, dtype=torch_dtype).numpy().dtype


def estimator_io(estimator):
    return SkorchIO(estimator) if is_skorch(estimator) else EstimatorIO()


def check_supported(estimator):
    """Raise UnsupportedEstimatorError unless some adapter handles this estimator type."""
    if not any(isinstance(estimator, cls) for cls, _ in _registry()):
        raise _unsupported(estimator, "no adapter exists for this model family")


def make_adapter(fitted_estimator, parameters="all", n_features=None):
    """The adapter for a fitted estimator; ``parameters="last_layer"`` freezes the rest."""
    for cls, factory in _registry():
        if isinstance(fitted_estimator, cls):
            if is_skorch(fitted_estimator):
                adapter = factory(fitted_estimator, n_features)
            else:
                adapter = factory(fitted_estimator)
            break
    else:
        raise _unsupported(fitted_estimator, "no adapter exists for this model family")
    if parameters == "last_layer" and isinstance(adapter, MLPAdapter):
        return MLPLastLayerAdapter(adapter)
    if parameters == "last_layer" and isinstance(adapter, SkorchAdapter):
        return SkorchLastLayerAdapter(adapter, n_features)
    return adapter
