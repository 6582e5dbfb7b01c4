"""Samplers: which sample indices an epoch visits, and in what order.

A sampler hands the :class:`~tinygrad_sgd.data.DataLoader` one epoch's whole index
sequence at once, as an int64 NumPy array (``sampler.indices(epoch)``); the loader cuts it
into batches by slicing, so no Python code runs per sample. Iterating a sampler yields the
indices of its current epoch as ints, like a PyTorch sampler.

Every random sampler is a pure function of ``(seed, epoch)``: epoch ``e``'s order comes
from ``numpy.random.default_rng([seed, e])``. The same seed therefore gives the same
batches in every run and every process, any epoch can be regenerated on its own, and a
run resumed from a checkpoint continues exactly where it stopped. ``seed=None`` draws the
seed once, at construction, from the engine's generator, so ``tg.manual_seed`` decides it.
"""

from __future__ import annotations

import numpy as np

from .. import backend, distributed
from ..tensor import Tensor
from ._checks import check_int, epoch_generator, resolve_seed


def _length_of(data_source, what: str) -> int:
    """A sampler accepts a dataset (anything with ``len``) or the number of samples."""
    if isinstance(data_source, (int, np.integer)) and not isinstance(data_source, bool):
        n = int(data_source)
    else:
        try:
            n = len(data_source)
        except TypeError:
            raise TypeError(f"{what}: data_source must be a dataset with len() or a sample count, "
                            f"got {type(data_source).__name__}") from None
    if n <= 0:
        raise ValueError(f"{what}: the dataset is empty (0 samples); there is nothing to sample")
    return n


class Sampler:
    """Base class: ``indices(epoch)`` returns the epoch's int64 index array.

    Subclasses implement ``indices`` and ``__len__`` (the number of indices one epoch
    yields), and set ``data_size`` (the length of the dataset they index, which the
    DataLoader checks), ``seed`` (None for deterministic samplers) and ``epoch``.
    """

    data_size: int | None = None
    seed: int | None = None
    epoch: int = 0

    def indices(self, epoch: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that ``iter(sampler)`` yields (the DataLoader does this for you)."""
        self.epoch = check_int(epoch, "epoch", minimum=0)

    def __iter__(self):
        return iter(self.indices(self.epoch).tolist())


class SequentialSampler(Sampler):
    """``0, 1, ..., n-1`` every epoch (evaluation, full-batch gradient descent)."""

    def __init__(self, data_source):
        self.num_samples = self.data_size = _length_of(data_source, "SequentialSampler")
        self.epoch = 0

    def indices(self, epoch: int) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return f"SequentialSampler(num_samples={self.num_samples})"


class RandomSampler(Sampler):
    """A random order each epoch: a permutation, or ``num_samples`` draws with replacement.

    Without replacement (the default) every sample is visited exactly once per epoch, in a
    fresh order each epoch — the textbook "shuffle, then sweep" mini-batch SGD. With
    ``replacement=True`` each index is drawn independently and uniformly, which is the
    i.i.d. sampling that SGD convergence proofs usually assume; ``num_samples`` (default
    ``len(data_source)``) sets the epoch length. PyTorch's arguments, with ``seed=``
    in place of ``generator=``.
    """

    seed: int  # always set (drawn at construction when not given)

    def __init__(self, data_source, replacement: bool = False, num_samples: int | None = None,
                 seed: int | None = None):
        self.n = self.data_size = _length_of(data_source, "RandomSampler")
        if not isinstance(replacement, (bool, np.bool_)):
            raise TypeError(f"RandomSampler: replacement must be a bool, got {replacement!r}")
        self.replacement = bool(replacement)
        if num_samples is None:
            num_samples = self.n
        else:
            num_samples = check_int(num_samples, "num_samples", minimum=1)
            if not self.replacement and num_samples > self.n:
                raise ValueError(f"RandomSampler: num_samples={num_samples} exceeds the {self.n} samples "
                                 "available without replacement (pass replacement=True)")
        self.num_samples = num_samples
        self.seed = resolve_seed(seed)
        self.epoch = 0

    def indices(self, epoch: int) -> np.ndarray:
        gen = epoch_generator(self.seed, epoch)
        if self.replacement:
            return gen.integers(0, self.n, size=self.num_samples, dtype=np.int64)
        order = gen.permutation(self.n)
        return order if self.num_samples == self.n else order[:self.num_samples]

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"RandomSampler(n={self.n}, replacement={self.replacement}, num_samples={self.num_samples}, "
                f"seed={self.seed})")


class WeightedRandomSampler(Sampler):
    """``num_samples`` indices drawn with probability ``p_i = w_i / sum(w)``.

    The usual cure for class imbalance: weight each sample by ``1 / count(its class)`` and
    every class is drawn equally often in expectation. With ``replacement=False`` an index
    is drawn at most once per epoch (so at most as many as there are non-zero weights).
    PyTorch's arguments, with ``seed=`` in place of ``generator=``.
    """

    seed: int  # always set (drawn at construction when not given)

    def __init__(self, weights, num_samples: int, replacement: bool = True, seed: int | None = None):
        if isinstance(weights, Tensor):
            weights = weights.detach().numpy()
        w = np.asarray(backend.to_numpy(weights) if backend.is_array(weights) else weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"WeightedRandomSampler: weights must be a non-empty 1-D sequence, got shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("WeightedRandomSampler: weights must be finite and non-negative")
        total = w.sum()
        if total <= 0:
            raise ValueError("WeightedRandomSampler: weights sum to zero; at least one must be positive")
        if not isinstance(replacement, (bool, np.bool_)):
            raise TypeError(f"WeightedRandomSampler: replacement must be a bool, got {replacement!r}")
        self.replacement = bool(replacement)
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        if not self.replacement and self.num_samples > int(np.count_nonzero(w)):
            raise ValueError(f"WeightedRandomSampler: num_samples={self.num_samples} exceeds the "
                             f"{int(np.count_nonzero(w))} samples with non-zero weight, which is all that "
                             "can be drawn without replacement")
        self.probabilities = w / total
        self.data_size = int(w.size)
        self.seed = resolve_seed(seed)
        self.epoch = 0

    def indices(self, epoch: int) -> np.ndarray:
        gen = epoch_generator(self.seed, epoch)
        return gen.choice(self.probabilities.size, size=self.num_samples, replace=self.replacement,
                          p=self.probabilities).astype(np.int64, copy=False)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"WeightedRandomSampler(n={self.probabilities.size}, num_samples={self.num_samples}, "
                f"replacement={self.replacement}, seed={self.seed})")


class DistributedSampler(Sampler):
    """Rank ``rank``'s share of each epoch when ``num_replicas`` workers train together.

    Every replica computes the same epoch order (a permutation from ``(seed, epoch)``, or
    ``0..n-1`` with ``shuffle=False``) and keeps every ``num_replicas``-th index starting at
    ``rank``, so the shards are disjoint and together cover the epoch. When ``n`` is not a
    multiple of ``num_replicas``, the order is padded by repeating its first indices so
    every rank gets the same number of batches (data-parallel steps must stay in lock
    step); ``drop_last=True`` drops the tail instead. This is PyTorch's
    ``DistributedSampler``; as there, ``seed`` defaults to 0 rather than a random draw
    because all replicas must agree on it, and ``set_epoch(e)`` must be called each epoch
    (the DataLoader does it) or every epoch repeats the same order.
    ``num_replicas`` and ``rank`` default to the world size and rank of the process group
    (``tg.distributed``; a world of one before it is initialised), as in PyTorch.
    """

    seed: int  # always set (drawn at construction when not given)

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        self.n = self.data_size = _length_of(dataset, "DistributedSampler")
        num_replicas = distributed.get_world_size() if num_replicas is None else num_replicas
        rank = distributed.get_rank() if rank is None else rank
        self.num_replicas = check_int(num_replicas, "num_replicas", minimum=1)
        self.rank = check_int(rank, "rank", minimum=0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"DistributedSampler: rank={self.rank} must be in [0, num_replicas={self.num_replicas})")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = resolve_seed(seed)
        if self.drop_last:
            self.num_samples = self.n // self.num_replicas
            if self.num_samples == 0:
                raise ValueError(f"DistributedSampler: {self.n} samples cannot give each of {self.num_replicas} "
                                 "replicas one sample with drop_last=True")
        else:
            self.num_samples = -(-self.n // self.num_replicas)  # ceil
        self.total_size = self.num_samples * self.num_replicas
        self.epoch = 0

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The full order all replicas share for ``epoch``, padded or cut to ``total_size``."""
        if self.shuffle:
            order = epoch_generator(self.seed, epoch).permutation(self.n)
        else:
            order = np.arange(self.n, dtype=np.int64)
        if self.total_size <= self.n:
            return order[:self.total_size]
        repeats = -(-self.total_size // self.n)
        return np.tile(order, repeats)[:self.total_size]

    def indices(self, epoch: int) -> np.ndarray:
        return self.epoch_order(epoch)[self.rank::self.num_replicas]

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"DistributedSampler(n={self.n}, num_replicas={self.num_replicas}, rank={self.rank}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last})")
