"""Datasets: the indexable collections a DataLoader draws batches from.

The protocol is PyTorch's map-style dataset — ``len(ds)`` and ``ds[i]`` returning one
sample — plus one method of our own that keeps the loader fast:

``ds.gather(indices)``
    The whole batch for an int64 index array, as a tuple of raw arrays (or one array),
    built with one vectorised fancy-index per stored array. :class:`TensorDataset`,
    :class:`Subset` of one, and :class:`~tinygrad_sgd.data.MemmapDataset` implement it;
    the base class falls back to ``ds[i]`` per index followed by :func:`default_collate`,
    which is what any other dataset (including a plain object with ``__len__`` and
    ``__getitem__``) gets.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Tensor
from ._checks import check_int, resolve_seed


class Dataset:
    """Base class: subclasses implement ``__len__`` and ``__getitem__(i)``.

    ``gather(indices)`` defaults to a per-sample loop and :func:`default_collate`;
    array-backed datasets override it with one fancy-index per array.
    """

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index):  # pragma: no cover - abstract
        raise NotImplementedError

    def gather(self, indices: np.ndarray):
        return _gather_by_item(self, indices)


def _gather_by_item(dataset, indices: np.ndarray):
    """The generic batch: ``dataset[i]`` for each index, then :func:`default_collate`."""
    return default_collate([dataset[i] for i in indices.tolist()])


def _field_array(value):
    """One sample field as a raw array (Tensor -> its data; numbers -> NumPy)."""
    if isinstance(value, Tensor):
        return value.data
    if backend.is_array(value):
        return value
    array = np.asarray(value)
    # Python floats become float32, the engine's default float (as Tensor(...) does).
    return array.astype(np.float32) if array.dtype == np.float64 and not isinstance(value, np.generic) else array


def default_collate(samples: list):
    """Stack a list of samples into a batch: a tuple of arrays, or one array.

    Each sample is a tuple/list of fields (Tensors, arrays or numbers) or a single such
    value; field ``k`` of every sample is stacked along a new leading axis. Python ints
    give int64, Python floats float32 (the engine's default float).
    """
    if not samples:
        raise ValueError("default_collate: cannot collate an empty list of samples")
    first = samples[0]
    if isinstance(first, (tuple, list)):
        width = len(first)
        for s in samples:
            if not isinstance(s, (tuple, list)) or len(s) != width:
                raise ValueError(f"default_collate: samples have different structures ({first!r:.60} vs {s!r:.60})")
        return tuple(_stack([s[k] for s in samples]) for k in range(width))
    return _stack(samples)


def _stack(values: list):
    arrays = [_field_array(v) for v in values]
    xp = backend.get_array_module(arrays[0])
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"default_collate: cannot stack samples of different shapes {sorted(shapes)}; pad them "
                         "to one length first (see tg.data.pad_sequences)")
    return xp.stack(arrays)


def _as_stored_array(value, position: int):
    """TensorDataset storage: arrays and Tensors keep their dtype and memory; lists are
    converted like ``Tensor(...)`` converts them (float -> float32, ints stay int64)."""
    if isinstance(value, Tensor):
        return value.data
    converted = not backend.is_array(value)
    if converted:
        try:
            value = np.asarray(value)
        except (ValueError, TypeError) as error:
            raise TypeError(f"TensorDataset: argument {position} cannot be converted to an array: {error}") from None
    if value.dtype.kind not in "biuf":
        raise TypeError(f"TensorDataset: argument {position} has unsupported dtype {value.dtype} "
                        "(bool, integer or floating-point data only)")
    return value.astype(np.float32) if converted and value.dtype.kind == "f" else value


class TensorDataset(Dataset):
    """Samples ``i`` of several equal-length arrays: ``TensorDataset(X, y)[i] == (X[i], y[i])``.

    Takes Tensors, NumPy/CuPy arrays or nested lists. Arrays and Tensors are stored as
    they are — no copy, no dtype change (float64 stays float64; keep labels int64 for
    the losses); lists convert like ``Tensor(...)`` (floats to float32). ``gather`` takes
    a batch with one fancy-index per array, on the device each array lives on.
    """

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        stored = [_as_stored_array(a, k) for k, a in enumerate(arrays)]
        for k, a in enumerate(stored):
            if a.ndim == 0:
                raise ValueError(f"TensorDataset: argument {k} is a 0-d array; each needs a leading sample axis")
        lengths = [a.shape[0] for a in stored]
        if len(set(lengths)) > 1:
            described = ", ".join(f"argument {k}: {n}" for k, n in enumerate(lengths))
            raise ValueError(f"TensorDataset: arrays have different lengths along axis 0 ({described})")
        self.arrays = tuple(stored)
        self._length = lengths[0]

    @property
    def tensors(self) -> tuple:
        """The stored arrays wrapped as Tensors (no copy)."""
        return tuple(Tensor._make(a, backend.device_of(a)) for a in self.arrays)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        return tuple(Tensor._make(a[index], backend.device_of(a)) for a in self.arrays)

    def gather(self, indices: np.ndarray) -> tuple:
        out = []
        for a in self.arrays:
            if isinstance(a, np.ndarray):
                # np.take with axis=0 is NumPy's fastest row gather (faster than a[idx]).
                out.append(np.take(a, indices, axis=0))
            else:  # a CuPy array: move the indices next to it and gather on its device
                out.append(a[backend.to_device(indices, backend.device_of(a))])
        return tuple(out)

    def __repr__(self) -> str:
        fields = ", ".join(f"{a.dtype}{tuple(a.shape)}" for a in self.arrays)
        return f"TensorDataset({fields})"


ArrayDataset = TensorDataset  # the same thing, under the name NumPy users look for


def _index_array(indices, length: int, what: str) -> np.ndarray:
    if isinstance(indices, Tensor):
        indices = indices.detach().numpy()
    array = np.asarray(backend.to_numpy(indices) if backend.is_array(indices) else indices)
    if array.size == 0:
        array = array.astype(np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TypeError(f"{what}: indices must be a 1-D sequence of integers, got dtype {array.dtype} "
                        f"shape {array.shape}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < -length or array.max() >= length):
        bad = array[(array < -length) | (array >= length)][0]
        raise IndexError(f"{what}: index {int(bad)} is out of range for a dataset of {length} samples")
    return np.where(array < 0, array + length, array)


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order.

    Batches of a Subset of an array dataset are still one fancy-index per array: the
    subset maps the batch's positions through its own index array first.
    """

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = _index_array(indices, len(dataset), "Subset")

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.dataset[int(self.indices[index])]
        raise TypeError(f"Subset indices must be integers, got {type(index).__name__}")

    def gather(self, indices: np.ndarray):
        return gather(self.dataset, self.indices[indices])

    def __repr__(self) -> str:
        return f"Subset({self.dataset!r}, {self.indices.size} samples)"


def gather(dataset, indices: np.ndarray):
    """The batch of ``dataset`` at ``indices``: ``dataset.gather`` when it is a Dataset,
    else ``dataset[i]`` per index and :func:`default_collate` (any map-style object)."""
    if isinstance(dataset, Dataset):
        return dataset.gather(indices)
    return _gather_by_item(dataset, indices)


def random_split(dataset, lengths, seed: int | None = None) -> list[Subset]:
    """Split ``dataset`` into non-overlapping random :class:`Subset` s of the given lengths.

    ``lengths`` are sample counts summing to ``len(dataset)``, or fractions summing to 1
    (counts ``floor(f * n)``, the remainder handed out one at a time from the first
    subset on, as PyTorch does). The permutation comes from ``seed`` (None: drawn from the
    engine's generator, so ``tg.manual_seed`` decides it).
    """
    n = len(dataset)
    lengths = list(lengths)
    if not lengths:
        raise ValueError("random_split: lengths is empty")
    if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in lengths):
        counts = [check_int(x, "random_split length", minimum=0) for x in lengths]
        if sum(counts) != n:
            raise ValueError(f"random_split: lengths {counts} sum to {sum(counts)}, not the dataset's {n} samples")
    else:
        fractions = np.asarray(lengths, dtype=np.float64)
        if np.any(fractions < 0) or np.any(fractions > 1) or not np.isclose(fractions.sum(), 1.0):
            raise ValueError(f"random_split: fractions {lengths} must be in [0, 1] and sum to 1")
        counts = [int(np.floor(f * n)) for f in fractions]
        for k in range(n - sum(counts)):
            counts[k % len(counts)] += 1
    order = np.random.default_rng(resolve_seed(seed)).permutation(n)
    bounds = np.cumsum([0] + counts)
    return [Subset(dataset, order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
