"""Inverse-curvature solvers: ``solve(B) = (H + damping I)^{-1} B``.

One small interface so that iterative solvers can join the exact one; each is tested
against the exact solve with the same damping.
"""

import warnings

import torch

from ._warnings import NonConvexWarning

# Eigenvalues below this fraction of the largest are treated as exact zeros: the
# directions the objective is flat in (the softmax's shared offset, collinear features)
# carry no gradient, so a pseudo-inverse is the right inverse there.
_RTOL = 1e-10


class ExactInverse:
    """Eigen-decomposition of the explicit Hessian.

    ``damping="auto"`` adds nothing to a positive semi-definite Hessian and, for an
    indefinite one, shifts the spectrum by the measured most negative eigenvalue (and
    warns with that figure).  A float adds that multiple of the identity.
    """

    name = "exact"

    def __init__(self, H, damping="auto"):
        if not torch.isfinite(H).all():
            raise FloatingPointError(
                "The Hessian has non-finite entries: the model's outputs overflow on "
                "this data. Scale the features or regularise the model more."
            )
        H = (H + H.T) / 2
        eigvals, eigvecs = torch.linalg.eigh(H)
        top = eigvals.abs().max().clamp_min(torch.finfo(H.dtype).tiny)
        self.min_eigenvalue = float(eigvals[0])
        tol = _RTOL * top
        if damping == "auto":
            damping = 0.0
            if self.min_eigenvalue < -tol:
                damping = 2 * -self.min_eigenvalue
                warnings.warn(
                    f"The Hessian is not positive semi-definite (smallest eigenvalue "
                    f"{self.min_eigenvalue:.3g}, largest {float(top):.3g}); damping it "
                    f"by {damping:.3g}. Values and patches are less reliable here.",
                    NonConvexWarning,
                    stacklevel=3,
                )
        self.damping = float(damping)
        shifted = eigvals + self.damping
        keep = shifted > tol
        self._basis = eigvecs[:, keep]
        self._inv_eigvals = 1.0 / shifted[keep]

    def solve(self, B):
        coords = self._basis.T @ B
        if coords.ndim == 1:
            return self._basis @ (self._inv_eigvals * coords)
        return self._basis @ (self._inv_eigvals[:, None] * coords)

    def matrix(self):
        return self._basis @ (self._inv_eigvals[:, None] * self._basis.T)


SOLVERS = {"exact": ExactInverse}


def make_inverse(kind, H, damping="auto"):
    """The inverse-curvature operator chosen by ``hessian=kind`` ("auto" -> exact)."""
    if kind == "auto":
        kind = "exact"
    return SOLVERS[kind](H, damping=damping)
