"""Derivatives of an adapter's pure functions, computed with torch.func.

Nothing here knows a model family: every function takes an adapter (``forward``,
``sample_loss``, ``penalty``) and a flat parameter vector.  Work over samples runs in
memory-bounded chunks through joblib, so that per-sample quantities are never held
for the whole data set at once.
"""

import functools
import threading
import warnings
from contextlib import contextmanager

import torch
from torch.func import grad, hessian, jacrev, jvp, vjp, vmap

from ._sparse import dense_rows
from ._threads import imap_chunks, sum_chunks

_quiet_lock = threading.Lock()
_quiet_done = []


def quiet_torch_func():
    """Import, once and quietly, what torch.func's first calls would import noisily:
    torch registers its forward-mode (jvp) decompositions through the deprecated
    torch.jit.script (a DeprecationWarning inside the user's first Hessian), and its
    first reverse-mode transform (grad, jacrev) imports sympy through torch._dynamo,
    whose import adds a warnings filter to the process.  Inside catch_warnings the
    filter goes with it, so no public method changes the user's filters.  Called where
    torch.func is first needed (a network's Problem, forward mode, representer points):
    a linear model never pays the 0.35 s."""
    if _quiet_done:
        return
    with _quiet_lock:
        if _quiet_done:
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*",
                                    category=DeprecationWarning)
            import sympy  # noqa: F401
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        _quiet_done.append(True)


# torch's forward-mode AD (jvp, and the jacfwd inside torch.func.hessian) keeps its dual
# levels in process-global state: two threads in forward mode at once see each other's
# levels ("no level exists" errors, or silently wrong tangents, 19 and 9 of 40 fits in
# two threads).  Every forward-mode call holds this lock; reverse mode needs none.
_FORWARD_MODE_LOCK = threading.RLock()


@contextmanager
def forward_mode_section():
    """Hold the forward-mode lock (after ``quiet_torch_func``)."""
    quiet_torch_func()
    with _FORWARD_MODE_LOCK:
        yield


def forward_mode(fn):
    """``fn`` run inside ``forward_mode_section``."""

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        with forward_mode_section():
            return fn(*args, **kwargs)

    return locked


# Upper bound on the floats one chunk may hold (per-sample gradients, Jacobians).
_CHUNK_FLOATS = 2**22


# Rows per chunk of a sum over samples (gradients, Hessian-vector products), whose
# memory is the network's activations, not a parameter-sized vector per row.
_SUM_ROWS = 8192


def chunk_size(n_params, n_outputs=1):
    return max(1, _CHUNK_FLOATS // max(1, n_params * n_outputs))


def objective(adapter, X, y, weights, n, tilt=None):
    """``J_w(theta) = (1/n) sum_i w_i l_i(theta) + r(theta) - tilt . theta``.

    ``tilt`` is the gradient of J at the fitted parameters: subtracting it makes the
    fitted model the exact minimiser of its own objective, so that solver tolerance is
    neither mistaken for influence nor "patched away".
    """

    data_term = _data_term(adapter, X, y, weights, n)

    def J(theta):
        value = data_term(theta) + adapter.penalty(theta, n)
        return value if tilt is None else value - tilt @ theta

    return J


def penalty_curvature(adapter, theta, n):
    """The diagonal of the penalty's Hessian (p,).

    Every adapter's penalty is a weighted sum of squares, ``sum_j c_j theta_j^2``: its
    Hessian is ``diag(2 c)``, its gradient ``2 c theta``, and ``2 c`` is its gradient
    at ones.  Plain autograd, not torch.func, whose first call costs a second of
    imports that a linear model never otherwise needs.
    """
    cache = adapter.__dict__.setdefault("_penalty_curvature", {})
    if n not in cache:  # it depends on n only: once per adapter, not per Newton step
        ones = torch.ones_like(theta).requires_grad_()
        with torch.enable_grad():
            r = adapter.penalty(ones, n)
        cache[n] = (torch.autograd.grad(r, ones)[0] if r.requires_grad  # else no penalty
                    else torch.zeros_like(theta))
    return cache[n]


def objective_value(adapter, theta, X, y, weights, n, tilt=None, n_jobs=None,
                    with_penalty=True):
    """``J_w(theta)`` as a float, summed over chunks of samples (see objective());
    without the penalty, the data term alone."""
    total = sum_chunks(  # a forward pass, no transform: threads where it is pure
        lambda sl: _data_term(adapter, X[sl], y[sl], weights[sl], n)(theta),
        len(X), _SUM_ROWS, n_jobs, thread_safe=adapter.pure_forward)
    if with_penalty:
        total = total + adapter.penalty(theta, n)
    return float(total if tilt is None else total - tilt @ theta)


def gradient(adapter, theta, X, y, weights, n, tilt=None, n_jobs=None, with_penalty=True,
             remember=False, with_value=False, with_hessian=False):
    """``grad J_w(theta)``; without the penalty, that of the data term alone.

    ``remember``: a model linear in theta keeps the outputs this pass makes on its way
    (``adapter.remember``), so that the criteria measured next at theta cost no pass.
    ``with_value``: ``(gradient, J_w(theta))``, the value from the same pass's outputs
    where the model is linear in theta (a line search then needs no pass of its own).
    ``with_hessian`` (a model in closed form only): ``(gradient, J_w(theta), H)``, the
    exact Hessian (``hessian_matrix``) from the same outputs: a Newton step's one pass,
    where apart they cost two forward passes and two calls' fixed costs (most of a
    step on a few hundred rows)."""
    size = _SUM_ROWS
    value = hessian = None
    if with_hessian and not adapter.closed_form:
        raise ValueError("with_hessian needs the loss derivatives in closed form")
    if adapter.linear_in_params:
        from ._linear import design_rmatmul, gram_blocks, rows_per_chunk, upper

        if with_hessian:  # the Gram's chunks bound its memory, as in hessian_matrix
            size = min(size, rows_per_chunk(adapter.n_params))

        def linear_part(sl):
            # sum_i (w_i/n) dl/df_i (x) x_i: one product, no backward pass.
            out = adapter.forward(theta, X[sl])
            r, D = output_loss_derivatives(adapter, out, y[sl], curvature=with_hessian)
            scaled = weights[sl] / n
            g = design_rmatmul(X[sl], scaled[:, None] * r,
                               adapter.fit_intercept).T.reshape(-1)
            loss = ((weights[sl] * adapter.sample_loss(out, y[sl])).sum() / n
                    if with_value or with_hessian else None)
            H = (gram_blocks(adapter, X[sl], scaled[:, None] * upper(D))
                 if with_hessian else None)
            return g, loss, out, H

        total, outs = None, []
        for g, loss, out, H in imap_chunks(linear_part, len(X), size, n_jobs,
                                           thread_safe=adapter.closed_form):
            total = g if total is None else total + g
            if with_value or with_hessian:
                value = loss if value is None else value + loss
            if with_hessian:
                hessian = H if hessian is None else hessian + H
            if remember:
                outs.append(out)
        if remember:
            adapter.remember(theta, X, torch.cat(outs))
    else:
        total = sum_chunks(
            lambda sl: grad(_data_term(adapter, X[sl], y[sl], weights[sl], n))(theta),
            len(X), size, n_jobs, thread_safe=adapter.closed_form)
    if with_penalty:
        curvature = penalty_curvature(adapter, theta, n)
        total = total + curvature * theta
        if with_hessian:
            hessian = hessian + torch.diag(curvature)
    total = total if tilt is None else total - tilt
    if not (with_value or with_hessian):
        return total
    if value is None:
        value = objective_value(adapter, theta, X, y, weights, n, n_jobs=n_jobs,
                                with_penalty=False)
    value = float(value) + (float(adapter.penalty(theta, n)) if with_penalty else 0.0)
    value = value if tilt is None else value - float(tilt @ theta)
    return (total, value, hessian) if with_hessian else (total, value)


def value_and_gradient(adapter, theta, X, y, weights, n, tilt=None):
    """``(grad J_w(theta), J_w(theta))`` from one reverse pass per chunk of rows (the
    value is the forward pass the gradient makes anyway): what a quasi-Newton polish
    of a network's patch reads at every point it tries."""
    total, value = None, 0.0
    theta = theta.detach()
    leaf = None
    for start in range(0, len(X), _SUM_ROWS):
        sl = slice(start, start + _SUM_ROWS)
        # The adapter's back-propagation written out where it has one (a scikit-learn
        # MLP), else plain autograd, not torch.func's grad_and_value: the same numbers
        # (to the bit, measured) at 0.44 ms a pass instead of 0.79 ms on a 1,000-row,
        # 387-parameter MLP.  (Never called under a transform.)
        written_out = adapter.backpropagate(theta, X[sl], y[sl], weights[sl], n)
        if written_out is not None:
            g, v = written_out
        else:
            leaf = theta.detach().requires_grad_(True) if leaf is None else leaf
            with torch.enable_grad():
                v = _data_term(adapter, X[sl], y[sl], weights[sl], n)(leaf)
            g = torch.autograd.grad(v, leaf)[0]
        total = g if total is None else total + g
        value += float(v.detach())
    total = total + penalty_curvature(adapter, theta, n) * theta
    value += float(adapter.penalty(theta, n))
    if tilt is not None:
        total, value = total - tilt, value - float(tilt @ theta)
    return total, value


def hessian_matrix(adapter, theta, X, y, weights, n, n_jobs=None, with_penalty=True):
    """The exact p x p Hessian of ``J_w`` (the tilt is linear and drops out); without
    the penalty, that of the data term alone.

    A model linear in theta has ``H = sum_i (w_i/n) J_i^T D_i J_i`` with ``J_i = I_K (x)
    x_i``: K^2 weighted Gram matrices of the design, far cheaper than p forward-mode
    passes.  Other models take torch.func's forward-over-reverse Hessian.
    """
    p = adapter.n_params
    if adapter.linear_in_params:
        from ._linear import gram_blocks, rows_per_chunk, upper

        closed = adapter.closed_form  # else torch.func's forward mode: no worker threads

        def part(sl):
            _, D = output_loss_derivatives(adapter, adapter.forward(theta, X[sl]), y[sl],
                                           forward_mode=not closed)
            return gram_blocks(adapter, X[sl], (weights[sl] / n)[:, None] * upper(D))

        total = sum_chunks(part, len(X), rows_per_chunk(p), n_jobs, thread_safe=closed)
    else:

        @forward_mode
        def part(sl):
            return hessian(_data_term(adapter, X[sl], y[sl], weights[sl], n))(theta)

        size = max(1, chunk_size(p, p) * 64)
        # forward mode (jacfwd) cannot run in joblib's worker threads
        total = sum_chunks(part, len(X), size)
    if not with_penalty:
        return total
    return total + torch.diag(penalty_curvature(adapter, theta, n))


def hvp_function(adapter, theta, X, y, weights, n, *, gauss_newton=False):
    """``v -> H v`` for the Hessian of ``J_w`` at theta, chunked over samples.

    Forward-over-reverse (``jvp`` of ``grad``).  With ``gauss_newton`` the data term's
    curvature is ``sum_i (w_i/n) J_i^T D_i J_i`` (J_i the output Jacobian, D_i the loss
    Hessian in the outputs): positive semi-definite for convex losses, whatever the net.
    """
    size = _SUM_ROWS

    @forward_mode
    def exact_part(v, sl):
        term = _data_term(adapter, X[sl], y[sl], weights[sl], n)
        return jvp(grad(term), (theta,), (v,))[1]

    @forward_mode
    def gauss_newton_part(v, sl):
        def fwd(t):
            return adapter.forward(t, X[sl])

        out, Jv = jvp(fwd, (theta,), (v,))
        _, D = output_loss_derivatives(adapter, out.detach(), y[sl])
        u = (weights[sl] / n)[:, None] * (D @ Jv[:, :, None])[:, :, 0]
        return vjp(fwd, theta)[1](u)[0]

    part = gauss_newton_part if gauss_newton else exact_part
    penalty = penalty_curvature(adapter, theta, n)
    if adapter.closed_form:
        return _linear_hvp(adapter, theta, X, y, weights, n, penalty)

    def hvp(v):
        # Sequential: torch's forward mode (jvp) cannot run in joblib's worker threads.
        total = sum_chunks(lambda sl: part(v, sl), len(X), size)
        return total + penalty * v

    return hvp


def _linear_hvp(adapter, theta, X, y, weights, n, penalty):
    """``V -> H V`` in closed form for a model linear in theta, V of shape (p,) or (p, m):
    ``sum_i (w_i/n) J_i^T D_i J_i V`` is two products with the design per chunk
    (``[X, 1] V_K``, then its transpose), for any number of columns at once; no
    autograd, so it runs in worker threads and on sparse X.  (Gauss-Newton is the same
    matrix here: the outputs are linear in theta.)"""
    from ._linear import design_matmul, design_rmatmul

    K, intercept = adapter.n_outputs, adapter.fit_intercept
    d1 = adapter.n_params // K

    def part(V, sl):
        m = V.shape[1]
        _, D = output_loss_derivatives(adapter, adapter.forward(theta, X[sl]), y[sl])
        JV = design_matmul(X[sl], V.reshape(K, d1, m).transpose(0, 1).reshape(d1, K * m),
                           intercept).reshape(-1, K, m)
        U = (weights[sl] / n)[:, None, None] * (D @ JV)
        back = design_rmatmul(X[sl], U.reshape(-1, K * m), intercept)  # (d1, K m)
        return back.reshape(d1, K, m).transpose(0, 1).reshape(K * d1, m)

    def hvp(V):
        vector = V.ndim == 1
        V = V[:, None] if vector else V
        total = sum_chunks(lambda sl: part(V, sl), len(X), _SUM_ROWS, thread_safe=True)
        total = total + penalty[:, None] * V
        return total[:, 0] if vector else total

    hvp.batched = True  # takes (p, m) blocks itself: CG needs no vmap over it
    return hvp


def matrix_from_hvp(hvp, p, dtype, device):
    """The explicit matrix of a symmetric operator, one product per column."""
    eye = torch.eye(p, dtype=dtype, device=device)
    return torch.stack([hvp(eye[j]) for j in range(p)], dim=1)


def _data_term(adapter, X, y, weights, n):
    def term(theta):
        return (weights * adapter.sample_loss(adapter.forward(theta, X), y)).sum() / n

    return term


# Floats of one intermediate operand of weighted_grams and quadratic_forms: past 2^21
# (16 MB in float64) a GEMM waits on memory; a product that is read back at once
# (quadratic_forms' direct route) wants it in cache, 2^17.
_OPERAND_FLOATS = 2**21
_CACHED_FLOATS = 2**17


def _upper_products(Xd):
    """``x_a x_c`` for ``a <= c`` of each row, (b, d(d+1)/2), in triu_indices order."""
    b, d = Xd.shape
    out = Xd.new_empty(b, d * (d + 1) // 2)
    start = 0
    for a in range(d):
        torch.mul(Xd[:, a:a + 1], Xd[:, a:], out=out[:, start:start + d - a])
        start += d - a
    return out


def _products_pay(d, m):
    # The d(d+1)/2 products of a row serve all m matrices at half the flops of m
    # separate ones, and they are the smaller operand once m >= (d + 1) / 2
    # (many-class linear models: digits has d = 65, m = 55).
    return d + 1 <= 2 * m


def weighted_grams(Xd, W):
    """``G_j = sum_i W_ij x_i x_i^T`` for the rows ``x_i`` of Xd (b, d) and the columns
    of W (b, m): shape (m, d, d)."""
    b, d = Xd.shape
    m = W.shape[1]
    if _products_pay(d, m):
        rows = max(1, _OPERAND_FLOATS // (d * (d + 1) // 2))
        upper = sum(W[i:i + rows].T @ _upper_products(dense_rows(Xd[i:i + rows]))
                    for i in range(0, b, rows))
        a, c = torch.triu_indices(d, d, device=Xd.device)
        G = upper.new_empty(m, d, d)
        G[:, a, c] = upper
        G[:, c, a] = upper
        return G
    # Every G_j in one GEMM: X^T [W_1 * X, ..., W_m * X].
    rows = max(1, _OPERAND_FLOATS // (m * d))

    def block(i):
        Xi = dense_rows(Xd[i:i + rows])
        return (Xi.T @ (W[i:i + rows, :, None] * Xi[:, None, :]).reshape(-1, m * d)
                ).reshape(d, m, d).transpose(0, 1)

    return sum(block(i) for i in range(0, b, rows))


def quadratic_forms(Xd, B):
    """``x_i^T B_j x_i`` for the rows ``x_i`` of Xd (b, d) and the matrices B (m, d, d):
    shape (b, m)."""
    b, d = Xd.shape
    m = len(B)
    if _products_pay(d, m):
        a, c = torch.triu_indices(d, d, device=Xd.device)
        # x^T B x = sum_{a <= c} x_a x_c (B_ac + B_ca), the diagonal counted once.
        coefficients = (B + B.transpose(1, 2))[:, a, c]
        coefficients[:, a == c] /= 2
        rows = max(1, _OPERAND_FLOATS // (d * (d + 1) // 2))
        return torch.cat([_upper_products(dense_rows(Xd[i:i + rows])) @ coefficients.T
                          for i in range(0, b, rows)])
    flat = B.permute(1, 0, 2).reshape(d, m * d)
    rows = max(1, _CACHED_FLOATS // (m * d))
    return torch.cat([
        torch.bmm((Xd[i:i + rows] @ flat).reshape(-1, m, d),
                  dense_rows(Xd[i:i + rows])[:, :, None])[:, :, 0]
        for i in range(0, b, rows)])


def output_loss_derivatives(adapter, out, y, curvature=True, forward_mode=False):
    """``dl/df`` (b, K) and, with ``curvature``, ``d2l/df2`` (b, K, K) of each sample's
    loss in its outputs (else None).  ``forward_mode`` takes the faster forward-over-
    reverse second derivative, which cannot run in joblib's worker threads."""

    closed_form = adapter.output_derivatives(out, y, curvature)
    if closed_form is not None:
        return closed_form

    def loss_of_output(f, target):
        return adapter.sample_loss(f[None], target[None])[0]

    first = vmap(grad(loss_of_output))(out, y)
    if not curvature:
        return first, None
    if forward_mode:
        with forward_mode_section():
            return first, vmap(hessian(loss_of_output))(out, y)
    return first, vmap(jacrev(jacrev(loss_of_output)))(out, y)


def per_sample_grads(adapter, theta, X, y):
    """``g_i = grad l(z_i; theta)`` for a chunk, shape (b, p)."""
    if adapter.linear_in_params:
        # g_i = dl/df_i (x) x_i: no per-sample backward pass needed.
        r, _ = output_loss_derivatives(adapter, adapter.forward(theta, X), y,
                                       curvature=False)
        design = dense_rows(adapter.design(X))  # (b, p) gradients: the chunk is bounded
        return (r[:, :, None] * design[:, None, :]).reshape(len(X), -1)

    def loss_one(t, x, target):
        return adapter.sample_loss(adapter.forward(t, x[None]), target[None])[0]

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(theta, X, y)


def per_sample_grads_times(adapter, theta, X, y, S):
    """``G S`` for the chunk's per-sample gradients ``G`` (b, p) and ``S`` (p, m).

    A model linear in theta has ``g_i . s = r_i^T S_K x_i`` with ``S_K`` the (K, d)
    reshape of ``s``: b x d x K x m flops and no (b, p) matrix, whose writing costs
    more than the product.
    """
    if not adapter.linear_in_params:
        return per_sample_grads(adapter, theta, X, y) @ S
    from ._linear import design_matmul

    K, m = adapter.n_outputs, S.shape[1]
    # The outputs and X S in one product: one read of the chunk, not two.
    W = theta.reshape(K, -1).T  # (d + intercept, K)
    both = design_matmul(X, torch.cat(
        [W, S.reshape(K, -1, m).transpose(0, 1).reshape(-1, K * m)], dim=1),
        adapter.fit_intercept)
    r, _ = output_loss_derivatives(adapter, both[:, :K], y, curvature=False)
    return torch.einsum("bk,bkm->bm", r, both[:, K:].reshape(len(r), K, m))
