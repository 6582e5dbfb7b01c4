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
    elif norm_type == 2.0:
        norm = xp.sqrt(xp.dot(a, a))
    elif norm_type == 1.0:
        norm = a.sum()
    else:
        norm = (a ** norm_type).sum() ** (1.0 / norm_type)
    return xp.asarray(norm, dtype=array.dtype)  # a 0-d array (NumPy reductions return scalars)


def get_total_norm(grads, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    """The norm of all ``grads`` (Tensors or SparseRowGrads) viewed as one vector.

    Computed as torch does: the norm of each gradient, then the norm of those norms
    (equal to the norm of the concatenation for any p-norm). A SparseRowGrad's repeated
    rows are summed first (its norm is that of the dense gradient it stands for).
    ``norm_type`` is any p > 0 or ``inf`` (``"inf"`` works too). Returns a 0-d Tensor in
    the gradients' dtype on the first gradient's device.
    """
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    grads = list(grads)
    if not grads:
        return Tensor(0.0)
    norms, dtypes = [], []
    for g in grads:
        if isinstance(g, SparseRowGrad):
            array = g.coalesce().values
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

    .. math:: g \leftarrow g \cdot \min\left(1, \frac{\text{max\_norm}}{\lVert (g_1, \dots, g_n) \rVert_p + 10^{-6}}\right)

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
        state = {"eta": self.eta, "gamma": self.gamma, "t": self.t}
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
