"""Fused CPU kernels: Numba ``@njit(parallel=True)`` loops over flat buffers.

Each optimizer update reads every buffer once and writes each state buffer once, in one
parallel pass (``prange`` splits the flat index range over the cores). The per-element
arithmetic is written once below, as plain Python functions (``*_element``), and compiled
twice: here for the CPU (inlined into the ``prange`` loops) and in ``cuda.py`` for the GPU
(as device functions called from grid-stride loops). So the two targets cannot drift apart.

Rules for the element functions (both compilers must produce dtype-pure arithmetic):

* no numeric literals: every constant (``1 - beta1``, ``-lr``, ...) arrives as an argument
  already rounded to the buffers' dtype by ``host.py``; a bare ``0.9`` or ``1`` would make
  Numba compute in float64 (and emit ``.f64`` instructions on the GPU);
* only ``+ - * /``, comparisons and ``math.sqrt``, each rounded to the dtype, in the same
  order as the NumPy reference in ``reference.py`` (which follows torch.optim's
  single-tensor code). With ``fastmath=False`` nothing is re-associated or contracted into
  fused multiply-adds, so the CPU kernels agree with the reference to the last bit;
* an element function never calls another one (a CUDA device function calling a device
  function cannot be compiled to PTX without a GPU present); the kernels chain them.

Numba settings: ``parallel=True`` (``prange``), ``error_model="numpy"`` (division by zero
gives inf/nan like NumPy instead of raising; Numba's default 'python' model also blocks
vectorising ``/``), ``fastmath=False`` (exact IEEE order), ``cache=True`` (compiled code is
kept in ``__pycache__``; the signatures are one per dtype because ``host.py`` casts every
scalar to the buffers' dtype and replaces absent buffers by the parameter buffer). Numba's
cache watches only the file of the cached function, which is why the element bodies live in
this file next to the loops that inline them.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from . import host

# --------------------------------------------------------------------------------------
# Per-element bodies (plain Python; compiled for the CPU below and for the GPU in cuda.py)
# --------------------------------------------------------------------------------------


def grad_element(i, p, g, noise, grad_scale, weight_decay, has_noise, maximize, use_weight_decay):
    """The gradient every optimizer starts from (torch.optim order):

        g <- grad_scale * g          # norm clipping folded into the update (1 when unused)
        g <- g + noise               # optional pre-drawn gradient noise
        g <- -g                      # maximize
        g <- g + weight_decay * p    # L2 penalty (coupled weight decay)
    """
    gi = g[i] * grad_scale
    if has_noise:
        gi = gi + noise[i]
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


def accumulate_element(i, acc, g, scale, first):
    if first:
        acc[i] = g[i] * scale          # the first micro-batch overwrites: no zeroing pass
    else:
        acc[i] = acc[i] + g[i] * scale


def average_element(i, acc, count):
    acc[i] = acc[i] / count


# --------------------------------------------------------------------------------------
# CPU loops
# --------------------------------------------------------------------------------------

# inline="always" splices the body into the prange loop at Numba-IR level; a plain call is
# not inlined by LLVM here and costs ~25x (measured: 245 ms against 9 ms for 10M-element Adam).
_inline = njit(inline="always", error_model="numpy", fastmath=False)
_grad = _inline(grad_element)
_sgd = _inline(sgd_element)
_adam = _inline(adam_element)
_rmsprop = _inline(rmsprop_element)
_adagrad = _inline(adagrad_element)
_accumulate = _inline(accumulate_element)
_average = _inline(average_element)

_PARALLEL = dict(parallel=True, cache=True, fastmath=False, error_model="numpy", nogil=True)


@njit(**_PARALLEL)
def _sgd_loop(p, g, buf, noise, grad_scale, weight_decay, momentum, one_minus_dampening, neg_lr, has_noise,
              maximize, use_weight_decay, use_momentum, first_step, nesterov):
    for i in prange(p.size):
        gi = _grad(i, p, g, noise, grad_scale, weight_decay, has_noise, maximize, use_weight_decay)
        _sgd(i, gi, p, buf, momentum, one_minus_dampening, neg_lr, use_momentum, first_step, nesterov)


@njit(**_PARALLEL)
def _adam_loop(p, g, m, v, v_max, noise, grad_scale, weight_decay, decay_factor, one_minus_beta1, beta2,
               one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size, has_noise, maximize, l2_decay,
               decoupled_decay, amsgrad):
    for i in prange(p.size):
        gi = _grad(i, p, g, noise, grad_scale, weight_decay, has_noise, maximize, l2_decay)
        _adam(i, gi, p, m, v, v_max, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
              bias_correction2_sqrt, eps, neg_step_size, decoupled_decay, amsgrad)


@njit(**_PARALLEL)
def _rmsprop_loop(p, g, square_avg, buf, grad_avg, noise, grad_scale, weight_decay, alpha, one_minus_alpha, eps,
                  momentum, neg_lr, has_noise, maximize, use_weight_decay, use_momentum, centered):
    for i in prange(p.size):
        gi = _grad(i, p, g, noise, grad_scale, weight_decay, has_noise, maximize, use_weight_decay)
        _rmsprop(i, gi, p, square_avg, buf, grad_avg, alpha, one_minus_alpha, eps, momentum, neg_lr,
                 use_momentum, centered)


@njit(**_PARALLEL)
def _adagrad_loop(p, g, state_sum, noise, grad_scale, weight_decay, eps, neg_clr, has_noise, maximize,
                  use_weight_decay):
    for i in prange(p.size):
        gi = _grad(i, p, g, noise, grad_scale, weight_decay, has_noise, maximize, use_weight_decay)
        _adagrad(i, gi, p, state_sum, eps, neg_clr)


@njit(**_PARALLEL)
def _accumulate_loop(acc, g, scale, first):
    for i in prange(acc.size):
        _accumulate(i, acc, g, scale, first)


@njit(**_PARALLEL)
def _average_loop(acc, count):
    for i in prange(acc.size):
        _average(i, acc, count)


# Reductions accumulate in float64 whatever the input dtype: a float32 running sum over 10M
# squares loses ~3 digits, the float64 one none that matter.

@njit(**_PARALLEL)
def _sum_of_squares(x):
    total = 0.0
    for i in prange(x.size):
        xi = np.float64(x[i])
        total += xi * xi
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
# Public functions (same signatures as reference.py; NumPy arrays only)
# --------------------------------------------------------------------------------------

# Below this many elements a call runs its loop on the calling thread only. Waking the
# other threads costs ~10-20 us alone, and far more inside a training step: the update
# follows the backward pass's matrix products, whose BLAS threads keep spinning on every
# core for a while, so a Numba parallel region waits for the scheduler. Measured on the
# 2-core development machine (SGD momentum, float32): 270k parameters 0.10 ms on 2 threads
# alone, 7-18 ms on 2 threads right after a matmul, 0.15-0.6 ms on 1 thread either way;
# at 2M, 2.2-2.6 ms on 1 thread against 13-16 ms on 2 threads under load; at 10M, 2
# threads still win (31-37 ms against 37-53 ms under load).
PARALLEL_MIN_SIZE = 1 << 22


def _thread_count_functions():
    """``(get, set)`` for the calling thread's Numba thread count.

    The public ``numba.get_num_threads`` / ``set_num_threads`` take two locks (one of them
    a multiprocessing lock) on every call: three calls cost ~45 us per kernel call inside a
    training step (measured, 784-256-256-10 MLP, batch 128), a quarter of the update
    itself. They check the argument and start the thread pool, then call two C functions
    that Numba binds at start-up; once the pool is running this module calls those
    directly. Should a Numba release rename them, the public functions serve instead.
    """
    numba.get_num_threads()  # starts the pool and binds the C functions
    from numba.np.ufunc import parallel
    get, set_ = getattr(parallel, "_get_num_threads", None), getattr(parallel, "_set_num_threads", None)
    if callable(get) and callable(set_) and get() == numba.get_num_threads():
        return get, set_
    return numba.get_num_threads, numba.set_num_threads


_get_threads = _set_threads = None  # bound on first use (importing this module starts no threads)


def _run(loop, args, size=None):
    """``loop(*args)``, on one thread when the buffers (``args[0]`` unless ``size`` is
    given) are small."""
    global _get_threads, _set_threads
    if (args[0].size if size is None else size) >= PARALLEL_MIN_SIZE:
        return loop(*args)
    if _get_threads is None:
        _get_threads, _set_threads = _thread_count_functions()
    threads = _get_threads()  # (a per-thread setting: restoring it is enough)
    _set_threads(1)
    try:
        return loop(*args)
    finally:
        _set_threads(threads)


def sgd_update(p, g, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
               maximize=False, first_step=False, grad_scale=1.0, noise=None) -> None:
    """In-place SGD step; see :func:`tinygrad_sgd.kernels.reference.sgd_update`."""
    args = host.sgd_args(p, g, momentum_buffer, noise, lr=lr, momentum=momentum, dampening=dampening,
                         nesterov=nesterov, weight_decay=weight_decay, maximize=maximize, first_step=first_step,
                         grad_scale=grad_scale)
    _run(_sgd_loop, args)


def adam_update(p, g, m, v, v_max=None, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled_weight_decay=False, amsgrad=False, maximize=False, grad_scale=1.0, noise=None) -> None:
    """In-place Adam/AdamW step; see :func:`tinygrad_sgd.kernels.reference.adam_update`."""
    args = host.adam_args(p, g, m, v, v_max, noise, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                          weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad,
                          maximize=maximize, grad_scale=grad_scale)
    _run(_adam_loop, args)


def rmsprop_update(p, g, square_avg, momentum_buffer=None, grad_avg=None, *, lr=1e-2, alpha=0.99, eps=1e-8,
                   weight_decay=0.0, momentum=0.0, centered=False, maximize=False, grad_scale=1.0,
                   noise=None) -> None:
    """In-place RMSprop step; see :func:`tinygrad_sgd.kernels.reference.rmsprop_update`."""
    args = host.rmsprop_args(p, g, square_avg, momentum_buffer, grad_avg, noise, lr=lr, alpha=alpha, eps=eps,
                             weight_decay=weight_decay, momentum=momentum, centered=centered, maximize=maximize,
                             grad_scale=grad_scale)
    _run(_rmsprop_loop, args)


def adagrad_update(p, g, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False,
                   grad_scale=1.0, noise=None) -> None:
    """In-place Adagrad step; see :func:`tinygrad_sgd.kernels.reference.adagrad_update`."""
    args = host.adagrad_args(p, g, state_sum, noise, step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                             eps=eps, maximize=maximize, grad_scale=grad_scale)
    _run(_adagrad_loop, args)


def accumulate_grad(acc, g, *, first=False, scale=1.0) -> None:
    """``acc = scale*g`` (first micro-batch) or ``acc += scale*g``; see reference.py."""
    _run(_accumulate_loop, host.accumulate_args(acc, g, first=first, scale=scale))


def average_accumulated(acc, count) -> None:
    """``acc /= count``; see :func:`tinygrad_sgd.kernels.reference.average_accumulated`."""
    _run(_average_loop, host.average_args(acc, count))


def sum_of_squares(x) -> float:
    """``sum_i x_i^2`` accumulated in float64; see reference.py."""
    host.check_buffers([("x", x)])
    return float(_run(_sum_of_squares, (x,)))


def per_sample_grad_stats(per_sample_grads, mean_out, *, max_norm=None) -> host.BatchGradStats:
    """Clipped mean gradient into ``mean_out`` plus noise statistics; see reference.py."""
    batch, _, max_norm = host.per_sample_args(per_sample_grads, mean_out, max_norm)
    sq = np.empty(batch, dtype=np.float64)
    _run(_row_sums_of_squares, (per_sample_grads, sq))
    norms = np.sqrt(sq)
    factors = host.clip_factors(norms, max_norm)
    spread, mean_sq = _run(_mean_and_spread, (per_sample_grads, factors, mean_out))
    return host.batch_stats(norms, max_norm, batch, spread, mean_sq)
