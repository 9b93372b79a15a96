"""Performance criteria: differentiable functions of (model outputs, y), lower is better.

A criterion spec is a name or a list of names; each name gives one or more rows.
Binding a spec to an adapter and evaluation data gives a pure function
``theta -> C(theta)`` of shape (m,), which the influence core differentiates.

========================  =====================================================  ========
name                      rows                                                   models
========================  =====================================================  ========
``"loss"``                the estimator's own pointwise loss, weighted mean      all
``"log_loss"``            mean of ``-log p(y | x)``                               classifiers
``"squared_error"``       mean of ``(y - f(x))^2`` over samples and outputs      regressors
``"per_class_loss"``      the estimator's own loss averaged within each class,   classifiers
                          one row per class
========================  =====================================================  ========
"""

import warnings

import torch

from ._warnings import PumaWarning


def _weighted_mean(values, weights):
    total = weights.sum()
    return (weights * values).sum() / total.clamp_min(torch.finfo(values.dtype).tiny)


def _loss_rows(adapter, out, y, w, ctx):
    return _weighted_mean(adapter.sample_loss(out, y), w)[None]


def _log_loss_rows(adapter, out, y, w, ctx):
    log_p = adapter.log_proba(out).gather(1, y[:, None])[:, 0]
    return _weighted_mean(-log_p, w)[None]


def _squared_error_rows(adapter, out, y, w, ctx):
    return _weighted_mean(((y - out) ** 2).mean(dim=1), w)[None]


def _per_class_loss_rows(adapter, out, y, w, ctx):
    losses = adapter.sample_loss(out, y)
    return torch.stack([_weighted_mean(losses, w * m) for m in ctx["class_masks"]])


def _per_class_context(adapter, y, w):
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


# name -> (rows function, row names, needs a classifier (True/False/None = any), context)
_CRITERIA = {
    "loss": (_loss_rows, lambda a: ["loss"], None, None),
    "log_loss": (_log_loss_rows, lambda a: ["log_loss"], True, None),
    "squared_error": (_squared_error_rows, lambda a: ["squared_error"], False, None),
    "per_class_loss": (
        _per_class_loss_rows,
        lambda a: [f"loss[{c}]" for c in a.classes],
        True,
        _per_class_context,
    ),
}

CRITERION_NAMES = tuple(_CRITERIA)


def criterion_names(spec):
    """Validate a criterion spec (a name or a non-empty list of names); return the list."""
    names = [spec] if isinstance(spec, str) else list(spec)
    if not names:
        raise ValueError("criterion must be a name or a non-empty list of names.")
    for name in names:
        if name not in _CRITERIA:
            raise ValueError(
                f"Unknown criterion {name!r}; accepted: {list(CRITERION_NAMES)}, or a "
                "list of them."
            )
    return names


def check_criterion_fits(spec, adapter):
    for name in criterion_names(spec):
        needs_classifier = _CRITERIA[name][2]
        if needs_classifier and adapter.multilabel:
            raise ValueError(
                f"criterion {name!r} needs one label per sample; this "
                f"{type(adapter.estimator).__name__} is multilabel. Use 'loss'."
            )
        if needs_classifier is not None and needs_classifier != adapter.is_classifier:
            kind = "classifiers" if needs_classifier else "regressors"
            raise ValueError(
                f"criterion {name!r} applies to {kind} only; "
                f"{type(adapter.estimator).__name__} is not one. Use 'loss'"
                + (" or 'squared_error'." if not adapter.is_classifier else ", 'log_loss'"
                   " or 'per_class_loss'.")
            )


def row_names(spec, adapter):
    return [row for name in criterion_names(spec) for row in _CRITERIA[name][1](adapter)]


class BoundCriterion:
    """``theta -> C(theta)`` (m,) on fixed evaluation data; pure, so it can be vmapped."""

    def __init__(self, spec, adapter, X, y, weights):
        check_criterion_fits(spec, adapter)
        self.adapter, self.X, self.y, self.weights = adapter, X, y, weights
        self.names = row_names(spec, adapter)
        self._parts = []
        for name in criterion_names(spec):
            rows, _, _, make_context = _CRITERIA[name]
            ctx = make_context(adapter, y, weights) if make_context else None
            self._parts.append((rows, ctx))

    def __call__(self, theta):
        out = self.adapter.forward(theta, self.X)
        return torch.cat(
            [rows(self.adapter, out, self.y, self.weights, ctx) for rows, ctx in self._parts]
        )
