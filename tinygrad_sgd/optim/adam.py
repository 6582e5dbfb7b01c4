"""Adam (and, through ``decoupled_weight_decay``, AdamW): the reference and the fused update."""

from __future__ import annotations

import math

from .. import backend, kernels
from .optimizer import Optimizer, check_betas, check_number, full_like_param, kernel_batches, pick


def adam_states(optimizer: Optimizer, params: list, *, amsgrad: bool) -> list:
    """The state of each parameter in ``params`` for the update about to run: created when
    missing (``step`` 0, zero ``exp_avg`` and ``exp_avg_sq``, and ``max_exp_avg_sq`` with
    AMSGrad), its ``step`` advanced by one. Adam and SparseAdam keep the same state."""
    states = []
    for p in params:
        state = optimizer.state.get(p)
        if not state:
            state = optimizer.state[p] = {"step": 0, "exp_avg": full_like_param(p, 0.0),
                                          "exp_avg_sq": full_like_param(p, 0.0)}
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = full_like_param(p, 0.0)
        state["step"] += 1
        states.append(state)
    return states


class Adam(Optimizer):
    r"""Adam: per-coordinate step sizes from running moments of the gradient.

    Paper: Kingma & Ba (2015), *Adam: A Method for Stochastic Optimization* (ICLR);
    AMSGrad from Reddi, Kale & Kumar (2018), *On the Convergence of Adam and Beyond*.

    Algorithm (PyTorch's, for the same arguments; :math:`g_t` is ``param.grad``,
    :math:`\eta` = ``lr``, :math:`\lambda` = ``weight_decay``, ``t`` counts this
    parameter's steps from 1)::

        g_t = -g_t                          if maximize
        g_t = g_t + lambda * p_{t-1}        if weight_decay != 0  (coupled L2 decay)
        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t          exp_avg
        v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2        exp_avg_sq
        vmax_t = max(vmax_{t-1}, v_t)                      max_exp_avg_sq, if amsgrad (then v_t -> vmax_t below)
        p_t = p_{t-1} - (eta / (1 - beta1^t)) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)

    which is the paper's ``p -= eta * m_hat / (sqrt(v_hat) + eps)`` with the bias
    corrections ``m_hat = m / (1 - beta1^t)``, ``v_hat = v / (1 - beta2^t)``. ``eps`` is
    added to the bias-corrected ``sqrt(v_hat)``, as in the paper and PyTorch. The
    moments start at zero, which is why the corrections are needed.

    **Momentum convention:** ``beta1`` is the momentum of the gradient average (a
    learning-rate schedule's ``cycle_momentum`` cycles it). **Weight decay** is coupled
    (L2): ``lambda * p`` joins the gradient before the moments, so it is rescaled by the
    adaptive denominator like any gradient — Loshchilov & Hutter's point, fixed by
    :class:`AdamW`. Sparse gradients are rejected (use :class:`SparseAdam`).

    **fused** (``None``: automatic): one multi-tensor kernel call updates every parameter
    of a group at once (per device and dtype), reading each gradient where backward left
    it (see :mod:`tinygrad_sgd.optim.optimizer`). The bias corrections depend on each
    parameter's step count ``t``; parameters whose counts differ (one skipped steps
    without a gradient) are updated by separate calls.
    """

    _decoupled_weight_decay = False
    _state_names = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})

    def __init__(self, params, lr: float = 1e-3, *, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False, fused=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults, fused=fused)

    def _validate_group(self, group: dict) -> None:
        group["lr"] = check_number("lr", group["lr"])
        group["betas"] = check_betas(group["betas"])
        group["eps"] = check_number("eps", group["eps"])
        group["weight_decay"] = check_number("weight_decay", group["weight_decay"])
        group["amsgrad"] = bool(group["amsgrad"])
        group["maximize"] = bool(group["maximize"])

    def _check_sparse(self, group: dict) -> None:
        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (SparseRowGrad); "
                           "use SparseAdam (lazy Adam) for Embedding(sparse=True)")

    def _init_state(self, group: dict, params: list) -> list:
        """Create missing state (zeros) and count this step, for the parameters updated now."""
        return adam_states(self, params, amsgrad=group["amsgrad"])

    def _hyper(self, group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    amsgrad=group["amsgrad"], maximize=group["maximize"],
                    decoupled_weight_decay=self._decoupled_weight_decay)

    def _update_group(self, group: dict, params: list, grads: list, grad_scale: float) -> None:
        states = self._init_state(group, params)
        adam([p.data for p in params], grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
             [s.get("max_exp_avg_sq") for s in states], [s["step"] for s in states], **self._hyper(group),
             grad_scale=grad_scale, fused=self._fused_mode())


def adam(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, max_exp_avg_sqs: list, steps: list, *,
         lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
         decoupled_weight_decay: bool, grad_scale: float = 1.0, fused: bool | None = False) -> None:
    """Functional Adam/AdamW over raw arrays (``steps`` already count the current step).

    The one place that chooses the implementation (PyTorch's split): the reference loop
    (:func:`_single_tensor_adam`, ``fused=False``) or the multi-tensor kernels
    (:func:`_fused_adam`; ``fused=True`` raises on a parameter they cannot take,
    ``fused=None`` gives it to the reference). ``grad_scale`` multiplies every gradient
    first; the gradient arrays are only read.
    """
    kw: dict = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                    maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, grad_scale=grad_scale)
    if fused is False:
        _single_tensor_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, **kw)
    else:
        _fused_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, strict=bool(fused), **kw)


def _single_tensor_adam(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, max_exp_avg_sqs: list,
                        steps: list, *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                        amsgrad: bool, maximize: bool, decoupled_weight_decay: bool, grad_scale: float = 1.0) -> None:
    """The readable reference (the specification the kernel's ``adam_element`` computes
    element by element): one parameter at a time, the formula line by line."""
    for param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step in zip(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps):
        with backend.device_context(backend.device_of(param)):
            xp = backend.get_array_module(param)
            if grad_scale != 1:
                grad = grad * grad_scale                     # averaging, clipping, 1/world size (a new array)
            if maximize:
                grad = -grad
            if weight_decay != 0:
                if decoupled_weight_decay:
                    param *= 1 - lr * weight_decay          # AdamW: shrink p directly, outside the moments
                else:
                    grad = grad + weight_decay * param      # Adam: L2 gradient, rescaled like any gradient
            exp_avg += (1 - beta1) * (grad - exp_avg)        # m = beta1 m + (1 - beta1) g
            exp_avg_sq *= beta2                              # v = beta2 v + (1 - beta2) g^2
            exp_avg_sq += (1 - beta2) * (grad * grad)
            bias_correction1 = 1 - beta1 ** step
            bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
            if amsgrad:
                xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)   # never let v shrink
                denom = xp.sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps
            else:
                denom = xp.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps   # sqrt(v_hat) + eps
            param -= (lr / bias_correction1) * (exp_avg / denom)             # p -= lr m_hat / (sqrt(v_hat) + eps)


def _fused_adam(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, max_exp_avg_sqs: list,
                steps: list, *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                amsgrad: bool, maximize: bool, decoupled_weight_decay: bool, grad_scale: float,
                strict: bool) -> None:
    """The fused update: one pass over memory for all parameters of one device, dtype and
    step count, in one multi-tensor kernel call (one CUDA launch for CuPy arrays), the
    arithmetic of :func:`_single_tensor_adam` element by element; the bias corrections
    are computed once on the host (``kernels/host.py``)."""
    grads = list(grads)
    batches, rest = kernel_batches(params, grads, key=steps.__getitem__, strict=strict, owner="Adam")
    for idx in batches:
        kernels.adam_update(pick(params, idx), pick(grads, idx), pick(exp_avgs, idx), pick(exp_avg_sqs, idx),
                            pick(max_exp_avg_sqs, idx) if amsgrad else None, step=steps[idx[0]], lr=lr,
                            beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                            decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad, maximize=maximize,
                            grad_scale=grad_scale)
    if rest:
        _single_tensor_adam(pick(params, rest), pick(grads, rest), pick(exp_avgs, rest), pick(exp_avg_sqs, rest),
                            pick(max_exp_avg_sqs, rest), pick(steps, rest), lr=lr, beta1=beta1, beta2=beta2,
                            eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                            decoupled_weight_decay=decoupled_weight_decay, grad_scale=grad_scale)
