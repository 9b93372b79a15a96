"""Inverse-curvature solvers: ``solve(B) = (H + damping I)^{-1} B``.

One small interface (``solve``, ``name``, ``damping``), chosen with ``hessian=``:

* ``"exact"``   explicit Hessian: Cholesky where certified, else eigen-decomposition
                (pseudo-inverse of flat directions);
* ``"cg"``      conjugate gradients on Hessian-vector products, per right-hand side;
* ``"lissa"``   the Neumann series of Agarwal et al. (2017), as in Koh & Liang (2017);
* ``"lowrank"`` the top-k eigenpairs by Lanczos; the rest of the spectrum is treated as
                flat and only damped (Schioppa et al. 2022, "Arnoldi influence");
* ``"ekfac"``   dense networks: the eigenvalue-corrected Kronecker-factored
                Gauss-Newton curvature, block-diagonal over layers, preconditioning
                conjugate gradients on the Gauss-Newton products (``_kfac``);
* ``"auto"``    "exact" up to ``EXACT_MAX_PARAMS`` parameters, else "cg".

Each is tested against the exact solve with the same damping.  ``damping="auto"``
leaves a positive semi-definite curvature alone and shifts an indefinite one by twice
its (estimated) most negative eigenvalue, with a warning giving that figure.
"""

import math
import threading
import time
import warnings
from contextlib import contextmanager

import torch
from sklearn.utils import check_random_state

from ._warnings import (
    IllConditionedWarning,
    NonConvexWarning,
    SolverWarning,
    user_stacklevel,
)

# Eigenvalues below this fraction of the largest are treated as exact zeros: the
# directions the objective is flat in (the softmax's shared offset, collinear features)
# carry no gradient, so a pseudo-inverse is the right inverse there.
_RTOL = 1e-10
EXACT_MAX_PARAMS = 3000
# Largest condition-number bound at which the Hessian is inverted as it stands, without
# rescaling to a unit diagonal first.
_RAW_CONDITION = 1e6
# Wall-clock bound of one iterative solve (CG, LiSSA), on top of its iteration bound: a
# series on nearly singular curvature converges so slowly that its 20,000 terms took
# more than ten minutes.  On either bound it stops with a SolverWarning and the residual.
MAX_SOLVE_SECONDS = 300.0


_collector = threading.local()


def _warn(message, category):
    """``warnings.warn``, or, inside ``collected_warnings`` on this thread, kept for
    the caller to report once (a patch solves the curvature at every step).  Thread-
    local: ``warnings.catch_warnings`` swaps process-wide state, and two fits in two
    threads interleaving it left every later warning of the process swallowed."""
    caught = getattr(_collector, "caught", None)
    if caught is None:
        warnings.warn(message, category, stacklevel=user_stacklevel())
    else:
        caught.append((message, category))


@contextmanager
def collected_warnings():
    """The solvers' warnings on this thread, as ``(message, category)`` pairs."""
    outer = getattr(_collector, "caught", None)
    _collector.caught = caught = []
    try:
        yield caught
    finally:
        _collector.caught = outer


def _flat_tolerance(top, dtype):
    # Eigenvalues within rounding of zero: 1e-10 of the top in float64, and what the
    # dtype resolves in float32 (a float32 Hessian's "zeros" come out near 1e-6 of it).
    return max(_RTOL, 100 * torch.finfo(dtype).eps) * max(abs(top), 1e-300)


def _auto_damping(min_eigenvalue, max_eigenvalue, dtype):
    tol = _flat_tolerance(max_eigenvalue, dtype)
    if min_eigenvalue >= -tol:
        return 0.0
    damping = 2 * -min_eigenvalue
    _warn(
        f"The Hessian is not positive semi-definite (smallest eigenvalue "
        f"{min_eigenvalue:.3g}, largest {max_eigenvalue:.3g}); damping it by {damping:.3g}. "
        "Values and patches are less reliable here.",
        NonConvexWarning,
    )
    return damping


class ExactInverse:
    """The explicit Hessian, inverted by Cholesky where that is certified to equal the
    pseudo-inverse, else by eigen-decomposition; both in the Jacobi-scaled basis.

    Scaling first: ``H = S^-1 H' S^-1`` with ``S = diag(H)^-1/2``, and ``H'`` (unit
    diagonal) is what is factorised.  A feature measured in other units (one column
    10^5 times the others) or a penalty that swamps the unpenalised intercept
    (``C=1e-12``) spread the raw spectrum over ten or more orders of magnitude, and a
    cut-off relative to the largest eigenvalue then threw the small ones away as
    "flat", silently; the scaled spectrum has no such spread (the scaling is the
    units), so only genuinely flat directions fall under it.  A scaled condition
    number past what float64 resolves is still said, with its figure
    (``IllConditionedWarning``).

    ``flat`` (p, q), orthonormal columns the adapter knows the objective is flat along
    whatever the data (a softmax's shared offset): with no damping, and ``H F = 0``
    checked, ``H' + s F' F'^T`` is inverted instead and ``F' F'^T / s`` taken back off.
    The result, in the original basis, is projected off the flat directions (those
    known and those found), so it is the Moore-Penrose pseudo-inverse: a step has no
    component along a direction the data do not determine.  The Cholesky result is
    kept only when its condition number, bounded by Frobenius norms, certifies that no
    other eigenvalue falls under the cut-off the eigen-decomposition would have treated
    as flat; a Hessian that is indefinite, singular elsewhere or nearly so takes the
    eigen-decomposition, with its warnings.  Cholesky and its inverse cost about a
    fifth of ``eigh``.
    """

    name = "exact"

    def __init__(self, H, damping="auto", flat=None):
        if not torch.isfinite(H).all():
            raise FloatingPointError(
                "The Hessian has non-finite entries: the model's outputs overflow on "
                "this data. Scale the features or regularise the model more."
            )
        H = (H + H.T) / 2
        self._matrix = None
        # The raw smallest eigenvalue, measured only where an indefinite curvature
        # needs its figure to be damped.
        self.min_eigenvalue = None
        self.condition = None  # of the matrix factorised (a bound, by Cholesky)
        self.method = "cholesky"
        # The raw Cholesky where it is well conditioned as it stands (the common case,
        # and the cheapest: no scaling passes over the p x p matrix), else in the
        # scaled basis, else the eigen-decomposition.
        if not (self._by_cholesky(H, damping, flat, scaled=False)
                or self._by_cholesky(H, damping, flat, scaled=True)):
            self._by_eigh(H, damping)

    @staticmethod
    def _jacobi(A):
        """``diag(A)^-1/2`` where the diagonal resolves, else 1 (an all-zero column,
        a dead unit: nothing to scale, and flat either way)."""
        d = A.diagonal().abs()
        floor = 100 * torch.finfo(A.dtype).eps * float(d.max().clamp_min(1e-300))
        return torch.where(d > floor, d.clamp_min(1e-300).rsqrt(), torch.ones_like(d))

    def _unscale(self, inverse, scale, null):
        """``S inverse S`` projected off the (orthonormal) columns of ``null``."""
        inverse = scale[:, None] * inverse * scale[None, :]
        if null is not None and null.shape[1]:
            P = torch.eye(len(inverse), dtype=inverse.dtype, device=inverse.device) \
                - null @ null.T
            inverse = P @ inverse @ P
        return (inverse + inverse.T) / 2

    def _by_cholesky(self, H, damping, flat, scaled):
        shift = 0.0 if damping == "auto" else float(damping)
        A = H + shift * torch.eye(len(H), dtype=H.dtype, device=H.device) if shift else H
        deflate = flat is not None and flat.shape[1] > 0 and shift == 0 \
            and float(H.diagonal().abs().max()) > 0
        # The adapter's flat directions hold exactly only where the curvature is not
        # rounding noise (a float32 Hessian near zero): check them before relying on it.
        tol = max(_RTOL, 100 * torch.finfo(H.dtype).eps)
        if deflate and not float(torch.linalg.matrix_norm(H @ flat)) \
                <= tol * float(torch.linalg.matrix_norm(H)):
            return False
        if scaled:
            scale = self._jacobi(A)
            A = scale[:, None] * A * scale[None, :]
            # H F = 0 is H' (S^-1 F) = 0: the flat directions of the scaled matrix.
            F = torch.linalg.qr(flat / scale[:, None])[0] if deflate else None
            size = 1.0  # the scaled diagonal is 1: a shift of the same size
        else:
            F, size = flat, float(H.diagonal().abs().max())
        if deflate:
            A = A + size * (F @ F.T)
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) != 0:
            return False
        inverse = torch.cholesky_inverse(L)
        # lambda_min(A) >= 1 / ||A^-1||_F and lambda_max(A) <= ||A||_F: every eigenvalue
        # is above the flat tolerance of the largest, so none would have been dropped.
        # Unscaled, the bound must also be small enough that the inverse is accurate to
        # about 1e-10 (condition 1e6); past that the scaled basis does better.
        bound = float(torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(inverse))
        if not bound < (1.0 / tol if scaled else min(_RAW_CONDITION, 1.0 / tol)):
            return False
        if deflate:
            inverse = inverse - (F @ F.T) / size
        self.damping, self.condition = shift, bound
        self._matrix = (self._unscale(inverse, scale, flat if deflate else None) if scaled
                        else inverse)
        return True

    def _by_eigh(self, H, damping):
        self.method = "eigh"
        eye = torch.eye(len(H), dtype=H.dtype, device=H.device)
        decomposed = None  # the scaled H's eigen-decomposition, where no damping follows
        if damping == "auto":
            # Congruence keeps the signs of the eigenvalues (Sylvester's law): the
            # scaled spectrum says whether H is indefinite, the raw one by how much.
            scale = self._jacobi(H)
            decomposed = torch.linalg.eigh(scale[:, None] * H * scale[None, :])
            scaled = decomposed[0]
            if float(scaled[0]) < -_flat_tolerance(float(scaled.abs().max()), H.dtype):
                decomposed = None
                raw = torch.linalg.eigvalsh(H)
                self.min_eigenvalue = float(raw[0])
                # The scaled spectrum resolves a negative direction the raw one may
                # put within its rounding: damp it all the same.
                top_raw = float(raw.abs().max())
                damping = _auto_damping(
                    min(self.min_eigenvalue, -2 * _flat_tolerance(top_raw, H.dtype)),
                    top_raw, H.dtype)
            else:
                damping = 0.0
        self.damping = float(damping)
        if decomposed is None:
            A = H + self.damping * eye if self.damping else H
            scale = self._jacobi(A)
            decomposed = torch.linalg.eigh(scale[:, None] * A * scale[None, :])
        eigvals, eigvecs = decomposed
        top = float(eigvals.abs().max())
        tol = _flat_tolerance(top, H.dtype)
        if eigvals[0] < -tol:
            _warn(
                f"damping={self.damping:g} leaves the Hessian indefinite (smallest damped "
                f"eigenvalue {float(eigvals[0]):.3g} after unit-diagonal scaling); its "
                f"{int((eigvals < -tol).sum())} negative direction(s) are dropped. Use "
                "damping='auto' or a larger value.",
                NonConvexWarning,
            )
        keep = eigvals > tol
        kept = eigvals[keep]
        self.condition = float(top / kept.min()) if len(kept) else float("inf")
        # Eigenvalues at rounding level are the flat directions (collinear features, a
        # dead unit); one above it but under the cut-off is a direction the data do
        # determine that float64 cannot invert accurately: said, with the figure.
        rounding = 1e3 * torch.finfo(H.dtype).eps * top
        unresolved = (~keep) & (eigvals >= -tol) & (eigvals.abs() > rounding)
        if bool(unresolved.any()):
            _warn(
                f"The curvature is ill-conditioned even after scaling each parameter to "
                f"unit curvature: {int(unresolved.sum())} direction(s) with eigenvalues "
                f"down to {float(eigvals[unresolved].abs().min() / top):.3g} of the "
                f"largest (condition number {top / float(eigvals[unresolved].abs().min()):.3g})"
                " are treated as flat. Values and patches along them are unreliable: "
                "remove near-duplicate features or regularise the model more.",
                IllConditionedWarning,
            )
        null = None
        if not bool(keep.all()):
            null, _ = torch.linalg.qr(scale[:, None] * eigvecs[:, ~keep])
        basis = eigvecs[:, keep]
        inverse = basis @ (basis.T / kept[:, None])
        self._matrix = self._unscale(inverse, scale, null)

    def solve(self, B):
        return self._matrix @ B

    def matrix(self):
        return self._matrix


def positive_semidefinite(H):
    """Whether the symmetric ``H`` has no eigenvalue negative beyond rounding, judged
    in the basis where each parameter has unit curvature (as ``ExactInverse`` does:
    congruence keeps the signs, and the scaled spectrum resolves a negative direction
    the raw one may put within its rounding)."""
    H = (H + H.T) / 2
    scale = ExactInverse._jacobi(H)
    values = torch.linalg.eigvalsh(scale[:, None] * H * scale[None, :])
    return float(values[0]) >= -_flat_tolerance(float(values.abs().max()), H.dtype)


def lanczos(hvp, p, k, *, dtype, device, generator=None):
    """Ritz values (ascending) and vectors of the symmetric operator ``hvp``, k steps.

    Full re-orthogonalisation: k is small (tens to a few hundred) next to p.
    """
    k = min(k, p)
    q = torch.randn(p, dtype=dtype, device=device, generator=generator)
    q = q / q.norm()
    # The Lanczos vectors as rows: each re-orthogonalisation reads contiguous memory
    # (as columns of a (p, k) matrix, a large p made it most of the run).
    Q = torch.zeros(k, p, dtype=dtype, device=device)
    alpha = torch.zeros(k, dtype=dtype, device=device)
    beta = torch.zeros(k, dtype=dtype, device=device)
    steps = k
    for j in range(k):
        Q[j] = q
        w = hvp(q)
        alpha[j] = q @ w
        w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = w.norm()
        if j + 1 < k:
            if b <= 1e-10 * alpha[: j + 1].abs().max().clamp_min(1e-300):
                steps = j + 1  # invariant subspace found: the Ritz pairs are exact
                break
            beta[j] = b
            q = w / b
    T = torch.diag(alpha[:steps]) + torch.diag(beta[: steps - 1], 1) + torch.diag(
        beta[: steps - 1], -1)
    values, vectors = torch.linalg.eigh(T)
    return values, Q[:steps].T @ vectors


class _OperatorInverse:
    """Shared set-up of the Hessian-vector-product solvers: spectrum ends, damping.

    The ends of the spectrum cost a Lanczos run; they are estimated only when the
    damping is "auto" or the solver needs them (``needs_spectrum``).
    """

    needs_spectrum = False

    def __init__(self, hvp, p, *, dtype, device, damping="auto", random_state=None,
                 spectrum_steps=40):
        self._hvp, self.p = hvp, p
        self.dtype, self.device = dtype, device
        self._generator = torch.Generator(device=device)
        # Deterministic by default: the Lanczos start vector decides the estimates.
        seed = 0 if random_state is None else check_random_state(random_state).randint(2**31)
        self._generator.manual_seed(int(seed))
        self.min_eigenvalue = self.max_eigenvalue = None
        if damping == "auto" or self.needs_spectrum:
            values, _ = lanczos(hvp, p, spectrum_steps, dtype=dtype, device=device,
                                generator=self._generator)
            # Lanczos finds the ends of the spectrum first: good estimates of both.
            self.min_eigenvalue, self.max_eigenvalue = float(values[0]), float(values[-1])
        if damping == "auto":
            damping = _auto_damping(self.min_eigenvalue, self.max_eigenvalue, dtype)
        self.damping = float(damping)

    def _damped(self, V):
        """``(H + damping I) V`` for a vector or, column by column, a (p, m) matrix."""
        if V.ndim == 1 or getattr(self._hvp, "batched", False):
            return self._hvp(V) + self.damping * V
        return torch.func.vmap(self._hvp, in_dims=1, out_dims=1)(V) + self.damping * V


class CGInverse(_OperatorInverse):
    """Conjugate gradients on ``H + damping I``; warns with the residual if it stalls."""

    name = "cg"

    def __init__(self, hvp, p, *, tol=1e-6, max_iter=None, **kwargs):
        super().__init__(hvp, p, **kwargs)
        self.tol, self.max_iter = tol, max_iter or 10 * p
        # A smallest eigenvalue at rounding level of zero (either sign: -1e-16 on one
        # CPU, +1e-17 on another, for the same singular curvature) is a flat direction,
        # along which CG from zero never moves (it gives the pseudo-inverse); only a
        # negative one beyond rounding breaks it.
        if self.min_eigenvalue is not None and self.min_eigenvalue + self.damping < \
                -_flat_tolerance(self.max_eigenvalue, self.dtype):
            _warn(
                f"CG needs positive definite curvature; the damped smallest eigenvalue is "
                f"{self.min_eigenvalue + self.damping:.3g}. Pass a larger damping.",
                SolverWarning,
            )

    def solve(self, B):
        """Block CG: every column runs its own recurrence, sharing the products."""
        vector = B.ndim == 1
        B = B[:, None] if vector else B
        X, residuals, bound, _ = block_cg(self._damped, B, self.tol, self.max_iter)
        residual = float(residuals.max())
        if residual > math.sqrt(self.tol) or not math.isfinite(residual):
            _warn(
                f"CG stopped after {bound} with relative residual {residual:.3g} "
                f"(tolerance {self.tol:g}); raise damping for a faster solve.",
                SolverWarning,
            )
        return X[:, 0] if vector else X


def block_cg(apply, B, tol, max_iter, precondition=None, patience=None,
             seconds=None, energy_tol=None):
    """``apply(X) = B`` by (preconditioned) conjugate gradients, each column of B (p, m)
    its own recurrence, the products shared; from zero, so a flat direction the
    preconditioner leaves out stays out (the pseudo-inverse's answer).  Stops where
    every column's residual is under ``tol`` relative to its right-hand side, after
    ``max_iter`` iterations, or after ``seconds`` (``MAX_SOLVE_SECONDS`` by default).
    Each column's iterate with
    the smallest residual is tracked: on a singular curvature a right-hand side with a part
    outside its range (a held-out gradient, on a net with more parameters than rows
    times outputs) has no solution, and the iterates then grow without bound (a float32
    skorch net's residual rose from under 1 to 2); where it stops short, each column
    keeps whichever of the last iterate and that one has the smaller measured
    residual.  With ``patience``, it also stops once no column's smallest residual has
    fallen by 1% in that many iterations (nor its preconditioned norm, where
    ``energy_tol`` is given).  With ``energy_tol`` a column also iterates until its
    preconditioned residual norm, ``sqrt(r.M r)`` (``M`` the preconditioner), is under
    ``energy_tol`` relative to its first (see ``_kfac._REFINE_ENERGY_TOL``): a
    refinement past ``tol``, so a column stopped by a bound with its residual under
    ``tol`` but that norm not yet counts as converged (its residual is what is
    reported).

    Returns ``(X, residuals, bound, steps)``: each column's relative residual ``||B -
    apply(X)|| / ||B||``, measured; what ended the iterations, in words; and the
    iterations taken (products, besides the residuals').
    """
    precondition = precondition or (lambda R: R)
    X = torch.zeros_like(B)
    R = B.clone()
    Z = precondition(R)
    D = Z.clone()
    rz = (R * Z).sum(0)
    rz_first = rz.abs().clamp_min(1e-300)
    b_norm = B.norm(dim=0).clamp_min(1e-300)
    best, best_residual = X.clone(), torch.ones_like(b_norm)
    seconds = MAX_SOLVE_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + seconds
    iterations, steps, timed_out, stalled = 0, 0, False, False
    best_energy = torch.ones_like(b_norm)
    mark, energy_mark = best_residual.clone(), best_energy.clone()
    for iterations in range(1, max_iter + 1):  # noqa: B007 (read after)
        relative = R.norm(dim=0) / b_norm
        better = relative < best_residual
        best[:, better], best_residual = X[:, better], torch.minimum(relative, best_residual)
        active = ~(relative <= tol)  # NaN counts as not converged
        if energy_tol is not None:
            energy = (rz.abs() / rz_first).sqrt()
            best_energy = torch.minimum(energy, best_energy)
            active |= ~(energy <= energy_tol)
        if not active.any():
            break
        if time.monotonic() > deadline:
            timed_out = True
            break
        if patience and iterations % patience == 0:
            if not bool((best_residual < 0.99 * mark).any()
                        or (best_energy < 0.99 * energy_mark).any()):
                stalled = True
                break
            mark, energy_mark = best_residual.clone(), best_energy.clone()
        AD = apply(D)
        steps += 1
        step = torch.where(active, rz / (D * AD).sum(0), torch.zeros_like(rz))
        X = X + step * D
        R = R - step * AD
        Z = precondition(R)
        rz_new = (R * Z).sum(0)
        D = Z + torch.where(active, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz)) * D
        rz = rz_new
    relative = R.norm(dim=0) / b_norm
    bound = (f"its time bound ({seconds:g} s)" if timed_out
             else f"{steps} of at most {max_iter} iterations"
             + (f" (no progress in the last {patience})" if stalled else ""))
    if bool((relative <= tol).all()):
        return X, (B - apply(X)).norm(dim=0) / b_norm, bound, steps
    # Stopped short: the recurrence's residual drifts from the true one on an
    # inconsistent system (0.52 read where 1.55 was measured), so the last iterate and
    # the one the recurrence called best are compared by measured residuals.
    measured_last = (B - apply(X)).norm(dim=0) / b_norm
    measured_best = (B - apply(best)).norm(dim=0) / b_norm
    take = measured_last <= measured_best  # False where the last is NaN
    return (torch.where(take, X, best), torch.where(take, measured_last, measured_best),
            bound, steps)


class LissaInverse(_OperatorInverse):
    """``x <- b + (I - (H + damping I) / scale) x``, ``scale`` above the top eigenvalue.

    Deterministic (full-data Hessian-vector products); stops when the update is below
    ``tol`` relative to x, and warns with that figure after ``max_iter`` terms.
    """

    name = "lissa"
    needs_spectrum = True  # the series' scale must exceed the top eigenvalue

    def __init__(self, hvp, p, *, tol=1e-5, max_iter=20000, **kwargs):
        super().__init__(hvp, p, **kwargs)
        self.tol, self.max_iter = tol, max_iter
        self.scale = 1.1 * (self.max_eigenvalue + self.damping)

    def solve(self, B):
        X = B.clone()
        deadline = time.monotonic() + MAX_SOLVE_SECONDS
        for terms in range(1, self.max_iter + 1):  # noqa: B007 (read after)
            update = B - self._damped(X) / self.scale
            change = float(((update).norm(dim=0) / (X + update).norm(dim=0).clamp_min(1e-300)
                            ).max())
            X = X + update
            if change <= self.tol:
                return X / self.scale
            if time.monotonic() > deadline:
                break
        bound = (f"{terms} terms, its time bound ({MAX_SOLVE_SECONDS:g} s)"
                 if terms < self.max_iter else f"{self.max_iter} terms")
        _warn(
            f"LiSSA did not converge in {bound} (last relative change {change:.3g}, "
            f"tolerance {self.tol:g}); raise damping for a faster series.",
            SolverWarning,
        )
        return X / self.scale


class LowRankInverse(_OperatorInverse):
    """Top-``rank`` eigenpairs by Lanczos; the rest of the spectrum only damped.

    Ritz values at rounding level of the largest are flat directions (a dead unit's
    weights, collinear features) and are pseudo-inverted (left out), as the exact solve
    does.  Where Lanczos spanned the whole space (``2 rank >= p``, or an invariant
    subspace found) nothing else is left and there is no "rest" to damp; otherwise the
    rest needs a positive damping, and without one it takes the smallest eigenvalue kept
    (a flat direction's would divide by zero: NaN parameters, reported as success).
    """

    name = "lowrank"

    def __init__(self, hvp, p, *, rank=100, **kwargs):
        super().__init__(hvp, p, **kwargs)
        values, vectors = lanczos(hvp, p, min(p, 2 * rank), dtype=self.dtype,
                                  device=self.device, generator=self._generator)
        # Complete only where Lanczos ran all p steps: an early stop finds a subspace
        # invariant for its start vector, which misses repeated eigenvalues' other
        # directions.  Then every Ritz pair is kept (it is the whole spectrum, exact),
        # not only the top ``rank``: dropping the smallest, which weigh most in an
        # inverse, gave values uncorrelated with the exact ones.
        self._complete = len(values) == p
        if not self._complete:
            top = torch.argsort(values.abs(), descending=True)[:rank]
            values, vectors = values[top], vectors[:, top]
        flat = values.abs() <= _flat_tolerance(float(values.abs().max()), self.dtype)
        if self.damping == 0 and bool(flat.any()):
            values, vectors = values[~flat], vectors[:, ~flat]
        self._values, self._vectors = values, vectors
        if self.damping <= 0 and not self._complete:
            # The discarded spectrum needs some curvature to be inverted at all.
            smallest = float(values.abs().min()) if len(values) else 1.0
            _warn(
                f"hessian='lowrank' needs a positive damping for the discarded spectrum "
                f"(damping={self.damping:g}); using the smallest kept eigenvalue, "
                f"{smallest:.3g}.",
                SolverWarning,
            )
            self.damping = smallest

    def solve(self, B):
        U = self._vectors
        coords = U.T @ B
        inv = 1.0 / (self._values + self.damping)
        inside = U @ (inv[:, None] * coords if coords.ndim > 1 else inv * coords)
        if self._complete and self.damping == 0:
            return inside  # the rest is the flat directions: the pseudo-inverse's zero
        return inside + (B - U @ coords) / self.damping


def make_inverse(kind, *, p, dtype, device, hessian=None, hvp=None, damping="auto",
                 random_state=None, rank=100, flat=None, kronecker=None):
    """The inverse-curvature operator chosen by ``hessian=kind``.

    ``hessian`` is a callable returning the explicit matrix (used by "exact", with the
    known ``flat`` directions), ``kronecker`` one returning the EK-FAC inverse (used by
    "ekfac", see ``_kfac``), ``hvp`` a callable ``v -> H v`` (used by the others).
    """
    kind = resolve_kind(kind, p)
    if kind == "exact":
        return ExactInverse(hessian(), damping=damping, flat=flat)
    if kind == "ekfac":
        return kronecker()
    common = dict(dtype=dtype, device=device, damping=damping, random_state=random_state)
    if kind == "cg":
        return CGInverse(hvp, p, **common)
    if kind == "lissa":
        return LissaInverse(hvp, p, **common)
    return LowRankInverse(hvp, p, rank=rank, **common)


def resolve_kind(kind, p):
    if kind == "auto":
        return "exact" if p <= EXACT_MAX_PARAMS else "cg"
    return kind
