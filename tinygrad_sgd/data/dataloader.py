"""DataLoader: cuts a dataset into shuffled mini-batches of Tensors.

The three regimes of gradient descent are one argument apart::

    DataLoader(ds, batch_size=1, shuffle=True)          # stochastic gradient descent
    DataLoader(ds, batch_size=32, shuffle=True)         # mini-batch SGD
    DataLoader(ds, batch_size=None)                     # full-batch gradient descent

How an epoch is made: the sampler returns the epoch's whole index order as one int64
array (a fresh permutation per epoch by default); batch ``b`` is the slice
``order[b*B:(b+1)*B]``; the dataset's ``gather`` takes those rows with one fancy-index
per stored array; the arrays are wrapped as Tensors with no further copy and moved to
the loader's device. No Python code runs per sample for array-backed datasets.

Position and resuming. The loader counts epochs itself: a pass that hands out an
epoch's last batch moves it to the next epoch, whose order is a new permutation
computed from ``(seed, epoch)``. ``state_dict()`` is ``{"seed", "epoch",
"sample_offset", "num_samples"}`` (plain ints) where ``sample_offset`` counts the samples
of the epoch's order already handed out; after ``load_state_dict`` the next ``for`` loop
continues that permutation at exactly that sample, in this process or another one, and
with any batch size: a run resumed with a new batch size (a changed batch-size schedule)
still sees every sample of the epoch once. A loop left early with
``break`` (or a peek with ``next(iter(loader))``) does not finish the epoch: the next
``for`` loop starts the same epoch from its first batch, as a new iterator does in
PyTorch; ``load_state_dict(state_dict())`` continues it instead.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Tensor, _check_dtype
from ._checks import check_int, check_seed, resolve_seed
from .batch_schedule import BatchSizeSchedule
from .dataset import gather
from .sampler import RandomSampler, Sampler, SequentialSampler

_DEFAULT_BATCH_SIZE = 1


class _Unset:
    def __repr__(self) -> str:
        return str(_DEFAULT_BATCH_SIZE)


_UNSET = _Unset()  # lets batch_size_schedule= tell "batch_size not given" from batch_size=1


class DataLoader:
    """Mini-batches of ``dataset`` as tuples of Tensors.

    Arguments (PyTorch's names):

    batch_size
        Samples per batch: 1 is pure SGD, ``len(dataset)`` or ``None`` full-batch GD.
        (PyTorch's ``batch_size=None`` means "no batching"; here it means one batch of
        the whole epoch.) The last batch is smaller unless ``drop_last``.
    shuffle
        A fresh random permutation every epoch (sampling without replacement);
        ``replacement=True`` draws each index uniformly with replacement instead.
    seed
        Base seed of the shuffles: epoch ``e`` uses ``numpy.random.default_rng([seed,
        e])``. ``None`` draws one from the engine's generator at construction, so
        ``tg.manual_seed`` fixes it. Unused (and nothing drawn) without shuffling.
    sampler
        A :class:`~tinygrad_sgd.data.Sampler` choosing the indices instead (weighted,
        distributed, ...); excludes ``shuffle``, ``replacement`` and ``seed``, which
        belong to the sampler then.
    batch_size_schedule
        A :class:`~tinygrad_sgd.data.BatchSizeSchedule`; each epoch takes its batch size
        from it, and ``lr_scale()`` gives the matching linear learning-rate factor.
    device
        Where batches go (default: the engine's default device). Gathering happens where
        the data lives; batches are then copied over.

    Batches are tuples of Tensors when the dataset's samples are tuples (a
    ``TensorDataset(X, y)`` gives ``(xb, yb)``), else single Tensors. Dtypes are the
    stored ones: float64 data stays float64, int64 labels stay int64.
    """

    def __init__(self, dataset, batch_size=_UNSET, shuffle: bool = False, drop_last: bool = False,
                 seed: int | None = None, sampler: Sampler | None = None,
                 batch_size_schedule: BatchSizeSchedule | None = None, device=None, *,
                 replacement: bool = False):
        try:
            n = len(dataset)
        except TypeError:
            raise TypeError(f"DataLoader: dataset must have len() and indexing, got {type(dataset).__name__}") from None
        if n == 0:
            raise ValueError("DataLoader: the dataset is empty (0 samples)")
        for name, flag in (("shuffle", shuffle), ("drop_last", drop_last), ("replacement", replacement)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"DataLoader: {name} must be a bool, got {flag!r}")
        if batch_size_schedule is not None:
            if not isinstance(batch_size_schedule, BatchSizeSchedule):
                raise TypeError("DataLoader: batch_size_schedule must be a BatchSizeSchedule, got "
                                f"{type(batch_size_schedule).__name__}")
            if batch_size is not _UNSET:
                raise ValueError("DataLoader: give batch_size or batch_size_schedule, not both")
            fixed_batch_size = None
        else:
            batch_size = _DEFAULT_BATCH_SIZE if batch_size is _UNSET else batch_size
            fixed_batch_size = None if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
        if sampler is not None:
            if not isinstance(sampler, Sampler):
                raise TypeError(f"DataLoader: sampler must be a tg.data.Sampler, got {type(sampler).__name__}")
            if shuffle or replacement:
                raise ValueError("DataLoader: sampler= excludes shuffle=/replacement= (the sampler decides the order)")
            if seed is not None:
                raise ValueError("DataLoader: sampler= excludes seed=; seed the sampler itself")
            if sampler.data_size is not None and sampler.data_size != n:
                raise ValueError(f"DataLoader: the sampler indexes {sampler.data_size} samples but the dataset "
                                 f"has {n}")
        check_seed(seed)
        device = backend.parse_device(device)
        samples = len(sampler) if sampler is not None else n
        first_size = (batch_size_schedule.batch_size(0) if batch_size_schedule is not None
                      else fixed_batch_size or samples)
        _batch_count(samples, first_size, drop_last, 0)  # reject a loader with no batch, now
        # Every check has passed: only now draw from the global generator (seed=None).
        if sampler is None and (shuffle or replacement):
            sampler = RandomSampler(n, replacement=bool(replacement), seed=resolve_seed(seed))
        elif sampler is None:
            sampler = SequentialSampler(n)
        self.dataset = dataset
        self.sampler = sampler
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.batch_size_schedule = batch_size_schedule
        self._fixed_batch_size = fixed_batch_size
        self.device = device
        self._epoch = 0            # the epoch the next fresh iteration runs
        self._start_offset = 0     # the sample it starts at (set by load_state_dict)
        self._position = (0, 0)    # (epoch, samples handed out) of the latest iteration

    # ------------------------------------------------------------------ sizes
    @property
    def seed(self) -> int | None:
        """The sampler's base seed (None for a sequential order)."""
        return self.sampler.seed

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self._position[0]

    def batch_size_at(self, epoch: int) -> int:
        """The batch size used in ``epoch`` (the whole epoch for ``batch_size=None``)."""
        if self.batch_size_schedule is not None:
            return self.batch_size_schedule.batch_size(epoch)
        return self._fixed_batch_size if self._fixed_batch_size is not None else len(self.sampler)

    @property
    def batch_size(self) -> int:
        """The batch size of the current epoch."""
        return self.batch_size_at(self.epoch)

    def _num_batches(self, epoch: int) -> int:
        return _batch_count(len(self.sampler), self.batch_size_at(epoch), self.drop_last, epoch)

    def __len__(self) -> int:
        """Number of batches in the current epoch."""
        return self._num_batches(self.epoch)

    def lr_scale(self, epoch: int | None = None) -> float:
        """The linear-scaling learning-rate factor for ``epoch`` (default: the current one):
        ``batch_size(epoch) / base_batch_size`` of the schedule, 1.0 without a schedule."""
        if self.batch_size_schedule is None:
            return 1.0
        return self.batch_size_schedule.lr_scale(self.epoch if epoch is None else check_int(epoch, "epoch", minimum=0))

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the first batch of ``epoch`` (like
        ``DistributedSampler.set_epoch``; needed only to jump, as epochs advance by
        themselves)."""
        epoch = check_int(epoch, "epoch", minimum=0)
        self._num_batches(epoch)
        self._epoch, self._start_offset, self._position = epoch, 0, (epoch, 0)
        self.sampler.set_epoch(epoch)

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        epoch, start = self._epoch, self._start_offset
        self._start_offset = 0
        self.sampler.set_epoch(epoch)
        size = self.batch_size_at(epoch)
        order = self.sampler.indices(epoch)
        # Batches are cut from ``start`` on (0, or where a resumed run stopped), so batch
        # b of a fresh epoch is order[b*B:(b+1)*B] and a resume continues sample by sample.
        count = _batch_count(len(order) - start, size, self.drop_last, epoch)
        self._position = (epoch, start)
        return self._batches(order, epoch, start, size, count)

    def _batches(self, order, epoch, start, size, count):
        dataset, device = self.dataset, self.device
        for b in range(count):
            first = start + b * size
            batch = _to_tensors(gather(dataset, order[first:first + size]), device)  # may raise: position unchanged
            if b + 1 == count:
                # The epoch's last batch is handed out: the epoch is done. Advancing here
                # (not after the consumer asks for one more) makes a checkpoint taken now
                # say "epoch + 1, sample 0" instead of an empty rest of this epoch.
                self._epoch = epoch + 1
                self._position = (epoch + 1, 0)
            else:
                self._position = (epoch, first + size)
            yield batch

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """Where the loader stands: ``{"seed", "epoch", "sample_offset", "num_samples"}``.

        ``sample_offset`` is how many samples of ``epoch``'s order were handed out (the
        next batch starts there, whatever its size); ``num_samples`` (samples per epoch)
        lets ``load_state_dict`` refuse a different dataset.
        """
        epoch, offset = self._position
        return {"seed": self.seed, "epoch": epoch, "sample_offset": offset, "num_samples": len(self.sampler)}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``: the next iteration continues the saved epoch's order at
        the saved sample, so with the same batch size it yields exactly the batches an
        uninterrupted run would have yielded, and with another batch size every remaining
        sample of the epoch once. (With ``drop_last`` and fewer samples left than one
        batch, the epoch is over: the next iteration starts the next one.) A state from
        before ``sample_offset`` was recorded (``batch_index``) loads as
        ``batch_index * batch_size``. Nothing changes when it raises.
        """
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict expects a dict, got {type(state).__name__}")
        state = dict(state)
        if "sample_offset" not in state and "batch_index" in state and "epoch" in state:
            batch_index = check_int(state.pop("batch_index"), "batch_index", minimum=0)
            state["sample_offset"] = batch_index * self.batch_size_at(check_int(state["epoch"], "epoch", minimum=0))
        missing = {"seed", "epoch", "sample_offset", "num_samples"} - set(state)
        if missing:
            raise KeyError(f"DataLoader.load_state_dict: missing keys {sorted(missing)}")
        epoch = check_int(state["epoch"], "epoch", minimum=0)
        offset = check_int(state["sample_offset"], "sample_offset", minimum=0)
        seed = check_seed(state["seed"])
        if state["num_samples"] != len(self.sampler):
            raise ValueError(f"DataLoader.load_state_dict: the state is for {state['num_samples']} samples per epoch, "
                             f"this loader has {len(self.sampler)}")
        if (seed is None) != (self.sampler.seed is None):
            raise ValueError("DataLoader.load_state_dict: the state is from a "
                             f"{'sequential' if seed is None else 'shuffling'} loader, this one "
                             f"{'shuffles' if seed is None else 'is sequential'}")
        samples = len(self.sampler)
        if offset >= samples:
            raise ValueError(f"DataLoader.load_state_dict: sample_offset={offset} but epoch {epoch} has "
                             f"{samples} samples")
        self._num_batches(epoch)  # the epoch must have a batch at this loader's batch size
        if self.drop_last and samples - offset < self.batch_size_at(epoch):
            epoch, offset = epoch + 1, 0  # no full batch left: the epoch is over
            self._num_batches(epoch)
        # All checks passed: now change state.
        self.sampler.seed = seed
        self.sampler.set_epoch(epoch)
        self._epoch, self._start_offset, self._position = epoch, offset, (epoch, offset)

    def __repr__(self) -> str:
        size = ("schedule=" + repr(self.batch_size_schedule) if self.batch_size_schedule is not None
                else f"batch_size={self._fixed_batch_size}")
        return (f"DataLoader({type(self.dataset).__name__} of {len(self.dataset)}, {size}, "
                f"sampler={self.sampler!r}, drop_last={self.drop_last}, device='{self.device}')")


def _batch_count(samples: int, size: int, drop_last: bool, epoch: int) -> int:
    count = samples // size if drop_last else -(-samples // size)
    if count == 0:
        raise ValueError(f"DataLoader: batch_size={size} with drop_last=True and {samples} samples per epoch "
                         f"gives no batch in epoch {epoch}")
    return count


def _to_tensors(batch, device: str):
    """Wrap gathered arrays as Tensors on ``device`` (no copy when already there), with
    the dtype check ``Tensor()`` makes (a dataset of strings is refused, not wrapped)."""
    if isinstance(batch, tuple):
        return tuple(_to_tensor(a, device) for a in batch)
    return _to_tensor(batch, device)


def _to_tensor(array, device: str):
    if not backend.is_array(array):
        raise TypeError(f"DataLoader: the dataset gave a {type(array).__name__} where an array of numbers belongs")
    _check_dtype(array.dtype, "DataLoader: a batch from the dataset")
    return Tensor._make(backend.to_device(array, device), device)
