"""Patch vs retrain for neural networks, side by side in one run.

Run: python benchmarks/bench_networks.py [--n 50000] [--device cuda] [--nets mlp skorch]

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--device", default="cpu", help="the skorch net's device")
    parser.add_argument("--epochs", type=int, default=20, help="the skorch net's epochs")
    parser.add_argument("--nets", nargs="+", default=["mlp", "skorch"],
                        choices=["mlp", "skorch"])
    args = parser.parse_args()
    X, y = make_classification(args.n + 10_000, 30, n_informative=15, n_classes=4,
                               n_clusters_per_class=2, random_state=0)
    X = StandardScaler().fit_transform(X)
    X, X_test, y, y_test = X[: args.n], X[args.n:], y[: args.n], y[args.n:]
    remove = np.zeros(args.n, dtype=bool)
    remove[np.random.default_rng(0).choice(args.n, args.n // 100, replace=False)] = True
    if "mlp" in args.nets:
        sklearn_mlp(X, y, remove, X_test, y_test)
    if "skorch" in args.nets:
        skorch_net(X, y, remove, X_test, y_test, args.device, args.epochs)


if __name__ == "__main__":
    main()
