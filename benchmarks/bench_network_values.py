"""MLP values against warm leave-one-out refits on three real tables (issue 12).

Run: python benchmarks/bench_network_values.py [--tables anes96 cars weather fair]
     [--alphas 1 1e-2 1e-4] [--points 40] [--max-train 400] [--activation tanh|relu]
(needs statsmodels and vega_datasets, in the benchmarks extra; one thread: set
``OMP_NUM_THREADS=1``)

Cost: the eight cases but weather at ``alpha=1e-4`` took 25 minutes of one thread on a
shared 2-core machine (refits 8-130 s a case); weather at ``alpha=1e-4`` alone, whose
nearly separated rare classes make each L-BFGS refit take 10 s or more, took 11.5
minutes with ``--no-lbfgs-refits`` (the README's figure). For a run of a few minutes:
``--alphas 1 1e-2 --points 24``.

Results (``--points 40``, the defaults; Spearman of ``all`` values with the refits):
anes96 0.837 / 0.723 / 0.456, cars 0.993 / 0.577 / 0.239, weather 0.982 / 0.667 /
0.487 at ``alpha`` 1 / 1e-2 / 1e-4; the README's section on networks gives the rest
and what limits them.

The tables, shipped inside packages and read offline: statsmodels' ``anes96`` (the 1996
vote, 10 numeric columns), vega_datasets' ``cars`` (origin, 3 classes, the 6 numeric
columns, rows with a missing value dropped) and ``seattle-weather`` (the day's weather,
5 classes, from precipitation, temp_max, temp_min and wind). Each table is shuffled
with one seed, 30% held out as the evaluation set the criterion is measured on (the
mean log loss there, ``criterion="loss"`` with ``eval_set``), the training part cut to
``--max-train`` rows; features are standardised on the training rows.

The net: ``MLPClassifier(hidden_layer_sizes=(16,), solver="lbfgs", alpha=...,
activation="tanh", max_iter=20000, max_fun=200000, tol=1e-12)``; scikit-learn's L-BFGS
still stops on its own criteria, so the fit is then driven to a tight optimum
(gradient below 1e-12) by an independent implementation of the same objective
(written here in torch, not the library's: mean log loss + ``alpha ||W||^2 / (2 n)``)
with scipy's L-BFGS and Newton steps; both gradient norms are printed (``|g| sk``,
``|g| fit``: the largest entry of the mean objective's gradient).  ``tanh``, because a
ReLU net's objective is not differentiable where a unit's input crosses zero on a
row: L-BFGS stalls at such kinks (``--activation relu`` on cars: gradient 1e-2 at the
fit and at every refit), so a ReLU net is never converged in the sense influence
needs, and its Hessian, zero in the activations' second derivative, is indefinite
(``NonConvexWarning``).

Ground truth: for ``--points`` training rows (the 10 highest and 10 lowest values of
``parameters="all"``, the rest drawn at random), the same net refitted without the row,
started from the fitted weights (warm), to a gradient below 1e-9 (rows whose refit did
not get there are counted, ``unconv``), and the criterion measured at the refit
(independent forward pass, checked against scikit-learn's ``predict_proba``).  The
refit takes damped Newton steps from the fitted weights, which follow the fitted
minimum as long as the objective without the row stays convex along the way, and
L-BFGS from where they stop otherwise (``Newton fell back``: how often); a second
refit of every row by L-BFGS alone from the fitted weights (as scikit-learn's
``warm_start`` would) is the ``all/L-BFGS-refit`` ground truth.  ``Newton~L-BFGS``
compares the two ground truths with each other: where two valid warm refits of the
same rows disagree, the leave-one-out change is not a property of the data alone, and
that agreement bounds what any value can reach.

Values (``PumaPatcher(FrozenEstimator(net), criterion="loss")``, ``value_method="auto"``):
``all`` (first-order values on every parameter, the Hessian damped by
``damping="auto"`` where it is indefinite), ``all/GN`` (``curvature="gauss_newton"``)
and ``last`` (``parameters="last_layer"``: exact leave-one-out values of the last
layer). ``last/LL-refit`` compares ``last`` with the ground truth it models, refits of
the last layer alone, to show that the gap to the full refit is the frozen layer's.

Diagnostics, in the benchmark's own code:

- ``lam_min``: the smallest eigenvalue of the training objective's Hessian over its
  largest (negative: indefinite, the net at a saddle-like point of some direction).
- ``undamped``: first-order values with the exact, undamped Hessian inverse.
- ``newton``: the leave-one-out Newton step with the exact Hessian without the row
  (``H - H_i / n``), the criterion evaluated at the moved weights: what a perfect local
  (second-order) model of the refit predicts.  Where ``newton`` also misses, the refit
  leaves the quadratic neighbourhood of the fit (non-local moves), and no influence
  method can do better.
- ``noise``: two warm refits of the unchanged data from the fitted weights perturbed by
  1e-3 of their RMS, the largest criterion change over the spread (standard deviation)
  of the leave-one-out changes: the refit's noise floor relative to the signal.
- ``|dth|``: the median and largest parameter move of the leave-one-out refits,
  relative to the parameter norm; ``predicted max``: the largest first-order move
  ``|H^-1 g_i| / n`` over all rows.
- ``step residual``: for the 10 rows of largest first-order move, the Newton
  correction the objective without the row still asks for at the end of that move,
  relative to the move (0: the move lands on the refit).
- ``all (random)``: ``all`` on the randomly drawn rows only (without the extremes).
"""

import argparse
import time
import warnings

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import pearsonr, spearmanr
from sklearn.frozen import FrozenEstimator
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from sklearn_puma import PumaPatcher

torch.set_default_dtype(torch.float64)


def load(name):
    if name == "anes96":
        import statsmodels.api as sm

        d = sm.datasets.anes96.load_pandas().data
        return d.drop(columns="vote").to_numpy(float), d["vote"].to_numpy().astype(int)
    if name == "fair":
        import statsmodels.api as sm

        d = sm.datasets.fair.load_pandas().data
        return (d.drop(columns="affairs").to_numpy(float),
                (d["affairs"] > 0).to_numpy().astype(int))
    from vega_datasets import local_data

    if name == "cars":
        d = local_data.cars()
        cols = ["Miles_per_Gallon", "Cylinders", "Displacement", "Horsepower",
                "Weight_in_lbs", "Acceleration"]
        d = d[cols + ["Origin"]].dropna()
        return d[cols].to_numpy(float), d["Origin"].to_numpy().astype(str)
    if name == "weather":
        d = local_data.seattle_weather()
        cols = ["precipitation", "temp_max", "temp_min", "wind"]
        return d[cols].to_numpy(float), d["weather"].to_numpy().astype(str)
    raise ValueError(name)


class Net:
    """The MLPClassifier objective, written independently of the library."""

    def __init__(self, model, X, y, alpha):
        self.shapes = [w.shape for w in model.coefs_] + [b.shape for b in model.intercepts_]
        self.act = {"relu": torch.relu, "tanh": torch.tanh,
                    "logistic": torch.sigmoid, "identity": lambda t: t}[model.activation]
        self.binary = model.coefs_[-1].shape[1] == 1
        self.X = torch.as_tensor(X)
        self.y = torch.as_tensor(np.searchsorted(model.classes_, y))
        self.alpha, self.n = alpha, len(X)

    def theta(self, model):
        return torch.as_tensor(np.concatenate(
            [w.ravel() for w in model.coefs_] + [b.ravel() for b in model.intercepts_]))

    def unpack(self, theta):
        parts, at = [], 0
        for s in self.shapes:
            size = int(np.prod(s))
            parts.append(theta[at:at + size].reshape(s))
            at += size
        return parts

    def write(self, model, theta):
        W1, W2, b1, b2 = [p.detach().numpy().copy() for p in self.unpack(theta)]
        model.coefs_, model.intercepts_ = [W1, W2], [b1, b2]
        return model

    def out(self, theta, X):
        W1, W2, b1, b2 = self.unpack(theta)
        return self.act(X @ W1 + b1) @ W2 + b2

    def losses(self, theta, X, y):
        o = self.out(theta, X)
        if self.binary:
            return torch.nn.functional.binary_cross_entropy_with_logits(
                o[:, 0], y.to(o.dtype), reduction="none")
        return torch.nn.functional.cross_entropy(o, y, reduction="none")

    def objective(self, theta, w):
        W1, W2, _, _ = self.unpack(theta)
        penalty = self.alpha * ((W1 ** 2).sum() + (W2 ** 2).sum()) / (2 * self.n)
        return (w * self.losses(theta, self.X, self.y)).sum() / self.n + penalty

    def fit(self, theta0, w, gtol=1e-10):
        def f(t):
            t = torch.as_tensor(t).requires_grad_(True)
            v = self.objective(t, w)
            return v.item(), torch.autograd.grad(v, t)[0].numpy()

        r = minimize(f, np.asarray(theta0), jac=True, method="L-BFGS-B",
                     options=dict(ftol=0, gtol=gtol, maxiter=50_000, maxcor=30,
                                  maxfun=100_000))
        return self.polish(torch.as_tensor(r.x), w)

    def polish(self, theta, w, steps=10):
        """Newton steps with line search where the Hessian is positive definite (off
        the softmax's flat direction): L-BFGS crawls on an ill-conditioned net."""
        J = lambda t: self.objective(t, w)  # noqa: E731
        for _ in range(steps):
            g = torch.func.grad(J)(theta)
            if float(g.abs().max()) < 1e-12:
                break
            lam, U = torch.linalg.eigh(torch.func.hessian(J)(theta))
            keep = lam.abs() > 1e-12 * lam.abs().max()
            if float(lam[keep].min()) <= 0:
                break
            d = U[:, keep] @ ((U[:, keep].T @ g) / lam[keep])
            J0, t = float(J(theta)), 1.0
            while float(J(theta - t * d)) > J0 and t > 1e-3:
                t /= 2
            if float(J(theta - t * d)) > J0:
                break
            theta = theta - t * d
        return theta, float(torch.func.grad(J)(theta).abs().max())

    def grad_norm(self, theta, w):
        t = theta.clone().requires_grad_(True)
        return float(torch.autograd.grad(self.objective(t, w), t)[0].abs().max())


def _corr(a, b):
    return spearmanr(a, b)[0], pearsonr(a, b)[0]


def run_case(name, X, y, alpha, args, rng):
    perm = rng.permutation(len(X))
    X, y = X[perm], y[perm]
    n_eval = int(0.3 * len(X))
    X_ev, y_ev = X[:n_eval], y[:n_eval]
    X_tr, y_tr = X[n_eval:][:args.max_train], y[n_eval:][:args.max_train]
    scaler = StandardScaler().fit(X_tr)
    X_tr, X_ev = scaler.transform(X_tr), scaler.transform(X_ev)
    n = len(X_tr)

    t0 = time.perf_counter()
    model = MLPClassifier(hidden_layer_sizes=(16,), solver="lbfgs", alpha=alpha,
                          activation=args.activation, max_iter=20_000, max_fun=200_000,
                          tol=1e-12, random_state=0).fit(X_tr, y_tr)
    net = Net(model, X_tr, y_tr, alpha)
    ones = torch.ones(n)
    g_sk = net.grad_norm(net.theta(model), ones)
    theta_hat, g_fit = net.fit(net.theta(model), ones)
    net.write(model, theta_hat)
    fit_s = time.perf_counter() - t0
    Xe = torch.as_tensor(X_ev)
    ye = torch.as_tensor(np.searchsorted(model.classes_, y_ev))
    proba = model.predict_proba(X_ev)
    out = net.out(theta_hat, Xe)
    mine = torch.sigmoid(out[:, 0]) if net.binary else torch.softmax(out, 1)
    assert np.allclose(mine.numpy(), proba[:, 1] if net.binary else proba, atol=1e-10)

    def C_torch(theta):
        return net.losses(theta, Xe, ye).mean()

    def C(theta):
        return float(C_torch(theta))

    C_hat = C(theta_hat)

    settings = {"all": dict(parameters="all"),
                "all/GN": dict(parameters="all", curvature="gauss_newton"),
                "last": dict(parameters="last_layer")}
    values, seconds, info = {}, {}, {}
    for key, params in settings.items():
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            puma = PumaPatcher(FrozenEstimator(model), criterion="loss", **params)
            puma.fit(X_tr, y_tr, eval_set=(X_ev, y_ev))
            values[key] = np.asarray(puma.values_)
        seconds[key] = time.perf_counter() - t0
        info[key] = dict(damping=puma.damping_, gap=puma.optimality_gap_,
                         warnings=[f"{w.category.__name__}: {w.message}" for w in caught])

    # The rows refitted: the most extreme values and a random sample.
    order = np.argsort(values["all"])
    extreme = np.concatenate([order[:10], order[-10:]])
    rest = np.setdiff1d(np.arange(n), extreme)
    points = np.concatenate([extreme, rng.choice(rest, args.points - 20, replace=False)])

    # Exact curvature and the local (Newton) leave-one-out oracle.
    H = torch.func.hessian(lambda t: net.objective(t, ones))(theta_hat)
    eig = torch.linalg.eigvalsh(H)
    # A softmax's logits shifted together leave every probability unchanged: that
    # exactly flat direction is set aside.
    eig = eig[eig.abs() > 1e-12 * eig.abs().max()]
    lam_min = float(eig[0] / eig[-1])

    def solve(A, b):
        lam, U = torch.linalg.eigh(A)
        keep = lam.abs() > 1e-12 * lam.abs().max()
        inv = 1 / lam[keep]
        return U[:, keep] @ ((U[:, keep].T @ b) * (inv if b.ndim == 1 else inv[:, None]))

    G_C = torch.func.grad(C_torch)(theta_hat)
    S = solve(H, G_C)

    def point_loss(t, i):
        return net.losses(t, net.X[i:i + 1], net.y[i:i + 1])[0]

    undamped, newton = [], []
    for i in points:
        g_i = torch.func.grad(point_loss)(theta_hat, int(i))
        undamped.append(float(g_i @ S) / n)
        H_i = torch.func.hessian(point_loss)(theta_hat, int(i))
        dtheta = solve(H - H_i / n, g_i / n)
        newton.append(float(C_torch(theta_hat + dtheta)) - C_hat)

    # How local the first-order steps are: for the 10 rows of largest predicted move
    # delta_i = H^-1 g_i / n, the Newton correction the objective without the row still
    # asks for at theta + delta_i, relative to delta_i (0: the step lands on the refit).
    H_inv = solve(H, torch.eye(len(H)))
    def loss_xy(t, x, target):
        return net.losses(t, x[None], target[None])[0]

    G = torch.func.vmap(torch.func.grad(loss_xy), in_dims=(None, 0, 0))(
        theta_hat, net.X, net.y)
    steps = G @ H_inv / n
    top = torch.argsort(steps.norm(dim=1), descending=True)[:10]
    residuals = []
    for i in top:
        w = ones.clone()
        w[i] = 0
        g = torch.func.grad(lambda t, w=w: net.objective(t, w))(theta_hat + steps[i])
        residuals.append(float((H_inv @ g).norm() / steps[i].norm()))
    step_rel = float(steps[top[0]].norm() / theta_hat.norm())

    # Warm leave-one-out refits: every parameter by damped Newton from the fitted
    # weights (L-BFGS where Newton stalls), every parameter by L-BFGS from the fitted
    # weights, and the last layer alone.
    t0 = time.perf_counter()
    actual, moves, unconverged, fallback = [], [], 0, 0
    for i in points:
        w = ones.clone()
        w[i] = 0
        theta_i, g = net.polish(theta_hat, w, steps=50)
        if g > 1e-9:
            fallback += 1
            theta_i, g = net.fit(theta_i, w)
        unconverged += g > 1e-9
        actual.append(C(theta_i) - C_hat)
        moves.append(float((theta_i - theta_hat).norm() / theta_hat.norm()))
    refit_s = time.perf_counter() - t0
    actual = np.array(actual)
    lbfgs, lbfgs_moves = [], []
    for i in points if args.lbfgs_refits else ():
        w = ones.clone()
        w[i] = 0
        theta_i, g = net.fit(theta_hat, w)
        unconverged += g > 1e-9
        lbfgs.append(C(theta_i) - C_hat)
        lbfgs_moves.append(float((theta_i - theta_hat).norm() / theta_hat.norm()))

    last_mask = torch.zeros(len(theta_hat), dtype=bool)
    sizes = [int(np.prod(s)) for s in net.shapes]
    W2_at = sizes[0]
    last_mask[W2_at:W2_at + sizes[1]] = True
    last_mask[sum(sizes[:3]):] = True
    ll_actual = []
    for i in points:
        w = ones.clone()
        w[i] = 0

        def f(t, w=w):
            full = theta_hat.clone()
            full[last_mask] = torch.as_tensor(t)
            full.requires_grad_(True)
            v = net.objective(full, w)
            return v.item(), torch.autograd.grad(v, full)[0][last_mask].numpy()

        r = minimize(f, theta_hat[last_mask].numpy(), jac=True, method="L-BFGS-B",
                     options=dict(ftol=0, gtol=1e-11, maxiter=20_000, maxcor=30))
        full = theta_hat.clone()
        full[last_mask] = torch.as_tensor(r.x)
        ll_actual.append(C(full) - C_hat)

    # The refit's noise floor: two warm refits of the unchanged data.
    scale = float(theta_hat.pow(2).mean().sqrt())
    noise = []
    for seed in (1, 2):
        start = theta_hat + 1e-3 * scale * torch.as_tensor(
            np.random.default_rng(seed).standard_normal(len(theta_hat)))
        theta_r, _ = net.fit(start, ones)
        noise.append(abs(C(theta_r) - C_hat))
    noise_ratio = max(noise) / actual.std()

    rows = []
    for key in settings:
        rows.append((key, *_corr(values[key][points], actual), seconds[key]))
    if args.lbfgs_refits:
        rows.append(("all/L-BFGS-refit", *_corr(values["all"][points], lbfgs),
                     seconds["all"]))
        rows.append(("Newton~L-BFGS", *_corr(lbfgs, actual), float("nan")))
    else:
        lbfgs_moves = [float("nan")]
    rows.append(("last/LL-refit", *_corr(values["last"][points], ll_actual),
                 seconds["last"]))
    rows.append(("undamped", *_corr(undamped, actual), float("nan")))
    rows.append(("newton", *_corr(newton, actual), float("nan")))
    rand = slice(20, None)
    rows.append(("all (random)", *_corr(values["all"][points][rand], actual[rand]),
                 float("nan")))
    return dict(
        table=name, alpha=alpha, n=n, p=len(theta_hat), g_sk=g_sk, g_fit=g_fit,
        gap=info["all"]["gap"], damping=info["all"]["damping"], lam_min=lam_min,
        residual=max(residuals), step_rel=step_rel, noise=noise_ratio, moves=(np.median(moves), np.max(moves)),
        lbfgs_moves=(np.median(lbfgs_moves), np.max(lbfgs_moves)), fallback=fallback,
        unconverged=unconverged, refit_s=refit_s, fit_s=fit_s, rows=rows,
        warnings=sorted({w for v in info.values() for w in v["warnings"]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", nargs="+", default=["anes96", "cars", "weather"])
    parser.add_argument("--alphas", nargs="+", type=float, default=[1.0, 1e-2, 1e-4])
    parser.add_argument("--points", type=int, default=40)
    parser.add_argument("--max-train", type=int, default=400)
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-lbfgs-refits", dest="lbfgs_refits", action="store_false",
                        help="skip the second, L-BFGS-only refits (slow under a weak "
                             "penalty: 10 s a row on weather at alpha=1e-4)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    for name in args.tables:
        X, y = load(name)
        for alpha in args.alphas:
            rng = np.random.default_rng(args.seed)
            r = run_case(name, X, y, alpha, args, rng)
            print(f"\n== {name}, alpha={alpha:g}, {args.activation}: n={r['n']}, "
                  f"p={r['p']}; |g| sk {r['g_sk']:.1e}, |g| fit {r['g_fit']:.1e}, "
                  f"optimality_gap_ {r['gap']:.1e}; lam_min/lam_max {r['lam_min']:.2e}, "
                  f"damping_ {r['damping']:.2e}; noise {r['noise']:.1e}; |dth| median "
                  f"{r['moves'][0]:.3f}, max {r['moves'][1]:.3f} (predicted max "
                  f"{r['step_rel']:.3f}; L-BFGS refits: median {r['lbfgs_moves'][0]:.3f}, max "
                  f"{r['lbfgs_moves'][1]:.3f}); step residual {r['residual']:.2g}; "
                  f"Newton fell back {r['fallback']}; unconv "
                  f"{r['unconverged']}/{(1 + args.lbfgs_refits) * args.points}; fit {r['fit_s']:.1f} s, refits "
                  f"{r['refit_s']:.1f} s")
            print(f"   {'values':<15} {'Spearman':>9} {'Pearson':>9} {'s':>7}")
            for key, rho, pear, s in r["rows"]:
                print(f"   {key:<15} {rho:9.3f} {pear:9.3f} {s:7.2f}")
            for w in r["warnings"]:
                print(f"   warning: {w[:300]}")


if __name__ == "__main__":
    main()
