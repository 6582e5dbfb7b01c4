"""Host-side work shared by the Numba CPU and the Numba-CUDA kernels.

Three jobs live here so that they exist once:

* **Argument checks.** A multi-tensor update takes *lists* of arrays (the parameters of
  one group, their gradients, each state buffer), all of one dtype (float32/float64), on
  one device, C-contiguous, each state array shaped like its parameter. A wrong shape,
  dtype, layout, a read-only parameter or a missing state list raises a ``ValueError`` or
  ``TypeError`` naming the list and index *before* any array is touched.
* **The chunk and pointer tables** (after PyTorch's ``multi_tensor_apply``). One kernel
  call serves every tensor of a list: ``chunks`` is an ``int64`` table of rows
  ``(tensor index, start, stop)`` that splits large tensors into pieces of
  :data:`CHUNK` elements and gives every small tensor a row of its own, and ``ptrs`` holds
  the address of every array (row 0 the parameters, row 1 the gradients, then one row
  per state list). The CPU loop runs ``prange`` over the chunk rows (many small tensors
  in parallel, a large one split across the cores); the GPU kernel gives each block a
  chunk row. Inside the kernel an address becomes a typed pointer (``_pointer`` in
  ``cpu.py`` / ``cuda.py``) that the element bodies index like an array. Addresses
  rather than a ``numba.typed.List`` of arrays because building a typed list costs
  several microseconds per array on every call, more than the update of a small layer;
  an address costs well under one. The chunk table and the rows of the parameters and
  states are kept between calls (they change only when an array is replaced: a cache
  checked by identity through weak references); the gradient row is written at every
  call, since backward hands fresh gradient arrays.
* **Scalar preparation.** Everything that depends only on hyperparameters and the step
  count (bias corrections, ``lr / bias_correction1``, Adagrad's decayed rate, ``1 - beta``)
  is computed here in Python (float64) and rounded once to the arrays' dtype. The kernels
  therefore never see a Python float: a float32 update computes in float32 on every target
  (Numba would otherwise promote ``float32 * float64`` to float64, and the GPU would run
  double-precision instructions).

Optional state lists (``max_exp_avg_sqs`` without AMSGrad, momentum buffers without
momentum) take the parameters' addresses when absent: the kernels never read or write them
behind a false flag, and this keeps one compiled signature per dtype.
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: Elements per chunk row: large enough that a row's loop dwarfs its bookkeeping, small
#: enough that a 1M-element tensor is 16 rows to spread over the cores (or GPU blocks).
CHUNK = 1 << 16


def _is_c_contiguous(array) -> bool:
    flags = getattr(array, "flags", None)
    if flags is not None:
        try:
            return bool(flags["C_CONTIGUOUS"])
        except (KeyError, TypeError):
            return bool(getattr(flags, "c_contiguous", True))
    return True  # numba device arrays (and the simulator's) made by cuda.to_device are contiguous


def _is_writeable(array) -> bool:
    flags = getattr(array, "flags", None)
    try:
        return bool(flags["WRITEABLE"]) if flags is not None else True
    except (KeyError, TypeError):
        return True


def check_buffers(names_and_arrays, *, ndim: int = 1):
    """Check that the given arrays are float32/float64, C-contiguous, ``ndim``-D and share
    shape and dtype with the first one (the per-sample statistics). Returns the dtype."""
    first_name, first = names_and_arrays[0]
    for name, array in names_and_arrays:
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
                            f"{np.dtype(first.dtype)}; all arrays of one call share a dtype")
        if tuple(array.shape) != tuple(first.shape):
            raise ValueError(f"{name} has shape {tuple(array.shape)} but {first_name} has "
                             f"{tuple(first.shape)}")
    return np.dtype(first.dtype)


def check_finite_scalar(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int (the 1-based count of this update), got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"step must be >= 1 (the count including this update), got {step}")
    return int(step)


# --------------------------------------------------------------------------------------
# Chunk and pointer tables
# --------------------------------------------------------------------------------------


def chunk_rows(sizes) -> np.ndarray:
    """The ``(tensor index, start, stop)`` rows covering tensors of the given sizes in
    pieces of at most :data:`CHUNK` elements (an empty tensor gets no row)."""
    rows = [(t, start, min(start + CHUNK, n)) for t, n in enumerate(sizes) for start in range(0, n, CHUNK)]
    return np.array(rows, dtype=np.int64).reshape(len(rows), 3)


def _as_list(name: str, arrays, n: int) -> list:
    if isinstance(arrays, (list, tuple)):
        if len(arrays) != n:
            raise ValueError(f"{name} has {len(arrays)} entries but params has {n}; one per parameter")
        return list(arrays)
    raise TypeError(f"{name} must be a list of arrays (one per parameter), got {type(arrays).__name__}")


def _check_like(name: str, i: int, array, param, dtype, device_kind, *, written: bool) -> None:
    """One array against its parameter: type, dtype, shape, layout (and writeable)."""
    if not device_kind.accepts(array):
        raise TypeError(f"{name}[{i}] is a {type(array).__name__}, but params[0] is a "
                        f"{device_kind.ARRAY_KIND}; one call updates arrays on one device")
    if np.dtype(array.dtype) != dtype:
        raise TypeError(f"{name}[{i}] has dtype {np.dtype(array.dtype)} but params[0] has {dtype}; "
                        "one call updates arrays of one dtype")
    if tuple(array.shape) != tuple(param.shape):
        raise ValueError(f"{name}[{i}] has shape {tuple(array.shape)} but params[{i}] has shape "
                         f"{tuple(param.shape)}")
    if not _is_c_contiguous(array):
        raise ValueError(f"{name}[{i}] must be C-contiguous (the kernels walk it as one flat block)")
    if written and not _is_writeable(array):
        raise ValueError(f"{name}[{i}] (shape {tuple(array.shape)}) is read-only; the update writes into it")


class _Tables:
    """The cached part of one call's tables: parameters and state arrays (checked once),
    their addresses, the chunk rows. Holds weak references only."""

    def __init__(self, device_kind, params: list, states: list, state_names: list, *, read_only: bool):
        first = params[0]
        if not device_kind.accepts(first):
            raise TypeError(f"params[0] must be a NumPy or CUDA array, got {type(first).__name__}")
        dtype = np.dtype(first.dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"params[0] has dtype {dtype}; the kernels update float32 or float64 arrays")
        for i, p in enumerate(params):
            _check_like("params", i, p, p, dtype, device_kind, written=not read_only)
        for name, arrays in zip(state_names, states):
            if arrays is not None:
                for i, (s, p) in enumerate(zip(arrays, params)):
                    _check_like(name, i, s, p, dtype, device_kind, written=True)
        self.dtype = dtype
        stable = list(params) + [a for arrays in states if arrays is not None for a in arrays]
        self.refs: list[weakref.ref] | None
        try:
            self.refs = [weakref.ref(a) for a in stable]
        except TypeError:  # an array type without weak references: checked and built at every call
            self.refs = None
        sizes = [int(np.prod(p.shape, dtype=np.int64)) for p in params]
        self.size = sum(sizes)
        param_row = [device_kind.address(p) for p in params]
        rows = [param_row, param_row]  # row 1 (gradients) is rewritten at every call
        rows += [[device_kind.address(s) for s in arrays] if arrays is not None else param_row
                 for arrays in states]
        self.ptrs = np.array(rows, dtype=np.int64).reshape(len(rows), len(params))
        self.chunks = device_kind.to_device_table(chunk_rows(sizes))
        self.overlap = _overlapping(param_row, [n * dtype.itemsize for n in sizes])

    def alive(self, arrays) -> bool:
        return self.refs is not None and all(ref() is a for ref, a in zip(self.refs, arrays))


def _overlapping(starts, nbytes) -> bool:
    """True when two of the arrays share memory (two parameters made from one array):
    their updates must then run one tensor after the other, in list order, as the
    reference does, instead of racing in one parallel pass."""
    spans = sorted((start, start + n) for start, n in zip(starts, nbytes) if n)
    return any(spans[k + 1][0] < spans[k][1] for k in range(len(spans) - 1))


_TABLES: dict = {}
_MAX_TABLES = 256  # distinct (parameter list, state lists) combinations remembered
OVERLAP = "overlap"  # what tables() returns for parameters that share memory


def tables(device_kind, params, grads, states, state_names, *, read_only: bool = False):
    """``(ptrs, chunks, dtype, size)`` for one multi-tensor call, every array checked;
    ``OVERLAP`` instead when parameters share memory (the caller then updates them one
    list entry at a time).

    ``states`` is a list of state lists (``None`` for an absent optional one), named by
    ``state_names``. ``device_kind`` is ``cpu`` or ``cuda`` (their ``accepts``,
    ``address`` and ``to_device_table``). ``read_only=True`` (a reduction) lets the
    parameters be read-only arrays. Returns None for empty lists."""
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"params must be a list of arrays, got {type(params).__name__}")
    n = len(params)
    grads = _as_list("grads", grads, n)
    states = [None if s is None else _as_list(name, s, n) for name, s in zip(state_names, states)]
    if n == 0:
        return None
    stable = list(params)
    for arrays in states:
        if arrays is not None:
            stable.extend(arrays)
    key = (device_kind.__name__, read_only, tuple(map(id, stable)), tuple(s is None for s in states))
    entry = _TABLES.get(key)
    if entry is None or not entry.alive(stable):
        entry = _Tables(device_kind, list(params), states, state_names, read_only=read_only)
        if len(_TABLES) >= _MAX_TABLES:
            _TABLES.clear()
        _TABLES[key] = entry
    dtype = entry.dtype
    accepts = device_kind.accepts
    for i, (g, p) in enumerate(zip(grads, params)):  # every call: backward hands new gradient arrays
        if not (accepts(g) and g.dtype == dtype and g.shape == p.shape and _is_c_contiguous(g)):
            _check_like("grads", i, g, p, dtype, device_kind, written=False)
    if entry.overlap and not read_only:
        return OVERLAP
    ptrs = entry.ptrs
    ptrs[1] = [device_kind.address(g) for g in grads]
    return device_kind.to_device_table(ptrs), entry.chunks, dtype, entry.size


# --------------------------------------------------------------------------------------
# Scalars of each update, in the kernels' positional order after (ptrs, chunks)
# --------------------------------------------------------------------------------------


def _common(dtype, grad_scale, weight_decay):
    f = dtype.type
    return f(check_finite_scalar("grad_scale", grad_scale)), f(weight_decay)


def sgd_scalars(dtype, *, lr, momentum, dampening, nesterov, weight_decay, maximize, first_step, grad_scale):
    lr = check_finite_scalar("lr", lr)
    momentum = check_finite_scalar("momentum", momentum)
    dampening = check_finite_scalar("dampening", dampening)
    weight_decay = check_finite_scalar("weight_decay", weight_decay)
    if nesterov and (momentum == 0 or dampening != 0):
        raise ValueError("nesterov momentum requires momentum > 0 and dampening == 0")
    f = dtype.type
    return (*_common(dtype, grad_scale, weight_decay), f(momentum), f(1.0 - dampening), f(-lr),
            bool(maximize), weight_decay != 0, momentum != 0, bool(first_step), bool(nesterov))


def adam_scalars(dtype, *, step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
                 grad_scale):
    step = _step(step)
    lr = check_finite_scalar("lr", lr)
    beta1 = check_finite_scalar("beta1", beta1)
    beta2 = check_finite_scalar("beta2", beta2)
    eps = check_finite_scalar("eps", eps)
    weight_decay = check_finite_scalar("weight_decay", weight_decay)
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must lie in [0, 1), got ({beta1}, {beta2})")
    f = dtype.type
    # As in torch.optim.Adam (non-capturable path): Python-float bias corrections.
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    decoupled = bool(decoupled_weight_decay) and weight_decay != 0
    return (*_common(dtype, grad_scale, weight_decay), f(1.0 - lr * weight_decay), f(1.0 - beta1), f(beta2),
            f(1.0 - beta2), f(bias_correction2 ** 0.5), f(eps), f(-(lr / bias_correction1)), bool(maximize),
            weight_decay != 0 and not decoupled, decoupled, bool(amsgrad))


def rmsprop_scalars(dtype, *, lr, alpha, eps, weight_decay, momentum, centered, maximize, grad_scale):
    lr = check_finite_scalar("lr", lr)
    alpha = check_finite_scalar("alpha", alpha)
    eps = check_finite_scalar("eps", eps)
    weight_decay = check_finite_scalar("weight_decay", weight_decay)
    momentum = check_finite_scalar("momentum", momentum)
    f = dtype.type
    return (*_common(dtype, grad_scale, weight_decay), f(alpha), f(1.0 - alpha), f(eps), f(momentum), f(-lr),
            bool(maximize), weight_decay != 0, momentum > 0, bool(centered))


def adagrad_scalars(dtype, *, step, lr, lr_decay, weight_decay, eps, maximize, grad_scale):
    step = _step(step)
    lr = check_finite_scalar("lr", lr)
    lr_decay = check_finite_scalar("lr_decay", lr_decay)
    weight_decay = check_finite_scalar("weight_decay", weight_decay)
    eps = check_finite_scalar("eps", eps)
    clr = lr / (1.0 + (step - 1) * lr_decay)  # torch.optim.Adagrad's decayed learning rate
    f = dtype.type
    return (*_common(dtype, grad_scale, weight_decay), f(eps), f(-clr), bool(maximize), weight_decay != 0)


def require(name: str, arrays, reason: str):
    if arrays is None:
        raise ValueError(f"{name} is required {reason}")
    return arrays


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
        max_norm = check_finite_scalar("max_norm", max_norm)
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
