"""Row selections given as a boolean mask or as indices, checked once for everyone."""

import numpy as np


def row_mask(spec, n, what, row="training sample"):
    """A boolean mask over ``n`` rows from a mask or an index array, with errors that
    name ``what`` was wrong and what a ``row`` is."""
    arr = np.asarray(spec)
    if arr.ndim == 0:
        raise ValueError(
            f"{what} must be a boolean mask or a list of {row} indices; got the scalar "
            f"{spec!r}. Pass [{spec!r}] for the one at that index (a count or fraction "
            "of the lowest-valued points is the constructor's remove=)."
        )
    if arr.ndim > 1:
        raise ValueError(
            f"{what} must be one-dimensional (a boolean mask or a list of {row} "
            f"indices); got shape {arr.shape}."
        )
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(
                f"{what} as a boolean mask must have one entry per {row} "
                f"({n}); got shape {arr.shape}."
            )
        return arr.copy()
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(
                f"{what} must be a boolean mask or integer indices; got dtype "
                f"{arr.dtype}."
            )
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        # Negative indices are refused, not wrapped: -1 is more often a sentinel
        # (no match found) than a wish to remove the last row.
        raise IndexError(
            f"{what} has indices out of range for {n} {row}s (0 to {n - 1}): "
            f"{bad[:5].tolist()}."
        )
    if n > 2 and arr.shape == (n,) and np.isin(arr, (0, 1)).all():
        raise ValueError(
            f"{what} is {n} integers, all 0 or 1, one per {row}: a mask given as "
            "integers, which would be read as the indices 0 and 1. Pass it as a boolean "
            "mask (mask.astype(bool)) or as indices (np.flatnonzero(mask))."
        )
    mask = np.zeros(n, dtype=bool)
    mask[arr.astype(np.int64)] = True
    return mask
