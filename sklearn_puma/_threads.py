"""Chunked passes over samples, with one thread pool at a time.

Measured on a 2-core machine (``benchmarks/bench_scale.py --kernels``): OpenBLAS's own
threads compute ``X^T X`` of a tall matrix no faster than one thread (0.43 s against
0.39 s at 10^6 x 100; 0.71 s against 0.38 s in another run), and torch's OpenMP
threads spinning beside them slow both further; the same product split into row chunks
that run in two worker threads, each with single-threaded kernels, takes 0.25 s.  So a pass that is pure linear algebra runs its
chunks in worker threads, one per available CPU, while the BLAS and torch kernels
inside them are held to one thread each: never two pools fighting for the cores.

Under an external joblib backend (``joblib.parallel_config("dask")``, Ray, Spark) the
chunks go through ``joblib.Parallel`` instead, so that a cluster runs them unchanged.
"""

import contextvars
import functools
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager

# Below this many rows per chunk, handing chunks to threads costs more than it saves.
_MIN_ROWS_PER_WORKER = 4096

_lock = threading.Lock()
_worker = threading.local()  # set in the pool's threads: a pass inside one runs serially
_state = {"depth": 0, "restore": None, "controller": None, "executors": {}}


# The ``n_jobs`` of the estimator whose method is running: passes deep in the numerics
# read it here rather than through every signature.
_n_jobs = contextvars.ContextVar("sklearn_puma_n_jobs", default=None)
_claims = contextvars.ContextVar("sklearn_puma_claims", default=None)
# Whether long passes show a progress bar: the running estimator's ``verbose``, or a
# notebook.
_progress = contextvars.ContextVar("sklearn_puma_progress", default=False)

# Rows from which a pass is long enough for a progress bar (about a second or more).
PROGRESS_MIN_ROWS = 200_000


def _in_notebook():
    import sys

    shell = sys.modules.get("IPython")
    shell = shell and getattr(shell, "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


@contextmanager
def n_jobs_of(estimator):
    """The estimator's ``n_jobs`` as the default of every pass inside, and torch's
    intra-op threads as they were on the way out (``claim_cores`` may lower them)."""
    import torch

    token = _n_jobs.set(getattr(estimator, "n_jobs", None))
    progress_token = _progress.set(bool(getattr(estimator, "verbose", 0))
                                   or _in_notebook())
    torch_threads = torch.get_num_threads()
    with ExitStack() as claims:
        stack_token = _claims.set(claims)
        try:
            yield
        finally:
            _claims.reset(stack_token)
            _progress.reset(progress_token)
            _n_jobs.reset(token)
            if torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)


def claim_cores(adapter):
    """Inside ``n_jobs_of``: for a model whose passes run in worker threads, the calling
    thread's own work between passes (a forward pass over all rows, criteria on the
    outputs, the p x p algebra) runs on single-threaded kernels too, until the method
    returns.  torch's OpenMP threads and OpenBLAS's spin for a while after each
    operation and slowed the workers that came next (the calling thread's Hessian and
    inverse of a multinomial LR at 10^5 x 50: 1.29 s, 0.72 s single-threaded)."""
    import torch

    claims = _claims.get()
    if claims is not None and adapter.closed_form and n_workers(None, True) > 1:
        torch.set_num_threads(1)
        claims.enter_context(single_threaded_kernels())


def using_n_jobs(method):
    """Run an estimator's method with its ``n_jobs`` as the default of every pass (a
    method that fits claims the cores itself, once its model is known)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with n_jobs_of(self):
            return method(self, *args, **kwargs)

    return wrapper


def on_fitted_model(method):
    """``using_n_jobs`` for a method of a fitted estimator, with the cores claimed for
    its fitted model's passes (``claim_cores``), one such method at a time per fitted
    model: a patch changes the objective its fitted model is read on while it runs
    (``Problem.tilted_for``) and then the estimator's fitted attributes, so values
    asked from another thread meanwhile would read a half-made state.  (Predictions
    are not held: they read ``estimator_``, replaced whole at the patch's end.)"""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with n_jobs_of(self):
            problem = self.__dict__.get("_problem")
            if problem is None:
                return method(self, *args, **kwargs)
            # Made where first needed (dict.setdefault is atomic), not pickled.
            with problem.__dict__.setdefault("_lock", threading.RLock()):
                claim_cores(problem.adapter)
                return method(self, *args, **kwargs)

    return wrapper


@functools.lru_cache(maxsize=1)
def available_cpus():
    """CPUs this process may run on: its affinity mask, within a cgroup CPU quota (read
    once: a pass over a small table must not pay a file read)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        count = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return count


def _external_backend():
    """The active joblib backend when it is not one of joblib's local defaults."""
    from joblib import parallel

    backend, n_jobs = parallel.get_active_backend()
    local = (parallel.LokyBackend, parallel.ThreadingBackend,
             parallel.MultiprocessingBackend, parallel.SequentialBackend)
    return (None, n_jobs) if isinstance(backend, local) else (backend, n_jobs)


def n_workers(n_jobs, thread_safe):
    """Worker threads for a pass.

    ``n_jobs`` as given (negative counts back from the CPUs, as in joblib).  Left None,
    a ``thread_safe`` pass takes the running estimator's ``n_jobs``, else joblib's
    configured one, else every available CPU; any other pass runs serially (torch's
    forward-mode levels are process-global, so autograd transforms cannot share them).
    """
    if n_jobs is None and thread_safe:
        n_jobs = _n_jobs.get()
        if n_jobs is None:
            n_jobs = _external_backend()[1]
        if n_jobs is None:
            return available_cpus()
    if n_jobs is None:
        return 1
    if n_jobs < 0:
        return max(1, available_cpus() + 1 + n_jobs)
    return max(1, n_jobs)


@contextmanager
def single_threaded_kernels():
    """Hold the BLAS libraries to one thread while worker threads share the CPUs.

    Re-entrant and safe across threads: the first pass in saves and lowers the limits,
    the last one out restores them (two passes in two threads must not leave the
    process single-threaded).  torch's intra-op threads are per OS thread and are set
    in each worker instead.
    """
    from threadpoolctl import ThreadpoolController

    with _lock:
        if _state["depth"] == 0:
            if _state["controller"] is None:
                _state["controller"] = ThreadpoolController()
            controller = _state["controller"].select(user_api="blas")
            _state["restore"] = controller.limit(limits=1)
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                _state["restore"].restore_original_limits()
                _state["restore"] = None


def _start_worker():
    import torch

    _worker.active = True
    torch.set_num_threads(1)


def _executor(workers):
    with _lock:
        executor = _state["executors"].get(workers)
        if executor is None:
            executor = ThreadPoolExecutor(workers, thread_name_prefix="sklearn-puma",
                                          initializer=_start_worker)
            _state["executors"][workers] = executor
    return executor


def imap_chunks(fn, n, size, n_jobs=None, thread_safe=False):
    """``fn(slice)`` for each chunk of ``range(n)``, yielded in order; with a progress
    bar over the rows (tqdm) for a long pass under a verbose estimator or in a notebook.

    ``size`` bounds the rows of a chunk (its memory).  ``thread_safe`` says that ``fn``
    is plain linear algebra (no autograd transform: torch's forward-mode levels are
    process-global), so that by default its chunks may run in one worker thread per
    CPU; the chunks are then made small enough that every worker has one.  At most two
    chunks per worker are in flight, so that a reduction over the results holds a few
    of them, not all.
    """
    with closing(_imap_chunks(fn, n, size, n_jobs, thread_safe)) as chunks:
        yield from _with_progress(chunks, fn, n, size)


def _with_progress(chunks, fn, n, size):
    """The results of ``chunks`` ((slice, result) pairs), counted by a progress bar for
    a long pass under a verbose estimator or in a notebook."""
    if n < PROGRESS_MIN_ROWS or n <= size or not _progress.get() \
            or getattr(_worker, "active", False):
        yield from (result for _, result in chunks)
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # an optional nicety: the pass runs without it
        yield from (result for _, result in chunks)
        return
    name = getattr(fn, "__qualname__", "pass").split(".<locals>")[0]
    with tqdm(total=n, unit="rows", desc=f"sklearn-puma {name}", leave=False) as bar:
        for sl, result in chunks:
            bar.update(sl.stop - sl.start)
            yield result


def _imap_chunks(fn, n, size, n_jobs, thread_safe):
    if n <= size or getattr(_worker, "active", False):
        # One chunk; or already inside a worker, whose siblings hold the CPUs (and
        # waiting on the pool from inside it could deadlock).
        # (No rows: one empty chunk, so that a sum over it is a zero of the right shape.)
        yield from ((sl, fn(sl)) for sl in (slice(start, min(start + size, n))
                                            for start in range(0, n, size) or [0]))
        return
    backend, _ = _external_backend()
    # An external backend runs chunks in its own processes, where autograd is safe.
    # A pass that is not thread-safe (a torch.func transform, or a skorch module's
    # functional_call, which swaps tensors into the shared module) runs serially here
    # whatever n_jobs says; only an external backend's processes may split it.
    safe = thread_safe or backend is not None
    workers = n_workers(n_jobs if safe else None, safe)
    if backend is None and workers > 1:
        size = min(size, max(_MIN_ROWS_PER_WORKER, -(-n // workers)))
    slices = [slice(start, min(start + size, n)) for start in range(0, n, size)]
    if len(slices) <= 1 or workers == 1:
        yield from ((sl, fn(sl)) for sl in slices)
        return
    if backend is not None:
        from joblib import Parallel, delayed

        client = getattr(backend, "client", None)  # Dask's joblib backend has one
        if client is not None:
            # A chunk function closes over the whole X: scattered once, it travels to
            # each worker once per pass, not with every chunk.
            fn = client.scatter(fn, hash=False)
        yield from zip(slices, Parallel(return_as="generator")(
            delayed(_apply)(fn, sl) for sl in slices))
        return
    workers = min(workers, len(slices))
    executor = _executor(workers)
    with single_threaded_kernels():
        pending = deque()
        try:
            for sl in slices:
                pending.append((sl, executor.submit(fn, sl)))
                if len(pending) >= 2 * workers:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def _apply(fn, sl):
    return fn(sl)


def map_chunks(fn, n, size, n_jobs=None, thread_safe=False):
    """``[fn(slice) for each chunk of range(n)]``, in order (see ``imap_chunks``)."""
    return list(imap_chunks(fn, n, size, n_jobs, thread_safe))


def sum_chunks(fn, n, size, n_jobs=None, thread_safe=False):
    """``sum(fn(slice) for each chunk)``, added in chunk order as results arrive."""
    total = None
    for part in imap_chunks(fn, n, size, n_jobs, thread_safe):
        total = part if total is None else total + part
    return total
