"""Fused CPU kernels: Numba ``@njit(parallel=True)`` multi-tensor loops.

One call updates every tensor of a list (a parameter group's parameters of one dtype):
``prange`` runs over the rows of the chunk table that ``host.py`` builds (``(tensor,
start, stop)``), so many small tensors are processed in parallel across tensors and a
large tensor is split across the cores. Each update reads every array once and writes
each state array once. The per-element arithmetic is written once below, as plain Python
functions (``*_element``), and compiled twice: here for the CPU (inlined into the
``prange`` loops) and in ``cuda.py`` for the GPU (as device functions called from the
chunk loops of one launch). So the two targets cannot drift apart; the readable NumPy
specification they implement is each optimizer's ``_single_tensor_*`` function in
``tinygrad_sgd.optim``.

The element bodies index their arguments (``p[i]``); the loops hand them typed pointers
made from the addresses in the pointer table (``_pointer``), which Numba indexes like a
1-D array without bounds checks (the chunk table keeps ``i`` inside its tensor).

Rules for the element functions (both compilers must produce dtype-pure arithmetic):

* no numeric literals: every constant (``1 - beta1``, ``-lr``, ...) arrives as an argument
  already rounded to the arrays' dtype by ``host.py``; a bare ``0.9`` or ``1`` would make
  Numba compute in float64 (and emit ``.f64`` instructions on the GPU);
* only ``+ - * /``, comparisons and ``math.sqrt``, each rounded to the dtype. With
  ``fastmath=False`` nothing is re-associated or contracted into fused multiply-adds;
* an element function never calls another one (a CUDA device function calling a device
  function cannot be compiled to PTX without a GPU present); the kernels chain them.

Numba settings: ``parallel=True`` (``prange``), ``error_model="numpy"`` (division by zero
gives inf/nan like NumPy instead of raising; Numba's default 'python' model also blocks
vectorising ``/``), ``fastmath=False`` (exact IEEE order), ``cache=True`` (compiled code is
kept in ``__pycache__``; the signatures are one per dtype because ``host.py`` casts every
scalar to the arrays' dtype). Numba's cache watches only the file of the cached function,
which is why the element bodies live in this file next to the loops that inline them.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange, types
from numba.core.extending import intrinsic

from . import host

# --------------------------------------------------------------------------------------
# Per-element bodies (plain Python; compiled for the CPU below and for the GPU in cuda.py)
# --------------------------------------------------------------------------------------


def grad_element(i, p, g, grad_scale, weight_decay, maximize, use_weight_decay):
    """The gradient every optimizer starts from (torch.optim order):

        g <- grad_scale * g          # 1/k accumulation x clipping coefficient x 1/world size
        g <- -g                      # maximize
        g <- g + weight_decay * p    # L2 penalty (coupled weight decay)
    """
    gi = g[i] * grad_scale
    if maximize:
        gi = -gi
    if use_weight_decay:
        gi = gi + weight_decay * p[i]
    return gi


def sgd_element(i, gi, p, buf, momentum, one_minus_dampening, neg_lr, use_momentum, first_step, nesterov):
    if use_momentum:
        if first_step:
            bi = gi                                            # torch: buf = clone(grad)
        else:
            bi = buf[i] * momentum + one_minus_dampening * gi  # buf = mu*buf + (1-dampening)*g
        buf[i] = bi
        if nesterov:
            gi = gi + momentum * bi                            # g = g + mu*buf
        else:
            gi = bi
    p[i] = p[i] + neg_lr * gi                                  # p = p - lr*g


def adam_element(i, gi, p, m, v, v_max, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
                 bias_correction2_sqrt, eps, neg_step_size, decoupled_decay, amsgrad):
    pi = p[i]
    if decoupled_decay:
        pi = pi * decay_factor                       # AdamW: p = p * (1 - lr*wd)
    mi = m[i]
    mi = mi + one_minus_beta1 * (gi - mi)            # m = lerp(m, g, 1-beta1)
    m[i] = mi
    vi = v[i] * beta2 + (one_minus_beta2 * gi) * gi  # v = beta2*v + (1-beta2)*g*g
    v[i] = vi
    if amsgrad:
        vm = v_max[i]
        if not vi <= vm:                             # written so a NaN in v propagates,
            vm = vi                                  # like torch.maximum
        v_max[i] = vm                                # v_max = max(v_max, v)
        vi = vm
    denom = math.sqrt(vi) / bias_correction2_sqrt + eps
    p[i] = pi + (neg_step_size * mi) / denom          # p = p - (lr/bc1) * m / denom


def rmsprop_element(i, gi, p, square_avg, buf, grad_avg, alpha, one_minus_alpha, eps, momentum, neg_lr,
                    use_momentum, centered):
    si = square_avg[i] * alpha + (one_minus_alpha * gi) * gi  # E[g^2] = alpha*E[g^2] + (1-alpha)*g^2
    square_avg[i] = si
    if centered:
        ai = grad_avg[i]
        ai = ai + one_minus_alpha * (gi - ai)                  # E[g] = lerp(E[g], g, 1-alpha)
        grad_avg[i] = ai
        avg = math.sqrt(si - ai * ai)                           # sqrt(E[g^2] - E[g]^2)
    else:
        avg = math.sqrt(si)
    avg = avg + eps
    if use_momentum:
        bi = buf[i] * momentum + gi / avg                        # buf = mu*buf + g/avg
        buf[i] = bi
        p[i] = p[i] + neg_lr * bi                                # p = p - lr*buf
    else:
        p[i] = p[i] + (neg_lr * gi) / avg                        # p = p - lr*g/avg


def adagrad_element(i, gi, p, state_sum, eps, neg_clr):
    si = state_sum[i] + gi * gi                                   # sum += g*g
    state_sum[i] = si
    p[i] = p[i] + (neg_clr * gi) / (math.sqrt(si) + eps)          # p = p - clr*g/(sqrt(sum)+eps)


# --------------------------------------------------------------------------------------
# CPU loops
# --------------------------------------------------------------------------------------


@intrinsic
def _pointer(typingctx, address, like):
    """``address`` (an int64 from the pointer table) as a pointer to ``like``'s type."""
    sig = types.CPointer(like)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


# inline="always" splices the body into the prange loop at Numba-IR level; a plain call is
# not inlined by LLVM here and costs many times the memory-bound loop (docs/benchmarks.md).
_inline = njit(inline="always", error_model="numpy", fastmath=False)
_grad = _inline(grad_element)
_sgd = _inline(sgd_element)
_adam = _inline(adam_element)
_rmsprop = _inline(rmsprop_element)
_adagrad = _inline(adagrad_element)

_PARALLEL = dict(parallel=True, cache=True, fastmath=False, error_model="numpy", nogil=True)

# Every loop: ptrs[0] parameters, ptrs[1] gradients, ptrs[2:] state arrays (host.tables);
# chunks rows (tensor, start, stop); then the scalars of host.*_scalars in order.


@njit(**_PARALLEL)
def sgd_loop(ptrs, chunks, grad_scale, weight_decay, momentum, one_minus_dampening, neg_lr, maximize,
             use_weight_decay, use_momentum, first_step, nesterov):
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        p = _pointer(ptrs[0, t], grad_scale)
        g = _pointer(ptrs[1, t], grad_scale)
        buf = _pointer(ptrs[2, t], grad_scale)
        for i in range(chunks[c, 1], chunks[c, 2]):
            gi = _grad(i, p, g, grad_scale, weight_decay, maximize, use_weight_decay)
            _sgd(i, gi, p, buf, momentum, one_minus_dampening, neg_lr, use_momentum, first_step, nesterov)


@njit(**_PARALLEL)
def adam_loop(ptrs, chunks, grad_scale, weight_decay, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
              bias_correction2_sqrt, eps, neg_step_size, maximize, l2_decay, decoupled_decay, amsgrad):
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        p = _pointer(ptrs[0, t], grad_scale)
        g = _pointer(ptrs[1, t], grad_scale)
        m = _pointer(ptrs[2, t], grad_scale)
        v = _pointer(ptrs[3, t], grad_scale)
        v_max = _pointer(ptrs[4, t], grad_scale)
        for i in range(chunks[c, 1], chunks[c, 2]):
            gi = _grad(i, p, g, grad_scale, weight_decay, maximize, l2_decay)
            _adam(i, gi, p, m, v, v_max, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
                  bias_correction2_sqrt, eps, neg_step_size, decoupled_decay, amsgrad)


@njit(**_PARALLEL)
def rmsprop_loop(ptrs, chunks, grad_scale, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr, maximize,
                 use_weight_decay, use_momentum, centered):
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        p = _pointer(ptrs[0, t], grad_scale)
        g = _pointer(ptrs[1, t], grad_scale)
        square_avg = _pointer(ptrs[2, t], grad_scale)
        buf = _pointer(ptrs[3, t], grad_scale)
        grad_avg = _pointer(ptrs[4, t], grad_scale)
        for i in range(chunks[c, 1], chunks[c, 2]):
            gi = _grad(i, p, g, grad_scale, weight_decay, maximize, use_weight_decay)
            _rmsprop(i, gi, p, square_avg, buf, grad_avg, alpha, one_minus_alpha, eps, momentum, neg_lr,
                     use_momentum, centered)


@njit(**_PARALLEL)
def adagrad_loop(ptrs, chunks, grad_scale, weight_decay, eps, neg_clr, maximize, use_weight_decay):
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        p = _pointer(ptrs[0, t], grad_scale)
        g = _pointer(ptrs[1, t], grad_scale)
        state_sum = _pointer(ptrs[2, t], grad_scale)
        for i in range(chunks[c, 1], chunks[c, 2]):
            gi = _grad(i, p, g, grad_scale, weight_decay, maximize, use_weight_decay)
            _adagrad(i, gi, p, state_sum, eps, neg_clr)


# Reductions accumulate in float64 whatever the input dtype: a float32 running sum over 10M
# squares loses ~3 digits, the float64 one none that matter. Allowing reassociation lets LLVM
# split the running sum into vector lanes (without it, each add waits for the one before,
# and the loop ran slower than NumPy's dot); NaN and Inf still propagate (no nnan/ninf).
_PARALLEL_REDUCTION = dict(_PARALLEL, fastmath={"reassoc", "contract"})


@njit(**_PARALLEL_REDUCTION)
def sum_of_squares_loop(ptrs, chunks, like):
    """sum over every tensor of the table of x_i^2 (the global gradient norm squared)."""
    total = 0.0
    for c in prange(chunks.shape[0]):
        x = _pointer(ptrs[0, chunks[c, 0]], like)
        s = 0.0
        for i in range(chunks[c, 1], chunks[c, 2]):
            xi = np.float64(x[i])
            s += xi * xi
        total += s
    return total


@njit(**_PARALLEL)
def _row_sums_of_squares(x, out):
    for b in prange(x.shape[0]):
        total = 0.0
        for j in range(x.shape[1]):
            xj = np.float64(x[b, j])
            total += xj * xj
        out[b] = total


@njit(**_PARALLEL)
def _mean_and_spread(x, factors, mean_out):
    """mean_out[j] = sum_b factors[b]*x[b, j] / B; returns (sum_bj (f_b x_bj - mean_j)^2,
    sum_j mean_j^2), all in float64 (two passes over each column: numerically stable)."""
    batch = x.shape[0]
    spread = 0.0
    mean_sq = 0.0
    for j in prange(x.shape[1]):
        s = 0.0
        for b in range(batch):
            s += factors[b] * np.float64(x[b, j])
        mu = s / batch
        mean_out[j] = mu
        d = 0.0
        for b in range(batch):
            e = factors[b] * np.float64(x[b, j]) - mu
            d += e * e
        spread += d
        mean_sq += mu * mu
    return spread, mean_sq


# --------------------------------------------------------------------------------------
# What dispatch.py and host.py need from a device kind
# --------------------------------------------------------------------------------------

ARRAY_KIND = "NumPy array"


def accepts(array) -> bool:
    return type(array) is np.ndarray


def address(array) -> int:
    """The address of a NumPy array's first element (the pointer table's entries)."""
    return array.ctypes.data


def to_device_table(table: np.ndarray) -> np.ndarray:
    return table  # the CPU loops read the NumPy table itself


# Below this many elements a call runs its loop on the calling thread only. Waking the
# other threads costs ~10-20 us alone, and far more inside a training step: the update
# follows the backward pass's matrix products, whose BLAS threads keep spinning on every
# core for a while, so a Numba parallel region waits for the scheduler (measured figures
# in docs/benchmarks.md).
PARALLEL_MIN_SIZE = 1 << 22


def _thread_count_functions():
    """``(get, set)`` for the calling thread's Numba thread count.

    The public ``numba.get_num_threads`` / ``set_num_threads`` take two locks (one of them
    a multiprocessing lock) on every call, a large share of a small update's time. They
    check the argument and start the thread pool, then call two C functions that Numba
    binds at start-up; once the pool is running this module calls those directly. Should
    a Numba release rename them, the public functions serve instead.
    """
    numba.get_num_threads()  # starts the pool and binds the C functions
    from numba.np.ufunc import parallel
    get, set_ = getattr(parallel, "_get_num_threads", None), getattr(parallel, "_set_num_threads", None)
    if callable(get) and callable(set_) and get() == numba.get_num_threads():
        return get, set_
    return numba.get_num_threads, numba.set_num_threads


_get_threads = _set_threads = None  # bound on first use (importing this module starts no threads)


class launch:
    """``with launch(size) as run: run(loop)(*args)``: a loop over ``size`` elements, on one
    thread when it is small (see PARALLEL_MIN_SIZE). The GPU's ``launch`` in cuda.py has
    the same interface."""

    __slots__ = ("size", "threads")

    def __init__(self, size: int, first_array=None, blocks: int = 0):
        self.size = size
        self.threads = None

    def __enter__(self):
        global _get_threads, _set_threads
        if self.size < PARALLEL_MIN_SIZE:
            if _get_threads is None:
                _get_threads, _set_threads = _thread_count_functions()
            self.threads = _get_threads()  # (a per-thread setting: restoring it is enough)
            _set_threads(1)
        return _identity

    def __exit__(self, *exc):
        if self.threads is not None:
            _set_threads(self.threads)
        return False


def _identity(loop):
    return loop


def per_sample_grad_stats(per_sample_grads, mean_out, *, max_norm=None):
    """Clipped mean gradient into ``mean_out`` plus noise statistics; see reference.py."""
    batch, _, max_norm = host.per_sample_args(per_sample_grads, mean_out, max_norm)
    sq = np.empty(batch, dtype=np.float64)
    with launch(per_sample_grads.size) as run:
        run(_row_sums_of_squares)(per_sample_grads, sq)
        norms = np.sqrt(sq)
        factors = host.clip_factors(norms, max_norm)
        spread, mean_sq = run(_mean_and_spread)(per_sample_grads, factors, mean_out)
    return host.batch_stats(norms, max_norm, batch, spread, mean_sq)


def sum_of_squares(ptrs, chunks, dtype, size) -> float:
    """sum of x_i^2 over the tensors of the table, accumulated in float64."""
    with launch(size) as run:
        return float(run(sum_of_squares_loop)(ptrs, chunks, dtype.type(0)))
