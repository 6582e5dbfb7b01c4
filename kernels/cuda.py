"""Fused GPU kernels: Numba-CUDA multi-tensor kernels, one launch per list of tensors.

This module is imported only when a CUDA array reaches ``dispatch.py``; the kernels are
compiled on their first launch (one specialisation per dtype: ``host.py`` casts every scalar
argument to the arrays' dtype, which also keeps float64 out of float32 kernels; Numba
would type a Python float as float64).

* Element-wise updates reuse the per-element bodies of ``cpu.py``, compiled here as device
  functions. One launch serves every tensor of the list, as PyTorch's
  ``multi_tensor_apply`` does: block ``b`` takes the rows ``b, b + gridDim, ...`` of the
  chunk table (``(tensor, start, stop)``, ``host.chunk_rows``) and its threads stride
  over the row's elements. The tensors are reached through the pointer table (device
  addresses, ``host.tables``): ``_pointer`` turns an address into a typed pointer that the
  element bodies index like an array.
* Reductions (sum of squares, per-sample norms, the per-sample mean and its spread) are
  two-pass and deterministic: each block reduces its share in shared memory with a tree and
  writes one partial per block (per chunk row for the multi-tensor sum of squares); a
  second kernel, one block per row, reduces the partials. No float64 (a consumer GPU runs
  it at 1/32 to 1/64 speed) and no atomics (their order, hence the rounding, would change
  from run to run).
* CuPy arrays are launched on CuPy's current stream and device, viewed through
  ``cuda.as_cuda_array(..., sync=False)`` (Numba would otherwise synchronise on the
  array's stream at every launch). Numba device arrays, including the CUDA simulator's,
  are launched on the default stream.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, for tests without a GPU) the same
kernels run with 32-thread blocks and at most 4 blocks, as every simulated thread is a
Python thread. The simulator has no device addresses to dereference: there ``_pointer``
looks the address up among the arrays this module handed out addresses for (the NumPy
array behind each simulated device array), so the kernel source is the one compiled for
the GPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref

import numba
import numpy as np
from numba import cuda, types
from numba.core import config

from . import cpu, host

SIMULATOR = bool(config.ENABLE_CUDASIM)
THREADS = 32 if SIMULATOR else 256  # threads per block; a power of two for the tree reductions
_SIM_MAX_BLOCKS = 4
_BLOCKS_PER_SM = 32

# ---- device addresses -------------------------------------------------------------------

ARRAY_KIND = "CUDA array"

# simulator only: address -> the NumPy array behind a simulated device array
_SIM_ARRAYS: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


def accepts(array) -> bool:
    return not isinstance(array, np.ndarray) and (
        hasattr(array, "__cuda_array_interface__") or hasattr(array, "copy_to_host"))


def address(array) -> int:
    """The device address of a CUDA array's first element (the pointer table's entries)."""
    if SIMULATOR:
        if _is_cupy(array):  # viewed as a Numba array, as the launch does on a GPU
            array = cuda.as_cuda_array(array, sync=False)
        ary = array._ary  # the simulator's device array wraps a NumPy array
        base = ary.ctypes.data
        known = _SIM_ARRAYS.get(base)
        if known is None or known.size < ary.size:  # two views may start at one address
            _SIM_ARRAYS[base] = ary
        return base
    return array.__cuda_array_interface__["data"][0]


def to_device_table(table: np.ndarray):
    return cuda.to_device(np.ascontiguousarray(table))


if SIMULATOR:
    def _pointer(address, like):
        """The simulated array at ``address``, flat (indexing it is the pointer's job)."""
        return _SIM_ARRAYS[int(address)].reshape(-1)
else:
    from numba.cuda.extending import intrinsic

    @intrinsic
    def _pointer(typingctx, address, like):
        """``address`` (an int64 from the pointer table) as a pointer to ``like``'s type."""
        sig = types.CPointer(like)(address, like)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

        return sig, codegen


# ---- device functions: the element bodies of cpu.py ---------------------------------
_device = cuda.jit(device=True)
_grad = _device(cpu.grad_element)
_sgd = _device(cpu.sgd_element)
_adam = _device(cpu.adam_element)
_rmsprop = _device(cpu.rmsprop_element)
_adagrad = _device(cpu.adagrad_element)


# ---- element-wise kernels: every row of the chunk table, one launch ------------------------
# Same arguments as the CPU loops of cpu.py: ptrs[0] parameters, ptrs[1] gradients,
# ptrs[2:] state arrays; chunk rows (tensor, start, stop); the scalars of host.*_scalars.

@cuda.jit
def sgd_loop(ptrs, chunks, grad_scale, weight_decay, momentum, one_minus_dampening, neg_lr, maximize,
             use_weight_decay, use_momentum, first_step, nesterov):
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        t = chunks[c, 0]
        p = _pointer(ptrs[0, t], grad_scale)
        g = _pointer(ptrs[1, t], grad_scale)
        buf = _pointer(ptrs[2, t], grad_scale)
        for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
            gi = _grad(i, p, g, grad_scale, weight_decay, maximize, use_weight_decay)
            _sgd(i, gi, p, buf, momentum, one_minus_dampening, neg_lr, use_momentum, first_step, nesterov)


@cuda.jit
def adam_loop(ptrs, chunks, grad_scale, weight_decay, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
              bias_correction2_sqrt, eps, neg_step_size, maximize, l2_decay, decoupled_decay, amsgrad):
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        t = chunks[c, 0]
        p = _pointer(ptrs[0, t], grad_scale)
        g = _pointer(ptrs[1, t], grad_scale)
        m = _pointer(ptrs[2, t], grad_scale)
        v = _pointer(ptrs[3, t], grad_scale)
        v_max = _pointer(ptrs[4, t], grad_scale)
        for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
            gi = _grad(i, p, g, grad_scale, weight_decay, maximize, l2_decay)
            _adam(i, gi, p, m, v, v_max, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
                  bias_correction2_sqrt, eps, neg_step_size, decoupled_decay, amsgrad)


@cuda.jit
def rmsprop_loop(ptrs, chunks, grad_scale, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr, maximize,
                 use_weight_decay, use_momentum, centered):
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        t = chunks[c, 0]
        p = _pointer(ptrs[0, t], grad_scale)
        g = _pointer(ptrs[1, t], grad_scale)
        square_avg = _pointer(ptrs[2, t], grad_scale)
        buf = _pointer(ptrs[3, t], grad_scale)
        grad_avg = _pointer(ptrs[4, t], grad_scale)
        for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
            gi = _grad(i, p, g, grad_scale, weight_decay, maximize, use_weight_decay)
            _rmsprop(i, gi, p, square_avg, buf, grad_avg, alpha, one_minus_alpha, eps, momentum, neg_lr,
                     use_momentum, centered)


@cuda.jit
def adagrad_loop(ptrs, chunks, grad_scale, weight_decay, eps, neg_clr, maximize, use_weight_decay):
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        t = chunks[c, 0]
        p = _pointer(ptrs[0, t], grad_scale)
        g = _pointer(ptrs[1, t], grad_scale)
        state_sum = _pointer(ptrs[2, t], grad_scale)
        for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
            gi = _grad(i, p, g, grad_scale, weight_decay, maximize, use_weight_decay)
            _adagrad(i, gi, p, state_sum, eps, neg_clr)


# ---- reductions ------------------------------------------------------------------------

@cuda.jit(device=True)
def _tree_sum(shared, tid):
    """Sum ``shared[0:THREADS]`` into ``shared[0]`` (every thread of the block must call)."""
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:
        if tid < half:
            shared[tid] += shared[tid + half]
        cuda.syncthreads()
        half //= 2


@functools.cache
def _reduction_kernels(dtype: np.dtype):
    """The reduction kernels for one dtype (shared-memory arrays need a compile-time dtype,
    so the kernels are made per dtype; ``zero`` is a typed constant, not a float64 literal)."""
    nb_dtype = numba.from_dtype(dtype)
    zero = dtype.type(0)

    @cuda.jit
    def sumsq_rows_partial(x, partial):
        """partial[r, blockIdx.x] = this block's share of sum_j x[r, j]^2; grid (nblocks, R)."""
        shared = cuda.shared.array(THREADS, nb_dtype)
        tid = cuda.threadIdx.x
        row = cuda.blockIdx.y
        acc = zero
        for j in range(cuda.blockIdx.x * THREADS + tid, x.shape[1], cuda.gridDim.x * THREADS):
            xj = x[row, j]
            acc += xj * xj
        shared[tid] = acc
        _tree_sum(shared, tid)
        if tid == 0:
            partial[row, cuda.blockIdx.x] = shared[0]

    @cuda.jit
    def sum_rows(partial, out):
        """out[r] = sum_k partial[r, k]; one block per row, grid (1, R)."""
        shared = cuda.shared.array(THREADS, nb_dtype)
        tid = cuda.threadIdx.x
        row = cuda.blockIdx.y
        acc = zero
        for k in range(tid, partial.shape[1], THREADS):
            acc += partial[row, k]
        shared[tid] = acc
        _tree_sum(shared, tid)
        if tid == 0:
            out[row] = shared[0]

    @cuda.jit
    def mean_and_spread_partial(x, factors, batch, mean_out, partial):
        """mean_out[j] = sum_b factors[b]*x[b, j] / batch; partial[0, block] and partial[1, block]
        get this block's share of sum_bj (factors[b]*x[b, j] - mean_j)^2 and sum_j mean_j^2."""
        spread_sh = cuda.shared.array(THREADS, nb_dtype)
        mean_sq_sh = cuda.shared.array(THREADS, nb_dtype)
        tid = cuda.threadIdx.x
        spread = zero
        mean_sq = zero
        for j in range(cuda.grid(1), x.shape[1], cuda.gridsize(1)):
            s = zero
            for b in range(x.shape[0]):
                s += factors[b] * x[b, j]
            mu = s / batch
            mean_out[j] = mu
            d = zero
            for b in range(x.shape[0]):
                e = factors[b] * x[b, j] - mu
                d += e * e
            spread += d
            mean_sq += mu * mu
        spread_sh[tid] = spread
        mean_sq_sh[tid] = mean_sq
        _tree_sum(spread_sh, tid)
        _tree_sum(mean_sq_sh, tid)
        if tid == 0:
            partial[0, cuda.blockIdx.x] = spread_sh[0]
            partial[1, cuda.blockIdx.x] = mean_sq_sh[0]

    @cuda.jit
    def sumsq_chunks_partial(ptrs, chunks, partial):
        """partial[0, blockIdx.x] = this block's share of sum x^2 over the chunk rows it takes."""
        shared = cuda.shared.array(THREADS, nb_dtype)
        tid = cuda.threadIdx.x
        acc = zero
        for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
            x = _pointer(ptrs[0, chunks[c, 0]], zero)
            for i in range(chunks[c, 1] + tid, chunks[c, 2], THREADS):
                xi = x[i]
                acc += xi * xi
        shared[tid] = acc
        _tree_sum(shared, tid)
        if tid == 0:
            partial[0, cuda.blockIdx.x] = shared[0]

    return sumsq_rows_partial, sum_rows, mean_and_spread_partial, sumsq_chunks_partial


# ---- launching -------------------------------------------------------------------------

def _is_cupy(array) -> bool:
    return type(array).__module__.split(".")[0] == "cupy"


@functools.cache
def _max_blocks(device_id: int) -> int:
    if SIMULATOR:
        return _SIM_MAX_BLOCKS
    with cuda.gpus[device_id]:
        return _BLOCKS_PER_SM * cuda.get_current_device().MULTIPROCESSOR_COUNT


class _Launch:
    """Device, stream and array views for the kernels of one public call."""

    def __init__(self, first_array):
        self.cupy = _is_cupy(first_array)
        self.device_id = first_array.device.id if self.cupy else 0
        self._stack = contextlib.ExitStack()
        self.stream = None

    def __enter__(self):
        if self.cupy:
            import cupy  # only reached with CuPy arrays

            self._stack.enter_context(cuda.gpus[self.device_id])
            ptr = cupy.cuda.get_current_stream().ptr
            self.stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def view(self, value):
        """A Numba view of a CuPy array (no copy, no sync); anything else unchanged."""
        return cuda.as_cuda_array(value, sync=False) if _is_cupy(value) else value

    def blocks(self, n: int) -> int:
        return max(1, min(math.ceil(n / THREADS), _max_blocks(self.device_id)))

    def run(self, kernel, grid, args):
        args = tuple(self.view(a) for a in args)
        if self.stream is None:
            kernel[grid, THREADS](*args)
        else:
            kernel[grid, THREADS, self.stream](*args)

    def empty(self, shape, dtype):
        if self.stream is None:
            return cuda.device_array(shape, dtype=dtype)
        return cuda.device_array(shape, dtype=dtype, stream=self.stream)

    def to_device(self, array):
        if self.stream is None:
            return cuda.to_device(array)
        return cuda.to_device(array, stream=self.stream)

    def to_host(self, device_array) -> np.ndarray:
        if self.stream is None:
            return device_array.copy_to_host()
        out = device_array.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return out


class launch(_Launch):
    """``with launch(size, first_array, rows) as run: run(kernel)(*args)``: the
    element-wise kernel configured for one launch over ``rows`` chunk rows (one block per
    row, at most a few per multiprocessor), on the first array's device and stream. The
    CPU's ``launch`` in cpu.py has the same interface."""

    def __init__(self, size: int, first_array, rows: int):
        super().__init__(first_array)
        self.rows = rows

    def __enter__(self):
        super().__enter__()
        grid = max(1, min(self.rows, _max_blocks(self.device_id)))
        if self.stream is None:
            return lambda kernel: kernel[grid, THREADS]
        return lambda kernel: kernel[grid, THREADS, self.stream]


def _row_sums_of_squares(launch_, x2d, dtype):
    """sum_j x2d[r, j]^2 for every row r, as a host array of the arrays' dtype."""
    sumsq_rows_partial, sum_rows, _, _ = _reduction_kernels(dtype)
    rows, size = x2d.shape
    nblocks = launch_.blocks(size)
    partial = launch_.empty((rows, nblocks), dtype)
    out = launch_.empty(rows, dtype)
    launch_.run(sumsq_rows_partial, (nblocks, rows), (x2d, partial))
    launch_.run(sum_rows, (1, rows), (partial, out))
    return launch_.to_host(out)


def sum_of_squares(ptrs, chunks, dtype, size) -> float:
    """sum of x_i^2 over the tensors of the table, accumulated in the arrays' dtype by a
    two-pass tree reduction (synchronises to return a Python float)."""
    _, sum_rows, _, sumsq_chunks_partial = _reduction_kernels(dtype)
    first = cuda.to_device(np.zeros(1, dtype))  # the tables are Numba device arrays: default stream
    with _Launch(first) as launch_:
        nblocks = max(1, min(chunks.shape[0], _max_blocks(launch_.device_id)))
        partial = launch_.empty((1, nblocks), dtype)
        out = launch_.empty(1, dtype)
        launch_.run(sumsq_chunks_partial, nblocks, (ptrs, chunks, partial))
        launch_.run(sum_rows, (1, 1), (partial, out))
        return float(launch_.to_host(out)[0])


def per_sample_grad_stats(per_sample_grads, mean_out, *, max_norm=None) -> host.BatchGradStats:
    """Clipped mean gradient into ``mean_out`` and noise statistics; see reference.py.
    Sums run in the arrays' dtype (tree reductions); the per-sample norms and clipping
    factors travel through the host (B numbers)."""
    batch, size, max_norm = host.per_sample_args(per_sample_grads, mean_out, max_norm)
    dtype = np.dtype(per_sample_grads.dtype)
    _, sum_rows, mean_and_spread_partial, _ = _reduction_kernels(dtype)
    with _Launch(per_sample_grads) as launch_:
        norms = np.sqrt(_row_sums_of_squares(launch_, per_sample_grads, dtype).astype(np.float64))
        factors = launch_.to_device(host.clip_factors(norms, max_norm).astype(dtype))
        nblocks = launch_.blocks(size)
        partial = launch_.empty((2, nblocks), dtype)
        sums = launch_.empty(2, dtype)
        launch_.run(mean_and_spread_partial, nblocks, (per_sample_grads, factors, dtype.type(batch), mean_out, partial))
        launch_.run(sum_rows, (1, 2), (partial, sums))
        spread, mean_sq = launch_.to_host(sums)
    return host.batch_stats(norms, max_norm, batch, spread, mean_sq)


# ---- PTX check ---------------------------------------------------------------------------


def ptx_cases(dtype=np.float32):
    """``(name, python function, argument types)`` for every kernel of this module at
    ``dtype``, with the scalar types built by the same ``host.py`` helpers the launchers
    use, for compiling to PTX without a GPU: ``cuda.compile_ptx(fn, argtypes, cc=(9, 0))``."""
    dtype = np.dtype(dtype)
    z = functools.partial(np.zeros, dtype=dtype)
    table = (types.int64[:, ::1], types.int64[:, ::1])

    def types_of(scalars):
        return table + tuple(numba.typeof(a) for a in scalars)

    sumsq_rows_partial, sum_rows, mean_and_spread_partial, sumsq_chunks_partial = _reduction_kernels(dtype)
    return [
        ("sgd", sgd_loop.py_func, types_of(host.sgd_scalars(
            dtype, lr=0.1, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-4, maximize=True,
            first_step=False, grad_scale=0.5))),
        ("adam", adam_loop.py_func, types_of(host.adam_scalars(
            dtype, step=3, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2,
            decoupled_weight_decay=True, amsgrad=True, maximize=False, grad_scale=1.0))),
        ("rmsprop", rmsprop_loop.py_func, types_of(host.rmsprop_scalars(
            dtype, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=1e-4, momentum=0.9, centered=True,
            maximize=False, grad_scale=1.0))),
        ("adagrad", adagrad_loop.py_func, types_of(host.adagrad_scalars(
            dtype, step=2, lr=1e-2, lr_decay=1e-3, weight_decay=1e-4, eps=1e-10, maximize=False,
            grad_scale=1.0))),
        ("sumsq_chunks_partial", sumsq_chunks_partial.py_func, table + (numba.typeof(z((1, 3))),)),
        ("sumsq_rows_partial", sumsq_rows_partial.py_func, tuple(numba.typeof(a) for a in (z((2, 4)), z((2, 3))))),
        ("sum_rows", sum_rows.py_func, tuple(numba.typeof(a) for a in (z((2, 3)), z(2)))),
        ("mean_and_spread_partial", mean_and_spread_partial.py_func,
         tuple(numba.typeof(a) for a in (z((2, 4)), z(2), dtype.type(2), z(4), z((2, 3))))),
    ]
