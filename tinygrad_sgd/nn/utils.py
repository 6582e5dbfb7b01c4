"""Gradient transforms and penalties (``tg.nn.utils``), usable with any optimizer.

A *gradient transform* edits ``param.grad`` in place between ``loss.backward()`` and
``optimizer.step()``::

    loss.backward()
    tg.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    opt.step()

All of them accept the ``SparseRowGrad`` gradients of ``Embedding(sparse=True)``; the
docstrings say what happens to the rows a batch did not touch. A *penalty*
(:func:`l1_penalty`, :func:`l2_penalty`) is instead a differentiable Tensor to add to the
loss, so teaching material can put an explicit regulariser next to an optimizer's
``weight_decay`` and see where they agree and where they do not (Adam vs AdamW).
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from .. import backend, rng
from ..sparse import SparseRowGrad
from ..tensor import Tensor

__all__ = ["get_total_norm", "clip_grads_with_norm_", "clip_grad_norm_", "clip_grad_value_",
           "grad_sum_of_squares", "grad_scale_for_step", "GradientNoiseScale",
           "annealed_noise_std", "add_grad_noise_", "AnnealedGradNoise", "add_l1_grad_",
           "l1_penalty", "l2_penalty"]


def _param_list(parameters, what: str) -> list:
    """``parameters`` as a list of Tensors (a single Tensor is accepted, like torch)."""
    if isinstance(parameters, Tensor):
        return [parameters]
    try:
        params = list(parameters)
    except TypeError:
        raise TypeError(f"{what}: parameters must be a Tensor or an iterable of Tensors, "
                        f"got {type(parameters).__name__}") from None
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{what}: parameters[{i}] is a {type(p).__name__}, not a Tensor")
    return params


def _check_real(name: str, value, *, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value) or value < low:
        raise ValueError(f"{name} must be a real number >= {low:g}, got {value!r}")
    return float(value)


def _grads(params: list) -> list:
    return [p.grad for p in params if p.grad is not None]


def _coalesce_(grad: SparseRowGrad) -> SparseRowGrad:
    """Sum repeated rows *in place*: clipping values and adding noise act on each row once."""
    merged = grad.coalesce()
    grad.indices, grad.values = merged.indices, merged.values
    return grad


def _values(grad):
    """The array holding a gradient's numbers: a Tensor's data, or a SparseRowGrad's values."""
    return grad.values if isinstance(grad, SparseRowGrad) else grad.data


# ----------------------------------------------------------------------------- norm clipping


def _vector_norm(array, norm_type: float):
    """The ``norm_type``-norm of all elements, in the array's dtype (as torch's vector_norm)."""
    xp = backend.get_array_module(array)
    a = xp.abs(array.reshape(-1))
    if a.size == 0:
        norm = xp.zeros((), dtype=array.dtype)
    elif norm_type == math.inf:
        norm = a.max()
    elif norm_type == -math.inf:
        norm = a.min()
    elif norm_type == 0:
        norm = xp.count_nonzero(a)  # the "0-norm": how many entries are not zero
    elif norm_type == 2.0:
        norm = xp.sqrt(xp.dot(a, a))
    elif norm_type == 1.0:
        norm = a.sum()
    else:
        with np.errstate(divide="ignore"):  # a 0 under a negative order: 0 ** p = inf, so the norm is 0
            norm = (a ** norm_type).sum() ** (1.0 / norm_type)
    return xp.asarray(norm, dtype=array.dtype)  # a 0-d array (NumPy reductions return scalars)


def get_total_norm(grads, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    """The norm of all ``grads`` (Tensors or SparseRowGrads) viewed as one vector.

    Computed as torch does: the norm of each gradient, then the norm of those norms
    (equal to the norm of the concatenation for any p-norm). A SparseRowGrad's repeated
    rows are summed first (its norm is that of the dense gradient it stands for).
    ``norm_type`` is any real p, ``inf`` or ``-inf`` (``"inf"`` works too), as torch's
    ``vector_norm``: ``0`` counts the nonzero entries (of each gradient, then of those
    counts, as torch), ``-inf`` is the smallest magnitude. Returns a 0-d Tensor in the
    gradients' dtype on the first gradient's device.
    """
    norm_type = float(norm_type)
    if math.isnan(norm_type):
        raise ValueError("norm_type must be a number, inf or -inf, got nan")
    grads = list(grads)
    if not grads:
        return Tensor(0.0)
    norms, dtypes = [], []
    for g in grads:
        if isinstance(g, SparseRowGrad):
            # Orders <= 0 see the zero rows a sparse gradient leaves out: use the dense one.
            array = g.coalesce().values if norm_type > 0 else g.to_dense()
        elif isinstance(g, Tensor):
            array = g.data
        else:
            raise TypeError(f"gradients must be Tensors or SparseRowGrads, got {type(g).__name__}")
        norms.append(backend.to_numpy(_vector_norm(array, norm_type)))
        dtypes.append(array.dtype)
    dtype = np.result_type(*dtypes)
    total = _vector_norm(np.stack(norms).astype(dtype), norm_type)
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is non-finite ({total}), "
                           "so it cannot be clipped; pass error_if_nonfinite=False to scale by it anyway")
    first = grads[0]
    device = first.device
    return Tensor._make(backend.to_device(np.asarray(total, dtype=dtype), device), device)


def clip_grads_with_norm_(parameters, max_norm: float, total_norm) -> None:
    """Scale every gradient in place by ``min(max_norm / (total_norm + 1e-6), 1)``.

    The ``1e-6`` keeps a zero gradient finite; the ``min`` means gradients are only ever
    shrunk. A sparse gradient scales its stored values (scaling is linear, so repeated
    rows need not be merged).
    """
    params = _param_list(parameters, "clip_grads_with_norm_")
    max_norm = _check_real("max_norm", max_norm)
    total = backend.to_numpy(total_norm.data if isinstance(total_norm, Tensor) else np.asarray(total_norm))
    coef = np.minimum(max_norm / (total + 1e-6), 1.0)  # stays in the norm's dtype (float32 for float32 grads)
    for grad in _grads(params):
        values = _values(grad)
        with np.errstate(invalid="ignore"):  # a non-finite norm gives 0 * inf = nan, as in torch, silently
            values *= backend.to_device(coef, backend.device_of(values)).astype(values.dtype)


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    r"""Rescale all gradients together so their joint norm is at most ``max_norm``.

    .. math::
        g \leftarrow g \cdot \min\left(1, \frac{\text{max\_norm}}{\lVert (g_1, \dots, g_n) \rVert_p + 10^{-6}}\right)

    The direction of the full gradient is kept and only its length is capped, which is
    what keeps exploding gradients (RNNs, Pascanu et al. 2013) from throwing the weights
    far away. Same arguments, semantics and return value as
    ``torch.nn.utils.clip_grad_norm_``: the total norm *before* clipping, as a Tensor.
    Parameters without a gradient are skipped; ``SparseRowGrad`` gradients count with
    their rows summed.
    """
    params = _param_list(parameters, "clip_grad_norm_")
    max_norm = _check_real("max_norm", max_norm)
    total = get_total_norm(_grads(params), norm_type, error_if_nonfinite)
    clip_grads_with_norm_(params, max_norm, total)
    return total


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place.

    Unlike norm clipping this changes the gradient's direction. A ``SparseRowGrad`` has its
    repeated rows summed first (the clamp applies to the gradient it stands for), in place.
    """
    params = _param_list(parameters, "clip_grad_value_")
    clip_value = _check_real("clip_value", clip_value)
    for grad in _grads(params):
        if isinstance(grad, SparseRowGrad):
            _coalesce_(grad)
        values = _values(grad)
        backend.get_array_module(values).clip(values, -clip_value, clip_value, out=values)


# ----------------------------------------------------------------------------- one scale per step


def _kernels_take(arrays: list) -> bool:
    """True when the fused sum of squares can read every array (float32/64, one device and
    dtype, C-contiguous) and Numba imports."""
    from ..optim.optimizer import FUSED_DTYPES, numba_available

    if not arrays or not numba_available():
        return False
    first = arrays[0]
    return all(type(a) is type(first) and a.dtype == first.dtype and a.dtype in FUSED_DTYPES
               and a.flags.c_contiguous and backend.device_of(a) == backend.device_of(first) for a in arrays)


def grad_sum_of_squares(parameters, *, fused: bool | None = None) -> float:
    """``sum |g|^2`` over every element of every parameter's gradient: the squared global L2
    norm, as a Python float (the gradients are only read).

    ``fused`` (``None``: automatic, the kernel for more than ``kernels.CHUNK`` elements;
    ``True``: always) reads all dense gradients in one multi-tensor kernel
    pass (``kernels.sum_of_squares``, float64 accumulation on the CPU, a tree reduction on
    the GPU); ``False``, or gradients the kernel cannot read, use the NumPy reference
    (``kernels.reference.sum_of_squares``, float64). A ``SparseRowGrad`` counts with its
    repeated rows summed.
    """
    from .. import kernels
    from ..kernels import reference

    dense, total = [], 0.0
    for p in _param_list(parameters, "grad_sum_of_squares"):
        grad = p.grad
        if grad is None:
            continue
        if isinstance(grad, SparseRowGrad):
            total += reference.sum_of_squares([grad.coalesce().values])
        else:
            dense.append(grad.data)
    # Automatic: the kernel when there is more than one chunk to share between threads;
    # below that, NumPy's dot costs less than a multi-tensor launch (docs/benchmarks.md).
    if fused is not False and _kernels_take(dense) and (fused or sum(g.size for g in dense) > kernels.CHUNK):
        return total + kernels.sum_of_squares(dense)
    return total + reference.sum_of_squares(dense)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def grad_scale_for_step(parameters, *, accumulated: int = 1, world_size: int = 1, max_norm: float | None = None,
                        fused: bool | None = None) -> tuple:
    r"""The one factor ``optimizer.step(grad_scale=...)`` applies to the summed gradients,
    and the norm of the averaged gradient: ``(grad_scale, total_norm)``.

    The gradients in ``.grad`` are sums: of ``accumulated`` micro-batch means (gradient
    accumulation; backward adds into ``.grad``) and, after an all-reduce, of ``world_size``
    workers' gradients. The step should use their mean, clipped to ``max_norm``::

        n          = accumulated * world_size
        total_norm = ||sum of gradients|| / n           (one fused pass over the gradients)
        clip_coef  = min(1, max_norm / (total_norm + 1e-6))   (1 without max_norm)
        grad_scale = clip_coef / n

    so averaging, clipping (``clip_grad_norm_``'s coefficient, Pascanu et al. 2013) and the
    update are then one more pass, inside the optimizer's kernel, and ``.grad`` is never
    rewritten. ``total_norm`` is what ``clip_grad_norm_`` would return for the averaged
    gradient (non-finite when a gradient is: check it before stepping). Usage::

        scale, norm = tg.nn.utils.grad_scale_for_step(model.parameters(), accumulated=k, max_norm=1.0)
        optimizer.step(grad_scale=scale)
    """
    accumulated = _check_count("accumulated", accumulated)
    world_size = _check_count("world_size", world_size)
    if max_norm is not None:
        max_norm = _check_real("max_norm", max_norm)
    n = accumulated * world_size
    total_norm = math.sqrt(grad_sum_of_squares(parameters, fused=fused)) / n
    coef = 1.0
    if max_norm is not None and math.isfinite(total_norm):
        coef = min(1.0, max_norm / (total_norm + 1e-6))
    return coef / n, total_norm


class GradientNoiseScale:
    r"""The gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` of McCandlish, Kaplan,
    Amodei et al. (2018), *An Empirical Model of Large-Batch Training*, measured from the
    micro-batch gradients of accumulated steps.

    ``Sigma`` is the covariance of one sample's gradient and ``G`` the true gradient; the
    batch size where larger batches stop paying off is about ``B_simple``. Neither is
    known, but both have unbiased estimates from gradients of two batch sizes (the
    paper's Appendix A): with the k micro-batch means ``g_j`` of size b of one step and
    their mean ``G_B`` (batch ``B = k b``), ``S = sum_j |g_j - G_B|^2 / (k - 1)`` estimates
    ``tr(Sigma) / b`` and ``|G_B|^2 - S / k`` estimates ``|G|^2``
    (``kernels.per_sample_grad_stats`` with the micro-batches as its "samples").
    As the paper advises, numerator and denominator are summed over the steps of an epoch
    before dividing (a ratio of noisy estimates is biased; a ratio of averages much less)::

        B_simple(epoch) = sum_steps b * S / sum_steps (|G_B|^2 - S / k)

    Use: ``begin()`` before a step's micro-batches, ``add(params)`` after each backward
    (``.grad`` then holds the running sum; the difference to the previous call is that
    micro-batch's gradient), ``end(micro_batch_size)`` before the optimizer step, and
    ``epoch_value()`` at the end of the epoch (NaN without a measured step). It keeps a
    ``(k, P)`` float array: ``tg.train.fit(..., noise_scale=True)`` is opt-in.
    """

    def __init__(self):
        self._rows: list = []
        self._previous = None
        self._noise = 0.0    # sum over steps of b * S  (tr(Sigma) estimates)
        self._signal = 0.0   # sum over steps of |G|^2 estimates
        self._steps = 0

    def begin(self) -> None:
        self._rows, self._previous = [], None

    def add(self, parameters) -> None:
        parts = []
        for p in _param_list(parameters, "GradientNoiseScale.add"):
            grad = p.grad
            if grad is None:
                parts.append(np.zeros(p.data.size, dtype=np.float64))
            else:
                dense = grad.to_dense() if isinstance(grad, SparseRowGrad) else grad.data
                parts.append(backend.to_numpy(dense).astype(np.float64).reshape(-1))
        total = np.concatenate(parts) if parts else np.zeros(0)
        self._rows.append(total if self._previous is None else total - self._previous)
        self._previous = total

    def end(self, micro_batch_size: int) -> None:
        """Add this step's estimates (steps with fewer than two micro-batches have none)."""
        from .. import kernels

        if len(self._rows) >= 2 and self._rows[0].size:
            rows = np.stack(self._rows)
            stats = kernels.per_sample_grad_stats(rows, np.empty(rows.shape[1], dtype=rows.dtype))
            self._noise += micro_batch_size * stats.trace_cov
            self._signal += stats.grad_sq_norm
            self._steps += 1
        self.begin()

    def epoch_value(self) -> float:
        """``B_simple`` over the steps since the last call (NaN if none; inf when the summed
        ``|G|^2`` estimate is not positive: the noise hides the signal), then reset."""
        noise, signal, steps = self._noise, self._signal, self._steps
        self._noise = self._signal = 0.0
        self._steps = 0
        if steps == 0:
            return math.nan
        return noise / signal if signal > 0 else math.inf


# ----------------------------------------------------------------------------- gradient noise


def annealed_noise_std(eta: float, step: int, gamma: float = 0.55) -> float:
    r"""Standard deviation of Neelakantan et al.'s gradient noise at step ``t``:
    :math:`\sigma_t = \sqrt{\eta / (1 + t)^\gamma}`."""
    return math.sqrt(eta / (1 + step) ** gamma)


def add_grad_noise_(parameters, std: float, generator: np.random.Generator | None = None) -> None:
    """Add independent ``N(0, std^2)`` noise to every gradient element, in place.

    The noise is drawn on the CPU from ``generator`` (default: the engine's global generator,
    so ``tg.manual_seed`` fixes it) in float64, then cast to the gradient's dtype and
    moved to its device: the same seed gives the same noise on every device. A
    ``SparseRowGrad`` gets noise on its (summed) touched rows only, keeping the update
    lazy; untouched rows stay exactly zero.
    """
    params = _param_list(parameters, "add_grad_noise_")
    std = _check_real("std", std)
    gen = rng.generator() if generator is None else generator
    for grad in _grads(params):
        if isinstance(grad, SparseRowGrad):
            _coalesce_(grad)
        values = _values(grad)
        noise = (gen.standard_normal(values.shape) * std).astype(values.dtype)
        values += backend.to_device(noise, backend.device_of(values))


class AnnealedGradNoise:
    r"""Annealed Gaussian gradient noise (Neelakantan et al. 2015).

    Paper: Neelakantan, Vilnis, Le, Sutskever, Kaiser, Kurach & Martens (2015), *Adding
    Gradient Noise Improves Learning for Very Deep Networks*. At training step ``t``
    (0, 1, 2, ... — one per call)::

        g_t <- g_t + N(0, sigma_t^2),      sigma_t^2 = eta / (1 + t)^gamma

    with ``eta`` in {0.01, 0.3, 1.0} in the paper and ``gamma = 0.55``. The noise decays
    slowly, so early training explores and late training is nearly noiseless. Call the
    object after ``backward()`` and before ``step()``::

        noise = AnnealedGradNoise(eta=0.01, seed=0)
        loss.backward(); noise(model.parameters()); opt.step()

    ``seed=None`` draws from the engine's global generator (``tg.manual_seed``); an
    integer gives the transform its own generator, saved in ``state_dict()`` with ``t``.
    """

    def __init__(self, eta: float = 0.01, gamma: float = 0.55, seed: int | None = None):
        self.eta = _check_real("eta", eta)
        self.gamma = _check_real("gamma", gamma)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self._generator = None if seed is None else np.random.default_rng(int(seed))
        self.t = 0

    @property
    def std(self) -> float:
        """The standard deviation the next call will use."""
        return annealed_noise_std(self.eta, self.t, self.gamma)

    def __call__(self, parameters) -> float:
        """Add this step's noise to the gradients, advance ``t``, and return the std used."""
        std = self.std
        add_grad_noise_(parameters, std, self._generator)
        self.t += 1
        return std

    def state_dict(self) -> dict:
        state: dict = {"eta": self.eta, "gamma": self.gamma, "t": self.t}
        if self._generator is not None:
            state["generator_state"] = self._generator.bit_generator.state
        return state

    def load_state_dict(self, state: dict) -> None:
        if ("generator_state" in state) != (self._generator is not None):
            raise ValueError("state dict and transform disagree on having their own generator (seed=)")
        t = int(state["t"])
        if t < 0:
            raise ValueError(f"t must be >= 0, got {t}")
        eta, gamma = _check_real("eta", state["eta"]), _check_real("gamma", state["gamma"])
        if self._generator is not None:
            probe = np.random.PCG64()
            probe.state = state["generator_state"]  # validates before anything changes
            self._generator.bit_generator.state = state["generator_state"]
        self.eta, self.gamma, self.t = eta, gamma, t


# ----------------------------------------------------------------------------- L1 / L2


def add_l1_grad_(parameters, lambd: float) -> None:
    r"""L1 regularisation as a gradient transform: ``g <- g + lambd * sign(p)``, in place.

    This is the (sub)gradient of ``lambd * sum |p|`` (with ``sign(0) = 0``), so it gives the
    same update as adding ``lambd * l1_penalty(params)`` to the loss, without recording it
    in the graph. Plain (sub)gradient steps make weights hover around zero rather than
    land on it; proximal methods give exact zeros. Parameters without a gradient are
    skipped (as ``weight_decay`` skips them). For a ``SparseRowGrad`` only the touched
    rows are penalised (a lazy penalty, like lazy weight decay), after summing repeats.
    """
    params = _param_list(parameters, "add_l1_grad_")
    lambd = _check_real("lambd", lambd)
    for p in params:
        grad = p.grad
        if grad is None:
            continue
        xp = backend.get_array_module(p.data)
        if isinstance(grad, SparseRowGrad):
            _coalesce_(grad)
            grad.values += lambd * xp.sign(p.data[grad.indices])
        else:
            grad.data += lambd * xp.sign(p.data)


def l1_penalty(parameters) -> Tensor:
    r"""``sum_i |p_i|`` over all parameters: a differentiable Tensor to add to the loss.

    ``loss + lambd * l1_penalty(params)`` has gradient ``g + lambd * sign(p)``, the same
    as :func:`add_l1_grad_`.
    """
    params = _param_list(parameters, "l1_penalty")
    if not params:
        return Tensor(0.0)
    total = params[0].abs().sum()
    for p in params[1:]:
        total = total + p.abs().sum()
    return total


def l2_penalty(parameters) -> Tensor:
    r"""``1/2 * sum_i p_i^2`` over all parameters: a differentiable Tensor to add to the loss.

    The factor 1/2 makes ``loss + wd * l2_penalty(params)`` have gradient ``g + wd * p``,
    exactly what ``weight_decay=wd`` adds inside :class:`~tinygrad_sgd.optim.SGD`,
    ``Adam``, ``RMSprop`` and ``Adagrad`` (coupled decay) — so those runs coincide — but
    *not* ``AdamW``, whose decoupled decay shrinks ``p`` outside the adaptive scaling.
    """
    params = _param_list(parameters, "l2_penalty")
    if not params:
        return Tensor(0.0)
    total = (params[0] * params[0]).sum()
    for p in params[1:]:
        total = total + (p * p).sum()
    return total * 0.5
