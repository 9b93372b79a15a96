"""Warnings PUMA raises when a figure deserves the user's attention."""


class PumaWarning(UserWarning):
    """Base class of every warning sklearn-puma raises."""


class PartialRemovalWarning(PumaWarning):
    """The patch was shortened (``eta_ < 1``) to keep every criterion within ``delta``."""


class NonConvexWarning(PumaWarning):
    """The Hessian has negative eigenvalues; it was damped to be invertible."""


class IllConditionedWarning(PumaWarning):
    """The curvature is too ill-conditioned, even rescaled, to be inverted accurately in
    every direction; the message gives its condition number."""


class SolverWarning(PumaWarning):
    """The compensation solve stopped before convergence."""
