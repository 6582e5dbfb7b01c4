"""Host-side work shared by the reference, the Numba CPU and the Numba-CUDA kernels.

Two jobs live here so that they exist once:

* **Argument checks.** Every kernel updates flat, contiguous, 1-D float32/float64 buffers
  in place. A wrong shape, dtype, layout or a missing state buffer raises a ``ValueError``
  or ``TypeError`` naming the argument *before* any buffer is touched.
* **Scalar preparation.** Everything that depends only on hyperparameters and the step
  count (bias corrections, ``lr / bias_correction1``, Adagrad's decayed rate, ``1 - beta``)
  is computed here in Python (float64) and then rounded once to the buffers' dtype. The
  kernels therefore never see a Python float: a float32 update computes in float32 on
  every target (Numba would otherwise promote ``float32 * float64`` to float64, and the
  GPU would run double-precision instructions), and the NumPy reference, which takes the
  very same rounded scalars, can agree with the fused kernels to the last bit.

Optional state buffers (``v_max`` without AMSGrad, a momentum buffer without momentum, the
noise array) are replaced by the parameter buffer itself when absent: the kernels never
read or write them behind a false flag, and this keeps one compiled signature per dtype
instead of one per combination of ``None`` arguments.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_c_contiguous(array) -> bool:
    flags = getattr(array, "flags", None)
    if flags is not None:
        try:
            return bool(flags["C_CONTIGUOUS"])
        except (KeyError, TypeError):
            return bool(getattr(flags, "c_contiguous", True))
    return True  # numba device arrays (and the simulator's) are contiguous when 1-D views


def check_buffers(names_and_arrays, *, ndim: int = 1):
    """Check that the given buffers are float32/float64, C-contiguous, ``ndim``-D and
    share shape and dtype with the first one. Returns the common dtype."""
    first_name, first = names_and_arrays[0]
    if type(first) is np.ndarray:  # the CPU case in one pass over the arrays' own attributes
        dtype, shape = first.dtype, first.shape
        if (dtype in FLOAT_DTYPES and len(shape) == ndim
                and all(type(array) is np.ndarray and array.dtype == dtype and array.shape == shape
                        and array.flags.c_contiguous for _, array in names_and_arrays)):
            return dtype
    for name, array in names_and_arrays:  # find and name the problem (and check GPU arrays)
        if not hasattr(array, "dtype") or not hasattr(array, "shape"):
            raise TypeError(f"{name} must be a NumPy or CUDA array, got {type(array).__name__}")
        if np.dtype(array.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32 or float64, got {np.dtype(array.dtype)}")
        if len(array.shape) != ndim:
            what = "a flat buffer" if ndim == 1 else "one row per sample"
            raise ValueError(f"{name} must be {ndim}-D ({what}), got shape {tuple(array.shape)}")
        if not _is_c_contiguous(array):
            raise ValueError(f"{name} must be C-contiguous")
        if np.dtype(array.dtype) != np.dtype(first.dtype):
            raise TypeError(f"{name} has dtype {np.dtype(array.dtype)} but {first_name} has "
                            f"{np.dtype(first.dtype)}; all buffers of one update share a dtype")
        if tuple(array.shape) != tuple(first.shape):
            raise ValueError(f"{name} has shape {tuple(array.shape)} but {first_name} has "
                             f"{tuple(first.shape)}")
    return np.dtype(first.dtype)


def _require(name: str, array, reason: str):
    if array is None:
        raise ValueError(f"{name} is required {reason}")
    return array


def _check_finite_scalar(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _grad_inputs(p, g, noise, grad_scale, extra):
    """Common part of every update: check p, g, the optional noise and state buffers."""
    named = [("param", p), ("grad", g)] + [(n, a) for n, a in extra if a is not None]
    if noise is not None:
        named.append(("noise", noise))
    dtype = check_buffers(named)
    grad_scale = _check_finite_scalar("grad_scale", grad_scale)
    return dtype, grad_scale


def _step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int (the 1-based count of this update), got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"step must be >= 1 (the count including this update), got {step}")
    return int(step)


class SGDArgs(NamedTuple):
    """Kernel arguments of :func:`sgd_args`, in the kernels' positional order."""
    p: object
    g: object
    momentum_buffer: object
    noise: object
    grad_scale: object
    weight_decay: object
    momentum: object
    one_minus_dampening: object
    neg_lr: object
    has_noise: bool
    maximize: bool
    use_weight_decay: bool
    use_momentum: bool
    first_step: bool
    nesterov: bool


def sgd_args(p, g, momentum_buffer, noise, *, lr, momentum, dampening, nesterov, weight_decay,
             maximize, first_step, grad_scale) -> SGDArgs:
    lr = _check_finite_scalar("lr", lr)
    momentum = _check_finite_scalar("momentum", momentum)
    dampening = _check_finite_scalar("dampening", dampening)
    weight_decay = _check_finite_scalar("weight_decay", weight_decay)
    if nesterov and (momentum == 0 or dampening != 0):
        raise ValueError("nesterov momentum requires momentum > 0 and dampening == 0")
    use_momentum = momentum != 0
    if use_momentum:
        _require("momentum_buffer", momentum_buffer, "when momentum != 0")
    dtype, grad_scale = _grad_inputs(p, g, noise, grad_scale,
                                     [("momentum_buffer", momentum_buffer if use_momentum else None)])
    f = dtype.type
    return SGDArgs(p, g, momentum_buffer if use_momentum else p, noise if noise is not None else p,
                   f(grad_scale), f(weight_decay), f(momentum), f(1.0 - dampening), f(-lr),
                   noise is not None, bool(maximize), weight_decay != 0, use_momentum,
                   bool(first_step), bool(nesterov))


class AdamArgs(NamedTuple):
    p: object
    g: object
    m: object
    v: object
    v_max: object
    noise: object
    grad_scale: object
    weight_decay: object
    decay_factor: object
    one_minus_beta1: object
    beta2: object
    one_minus_beta2: object
    bias_correction2_sqrt: object
    eps: object
    neg_step_size: object
    has_noise: bool
    maximize: bool
    l2_decay: bool
    decoupled_decay: bool
    amsgrad: bool


def adam_args(p, g, m, v, v_max, noise, *, step, lr, beta1, beta2, eps, weight_decay,
              decoupled_weight_decay, amsgrad, maximize, grad_scale) -> AdamArgs:
    step = _step(step)
    lr = _check_finite_scalar("lr", lr)
    beta1 = _check_finite_scalar("beta1", beta1)
    beta2 = _check_finite_scalar("beta2", beta2)
    eps = _check_finite_scalar("eps", eps)
    weight_decay = _check_finite_scalar("weight_decay", weight_decay)
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must lie in [0, 1), got ({beta1}, {beta2})")
    _require("m", m, "(first-moment buffer)")
    _require("v", v, "(second-moment buffer)")
    if amsgrad:
        _require("v_max", v_max, "when amsgrad=True")
    dtype, grad_scale = _grad_inputs(p, g, noise, grad_scale,
                                     [("m", m), ("v", v), ("v_max", v_max if amsgrad else None)])
    f = dtype.type
    # As in torch.optim.Adam (non-capturable path): Python-float bias corrections.
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    decoupled = bool(decoupled_weight_decay) and weight_decay != 0
    return AdamArgs(p, g, m, v, v_max if amsgrad else p, noise if noise is not None else p,
                    f(grad_scale), f(weight_decay), f(1.0 - lr * weight_decay), f(1.0 - beta1), f(beta2),
                    f(1.0 - beta2), f(bias_correction2 ** 0.5), f(eps), f(-(lr / bias_correction1)),
                    noise is not None, bool(maximize), weight_decay != 0 and not decoupled, decoupled,
                    bool(amsgrad))


class RMSpropArgs(NamedTuple):
    p: object
    g: object
    square_avg: object
    momentum_buffer: object
    grad_avg: object
    noise: object
    grad_scale: object
    weight_decay: object
    alpha: object
    one_minus_alpha: object
    eps: object
    momentum: object
    neg_lr: object
    has_noise: bool
    maximize: bool
    use_weight_decay: bool
    use_momentum: bool
    centered: bool


def rmsprop_args(p, g, square_avg, momentum_buffer, grad_avg, noise, *, lr, alpha, eps, weight_decay,
                 momentum, centered, maximize, grad_scale) -> RMSpropArgs:
    lr = _check_finite_scalar("lr", lr)
    alpha = _check_finite_scalar("alpha", alpha)
    eps = _check_finite_scalar("eps", eps)
    weight_decay = _check_finite_scalar("weight_decay", weight_decay)
    momentum = _check_finite_scalar("momentum", momentum)
    _require("square_avg", square_avg, "(running average of squared gradients)")
    use_momentum = momentum > 0
    if use_momentum:
        _require("momentum_buffer", momentum_buffer, "when momentum > 0")
    if centered:
        _require("grad_avg", grad_avg, "when centered=True")
    dtype, grad_scale = _grad_inputs(p, g, noise, grad_scale, [
        ("square_avg", square_avg), ("momentum_buffer", momentum_buffer if use_momentum else None),
        ("grad_avg", grad_avg if centered else None)])
    f = dtype.type
    return RMSpropArgs(p, g, square_avg, momentum_buffer if use_momentum else p, grad_avg if centered else p,
                       noise if noise is not None else p, f(grad_scale), f(weight_decay), f(alpha),
                       f(1.0 - alpha), f(eps), f(momentum), f(-lr), noise is not None, bool(maximize),
                       weight_decay != 0, use_momentum, bool(centered))


class AdagradArgs(NamedTuple):
    p: object
    g: object
    state_sum: object
    noise: object
    grad_scale: object
    weight_decay: object
    eps: object
    neg_clr: object
    has_noise: bool
    maximize: bool
    use_weight_decay: bool


def adagrad_args(p, g, state_sum, noise, *, step, lr, lr_decay, weight_decay, eps, maximize,
                 grad_scale) -> AdagradArgs:
    step = _step(step)
    lr = _check_finite_scalar("lr", lr)
    lr_decay = _check_finite_scalar("lr_decay", lr_decay)
    weight_decay = _check_finite_scalar("weight_decay", weight_decay)
    eps = _check_finite_scalar("eps", eps)
    _require("state_sum", state_sum, "(sum of squared gradients)")
    dtype, grad_scale = _grad_inputs(p, g, noise, grad_scale, [("state_sum", state_sum)])
    f = dtype.type
    clr = lr / (1.0 + (step - 1) * lr_decay)  # torch.optim.Adagrad's decayed learning rate
    return AdagradArgs(p, g, state_sum, noise if noise is not None else p, f(grad_scale), f(weight_decay),
                       f(eps), f(-clr), noise is not None, bool(maximize), weight_decay != 0)


def accumulate_args(acc, g, *, first, scale):
    dtype = check_buffers([("acc", acc), ("grad", g)])
    scale = _check_finite_scalar("scale", scale)
    return acc, g, dtype.type(scale), bool(first)


def average_args(acc, count):
    dtype = check_buffers([("acc", acc)])
    if isinstance(count, bool) or not isinstance(count, (int, np.integer, float, np.floating)):
        raise TypeError(f"count must be a number, got {type(count).__name__}")
    if not count > 0 or not math.isfinite(count):
        raise ValueError(f"count must be a positive finite number, got {count}")
    return acc, dtype.type(count)


def per_sample_args(grads, mean_out, max_norm):
    check_buffers([("per_sample_grads", grads)], ndim=2)
    check_buffers([("mean_out", mean_out)])
    if np.dtype(mean_out.dtype) != np.dtype(grads.dtype):
        raise TypeError(f"mean_out has dtype {np.dtype(mean_out.dtype)} but per_sample_grads has "
                        f"{np.dtype(grads.dtype)}")
    batch, size = grads.shape
    if batch < 1:
        raise ValueError("per_sample_grads must hold at least one sample (shape (B, P) with B >= 1)")
    if tuple(mean_out.shape) != (size,):
        raise ValueError(f"mean_out must have shape ({size},) to match per_sample_grads of shape "
                         f"{tuple(grads.shape)}, got {tuple(mean_out.shape)}")
    if max_norm is not None:
        max_norm = _check_finite_scalar("max_norm", max_norm)
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
    return batch, size, max_norm


def to_host(array) -> np.ndarray:
    """A NumPy copy (or the array itself) of a NumPy, CuPy or Numba device array."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "copy_to_host"):  # Numba device array (also the CUDA simulator's)
        return array.copy_to_host()
    return array.get()  # CuPy


def clip_factors(norms: np.ndarray, max_norm) -> np.ndarray:
    """Per-sample clipping factors of DP-SGD (Abadi et al. 2016, "Deep Learning with
    Differential Privacy"): ``g_b <- g_b / max(1, ||g_b|| / C)``, i.e. factor
    ``min(1, C / ||g_b||)`` (1 for a zero gradient). Float64, computed on the host."""
    factors = np.ones(norms.shape, dtype=np.float64)
    if max_norm is not None:
        over = norms > max_norm
        factors[over] = max_norm / norms[over]
    return factors


class BatchGradStats(NamedTuple):
    """What :func:`per_sample_grad_stats` measures about one mini-batch of B per-sample
    gradients ``g_b`` (after the optional per-sample clipping, which the statistics describe
    because those are the gradients that get averaged).

    norms             ``||g_b||`` before clipping, shape (B,) (NumPy, on the host)
    num_clipped       how many samples had ``||g_b|| > max_norm``
    mean_sq_norm      ``|G_B|^2`` where ``G_B = mean_b g_b`` (written to ``mean_out``)
    trace_cov         ``tr(Sigma)`` estimated without bias: ``sum_b |g_b - G_B|^2 / (B - 1)``
    variance_of_mean  ``tr(Sigma) / B``: expected ``|G_B - G|^2``, the noise of the estimate
    grad_sq_norm      ``|G|^2`` estimated without bias: ``|G_B|^2 - tr(Sigma) / B``
    noise_scale       ``B_simple = tr(Sigma) / |G|^2`` (McCandlish et al. 2018)

    For B = 1 the variance terms are NaN. ``noise_scale`` is ``inf`` when the estimate of
    ``|G|^2`` is not positive (the batch is too small to see the signal through the noise).
    """
    norms: np.ndarray
    num_clipped: int
    mean_sq_norm: float
    trace_cov: float
    variance_of_mean: float
    grad_sq_norm: float
    noise_scale: float


def batch_stats(norms, max_norm, batch, sum_sq_dev, mean_sq_norm) -> BatchGradStats:
    """Assemble :class:`BatchGradStats` from the two reductions every target computes:
    ``sum_sq_dev = sum_b |g_b - G_B|^2`` and ``mean_sq_norm = |G_B|^2``.

    Estimator: with per-sample gradients, McCandlish et al.'s two-batch-size estimates
    (their Appendix A, with B_small = 1 and B_big = B) reduce to the unbiased sample
    covariance trace ``S = sum_b |g_b - G_B|^2 / (B - 1)`` and ``|G|^2 ~ |G_B|^2 - S / B``
    (since ``E|G_B|^2 = |G|^2 + tr(Sigma) / B``). Both are unbiased; their ratio, the
    noise scale, is not (the paper averages numerator and denominator over steps before
    dividing, which callers can do with the two fields).
    """
    norms = np.asarray(norms, dtype=np.float64)
    num_clipped = int(np.count_nonzero(norms > max_norm)) if max_norm is not None else 0
    mean_sq_norm = float(mean_sq_norm)
    if batch > 1:
        trace_cov = float(sum_sq_dev) / (batch - 1)
        variance = trace_cov / batch
        grad_sq = mean_sq_norm - variance
        noise_scale = trace_cov / grad_sq if grad_sq > 0 else math.inf
    else:
        trace_cov = variance = grad_sq = noise_scale = math.nan
    return BatchGradStats(norms, num_clipped, mean_sq_norm, trace_cov, variance, grad_sq, noise_scale)
