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

from ._warnings import PumaWarning

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


def _loss_rows(adapter, out, y, w, ctx):
    return _weighted_mean(adapter.sample_loss(out, y), w)[None]


def _log_loss_rows(adapter, out, y, w, ctx):
    log_p = adapter.log_proba(out).gather(1, y[:, None])[:, 0]
    return _weighted_mean(-log_p, w)[None]


def _brier_rows(adapter, out, y, w, ctx):
    p = adapter.log_proba(out).exp()
    squares = ((p - _onehot(y, p.shape[1], p.dtype)) ** 2).sum(dim=1)
    # scikit-learn's binary Brier score is half the two-column sum: (p_1 - y)^2.
    return _weighted_mean(squares / 2 if p.shape[1] == 2 else squares, w)[None]


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


def _accuracy_rows(adapter, out, y, w, ctx):
    return (1 - _weighted_mean(_soft_correct(adapter.log_proba(out), y), w))[None]


def _squared_error_rows(adapter, out, y, w, ctx):
    return _weighted_mean(((y - out) ** 2).mean(dim=1), w)[None]


def _per_class_loss_rows(adapter, out, y, w, ctx):
    losses = adapter.sample_loss(out, y)
    return torch.stack([_weighted_mean(losses, w * m) for m in ctx["class_masks"]])


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
    for outcome in (1, 0):  # true-positive, then false-positive rates
        given = (y == outcome).to(w.dtype)
        rates = torch.stack([_weighted_mean(positive, w * g * given)
                             for g in ctx["group_masks"]])
        rows.append(_largest_gap(rates))
    return torch.stack(rows)


# ------------------------------------------------------------------- contexts


def _per_class_context(adapter, y, w, groups):
    masks = [(y == k).to(w.dtype) for k in range(len(adapter.classes))]
    empty = [adapter.classes[k].item() for k, m in enumerate(masks) if float((w * m).sum()) == 0]
    if empty:
        warnings.warn(
            f"per_class_loss: no evaluation point of class(es) {list(empty)}; their "
            "rows are constant zero and cannot be protected.",
            PumaWarning,
            stacklevel=4,
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
        return {"group_masks": [m for m in masks if float((w * m).sum()) > 0]}

    return make


# ------------------------------------------------------------------ registry


class _Criterion:
    """One named criterion: its rows, their names, what model it needs, its context."""

    def __init__(self, name, rows, *, classifier=None, names=None, context=None):
        self.name, self.rows = name, rows
        self.classifier = classifier  # True: classifiers only, False: regressors, None: any
        self._names, self._context = names, context

    def row_names(self, adapter):
        return [self.name] if self._names is None else self._names(adapter)

    def context(self, adapter, y, w, groups):
        return None if self._context is None else self._context(adapter, y, w, groups)


_CRITERIA = {c.name: c for c in [
    _Criterion("loss", _loss_rows),
    _Criterion("log_loss", _log_loss_rows, classifier=True),
    _Criterion("brier", _brier_rows, classifier=True),
    _Criterion("ece", _ece_rows, classifier=True),
    _Criterion("accuracy", _accuracy_rows, classifier=True,
               names=lambda a: ["error_rate"]),
    _Criterion("squared_error", _squared_error_rows, classifier=False),
    _Criterion("per_class_loss", _per_class_loss_rows, classifier=True,
               names=lambda a: [f"loss[{c}]" for c in a.classes],
               context=_per_class_context),
    _Criterion("demographic_parity", _demographic_parity_rows, classifier=True,
               context=_group_context("demographic_parity")),
    _Criterion("equalized_odds", _equalized_odds_rows, classifier=True,
               names=lambda a: ["equalized_odds[tpr]", "equalized_odds[fpr]"],
               context=_group_context("equalized_odds")),
]}

CRITERION_NAMES = tuple(_CRITERIA)
# Those that compare groups, and so need fit(..., groups=...).
GROUP_CRITERIA = ("demographic_parity", "equalized_odds")


class _CallableCriterion(_Criterion):
    """A user's torch function ``f(output, y[, sample_weight=, groups=])``."""

    def __init__(self, fn):
        self.fn = fn
        accepted = inspect.signature(fn).parameters
        self._takes = {k for k in ("sample_weight", "groups") if k in accepted}
        super().__init__(getattr(fn, "__name__", type(fn).__name__), self._call)
        self._n_rows = None

    def _call(self, adapter, out, y, w, ctx):
        output = adapter.log_proba(out).exp() if adapter.is_classifier else out
        keep = ctx["keep"]
        kwargs = {}
        if "sample_weight" in self._takes:
            kwargs["sample_weight"] = w[keep]
        if "groups" in self._takes:
            kwargs["groups"] = ctx["groups"]
        value = self.fn(output[keep], y[keep], **kwargs)
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"criterion {self.name!r} must return a torch tensor (a scalar or one row "
                f"per entry) computed with torch from its inputs; got {type(value).__name__}."
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
        self._n_rows = len(self._call(adapter, adapter.forward(theta, X), y, w, ctx))


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


class BoundCriterion:
    """``theta -> C(theta)`` (m,) on fixed evaluation data; pure, so it can be vmapped.

    ``groups`` is a numpy array of group labels aligned with X (for the fairness rows).
    """

    def __init__(self, spec, adapter, X, y, weights, groups=None):
        criteria = resolve_criteria(spec)
        check_criterion_fits(criteria, adapter)
        self.adapter, self.X, self.y, self.weights = adapter, X, y, weights
        self._parts = []
        for c in criteria:
            ctx = c.context(adapter, y, weights, groups)
            if isinstance(c, _CallableCriterion):
                c.count_rows(adapter, adapter.theta, X, y, weights, ctx)
            self._parts.append((c.rows, ctx))
        self.names = [row for c in criteria for row in c.row_names(adapter)]

    def __call__(self, theta):
        out = self.adapter.forward(theta, self.X)
        return torch.cat(
            [rows(self.adapter, out, self.y, self.weights, ctx) for rows, ctx in self._parts]
        )
