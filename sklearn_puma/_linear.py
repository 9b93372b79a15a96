"""Closed forms for models linear in their parameters (outputs ``f_i = W x_i``).

For such a model every derivative over theta is a matrix product over the design
``x_i = [x_i, 1]``: the training Hessian and a separable criterion's Hessian are
weighted Gram matrices, a criterion's Jacobian is ``R^T X`` for its output gradients
``R``, and the leave-one-out values need only quadratic forms of each row.  No autograd
graph over n rows and no (n x p) per-sample gradient matrix is ever formed; autograd
runs over the outputs alone.  The generic torch.func route (``_autodiff``) stays the
ground truth the tests hold these to, and the route for models that are not linear.
"""

import threading

import numpy as np
import torch

from ._sparse import SparseRows
from ._threads import map_chunks, sum_chunks

# Floats one chunk's intermediate (b x width) may hold: 2 MB in float64.  Enough rows
# for a GEMM at full speed, and small enough that the allocator reuses its freed
# memory: each worker thread has its own malloc arena, which keeps what it once held
# (at 16 MB a chunk, two workers added 1.7x X.nbytes to the peak of a binary LR's
# leave-one-out pass at 10^5 x 100; serially 0.5x).
_CHUNK_FLOATS = 2**18


# Rows below which a product is one call (splitting it would cost more than it saves).
_MIN_SPLIT_ROWS = 8192


# ... but never fewer rows than this: below it a chunk's per-call costs dominate (a
# multinomial leave-one-out pass in 25-row chunks took twice as long).  Not more: the
# floor is what binds on wide intermediates, and at 256 rows the multinomial (K=10,
# p=50, 10^5 rows) leave-one-out pass's (b, K p) chunks, four in flight on two
# workers, took the peak memory of valuing to 2.8-3.3x X.nbytes (1.9-2.5x at 128, in
# the same time: 2.12 s against 2.20 s).
_MIN_CHUNK_ROWS = 128


def rows_per_chunk(width):
    return max(_MIN_CHUNK_ROWS, _CHUNK_FLOATS // max(1, width))


def design_rmatmul(X, R, intercept):
    """``[X, 1]^T R`` without the column of ones: (d + intercept, q), summed over row
    chunks in worker threads (see ``_threads``)."""
    if len(X) <= _MIN_SPLIT_ROWS:
        return _rmatmul_chunk(X, R, intercept)
    return sum_chunks(lambda sl: _rmatmul_chunk(X[sl], R[sl], intercept), len(X),
                      rows_per_chunk(X.shape[1] + R.shape[1]), thread_safe=True)


def _rmatmul_chunk(X, R, intercept):
    top = X.T @ R
    return torch.cat([top, R.sum(dim=0, keepdim=True)]) if intercept else top


def design_matmul(X, B, intercept, out=None):
    """``[X, 1] @ B`` for B of shape (d + intercept, q), written into ``out`` (b, q)
    where X is dense; for sparse X ``out`` is ignored: use the result."""
    d = X.shape[1]
    if isinstance(X, SparseRows):
        return X @ B[:d] + B[d] if intercept else X @ B
    if not intercept:
        return torch.matmul(X, B, out=out)
    return torch.addmm(B[d], X, B[:d], out=out)  # one (b, q) result, not a second for the sum


def _gram_chunk(Xn, wn):
    d = Xn.shape[1]
    G = np.zeros((d, d))
    buffer = np.empty_like(Xn)
    for sign, part in ((1.0, wn > 0), (-1.0, wn < 0)):
        if not part.any():
            continue
        A = buffer[: int(part.sum())]
        if part.all():
            np.multiply(Xn, np.sqrt(sign * wn)[:, None], out=A)
        else:
            np.multiply(Xn[part], np.sqrt(sign * wn[part])[:, None], out=A)
        G += sign * (A.T @ A)
    return G


class _ThreadBuffers:
    """One scratch tensor per thread, grown as needed and reused by each chunk the
    thread runs.  Pickled empty: a chunk function sent to another process (a Dask
    worker) carries no thread-local state, and each worker's threads make their own."""

    def __init__(self):
        self._local = threading.local()

    def __reduce__(self):
        return type(self), ()

    def rows(self, n, width, like):
        """This thread's (n, width) scratch tensor, of ``like``'s dtype and device."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < n or buffer.shape[1] != width:
            buffer = self._local.buffer = like.new_empty(n, width)
        return buffer[:n]


def design_gram(X, w, intercept):
    """``[X, 1]^T diag(w) [X, 1]`` summed over the rows of X, for weights of any sign.

    On the CPU through numpy, whose BLAS takes ``A^T A`` as a symmetric rank-k update
    (half a GEMM's work); the weights' signs are split so that each part is ``A^T A``.
    """
    if isinstance(X, SparseRows):
        G = X.gram(w.numpy())  # one sparse product: its cost is the non-zeros'
    elif len(X) <= _MIN_SPLIT_ROWS:
        # Few rows: the bordered design in one product (the symmetric update's sign
        # split and the border's separate pass cost more in calls than they save).
        Z = torch.cat([X, X.new_ones(len(X), 1)], dim=1) if intercept else X
        return Z.T @ (w[:, None] * Z)
    elif X.device.type != "cpu":
        G = X.T @ (w[:, None] * X)
    else:
        Xn, wn = X.numpy(), w.numpy()
        G = torch.from_numpy(sum_chunks(lambda sl: _gram_chunk(Xn[sl], wn[sl]),
                                        len(Xn), rows_per_chunk(Xn.shape[1]),
                                        thread_safe=True)).to(X.dtype)
    if not intercept:
        return G
    Xw = design_rmatmul(X, w[:, None], False)[:, 0]
    top = torch.cat([G, Xw[:, None]], dim=1)
    return torch.cat([top, torch.cat([Xw, w.sum()[None]])[None]])


def gram_blocks(adapter, X, W):
    """``sum_i J_i^T D_i J_i`` (p, p) for ``J_i = I_K (x) x_i`` and symmetric K x K
    weights given by their upper triangle ``W`` (b, K(K+1)/2, triu_indices order)."""
    from ._autodiff import weighted_grams

    K = adapter.n_outputs
    intercept = adapter.fit_intercept
    if K == 1:
        return design_gram(X, W[:, 0], intercept)
    d = adapter.n_params // K
    k_idx, l_idx = torch.triu_indices(K, K)
    rows = rows_per_chunk(d)  # weighted_grams bounds its own operands
    blocks = sum_chunks(lambda sl: weighted_grams(adapter.design(X[sl]), W[sl]),
                        len(X), rows, thread_safe=True)
    total = blocks.new_zeros(K, d, K, d)
    total[k_idx, :, l_idx, :] = blocks
    total[l_idx, :, k_idx, :] = blocks.transpose(1, 2)
    return total.reshape(K * d, K * d)


def upper(D):
    """The upper triangle of symmetric (b, K, K) matrices, (b, K(K+1)/2)."""
    K = D.shape[-1]
    k_idx, l_idx = torch.triu_indices(K, K)
    return D[:, k_idx, l_idx]


def criterion_jacobian(criterion, theta):
    """``G_C`` (m, p) from the output gradients: ``G_r = R_r^T [X, 1]`` per row."""
    adapter = criterion.adapter
    out = adapter.outputs(theta, criterion.X)
    R, _ = criterion.output_derivatives(out, curvature=False)
    m, n, K = R.shape
    G = design_rmatmul(criterion.X, R.permute(1, 0, 2).reshape(n, m * K),
                       adapter.fit_intercept)  # (d1, m K)
    return G.reshape(-1, m, K).permute(1, 2, 0).reshape(m, -1)


def criterion_derivatives(criterion, theta, data_hessian=None):
    """``(G_C, H_C)`` (m, p) and (m, p, p) of a separable criterion: H_C's rows are Gram
    matrices of the evaluation design weighted by each point's output Hessian.

    ``data_hessian`` is ``(X, s, H_data)``: the training data, its weights and the
    Hessian of its mean-form loss term.  A row that is the model's own loss on that same
    data with weights proportional to ``s`` (the default criterion) is a multiple of
    ``H_data`` and takes no pass over the data.
    """
    adapter = criterion.adapter
    scales = [None] * len(criterion.names)
    if data_hessian is not None:
        X, s, H_data = data_hessian
        scales = criterion.training_loss_scales(X, s)
    out = adapter.outputs(theta, criterion.X)
    # The per-point output Hessians (n, K, K per row) only where a Gram needs them.
    R, B = criterion.output_derivatives(out, curvature=None in scales)
    m, n, K = R.shape
    G = design_rmatmul(criterion.X, R.permute(1, 0, 2).reshape(n, m * K),
                       adapter.fit_intercept).reshape(-1, m, K).permute(1, 2, 0)
    H = torch.stack([gram_blocks(adapter, criterion.X, upper(B[r])) if scale is None
                     else scale * H_data for r, scale in enumerate(scales)])
    return G.reshape(m, -1), H


def inverse_factor(H_inv):
    """``V`` with ``V V^T = H_inv`` (a positive semi-definite inverse curvature):
    Cholesky where it is definite, else its eigenvectors scaled by root eigenvalues."""
    L, info = torch.linalg.cholesky_ex(H_inv)
    if int(info) == 0:
        return L
    values, vectors = torch.linalg.eigh((H_inv + H_inv.T) / 2)
    keep = values > values.abs().max() * 1e-12
    return vectors[:, keep] * values[keep].sqrt()


def loo_second_order(problem, H_inv, G_C, H_C, X, y, weights, leverage_corrected):
    """Leave-one-out values to second order in the criterion, (len(X), m):
    ``G_C dtheta_i + 1/2 dtheta_i^T H_C dtheta_i`` with ``dtheta_i = c_i H^-1 J_i^T z_i``
    the leverage-corrected step (see ``_influence.loo_parameter_changes``).

    Both terms are quadratic forms of ``J_i``: with ``V_r`` such that ``V_r V_r^T =
    H^-1`` and ``V_r^T H_C,r V_r = diag(Lambda_r)`` (one factor of H^-1 rotated to
    diagonalise each criterion row's curvature), ``Z_r = J_i V_r`` (K x q) gives
    ``J_i H^-1 J_i^T = Z Z^T``, ``J_i H^-1 G_r = Z (V_r^T G_r)`` and ``J_i H^-1 H_C,r
    H^-1 J_i^T = Z diag(Lambda_r) Z^T``: one GEMM per criterion row over X.
    """
    adapter = problem.adapter
    K, m = adapter.n_outputs, len(G_C)
    d1 = adapter.n_params // K
    V = inverse_factor(H_inv)
    q = V.shape[1]
    rotations = []
    for r in range(m):
        lam, W = torch.linalg.eigh(V.T @ ((H_C[r] + H_C[r].T) / 2) @ V)
        V_r = V @ W
        # (d1, K q): row block k of V_r side by side, so X_d @ it is J_i V_r per point.
        stacked = V_r.reshape(K, d1, q).permute(1, 0, 2).reshape(d1, K * q)
        rotations.append((stacked, lam, V_r.T @ G_C[r]))
    out_all = adapter.outputs(problem.theta_hat, X)
    # Each worker thread writes its chunks' J_i V_r into one buffer of its own: a fresh
    # (b, K q) block per chunk and row, freed a moment later, is what glibc's malloc
    # keeps (its mmap threshold rises to the size freed, and each thread's arena holds
    # its own blocks).  Multinomial K=10, 10^5 x 50: the peak added while valuing was
    # 2.2-3.0x X.nbytes (3.38 once), 1.1-2.7x with the buffers (six runs each), where
    # the chunks in flight hold 0.5x.  (A malloc_trim after each threaded pass gave
    # no clear further gain and made a 28,000-row patch 40% slower: the trimmed pages
    # fault back in on the next pass.)
    buffers, dense = _ThreadBuffers(), not isinstance(X, SparseRows)

    def part(sl):
        values = []
        out = buffers.rows(sl.stop - sl.start, K * q, X) if dense else None
        for r, (stacked, lam, g) in enumerate(rotations):
            Z = design_matmul(X[sl], stacked, adapter.fit_intercept, out=out
                              ).reshape(-1, K, q)
            if r == 0:
                # K = 1 (binary, single-output): a row sum, not a batch of 1 x 1 products.
                M = ((Z * Z).sum(dim=2, keepdim=True) if K == 1
                     else Z @ Z.transpose(1, 2))
                c, z, flags = leverage_corrected(problem, out_all[sl], y[sl],
                                                      weights[sl], M)
            linear = ((Z @ g) * z).sum(dim=1)
            # z^T Z per point, without a (b, K, q) temporary.
            Zz = Z[:, 0] * z if K == 1 else torch.bmm(z[:, None, :], Z)[:, 0]
            quadratic = (Zz * Zz) @ lam
            values.append(c[:, 0] * linear + 0.5 * c[:, 0] ** 2 * quadratic)
        return torch.stack(values, dim=1), flags

    parts = map_chunks(part, len(X), rows_per_chunk(K * q * 2), thread_safe=True)
    return torch.cat([v for v, _ in parts]), sum(n for _, n in parts)


# Rows up to which the kernel (dual) form is used when p is too large for the explicit
# Hessian: its Cholesky factorisation costs n^3/3 and its factor n^2 floats (at 5000
# rows, 4e10 flops and 200 MB, about a fit of a sparse LogisticRegression on them).
DUAL_MAX_ROWS = 5000


def dual_applies(adapter, n, penalty, weights, damping=0.0):
    """Whether the kernel form fits: one output, on the CPU, more parameters than rows,
    every weight penalised or damped (the intercept alone may be free: it is eliminated
    exactly), and no negative sample weight (the factor needs ``W^1/2``)."""
    if not adapter.closed_form or adapter.n_outputs != 1 or n > DUAL_MAX_ROWS \
            or adapter.device.type != "cpu" or bool((weights < 0).any()):
        return False
    d = adapter.n_features
    return n < adapter.n_params and bool((penalty[:d] + damping > 0).all())


class DualInverse:
    """``H^{-1}`` in the kernel (dual) form for a model linear in theta with one output,
    exact, for p far above n (a bag-of-words table).

    ``H = Lambda + X^T W X`` on the weights, with ``Lambda`` the penalty's (positive)
    diagonal and ``W = diag(w_i D_i / n)``, bordered by the unpenalised intercept.  The
    weight block is inverted by Woodbury around ``M = I + W^1/2 X Lambda^-1 X^T W^1/2``
    (n x n, eigenvalues >= 1, so its Cholesky factor is well conditioned whatever the
    curvature), the intercept by its Schur complement.  ``quadratic_forms`` gives every
    training row's ``z_i^T H^{-1} z_i`` (the leverages) from the same factor, which a
    Hessian-vector-product solver could only get by one solve per row.
    """

    name = "dual"
    min_eigenvalue = None

    def __init__(self, adapter, X, W, penalty, damping=0.0):
        d = adapter.n_features
        self.damping = float(damping)
        self._X, self._intercept = X, adapter.fit_intercept
        self._lam = penalty[:d] + self.damping
        if bool((W < 0).any()):
            raise ValueError("The kernel form needs non-negative sample weights.")
        self._sw = W.sqrt()
        M = self._kernel()
        M *= self._sw[:, None]
        M *= self._sw[None, :]  # W^1/2 X Lambda^-1 X^T W^1/2, in place: n^2 floats once
        M.diagonal().add_(1.0)
        self._L = torch.linalg.cholesky(M)
        del M
        self._W = W
        if self._intercept:
            a = design_rmatmul(X, W[:, None], False)[:, 0]
            self._u = self._solve_weights(a[:, None])[:, 0]
            self._schur = float(W.sum() + penalty[d] + self.damping - a @ self._u)
            if not self._schur > 0:
                raise FloatingPointError(
                    f"The intercept's Schur complement is {self._schur:.3g}: the "
                    "Hessian is singular along the intercept (no row carries weight).")

    def _kernel(self):
        """``X Lambda^-1 X^T`` (n, n), dense."""
        X, lam = self._X, self._lam
        if isinstance(X, SparseRows):
            import scipy.sparse as sp

            K = X.matrix @ sp.diags(1.0 / lam.numpy()) @ X.matrix.T
            return torch.from_numpy(np.ascontiguousarray(K.toarray()))
        return (X / lam) @ X.T

    def _solve_weights(self, B):
        """``A^{-1} B`` for the weight block ``A = Lambda + X^T W X``, B (d, m)."""
        T = B / self._lam[:, None]
        Y = self._sw[:, None] * (self._X @ T)
        Z = torch.cholesky_solve(Y, self._L)
        return T - design_rmatmul(self._X, self._sw[:, None] * Z, False) / self._lam[:, None]

    def solve(self, B):
        vector = B.ndim == 1
        B = B[:, None] if vector else B
        if self._intercept:
            Bw, b0 = B[:-1], B[-1]
            x0 = (b0 - self._u @ Bw) / self._schur
            out = torch.cat([self._solve_weights(Bw) - self._u[:, None] * x0, x0[None]])
        else:
            out = self._solve_weights(B)
        return out[:, 0] if vector else out

    def _hat_forms(self):
        """``(h, forms)``: ``leverages`` and ``data_curvature_forms`` together, from one
        inverse of M (n^3/3), kept as two n-vectors for later readers (the n x n
        inverse itself is dropped)."""
        if getattr(self, "_forms", None) is None:
            from scipy.linalg.lapack import dpotri

            # The lower triangle of M^-1; the upper stays the factor's zeros.
            M_inv, info = dpotri(self._L.numpy(), lower=1)
            if info != 0:
                raise FloatingPointError(
                    f"Inverting the kernel factor failed (LAPACK {info}).")
            E = -torch.from_numpy(M_inv)  # the lower triangle of I - M^-1
            E.diagonal().add_(1.0)
            h = E.diagonal().clone()  # 1 - (M^-1)_ii
            E.square_()
            # Column norms of the symmetric matrix from its lower triangle: column and
            # row sums, the diagonal counted once.
            norms = E.sum(dim=0) + E.sum(dim=1) - E.diagonal()
            del E, M_inv
            W = self._W
            safe = torch.where(W > 0, W, torch.ones_like(W))
            forms = torch.where(W > 0, norms / safe, torch.zeros_like(W))
            if self._intercept:
                t = 1 - self._X @ self._u
                h = h + W * t**2 / self._schur
                G_w_Wt = self._X @ self._solve_weights(
                    design_rmatmul(self._X, (W * t)[:, None], False))[:, 0]
                forms = forms + 2 * t * G_w_Wt / self._schur \
                    + t**2 * float(t @ (W * t)) / self._schur**2
            self._forms = h, forms
        return self._forms

    def leverages(self):
        """``h_i = W_i z_i^T H^{-1} z_i`` for every training row (n,), ``z_i = [x_i,
        1]``: on the weights ``1 - (M^{-1})_ii`` (the hat matrix of the kernel form),
        plus ``W_i (1 - x_i . u)^2 / s`` for the intercept, ``u = A^{-1} a`` and ``s``
        its Schur complement.  As a difference from 1 it is exact to rounding in
        absolute terms, which is what the correction ``1 / (1 - h_i)`` needs."""
        return self._hat_forms()[0]

    def data_curvature_forms(self):
        """``z_i^T H^{-1} H_data H^{-1} z_i`` for every training row (n,), with
        ``H_data = Z^T W Z`` the data term's Hessian: ``diag(G W G)`` for ``G = Z H^{-1}
        Z^T``.  On the weights ``W^1/2 G W^1/2 = I - M^{-1}`` (Woodbury), so that part
        is ``||(I - M^{-1}) e_i||^2 / W_i``; the intercept adds the rank-one
        ``t t^T / s`` (``t = 1 - X u``) to G, and its cross terms."""
        return self._hat_forms()[1]

    def quadratic_forms(self):
        """``z_i^T H^{-1} z_i`` as ``h_i / W_i`` (0 where a row has no weight, whose
        leverage is 0 whatever it is): multiplied back by ``W_i`` it is the leverage."""
        W = self._W
        safe = torch.where(W > 0, W, torch.ones_like(W))
        return torch.where(W > 0, self.leverages() / safe, torch.zeros_like(W))
