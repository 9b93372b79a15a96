"""Values and patches of linear models at scale, against the fit a user would run.

For each case, in one process with the same thread settings on both sides:

* values / fit: ``PumaPatcher(FrozenEstimator(model)).fit(X, y).values_`` (every
  training point valued, leave-one-out corrected) against ``LogisticRegression().fit(X, y)``;
* peak memory added while valuing, as a multiple of ``X.nbytes`` (the resident set
  sampled every millisecond in a fresh subprocess that holds only X and the model);
* patch / refit: ``patch`` of 1% of the rows against the same estimator refitted on
  ``sample_weight_`` (LogisticRegression and Ridge), and the command line's demo
  (``sklearn-puma``) with 1% removed and with its own removal (the 10% of the rows
  most likely mislabelled), as the demo times them.

Each timing is the best of ``--repeats`` after one warm-up call on small data (the
one-off import and first-call costs of torch are not a per-fit cost).

    python benchmarks/bench_scale.py                # 1e4, 1e5, 1e6 rows
    python benchmarks/bench_scale.py --max-rows 1e5 # quicker
    python benchmarks/bench_scale.py --threads 1    # everything single-threaded
    python benchmarks/bench_scale.py --kernels      # X^T X: BLAS threads vs workers
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings


def _limit_threads(threads):
    if threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)


def _data(n, p, n_classes, seed=0):
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n, n_features=p, n_informative=p // 2,
                               n_redundant=p // 10, n_classes=n_classes,
                               n_clusters_per_class=1, flip_y=0.05, random_state=seed)
    return X, y


def _model(kind):
    from sklearn.linear_model import LogisticRegression, Ridge

    return Ridge(alpha=1.0) if kind == "ridge" else LogisticRegression(max_iter=1000)


def _best(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(data_path, model_path, threads):
    """Prints the peak resident memory added by valuing, in bytes: the resident set is
    sampled every millisecond while valuing, against its size just before (the child
    holds only X, y and the model)."""
    import threading

    import joblib
    import numpy as np
    from sklearn.frozen import FrozenEstimator

    _limit_threads(threads)
    from sklearn_puma import PumaPatcher

    with np.load(data_path) as data:
        X, y = data["X"], data["y"]
    model = joblib.load(model_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PumaPatcher(FrozenEstimator(model)).fit(X[:500], y[:500]).values_  # warm-up
    before = _resident_bytes()
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PumaPatcher(FrozenEstimator(model)).fit(X, y).values_
    done.set()
    sampler.join()
    print(json.dumps({"added": max(peak[0], _resident_bytes()) - before,
                      "nbytes": X.nbytes}))


def run_case(name, n, p, n_classes, kind, repeats, threads, patch):
    import joblib
    import numpy as np
    from sklearn.base import clone
    from sklearn.frozen import FrozenEstimator

    from sklearn_puma import PumaPatcher

    X, y = _data(n, p, n_classes)
    if kind == "ridge":
        y = y.astype(float)
    estimator = _model(kind)
    fit_time, model = _best(lambda: clone(estimator).fit(X, y), repeats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PumaPatcher(FrozenEstimator(model)).fit(X[:500], y[:500]).values_  # warm-up

        def value():
            puma = PumaPatcher(FrozenEstimator(model)).fit(X, y)
            puma.values_  # computed on first access
            return puma

        value_time, puma = _best(value, repeats)
    row = {"case": name, "n": n, "fit_s": fit_time, "values_s": value_time,
           "values/fit": value_time / fit_time}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.joblib")
        joblib.dump(model, path)
        data_path = os.path.join(tmp, "data.npz")
        np.savez(data_path, X=X, y=y)
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", data_path, path, str(threads or 0)],
            capture_output=True, text=True, check=True)
        memory = json.loads(out.stdout.strip().splitlines()[-1])
    row["peak_added/X"] = memory["added"] / memory["nbytes"]
    if patch:
        removed = np.random.default_rng(1).choice(n, n // 100, replace=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patch_time, _ = _best(lambda: puma.patch(removed), repeats)
        refit_time, _ = _best(
            lambda: clone(estimator).fit(X, y, sample_weight=puma.sample_weight_), repeats)
        row.update({"patch_s": patch_time, "refit_s": refit_time,
                    "patch/refit": patch_time / refit_time, "eta": puma.eta_})
    return row


def command_line_demo(remove):
    """The command line's demo (``sklearn-puma``, breast cancer) with ``--remove``:
    its patch and its refit on ``sample_weight_``, as it times them (in turn, best of up
    to 50 each, one BLAS thread for both)."""
    import contextlib
    import io

    from sklearn_puma._cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.json")
        with contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            cli(["--remove", str(remove), "--quiet", "--output", path])
        with open(path) as f:
            summary = json.load(f)["summary"]
    seconds = summary["seconds"]
    return {"case": f"CLI demo, {remove:g} removed ({summary['removed']} rows)",
            "n": summary["rows"]["fitted"], "patch_s": seconds["patch"],
            "refit_s": seconds["refit"],
            "patch/refit": seconds["patch"] / seconds["refit"], "eta": summary["eta"]}


def kernels(n=1_000_000, p=100, repeats=3):
    """The measurement behind sklearn_puma._threads: ``X^T X`` of a tall X by
    OpenBLAS with its default threads, with one thread, and by PUMA's design_gram
    (row chunks on worker threads, one BLAS thread each), best of ``repeats``."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from sklearn_puma._linear import design_gram

    X = np.random.default_rng(0).standard_normal((n, p))
    ones = torch.ones(n, dtype=torch.float64)
    default, _ = _best(lambda: X.T @ X, repeats)
    with threadpool_limits(1, user_api="blas"):
        single, _ = _best(lambda: X.T @ X, repeats)
    chunked, _ = _best(lambda: design_gram(torch.from_numpy(X), ones, False), repeats)
    print(f"X^T X at {n} x {p}: OpenBLAS default threads {default:.3f} s, one BLAS "
          f"thread {single:.3f} s, design_gram's worker threads {chunked:.3f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-rows", type=float, default=1e6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="limit torch and BLAS to this many threads (0: defaults)")
    parser.add_argument("--kernels", action="store_true",
                        help="only time X^T X under each thread setting")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kernels:
        _limit_threads(args.threads)
        kernels()
        return
    if args.memory_child:
        data_path, path, threads = args.memory_child
        _memory_child(data_path, path, int(threads))
        return
    _limit_threads(args.threads)
    cases = [("binary LR p=100", int(n), 100, 2, "logistic", int(n) >= 10**6)
             for n in (1e4, 1e5, 1e6) if n <= args.max_rows]
    cases.append(("multinomial LR K=10 p=50", 100_000, 50, 10, "logistic", False))
    if args.max_rows >= 1e6:
        cases.append(("Ridge p=100", 1_000_000, 100, 2, "ridge", True))
    print(f"threads: {args.threads or 'defaults'}; best of {args.repeats}")
    header = ["case", "n", "fit_s", "values_s", "values/fit", "peak_added/X",
              "patch_s", "refit_s", "patch/refit", "eta"]
    print(" | ".join(header))
    rows = (run_case(*case[:5], repeats=args.repeats, threads=args.threads,
                     patch=case[5]) for case in cases)
    # The demo's own removal (the 10% most likely mislabelled) beside a 1% one.
    demos = (command_line_demo(remove) for remove in (0.01, 0.1))
    for row in (*rows, *demos):
        print(" | ".join(f"{row[h]:.3g}" if isinstance(row.get(h), float)
                         else str(row.get(h, "")) for h in header), flush=True)


if __name__ == "__main__":
    main()
