"""What the detection benchmarks share: how a method is timed and how its ranking is
scored, so that their tables read the same way."""

import time

import numpy as np

REPEATS = 3
REPEAT_BUDGET_S = 2.0


def timed(func):
    """``func()``'s result and its best wall time over up to REPEATS runs (fewer when
    they take longer than REPEAT_BUDGET_S together)."""
    times = []
    while len(times) < REPEATS and sum(times) < REPEAT_BUDGET_S:
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return result, min(times)


def recall_at(scores, flipped, fraction):
    """Expected fraction of the flipped rows among the ``fraction`` lowest scores, the
    run of rows tied at the cut inspected in random order."""
    k = int(round(fraction * len(scores)))
    cut = np.sort(scores)[k - 1]
    below, tied = scores < cut, scores == cut
    found = flipped[below].sum() + (k - below.sum()) * flipped[tied].mean()
    return found / flipped.sum()
