"""Eigenvalue-corrected Kronecker-factored curvature (EK-FAC) of dense networks.

For a stack of dense layers ``s_l = W_l^T [a_l, 1]`` with elementwise activations, the
Gauss-Newton curvature of ``J_w`` restricted to layer l's parameters is

    G_l = sum_i c_i ([a_i, 1][a_i, 1]^T) (x) (B_i B_i^T),    c_i = w_i / n,

where ``B_i = (d f_i / d s_l)^T L_i`` (n_out_l, K) back-propagates a factor of the
loss's output Hessian ``D_i = d2 l / df2 = L_i L_i^T`` (the "type-2" Fisher: exact, no
sampled labels).  K-FAC (Martens & Grosse 2015) replaces the sum of Kronecker
products by the product of the means, ``G_l ~ A_l (x) S_l`` with ``A_l = sum_i c_i a a^T
/ sum_i c_i`` and ``S_l = sum_i c_i B_i B_i^T``; EK-FAC (George et al. 2018) keeps the
eigenbasis ``Q_A (x) Q_S`` of that product and replaces its eigenvalues by the exact
diagonal of ``G_l`` in it, ``Lambda_l[j, k] = sum_i c_i (Q_A^T a_i)_j^2 ||(Q_S^T
B_i)_k||^2``, the best diagonal in that basis (Frobenius norm).  Layers are
independent blocks (the cross-layer terms are dropped).  With one data row both are
exact (the block is then one Kronecker product).

The penalty's curvature (diagonal: sklearn MLPs' ``alpha / n`` on the weights, none on
the biases; skorch's weight decay on every parameter) is added by its exact diagonal in
the same eigenbasis, and the damping to every eigenvalue.

The same construction as Kronfluence's and pyDVL's EK-FAC, with the Gauss-Newton
(type-2 Fisher) factor in place of their sampled or empirical gradients.

Alone it is a rough inverse: on the tests' nets its products had cosines of 0.37-0.87
with the exact Gauss-Newton solve's (0.16-0.74 on a 2,000-row MLPClassifier(32)), most
of the loss in the Kronecker factorisation within each layer (the exact block-diagonal
curvature reached 0.74-0.99).  So the solves values and patches use are refined: EK-FAC
preconditions conjugate gradients on the exact Gauss-Newton products (one forward and
one backward pass over the data each), to a relative residual of 1e-3 and, each
column, until EK-FAC's norm of its residual has fallen by 1e-4.  Measured on
that MLPClassifier(32), undamped: cosines 0.95-0.98 after 119 products, where plain
CG to the same residual took 153 (and 1.00).  On nets that fit their data almost exactly
the undamped inverse is dominated by directions of curvature near zero, which a
residual barely sees: there plain CG stopped at the same residual had cosines of 0.04
(breast cancer) and 0.37-0.49 (digits), the preconditioned solve 1.00 and 0.66-0.82;
also stopped on EK-FAC's norm, 0.97-0.99 on digits (504 iterations against 101).
"""

import math
import time

import torch

from . import _curvature
from ._autodiff import output_loss_derivatives, penalty_curvature
from ._curvature import _auto_damping, _flat_tolerance, _warn, block_cg
from ._warnings import IllConditionedWarning, SolverWarning

# Rows per chunk of the passes over the data: activations and back-propagated
# factors of one chunk, (b, width) and (b, width, K) per layer.
_ROWS = 2048
# Floats of those statistics kept between the two passes (128 MB); past it the
# second pass recomputes them.
_KEPT_FLOATS = 2**24
# The refined solve's relative residual.  At 1e-2 an undamped test net's patch
# direction had a cosine of 0.93 with the exact solve; at 1e-3, 0.997 (the products
# doubled: 256 against 60 there, 76 against about 40 on the benchmark's net).
_REFINE_TOL = 1e-3
# ... and, each column, its preconditioned residual norm sqrt(r.M r) relative to its
# first (M: EK-FAC's inverse).  The residual alone misreads a net that fits its data
# almost exactly: its undamped inverse is dominated by the curvature's smallest
# directions, which the residual barely sees and M's norm weighs.  Measured on a
# digits MLP(32) (alpha=1e-3, 1,797 rows): stopped at the residual, cosines 0.66-0.82
# with the exact solve after 85-101 iterations; at this norm too, 0.98-0.99 after
# 466-524.
_REFINE_ENERGY_TOL = 1e-4
# Iterations without a 1% fall in the residual that end a refined solve: a right-hand
# side partly outside a singular curvature's range has no solution (a held-out
# gradient on a float32 skorch net of 80 rows: residual 0.59 after 100 iterations and
# after 650).
_REFINE_PATIENCE = 100


def _unsupported(adapter):
    name = type(adapter.estimator).__name__
    what = ("a linear model: its exact Hessian is cheap; use hessian='exact' or 'auto'"
            if adapter.linear_in_params else
            "its trainable parameters are not all in dense (torch.nn.Linear) layers")
    return ValueError(
        f"hessian='ekfac' does not apply to this {name} ({what}). It takes networks "
        "made of dense layers with elementwise activations, all parameters trainable: "
        "MLPClassifier, MLPRegressor, and skorch nets whose trainable parameters all "
        "belong to torch.nn.Linear layers (parameters='all').")


def _layer_statistics(adapter, theta, X, y, widths):
    """Each layer's inputs (b, n_in) and its back-propagated output-Hessian factors
    ``B`` (b, n_out, K), for one chunk, in float64."""
    dtype = torch.float64
    with torch.enable_grad():
        probes = [torch.zeros(len(X), w, dtype=theta.dtype, device=theta.device,
                              requires_grad=True) for w in widths]
        out, inputs = adapter.traced_forward(theta.detach(), X, probes)
        _, D = output_loss_derivatives(adapter, out.detach(), y)
        # D = L L^T per row (a loss convex in the outputs: no negative eigenvalue
        # beyond rounding).
        evals, evecs = torch.linalg.eigh(D.to(dtype))
        L = (evecs * evals.clamp_min(0).sqrt()[:, None, :]).to(out.dtype)
        K = L.shape[2]
        columns = [[] for _ in widths]
        for k in range(K):
            grads = torch.autograd.grad(out, probes, grad_outputs=L[:, :, k],
                                        retain_graph=k < K - 1, allow_unused=True)
            for i, g in enumerate(grads):
                columns[i].append(torch.zeros_like(probes[i]) if g is None else g)
    B = [torch.stack(c, dim=2).detach().to(dtype) for c in columns]
    return [a.detach().to(dtype) for a in inputs], B


def _with_ones(a, bias):
    if not bias:
        return a
    return torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], dim=1)


def _check_structure(adapter, theta, X, layers):
    """That every per-sample gradient is the sum over layers of ``[a, 1] (x) dl/ds``
    with theta laid out as ``layers`` say, on a few rows: weight sharing, layers that
    mix rows, or a wrong layout break it.  Checked for random output cotangents, not
    the loss's derivatives: on a net that fits those rows almost exactly these are at
    rounding level (a digits MLP was refused for it)."""
    X = X[:3]
    with torch.enable_grad():
        probes = [torch.zeros(len(X), index.shape[1], dtype=theta.dtype,
                              device=theta.device, requires_grad=True)
                  for index, _ in layers]
        out, inputs = adapter.traced_forward(theta.detach(), X, probes)
        r = torch.randn(out.shape, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64).to(out)
        grads = torch.autograd.grad(out, probes, grad_outputs=r, allow_unused=True)
        # Each row's gradient with respect to theta, by autograd on the plain forward.
        t = theta.detach().clone().requires_grad_(True)
        exact = torch.stack([
            torch.autograd.grad((adapter.outputs(t, X[i:i + 1]) * r[i:i + 1]).sum(), t)[0]
            for i in range(len(X))])
    G = torch.zeros(len(X), adapter.n_params, dtype=theta.dtype, device=theta.device)
    for (index, bias), a, g in zip(layers, inputs, grads):
        if g is None:
            continue
        outer = _with_ones(a.detach(), bias)[:, :, None] * g[:, None, :]
        G[:, index.reshape(-1).to(G.device)] = outer.reshape(len(X), -1)
    tol = 1e-4 if theta.dtype == torch.float32 else 1e-8
    if not bool(torch.allclose(G, exact, rtol=tol, atol=tol * float(exact.abs().max()))):
        raise _unsupported(adapter)


def _layers(adapter):
    layers = None if adapter.linear_in_params else adapter.linear_layers()
    if layers is None:
        raise _unsupported(adapter)
    covered = torch.cat([index.reshape(-1) for index, _ in layers])
    if len(covered) != adapter.n_params or not bool(
            (torch.sort(covered).values == torch.arange(adapter.n_params)).all()):
        raise _unsupported(adapter)
    return layers


class EKFACInverse:
    """The (E)K-FAC approximation ``G~`` of a dense network's Gauss-Newton curvature
    ``G`` of ``J_w`` at theta (module docstring): ``approximate_solve(B) = (G~ + damping
    I)^{-1} B``, and, given ``hvp``, ``solve(B) = (G + damping I)^{-1} B`` by
    conjugate gradients preconditioned by it.

    Parameters
    ----------
    adapter : Adapter
        A network adapter with ``linear_layers`` (sklearn MLPs, skorch nets of Linear
        layers).
    theta : torch.Tensor of shape (p,)
        Where the curvature is taken.
    X, y : torch.Tensor
        The training rows, encoded.
    weights : torch.Tensor of shape (n,)
        Per-row weights ``w_i`` of ``J_w``.
    n : int
        The mean form's denominator.
    damping : "auto" or float, default="auto"
        Added to every eigenvalue. "auto": none on a positive semi-definite curvature
        (always, unless some weight is negative), else twice the most negative one.
    correct : bool, default=True
        EK-FAC's eigenvalue correction; False gives plain K-FAC.
    hvp : callable or None, default=None
        ``v -> G v``, the exact Gauss-Newton products of the same objective: ``solve``
        then runs conjugate gradients on them preconditioned by (E)K-FAC, to a relative
        residual of ``tol``.  None: ``solve`` is the EK-FAC solve alone.
    tol : float, default=1e-3
        The refined solve's relative residual.
    relative_damping : float or None, default=None
        Where given, the damping is this share of the mean eigenvalue (the
        Gauss-Newton's mean diagonal), in place of ``damping``.
    max_iter : int or None, default=None
        Its iteration bound (None: 10 p); a ``SolverWarning`` gives the residual where
        it, or the time bound, stops the solve first.

    Attributes
    ----------
    name : str
        "ekfac" (or "kfac").
    damping : float
        The damping applied.
    residual, steps : float, int
        The last refined solve's largest relative residual, measured, and its
        iterations, plain CG's included (NaN and 0 before one).

    Solves of one right-hand side per training row (self-influence, label errors) call
    ``approximate_solve``: refining each would cost a pass over the data per row and
    iteration.
    """

    def __init__(self, adapter, theta, X, y, weights, n, *, damping="auto", correct=True,
                 hvp=None, tol=_REFINE_TOL, max_iter=None, relative_damping=None):
        self.name = "ekfac" if correct else "kfac"
        self._hvp, self.tol = hvp, tol
        self.max_iter = max_iter or 10 * adapter.n_params
        self.residual, self.steps = float("nan"), 0
        self.dtype, self.p = adapter.dtype, adapter.n_params
        layers = _layers(adapter)
        self._index = [index.to(theta.device).reshape(-1) for index, _ in layers]
        widths = [index.shape[1] for index, _ in layers]
        if not adapter.__dict__.get("_kfac_checked"):
            _check_structure(adapter, theta, X, layers)
            adapter._kfac_checked = True
        c = (weights / n).to(torch.float64)
        total = float(c.sum())
        if not total > 0:
            raise ValueError("hessian='ekfac' needs a positive total sample weight.")
        f64 = dict(dtype=torch.float64, device=theta.device)
        A = [torch.zeros(index.shape[0], index.shape[0], **f64) for index, _ in layers]
        S = [torch.zeros(index.shape[1], index.shape[1], **f64) for index, _ in layers]
        chunks = range(0, len(X), _ROWS)
        # The first pass's statistics are kept for the second where they are small.
        kept, size = [], 0
        for start in chunks:
            sl = slice(start, start + _ROWS)
            inputs, B = _layer_statistics(adapter, theta, X[sl], y[sl], widths)
            size += sum(a.numel() + b.numel() for a, b in zip(inputs, B))
            kept = kept + [(inputs, B)] if kept is not None and size <= _KEPT_FLOATS \
                else None
            for i, (_, bias) in enumerate(layers):
                a = _with_ones(inputs[i], bias)
                A[i] += (c[sl, None] * a).T @ a
                S[i] += torch.einsum("bok,bqk->oq", B[i] * c[sl, None, None], B[i])
        self._QA, self._QS, self._values = [], [], []
        for i in range(len(layers)):
            eA, QA = torch.linalg.eigh((A[i] + A[i].T) / (2 * total))
            eS, QS = torch.linalg.eigh((S[i] + S[i].T) / 2)
            self._QA.append(QA)
            self._QS.append(QS)
            self._values.append(eA[:, None] * eS[None, :])
        if correct:
            self._values = [torch.zeros_like(v) for v in self._values]
            for number, start in enumerate(chunks):
                sl = slice(start, start + _ROWS)
                inputs, B = (kept[number] if kept is not None else
                             _layer_statistics(adapter, theta, X[sl], y[sl], widths))
                for i, (_, bias) in enumerate(layers):
                    pa = _with_ones(inputs[i], bias) @ self._QA[i]  # (b, rows)
                    ps = torch.einsum("bok,oj->bjk", B[i], self._QS[i])  # (b, n_out, K)
                    self._values[i] += (c[sl, None] * pa**2).T @ (ps**2).sum(dim=2)
        # The penalty's curvature, ``diag(pen)`` with one value per row of a layer's
        # layout (its weights', its bias's), enters by its exact diagonal in the
        # layer's eigenbasis: ``sum_r pen_r QA[r, j]^2`` (1 on every column of QS).
        penalty = penalty_curvature(adapter, theta, n).to(torch.float64)
        self.penalty = []
        for (index, _), QA in zip(layers, self._QA):
            per_row = penalty[index.to(penalty.device)].mean(dim=1)
            self.penalty.append((per_row[:, None] * QA**2).sum(dim=0)[:, None])
        curv = [v + r for v, r in zip(self._values, self.penalty)]
        low = min(float(v.min()) for v in curv)
        top = max(float(v.abs().max()) for v in curv)
        # The mean curvature: the trace over p, the same in any basis, so the exact
        # Gauss-Newton's mean diagonal, layer blocks' own.
        mean = sum(float(v.sum()) for v in curv) / self.p
        if relative_damping is not None:
            damping = relative_damping * mean
        elif damping == "auto":
            damping = _auto_damping(low, top, torch.float64)
        self.damping = float(damping)
        if hvp is not None and self.damping == 0 and not bool((penalty != 0).any()) \
                and not adapter.__dict__.get("_singular_said"):
            # The code can tell this much: with no penalty at all and no damping nothing
            # bounds the curvature away from singular.  Measured on four 2,000-row
            # MLPs (alpha=0, lbfgs and Adam): Gauss-Newton rank 371-2,117 of 548-2,410
            # parameters, refined cosines with the pseudo-inverse 0.03-0.94.  (A
            # penalised net's unpenalised intercepts can still be singular directions:
            # not said, as no figure here tells.)  Once per model: a patch builds the
            # curvature at every step, each with its own figure.
            adapter._singular_said = True
            _warn(f"hessian='{self.name}' on a net with no weight penalty, undamped: its "
                  "Gauss-Newton curvature is singular wherever units are dead or rows "
                  "fitted exactly, so an inverse product has no unique answer, and the "
                  "refined solve may stall or converge away from the pseudo-inverse "
                  "hessian='exact' gives. Pass a damping (the answer then depends on "
                  f"it): 1e-3 times the mean curvature is {1e-3 * mean:.3g} here.",
                  IllConditionedWarning)
        tol = _flat_tolerance(top, torch.float64)
        # Eigenvalues at rounding level of the largest are flat directions: pseudo-
        # inverted (left out), as the exact inverse does.
        self._inverse = []
        for v in curv:
            shifted = v + self.damping
            keep = shifted > tol
            self._inverse.append(torch.where(keep, 1.0 / torch.where(keep, shifted, 1.0),
                                             torch.zeros_like(shifted)))

    def _apply(self, B, scales):
        vector = B.ndim == 1
        V = (B[:, None] if vector else B).to(torch.float64)
        out = torch.zeros_like(V)
        m = V.shape[1]
        for index, QA, QS, scale in zip(self._index, self._QA, self._QS, scales):
            M = V[index].reshape(QA.shape[0], QS.shape[0], m).permute(2, 0, 1)
            T = QA.T @ M @ QS * scale
            out[index] = (QA @ T @ QS.T).permute(1, 2, 0).reshape(-1, m)
        out = out.to(B.dtype)
        return out[:, 0] if vector else out

    def approximate_solve(self, B):
        """``(G~ + damping I)^{-1} B`` for B of shape (p,) or (p, m): EK-FAC alone."""
        return self._apply(B, self._inverse)

    def solve(self, B):
        """``(G + damping I)^{-1} B`` for the exact Gauss-Newton G, by conjugate
        gradients preconditioned by EK-FAC where ``hvp`` was given (else
        ``approximate_solve``).  Columns the preconditioned iterations leave above
        ``tol`` take, of that result, plain CG's on the same products (where it is
        above the square root of ``tol``) and EK-FAC's alone, the one with the
        smallest measured residual: on an unpenalised net whose curvature is
        singular, the preconditioned iterations stall (a 163-parameter skorch net of
        40 rows: residual 0.55, plain CG 0.17, EK-FAC alone 3.4)."""
        if self._hvp is None:
            return self.approximate_solve(B)
        vector = B.ndim == 1
        V = (B[:, None] if vector else B).to(torch.float64)

        def damped(D):
            # The products in the net's dtype; the recurrences in float64 (float32's
            # drifted: a float32 skorch net's residual rose to 2 in 830 iterations).
            products = torch.func.vmap(self._hvp, in_dims=1, out_dims=1)(D.to(self.dtype))
            return products.to(torch.float64) + self.damping * D

        def measured(X, rhs):
            return (rhs - damped(X)).norm(dim=0) / rhs.norm(dim=0).clamp_min(1e-300)

        start = time.monotonic()
        X, residuals, bound, self.steps = block_cg(
            damped, V, self.tol, self.max_iter, precondition=self.approximate_solve,
            patience=_REFINE_PATIENCE, energy_tol=_REFINE_ENERGY_TOL)
        short = ~(residuals <= self.tol)  # NaN counts as short
        kept = ""
        if bool(short.any()):
            rhs = V[:, short]
            alone = self.approximate_solve(rhs)
            candidates = [("EK-FAC-preconditioned CG", X[:, short], residuals[short]),
                          ("EK-FAC alone", alone, measured(alone, rhs))]
            # Plain CG, in what is left of the solve's time bound, only where the
            # preconditioned result is poor (a near miss would pay a second solve).
            poor = ~(residuals[short] <= math.sqrt(self.tol))
            left = _curvature.MAX_SOLVE_SECONDS - (time.monotonic() - start)
            if bool(poor.any()) and left > 0:
                found, found_residuals, _, steps = block_cg(
                    damped, rhs[:, poor], self.tol, self.max_iter,
                    patience=_REFINE_PATIENCE, seconds=left)
                self.steps += steps
                plain = alone.clone()
                plain_residuals = torch.full_like(residuals[short], math.inf)
                plain[:, poor], plain_residuals[poor] = found, found_residuals
                candidates.append(("plain CG", plain, plain_residuals))
            names, solutions, scores = zip(*candidates)
            scores = torch.stack(scores)
            choice = scores.nan_to_num(nan=math.inf).argmin(dim=0)
            columns = torch.arange(len(choice), device=choice.device)
            X[:, short] = torch.stack(solutions)[choice, :, columns].T
            residuals[short] = scores[choice, columns]
            kept = "; kept, by measured residual: " + ", ".join(
                f"{name} for {int((choice == k).sum())}" for k, name in enumerate(names)
                if bool((choice == k).any()))
        self.residual = float(residuals.max())
        if not self.residual <= self.tol:
            _warn(f"hessian='ekfac': the preconditioned conjugate gradients on the "
                  f"Gauss-Newton products stopped after {bound}; the solution kept has "
                  f"relative residual {self.residual:.3g} (tolerance {self.tol:g})"
                  f"{kept} of {V.shape[1]} right-hand sides. A damping speeds the "
                  "solve up, and gives a solution where the curvature is singular (an "
                  "unpenalised net, or more parameters than the rows determine) and "
                  "part of a right-hand side outside its range.", SolverWarning)
        X = X.to(B.dtype)
        return X[:, 0] if vector else X

    def curvature_times(self, V):
        """``G~ V`` (the penalty included, no damping), for V of shape (p,) or (p, m)."""
        return self._apply(V, [v + r for v, r in zip(self._values, self.penalty)])
