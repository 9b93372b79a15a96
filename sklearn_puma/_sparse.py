"""Sparse training data (scipy.sparse CSR) for the models linear in their parameters.

The closed-form passes of ``_linear`` and ``_autodiff`` read the design ``X`` in only
four ways: its shape, rows (a slice or an index array), ``X @ B`` and ``X.T @ R`` for
dense ``B`` and ``R``.  ``SparseRows`` gives a CSR matrix exactly that surface, so those
passes run unchanged on a bag-of-words table with 10^5 columns that would not fit in
memory dense: each product costs its non-zeros, and the (b x q) results are dense and
small.  What needs the dense rows (a per-sample gradient, a Gram block of a
multi-output model, a product under a torch.func transform) gets them one chunk at a
time through ``to_dense``, bounded so that an oversized request is refused by name
instead of exhausting memory.
"""

import numpy as np
import scipy.sparse as sp
import torch

# Largest dense copy (floats) a sparse chunk may be expanded into: 1 GB in float64.
_DENSE_LIMIT = 2**27


def _is_plain(B):
    # A tensor scipy can read without breaking autograd or a torch.func transform.
    return (isinstance(B, torch.Tensor) and type(B) is torch.Tensor
            and not B.requires_grad and B.device.type == "cpu"
            and torch._C._functorch.is_functorch_wrapped_tensor(B) is False)


class SparseRows:
    """A CSR matrix (float64, on the CPU) standing in for a dense (n, d) tensor."""

    dtype, device, ndim = torch.float64, torch.device("cpu"), 2

    def __init__(self, matrix):
        matrix = sp.csr_matrix(matrix, dtype=np.float64)
        if not matrix.has_canonical_format:
            # Sorted indices without duplicates, on a copy: the user's matrix (whose
            # arrays csr_matrix shares) is never rewritten.
            matrix = matrix.copy()
            matrix.sum_duplicates()
        self.matrix = matrix

    @property
    def shape(self):
        return torch.Size(self.matrix.shape)

    def __len__(self):
        return self.matrix.shape[0]

    def __getitem__(self, rows):
        if isinstance(rows, tuple):
            raise TypeError("SparseRows selects rows only.")
        if isinstance(rows, slice) and rows.indices(len(self)) == (0, len(self), 1):
            return self  # the whole: no copy of the matrix per pass
        if isinstance(rows, torch.Tensor):
            rows = rows.cpu().numpy()
        return SparseRows(self.matrix[rows])

    def __matmul__(self, B):
        if not _is_plain(B):
            # Under autograd or torch.func (a criterion differentiated by jacrev):
            # the dense rows, so that the transform sees an ordinary product.
            return self.to_dense().to(B.device) @ B
        return torch.from_numpy(np.asarray(self.matrix @ B.numpy()))

    @property
    def T(self):
        return _Transposed(self.matrix)

    def to_dense(self):
        n, d = self.matrix.shape
        if n * d > _DENSE_LIMIT:
            raise MemoryError(
                f"This step needs {n} sparse rows as a dense ({n} x {d}) array "
                f"({n * d * 8 / 2**30:.1f} GiB). Networks read sparse X as dense rows: "
                "reduce the features first (TruncatedSVD, feature selection). Linear "
                "models keep it sparse except for a criterion that needs autodiff "
                "through the data (the fairness criteria, a callable): use a built-in "
                "loss criterion there."
            )
        return torch.from_numpy(self.matrix.toarray())

    def squared_row_norms(self):
        return torch.from_numpy(np.asarray(self.matrix.multiply(self.matrix).sum(axis=1))
                                .ravel())

    def gram(self, w):
        """``X^T diag(w) X`` (d, d) dense, for weights of any sign."""
        Xw = self.matrix.multiply(np.asarray(w)[:, None]).tocsr()
        return torch.from_numpy(np.asarray((self.matrix.T @ Xw).toarray()))


class _Transposed:
    def __init__(self, matrix):
        self._matrix = matrix

    def __matmul__(self, R):
        if not _is_plain(R):
            return SparseRows(self._matrix).to_dense().T @ R
        return torch.from_numpy(np.asarray(self._matrix.T @ R.numpy()))


def dense_rows(X):
    """X's rows as a dense tensor: for steps that need them one bounded chunk at a time."""
    return X.to_dense() if isinstance(X, SparseRows) else X


def with_ones(X):
    """``[X, 1]`` of sparse rows, still sparse."""
    ones = np.ones((len(X), 1))
    return SparseRows(sp.hstack([X.matrix, ones], format="csr"))


def as_design(X, dtype, device):
    """Sparse X for an adapter: ``SparseRows`` on the CPU in float64, else refused."""
    if dtype != torch.float64 or device.type != "cpu":
        raise TypeError(
            f"Sparse X is supported for models on the CPU in float64; this model is on "
            f"{device} in {dtype}. Pass X dense (X.toarray())."
        )
    return SparseRows(X)
