"""Data-parallel training: ``tg.nn.parallel.DistributedDataParallel`` (torch's name and API).

Each rank holds a full copy of the model and computes the gradient of its own share of
the global batch; averaging those gradients over the ranks gives the gradient of the
whole batch, so every rank applies the same update and the copies stay identical::

    tg.distributed.init_process_group()
    model = tg.nn.parallel.DistributedDataParallel(make_model())   # rank 0's weights everywhere
    sampler = tg.data.DistributedSampler(train_set)                   # this rank's share
    loader = tg.data.DataLoader(train_set, batch_size=b, sampler=sampler)   # b per rank
    for xb, yb in loader:
        loss = loss_fn(model(xb), yb)
        loss.backward()          # .grad now holds the average over ranks
        optimizer.step(); optimizer.zero_grad()

With ``R`` ranks and ``b`` samples per rank this is mini-batch SGD with batch ``R b``:
the mean of the ranks' mean gradients is the mean gradient of the union.
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np

from .. import backend, distributed
from ..sparse import SparseRowGrad
from ..tensor import Tensor
from .module import Module


def check_replicas(module: Module, who: str) -> None:
    """Every rank: one device for the parameters, and the same names, shapes and dtypes as
    rank 0. Agreed across ranks, so a bad replica fails everywhere instead of hanging."""
    problem = None
    devices = sorted({p.device for p in module.parameters()})
    if len(devices) > 1:
        where = {d: next(n for n, p in module.named_parameters() if p.device == d) for d in devices}
        problem = f"{who} needs all parameters on one device, got " + ", ".join(
            f"{d} (e.g. {where[d]!r})" for d in devices)
    signature = [(name, tuple(t.shape), str(t.dtype)) for name, t in module._state_items()]
    reference = distributed.broadcast_object(signature, src=0)
    if problem is None and signature != reference:
        differ = [f"{mine} vs rank 0's {theirs}" for mine, theirs in zip(signature, reference) if mine != theirs]
        if len(signature) != len(reference):
            differ.append(f"{len(signature)} tensors vs rank 0's {len(reference)}")
        problem = f"{who}: the model differs from rank 0's: " + "; ".join(differ[:3])
    distributed.check_on_all_ranks(problem)


def broadcast_state(module: Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    for _, tensor in module._state_items():
        distributed.broadcast(tensor, src=0)


class _ReplicaWrapper(Module):
    """What the two wrappers share: the wrapped module checked against rank 0's and given
    its values at wrap time, and parameters, buffers and ``state_dict()`` that are the
    module's own (no ``module.`` prefix, so a checkpoint loads into the bare model)."""

    def __init__(self, module: Module, who: str):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"{who} wraps a tg.nn.Module, got {type(module).__name__}")
        distributed._require_group(who)
        self.module = module

    def _adopt_rank_zero(self, who: str) -> None:
        check_replicas(self.module, who)
        broadcast_state(self.module)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _state_items(self, prefix: str = ""):
        return self.module._state_items(prefix)

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        return self.module.named_parameters(prefix, recurse)

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        return self.module.named_buffers(prefix, recurse)


class _Bucket:
    """Gradients that travel in one all-reduce: parameters of one device and dtype whose
    sizes add up to at most the bucket capacity (a larger parameter gets a bucket alone)."""

    def __init__(self, params: list, device: str, dtype):
        self.params = params
        self.device, self.dtype = device, dtype
        self.offsets = np.cumsum([0] + [p.numel() for p in params]).tolist()
        self.numel = self.offsets[-1]
        self.flat = None  # this step's buffer (fresh every step: a .grad kept from a step keeps its values)
        self.filled: set = set()  # indices of the parameters whose gradient is in ``flat``


class DistributedDataParallel(_ReplicaWrapper):
    """Wrap ``module`` so that ``backward()`` leaves the gradient averaged over all ranks.

    * **At wrap time** every rank checks that its module matches the others (names, shapes,
      dtypes; parameters on one device) -- a mismatch raises the same error on every rank --
      and then takes rank 0's parameters and buffers (a broadcast), so all copies start equal.
    * **During backward** each parameter's gradient, as the engine delivers it (a
      post-accumulate-grad hook), is copied into its *bucket*: parameters in reverse order
      (the last layers' gradients come first), grouped up to ``bucket_cap_mb`` megabytes. A
      full bucket is reduced in one all-reduce, so a model of many small tensors pays the
      per-message latency once per bucket instead of once per tensor. Buckets are reduced in
      bucket order, the same on every rank. Each ``.grad`` then becomes a view of its
      bucket's reduced buffer (a new buffer every step, so a ``.grad`` you kept from an
      earlier step keeps its values).
    * **Averaging without a pass of its own.** ``average=True`` (the default, PyTorch's
      promise) divides each reduced bucket by the world size, so ``.grad`` holds the mean.
      ``average=False`` leaves the *sum* over ranks in ``.grad``: step with
      ``optimizer.step(grad_scale=1 / world_size)`` (``grad_divisor`` is the world size then)
      and the division happens inside the fused optimizer's update, which reads every
      gradient anyway; :func:`tg.train.fit` does this. Summed gradients need the
      ``.grad``s dropped between steps (``optimizer.zero_grad()``'s default) and
      accumulation under :meth:`no_sync`: otherwise a backward adds this step's local
      gradient to a sum that already counts every rank, and the next reduction would count
      it again.
    * ``bucket_cap_mb=None`` is the readable reference: every gradient is averaged on its
      own, ``all_reduce(p.grad, "mean")``, one message per parameter (the tests check the
      buckets against it).
    * **Buffers** (BatchNorm's running statistics) are broadcast from rank 0 before every
      forward in training mode (``broadcast_buffers=True``, torch's default), so the copies
      stay identical. The *batch* statistics that BatchNorm normalises with stay per rank,
      computed on the rank's own share, as with torch's default (no SyncBatchNorm).

    ``parameters()``, ``state_dict()`` (without a ``module.`` prefix, so a checkpoint loads
    into the bare model), ``load_state_dict()``, ``train()``/``eval()`` act on the wrapped
    module. Every parameter that requires grad must receive a gradient in every backward
    (a parameter the forward did not use is reported at the next forward), and every rank
    must run the same graph: the reductions are collectives. A sparse gradient
    (``Embedding(sparse=True)``) is reduced as a dense one, since the ranks' batches touch
    different rows.
    """

    def __init__(self, module: Module, *, bucket_cap_mb: float | None = 25.0, average: bool = True,
                 broadcast_buffers: bool = True):
        if bucket_cap_mb is not None and (isinstance(bucket_cap_mb, bool) or not bucket_cap_mb > 0):
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be > 0 or None, got {bucket_cap_mb!r}")
        if not isinstance(average, (bool, np.bool_)):
            raise TypeError(f"DistributedDataParallel: average must be a bool, got {average!r}")
        super().__init__(module, "DistributedDataParallel")
        object.__setattr__(self, "bucket_cap_mb", bucket_cap_mb)
        object.__setattr__(self, "average", bool(average))
        object.__setattr__(self, "broadcast_buffers", bool(broadcast_buffers))
        object.__setattr__(self, "world_size", distributed.get_world_size())
        object.__setattr__(self, "_syncing", True)
        self._adopt_rank_zero("DistributedDataParallel")
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        object.__setattr__(self, "_names", {id(p): name for name, p in named})
        buckets = self._make_buckets([p for _, p in named])
        object.__setattr__(self, "_buckets", buckets)
        object.__setattr__(self, "_bucket_of", {id(p): (b, i) for b in buckets for i, p in enumerate(b.params)})
        object.__setattr__(self, "_next_bucket", 0)
        # A weak reference: a DDP that is thrown away stops reducing (the hooks stay on the
        # parameters, as hooks do, but become no-ops).
        me = weakref.ref(self)

        def hook(param):
            ddp = me()
            if ddp is not None:
                ddp._gradient_ready(param)

        for _, p in named:
            p.register_post_accumulate_grad_hook(hook)

    # ------------------------------------------------------------------ wrap time
    def _make_buckets(self, params: list) -> list:
        if self.bucket_cap_mb is None:
            return []
        cap = int(self.bucket_cap_mb * 1024 * 1024)
        buckets: list = []
        current: list = []
        size = 0
        for p in reversed(params):
            if current and ((p.device, p.dtype) != (current[0].device, current[0].dtype)
                            or size + p.data.nbytes > cap):
                buckets.append(_Bucket(current, current[0].device, current[0].dtype))
                current, size = [], 0
            current.append(p)
            size += p.data.nbytes
        if current:
            buckets.append(_Bucket(current, current[0].device, current[0].dtype))
        return buckets

    # ------------------------------------------------------------------ backward
    @property
    def grad_divisor(self) -> int:
        """What ``.grad`` must still be divided by to be the mean: the world size with
        ``average=False`` (pass ``grad_scale=1 / grad_divisor`` to the optimizer), else 1."""
        return 1 if self.average else self.world_size

    @contextlib.contextmanager
    def no_sync(self):
        """Inside this block backward only accumulates locally (no communication): the
        micro-batches of gradient accumulation, reduced once by the backward after it."""
        previous = self._syncing
        object.__setattr__(self, "_syncing", False)
        try:
            yield
        finally:
            object.__setattr__(self, "_syncing", previous)

    def _gradient_ready(self, param: Tensor) -> None:
        if not self._syncing:
            return
        grad = param.grad
        if isinstance(grad, SparseRowGrad):  # Embedding(sparse=True): the ranks touched different rows
            grad = param.grad = Tensor._make(grad.to_dense(), param.device)
        if self.bucket_cap_mb is None:  # the reference: one parameter, one all-reduce
            distributed.all_reduce(grad, op="mean" if self.average else "sum")
            return
        bucket, index = self._bucket_of[id(param)]
        if bucket.flat is None:
            xp = backend.get_array_module(grad.data)
            with backend.device_context(bucket.device):
                bucket.flat = xp.empty(bucket.numel, dtype=bucket.dtype)
        start, stop = bucket.offsets[index], bucket.offsets[index + 1]
        bucket.flat[start:stop] = grad.data.reshape(-1)
        bucket.filled.add(index)
        # Reduce the buckets in order as they fill: the same sequence of collectives on every rank.
        buckets = self._buckets
        while self._next_bucket < len(buckets) and len(buckets[self._next_bucket].filled) == len(
                buckets[self._next_bucket].params):
            self._reduce(buckets[self._next_bucket])
            object.__setattr__(self, "_next_bucket", self._next_bucket + 1)
        if self._next_bucket == len(buckets):
            object.__setattr__(self, "_next_bucket", 0)

    def _reduce(self, bucket: _Bucket) -> None:
        flat = bucket.flat
        assert flat is not None  # every parameter of the bucket has written its slot
        if self.world_size > 1:
            distributed.all_reduce(flat, op="sum")
        if self.average and self.world_size > 1:
            flat /= self.world_size
        for i, p in enumerate(bucket.params):
            view = flat[bucket.offsets[i]:bucket.offsets[i + 1]].reshape(p.shape)
            p.grad = Tensor._make(view, bucket.device)
        bucket.flat, bucket.filled = None, set()

    def _unfinished(self) -> list:
        """Names of the parameters the unreduced buckets are still waiting for (unused in backward)."""
        return [self._names[id(p)] for bucket in self._buckets[self._next_bucket:]
                for i, p in enumerate(bucket.params) if i not in bucket.filled]

    # ------------------------------------------------------------------ forward and delegation
    def forward(self, *args, **kwargs):
        if any(bucket.filled for bucket in self._buckets):
            waiting = self._unfinished()
            for bucket in self._buckets:
                bucket.flat, bucket.filled = None, set()
            object.__setattr__(self, "_next_bucket", 0)
            raise RuntimeError("DistributedDataParallel: the previous backward did not give every parameter a "
                               "gradient, so some buckets were never reduced (no gradient for: "
                               f"{', '.join(waiting[:5])}); every parameter that requires grad must be used "
                               "in the forward (or set requires_grad=False on the unused ones)")
        if self.broadcast_buffers and self.training and self.world_size > 1:
            for _, buffer in self.module.named_buffers():
                distributed.broadcast(buffer, src=0)
        return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f"world_size={self.world_size}, bucket_cap_mb={self.bucket_cap_mb}, average={self.average}, "
                f"buckets={len(self._buckets)}")


class LocalSGD(_ReplicaWrapper):
    r"""Local SGD: every rank steps on its own and the ranks average their *parameters*
    every ``period`` steps (Stich 2019, *Local SGD Converges Fast and Communicates Little*;
    Lin et al. 2020, *Don't Use Large Mini-Batches, Use Local SGD*)::

        model = tg.nn.parallel.LocalSGD(make_model(), period=8)   # rank 0's weights everywhere
        for xb, yb in loader:                                     # this rank's share
            loss_fn(model(xb), yb).backward()
            optimizer.step(); optimizer.zero_grad()
            model.step()                  # every 8th call: all_reduce(params, "mean")

    One all-reduce of the parameters per ``period`` steps instead of one of the gradients per
    step: ``period`` times less communication, paid for by workers that drift apart between
    averagings (the notebook measures the trade-off).

    **period=1 is data-parallel SGD.** With plain SGD, ``mean_i(w - lr g_i) = w - lr
    mean_i(g_i)``: the DDP update (equal up to rounding). Heavy-ball and Nesterov momentum
    keep the equivalence at ``period=1`` although every rank keeps its own momentum
    buffer: the update is linear in the gradient, so the mean of the ranks' buffers obeys
    DDP's recursion ``b = mu b + mean_i(g_i)`` and the averaged step is DDP's. The
    equivalence breaks for ``period > 1``, where each rank's buffer keeps pointing along its
    own drifted trajectory after the parameters are averaged (the buffers are not averaged
    here: Wang et al. 2020, SlowMo, discuss averaging or resetting them), and for any
    optimizer whose state is not linear in the gradient -- Adam, RMSprop and Adagrad divide
    by a running mean of ``g_i^2``, and the mean of ``g_i / sqrt(v_i)`` is not
    ``mean(g) / sqrt(v)`` -- even at ``period=1`` (``tests/mpi`` checks all three cases).

    Floating-point buffers (BatchNorm's running statistics) are averaged with the parameters.
    ``communications`` counts the averagings.
    """

    def __init__(self, module: Module, period: int):
        if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 1:
            raise ValueError(f"LocalSGD: period must be a positive int (steps between averagings), got {period!r}")
        super().__init__(module, "LocalSGD")
        object.__setattr__(self, "period", int(period))
        object.__setattr__(self, "steps", 0)
        object.__setattr__(self, "communications", 0)
        self._adopt_rank_zero("LocalSGD")

    def step(self) -> bool:
        """Count one optimizer step; average the parameters when ``period`` steps are done.
        Returns True when it averaged."""
        object.__setattr__(self, "steps", self.steps + 1)
        if self.steps % self.period:
            return False
        self.average_parameters()
        return True

    def average_parameters(self) -> None:
        """Replace every floating-point parameter and buffer by its mean over the ranks (one
        all-reduce per device and dtype, through a flat buffer)."""
        groups: dict = {}
        for _, tensor in self.module._state_items():
            if tensor.dtype.kind == "f":
                groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
        for (device, dtype), tensors in groups.items():
            xp = backend.get_array_module(tensors[0].data)
            with backend.device_context(device):
                flat = xp.concatenate([t.data.reshape(-1) for t in tensors]).astype(dtype, copy=False)
            distributed.all_reduce(flat, op="mean")
            offset = 0
            for t in tensors:
                t.data[...] = flat[offset:offset + t.numel()].reshape(t.shape)  # in place: optimizers hold p.data
                t._mark_dirty()
                offset += t.numel()
        object.__setattr__(self, "communications", self.communications + 1)

    def extra_repr(self) -> str:
        return f"period={self.period}, world_size={distributed.get_world_size()}"
