"""Patch vs retrain for neural networks, side by side in one run.

Run: python benchmarks/bench_networks.py [--n 50000] [--device cuda] [--nets mlp skorch]
     python benchmarks/bench_networks.py --ekfac [--n-large 20000]

On n rows of a 4-class problem, fits a scikit-learn MLPClassifier and a skorch
NeuralNetClassifier (both a 64-64 MLP), patches out a random 1% of the rows with
PumaPatcher, retrains each net from scratch without those rows, and prints the
patch/retrain time ratio next to the held-out prediction agreement of patch and retrain.

The MLPClassifier trains as a user would train one on 50,000 rows: Adam with
``early_stopping=True`` (the default ``max_iter=200`` runs to the cap here and fits the
held-out rows worse).  The skorch net trains for a fixed number of Adam epochs, on
``--device``.  The agreement of the original net with the retrained one is printed too:
retraining from a new start moves a net by more than 1% of its data does, so that
figure is the ceiling for any patch.  The patch changes the last layer (the default for
large nets, ``parameters="last_layer"``, exact Hessian) and, for skorch, also every
parameter (conjugate gradients on Hessian-vector products).
"""

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.frozen import FrozenEstimator
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from sklearn_puma import NonConvexWarning, PumaPatcher, PumaWarning


def timed(fn, device="cpu"):
    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


def compare(name, model, retrained, t_retrain, X, y, remove, X_test, y_test, settings,
            device="cpu"):
    """Patch ``model`` with each of ``settings`` and print it against ``retrained``."""
    reference = np.mean(model.predict(X_test) == retrained.predict(X_test))
    print(f"  held-out accuracy: original {np.mean(model.predict(X_test) == y_test):.4f}, "
          f"retrained {np.mean(retrained.predict(X_test) == y_test):.4f}; agreement "
          f"original vs retrained {reference:.4f}")
    for options in settings:
        puma = PumaPatcher(FrozenEstimator(model), **options)
        with warnings.catch_warnings():
            # Nets stopped by a budget are not at an optimum, and their curvature is
            # indefinite: both are expected here, and the patch handles them.
            warnings.simplefilter("ignore", NonConvexWarning)
            warnings.simplefilter("ignore", PumaWarning)
            _, t_prepare = timed(lambda: puma.fit(X, y), device)
            _, t_patch = timed(lambda: puma.patch(remove), device)
        agree = np.mean(puma.predict(X_test) == retrained.predict(X_test))
        print(f"  {name} PUMA {options} ({puma.hessian_}): value all rows "
              f"{t_prepare:.2f}s, patch {t_patch:.2f}s, eta {puma.eta_:.2f}")
        print(f"    patch / retrain time ratio: {t_patch / t_retrain:.3f}   "
              f"held-out agreement patch vs retrain: {agree:.4f}   patched accuracy "
              f"{np.mean(puma.predict(X_test) == y_test):.4f}")


def sklearn_mlp(X, y, remove, X_test, y_test):
    est = MLPClassifier(hidden_layer_sizes=(64, 64), early_stopping=True, random_state=0)
    model, t_fit = timed(lambda: clone(est).fit(X, y))
    retrained, t_retrain = timed(lambda: clone(est).fit(X[~remove], y[~remove]))
    print(f"MLPClassifier(64, 64) on {len(X)} rows: fit {t_fit:.1f}s "
          f"({model.n_iter_} epochs), retrain without 1% {t_retrain:.1f}s "
          f"({retrained.n_iter_} epochs)")
    compare("MLPClassifier", model, retrained, t_retrain, X, y, remove, X_test, y_test,
            [{"parameters": "last_layer"}])


class TorchMLP(torch.nn.Module):
    def __init__(self, n_features=30, n_classes=4, hidden=64):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, n_classes))

    def forward(self, X):
        return self.net(X)


def skorch_net(X, y, remove, X_test, y_test, device, epochs):
    from skorch import NeuralNetClassifier

    X, X_test = X.astype(np.float32), X_test.astype(np.float32)
    net = NeuralNetClassifier(TorchMLP, module__n_features=X.shape[1], criterion=torch.nn.CrossEntropyLoss,
                              optimizer=torch.optim.Adam, lr=1e-2, batch_size=512,
                              max_epochs=epochs, train_split=None, verbose=0,
                              device=device)
    torch.manual_seed(0)
    model, t_fit = timed(lambda: clone(net).fit(X, y), device)
    torch.manual_seed(0)
    retrained, t_retrain = timed(lambda: clone(net).fit(X[~remove], y[~remove]), device)
    p = sum(q.numel() for q in model.module_.parameters())
    print(f"skorch MLP ({p} parameters) on {len(X)} rows, device {device}: fit "
          f"{t_fit:.1f}s ({epochs} epochs), retrain without 1% {t_retrain:.1f}s")
    compare("skorch", model, retrained, t_retrain, X, y, remove, X_test, y_test,
            [{"parameters": "last_layer"},
             {"parameters": "all", "hessian": "cg", "n_steps": 2}], device)


def _problem(model, X, y, hessian):
    from sklearn_puma._adapters import make_adapter
    from sklearn_puma._influence import Problem

    adapter = make_adapter(model)
    Xt, yt = adapter.encode_X(X), adapter.encode_y(np.searchsorted(model.classes_, y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PumaWarning)
        return Problem(adapter, Xt, yt, torch.ones(len(X), dtype=torch.float64),
                       hessian=hessian, gauss_newton=True)


def _criterion_gradients(problem, X_test, y_test):
    """Per-class held-out losses' gradients (p, 4): what values solve for."""
    adapter = problem.adapter
    Xe = adapter.encode_X(X_test)
    ye = torch.as_tensor(y_test)

    def losses(theta):
        out = torch.nn.functional.cross_entropy(adapter.forward(theta, Xe), ye,
                                                reduction="none")
        return torch.stack([out[ye == k].mean() for k in range(4)])

    return torch.func.jacrev(losses)(problem.theta_hat).T


def ekfac_costs(X, y, X_test, y_test, n_large):
    """hessian="ekfac" next to the exact Gauss-Newton solve on a small net (build and
    solve times, their ratio, cosines of the inverse products), and its cost alone on
    a net whose explicit curvature would not fit in memory."""

    n = 2000
    est = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = est.fit(X[:n], y[:n])
    rows = {}
    for kind in ["exact", "ekfac"]:
        problem = _problem(model, X[:n], y[:n], kind)
        _, t_build = timed(lambda: problem.inverse(problem.theta_hat, problem.s))
        inverse = problem.inverse_hat
        B = torch.cat([_criterion_gradients(problem, X_test, y_test),
                       # a patch's right-hand side: 1% of the rows' summed gradients
                       _removed_gradient(problem, n // 100)], dim=1)
        solution, t_solve = timed(lambda: inverse.solve(B))
        rows[kind] = (t_build, t_solve, solution)
    p = problem.adapter.n_params
    print(f"EK-FAC vs exact Gauss-Newton, MLPClassifier(32) on {n} rows ({p} parameters)")
    exact = rows["exact"][2]
    for kind, (t_build, t_solve, solution) in rows.items():
        cos = torch.nn.functional.cosine_similarity(solution, exact, dim=0)
        print(f"  {kind:6s} build {t_build:.3f}s  solve (5 columns) {t_solve * 1e3:.2f}ms"
              f"  cosine with exact: values (4 classes) "
              f"{' '.join(f'{c:.3f}' for c in cos[:4].tolist())}, patch {float(cos[4]):.3f}")
    print(f"  ekfac / exact time: build {rows['ekfac'][0] / rows['exact'][0]:.3f}, "
          f"solve {rows['ekfac'][1] / rows['exact'][1]:.3f}")
    # The best any one-block-per-layer curvature can do: the exact Gauss-Newton's own
    # diagonal blocks, pseudo-inverted.
    from sklearn_puma._autodiff import hvp_function, matrix_from_hvp

    hvp = hvp_function(problem.adapter, problem.theta_hat, problem.X, problem.y,
                       problem.s, problem.n, gauss_newton=True)
    G = matrix_from_hvp(hvp, p, torch.float64, torch.device("cpu"))
    blocks = torch.zeros_like(G)
    for index, _ in problem.adapter.linear_layers():
        i = index.reshape(-1)
        blocks[i[:, None], i[None, :]] = G[i[:, None], i[None, :]]
    cos = torch.nn.functional.cosine_similarity(
        torch.linalg.pinv(blocks, hermitian=True, rtol=1e-10) @ B, exact, dim=0)
    print(f"  exact block-diagonal Gauss-Newton (one block per layer, for reference): "
          f"cosine with exact: values {' '.join(f'{c:.3f}' for c in cos[:4].tolist())}, "
          f"patch {float(cos[4]):.3f}")
    est = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, t_fit = timed(lambda: est.fit(X[:n_large], y[:n_large]))
    problem = _problem(model, X[:n_large], y[:n_large], "ekfac")
    p = problem.adapter.n_params
    _, t_build = timed(lambda: problem.inverse(problem.theta_hat, problem.s))
    B = _criterion_gradients(problem, X_test, y_test)
    _, t_solve = timed(lambda: problem.inverse_hat.solve(B))
    print(f"EK-FAC alone, MLPClassifier(256, 256) on {n_large} rows ({p} parameters; "
          f"the explicit curvature would take {p * p * 8 / 2**30:.0f} GiB): build "
          f"{t_build:.2f}s, solve (4 columns) {t_solve * 1e3:.1f}ms; 5 Adam epochs of "
          f"fitting took {t_fit:.1f}s")


def _removed_gradient(problem, count):
    from sklearn_puma._autodiff import per_sample_grads

    return per_sample_grads(problem.adapter, problem.theta_hat, problem.X[:count],
                            problem.y[:count]).sum(0)[:, None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--device", default="cpu", help="the skorch net's device")
    parser.add_argument("--epochs", type=int, default=20, help="the skorch net's epochs")
    parser.add_argument("--nets", nargs="+", default=["mlp", "skorch"],
                        choices=["mlp", "skorch"])
    parser.add_argument("--ekfac", action="store_true",
                        help="only hessian='ekfac''s cost and accuracy against the exact "
                             "Gauss-Newton solve (small net), and its cost on a large one")
    parser.add_argument("--n-large", type=int, default=20_000,
                        help="rows of the large net of --ekfac")
    args = parser.parse_args()
    X, y = make_classification(args.n + 10_000, 30, n_informative=15, n_classes=4,
                               n_clusters_per_class=2, random_state=0)
    X = StandardScaler().fit_transform(X)
    X, X_test, y, y_test = X[: args.n], X[args.n:], y[: args.n], y[args.n:]
    remove = np.zeros(args.n, dtype=bool)
    remove[np.random.default_rng(0).choice(args.n, args.n // 100, replace=False)] = True
    if args.ekfac:
        ekfac_costs(X, y, X_test, y_test, args.n_large)
        return
    if "mlp" in args.nets:
        sklearn_mlp(X, y, remove, X_test, y_test)
    if "skorch" in args.nets:
        skorch_net(X, y, remove, X_test, y_test, args.device, args.epochs)


if __name__ == "__main__":
    main()
