"""Process groups and collectives on MPI (``tg.distributed``, PyTorch's names).

Data-parallel SGD runs one copy of the training script per worker, launched by MPI::

    mpiexec -n 4 python train.py          # or: mpiexec -n 4 tinygrad-sgd train

    import tinygrad_sgd as tg
    tg.distributed.init_process_group()   # MPI.COMM_WORLD under mpiexec; a world of 1 otherwise
    rank, world = tg.distributed.get_rank(), tg.distributed.get_world_size()
    tg.distributed.all_reduce(x, op="mean")   # every rank now holds the mean of the x's

The same script runs everywhere: without ``mpiexec`` (or without mpi4py) the group is a
world of one process, where every collective returns its input unchanged.

The engine is MPI through mpi4py (``pip install tinygrad_sgd[mpi]`` brings ``mpi4py`` and the
``mpich`` wheel, which provides ``mpiexec``). NumPy arrays go through mpi4py's buffer
interface (the capital-letter methods ``Allreduce``, ``Bcast``, ``Allgather``: no pickling,
no copies). CuPy arrays are handed to MPI directly when the MPI build is CUDA-aware and are
otherwise staged through host memory; a debug log (logger ``tinygrad_sgd.distributed``) says
which happened.

Collectives block until every rank has called them, so every rank must call the same
collectives in the same order. Two rules keep a mistake from becoming a hang:

* checks whose outcome can differ between ranks are *agreed*: each rank states its own
  problem (or none), the ranks exchange them, and every rank raises the same error
  (:func:`check_on_all_ranks`);
* an exception that escapes on one rank of a world larger than one aborts the whole job
  (``MPI_Abort``, :func:`abort`), as ``python -m mpi4py`` does, instead of leaving the other
  ranks waiting in their next collective. :func:`init_process_group` installs that hook.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback

import numpy as np

from . import backend
from .tensor import Tensor

logger = logging.getLogger(__name__)

REDUCE_OPS = ("sum", "mean", "max", "min")
# Before MPI_Abort: time for mpiexec to forward the message just printed (an abort tears the
# job down at once, and output still in flight can be lost).
_ABORT_GRACE_S = 0.25
# Environment variables that MPI launchers set in every process they start (MPICH/Hydra and
# Intel MPI, Open MPI, PMIx, MVAPICH2): their presence means "started by mpiexec".
_LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


class _Group:
    """The default process group: an MPI communicator, or None for a world of one."""

    def __init__(self):
        self.initialized = False
        self.comm = None
        self.rank = 0
        self.size = 1
        self.local_rank = 0  # among the group's processes on this machine
        self.previous_excepthook = None


_group = _Group()


# ----------------------------------------------------------------------------- the group


def _launched_by_mpiexec() -> bool:
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


def _import_mpi():
    """mpi4py's MPI module, or None when mpi4py is not installed."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI


def init_process_group(backend: str = "mpi", *, comm=None) -> None:
    """Join the default process group (``torch.distributed.init_process_group``).

    Under ``mpiexec`` the group is ``MPI.COMM_WORLD``; ``comm=`` takes another mpi4py
    communicator. Started without a launcher, the group is a world of one process and
    mpi4py is not even imported, so a script written for many workers runs unchanged on
    one. A process started by ``mpiexec`` whose mpi4py does not import is an error (the
    workers would otherwise each train alone, unaware of the others).

    Calling it again is harmless (it keeps the group it has).
    """
    if backend != "mpi":
        raise ValueError(f"init_process_group: backend must be 'mpi' (the only engine), got {backend!r}")
    if _group.initialized:
        return
    if comm is None and _launched_by_mpiexec():
        MPI = _import_mpi()
        if MPI is None:
            raise RuntimeError("init_process_group: this process was started by mpiexec but mpi4py does not "
                               "import; install it with pip install 'tinygrad_sgd[mpi]'")
        comm = MPI.COMM_WORLD
    if comm is not None:
        _group.comm, _group.rank, _group.size = comm, comm.Get_rank(), comm.Get_size()
    if _group.size == 1:
        _group.comm = None  # a world of one: collectives are the identity, no MPI calls at all
    else:  # the processes sharing this machine's memory (MPI-3): which of its GPUs is ours
        from mpi4py import MPI
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        _group.local_rank = local.Get_rank()
        local.Free()
    _group.initialized = True
    if _group.size > 1:
        _group.previous_excepthook = sys.excepthook
        sys.excepthook = _abort_on_uncaught_exception
    logger.debug("process group: rank %d of %d", _group.rank, _group.size)


def destroy_process_group() -> None:
    """Leave the default group (MPI itself stays initialised until the process exits)."""
    global _group
    if _group.previous_excepthook is not None:
        sys.excepthook = _group.previous_excepthook
    _group = _Group()


def is_initialized() -> bool:
    """True after :func:`init_process_group`."""
    return _group.initialized


def _require_group(what: str) -> _Group:
    if not _group.initialized:
        raise RuntimeError(f"{what}: the default process group is not initialized; call "
                           "tg.distributed.init_process_group() first")
    return _group


def get_rank() -> int:
    """This process's rank, 0 .. world_size - 1 (0 before the group is initialised)."""
    return _group.rank


def get_world_size() -> int:
    """The number of processes in the group (1 before the group is initialised)."""
    return _group.size


def default_rank_and_world(who: str) -> tuple:
    """``(rank, world_size)`` for an object that takes them from the process group
    (``DistributedSampler``'s defaults). Before ``init_process_group`` that is a world of one,
    except in a process that ``mpiexec`` started with others: there the group is needed, or
    every rank would silently take the whole dataset."""
    if not _group.initialized and _launched_by_mpiexec():
        sizes = [os.environ.get(name, "") for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")]
        if any(size.isdigit() and int(size) > 1 for size in sizes):
            raise RuntimeError(f"{who}: this process is one of several started by mpiexec; call "
                               "tg.distributed.init_process_group() first (or pass num_replicas= and rank=)")
    return _group.rank, _group.size


def get_local_rank() -> int:
    """This process's rank among the group's processes on the same machine (0 in a world of one)."""
    return _group.local_rank


def device_for_this_rank() -> str:
    """The device a rank trains on by default: GPU ``local_rank % GPUs`` when the machine has
    GPUs, so the ranks on one machine spread over its GPUs, else the CPU. In a world of one,
    ``backend.best_device()``."""
    count = backend.gpu_count()
    if _group.size == 1 or count == 0:
        return backend.best_device()
    return f"cuda:{_group.local_rank % count}"


def is_main_process() -> bool:
    """True on rank 0, the one that logs and writes files."""
    return _group.rank == 0


def barrier() -> None:
    """Wait until every rank has reached this call."""
    group = _require_group("barrier")
    if group.comm is not None:
        group.comm.Barrier()


# ----------------------------------------------------------------------------- failing together


def abort(message: str, errorcode: int = 1) -> None:
    """End every rank of the job now (``MPI_Abort``), after printing ``message``.

    For an error that only this rank sees and that the others cannot learn about in a
    collective: without the abort they would wait for this rank forever. In a world of
    one it prints and exits with ``errorcode``.
    """
    print(f"tinygrad_sgd rank {_group.rank}: {message}", file=sys.stderr, flush=True)
    if _group.comm is not None:
        time.sleep(_ABORT_GRACE_S)
        _group.comm.Abort(errorcode)
    sys.exit(errorcode)


def _abort_on_uncaught_exception(kind, value, tb) -> None:
    """sys.excepthook in a world of more than one: print the traceback, then abort all ranks."""
    text = "".join(traceback.format_exception(kind, value, tb))
    print(f"tinygrad_sgd rank {_group.rank}: uncaught exception, aborting all {_group.size} ranks\n{text}",
          file=sys.stderr, flush=True)
    if _group.comm is not None:
        time.sleep(_ABORT_GRACE_S)
        _group.comm.Abort(1)


def check_on_all_ranks(problem: str | None, error: type = ValueError) -> None:
    """Raise ``error`` on every rank when any rank reports a problem (never a hang).

    Each rank passes its own finding: a message, or None when all is well. The findings
    are exchanged (one small collective), and if any rank has one, every rank raises the
    same ``error`` listing them by rank. Use it for a check whose outcome can differ
    between ranks, before the collectives that would otherwise wait for a rank that raised.
    """
    if problem is not None and not isinstance(problem, str):
        raise TypeError(f"check_on_all_ranks: problem must be a str or None, got {type(problem).__name__}")
    findings = all_gather_object(problem) if _group.comm is not None else [problem]
    bad = [(rank, text) for rank, text in enumerate(findings) if text is not None]
    if not bad:
        return
    if len(findings) == 1:
        raise error(bad[0][1])
    if len({text for _, text in bad}) == 1:
        ranks = ", ".join(str(rank) for rank, _ in bad)
        raise error(f"{bad[0][1]} (on rank{'s' if len(bad) > 1 else ''} {ranks} of {len(findings)})")
    raise error("; ".join(f"rank {rank}: {text}" for rank, text in bad))


# ----------------------------------------------------------------------------- collectives


def _raw(x, what: str, *, writeable: bool = True):
    """``(array, tensor_or_None)`` for a Tensor or a NumPy/CuPy array, checked for MPI."""
    tensor = x if isinstance(x, Tensor) else None
    array = x.data if tensor is not None else x
    if not backend.is_array(array):
        raise TypeError(f"{what} expects a tg.Tensor or a NumPy/CuPy array, got {type(x).__name__}")
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{what}: dtype {array.dtype} is not supported (integer and floating-point arrays only)")
    if array.dtype == np.float16:
        raise TypeError(f"{what}: dtype float16 has no MPI datatype; convert to float32 first")
    if not array.flags.c_contiguous:
        if not writeable:  # an input only: a contiguous copy will do
            return backend.get_array_module(array).ascontiguousarray(array), tensor
        raise ValueError(f"{what} needs a C-contiguous array (MPI reads the memory as one block), got one of "
                         f"shape {array.shape} with strides {array.strides}; pass a contiguous copy")
    if writeable and not getattr(array.flags, "writeable", True):
        raise ValueError(f"{what} writes the result into its argument, which is read-only")
    return array, tensor


def _check_op(op: str, array) -> str:
    if op not in REDUCE_OPS:
        raise ValueError(f"all_reduce: op must be one of {REDUCE_OPS}, got {op!r}")
    if op == "mean" and array.dtype.kind != "f":
        raise TypeError(f"all_reduce: op='mean' needs a floating-point array, got dtype {array.dtype}")
    return op


_cuda_aware_cache: list = []


def mpi_is_cuda_aware() -> bool:
    """True when MPI can read and write GPU memory itself (a CUDA-aware build).

    Asked of MPI through ``MPI.Query_cuda_support`` where mpi4py offers it; the
    environment variable ``TINYGRAD_SGD_MPI_CUDA_AWARE=1`` (or ``0``) overrides. Without
    either answer CuPy arrays are staged through host memory, which is always correct.
    """
    if not _cuda_aware_cache:
        override = os.environ.get("TINYGRAD_SGD_MPI_CUDA_AWARE")
        answer = False
        if override is not None:
            answer = override.strip() == "1"
        else:
            MPI = _import_mpi() if _group.comm is not None else None
            query = getattr(MPI, "Query_cuda_support", None)
            if query is not None:
                try:
                    answer = bool(query())
                except Exception:  # noqa: BLE001 -- an MPI without the query: stage through the host
                    answer = False
        _cuda_aware_cache.append(answer)
    return _cuda_aware_cache[0]


def _mpi_op(op: str):
    from mpi4py import MPI
    return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]


def _on_host(array, what: str, run) -> None:
    """Run ``run(buffer)`` on ``array`` (in place): directly for NumPy and for CuPy on a
    CUDA-aware MPI, through a host copy otherwise."""
    if isinstance(array, np.ndarray):
        run(array)
        return
    cupy = backend.get_array_module(array)
    cupy.cuda.get_current_stream().synchronize()  # MPI reads the memory outside CuPy's stream order
    if mpi_is_cuda_aware():
        logger.debug("%s: CuPy array of %d bytes passed to MPI directly (CUDA-aware MPI)", what, array.nbytes)
        run(array)
        return
    logger.debug("%s: CuPy array of %d bytes staged through host memory (MPI is not CUDA-aware)",
                 what, array.nbytes)
    host = cupy.asnumpy(array)
    run(host)
    array.set(host)


def all_reduce(x, op: str = "sum"):
    """Combine ``x`` over all ranks, in place, and return it (every rank gets the result).

    ``op``: ``"sum"``, ``"mean"`` (the sum divided by the world size: the averaged gradient
    of data-parallel SGD), ``"max"`` or ``"min"``. ``x`` is a Tensor (its data is updated
    and its version counted up, like ``x[...] = v``) or a NumPy/CuPy array, contiguous, of
    the same shape and dtype on every rank. In a world of one it returns ``x`` unchanged.
    """
    array, tensor = _raw(x, "all_reduce")
    op = _check_op(op, array)
    group = _require_group("all_reduce")
    if group.comm is None:
        return x
    from mpi4py import MPI
    mpi_op = _mpi_op(op)
    _on_host(array, "all_reduce", lambda buf: group.comm.Allreduce(MPI.IN_PLACE, buf, op=mpi_op))
    if op == "mean":
        array /= group.size
    if tensor is not None:
        tensor._mark_dirty()
    return x


def broadcast(x, src: int = 0):
    """Overwrite ``x`` on every rank with rank ``src``'s ``x`` (in place); return it."""
    array, tensor = _raw(x, "broadcast")
    group = _require_group("broadcast")
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < group.size:
        raise ValueError(f"broadcast: src must be a rank in [0, {group.size}), got {src!r}")
    if group.comm is None:
        return x
    _on_host(array, "broadcast", lambda buf: group.comm.Bcast(buf, root=int(src)))
    if tensor is not None:
        tensor._mark_dirty()
    return x


def all_gather(x) -> list:
    """Every rank's ``x``, in rank order, on every rank: a list of ``world_size`` Tensors
    (for a Tensor) or arrays (for an array), each a new copy.

    PyTorch's ``all_gather(tensor_list, tensor)`` fills a list you pass; this returns it.
    The shapes and dtypes must agree: a mismatch raises the same ``ValueError`` on every
    rank (an extra small exchange checks them first).
    """
    array, tensor = _raw(x, "all_gather", writeable=False)
    group = _require_group("all_gather")
    if group.comm is None:
        copies = [array.copy()]
    else:
        signature = (tuple(array.shape), str(array.dtype))
        signatures = all_gather_object(signature)
        problem = None
        if len(set(signatures)) > 1:
            problem = "all_gather needs the same shape and dtype on every rank, got " + ", ".join(
                f"rank {r}: {s[0]} {s[1]}" for r, s in enumerate(signatures))
        check_on_all_ranks(problem)
        xp = backend.get_array_module(array)
        with backend.device_context(backend.device_of(array)):
            out = xp.empty((group.size,) + array.shape, dtype=array.dtype)
        source = array if isinstance(array, np.ndarray) or mpi_is_cuda_aware() else backend.to_numpy(array)

        def gather(buf):
            group.comm.Allgather(source, buf)

        _on_host(out, "all_gather", gather)
        copies = list(out)
    if tensor is None:
        return copies
    return [Tensor._make(c, tensor.device) for c in copies]


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj``, in rank order (small control messages, not data)."""
    group = _require_group("all_gather_object")
    return [obj] if group.comm is None else group.comm.allgather(obj)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank (e.g. the run folder rank 0 chose)."""
    group = _require_group("broadcast_object")
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < group.size:
        raise ValueError(f"broadcast_object: src must be a rank in [0, {group.size}), got {src!r}")
    return obj if group.comm is None else group.comm.bcast(obj, root=int(src))


# ----------------------------------------------------------------------------- what fit needs


class TrainingSync:
    """What :func:`tg.train.fit` needs to train data-parallel: one object, so the loop stays
    readable (it calls these methods; in a world of one they do nothing).

    Training is data-parallel when the model is a ``DistributedDataParallel`` in a group of
    more than one rank. The training loader must then hand each rank its own share (a
    ``DistributedSampler`` for this rank), with the same number of batches on every rank; a
    violation raises the same error on every rank. Then:

    * ``backward(loss, last)``: the micro-batches of gradient accumulation run under
      ``no_sync()``; the last one reduces. With a fused optimizer the gradients are *summed*
      and ``grad_divisor`` (the world size) goes into the step's ``grad_scale``, so the
      averaging happens inside the fused update; the reference optimizer (``fused=False``)
      gets averaged gradients, divided by DDP.
    * ``global_batch(loss, n, correct)``: the mean loss, sample count and correct count of
      the whole global batch (one small all-reduce per micro-batch), so the non-finite check,
      the history and the epoch metrics are the same on every rank and equal what one process
      on the global batch would record.
    * ``is_main``: rank 0, the only one that logs and writes checkpoints.
    * ``sync_buffers()`` at the end of each epoch: rank 0's running statistics everywhere, so
      the validation numbers (and what callbacks and schedulers do with them) agree.

    A plain model trains on each rank on its own (federated clients, local SGD between
    averagings), as in one process.
    """

    def __init__(self, model, optimizer, train_loader, *, noise_scale: bool = False):
        from .data.sampler import DistributedSampler
        from .nn.parallel import DistributedDataParallel

        self.world_size = get_world_size() if isinstance(model, DistributedDataParallel) else 1
        self.is_main = self.world_size == 1 or get_rank() == 0
        self.ddp = None
        self.summed = False
        if self.world_size == 1:
            return
        problem = None
        sampler = getattr(train_loader, "sampler", None)
        if not isinstance(sampler, DistributedSampler):
            problem = (f"fit on {self.world_size} processes needs a training loader with a "
                       f"tg.data.DistributedSampler (each rank its own share), got {type(sampler).__name__}")
        elif sampler.num_replicas != self.world_size or sampler.rank != get_rank():
            problem = (f"the DistributedSampler has num_replicas={sampler.num_replicas}, rank={sampler.rank}; "
                       f"this process is rank {get_rank()} of {self.world_size}")
        elif noise_scale:
            problem = "noise_scale=True measures one process's micro-batches; it is not available on several ranks"
        check_on_all_ranks(problem)
        lengths = all_gather_object(len(train_loader))
        check_on_all_ranks(None if len(set(lengths)) == 1 else
                           f"the ranks' training loaders have different numbers of batches {lengths}; data-parallel "
                           "steps must stay in lock step (use the same dataset, batch size and DistributedSampler)")
        self.ddp = model
        self.summed = bool(getattr(optimizer, "fused", False))

    @property
    def grad_divisor(self) -> int:
        """What the reduced ``.grad`` must still be divided by (the world size when summed)."""
        return self.world_size if self.summed else 1

    def backward(self, loss, last: bool) -> None:
        if self.ddp is None:
            loss.backward()
            return
        ddp = self.ddp
        average = ddp.average
        object.__setattr__(ddp, "average", not self.summed)
        try:
            if last:
                loss.backward()
            else:
                with ddp.no_sync():
                    loss.backward()
        finally:
            object.__setattr__(ddp, "average", average)

    def sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm's running statistics) before an
        evaluation: each forward in training mode updates them with the rank's own share of
        the batch, so without this the ranks would evaluate, record and schedule differently."""
        if self.ddp is not None:
            for buffer in self.ddp.module.buffers():
                broadcast(buffer, src=0)

    def run_on_main(self, fn, *args) -> None:
        """Run ``fn(*args)`` on rank 0 only (a check of the file rank 0 will write); an
        exception there is raised, with its type and message, on every rank."""
        if self.world_size == 1:
            fn(*args)
            return
        failure = None
        if self.is_main:
            try:
                fn(*args)
            except Exception as error:  # noqa: BLE001 -- handed to every rank, then raised
                failure = (type(error), str(error))
        failure = broadcast_object(failure)
        if failure is not None:
            raise failure[0](failure[1])

    def global_batch(self, loss_value: float, n: int, correct: int) -> tuple:
        """``(mean loss, samples, correct)`` over the global batch (this rank's in a world of one)."""
        if self.world_size == 1:
            return loss_value, n, correct
        totals = all_reduce(np.array([loss_value * n, n, correct], dtype=np.float64))
        return float(totals[0] / totals[1]), int(totals[1]), int(totals[2])


# ----------------------------------------------------------------------------- cost model


def ring_allreduce_time(workers: int, nbytes: float, alpha: float, beta: float) -> float:
    r"""Seconds for a ring all-reduce of ``nbytes`` over ``workers`` (Patarasuk & Yuan 2009).

    A reduce-scatter then an all-gather around a ring: ``2 (N - 1)`` steps, each sending a
    chunk of ``n / N`` bytes to the neighbour, so with a per-message latency ``alpha``
    (seconds) and a bandwidth ``beta`` (bytes per second)::

        T = 2 (N - 1) alpha + 2 (N - 1) / N * n / beta

    The bandwidth term never exceeds ``2 n / beta`` however many workers join (the ring is
    bandwidth-optimal); the latency term grows linearly with ``N``. One worker: 0.
    """
    if workers <= 1:
        return 0.0
    return 2 * (workers - 1) * alpha + 2 * (workers - 1) / workers * nbytes / beta


def recursive_doubling_allreduce_time(workers: int, nbytes: float, alpha: float, beta: float) -> float:
    r"""Seconds for a recursive-doubling all-reduce (Thakur, Rabenseifner & Gropp 2005):
    ``log2 N`` rounds of pairwise exchanges of the whole message,
    ``T = ceil(log2 N) (alpha + n / beta)``. Latency-optimal, so better than the ring for
    small messages (MPI libraries switch between the two by message size)."""
    if workers <= 1:
        return 0.0
    return float(np.ceil(np.log2(workers))) * (alpha + nbytes / beta)
