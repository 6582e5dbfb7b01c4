"""Fused GPU kernels: Numba-CUDA grid-stride loops over flat device buffers.

This module is imported only when a CUDA array reaches ``dispatch.py``; the kernels are
compiled on their first launch (one specialisation per dtype: ``host.py`` casts every scalar
argument to the buffers' dtype, which also keeps float64 out of float32 kernels; Numba
would type a Python float as float64).

* Element-wise updates reuse the per-element bodies of ``cpu.py``, compiled here as device
  functions and called from grid-stride loops (``i = grid(1); i < n; i += gridsize(1)``), so
  a fixed, modest grid covers any size.
* Reductions (sum of squares, per-sample norms, the per-sample mean and its spread) are
  two-pass and deterministic: each block reduces its share in shared memory with a tree and
  writes one partial per block; a second kernel, one block per row, reduces the partials.
  No float64 (a consumer GPU runs it at 1/32 to 1/64 speed) and no atomics (their order,
  hence the rounding, would change from run to run).
* CuPy arrays are launched on CuPy's current stream and device, viewed through
  ``cuda.as_cuda_array(..., sync=False)`` (Numba would otherwise synchronise on the
  array's stream at every launch). Numba device arrays, including the CUDA simulator's,
  are launched on the default stream.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, for tests without a GPU) the same
kernels run with 32-thread blocks and at most 4 blocks, as every simulated thread is a
Python thread.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numba
import numpy as np
from numba import cuda
from numba.core import config

from . import cpu, host

SIMULATOR = bool(config.ENABLE_CUDASIM)
THREADS = 32 if SIMULATOR else 256  # threads per block; a power of two for the tree reductions
_SIM_MAX_BLOCKS = 4
_BLOCKS_PER_SM = 32

# ---- device functions: the element bodies of cpu.py ---------------------------------
_device = cuda.jit(device=True)
_grad = _device(cpu.grad_element)
_sgd = _device(cpu.sgd_element)
_adam = _device(cpu.adam_element)
_rmsprop = _device(cpu.rmsprop_element)
_adagrad = _device(cpu.adagrad_element)
_accumulate = _device(cpu.accumulate_element)
_average = _device(cpu.average_element)


# ---- element-wise kernels --------------------------------------------------------------

@cuda.jit
def _sgd_kernel(p, g, buf, noise, grad_scale, weight_decay, momentum, one_minus_dampening, neg_lr, has_noise,
                maximize, use_weight_decay, use_momentum, first_step, nesterov):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = _grad(i, p, g, noise, grad_scale, weight_decay, has_noise, maximize, use_weight_decay)
        _sgd(i, gi, p, buf, momentum, one_minus_dampening, neg_lr, use_momentum, first_step, nesterov)


@cuda.jit
def _adam_kernel(p, g, m, v, v_max, noise, grad_scale, weight_decay, decay_factor, one_minus_beta1, beta2,
                 one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size, has_noise, maximize, l2_decay,
                 decoupled_decay, amsgrad):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = _grad(i, p, g, noise, grad_scale, weight_decay, has_noise, maximize, l2_decay)
        _adam(i, gi, p, m, v, v_max, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
              bias_correction2_sqrt, eps, neg_step_size, decoupled_decay, amsgrad)


@cuda.jit
def _rmsprop_kernel(p, g, square_avg, buf, grad_avg, noise, grad_scale, weight_decay, alpha, one_minus_alpha, eps,
                    momentum, neg_lr, has_noise, maximize, use_weight_decay, use_momentum, centered):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = _grad(i, p, g, noise, grad_scale, weight_decay, has_noise, maximize, use_weight_decay)
        _rmsprop(i, gi, p, square_avg, buf, grad_avg, alpha, one_minus_alpha, eps, momentum, neg_lr,
                 use_momentum, centered)


@cuda.jit
def _adagrad_kernel(p, g, state_sum, noise, grad_scale, weight_decay, eps, neg_clr, has_noise, maximize,
                    use_weight_decay):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = _grad(i, p, g, noise, grad_scale, weight_decay, has_noise, maximize, use_weight_decay)
        _adagrad(i, gi, p, state_sum, eps, neg_clr)


@cuda.jit
def _accumulate_kernel(acc, g, scale, first):
    for i in range(cuda.grid(1), acc.size, cuda.gridsize(1)):
        _accumulate(i, acc, g, scale, first)


@cuda.jit
def _average_kernel(acc, count):
    for i in range(cuda.grid(1), acc.size, cuda.gridsize(1)):
        _average(i, acc, count)


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


@functools.lru_cache(maxsize=None)
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

    return sumsq_rows_partial, sum_rows, mean_and_spread_partial


# ---- launching -------------------------------------------------------------------------

def _is_cupy(array) -> bool:
    return type(array).__module__.split(".")[0] == "cupy"


@functools.lru_cache(maxsize=None)
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


def _elementwise(kernel, args):
    with _Launch(args[0]) as launch:
        launch.run(kernel, launch.blocks(args[0].size), args)


def _row_sums_of_squares(launch, x2d, dtype):
    """sum_j x2d[r, j]^2 for every row r, as a host array of the buffers' dtype."""
    sumsq_rows_partial, sum_rows, _ = _reduction_kernels(dtype)
    rows, size = x2d.shape
    nblocks = launch.blocks(size)
    partial = launch.empty((rows, nblocks), dtype)
    out = launch.empty(rows, dtype)
    launch.run(sumsq_rows_partial, (nblocks, rows), (x2d, partial))
    launch.run(sum_rows, (1, rows), (partial, out))
    return launch.to_host(out)


# ---- public functions (same signatures as reference.py) -------------------------------


def sgd_update(p, g, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
               maximize=False, first_step=False, grad_scale=1.0, noise=None) -> None:
    """In-place SGD step on the GPU; see :func:`tinygrad_sgd.kernels.reference.sgd_update`."""
    _elementwise(_sgd_kernel, host.sgd_args(p, g, momentum_buffer, noise, lr=lr, momentum=momentum,
                                            dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                                            maximize=maximize, first_step=first_step, grad_scale=grad_scale))


def adam_update(p, g, m, v, v_max=None, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled_weight_decay=False, amsgrad=False, maximize=False, grad_scale=1.0, noise=None) -> None:
    """In-place Adam/AdamW step on the GPU; see :func:`tinygrad_sgd.kernels.reference.adam_update`."""
    _elementwise(_adam_kernel, host.adam_args(p, g, m, v, v_max, noise, step=step, lr=lr, beta1=beta1, beta2=beta2,
                                              eps=eps, weight_decay=weight_decay,
                                              decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad,
                                              maximize=maximize, grad_scale=grad_scale))


def rmsprop_update(p, g, square_avg, momentum_buffer=None, grad_avg=None, *, lr=1e-2, alpha=0.99, eps=1e-8,
                   weight_decay=0.0, momentum=0.0, centered=False, maximize=False, grad_scale=1.0,
                   noise=None) -> None:
    """In-place RMSprop step on the GPU; see :func:`tinygrad_sgd.kernels.reference.rmsprop_update`."""
    _elementwise(_rmsprop_kernel, host.rmsprop_args(p, g, square_avg, momentum_buffer, grad_avg, noise, lr=lr,
                                                    alpha=alpha, eps=eps, weight_decay=weight_decay,
                                                    momentum=momentum, centered=centered, maximize=maximize,
                                                    grad_scale=grad_scale))


def adagrad_update(p, g, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False,
                   grad_scale=1.0, noise=None) -> None:
    """In-place Adagrad step on the GPU; see :func:`tinygrad_sgd.kernels.reference.adagrad_update`."""
    _elementwise(_adagrad_kernel, host.adagrad_args(p, g, state_sum, noise, step=step, lr=lr, lr_decay=lr_decay,
                                                    weight_decay=weight_decay, eps=eps, maximize=maximize,
                                                    grad_scale=grad_scale))


def accumulate_grad(acc, g, *, first=False, scale=1.0) -> None:
    """``acc = scale*g`` or ``acc += scale*g`` on the GPU; see reference.py."""
    _elementwise(_accumulate_kernel, host.accumulate_args(acc, g, first=first, scale=scale))


def average_accumulated(acc, count) -> None:
    """``acc /= count`` on the GPU; see reference.py."""
    _elementwise(_average_kernel, host.average_args(acc, count))


def sum_of_squares(x) -> float:
    """``sum_i x_i^2``, accumulated in x's dtype by a two-pass tree reduction (synchronises
    to return a Python float)."""
    dtype = host.check_buffers([("x", x)])
    with _Launch(x) as launch:
        return float(_row_sums_of_squares(launch, x.reshape(1, x.size), dtype)[0])


def per_sample_grad_stats(per_sample_grads, mean_out, *, max_norm=None) -> host.BatchGradStats:
    """Clipped mean gradient into ``mean_out`` and noise statistics; see reference.py.
    Sums run in the buffers' dtype (tree reductions); the per-sample norms and clipping
    factors travel through the host (B numbers)."""
    batch, size, max_norm = host.per_sample_args(per_sample_grads, mean_out, max_norm)
    dtype = np.dtype(per_sample_grads.dtype)
    _, sum_rows, mean_and_spread_partial = _reduction_kernels(dtype)
    with _Launch(per_sample_grads) as launch:
        norms = np.sqrt(_row_sums_of_squares(launch, per_sample_grads, dtype).astype(np.float64))
        factors = launch.to_device(host.clip_factors(norms, max_norm).astype(dtype))
        nblocks = launch.blocks(size)
        partial = launch.empty((2, nblocks), dtype)
        sums = launch.empty(2, dtype)
        launch.run(mean_and_spread_partial, nblocks, (per_sample_grads, factors, dtype.type(batch), mean_out, partial))
        launch.run(sum_rows, (1, 2), (partial, sums))
        spread, mean_sq = launch.to_host(sums)
    return host.batch_stats(norms, max_norm, batch, spread, mean_sq)


# ---- PTX check ---------------------------------------------------------------------------


def ptx_cases(dtype=np.float32):
    """``(name, python function, argument types)`` for every kernel of this module at
    ``dtype``, with the argument types built by the same ``host.py`` helpers the launchers
    use (on small NumPy stand-ins), for compiling to PTX without a GPU:
    ``cuda.compile_ptx(fn, argtypes, cc=(9, 0))``."""
    dtype = np.dtype(dtype)
    z = functools.partial(np.zeros, dtype=dtype)
    p, g, s1, s2, s3, noise = (z(4) for _ in range(6))

    def types(args):
        return tuple(numba.typeof(a) for a in args)

    sumsq_rows_partial, sum_rows, mean_and_spread_partial = _reduction_kernels(dtype)
    return [
        ("sgd", _sgd_kernel.py_func, types(host.sgd_args(
            p, g, s1, noise, lr=0.1, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-4, maximize=True,
            first_step=False, grad_scale=0.5))),
        ("adam", _adam_kernel.py_func, types(host.adam_args(
            p, g, s1, s2, s3, noise, step=3, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2,
            decoupled_weight_decay=True, amsgrad=True, maximize=False, grad_scale=1.0))),
        ("rmsprop", _rmsprop_kernel.py_func, types(host.rmsprop_args(
            p, g, s1, s2, s3, noise, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=1e-4, momentum=0.9, centered=True,
            maximize=False, grad_scale=1.0))),
        ("adagrad", _adagrad_kernel.py_func, types(host.adagrad_args(
            p, g, s1, noise, step=2, lr=1e-2, lr_decay=1e-3, weight_decay=1e-4, eps=1e-10, maximize=False,
            grad_scale=1.0))),
        ("accumulate_grad", _accumulate_kernel.py_func, types(host.accumulate_args(p, g, first=False, scale=1.0))),
        ("average_accumulated", _average_kernel.py_func, types(host.average_args(p, 4))),
        ("sumsq_rows_partial", sumsq_rows_partial.py_func, types((z((2, 4)), z((2, 3))))),
        ("sum_rows", sum_rows.py_func, types((z((2, 3)), z(2)))),
        ("mean_and_spread_partial", mean_and_spread_partial.py_func,
         types((z((2, 4)), z(2), dtype.type(2), z(4), z((2, 3))))),
    ]
