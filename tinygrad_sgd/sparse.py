"""Row-sparse gradients: the gradient of a lookup table that a batch touched only in part.

An embedding table with a million rows, looked up by a batch of 512 ids, has a gradient
that is zero outside those ids. ``Embedding(sparse=True)`` hands the optimizer a
:class:`SparseRowGrad` (the touched row indices and their gradient rows) instead of a
dense array, so SGD/Adagrad (and lazy Adam) can update those rows alone — the
collaborative-filtering use case. Ops produce it; the autograd engine accumulates it into
``param.grad``; optimizers and gradient clipping read it.
"""

from __future__ import annotations

from . import backend


class SparseRowGrad:
    """``grad[indices[k]] += values[k]`` for a tensor of ``shape``; every other row is zero.

    ``indices`` may repeat (each occurrence adds) until :meth:`coalesce` sums duplicates
    into unique, sorted rows.
    """

    __slots__ = ("indices", "values", "shape")

    def __init__(self, indices, values, shape: tuple):
        if indices.ndim != 1 or values.shape[0] != indices.shape[0] or tuple(values.shape[1:]) != tuple(shape[1:]):
            raise ValueError(f"SparseRowGrad: indices {indices.shape} and values {values.shape} do not fit "
                             f"a tensor of shape {shape}")
        if backend.device_of(indices) != backend.device_of(values):  # as torch's sparse tensors
            raise RuntimeError(f"SparseRowGrad: indices are on {backend.device_of(indices)} but values are on "
                               f"{backend.device_of(values)}; both must be on one device")
        self.indices = indices
        self.values = values
        self.shape = tuple(shape)

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def device(self) -> str:
        return backend.device_of(self.values)

    def coalesce(self) -> "SparseRowGrad":
        """Unique sorted row indices with the values of repeated rows summed."""
        xp = backend.get_array_module(self.values)
        unique, inverse = xp.unique(self.indices, return_inverse=True)
        summed = xp.zeros((unique.shape[0],) + self.shape[1:], dtype=self.values.dtype)
        backend.index_add(summed, inverse.reshape(-1), self.values)
        return SparseRowGrad(unique, summed, self.shape)

    def to_dense(self):
        """The full gradient array (zeros outside the touched rows)."""
        xp = backend.get_array_module(self.values)
        dense = xp.zeros(self.shape, dtype=self.values.dtype)
        backend.index_add(dense, self.indices, self.values)
        return dense

    def __add__(self, other: "SparseRowGrad") -> "SparseRowGrad":
        if not isinstance(other, SparseRowGrad) or other.shape != self.shape:
            raise TypeError("a SparseRowGrad adds only to a SparseRowGrad of the same shape")
        xp = backend.get_array_module(self.values)
        return SparseRowGrad(xp.concatenate([self.indices, other.indices]),
                             xp.concatenate([self.values, other.values]), self.shape)

    def __repr__(self) -> str:
        return f"SparseRowGrad(shape={self.shape}, rows={self.indices.shape[0]}, dtype={self.values.dtype})"
