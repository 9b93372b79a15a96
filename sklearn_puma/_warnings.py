"""Warnings PUMA raises when a figure deserves the user's attention."""

import os
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _between(filename):
    """A frame between the user's line and ours: this package, scikit-learn (its
    method wrappers, a Pipeline or a search calling us), contextlib (our context
    managers)."""
    return (filename.startswith(_PACKAGE) or filename.endswith("contextlib.py")
            or os.sep + os.path.join("sklearn", "") in filename)


def user_stacklevel():
    """The ``stacklevel`` that points a warning at the first frame not ``_between``:
    the user's line (a fixed level pointed into the package wherever a method reached
    the warning by another path)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and _between(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level


class PumaWarning(UserWarning):
    """Base class of every warning sklearn-puma raises.

    Filter on it to silence, record or escalate all of them at once.

    Examples
    --------
    >>> import warnings
    >>> from sklearn_puma import PartialRemovalWarning, PumaWarning
    >>> issubclass(PartialRemovalWarning, PumaWarning)
    True
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always", PumaWarning)
    ...     warnings.warn("eta_ = 0.5", PartialRemovalWarning)
    >>> [w.category.__name__ for w in caught]
    ['PartialRemovalWarning']
    """


class PartialRemovalWarning(PumaWarning):
    """The marked points' influence is not, or not provably, fully removed.

    Raised where the patch was shortened (``eta_ < 1``) to keep every criterion
    within ``delta``: the message gives the best worsening the compensation reached
    and whether ``max_weight`` may bind; a lower ``alpha`` or a larger ``delta`` can
    let the removal go through.  Also where the patch stopped short of the model
    optimal for ``sample_weight_`` (the message gives ``removal_residual_``), and where
    a network that fits its training data almost exactly has several such optima
    and a second path to one ended elsewhere (the message gives their agreement).

    Examples
    --------
    >>> import warnings
    >>> from sklearn_puma import PartialRemovalWarning
    >>> with warnings.catch_warnings():
    ...     # a partial removal stops the program instead of passing with a warning
    ...     warnings.simplefilter("error", PartialRemovalWarning)
    """


class NonConvexWarning(PumaWarning):
    """The Hessian has negative eigenvalues; it was damped to be invertible.

    A neural network's Hessian can be indefinite: ``damping="auto"`` shifts it by twice
    its estimated most negative eigenvalue, which the message gives.
    ``curvature="gauss_newton"`` avoids the shift.

    Examples
    --------
    >>> from sklearn_puma import NonConvexWarning, PumaWarning
    >>> issubclass(NonConvexWarning, PumaWarning)
    True
    """


class IllConditionedWarning(PumaWarning):
    """The curvature is too ill-conditioned to be inverted accurately in every direction.

    Even after rescaling to unit curvature per parameter; the message gives the
    condition number.

    Examples
    --------
    >>> from sklearn_puma import IllConditionedWarning, PumaWarning
    >>> issubclass(IllConditionedWarning, PumaWarning)
    True
    """


class SolverWarning(PumaWarning):
    """An iterative solve stopped at its bound before converging.

    The bound is an iteration count, a time limit or a stalled line search (conjugate
    gradients, LiSSA, a network's patch, the compensation solve); the message gives the
    residual or decrement reached.

    Examples
    --------
    >>> from sklearn_puma import PumaWarning, SolverWarning
    >>> issubclass(SolverWarning, PumaWarning)
    True
    """
