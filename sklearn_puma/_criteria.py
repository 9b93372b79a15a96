"""Performance criteria: differentiable functions of (model outputs, y[, groups]).

Every criterion is lower-is-better.  A criterion spec is a name, a callable, or a list
of them; each gives one or more rows.  Binding a spec to an adapter and evaluation data
gives a pure function ``theta -> C(theta)`` of shape (m,), which the influence core
differentiates (and vmaps over parameter vectors, so row functions must not branch on
data).

=======================  ==========================================================  ========
name                     rows (weighted means over the evaluation points)            models
=======================  ==========================================================  ========
``"loss"``               the estimator's own pointwise loss                          all
``"log_loss"``           ``-log p(y | x)`` (nats)                                    classif.
``"brier"``              ``sum_k (p_k - [y = k])^2``; binary: ``(p_1 - [y = 1])^2``,  classif.
                         as ``sklearn.metrics.brier_score_loss``
``"ece"``                smooth expected calibration error (probability units): the  classif.
                         binned top-label ECE with soft bins and a soft indicator
``"accuracy"``           smooth error rate ``1 - mean softmax(log p / T)_y``, T=0.05  classif.
``"squared_error"``      ``(y - f(x))^2`` averaged over outputs                      regress.
``"per_class_loss"``     the estimator's loss within each class, one row per class   classif.
``"demographic_parity"`` gap between groups in the mean predicted probability of    binary
                         the positive class (needs ``groups``)
``"equalized_odds"``     two rows: the between-group gaps in soft true- and false-   binary
                         positive rates (needs ``groups``)
=======================  ==========================================================  ========

A callable ``f(output, y)`` written in torch is a criterion too: ``output`` is the
class probabilities (classifiers) or the predictions (regressors), ``y`` the class
indices or targets of the evaluation points with positive weight; it returns a scalar
or a 1-D tensor (one row each), lower is better.  It may also take ``sample_weight``
and ``groups`` keyword arguments.
"""

import inspect
import warnings

import numpy as np
import torch

from ._names import CRITERION_NAMES, GROUP_CRITERIA  # noqa: F401 (re-exported)
from ._warnings import PumaWarning, user_stacklevel

# Temperature of the soft indicator [argmax p = y] in "accuracy" and "ece".
_SOFT_INDICATOR_TEMPERATURE = 0.05
# Smoothing of |x| as sqrt(x^2 + eps^2) in gaps (probability units).
_SOFT_ABS_EPS = 1e-3
_ECE_BINS = 10


def _weighted_mean(values, weights):
    total = weights.sum()
    return (weights * values).sum() / total.clamp_min(torch.finfo(values.dtype).tiny)


def _soft_abs(x):
    return torch.sqrt(x * x + _SOFT_ABS_EPS**2)


def _onehot(y, n_classes, dtype):
    # A comparison, not F.one_hot: one_hot is data-dependent and breaks vmap.
    return (y[:, None] == torch.arange(n_classes, device=y.device)).to(dtype)


def _soft_correct(log_p, y):
    """``softmax(log p / T)_y``: about 1 where the true class is the most probable."""
    return torch.softmax(log_p / _SOFT_INDICATOR_TEMPERATURE, dim=1).gather(1, y[:, None])[:, 0]


# ------------------------------------------------------------------------ rows
# A separable criterion is ``C_r = sum_i A_ri phi(f_i, y_i)``: a pointwise function of
# each point's outputs, weighted by coefficients that do not depend on theta.  Declaring
# that form lets a model linear in theta take the criterion's Hessian as Gram matrices
# of the design (``sum_i A_ri J_i^T grad^2 phi_i J_i``) instead of by autodiff over theta.


def _normalised(w):
    return w / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


def _mean_coefficients(adapter, y, w, ctx):
    return _normalised(w)[None]


def _loss_points(adapter, out, y):
    return adapter.sample_loss(out, y)


def _log_loss_points(adapter, out, y):
    return -adapter.log_proba(out).gather(1, y[:, None])[:, 0]


def _brier_points(adapter, out, y):
    p = adapter.log_proba(out).exp()
    squares = ((p - _onehot(y, p.shape[1], p.dtype)) ** 2).sum(dim=1)
    # scikit-learn's binary Brier score is half the two-column sum: (p_1 - y)^2.
    return squares / 2 if p.shape[1] == 2 else squares


def _accuracy_points(adapter, out, y):
    return 1 - _soft_correct(adapter.log_proba(out), y)


def _squared_error_points(adapter, out, y):
    return ((y - out) ** 2).mean(dim=1)


def _per_class_coefficients(adapter, y, w, ctx):
    return torch.stack([_normalised(w * m) for m in ctx["class_masks"]])


def _soft_ece(log_p, y, w, n_bins=_ECE_BINS):
    """Binned top-label ECE, made differentiable: each point belongs to every bin with a
    Gaussian weight around the bin centres (width one bin), its confidence is the soft
    maximum ``sum_k p_k softmax(log p / T)_k`` and its correctness the soft indicator;
    ``|acc - conf|`` per bin is smoothed as ``sqrt(x^2 + eps^2)``."""
    p = log_p.exp()
    sharp = torch.softmax(log_p / _SOFT_INDICATOR_TEMPERATURE, dim=1)
    confidence = (p * sharp).sum(dim=1)
    correct = sharp.gather(1, y[:, None])[:, 0]
    centres = (torch.arange(n_bins, dtype=p.dtype, device=p.device) + 0.5) / n_bins
    membership = torch.softmax(-((confidence[:, None] - centres) * n_bins) ** 2, dim=1)
    mass = (w[:, None] * membership).sum(dim=0)  # (bins,)
    safe = mass.clamp_min(torch.finfo(p.dtype).tiny)
    gap = ((w[:, None] * membership * (correct - confidence)[:, None]).sum(dim=0)) / safe
    return (mass * _soft_abs(gap)).sum() / w.sum().clamp_min(torch.finfo(p.dtype).tiny)


def _ece_rows(adapter, out, y, w, ctx):
    return _soft_ece(adapter.log_proba(out), y, w)[None]


def _largest_gap(rates):
    """The largest pairwise gap between group rates, each smoothed as sqrt(d^2 + eps^2)
    (the maximum over pairs is differentiable almost everywhere)."""
    gaps = _soft_abs(rates[:, None] - rates[None, :])
    i, j = torch.triu_indices(len(rates), len(rates), offset=1)
    return gaps[i, j].max()


def _demographic_parity_rows(adapter, out, y, w, ctx):
    positive = adapter.log_proba(out)[:, 1].exp()
    rates = torch.stack([_weighted_mean(positive, w * g) for g in ctx["group_masks"]])
    return _largest_gap(rates)[None]


def _equalized_odds_rows(adapter, out, y, w, ctx):
    positive = adapter.log_proba(out)[:, 1].exp()
    rows = []
    for cells in ctx["outcome_cells"]:  # true-positive, then false-positive rates
        if len(cells) < 2:  # no two groups to compare (said in the context)
            rows.append(positive.new_zeros(()))
            continue
        rates = torch.stack([_weighted_mean(positive, w * cell) for cell in cells])
        rows.append(_largest_gap(rates))
    return torch.stack(rows)


# ------------------------------------------------------------------- contexts


def _per_class_context(adapter, y, w, groups):
    masks = [(y == k).to(w.dtype) for k in range(len(adapter.classes))]
    empty = [plain_label(adapter.classes[k]) for k, m in enumerate(masks)
             if float((w * m).sum()) == 0]
    if empty:
        warnings.warn(
            f"per_class_loss: no evaluation point of class(es) {list(empty)}; their "
            "rows are constant zero and cannot be protected.",
            PumaWarning,
            stacklevel=user_stacklevel(),
        )
    return {"class_masks": masks}


def _group_context(name):
    def make(adapter, y, w, groups):
        if groups is None:
            raise ValueError(
                f"criterion {name!r} needs the sensitive group of each point: pass "
                "fit(..., groups=...) with one group label per training row, and "
                "eval_set=(X_eval, y_eval, groups_eval) when measuring on an eval_set."
            )
        if len(adapter.classes) != 2:
            raise ValueError(
                f"criterion {name!r} is defined for binary classifiers (the positive "
                f"class is classes_[1]); this one has {len(adapter.classes)} classes."
            )
        labels = np.unique(groups)
        masks = [torch.as_tensor(groups == g, device=w.device).to(w.dtype) for g in labels]
        present = [g for g, m in zip(labels, masks) if float((w * m).sum()) > 0]
        if len(present) < 2:
            raise ValueError(
                f"criterion {name!r} compares groups, but the evaluation points hold "
                f"only {len(present)} group(s) {[str(g) for g in present]}."
            )
        masks = [m for m in masks if float((w * m).sum()) > 0]
        if name != "equalized_odds":
            return {"group_masks": masks}
        # A group with no evaluation point of an outcome has no rate for it: it is left
        # out of that row's gap (as metrics.equalized_odds_difference leaves it), not
        # read as a rate of 0, which would make up a gap.
        cells, missing = [], []
        for outcome, rate in ((1, "true-positive"), (0, "false-positive")):
            given = (y == outcome).to(w.dtype)
            held = [float((w * m * given).sum()) > 0 for m in masks]
            kept = [m * given for m, h in zip(masks, held) if h]
            cells.append(kept)
            absent = [str(g) for g, h in zip(present, held) if not h]
            if absent:
                missing.append(
                    f"group(s) {absent} have no evaluation point labelled "
                    f"{plain_label(adapter.classes[outcome])!r}, so no {rate} rate"
                    + ("" if len(kept) >= 2 else
                       f" (the {rate} row compares no two groups: constant zero, it "
                       "cannot be protected)"))
        if missing:
            warnings.warn(
                f"equalized_odds: {'; '.join(missing)}; they are left out of that "
                "row's gap.", PumaWarning, stacklevel=user_stacklevel())
        return {"outcome_cells": cells}

    return make


# ------------------------------------------------------------------ registry


class _Criterion:
    """One named criterion: its rows, their names, what model it needs, its context.

    A separable criterion gives ``points`` (the pointwise function phi) and
    ``coefficients`` (the (m, n) matrix A) instead of ``rows``: ``C = A phi``.
    """

    def __init__(self, name, rows=None, *, points=None, coefficients=_mean_coefficients,
                 classifier=None, names=None, context=None):
        self.name, self.rows = name, rows
        self.points, self.coefficients = points, coefficients
        self.classifier = classifier  # True: classifiers only, False: regressors, None: any
        self._names, self._context = names, context

    @property
    def separable(self):
        return self.points is not None

    def row_names(self, adapter):
        return [self.name] if self._names is None else self._names(adapter)

    def context(self, adapter, y, w, groups):
        return None if self._context is None else self._context(adapter, y, w, groups)


_CRITERIA = {c.name: c for c in [
    _Criterion("loss", points=_loss_points),
    _Criterion("log_loss", points=_log_loss_points, classifier=True),
    _Criterion("brier", points=_brier_points, classifier=True),
    _Criterion("ece", _ece_rows, classifier=True),
    _Criterion("accuracy", points=_accuracy_points, classifier=True,
               names=lambda a: ["error_rate"]),
    _Criterion("squared_error", points=_squared_error_points, classifier=False),
    _Criterion("per_class_loss", points=_loss_points, coefficients=_per_class_coefficients,
               classifier=True, names=lambda a: [f"loss[{c}]" for c in a.classes],
               context=_per_class_context),
    _Criterion("demographic_parity", _demographic_parity_rows, classifier=True,
               context=_group_context("demographic_parity")),
    _Criterion("equalized_odds", _equalized_odds_rows, classifier=True,
               names=lambda a: ["equalized_odds[tpr]", "equalized_odds[fpr]"],
               context=_group_context("equalized_odds")),
]}

assert tuple(_CRITERIA) == CRITERION_NAMES, "the registry and _names disagree"


class _CallableCriterion(_Criterion):
    """A user's torch function ``f(output, y[, sample_weight=, groups=])``."""

    def __init__(self, fn):
        self.fn = fn
        accepted = inspect.signature(fn).parameters
        self._takes = {k for k in ("sample_weight", "groups") if k in accepted}
        super().__init__(getattr(fn, "__name__", type(fn).__name__), self._call)
        self._n_rows = None

    def _call(self, adapter, out, y, w, ctx):
        output = adapter.predictions(out)
        keep = ctx["keep"]
        kwargs = {}
        if "sample_weight" in self._takes:
            kwargs["sample_weight"] = w[keep]
        if "groups" in self._takes:
            kwargs["groups"] = ctx["groups"]
        try:
            value = self.fn(output[keep], y[keep], **kwargs)
        except RuntimeError as error:
            # torch's own message (vmap over .item(), a data-dependent branch) does not
            # say whose code it is.
            raise RuntimeError(
                f"criterion {self.name!r} raised: {error} (A criterion is differentiated "
                "through torch.func: it must use torch operations on its inputs, with no "
                ".item(), .numpy() or Python branches on their values.)"
            ) from error
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"criterion {self.name!r} must return a torch tensor (a scalar or one row "
                f"per entry) computed with torch from its inputs; got {type(value).__name__}."
            )
        if value.ndim > 1:
            raise ValueError(
                f"criterion {self.name!r} must return a scalar or a 1-D tensor (one entry "
                f"per criterion row); got shape {tuple(value.shape)}. Reduce it over the "
                "points (a mean), or return one row per entry of a 1-D tensor."
            )
        return value.reshape(-1)

    def row_names(self, adapter):
        if self._n_rows in (None, 1):
            return [self.name]
        return [f"{self.name}[{j}]" for j in range(self._n_rows)]

    def context(self, adapter, y, w, groups):
        keep = torch.nonzero(w > 0).flatten()
        return {"keep": keep, "groups": None if groups is None else groups[keep.cpu().numpy()]}

    def count_rows(self, adapter, theta, X, y, w, ctx):
        """Call the function once on the fitted model's outputs: its number of rows, and
        the checks that it is a differentiable function of them."""
        with torch.enable_grad():
            out = adapter.forward(theta, X).detach().requires_grad_(True)
            value = self._call(adapter, out, y, w, ctx)
        if not value.is_floating_point():
            raise TypeError(
                f"criterion {self.name!r} returned a {value.dtype} tensor; it must be a "
                "floating-point, differentiable function of the model's outputs (a "
                "count or a comparison has no gradient: use a smooth surrogate, e.g. "
                "the 'accuracy' criterion)."
            )
        if not value.requires_grad:
            raise TypeError(
                f"criterion {self.name!r} does not depend on the model's outputs through "
                "torch operations (its result carries no gradient: .item(), float(), "
                ".numpy() or torch.tensor(...) of a computed number cut the chain), so "
                "every value would be zero. Compute it with torch operations on `output`."
            )
        self._n_rows = len(value)


def _resolve(item):
    if callable(item) and not isinstance(item, str):
        return _CallableCriterion(item)
    if isinstance(item, str) and item in _CRITERIA:
        return _CRITERIA[item]
    raise ValueError(
        f"Unknown criterion {item!r}; accepted: {list(CRITERION_NAMES)}, a callable "
        "f(output, y) written in torch, or a list of them."
    )


def resolve_criteria(spec):
    """Validate a criterion spec (a name, a callable or a non-empty list of them)."""
    items = [spec] if isinstance(spec, str) or callable(spec) else list(spec)
    if not items:
        raise ValueError("criterion must be a name, a callable or a non-empty list of them.")
    return [_resolve(item) for item in items]


def check_criterion_fits(criteria, adapter):
    for c in criteria:
        if c.classifier and adapter.multilabel:
            raise ValueError(
                f"criterion {c.name!r} needs one label per sample; this "
                f"{type(adapter.estimator).__name__} is multilabel. Use 'loss'."
            )
        if c.classifier is not None and c.classifier != adapter.is_classifier:
            kind = "classifiers" if c.classifier else "regressors"
            raise ValueError(
                f"criterion {c.name!r} applies to {kind} only; "
                f"{type(adapter.estimator).__name__} is not one. Use 'loss'"
                + (" or 'squared_error'." if not adapter.is_classifier else ", 'log_loss'"
                   ", 'brier', 'ece', 'accuracy' or 'per_class_loss'.")
            )


def plain_label(label):
    """A class label as Python writes it (numpy scalars unwrapped)."""
    return label.item() if hasattr(label, "item") else label


def _unique(names):
    """Row names made unique (two lambdas, or "loss" twice), each repeat numbered from
    its second: they label the columns of ``value()``'s DataFrame and of
    ``transform``'s output."""
    out = []
    for name in names:
        unique, k = name, 1
        while unique in out:  # "loss_2" may itself be a given name
            k += 1
            unique = f"{name}_{k}"
        out.append(unique)
    return out


class BoundCriterion:
    """``theta -> C(theta)`` (m,) on fixed evaluation data; pure, so it can be vmapped.

    ``groups`` is a numpy array of group labels aligned with X (for the fairness rows).
    """

    def __init__(self, spec, adapter, X, y, weights, groups=None):
        criteria = resolve_criteria(spec)
        check_criterion_fits(criteria, adapter)
        self.adapter, self.X, self.y, self.weights = adapter, X, y, weights
        # Each part: ("points", phi, A) for a separable criterion, ("rows", fn, ctx).
        self._parts = []
        for c in criteria:
            ctx = c.context(adapter, y, weights, groups)
            if isinstance(c, _CallableCriterion):
                c.count_rows(adapter, adapter.theta, X, y, weights, ctx)
            if c.separable:
                self._parts.append(("points", c.points,
                                    c.coefficients(adapter, y, weights, ctx)))
            else:
                self._parts.append(("rows", c.rows, ctx))
        self.names = _unique([row for c in criteria for row in c.row_names(adapter)])
        self.separable = all(kind == "points" for kind, _, _ in self._parts)

    def of_outputs(self, out):
        """C as a function of the evaluation points' outputs (n, K)."""
        return torch.cat([
            data @ fn(self.adapter, out, self.y) if kind == "points"
            else fn(self.adapter, out, self.y, self.weights, data)
            for kind, fn, data in self._parts
        ])

    def __call__(self, theta):
        return self.of_outputs(self.adapter.outputs(theta, self.X))

    def training_loss_scales(self, X, s):
        """Per row of a separable criterion, ``a`` where the row is ``a sum_i s_i l_i``
        (the estimator's own loss on the training data X, weights proportional to s),
        else None."""
        scales = []
        for _, fn, A in self._parts:
            for row in A:
                ratio = float(row.sum() / s.sum())
                same = (fn is _loss_points and self.X is X
                        and torch.allclose(row, ratio * s, rtol=1e-12, atol=0))
                scales.append(ratio if same else None)
        return scales

    def output_derivatives(self, out, curvature=True):
        """``(R, B)``: ``R[r] = dC_r/d out`` (m, n, K), and for a separable criterion
        (``curvature``) the per-point output Hessians ``B[r, i] = A_ri grad^2 phi_i``
        (m, n, K, K), else None.  Autodiff over the outputs only, no graph over theta;
        the model's own loss takes its closed form."""
        out = out.detach()
        grads, hessians = [], []
        for kind, fn, data in self._parts:
            if kind == "rows":
                grads.append(_row_jacobian(
                    lambda o: fn(self.adapter, o, self.y, self.weights, data), out))
                continue
            first, second = _point_derivatives(self.adapter, fn, out, self.y,
                                               curvature and self.separable)
            grads.append(data[:, :, None] * first)
            if second is not None:
                hessians.append(data[:, :, None, None] * second)
        R = torch.cat(grads)
        return R, (torch.cat(hessians) if curvature and self.separable else None)


def _row_jacobian(rows, out):
    """``d rows / d out`` (m, n, K) by reverse mode, one backward pass per row."""
    with torch.enable_grad():
        o = out.clone().requires_grad_(True)
        values = rows(o)
        return torch.stack([
            torch.autograd.grad(values[r], o, retain_graph=r + 1 < len(values),
                                allow_unused=True)[0] if values.requires_grad
            else torch.zeros_like(o)
            for r in range(len(values))])


def _point_derivatives(adapter, points, out, y, curvature):
    """``(d phi_i / d f_i, grad^2 phi_i)`` per point, (n, K) and (n, K, K)."""
    if points is _loss_points:
        closed_form = adapter.output_derivatives(out, y, curvature)
        if closed_form is not None:
            return closed_form
    K = out.shape[1]
    with torch.enable_grad():
        o = out.clone().requires_grad_(True)
        # phi is separable: the gradient of its sum holds each point's own gradient,
        # and the gradient of that gradient's column k each point's Hessian row k.
        first = torch.autograd.grad(points(adapter, o, y).sum(), o,
                                    create_graph=curvature)[0]
        if not curvature:
            return first.detach(), None
        rows = [torch.autograd.grad(first[:, k].sum(), o, retain_graph=k + 1 < K,
                                    allow_unused=True)[0] for k in range(K)]
    second = torch.stack([torch.zeros_like(o) if r is None else r for r in rows], dim=1)
    return first.detach(), second.detach()
