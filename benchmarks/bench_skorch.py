"""Patch vs retrain for a skorch net, side by side in one run, on CPU or CUDA.

Run: python benchmarks/bench_skorch.py [--n 50000] [--device cuda]

Trains a skorch NeuralNetClassifier (a 64-64 tanh MLP, cross-entropy on logits) on n
rows, patches out a random 1% with PumaPatcher (all parameters, conjugate gradients on
Hessian-vector products, on the net's own device), retrains the same net from scratch
without those rows, and prints the patch/retrain time ratio next to the held-out
prediction agreement of patch and retrain (and, as the ceiling, of the original net and
the retrained one: retraining from a new start moves a net by more than 1% of its data).
"""

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.frozen import FrozenEstimator
from sklearn.preprocessing import StandardScaler

from sklearn_puma import NonConvexWarning, PumaPatcher


class MLP(torch.nn.Module):
    def __init__(self, n_features=30, n_classes=4, hidden=64):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, n_classes))

    def forward(self, X):
        return self.net(X)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main():
    from skorch import NeuralNetClassifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parameters", nargs="+", default=["last_layer", "all"],
                        help="what the patch may change; 'all' uses CG on HVPs")
    args = parser.parse_args()
    X, y = make_classification(args.n + 10_000, 30, n_informative=15, n_classes=4,
                               n_clusters_per_class=2, random_state=0)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    X, X_test, y, y_test = X[: args.n], X[args.n:], y[: args.n], y[args.n:]
    remove = np.zeros(args.n, dtype=bool)
    remove[np.random.default_rng(0).choice(args.n, args.n // 100, replace=False)] = True

    net = NeuralNetClassifier(MLP, criterion=torch.nn.CrossEntropyLoss,
                              optimizer=torch.optim.Adam, lr=1e-2, batch_size=512,
                              max_epochs=args.epochs, train_split=None, verbose=0,
                              device=args.device)
    torch.manual_seed(0)
    model, t_fit = timed(lambda: clone(net).fit(X, y))
    torch.manual_seed(0)
    retrained, t_retrain = timed(lambda: clone(net).fit(X[~remove], y[~remove]))
    p = sum(q.numel() for q in model.module_.parameters())
    print(f"skorch MLP ({p} parameters) on {args.n} rows, device {args.device}: fit "
          f"{t_fit:.1f}s, retrain without 1% {t_retrain:.1f}s")
    reference = np.mean(model.predict(X_test) == retrained.predict(X_test))
    for parameters in args.parameters:
        puma = PumaPatcher(FrozenEstimator(model), parameters=parameters,
                           **({"hessian": "cg", "n_steps": 2} if parameters == "all" else {}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonConvexWarning)
            _, t_prepare = timed(lambda: puma.fit(X, y))
            _, t_patch = timed(lambda: puma.patch(remove))
        agree = np.mean(puma.predict(X_test) == retrained.predict(X_test))
        print(f"  PUMA parameters={parameters!r} ({puma.hessian_}, damping "
              f"{puma.damping_:.3g}): value all rows {t_prepare:.1f}s, patch {t_patch:.2f}s, "
              f"eta {puma.eta_:.2f}")
        print(f"    patch / retrain time ratio: {t_patch / t_retrain:.3f}")
        print(f"    held-out agreement patch vs retrain: {agree:.4f} "
              f"(original vs retrain: {reference:.4f}); patched accuracy "
              f"{np.mean(puma.predict(X_test) == y_test):.4f}")
    print(f"  held-out accuracy: original {np.mean(model.predict(X_test) == y_test):.4f}, "
          f"retrained {np.mean(retrained.predict(X_test) == y_test):.4f}")


if __name__ == "__main__":
    main()
